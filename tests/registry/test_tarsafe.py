"""registry.tarsafe: applying layers (whiteouts, owners, sparse files) and a corpus of hostile tars.

Every hostile archive is extracted into <tmp>/root next to <tmp>/outside, which holds a sentinel
tree; after each case the outside tree must be byte-for-byte and mode-for-mode unchanged.
"""
from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Callable

import pytest

from registry.compression import Compression
from registry.layer import LayerWriter, write_tree_tar
from registry.errors import RegistryError
from registry.tarsafe import ArchiveError, UnsafeArchiveError, apply_layer, extract_tar

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes, overlayfs)")


class T:
    """Builds a tar in memory, one entry at a time."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, name: str, type: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
            mode: int = 0o644, uid: int = 0, gid: int = 0, pax: dict[str, str] | None = None) -> "T":
        ti = tarfile.TarInfo(name)
        ti.type = type
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.linkname = linkname
        ti.mtime = 1_600_000_000
        if pax:
            ti.pax_headers = pax
        if type == tarfile.REGTYPE:
            ti.size = len(data)
            self.tf.addfile(ti, io.BytesIO(data))
        else:
            self.tf.addfile(ti)
        return self

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def snapshot(top: Path) -> dict[str, tuple]:
    """Path -> (type, mode, size, content or link target) for every entry under `top`."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISREG(st.st_mode):
                extra: object = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            else:
                extra = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, extra)
    return out


@pytest.fixture
def arena(tmp_path: Path):  # type: ignore[no-untyped-def]
    """(root, outside): extract into root; outside holds sentinels that must never change."""
    top = tmp_path / "arena"
    outside = top / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_text("do not touch")
    (outside / "dir" / "victim").write_text("keep me")
    root = top / "root"
    root.mkdir()
    before = snapshot(outside)
    yield root, outside
    assert snapshot(outside) == before, "an archive entry escaped the extraction root"
    assert sorted(os.listdir(top)) == ["outside", "root"]


def run(root: Path, tar: bytes, **kw) -> None:  # type: ignore[no-untyped-def]
    apply_layer(io.BytesIO(tar), root, **kw)


