#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite against the real components.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/rootless run the CLI as the ordinary user pbuser (setup.sh makes it, with its subordinate
# range) through runuser, and in rootful podman containers started without --privileged.
# The venv's bin first: tests that start `pybuild` or `python3 -m builder` find the installed project.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
