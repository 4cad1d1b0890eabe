"""Parity with buildah: the Dockerfiles in tests/parity/ built by pybuild and by `buildah bud
--layers` from the same busybox base give the same config fields and the same filesystem
(paths, types, modes, owners, sizes, content hashes, symlink targets; timestamps excepted).
Every pybuild image also passes `umoci unpack` (diffIDs) and `skopeo inspect`, and runs under
podman with the expected output."""
from __future__ import annotations

import io
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from registry.store import Store
from tests.fixtures.building import need, podman_run, unpack_image
from tests.fixtures.trees import tree_manifest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (runc, overlay mounts)")]

PARITY = Path(__file__).resolve().parents[1] / "parity"
CASES = sorted(p.name for p in PARITY.iterdir() if (p / "Dockerfile").is_file())
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes",
                 "StopSignal", "Healthcheck", "Shell", "OnBuild")
# buildah leaves the mount points of its RUN containers (empty /etc/hosts, /etc/hostname,
# /etc/resolv.conf and /run) in the image; Docker's builders (and pybuild) do not.
SKIP_PATHS = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run")


@pytest.fixture
def buildah_base(busybox_image):
    """busybox:latest of the test store, also in containers-storage as docker.io/library/busybox."""
    need("buildah")
    skopeo = need("skopeo")
    subprocess.run([skopeo, "copy", "-q", f"oci:{busybox_image}/images:busybox:latest",
                    "containers-storage:docker.io/library/busybox:latest"], check=True, capture_output=True,
                   timeout=120)
    return busybox_image


def _buildah_build(case: Path, tag: str, out_layout: Path) -> dict:
    buildah = need("buildah")
    r = subprocess.run([buildah, "bud", "--layers", "--pull-never", "--format", "docker", "-t", tag,
                        "-f", str(case / "Dockerfile"), str(case)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"buildah failed on {case.name}:\n{r.stderr[-2000:]}"
    info = json.loads(subprocess.run([buildah, "inspect", "--type", "image", tag], check=True,
                                     capture_output=True, text=True).stdout)
    subprocess.run([buildah, "push", "-q", tag, f"oci:{out_layout}:latest"], check=True, capture_output=True,
                   timeout=120)
    return info


def _buildah_config(info: dict) -> dict:
    docker = info.get("Docker") or {}
    cfg = dict(docker.get("config") or {})
    labels = dict(cfg.get("Labels") or {})
    labels.pop("io.buildah.version", None)
    cfg["Labels"] = labels
    return cfg


def _norm(cfg: dict) -> dict:
    out = {}
    for k in CONFIG_FIELDS:
        v = cfg.get(k)
        if v in (None, "", [], {}):
            continue
        out[k] = v
    return out


@pytest.mark.parametrize("case", CASES)
def test_parity_with_buildah(case, buildah_base, tmp_path):
    root = buildah_base
    case_dir = PARITY / case
    from builder.engine.build import BuildOptions, build
    tag = f"parity-{case}:latest"
    res = build(BuildOptions(context=str(case_dir), root=str(root), tags=[tag], progress="plain",
                             progress_out=io.StringIO()))
    ours = Store(root).image_config(tag).to_dict()

    btag = f"localhost/pybuild-parity-{case}-{uuid.uuid4().hex[:8]}:latest"
    try:
        info = _buildah_build(case_dir, btag, tmp_path / "buildah-oci")
    finally:
        pass
    try:
        theirs = _buildah_config(info)
        assert _norm(ours["config"]) == _norm(theirs), f"config differs for {case}"

        ours_fs = tree_manifest(unpack_image(root, tag, tmp_path / "ours"), SKIP_PATHS)
        umoci = need("umoci")
        r = subprocess.run([umoci, "unpack", "--image", f"{tmp_path / 'buildah-oci'}:latest",
                            str(tmp_path / "theirs")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        theirs_fs = tree_manifest(tmp_path / "theirs" / "rootfs", SKIP_PATHS)
        only_ours = sorted(set(ours_fs) - set(theirs_fs))
        only_theirs = sorted(set(theirs_fs) - set(ours_fs))
        differ = sorted(p for p in set(ours_fs) & set(theirs_fs) if ours_fs[p] != theirs_fs[p])
        assert (only_ours, only_theirs, [(p, ours_fs[p], theirs_fs[p]) for p in differ]) == ([], [], [])
    finally:
        subprocess.run([need("buildah"), "rmi", "-f", btag], capture_output=True, timeout=120)

    skopeo = need("skopeo")
    inspect = json.loads(subprocess.run([skopeo, "inspect", f"oci:{root}/images:{tag}"], check=True,
                                        capture_output=True, text=True).stdout)
    assert inspect["Digest"] == res.manifest.digest
    expected = (case_dir / "expected-output").read_text()
    assert podman_run(root, tag) == expected
