"""A full disk: an 8 MiB tmpfs mounted as the store root (the tests run as root), then an
import, a pull and a build of ~20 MB of incompressible data. Each fails with a clear
"no space left on device" error (exit 1, no traceback), keeps nothing half-written (no
partial blob, no temp file, nothing `check_root` would report), and the store works again
for something small right after.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.storecheck import check_root
from tests.fixtures.cli import run_pybuild

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
              pytest.mark.timeout(180)]
BIG = 20_000_000


@pytest.fixture
def small_root(tmp_path: Path):
    """An 8 MiB tmpfs; the store root is a directory on it. Unmounted in teardown."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt / "root"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    d = tmp_path / "big"
    d.mkdir()
    (d / "random.bin").write_bytes(os.urandom(BIG))
    return d


def _pybuild(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_pybuild(*args, root=root, timeout=150)


def _assert_clean_failure(r: subprocess.CompletedProcess, root: Path) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    ingest = root / "images" / "ingest"
    assert [p.name for p in ingest.iterdir() if not p.name.endswith(".lock")] == []
    assert check_root(root) == []
    used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert used < 1 << 20, f"{used} bytes still used on the small disk"


def _small_import_works(root: Path, tmp_path: Path) -> None:
    small = tmp_path / "tiny"
    small.mkdir(exist_ok=True)
    (small / "hello").write_text("hello")
    r = _pybuild(root, "import", str(small), "tiny:1")
    assert r.returncode == 0, r.stderr


def test_import_onto_a_full_disk(small_root: Path, big_tree: Path, tmp_path: Path) -> None:
    _assert_clean_failure(_pybuild(small_root, "import", str(big_tree), "big:1"), small_root)
    _small_import_works(small_root, tmp_path)


def test_pull_onto_a_full_disk(small_root: Path, big_tree: Path, registry, tmp_path: Path) -> None:
    """The resumable partial download is removed too: kept, it would keep the disk full."""
    src = tmp_path / "src-root"
    assert _pybuild(src, "import", str(big_tree), "big:1").returncode == 0
    ref = f"{registry.host}/diskfull/big:1"
    assert _pybuild(src, "push", "-q", "big:1", ref).returncode == 0
    _assert_clean_failure(_pybuild(small_root, "pull", ref), small_root)
    _small_import_works(small_root, tmp_path)


def test_build_onto_a_full_disk(small_root: Path, big_tree: Path, tmp_path: Path) -> None:
    (big_tree / "Dockerfile").write_text("FROM scratch\nCOPY random.bin /random.bin\n")
    _assert_clean_failure(_pybuild(small_root, "build", "-q", "-t", "big:1", str(big_tree)), small_root)
    _small_import_works(small_root, tmp_path)


def test_run_filling_the_disk(small_root: Path, busybox_rootfs: Path, tmp_path: Path) -> None:
    """A RUN step that writes more than the disk holds: the step fails with its exit code and
    the command's own message, and the overlay snapshot it wrote into is removed."""
    assert _pybuild(small_root, "import", str(busybox_rootfs), "busybox:latest").returncode == 0
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN head -c 20000000 /dev/urandom > /fill\n")
    r = _pybuild(small_root, "build", "--progress", "plain", "-t", "fill:1", str(ctx))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "RUN failed with exit code 1" in r.stderr and "head: standard output" in r.stderr, r.stderr
    assert check_root(small_root) == []
    assert list((small_root / "snapshots").iterdir()) == []
    _small_import_works(small_root, tmp_path)


def test_full_disk_for_an_output_file(small_root: Path, root: Path, tmp_path: Path) -> None:
    """ENOSPC outside the store (here the --metadata-file's disk is full): one clear line,
    exit 1, no traceback."""
    disk = small_root.parent
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\xff" * (1 << 20))
                f.flush()
        except OSError:
            pass
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x" * 10000)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    r = _pybuild(root, "build", "-q", "--metadata-file", str(disk / "meta.json"), str(ctx))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "no space left on device" in r.stderr, r.stderr
