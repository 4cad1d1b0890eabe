"""Hostile archives through every entry point: nothing lands outside the target, each case is
applied safely (as Docker would) or refused with a clear error.

Entry points: a layer of a pulled image (push to a real registry:2, `pybuild pull`, then a build
`FROM` it exports the rootfs with `--output type=local`, which extracts every layer with
registry.tarsafe), `ADD local.tar` in a real build, and `extract_tar` itself for what the
other two cannot carry (huge sparse entries). Each case sits beside an `outside` directory
with a sentinel file that hostile entries aim at; it must be unchanged afterwards.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from registry.tarsafe import extract_tar

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds mount overlayfs; device nodes need root")
DEEP = 12 * "../"


@dataclass
class E:
    """One tar entry of a hostile corpus."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b"x"
    link: str = ""
    mode: int = 0o644
    dev: tuple[int, int] = (0, 0)
    pax: dict[str, str] = field(default_factory=dict)


def make_tar(entries: list[E]) -> bytes:
    """An uncompressed PAX tar of `entries`, in order (duplicates allowed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.linkname, ti.mtime = e.type, e.mode, e.link, 1_600_000_000
            ti.devmajor, ti.devminor = e.dev
            ti.pax_headers = dict(e.pax)
            if e.type == tarfile.REGTYPE:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def snapshot(top: Path) -> dict[str, tuple]:
    """path -> (mode, size, content or link) of everything under `top`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            extra = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (
                Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else b"")
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_size, extra)
    return out


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


# -- the corpus -------------------------------------------------------------------------------
# Each case: layers (lists of entries, built for a given `outside` directory) and the expected
# outcome per entry point: ("ok", check(rootfs, outside)) or ("error", regex of the message).

