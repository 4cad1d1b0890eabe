#!/usr/bin/env bash
# The main job end to end on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for f in samples/*/Dockerfile; do
  pybuild lint -f "$f"
done
