"""Layer extraction and output writers touch a tree only through descriptors inside its root.

The attack: a layer holding `a/`, `a/sub/` (mode 06777, mtime 1970) and then `a -> <canary>`.
When directory modes and times were applied at the end by path, they went through the link and
the host's `<canary>/sub` became `drwsrwsrwx` with a 1970 mtime. The same archive arrives as a
pulled layer, as `ADD x.tar` and as a tar context on stdin; each must leave the canary (a host
directory outside the target, with sentinel files, modes, mtimes and an xattr) unchanged, byte
for byte. Outputs: `--output type=local` (and the OCI directory layout) into a destination that
already holds links to the canary must replace those links, never write through them.
"""
from __future__ import annotations

import io
import os
import re
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from registry import inroot
from registry.tarsafe import ArchiveError, extract_tar
from tests.fixtures.cli import REPO, run_pybuild
from tests.fixtures.trees import tree_state as state


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds mount overlayfs (root only)")
DEEP = 12 * "../"
CANARY_MTIME = 1_234_567_890


@dataclass
class T:
    """One tar entry."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b"x"
    link: str = ""
    mode: int = 0o644
    mtime: int = 1_600_000_000
    pax: dict[str, str] = field(default_factory=dict)


def tar_of(entries: list[T]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.linkname, ti.mtime = e.type, e.mode, e.link, e.mtime
            ti.pax_headers = dict(e.pax)
            if e.type == tarfile.REGTYPE:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A host directory outside every target: sentinel files, a `sub/` directory, an xattr."""
    c = tmp_path / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "sentinel").write_text("keep me")
    (c / "sub" / "file").write_text("keep me too")
    for p in (c / "sub" / "file", c / "sentinel", c / "sub", c):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.utime(p, (CANARY_MTIME, CANARY_MTIME))
    try:
        os.setxattr(c / "sub", "user.canary", b"1")
    except OSError:
        pass                                   # a file system without user xattrs: still compared
    return c


# -- the hostile layers ------------------------------------------------------------------------
# Each: entries for a canary at absolute path `c`, and what must hold inside the target.

def _cases(c: str) -> dict[str, list[T]]:
    rel = DEEP + c.lstrip("/")
    suid_dir = dict(type=tarfile.DIRTYPE, mode=0o6777, mtime=0)
    return {
        # The reported attack.
        "dir-swapped-for-link": [T("a/", tarfile.DIRTYPE, mode=0o755), T("a/sub/", **suid_dir),
                                 T("a", tarfile.SYMTYPE, link=c)],
        # Files already written inside before the swap; the link climbs instead of being absolute.
        "swap-after-files": [T("a/", tarfile.DIRTYPE, mode=0o755), T("a/sub/", **suid_dir),
                             T("a/sub/file", data=b"PWNED", mode=0o4777, mtime=0), T("a/sentinel", data=b"PWNED"),
                             T("a", tarfile.SYMTYPE, link=rel)],
        # xattrs and mtimes on the directory that is swapped; entries after the swap go through
        # the link (re-rooted inside the target) and are dirs of their own there.
        "swap-xattrs-mtimes": [T("a/", tarfile.DIRTYPE, mode=0o700, mtime=0,
                                 pax={"SCHILY.xattr.user.pwn": "1"}),
                               T("a/sub/", **suid_dir, pax={"SCHILY.xattr.user.pwn": "2"}),
                               T("a", tarfile.SYMTYPE, link=c),
                               T("a/sub/", **suid_dir, pax={"SCHILY.xattr.user.pwn": "3"}),
                               T("a/sub/file", data=b"PWNED", mtime=0)],
        # A deeper directory swapped, then declared again as a directory (replacing the link).
        "nested-swap": [T("a/", tarfile.DIRTYPE, mode=0o755), T("a/b/", tarfile.DIRTYPE, mode=0o755),
                        T("a/b/sub/", **suid_dir), T("a/b", tarfile.SYMTYPE, link=c),
                        T("a/b/", tarfile.DIRTYPE, mode=0o777, mtime=0)],
        # A hard link into the canary through the swapped-in link.
        "hardlink-via-link": [T("a/", tarfile.DIRTYPE, mode=0o755), T("a", tarfile.SYMTYPE, link=c),
                              T("hl", tarfile.LNKTYPE, link="a/sentinel")],
    }


CASES = list(_cases("/x"))


def _check_inside(case: str, rootfs: Path, c: str) -> None:
    """What the target holds after an extraction that succeeded."""
    inner = rootfs / c.lstrip("/")
    if case in ("dir-swapped-for-link", "swap-after-files"):
        assert rootfs.joinpath("a").is_symlink()
    if case == "swap-xattrs-mtimes":
        # Made inside, where the link resolves in the target, with the archive's metadata.
        st = os.lstat(inner / "sub")
        assert stat.S_IMODE(st.st_mode) == 0o6777 and st.st_mtime == 0
        assert (inner / "sub" / "file").read_bytes() == b"PWNED"
    if case == "nested-swap":
        # The last entry replaces the link `a/b` with a directory of its own (never followed).
        st = os.lstat(rootfs / "a" / "b")
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777 and st.st_mtime == 0