def _case_layers(case: str, out: str) -> list[list[E]]:
    o = out.lstrip("/")
    return {
        "dotdot": [[E(DEEP + o + "/dotdot")]],
        "absolute": [[E(out + "/abs")]],
        "symlink-abs-then-write": [[E("esc", tarfile.SYMTYPE, link=out), E("esc/pwned")]],
        "symlink-climb-then-write": [[E("esc", tarfile.SYMTYPE, link=DEEP + o), E("esc/pwned")]],
        "symlink-earlier-layer": [[E("esc", tarfile.SYMTYPE, link=out)], [E("esc/pwned")]],
        "hardlink-abs-outside": [[E("hl", tarfile.LNKTYPE, link=out + "/sentinel")]],
        "hardlink-climb": [[E("hl", tarfile.LNKTYPE, link=DEEP + o + "/sentinel")]],
        "hardlink-through-symlink": [[E("esc", tarfile.SYMTYPE, link=out),
                                      E("hl", tarfile.LNKTYPE, link="esc/sentinel")]],
        "symlink-replaced-by-dir": [[E("d", tarfile.SYMTYPE, link=out), E("d", tarfile.DIRTYPE, mode=0o755),
                                     E("d/f", data=b"inside")]],
        "duplicates": [[E("f", data=b"one"), E("f", data=b"two"), E("g", tarfile.DIRTYPE, mode=0o755),
                        E("g/x"), E("g", data=b"now a file"), E("h", data=b"file"),
                        E("h", tarfile.SYMTYPE, link="f")]],
        "devices": [[E("dev", tarfile.DIRTYPE, mode=0o755), E("dev/null2", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
                     E("dev/sda9", tarfile.BLKTYPE, mode=0o660, dev=(8, 0)), E("dev/fifo", tarfile.FIFOTYPE)]],
        "setuid": [[E("suid", mode=0o4755), E("sgid", mode=0o2755), E("sticky", tarfile.DIRTYPE, mode=0o1777)]],
        "whiteout-through-symlink": [[E("esc", tarfile.SYMTYPE, link=out)], [E("esc/.wh.sentinel", data=b"")]],
        "whiteout-climb": [[E(DEEP + o + "/.wh.sentinel", data=b"")]],
        "whiteout-dotdot-name": [[E("a", tarfile.DIRTYPE, mode=0o755)], [E("a/.wh..", data=b"")]],
        "symlink-loop-parent": [[E("a", tarfile.SYMTYPE, link="b"), E("b", tarfile.SYMTYPE, link="a"), E("a/f")]],
        "nesting-too-deep": [[E("d/" * 600 + "f")]],
        "path-too-long": [[E("/".join(["n" * 250] * 20))]],
    }[case]


def _linked_write(rootfs: Path, outside: Path) -> None:
    assert os.path.islink(rootfs / "esc")
    assert os.path.isfile(rootfs / str(outside).lstrip("/") / "pwned")


def _exists(rel: str) -> Callable[[Path, Path], None]:
    def check(rootfs: Path, outside: Path) -> None:
        assert os.path.lexists(rootfs / rel.format(o=str(outside).lstrip("/"))), rel
    return check


def _absent(rel: str) -> Callable[[Path, Path], None]:
    def check(rootfs: Path, outside: Path) -> None:
        assert not os.path.lexists(rootfs / rel), rel
    return check


def _duplicates(rootfs: Path, outside: Path) -> None:
    assert (rootfs / "f").read_bytes() == b"two"
    assert (rootfs / "g").read_bytes() == b"now a file"
    assert os.readlink(rootfs / "h") == "f"


def _devices(rootfs: Path, outside: Path) -> None:
    st = os.lstat(rootfs / "dev" / "null2")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    st = os.lstat(rootfs / "dev" / "sda9")
    assert stat.S_ISBLK(st.st_mode) and os.major(st.st_rdev) == 8
    assert stat.S_ISFIFO(os.lstat(rootfs / "dev" / "fifo").st_mode)


def _setuid(rootfs: Path, outside: Path) -> None:
    assert stat.S_IMODE(os.lstat(rootfs / "suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(rootfs / "sgid").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(rootfs / "sticky").st_mode) == 0o1777


def _symlink_replaced(rootfs: Path, outside: Path) -> None:
    assert (rootfs / "d").is_dir() and not (rootfs / "d").is_symlink()
    assert (rootfs / "d" / "f").read_bytes() == b"inside"


# Outcome when the archive is a layer of a pulled image.
LAYER_OUTCOMES: dict[str, tuple[str, object]] = {
    "dotdot": ("error", r"climbs out of the extraction root"),
    "absolute": ("ok", _exists("{o}/abs")),
    "symlink-abs-then-write": ("ok", _exists("{o}/pwned")),
    "symlink-climb-then-write": ("ok", _exists("{o}/pwned")),
    # Layers are extracted each into its own directory (as Docker's overlay2 does): the later
    # layer's esc/ is a directory that hides the earlier symlink in the merged rootfs.
    "symlink-earlier-layer": ("ok", _exists("esc/pwned")),
    "hardlink-abs-outside": ("error", r"hard link 'hl' -> .*does not exist"),
    "hardlink-climb": ("error", r"climbs out of the extraction root"),
    "hardlink-through-symlink": ("error", r"hard link 'hl' -> 'esc/sentinel'.*does not exist"),
    "symlink-replaced-by-dir": ("ok", _symlink_replaced),
    "duplicates": ("ok", _duplicates),
    "devices": ("ok", _devices),
    "setuid": ("ok", _setuid),
    # The later layer holds esc/ as a directory with a whiteout device in it, over a symlink:
    # overlayfs does not merge a directory with a symlink (it lists the whiteout but cannot
    # stat it), so the export refuses the tree.
    "whiteout-through-symlink": ("error", r"cannot read the image's tree: No such file or directory: .*esc/sentinel"),
    "whiteout-climb": ("error", r"climbs out of the extraction root"),
    "whiteout-dotdot-name": ("error", r"names no removable entry"),
    "symlink-loop-parent": ("error", r"too many levels of symbolic links"),
    "nesting-too-deep": ("error", r"nested more than 512 directories deep"),
    "path-too-long": ("error", r"cannot extract entry .*File name too long"),
}


def _image_from_layers(store, name: str, layers: list[bytes]):
    """Tag `name` in `store`: an image whose layers are the given uncompressed tars (gzip'ed)."""
    from registry.manifest import Descriptor, ImageConfig, Manifest
    from registry.platform import host_platform
    descs, diff_ids = [], []
    for tar in layers:
        blob = gzip.compress(tar, compresslevel=1)
        d = store.put_blob(blob, "application/vnd.oci.image.layer.v1.tar+gzip")
        descs.append(Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d.digest, d.size))
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    hp = host_platform()
    cfg = store.put_config(ImageConfig(architecture=hp.architecture, os="linux", variant=hp.variant,
                                       diff_ids=diff_ids, created="2000-01-01T00:00:00Z"))
    store.tag(name, store.put_manifest(Manifest(config=cfg, layers=descs)))


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """The directory every hostile entry aims at, with a sentinel file and subdirectory."""
    d = tmp_path_factory.mktemp("outside")
    (d / "sentinel").write_text("keep me")
    (d / "sub").mkdir()
    (d / "sub" / "file").write_text("keep me too")
    return d


@pytest.fixture(scope="module")
def hostile_registry(registry, outside: Path, tmp_path_factory) -> str:
    """Every corpus case pushed to registry:2 as `<host>/hostile/<case>:1`; returns the host."""
    from registry.client import RegistryClient
    from registry.store import Store
    from registry.transfer import push
    store = Store(tmp_path_factory.mktemp("hostile-src"))
    with RegistryClient() as client:
        for case in LAYER_OUTCOMES:
            ref = f"{registry.host}/hostile/{case}:1"
            _image_from_layers(store, ref, [make_tar(l) for l in _case_layers(case, str(outside))])
            push(client, store, ref)
    return registry.host


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from builder.cli import main
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def _expect(outcome: tuple[str, object], code: int, text: str, rootfs: Path, outside: Path) -> None:
    kind, what = outcome
    if kind == "error":
        assert code == 1, f"expected a refusal, the build succeeded: {text}"
        assert re.search(what, text), text
        assert "Traceback" not in text
    else:
        assert code == 0, text
        what(rootfs, outside)


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(LAYER_OUTCOMES))
def test_pulled_layer(case: str, hostile_registry: str, outside: Path, root: Path, tmp_path: Path,
                      capsys) -> None:
    """`pybuild pull` of the hostile image, then a build FROM it exporting the rootfs."""
    before = snapshot(outside)
    ref = f"{hostile_registry}/hostile/{case}:1"
    code, text = _cli(capsys, "--root", str(root), "pull", ref)
    assert code == 0, text               # pulling only stores blobs; nothing is extracted yet
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {ref}\n")
    dest = tmp_path / "export"
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    _expect(LAYER_OUTCOMES[case], code, text, dest, outside)
    assert snapshot(outside) == before
    from builder.storecheck import check_root
    assert [p for p in check_root(root) if p.kind == "broken"] == []


def _empty(rootfs: Path, outside: Path) -> None:
    assert os.listdir(rootfs) == []


# Outcome of `ADD caseN.tar /dst/` (one ADD per layer of the case) in a build FROM scratch; the
# checks look below /dst. ADD re-emits the archive's entries into a new layer, which is then
# extracted like any layer, so both the emitter and tarsafe stand between the tar and the host.
ADD_OUTCOMES: dict[str, tuple[str, object]] = {
    "dotdot": ("error", r"archive entry '.*' is outside the extraction root"),   # as BuildKit
    "absolute": ("ok", _exists("{o}/abs")),
    # A later entry of the same tar writes through the tar's own link resolved inside /dst
    # (as BuildKit's unpacking does): the link stays and the file lands at /dst/<target>/pwned;
    # nothing leaves /dst.
    "symlink-abs-then-write": ("ok", _linked_write),
    "symlink-climb-then-write": ("ok", _linked_write),
    "symlink-earlier-layer": ("ok", _exists("esc/pwned")),
    "hardlink-abs-outside": ("error", r"hard link 'dst/hl' -> .*target does not exist"),
    "hardlink-climb": ("error", r"archive entry 'hl': hard link target .* is outside the extraction root"),
    "hardlink-through-symlink": ("error", r"hard link 'dst/hl' -> 'dst/.*/sentinel'.*does not exist"),
    "symlink-replaced-by-dir": ("ok", _symlink_replaced),
    "duplicates": ("ok", _duplicates),
    "devices": ("ok", _devices),
    "setuid": ("ok", _setuid),
    "whiteout-through-symlink": ("error", r"cannot read the image's tree: No such file or directory: .*esc/sentinel"),
    "whiteout-climb": ("error", r"archive entry '.*' is outside the extraction root"),
    "whiteout-dotdot-name": ("error", r"names no removable entry"),
    "symlink-loop-parent": ("error", r"archive entry 'a/f': too many levels of symbolic links"),
    "nesting-too-deep": ("error", r"nested more than 512 directories deep"),
    "path-too-long": ("error", r"cannot extract entry .*File name too long"),
}


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(ADD_OUTCOMES))
def test_add_local_tar(case: str, outside: Path, root: Path, tmp_path: Path, capsys) -> None:
    """`ADD caseN.tar /dst/` of the hostile tars in a real build, exported with type=local."""
    before = snapshot(outside)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    lines = ["FROM scratch"]
    for i, layer in enumerate(_case_layers(case, str(outside))):
        (ctx / f"l{i}.tar").write_bytes(make_tar(layer))
        lines.append(f"ADD l{i}.tar /dst/")
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    dest = tmp_path / "export"
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    _expect(ADD_OUTCOMES[case], code, text, dest / "dst", outside)
    assert snapshot(outside) == before
    from builder.storecheck import check_root
    assert [p for p in check_root(root) if p.kind == "broken"] == []


