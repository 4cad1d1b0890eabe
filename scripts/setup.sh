#!/usr/bin/env bash
# Installs everything pybuild and its tests need on a fresh Debian/Ubuntu machine (run as root).
# Idempotent: skips what is already there. pybuild itself goes into the checkout's own venv
# (.venv, made from the system's python3): Debian 12 and Ubuntu 24.04 refuse `pip install` into
# the system interpreter (PEP 668). scripts/demo.sh and scripts/test.sh put .venv/bin first on
# PATH; a user does the same with `. .venv/bin/activate`.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry runc skopeo umoci podman buildah busybox-static debootstrap pigz zstd
              apache2-utils uidmap iproute2 fuse-overlayfs passt golang-github-containers-common
              python3-venv nftables conmon tini catatonit tmux)
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

# System-wide config, only for the peers the tests and the demo drive (podman, skopeo, buildah):
# podman on these machines needs runc, cgroupfs, file events, host netns, bounded nofile, and the
# loopback registries the tests start are plain HTTP. pybuild itself reads none of these files.
# A file is written only when absent or written by this script before (it says so in its first
# line): a machine's own containers configuration is left alone.
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

# The venv: from the system's python3 (PYBUILD_PYTHON overrides), so that another Python earlier
# on PATH (pyenv, conda) does not decide what the scripts run with.
python=${PYBUILD_PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=$(command -v python3)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup: $python is older than 3.11; set PYBUILD_PYTHON to a python3.11+" >&2; exit 1; }
  echo "setup: making the venv .venv with $python"
  rm -rf .venv
  "$python" -m venv .venv
fi
# Installed once per change of pyproject.toml (the stamp holds its checksum): a second setup run
# costs no pip start. compat mode: a plain path in a .pth file, no import hook at every start.
stamp=.venv/.pybuild-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/pybuild ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pybuild (editable) with its test extras into .venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q -e '.[test]' \
    --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi

# Rootless (tests/rootless, docs/rootless.md): an ordinary user `pbuser` with a subordinate id range
# of 65536 ids, as rootless podman and buildah need (newuidmap/newgidmap come with Debian's uidmap).
# useradd is told not to allocate its own range, so the range is the same on every machine.
if ! id pbuser >/dev/null 2>&1; then
  useradd -m -s /bin/bash -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 pbuser
fi
grep -q '^pbuser:200000:65536$' /etc/subuid 2>/dev/null || usermod --add-subuids 200000-265535 pbuser
grep -q '^pbuser:200000:65536$' /etc/subgid 2>/dev/null || usermod --add-subgids 200000-265535 pbuser
# /dev/net/tun as udev makes it on a stock system (0666): rootless pasta opens it to give a RUN step
# or container its private network; a machine without udev (this CI's) leaves it 0600, root only.
# Opening it grants nothing by itself: making an interface needs CAP_NET_ADMIN in its namespace.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" = 600 ]; then chmod 0666 /dev/net/tun; fi

# Emulation for foreign-platform RUN steps (the multi-platform tests): Debian's qemu-user-static,
# registered in binfmt_misc with the F (fix-binary) flag, so the interpreter is opened now and
# works inside a rootfs that does not contain it. pybuild never registers handlers itself; this is
# the administrator's step, done here for the tests. An entry registered without F is replaced.
# PYBUILD_NO_EMULATION=1 skips this part (the multi-platform tests then skip, saying why).
if [ "${PYBUILD_NO_EMULATION:-}" != 1 ]; then
  if ! command -v qemu-aarch64-static >/dev/null; then
    echo "setup: installing qemu-user-static (emulated RUN for --platform)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq qemu-user-static >/dev/null || { apt-get update -qq; apt-get install -y -qq qemu-user-static >/dev/null; }
  fi
  B=/proc/sys/fs/binfmt_misc
  [ -e $B/register ] || mount -t binfmt_misc binfmt_misc $B
  for a in aarch64 arm riscv64 s390x ppc64le; do
    conf=/usr/lib/binfmt.d/qemu-$a.conf
    [ -f "$conf" ] || continue
    if [ -e $B/qemu-$a ] && ! grep -q '^flags:.*F' $B/qemu-$a; then
      echo -1 > $B/qemu-$a                          # registered without F: register it again
    fi
    [ -e $B/qemu-$a ] || cat "$conf" > $B/register  # Debian's line carries the flags OPF
  done
  # An arm64 busybox for the offline arm64 base image (tests/fixtures/images.py): the .deb is
  # cached under /var/cache/pybuild and extracted by the fixture.
  cache=/var/cache/pybuild
  mkdir -p $cache
  if ! ls $cache/busybox-static_*_arm64.deb >/dev/null 2>&1; then
    echo "setup: fetching busybox-static:arm64 into $cache"
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    (cd $cache && apt-get download -qq -o APT::Sandbox::User=root busybox-static:arm64)
  fi
fi

# Two small .debs the SBOM test installs into a Debian minbase with dpkg -i
# (tests/builder/test_supply_chain.py): cached under /var/cache/pybuild, fetched once.
cache=/var/cache/pybuild
mkdir -p $cache
if ! ls $cache/tini_*_amd64.deb $cache/arch-test_*_all.deb >/dev/null 2>&1 && [ "$(dpkg --print-architecture)" = amd64 ]; then
  echo "setup: fetching tini and arch-test .debs into $cache"
  (cd $cache && { apt-get download -qq -o APT::Sandbox::User=root tini arch-test 2>/dev/null ||
                  { apt-get update -qq; apt-get download -qq -o APT::Sandbox::User=root tini arch-test; }; }) ||
    echo "setup: could not fetch tini/arch-test (the SBOM test will skip)"
fi
