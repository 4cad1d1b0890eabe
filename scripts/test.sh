#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite against the real components.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pytest -q -p no:cacheprovider "$@"
