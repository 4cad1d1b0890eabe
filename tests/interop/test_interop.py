"""Interop with the peer tools through a real registry:2: what pybuild pushes, skopeo pulls and
podman runs; what skopeo pushes, pybuild pulls and verifies."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from typing import Iterator

import pytest

from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient
from registry.manifest import Manifest
from registry.store import Store
from registry.transfer import pull, push

pytestmark = pytest.mark.integration

# Flags instead of a containers.conf: this machine needs runc, cgroupfs, file events and bounded rlimits.
PODMAN_FLAGS = ["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package {tool}; run scripts/setup.sh)")
    return path


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    c = RegistryClient(ClientOptions())
    yield c
    c.close()


def _with_cmd(store: Store, src: str, name: str, cmd: list[str]) -> str:
    """Tag `name` as `src` with a different Cmd (a new config and manifest, same layers)."""
    desc, manifest = store.image_manifest(src)
    config = store.get_config(manifest.config.digest)
    config.config.cmd = cmd
    cdesc = store.put_config(config, manifest.config.media_type)
    new = Manifest(config=cdesc, layers=manifest.layers, media_type=manifest.media_type)
    mdesc = store.put_manifest(new)
    store.tag(name, mdesc)
    return mdesc.digest


def _verify_tree(store: Store, digest: str) -> None:
    """Every blob under a manifest is present and hashes to its digest."""
    doc = store.get_manifest(digest)
    for d in [doc.config, *doc.layers]:
        assert store.read_blob(d.digest, verify=True)


def test_skopeo_pulls_and_podman_runs_what_pybuild_pushes(client, registry, busybox_image, tmp_path):
    skopeo, podman = _need("skopeo"), _need("podman")
    store = Store(busybox_image)
    ref = f"{registry.host}/interop/busybox:{uuid.uuid4().hex[:8]}"
    digest = _with_cmd(store, "busybox:latest", ref, ["echo", "hello from pybuild"])
    assert push(client, store, ref).digest == digest

    # skopeo pulls it into an OCI layout: the same manifest digest, verified layers.
    out = tmp_path / "oci"
    subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}:x"],
                   check=True, capture_output=True, timeout=120)
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    inspected = json.loads(subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"],
                                          check=True, capture_output=True, text=True).stdout)
    assert inspected["Digest"] == digest

    # podman pulls it from the registry and runs its Cmd.
    try:
        subprocess.run([podman, *PODMAN_FLAGS, "pull", "-q", "--tls-verify=false", ref],
                       check=True, capture_output=True, timeout=120)
        run = subprocess.run([podman, *PODMAN_FLAGS, "run", "--rm", "--network", "host",
                              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "hello from pybuild"
    finally:
        subprocess.run([podman, *PODMAN_FLAGS, "rmi", "-f", ref], capture_output=True)


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_pybuild_pulls_what_skopeo_pushes(client, registry, busybox_image, tmp_path, fmt):
    skopeo = _need("skopeo")
    src = Store(busybox_image)
    ref = f"{registry.host}/interop/from-skopeo-{fmt}:v1"
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--format", fmt,
                    f"oci:{src.layout}:busybox:latest", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    remote = json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                       check=True, capture_output=True).stdout)
    want_type = mt.OCI_MANIFEST if fmt == "oci" else mt.DOCKER_MANIFEST
    assert remote["mediaType"] == want_type

    dst = Store(tmp_path / "dst")
    res = pull(client, ref, dst)
    assert res.media_type == want_type
    _verify_tree(dst, res.digest)
    # Same layer content as the source image (skopeo keeps compressed blobs as they are).
    _, src_manifest = src.image_manifest("busybox:latest")
    got = dst.get_manifest(res.digest)
    assert [x.digest for x in got.layers] == [x.digest for x in src_manifest.layers]
    if fmt == "oci":
        assert res.digest == src.resolve("busybox:latest").digest


def test_umoci_unpacks_what_pybuild_pulled(client, registry, busybox_image, tmp_path):
    """A pushed and re-pulled image is a valid OCI layout image: umoci checks diffIDs on unpack."""
    umoci = _need("umoci")
    src = Store(busybox_image)
    ref = f"{registry.host}/interop/umoci:v1"
    src.tag(ref, src.resolve("busybox:latest"))
    push(client, src, ref)
    dst = Store(tmp_path / "dst")
    pull(client, ref, dst)
    bundle = tmp_path / "bundle"
    r = subprocess.run([umoci, "unpack", "--image", f"{dst.layout}:{ref}", str(bundle)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
