#!/usr/bin/env bash
# Builds pybuild's own image (scripts/image) with this checkout's pybuild:
#   bash scripts/build-image.sh [TAG] [--push]        (default tag: pybuild:latest)
# The context gets this checkout's wheel and its dependencies' wheels (pip wheel: from PyPI
# through pip's own configuration). The base, debian:bookworm, must be in the store or pullable:
# offline, import one first (`pybuild import ROOTFS debian:bookworm`, e.g. a debootstrap minbase).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-pybuild:latest}
shift || true
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp scripts/image/Dockerfile "$ctx/"
# From a copy of the sources: the wheel build's build/ and egg-info stay out of the checkout.
mkdir "$ctx/src"
cp -a pyproject.toml README.md dockerfile_grammar registry builder "$ctx/src/"
python3 -m pip wheel -q --wheel-dir "$ctx/wheels" "$ctx/src"
rm -rf "$ctx/src"
python3 -m builder build -t "$tag" "$@" "$ctx"
