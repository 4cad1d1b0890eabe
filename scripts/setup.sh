#!/usr/bin/env bash
# Installs everything pybuild and its tests need on a fresh Debian/Ubuntu machine (run as root).
# Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry runc skopeo umoci podman buildah busybox-static debootstrap pigz zstd
              apache2-utils uidmap iproute2 fuse-overlayfs passt golang-github-containers-common)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# podman on these machines: runc, cgroupfs, file events, host netns, bounded nofile.
mkdir -p /etc/containers
if [ ! -f /etc/containers/containers.conf ] || grep -q 'pybuild' /etc/containers/containers.conf; then
  cat > /etc/containers/containers.conf <<'CONF'
# written by pybuild scripts/setup.sh
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi
if [ ! -f /etc/containers/registries.conf ] || grep -q 'pybuild' /etc/containers/registries.conf; then
  cat > /etc/containers/registries.conf <<'CONF'
# written by pybuild scripts/setup.sh: loopback registries started by tests are plain HTTP
unqualified-search-registries = []
[[registry]]
location = "localhost"
insecure = true
[[registry]]
location = "127.0.0.1"
insecure = true
CONF
fi
[ -f /etc/containers/policy.json ] || echo '{"default":[{"type":"insecureAcceptAnything"}]}' > /etc/containers/policy.json

# compat mode: a plain path in a .pth file, no import hook run at every interpreter start.
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q -e '.[test]' --config-settings editable_mode=compat
