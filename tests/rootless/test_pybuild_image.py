"""pybuild's own image (scripts/image, made by scripts/build-image.sh) in a podman
container started without --privileged: `podman run --rm -v CTX:/ctx IMAGE build -t REG/app
--push /ctx` builds an image with RUN steps, pushes it to registry:2, and it runs.

Needs what the image is made of: the Debian minbase (cached by the conformance suite), the
machine's Debian mirror (apt-get in a RUN step) and PyPI through pip (the dependencies' wheels);
skipped, saying which, when one is missing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.cli import REPO
from tests.fixtures.images import make_busybox_rootfs

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="starts rootful podman containers: needs root"),
              pytest.mark.skipif(shutil.which("podman") is None or shutil.which("skopeo") is None,
                                 reason="podman and skopeo are Debian's podman and skopeo packages"),
              pytest.mark.large]


def test_pybuild_image_builds_pushes_and_runs_in_an_unprivileged_podman_container(tmp_path, registry):
    from registry.imports import import_image
    from registry.store import Store
    from tests.fixtures.conformance_cases import ConformanceSetupError, debian_minbase, mirror
    try:
        base = debian_minbase()
        mirror()
    except ConformanceSetupError as exc:
        pytest.skip(f"no Debian minbase or mirror: {exc}")
    store = tmp_path / "store"
    import_image(Store(store), base, "debian:bookworm", created="2000-01-01T00:00:00Z")
    env = {**os.environ, "PYBUILD_ROOT": str(store), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    r = subprocess.run(["bash", str(REPO / "scripts" / "build-image.sh"), "pybuild:test"], capture_output=True,
                       text=True, env=env, timeout=1200)
    if r.returncode != 0 and "pip" in r.stderr and ("No matching distribution" in r.stderr or "Could not" in r.stderr):
        pytest.skip(f"the dependencies' wheels could not be fetched through pip: {r.stderr[-500:]}")
    assert r.returncode == 0, r.stdout + r.stderr

    runroot = Path(tempfile.mkdtemp(prefix="pb-prun-", dir="/tmp"))    # podman: at most 50 characters
    podman = ["podman", "--root", str(tmp_path / "proot"), "--runroot", str(runroot)]
    try:
        subprocess.run(["skopeo", "copy", "-q", f"oci:{store}/images:pybuild:test",
                        f"containers-storage:[overlay@{tmp_path / 'proot'}+{runroot}]localhost/pybuild:test"],
                       check=True, capture_output=True)
        ctx = tmp_path / "app"
        make_busybox_rootfs(ctx / "rootfs")
        (ctx / "Dockerfile").write_text(
            "FROM busybox\nRUN echo built-in-podman > /msg && rm -rf /home/app && mkdir /home/app"
            " && chown 1000:1000 /home/app\nUSER app\nRUN id > /tmp/id\nCMD [\"sh\", \"-c\", \"cat /msg /tmp/id\"]\n")
        vol = tmp_path / "vol"
        vol.mkdir()
        run = [*podman, "run", "--rm", "--pull", "never", "-v", f"{vol}:/var/lib/pybuild", "-v", f"{ctx}:/ctx:ro",
               "localhost/pybuild:test"]
        ref = f"{registry.host}/in-podman/app:1"
        for args in (["import", "/ctx/rootfs", "busybox:latest"], ["build", "-t", ref, "--push", "/ctx"]):
            r = subprocess.run([*run, *args], capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stdout + r.stderr
        # A fresh container and an empty store pull what was pushed and run it.
        r = subprocess.run([*podman, "run", "--rm", "--pull", "never", "localhost/pybuild:test", "run", "--rm", ref],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout == "built-in-podman\nuid=1000(app) gid=1000(app)\n"
    finally:
        subprocess.run([*podman, "rm", "-a", "-f"], capture_output=True)
        subprocess.run(["umount", "-R", str(tmp_path / "proot" / "overlay")], capture_output=True)
        shutil.rmtree(runroot, ignore_errors=True)