@pytest.mark.parametrize("mode", ["apply", "overlay", "none"])
@pytest.mark.parametrize("resolver", ["openat2", "walk"])
@pytest.mark.parametrize("case", CASES)
def test_extract_tar_leaves_the_canary(case: str, mode: str, resolver: str, canary: Path, tmp_path: Path,
                                       monkeypatch) -> None:
    """extract_tar itself, in every whiteout mode, with openat2 and with the fallback walk."""
    if resolver == "openat2" and not inroot.openat2_available():
        pytest.skip("kernel without openat2")
    if resolver == "walk":
        monkeypatch.setattr(inroot, "_have_openat2", False)
    before = state(canary)
    dest = tmp_path / "dest"
    data = tar_of(_cases(str(canary))[case])
    if case == "hardlink-via-link":
        with pytest.raises(ArchiveError, match=r"hard link 'hl' -> 'a/sentinel'.*does not exist"):
            extract_tar(io.BytesIO(data), dest, whiteouts=mode)
    else:
        extract_tar(io.BytesIO(data), dest, whiteouts=mode)
        _check_inside(case, dest, str(canary))
    assert state(canary) == before


def test_deferred_directory_metadata_skips_a_replaced_directory(tmp_path: Path, canary: Path) -> None:
    """`a/sub/` recorded, then `a` replaced by a new directory holding a new `sub/`: the end sets
    the *new* entry's mode, never the recorded one on a directory that is not the one made."""
    entries = [T("a/", tarfile.DIRTYPE, mode=0o755), T("a/sub/", tarfile.DIRTYPE, mode=0o6777, mtime=0),
               T("a", data=b"file now"), T("a", tarfile.DIRTYPE, mode=0o755), T("a/sub/f", data=b"")]
    dest = tmp_path / "dest"
    extract_tar(io.BytesIO(tar_of(entries)), dest, whiteouts="apply")
    st = os.lstat(dest / "a" / "sub")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_mtime != 0   # made implicitly, not the 06777 one


# -- through the CLI -------------------------------------------------------------------------

def _cli(capsys, *argv: str) -> tuple[int, str]:
    from builder.cli import main
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out + cap.err


@pytest.fixture
def hostile_pushed(registry, canary: Path, tmp_path: Path):
    """Each case pushed to registry:2 as a one-layer image; returns a function of the case."""
    from registry.client import RegistryClient
    from registry.store import Store
    from registry.transfer import push
    from tests.security.test_hostile_archives import _image_from_layers

    def make(case: str) -> str:
        store = Store(tmp_path / f"src-{case}")
        ref = f"{registry.host}/hostile-extract/{case}:1"
        _image_from_layers(store, ref, [tar_of(_cases(str(canary))[case])])
        with RegistryClient() as client:
            push(client, store, ref)
        return ref
    return make


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
def test_pulled_layer_leaves_the_canary(case: str, hostile_pushed, canary: Path, root: Path,
                                        tmp_path: Path, capsys) -> None:
    """`pybuild pull`, then a build FROM the image exporting its rootfs (every layer extracted)."""
    ref = hostile_pushed(case)
    before = state(canary)
    code, text = _cli(capsys, "--root", str(root), "pull", ref)
    assert code == 0, text
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {ref}\n")
    dest = tmp_path / "export"
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert "Traceback" not in text
    if case == "hardlink-via-link":
        assert code == 1 and re.search(r"hard link 'hl' -> 'a/sentinel'.*does not exist", text), text
    else:
        assert code == 0, text
        _check_inside(case, dest, str(canary))
    assert state(canary) == before


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
def test_add_local_tar_leaves_the_canary(case: str, canary: Path, root: Path, tmp_path: Path, capsys) -> None:
    """`ADD x.tar /dst/` in a real build, exported with type=local."""
    before = state(canary)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "x.tar").write_bytes(tar_of(_cases(str(canary))[case]))
    (ctx / "Dockerfile").write_text("FROM scratch\nADD x.tar /dst/\n")
    dest = tmp_path / "export"
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert "Traceback" not in text
    if case == "hardlink-via-link":
        # the tar's own link `a` resolves inside /dst (BuildKit): dst/<canary>/sentinel, absent
        assert code == 1 and re.search(r"hard link 'dst/hl' -> 'dst/.*/sentinel'.*does not exist", text), text
    else:
        assert code == 0, text
    assert state(canary) == before


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
def test_stdin_tar_context_leaves_the_canary(case: str, canary: Path, root: Path, tmp_path: Path) -> None:
    """`pybuild build - < ctx.tar`: the context itself is the hostile archive."""
    before = state(canary)
    entries = [T("Dockerfile", data=b"FROM scratch\nCOPY Dockerfile /\n")] + _cases(str(canary))[case]
    r = run_pybuild("build", "--progress", "plain", "-", root=root, stdin=tar_of(entries), text=False,
                    env={**os.environ, "PYTHONPATH": str(REPO)})
    text = (r.stdout + r.stderr).decode(errors="replace")
    assert "Traceback" not in text
    if case == "hardlink-via-link":
        assert r.returncode == 1 and re.search(r"build context from standard input: .*hard link 'hl' "
                                               r"-> 'a/sentinel'.*does not exist", text), text
    else:
        assert r.returncode == 0, text
    assert state(canary) == before


