"""RootView (the Python overlay emulation) against the kernel's overlayfs on the same layers.

Each case builds a stack of layer directories in overlay format (0/0 character devices as
whiteouts, ``trusted.overlay.opaque=y``), mounts it read-only with the real overlay
(``lowerdir=top:...:bottom``, the options builder.runtime.snapshot uses), and compares what RootView
says for every path of a small name universe with what the kernel says on the mount, the
kernel resolving inside the mount as in a chroot (openat2 RESOLVE_IN_ROOT). Hostile shapes
(links to / and ../.., a link to a host canary hidden by an upper directory, whiteouts,
opaque directories over links, files over directories, chains and loops of links) are fixed
cases; hypothesis adds random stacks.
"""
from __future__ import annotations

import errno
import itertools
import os
import stat
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from builder.errors import BuildError
from builder.runtime.rootview import RootView
from builder.runtime.snapshot import OPAQUE_XATTR
from registry import inroot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and trusted.* xattrs need root")

CANARY = "@CANARY"          # replaced by the host canary directory's absolute path

# -- layer stacks --------------------------------------------------------------------------------
# A layer is {relative path: entry}; an entry is ("dir",), ("opaque",), ("file", text),
# ("link", target) or ("wh",). Parents are created as plain directories when not listed.
Layer = dict[str, tuple]


def _make_layer(d: Path, layer: Layer, canary: Path) -> None:
    d.mkdir(parents=True)
    for rel in sorted(layer, key=lambda r: r.count("/")):
        kind, *arg = layer[rel]
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind in ("dir", "opaque"):
            p.mkdir(exist_ok=True)
            if kind == "opaque":
                os.setxattr(p, OPAQUE_XATTR, b"y")
        elif kind == "file":
            p.write_text(arg[0])
        elif kind == "link":
            os.symlink(arg[0].replace(CANARY, str(canary)), p)
        elif kind == "wh":
            os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(0, 0))


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    """A host directory the hostile links aim at, holding a unique secret (and /etc/shadow's name)."""
    d = tmp_path / "canary"
    secret = f"canary-{uuid.uuid4()}"
    (d / "etc").mkdir(parents=True)
    for p in (d / "secret", d / "etc" / "shadow", d / "a", d / "b", d / "c"):
        p.write_text(secret)
    return d, secret


@contextmanager
def mounted(tmp: Path, layers: list[Layer], canary: Path) -> Iterator[tuple[list[Path], Path]]:
    """The layer dirs (bottom first) and the read-only overlay mount of them."""
    base = tmp / f"stack-{uuid.uuid4().hex[:8]}"
    dirs = []
    # An empty bottom layer: a lowerdir-only mount wants two layers, and it changes nothing.
    for i, layer in enumerate([{}] + layers):
        dirs.append(base / f"l{i}")
        _make_layer(dirs[-1], layer, canary)
    mnt = base / "m"
    mnt.mkdir()
    opts = "lowerdir=" + ":".join(str(d) for d in reversed(dirs)) + ",ro,index=off,metacopy=off,redirect_dir=off"
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"the kernel refused a read-only overlay mount here: {r.stderr.strip()}")
    try:
        yield dirs, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- the kernel's answers, resolved inside the mount -----------------------------------------------
def _open_in_root(rootfd: int, path: str, flags: int) -> int:
    # The kernel alone: raw openat2 with RESOLVE_IN_ROOT (no fallback walk of our own).
    while True:
        try:
            return inroot.openat2(rootfd, path, flags, 0, inroot.RESOLVE_IN_ROOT)
        except BlockingIOError:     # EAGAIN: a rename raced a ".." step; the kernel asks to retry
            continue


class Kernel:
    """What the overlay mount at ``mnt`` says, every path resolved as if ``mnt`` were /."""

    def __init__(self, mnt: Path):
        self.mnt = str(mnt)
        self.rootfd = os.open(mnt, os.O_PATH | os.O_DIRECTORY)

    def close(self) -> None:
        os.close(self.rootfd)

    def resolve(self, path: str, follow: bool) -> str | None:
        """The resolved view path; None if missing; "ELOOP" for too many links."""
        try:
            fd = _open_in_root(self.rootfd, path or "/", os.O_PATH | (0 if follow else os.O_NOFOLLOW))
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "ELOOP"
            assert e.errno in (errno.ENOENT, errno.ENOTDIR), e
            return None
        try:
            host = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        assert host == self.mnt or host.startswith(self.mnt + "/"), f"{path} left the mount: {host}"
        return "/" + host[len(self.mnt):].lstrip("/")

    def host(self, resolved: str) -> str:
        return self.mnt + resolved if resolved != "/" else self.mnt


def _facts(st: os.stat_result) -> tuple:
    # What a build uses of an entry; inode numbers and link counts are overlay's own.
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime_ns)