@needs_root
@pytest.mark.timeout(120)
def test_add_gzip_bomb_is_extracted_as_holes(root: Path, tmp_path: Path, capsys) -> None:
    """A 256 KiB .tar.gz expanding to 256 MiB of zeros: ADD extracts it correctly (bounded
    work, no hang) and the exported file is sparse on disk."""
    size = 256 << 20

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b):  # type: ignore[no-untyped-def]
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tf:
        ti = tarfile.TarInfo("zeros")
        ti.size = size
        tf.addfile(ti, io.BufferedReader(Zeros(), 1 << 20))
    bomb = raw.getvalue()
    assert len(bomb) < 512 << 10
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "bomb.tar.gz").write_bytes(bomb)
    (ctx / "Dockerfile").write_text("FROM scratch\nADD bomb.tar.gz /x/\n")
    dest = tmp_path / "export"
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert code == 0, text
    st = (dest / "x" / "zeros").stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < size // 16        # holes all the way through the export


@needs_root
@pytest.mark.timeout(120)
def test_export_into_a_directory_holding_a_symlink_does_not_follow_it(outside: Path, root: Path,
                                                                      tmp_path: Path, capsys) -> None:
    """`--output type=local` into a directory where an earlier export left `esc -> outside`
    (from a hostile image): exporting a tree with esc/ as a directory replaces the link with
    the image's directory, as BuildKit's local exporter does; nothing is written through it."""
    before = snapshot(outside)
    dest = tmp_path / "export"
    dest.mkdir()
    os.symlink(outside, dest / "esc")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "pwned").write_text("x")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY pwned /esc/pwned\n")
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert code == 0, text
    assert not (dest / "esc").is_symlink() and (dest / "esc" / "pwned").read_text() == "x"
    assert snapshot(outside) == before