# -- outputs ---------------------------------------------------------------------------------

def _plant(dest: Path, kind: str, canary: Path, tmp_path: Path) -> None:
    dest.mkdir()
    target = {"abs": str(canary), "climb": "../canary", "dangling": str(tmp_path / "ghost" / "deeper"),
              "file": str(canary / "sentinel")}[kind]
    os.symlink(target, dest / "x")
    os.symlink(str(canary / "sentinel"), dest / "y")        # a file of the image over a link to a file
    os.symlink(str(canary / "sub"), dest / "z")             # a link the image does not touch


@needs_root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["abs", "climb", "dangling", "file"])
def test_local_output_replaces_links_in_dest(kind: str, canary: Path, root: Path, tmp_path: Path, capsys) -> None:
    """`-o type=local,dest=D` with D holding `x -> canary` (absolute, `../canary`, dangling, to a
    file) and `y -> canary/sentinel`; the image has `x/file` and `y`: D's links are replaced by
    the image's entries (as BuildKit's local exporter does), the canary is untouched."""
    before = state(canary)
    ctx = tmp_path / "ctx"
    (ctx / "x" / "sub").mkdir(parents=True)
    (ctx / "x" / "file").write_text("from the image")
    (ctx / "x" / "sub" / "deep").write_text("deep")
    (ctx / "y").write_text("image y")
    os.chmod(ctx / "x" / "file", 0o4755)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY x /x\nCOPY y /y\n")
    dest = tmp_path / "dest"
    _plant(dest, kind, canary, tmp_path)
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert code == 0, text
    assert not (dest / "x").is_symlink() and (dest / "x" / "file").read_text() == "from the image"
    assert (dest / "x" / "sub" / "deep").read_text() == "deep"
    assert stat.S_IMODE(os.lstat(dest / "x" / "file").st_mode) == 0o4755
    assert not (dest / "y").is_symlink() and (dest / "y").read_text() == "image y"
    assert os.readlink(dest / "z") == str(canary / "sub")   # what the image lacks stays as it was
    assert not (tmp_path / "ghost").exists()
    assert state(canary) == before


@needs_root
@pytest.mark.timeout(120)
def test_local_output_does_not_write_through_a_link_to_a_file(canary: Path, root: Path, tmp_path: Path,
                                                               capsys) -> None:
    """D holds only `y -> canary/sentinel` (absolute) and `w -> ../canary/sentinel`; the image has
    files `y` and `w`: they replace the links (cp -a wrote through them into the host file)."""
    before = state(canary)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "y").write_text("image y")
    (ctx / "w").write_text("image w")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY y w /\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(canary / "sentinel"), dest / "y")
    os.symlink("../canary/sentinel", dest / "w")
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=local,dest={dest}", str(ctx))
    assert code == 0, text
    assert not (dest / "y").is_symlink() and (dest / "y").read_text() == "image y"
    assert not (dest / "w").is_symlink() and (dest / "w").read_text() == "image w"
    assert state(canary) == before


@needs_root
@pytest.mark.timeout(120)
def test_oci_directory_output_replaces_links_in_dest(canary: Path, root: Path, tmp_path: Path, capsys) -> None:
    """`-o type=oci,dest=D,tar=false` with D holding `blobs -> canary` and `index.json`,
    `oci-layout` -> the canary's sentinel: the layout is written inside D, the links replaced."""
    before = state(canary)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("f")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(canary), dest / "blobs")
    os.symlink(str(canary / "sentinel"), dest / "index.json")
    os.symlink("../canary/sentinel", dest / "oci-layout")
    code, text = _cli(capsys, "--root", str(root), "build", "--progress", "plain",
                      "--output", f"type=oci,dest={dest},tar=false", str(ctx))
    assert code == 0, text
    for n in ("blobs", "index.json", "oci-layout"):
        assert not (dest / n).is_symlink(), n
    assert b"manifests" in (dest / "index.json").read_bytes()
    assert len(os.listdir(dest / "blobs" / "sha256")) >= 3
    assert state(canary) == before