def _view_resolve(view: RootView, path: str, follow: bool) -> str | None:
    try:
        return view.resolve(path, follow_last=follow)
    except BuildError as e:
        assert "too many levels of symbolic links" in str(e)
        return "ELOOP"


def _queries(names=("a", "b", "c", "etc", "shadow", "secret"), depth: int = 3) -> list[str]:
    parts = list(names) + ["..", "."]
    out = ["/"]
    for n in range(1, depth + 1):
        out += ["/" + "/".join(p) for p in itertools.product(parts, repeat=n)]
    return out


def compare(dirs: list[Path], mnt: Path, secret: str, queries: list[str]) -> int:
    """Assert RootView == kernel for every query path; returns how many paths existed."""
    view = RootView(dirs)
    k = Kernel(mnt)
    existing = 0
    try:
        for q in queries:
            for follow in (True, False):
                want = k.resolve(q, follow)
                got = _view_resolve(view, q, follow)
                assert got == want, f"resolve({q!r}, follow={follow}): view {got!r}, kernel {want!r}"
                s = view.stat(q, follow=follow) if want != "ELOOP" else None
                if want in (None, "ELOOP"):
                    assert s is None, f"stat({q!r}): view has {s}, kernel has nothing"
                    continue
                existing += 1
                kst = os.lstat(k.host(want))
                assert s is not None, f"stat({q!r}, follow={follow}): view has nothing, kernel {kst}"
                assert _facts(s[1]) == _facts(kst), f"stat({q!r}, follow={follow}): view {s[1]}, kernel {kst}"
                if stat.S_ISLNK(kst.st_mode):
                    assert os.readlink(s[0]) == os.readlink(k.host(want))
            want = k.resolve(q, True)
            if want in (None, "ELOOP"):
                continue
            kst = os.lstat(k.host(want))
            if stat.S_ISDIR(kst.st_mode):
                assert view.listdir(q) == _kernel_names(k.host(want)), f"listdir({q!r})"
                assert _walk_view(view, q) == _walk_kernel(k.host(want), q), f"walk({q!r})"
            elif stat.S_ISREG(kst.st_mode):
                text = Path(k.host(want)).read_text()
                assert view.read_text(q) == text, f"read_text({q!r})"
                assert secret not in text, f"the kernel read the canary at {q}"
    finally:
        k.close()
    return existing


def _walk_view(view: RootView, path: str) -> dict[str, tuple]:
    want_top = view.resolve(path)
    out = {}
    for vpath, host, st in view.walk(want_top):
        rel = vpath[len(want_top.rstrip("/")):] or "/"
        out[rel] = _facts(st) + ((os.readlink(host),) if stat.S_ISLNK(st.st_mode) else ())
    return out


def _kernel_names(d: str) -> list[str]:
    # overlayfs lists a whiteout of a directory that only one layer has (it reads that layer's
    # directory as is) but looking the name up gives ENOENT: the view leaves such names out,
    # so only the names the kernel can look up are compared.
    return sorted(n for n in os.listdir(d) if os.path.lexists(os.path.join(d, n)))


def _walk_kernel(top: str, path: str) -> dict[str, tuple]:
    out = {"/": _facts(os.lstat(top))}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if not os.path.lexists(p):
                continue            # a listed whiteout (see _kernel_names)
            st = os.lstat(p)
            out["/" + os.path.relpath(p, top)] = _facts(st) + ((os.readlink(p),) if stat.S_ISLNK(st.st_mode) else ())
    return out


# -- the hostile shapes --------------------------------------------------------------------------
BASE: Layer = {"etc": ("dir",), "etc/passwd": ("file", "root:x:0:0::/:/bin/sh\n"), "bin": ("dir",),
               "bin/sh": ("file", "#!")}