@needs_root
@pytest.mark.timeout(120)
def test_pulled_layer_with_10gb_sparse_file(registry, root: Path, tmp_path: Path, capsys) -> None:
    """A pulled image whose layer (10 KB) holds a 10 GiB sparse file: pull, build FROM it and
    export: the file arrives with its size and content, as holes on disk."""
    from registry.client import RegistryClient
    from registry.store import Store
    from registry.transfer import push
    apparent = 10 << 30
    tar = _sparse_tar(tmp_path, apparent, "posix").read_bytes()
    src = Store(tmp_path / "src")
    ref = f"{registry.host}/hostile/sparse10g:1"
    _image_from_layers(src, ref, [tar])
    with RegistryClient() as client:
        push(client, src, ref)
    assert _cli(capsys, "--root", str(root), "pull", ref)[0] == 0
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {ref}\n")
    dest = tmp_path / "export"
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert code == 0, text
    st = (dest / "big").stat()
    assert st.st_size == apparent + 5 and st.st_blocks * 512 < 1 << 20
    with open(dest / "big", "rb") as f:
        f.seek(apparent)
        assert f.read() == b"tail\n"


@needs_root
@pytest.mark.timeout(120)
def test_pulled_layer_gzip_bomb(registry, root: Path, tmp_path: Path, capsys) -> None:
    """A 256 KiB gzip layer inflating to 256 MiB of zeros: pulled, extracted as holes, exported."""
    from registry.client import RegistryClient
    from registry.store import Store
    from registry.transfer import push
    size = 256 << 20
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("zeros")
        ti.size = size
        tf.addfile(ti)
    header = buf.getvalue()[:512]
    src = Store(tmp_path / "src")
    ref = f"{registry.host}/hostile/gzipbomb:1"
    # The layer's tar: one header, the zeros, the end-of-archive blocks; gzip'ed in a stream.
    gz = io.BytesIO()
    digest = hashlib.sha256()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=9) as g:
        for chunk in [header] + [bytes(1 << 20)] * (size >> 20) + [bytes(1024)]:
            g.write(chunk)
            digest.update(chunk)
    from registry.manifest import ImageConfig, Manifest
    from registry.platform import host_platform
    blob = src.put_blob(gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip")
    assert blob.size < 512 << 10
    hp = host_platform()
    cfg = src.put_config(ImageConfig(architecture=hp.architecture, os="linux", variant=hp.variant,
                                     diff_ids=["sha256:" + digest.hexdigest()], created="2000-01-01T00:00:00Z"))
    src.tag(ref, src.put_manifest(Manifest(config=cfg, layers=[blob])))
    with RegistryClient() as client:
        push(client, src, ref)
    assert _cli(capsys, "--root", str(root), "pull", ref)[0] == 0
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {ref}\n")
    dest = tmp_path / "export"
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert code == 0, text
    st = (dest / "zeros").stat()
    assert st.st_size == size and st.st_blocks * 512 < size // 16


@needs_root
@pytest.mark.timeout(120)
def test_layer_lying_about_its_diff_id_cannot_poison_other_images(registry, root: Path, tmp_path: Path,
                                                                     capsys) -> None:
    """An image whose config claims another image's layer diffID for its own (different)
    content: building FROM it is refused, and the honest image still gets its own content
    (extracted layers are shared by diffID, so an unchecked one would be served to both)."""
    from registry.client import RegistryClient
    from registry.store import Store
    good = make_tar([E("hello", data=b"good")])
    evil = make_tar([E("hello", data=b"EVIL")])
    src = Store(tmp_path / "src")
    good_ref, evil_ref = f"{registry.host}/hostile/honest:1", f"{registry.host}/hostile/liar:1"
    _image_from_layers(src, good_ref, [good])
    _image_from_layers(src, evil_ref, [evil])
    # Rewrite the liar's config so its diff_id is the honest layer's.
    from registry.manifest import Manifest
    from registry.transfer import push
    evil_manifest = src.get_manifest(src.resolve(evil_ref).digest)
    cfg = src.get_config(evil_manifest.config.digest)
    cfg.diff_ids = ["sha256:" + hashlib.sha256(good).hexdigest()]
    src.tag(evil_ref, src.put_manifest(Manifest(config=src.put_config(cfg), layers=evil_manifest.layers)))
    with RegistryClient() as client:
        push(client, src, good_ref)
        push(client, src, evil_ref)
    for ref in (evil_ref, good_ref):
        assert _cli(capsys, "--root", str(root), "pull", ref)[0] == 0
    results = {}
    for name, ref in (("liar", evil_ref), ("honest", good_ref)):
        ctx = tmp_path / f"ctx-{name}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {ref}\n")
        results[name] = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                             "--output", f"type=local,dest={tmp_path / name}", str(ctx))
    code, text = results["liar"]
    assert code == 1 and "layer content does not match diff_id" in text and "Traceback" not in text, text
    assert results["honest"][0] == 0, results["honest"][1]
    assert (tmp_path / "honest" / "hello").read_bytes() == b"good"


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("src", ["abs/hostname", "rel/hostname", "hn", "d/up", "/../../../etc/hostname"])
def test_copy_from_image_resolves_links_inside_that_image(src: str, root: Path, tmp_path: Path, capsys) -> None:
    """`COPY --from=<image>` through the image's own links to /etc, ../../etc, /etc/hostname:
    they resolve inside that image's rootfs (which has no /etc), never on the host."""
    from registry.store import Store
    _image_from_layers(Store(root), "linky:1", [make_tar([
        E("abs", tarfile.SYMTYPE, link="/etc"), E("rel", tarfile.SYMTYPE, link=DEEP + "etc"),
        E("hn", tarfile.SYMTYPE, link="/etc/hostname"), E("d", tarfile.DIRTYPE, mode=0o755),
        E("d/up", tarfile.SYMTYPE, link=DEEP + "etc/hostname")])])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nCOPY --from=linky:1 {src} /x\n")
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={tmp_path / 'out'}", str(ctx))
    assert code == 1 and f"{src}: not found in linky:1" in text and "Traceback" not in text, text


