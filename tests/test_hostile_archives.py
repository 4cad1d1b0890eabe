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


def _pax_tar(name: str, linkname: str = "", pax: dict[str, str] | None = None) -> bytes:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("placeholder")
        ti.type = tarfile.SYMTYPE if linkname else tarfile.REGTYPE
        ti.linkname = "x" if linkname else ""
        ti.pax_headers = {"path": name, **({"linkpath": linkname} if linkname else {}), **(pax or {})}
        tf.addfile(ti)
    return buf.getvalue()


@pytest.mark.parametrize("name,linkname,pax", [
    ("a\0b", "", None),
    ("link", "/etc\0passwd", None),
    ("f", "", {"SCHILY.xattr.user.a\0b": "v"}),
])
def test_nul_bytes_in_names_are_archive_errors(tmp_path: Path, name: str, linkname: str, pax) -> None:
    """A PAX header can smuggle a NUL into a name, link target or xattr name: the archive is
    refused with ArchiveError (not a ValueError from the os module)."""
    import io
    from registry.tarsafe import ArchiveError
    with pytest.raises(ArchiveError, match="NUL byte"):
        extract_tar(io.BytesIO(_pax_tar(name, linkname, pax)), tmp_path / "dest")