# -- hostile corpus: refused ------------------------------------------------------------------
REFUSED: dict[str, Callable[[], bytes]] = {
    "dotdot-file": lambda: T().add("../outside/secret", data=b"pwned").bytes(),
    "dotdot-nested": lambda: T().add("a/b/../../../outside/secret", data=b"pwned").bytes(),
    "dotdot-dir": lambda: T().add("../outside/newdir", tarfile.DIRTYPE).bytes(),
    "hardlink-dotdot": lambda: T().add("hl", tarfile.LNKTYPE, linkname="../outside/secret").bytes(),
    "whiteout-dotdot": lambda: T().add("../outside/.wh.secret").bytes(),
    "whiteout-of-dotdot": lambda: T().add("dir/.wh..").bytes(),
    "symlink-loop": lambda: T().add("a", tarfile.SYMTYPE, linkname="b").add("b", tarfile.SYMTYPE, linkname="a")
    .add("a/x", data=b"x").bytes(),
    "hardlink-self": lambda: T().add("f", data=b"1").add("f", tarfile.LNKTYPE, linkname="f").bytes(),
    "hardlink-missing": lambda: T().add("h", tarfile.LNKTYPE, linkname="nope").bytes(),
    "hardlink-abs-outside": lambda: T().add("h", tarfile.LNKTYPE, linkname=str(Path("/outside/secret"))).bytes(),
    "file-as-parent": lambda: T().add("f", data=b"1").add("f/g", data=b"2").bytes(),
    "garbage": lambda: os.urandom(4096),
    "truncated": lambda: T().add("big", data=os.urandom(100_000)).bytes()[:20_000],
    "unknown-type": lambda: T().add("weird", b"Z").bytes(),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_refused(arena, case: str) -> None:  # type: ignore[no-untyped-def]
    root, _ = arena
    with pytest.raises(ArchiveError) as ei:
        run(root, REFUSED[case]())
    if case.startswith(("dotdot", "hardlink-dotdot", "whiteout")):
        assert isinstance(ei.value, UnsafeArchiveError)
        assert "'..'" in str(ei.value) or "whiteout" in str(ei.value)


# -- hostile corpus: applied safely (re-rooted, as inside a container) -------------------------
def test_absolute_names_are_rerooted(arena) -> None:  # type: ignore[no-untyped-def]
    root, outside = arena
    run(root, T().add(str(outside / "secret"), data=b"inside").add("/etc/passwd", data=b"root:x:0:0").bytes())
    assert (root / str(outside).lstrip("/") / "secret").read_bytes() == b"inside"
    assert (root / "etc" / "passwd").read_bytes() == b"root:x:0:0"


@pytest.mark.parametrize("target", ["abs", "climb"])
def test_symlink_parent_resolves_inside_root(arena, target: str) -> None:  # type: ignore[no-untyped-def]
    root, outside = arena
    link = str(outside / "dir") if target == "abs" else "../../../../../../../../" + str(outside / "dir").lstrip("/")
    run(root, T().add("evil", tarfile.SYMTYPE, linkname=link).add("evil/victim", data=b"pwned")
        .add("evil/new", data=b"x").bytes())
    inside = root / str(outside / "dir").lstrip("/")
    assert (inside / "victim").read_bytes() == b"pwned"
    assert os.readlink(root / "evil") == link


def test_symlink_in_earlier_layer_is_not_followed_out(arena) -> None:  # type: ignore[no-untyped-def]
    root, outside = arena
    run(root, T().add("etc", tarfile.SYMTYPE, linkname=str(outside)).bytes())
    run(root, T().add("etc/secret", data=b"pwned").add("etc/.wh.dir").bytes())
    assert (root / str(outside).lstrip("/") / "secret").read_bytes() == b"pwned"


def test_final_symlink_is_replaced_not_followed(arena) -> None:  # type: ignore[no-untyped-def]
    root, outside = arena
    run(root, T().add("s", tarfile.SYMTYPE, linkname=str(outside / "secret")).add("s", data=b"new").bytes())
    assert (root / "s").read_bytes() == b"new" and not (root / "s").is_symlink()


def test_symlink_replaced_by_directory_in_same_layer(arena) -> None:  # type: ignore[no-untyped-def]
    root, outside = arena
    run(root, T().add("d", tarfile.SYMTYPE, linkname=str(outside / "dir")).add("d", tarfile.DIRTYPE, mode=0o755)
        .add("d/victim", data=b"pwned").bytes())
    assert (root / "d").is_dir() and not (root / "d").is_symlink()
    assert (root / "d" / "victim").read_bytes() == b"pwned"


def test_hardlink_to_symlink_links_the_symlink(arena) -> None:  # type: ignore[no-untyped-def]
    root, outside = arena
    run(root, T().add("s", tarfile.SYMTYPE, linkname=str(outside / "secret")).add("h", tarfile.LNKTYPE, linkname="s")
        .bytes())
    assert os.readlink(root / "h") == str(outside / "secret")


def test_whiteouts_through_symlinks_stay_inside(arena) -> None:  # type: ignore[no-untyped-def]
    root, outside = arena
    (root / "keep").mkdir()
    (root / "keep" / "victim").write_text("lower")
    run(root, T().add("l", tarfile.SYMTYPE, linkname=str(outside / "dir")).bytes())
    run(root, T().add("l/.wh.victim").add("l/.wh..wh..opq").bytes())
    assert (root / "keep" / "victim").exists()


def test_forged_overlay_xattr_is_dropped(arena) -> None:  # type: ignore[no-untyped-def]
    root, _ = arena
    run(root, T().add("d", tarfile.DIRTYPE, pax={"SCHILY.xattr.trusted.overlay.opaque": "y"}).bytes(),
        whiteouts="overlay")
    with pytest.raises(OSError):
        os.getxattr(root / "d", "trusted.overlay.opaque")


def test_duplicates_last_wins(arena) -> None:  # type: ignore[no-untyped-def]
    root, _ = arena
    run(root, T().add("f", data=b"first").add("f", data=b"second").add("d", tarfile.DIRTYPE)
        .add("d", data=b"now a file").bytes())
    assert (root / "f").read_bytes() == b"second"
    assert (root / "d").read_bytes() == b"now a file"


def test_tar_bomb_limit(arena) -> None:  # type: ignore[no-untyped-def]
    root, _ = arena
    tar = T().add("a", data=bytes(600_000)).add("b", data=bytes(600_000)).bytes()
    with pytest.raises(ArchiveError, match="limit"):
        run(root, tar, max_bytes=1_000_000)


def test_sparse_file_stays_sparse(arena, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _ = arena
    src = tmp_path / "sparse-src"
    src.mkdir()
    with open(src / "huge", "wb") as f:
        f.truncate(256 << 20)
        f.seek(100 << 20)
        f.write(b"data in the middle")
    tar = subprocess.run(["tar", "--sparse", "--format=posix", "-C", str(src), "-cf", "-", "huge"],
                         capture_output=True, check=True).stdout
    assert len(tar) < 1 << 20
    run(root, tar)
    st = os.stat(root / "huge")
    assert st.st_size == 256 << 20
    assert st.st_blocks * 512 < 8 << 20
    with open(root / "huge", "rb") as f:
        f.seek(100 << 20)
        assert f.read(18) == b"data in the middle"


@needs_root
def test_devices_setuid_and_owners(arena) -> None:  # type: ignore[no-untyped-def]
    root, _ = arena
    ti_dev = T().add("dev/null", tarfile.CHRTYPE, mode=0o666)
    ti_dev.tf.members[-1].devmajor = 1
    tar = (ti_dev.add("bin/su", data=b"\x7fELF", mode=0o4755, uid=1000, gid=1000)
           .add("tmp", tarfile.DIRTYPE, mode=0o1777).add("sgid", tarfile.DIRTYPE, mode=0o2750, gid=50).bytes())
    run(root, tar)
    assert stat.S_ISCHR(os.lstat(root / "dev/null").st_mode)
    st = os.lstat(root / "bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (1000, 1000)
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    st = os.lstat(root / "sgid")
    assert stat.S_IMODE(st.st_mode) == 0o2750 and st.st_gid == 50


# -- normal layers -----------------------------------------------------------------------------
def test_round_trip_through_compressed_layer(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "usr" / "bin" / "tool").write_bytes(os.urandom(50000))
    os.chmod(src / "usr" / "bin" / "tool", 0o755)
    os.symlink("tool", src / "usr" / "bin" / "alias")
    os.link(src / "usr" / "bin" / "tool", src / "usr" / "bin" / "tool2")
    (src / "ro").mkdir(mode=0o555)
    (src / "ro" / "f").write_text("f")
    os.chmod(src / "ro", 0o555)
    for p in [src / "usr" / "bin" / "tool", src / "usr", src]:
        os.utime(p, (1_500_000_000, 1_500_000_000), follow_symlinks=False)
    for algorithm in ("gzip", "zstd", "uncompressed"):
        blob = io.BytesIO()
        with LayerWriter(blob, Compression(algorithm)) as lw:
            write_tree_tar(src, lw)
        assert lw.result is not None
        dst = tmp_path / f"dst-{algorithm}"
        stats = apply_layer(io.BytesIO(blob.getvalue()), dst, lw.result.media_type)
        assert stats.entries == 7
        assert snapshot(dst) == snapshot(src)
        assert os.stat(dst / "usr").st_mtime == 1_500_000_000
        assert os.stat(dst / "usr/bin/tool").st_ino == os.stat(dst / "usr/bin/tool2").st_ino


def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    root = tmp_path / "r"
    run(root, T().add("etc", tarfile.DIRTYPE).add("etc/a", data=b"a").add("etc/b", data=b"b")
        .add("var/cache/x", data=b"x").add("var/cache/sub/y", data=b"y").add("gone/deep/z", data=b"z").bytes())
    run(root, T().add("etc/.wh.a").add(".wh.gone").add("var/cache/new", data=b"n")
        .add("var/cache/.wh..wh..opq").add("var/cache/newer", data=b"n2").add(".wh.never-existed").bytes())
    assert sorted(os.listdir(root / "etc")) == ["b"]
    assert not (root / "gone").exists()
    assert sorted(os.listdir(root / "var/cache")) == ["new", "newer"]


def test_extract_without_whiteouts_and_chown(tmp_path: Path) -> None:
    root = tmp_path / "r"
    extract_tar(io.BytesIO(T().add(".wh.file", data=b"w", uid=5).add("d/f", data=b"x", uid=5).bytes()), root,
                chown=(os.getuid(), os.getgid()))
    assert (root / ".wh.file").read_bytes() == b"w"
    assert os.lstat(root / "d" / "f").st_uid == os.getuid()


def test_media_type_is_checked(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unsupported layer media type"):
        apply_layer(io.BytesIO(T().bytes()), tmp_path / "r", "application/json")


# -- fuzzing: only ArchiveError escapes, nothing lands outside ---------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SEED_TAR = (T().add("d", tarfile.DIRTYPE).add("d/f", data=b"hello" * 50).add("s", tarfile.SYMTYPE, linkname="d/f")
             .add("h", tarfile.LNKTYPE, linkname="d/f").add("d/.wh.x").add("p" * 150, data=b"long")
             .add("x", pax={"SCHILY.xattr.user.k": "v"}).bytes())


def _fuzz_extract(tmp: Path, data: bytes) -> None:
    import shutil

    top = tmp / "fz"
    shutil.rmtree(top, ignore_errors=True)
    root = top / "root"
    try:
        apply_layer(io.BytesIO(data), root)
    except RegistryError:  # ArchiveError, or CompressionError for a corrupt compressed stream
        pass
    assert sorted(os.listdir(top)) == ["root"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes) -> None:
    _fuzz_extract(tmp_path, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(_SEED_TAR) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_tar(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_SEED_TAR)
    for pos, val in flips:
        data[pos] = val
    _fuzz_extract(tmp_path, bytes(data))


def test_oversized_pax_header_is_refused_without_reading_it(tmp_path: Path) -> None:
    from registry.tarwriter import PAXTYPE, encode_header

    header = encode_header(b"PaxHeader", PAXTYPE, size=1 << 30)  # claims 1 GiB of PAX records
    with pytest.raises(ArchiveError, match="extended header"):
        apply_layer(io.BytesIO(header + bytes(1024)), tmp_path / "r")


@pytest.mark.parametrize("pax", [{"path": "a\0b"}, {"linkpath": "x\0y"}])
def test_nul_bytes_in_pax_names_are_refused(tmp_path: Path, pax: dict[str, str]) -> None:
    kind = tarfile.SYMTYPE if "linkpath" in pax else tarfile.REGTYPE
    tar = T().add("f", kind, linkname="t" if kind == tarfile.SYMTYPE else "", pax=pax).bytes()
    with pytest.raises(ArchiveError, match="NUL"):
        apply_layer(io.BytesIO(tar), tmp_path / "r")