@needs_root
@pytest.mark.timeout(180)
def test_run_bind_mount_from_image_resolves_links_inside_it(busybox_image: Path, tmp_path: Path, capsys) -> None:
    """`RUN --mount=type=bind,from=<image>,source=<link>`: a link to /etc (absolute or
    climbing) resolves inside that image, so the host's /etc is never bind-mounted into the
    container; a link to a directory the image has mounts that directory."""
    from registry.store import Store
    root = busybox_image
    marker = Path("/etc") / f"pybuild-host-marker-{os.getpid()}"
    marker.write_text("HOST-MARKER\n")
    try:
        _image_from_layers(Store(root), "linky:1", [make_tar([
            E("abs", tarfile.SYMTYPE, link="/etc"), E("rel", tarfile.SYMTYPE, link=DEEP + "etc"),
            E("srv", tarfile.DIRTYPE, mode=0o755), E("srv/data", tarfile.DIRTYPE, mode=0o755),
            E("srv/data/inside", data=b"image data\n"), E("data", tarfile.SYMTYPE, link="/srv/data")])])
        outcomes = {}
        for source, cmd in (("abs", f"cat /m/{marker.name}"), ("rel", f"cat /m/{marker.name}"),
                            ("data", "cat /m/inside")):
            ctx = tmp_path / f"ctx-{source}"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(
                f"FROM busybox\nRUN --mount=type=bind,from=linky:1,source={source},target=/m {cmd}\n")
            outcomes[source] = _cli(capsys, "--root", str(root), "build", "--progress", "plain", str(ctx))
    finally:
        marker.unlink()
    for source in ("abs", "rel"):
        code, text = outcomes[source]
        assert "HOST-MARKER" not in text
        assert code == 1 and f"bind mount source {source} does not exist" in text, text
    code, text = outcomes["data"]
    assert code == 0 and "image data" in text, text


