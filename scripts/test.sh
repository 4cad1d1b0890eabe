#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite against the real components.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The venv's bin first: tests that start `pybuild` or `python3 -m builder` find the installed project.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
