"""Hostile archives through every entry point: nothing lands outside the target, each case is
applied safely (as Docker would) or refused with a clear error.

Entry points: a layer of a pulled image (push to a real registry:2, `pybuild pull`, then a build
`FROM` it exports the rootfs with `--output type=local`, which extracts every layer with
registry.tarsafe), `ADD local.tar` in a real build, and `extract_tar` itself for what the
other two cannot carry (huge sparse entries). Each case sits beside an `outside` directory
with a sentinel file that hostile entries aim at; it must be unchanged afterwards.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from registry.tarsafe import extract_tar


def _sparse_tar(tmp_path: Path, apparent: int, fmt: str) -> Path:
    """A tar (GNU tar's own sparse encoding) of a file of `apparent` bytes with data only at the end."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big"
    with open(big, "wb") as f:
        f.truncate(apparent)
        f.seek(apparent)
        f.write(b"tail\n")
    out = tmp_path / f"sparse-{fmt}.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", str(src), "-cf", str(out), "big"], check=True)
    big.unlink()
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_huge_sparse_entry_is_written_as_holes(tmp_path: Path, fmt: str) -> None:
    """A 10 KB archive announcing a 1 TiB file: extracted as a sparse file with the right
    content, without reading a terabyte of zeros (that would take hours: the timeout fails)."""
    apparent = 1 << 40
    tar = _sparse_tar(tmp_path, apparent, fmt)
    assert tar.stat().st_size < 64 * 1024
    dest = tmp_path / "dest"
    with open(tar, "rb") as f:
        stats = extract_tar(f, dest)
    out = dest / "big"
    st = out.stat()
    assert st.st_size == apparent + 5 and stats.bytes == apparent + 5
    assert st.st_blocks * 512 < 1 << 20          # holes, not a terabyte of disk
    with open(out, "rb") as f:
        f.seek(apparent - 3)
        assert f.read() == b"\0\0\0tail\n"
