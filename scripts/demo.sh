#!/usr/bin/env bash
# The main job end to end on a fresh machine (root, Debian/Ubuntu):
#   set up -> make a busybox base image with `pybuild import` -> start a local registry:2 ->
#   lint and build the samples (and rebuild one from the cache) -> push -> pull back into a
#   fresh store -> run the pulled image with podman and check its output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pybuild lives in the checkout's venv (see setup.sh); a user gets it with `. .venv/bin/activate`.
export PATH="$PWD/.venv/bin:$PATH"

work=$(mktemp -d /tmp/pybuild-demo.XXXXXX)
registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export PYBUILD_ROOT="$work/root"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. a busybox base image from Debian's busybox-static, with pybuild import"
rootfs="$work/busybox-rootfs"
mkdir -p "$rootfs"/{bin,etc,root,tmp,home/app,proc,sys,dev,var,usr/bin}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
ln -s ../../bin/busybox "$rootfs/usr/bin/env"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\napp:x:1000:\n' > "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"; chmod 700 "$rootfs/root"; chown 1000:1000 "$rootfs/home/app"
pybuild import "$rootfs" busybox:latest

say "2. a local registry:2 on a free port"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry-data
http:
  addr: 127.0.0.1:$port
log:
  level: error
YML
/usr/bin/docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null
repo="127.0.0.1:$port/pybuild-demo"

say "3. lint and build the samples"
for dir in samples/*/; do
  name=$(basename "$dir")
  pybuild lint -f "$dir/Dockerfile"
  pybuild build --progress plain -t "$repo/$name:latest" "$dir"
done

say "4. rebuild hello: every step comes from the cache"
pybuild build --progress plain -t "$repo/hello:latest" samples/hello 2>&1 | tee "$work/rebuild.log"
grep -q CACHED "$work/rebuild.log"

say "5. push hello and multistage to the registry"
pybuild push "$repo/hello:latest"
pybuild push "$repo/multistage:latest"

say "6. pull them back into a fresh store"
export PYBUILD_ROOT="$work/root2"
pybuild pull "$repo/hello:latest"
pybuild pull "$repo/multistage:latest"
pybuild images

say "7. run the pulled images with podman"
podman_flags=(--runtime runc --cgroup-manager cgroupfs --events-backend file)
run_flags=(--rm --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
run_image() {   # copy from pybuild's OCI store into podman's storage, then run
  local local_name="localhost/pybuild-demo-$1:latest"
  skopeo copy -q "oci:$PYBUILD_ROOT/images:$repo/$1:latest" "containers-storage:$local_name"
  podman "${podman_flags[@]}" run "${run_flags[@]}" "$local_name"
  podman "${podman_flags[@]}" rmi -f "$local_name" >/dev/null 2>&1 || true
}
out=$(run_image hello)
echo "$out"
[ "$(echo "$out" | head -1)" = "Hello from pybuild" ]
say "7b. and with pybuild run"; out=$(pybuild run --rm "$repo/hello:latest"); echo "$out"; [ "$(echo "$out" | head -1)" = "Hello from pybuild" ]
out=$(run_image multistage)
echo "$out"
echo "$out" | grep -q "report version 1.0"

say "demo passed: built, cached, pushed, pulled back and ran"