@needs_root
@pytest.mark.timeout(180)
@pytest.mark.parametrize("link", ["run", "dev"])
@pytest.mark.parametrize("isolation", ["oci"])
def test_run_mount_points_resolve_inside_the_image(isolation: str, link: str, busybox_image: Path,
                                                   tmp_path: Path, capsys) -> None:
    """An image whose /run (or /dev) is a link to a host directory. /run: the mount points of
    a RUN step under it (a secret under /run/secrets, a tmpfs at /run/t) are made inside the
    rootfs, where the link leads inside the container. /dev: the step is refused (the runtime
    would create /dev's links through it on the host). Either way nothing is ever created in
    the host directory."""
    import threading
    from registry.manifest import Descriptor, Manifest
    from registry.store import Store
    root = busybox_image
    victim = tmp_path / "victim"
    victim.mkdir()
    store = Store(root)
    m = store.get_manifest(store.resolve("busybox:latest").digest)
    cfg = store.get_config(m.config.digest)
    tar = make_tar([E(f".wh.{link}", data=b""), E(link, tarfile.SYMTYPE, link=str(victim))])
    blob = store.put_blob(gzip.compress(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
    cfg.diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    store.tag("linkedroot:1", store.put_manifest(Manifest(config=store.put_config(cfg), layers=[
        *m.layers, Descriptor(blob.media_type, blob.digest, blob.size)])))
    (tmp_path / "secret").write_text("the-secret\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM linkedroot:1\nRUN --mount=type=secret,id=s --mount=type=tmpfs,target=/run/t "
                                    "cat /run/secrets/s && test -d /run/t && test -c /dev/null && sleep 1\n")
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(os.listdir(victim))
            stop.wait(0.02)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain", "--isolation", isolation,
                          "--secret", f"id=s,src={tmp_path / 'secret'}", str(ctx))
    finally:
        stop.set()
        t.join()
    if link == "run":
        assert code == 0 and "the-secret" in text, text
    else:
        assert code == 1 and "the image's /dev is a symbolic link" in text and "Traceback" not in text, text
    assert seen == set() and os.listdir(victim) == []


@needs_root
@pytest.mark.timeout(180)
def test_workdir_copy_and_user_through_image_links_stay_inside(busybox_image: Path, tmp_path: Path,
                                                               capsys) -> None:
    """An image with `/app -> /host/dir` and `/etc/group -> /etc/<host file>`: WORKDIR and COPY
    below /app write into the image (the host directory stays empty), and USER/--chown read
    the image's group file, never the host's."""
    from registry.manifest import Descriptor, Manifest
    from registry.store import Store
    root = busybox_image
    victim = tmp_path / "victim"
    victim.mkdir()
    marker = Path("/etc") / f"pybuild-group-marker-{os.getpid()}"
    marker.write_text("hostgroup:x:4242:\n")
    store = Store(root)
    m = store.get_manifest(store.resolve("busybox:latest").digest)
    cfg = store.get_config(m.config.digest)
    tar = make_tar([E("app", tarfile.SYMTYPE, link=str(victim)), E("etc/group", tarfile.SYMTYPE, link=str(marker))])
    blob = store.put_blob(gzip.compress(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
    cfg.diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    store.tag("appl:1", store.put_manifest(Manifest(config=store.put_config(cfg), layers=[
        *m.layers, Descriptor(blob.media_type, blob.digest, blob.size)])))
    results = {}
    try:
        for name, df in (("workdir", "WORKDIR /app/sub\nRUN touch made-here && pwd"),
                         ("copy", "COPY f /app/sub/f"),
                         ("user", "USER root:hostgroup\nRUN id")):
            ctx = tmp_path / f"ctx-{name}"
            ctx.mkdir()
            (ctx / "f").write_text("f")
            (ctx / "Dockerfile").write_text(f"FROM appl:1\n{df}\n")
            results[name] = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                                 "--output", f"type=local,dest={tmp_path / ('out-' + name)}", str(ctx))
    finally:
        marker.unlink()
    assert results["workdir"][0] == 0 and results["copy"][0] == 0, results
    assert os.listdir(victim) == []
    # Inside the image either way: Docker follows the link inside the rootfs (…/victim/sub/f);
    # pybuild's COPY currently replaces the linked /app with a directory (app/sub/f).
    out = tmp_path / "out-copy"
    assert (out / "app" / "sub" / "f").is_file() or (out / str(victim).lstrip("/") / "sub" / "f").is_file()
    code, text = results["user"]
    assert code == 1 and "unable to find group hostgroup" in text, text


@pytest.mark.timeout(30)
def test_deep_chains_of_directory_entries_extract_in_linear_time(tmp_path: Path) -> None:
    """Four chains of 500 nested directories, each directory an entry of its own, with a file
    at the bottom: resolving every parent from the root again made this cost cubic time (about
    a minute); it must finish far inside the timeout, each file where it belongs."""
    entries = []
    for top in "abcd":
        entries += [E(top + "/d" * i, tarfile.DIRTYPE, mode=0o755) for i in range(500)]
        entries.append(E(top + "/d" * 499 + "/f"))
    extract_tar(io.BytesIO(make_tar(entries)), tmp_path / "t")
    for top in "abcd":
        assert (tmp_path / "t" / (top + "/d" * 499) / "f").is_file()