HOSTILE: dict[str, list[Layer]] = {
    # The shape: RUN ln -s / /a, then COPY --link d /a/ (an upper directory a).
    "lower link to / hidden by an upper dir": [
        BASE, {"a": ("link", "/")}, {"a": ("dir",), "a/x": ("file", "from d")}],
    "lower link to the host canary hidden by an upper dir": [
        BASE, {"a": ("link", CANARY)}, {"a": ("dir",), "a/x": ("file", "from d")}],
    "lower link to ../../ hidden by an upper dir": [
        BASE, {"a": ("link", "../../")}, {"a": ("dir",), "a/b": ("dir",)}],
    "hidden link below a hidden link": [
        BASE, {"a": ("link", CANARY)}, {"a": ("dir",), "a/etc": ("link", "/etc")}, {"a": ("dir",)}],
    "whiteout over a dir": [
        BASE, {"a": ("dir",), "a/secret": ("file", "gone")}, {"a": ("wh",)}],
    "whiteout over a link, then a dir": [
        BASE, {"a": ("link", CANARY)}, {"a": ("wh",)}, {"a": ("dir",), "a/b": ("file", "new")}],
    "opaque dir over a lower dir holding a link": [
        BASE, {"a": ("dir",), "a/etc": ("link", CANARY + "/etc"), "a/b": ("file", "old")},
        {"a": ("opaque",), "a/c": ("file", "new")}],
    "opaque dir over a lower link": [
        BASE, {"a": ("link", CANARY)}, {"a": ("opaque",)}],
    "file in upper hiding a lower dir": [
        BASE, {"a": ("dir",), "a/secret": ("file", "old")}, {"a": ("file", "now a file")}],
    "dir over a file over a dir": [
        BASE, {"a": ("dir",), "a/b": ("file", "bottom")}, {"a": ("file", "mid")}, {"a": ("dir",), "a/c": ("file", "top")}],
    "chain of links": [
        BASE, {"a": ("link", "b"), "b": ("link", "/c/../etc"), "c": ("dir",)}],
    "relative chain climbing out": [
        BASE, {"a": ("dir",), "a/b": ("link", "../../../../etc"), "c": ("link", "a/b/passwd")}],
    "dangling links": [
        BASE, {"a": ("link", "nope"), "b": ("link", "/etc/nope/x"), "c": ("link", CANARY + "/secret")}],
    "link loop": [
        BASE, {"a": ("link", "b"), "b": ("link", "a"), "c": ("link", "c/x")}],
    "whiteout in upper over a name the upper dir merges": [
        BASE, {"etc": ("dir",), "etc/shadow": ("link", CANARY + "/etc/shadow")}, {"etc/shadow": ("wh",)}],
    "lower link under a merged dir": [
        BASE, {"etc": ("dir",), "etc/a": ("link", "/")}, {"etc": ("dir",), "etc/b": ("file", "x")}],
    "whiteout in a directory only one layer has": [
        BASE, {"a": ("dir",), "a/b": ("wh",), "a/c": ("file", "c")}],
    "link to a file used as a dir": [
        BASE, {"a": ("file", "f"), "b": ("link", "a/.."), "c": ("link", "a/.")}],
}


@needs_root
@pytest.mark.parametrize("case", list(HOSTILE))
def test_view_equals_kernel_overlay_on_hostile_shapes(case: str, tmp_path: Path, canary) -> None:
    cdir, secret = canary
    with mounted(tmp_path, HOSTILE[case], cdir) as (dirs, mnt):
        assert compare(dirs, mnt, secret, _queries()) > 0


@needs_root
def test_view_never_reads_the_canary_through_the_hidden_link(tmp_path: Path, canary) -> None:
    """The issue's exact shape, asked directly: /a/etc/shadow and /a/secret are not there."""
    cdir, secret = canary
    layers = [BASE, {"a": ("link", CANARY)}, {"a": ("dir",), "a/x": ("file", "from d")}]
    with mounted(tmp_path, layers, cdir) as (dirs, _):
        view = RootView(dirs)
        for p in ("/a/etc/shadow", "/a/secret", "/a/etc"):
            assert view.stat(p) is None and view.read_text(p) is None
        assert view.listdir("/a") == ["x"]
        assert [v for v, _, _ in view.walk("/a")] == ["/a", "/a/x"]


# -- random stacks -----------------------------------------------------------------------------
_NAMES = ("a", "b", "c")
_TARGETS = ("/", "..", "../..", "a", "b/c", "/a/b", "/c/../a", "nope", ".", "a/../../b", CANARY, CANARY + "/a")


def _tree(depth: int):
    leaf = hs.one_of(hs.tuples(hs.just("file"), hs.sampled_from(("x", "yy"))),
                     hs.tuples(hs.just("link"), hs.sampled_from(_TARGETS)),
                     hs.just(("wh",)))
    if depth == 0:
        return hs.dictionaries(hs.sampled_from(_NAMES), hs.one_of(leaf, hs.just(("dir",)), hs.just(("opaque",))),
                               max_size=3)
    sub = _tree(depth - 1)
    node = hs.one_of(leaf, hs.tuples(hs.sampled_from(("dir", "opaque")), sub))
    return hs.dictionaries(hs.sampled_from(_NAMES), node, max_size=3)


def _flatten(tree: dict, prefix: str = "") -> Layer:
    out: Layer = {}
    for name, entry in tree.items():
        rel = prefix + name
        if entry[0] in ("dir", "opaque") and len(entry) == 2 and isinstance(entry[1], dict):
            out[rel] = (entry[0],)
            out.update(_flatten(entry[1], rel + "/"))
        else:
            out[rel] = entry
    return out


@needs_root
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stack=hs.lists(_tree(2).map(_flatten), min_size=1, max_size=4))
def test_view_equals_kernel_overlay_on_random_stacks(stack: list[Layer], tmp_path: Path, canary) -> None:
    cdir, secret = canary
    with mounted(tmp_path, stack, cdir) as (dirs, mnt):
        compare(dirs, mnt, secret, _queries(_NAMES + ("secret",), depth=3))
