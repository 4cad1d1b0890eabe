"""Outside review (atk1): filesystem attacks on pybuild, each against a host canary.

Every test runs a real attack against the real components and asserts the SAFE outcome: the
canary (a host directory outside every target, holding a unique secret and files whose modes,
mtimes and contents are compared afterwards) is untouched and its secret reaches no image or
store file. A failing test is a break.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from builder.errors import BuildError
from tests.fixtures.building import build_in
from tests.fixtures.trees import diff_states, tree_state

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="attacks run as root (runc, overlay, mknod)")


# -- the canary ---------------------------------------------------------------------------------

class Canary:
    def __init__(self, base: Path) -> None:
        self.dir = base / f"canary-{uuid.uuid4().hex[:8]}"
        self.secret = f"canary-secret-{uuid.uuid4()}"
        self.dir.mkdir()
        (self.dir / "sub").mkdir()
        (self.dir / "victim").write_text("victim original\n")
        (self.dir / "sentinel").write_text(self.secret + "\n")
        (self.dir / "sub" / "deep").write_text("deep original\n")
        os.chmod(self.dir / "victim", 0o640)
        os.chmod(self.dir / "sub", 0o750)
        for p in (self.dir / "victim", self.dir / "sentinel", self.dir / "sub" / "deep",
                  self.dir / "sub", self.dir):
            os.utime(p, (1234567890, 1234567890))
        self.before = self.snapshot()

    def snapshot(self) -> dict:
        return tree_state(self.dir)

    def assert_untouched(self) -> None:
        after = self.snapshot()
        assert after == self.before, f"host canary changed: {diff_states(self.before, after)}"


@pytest.fixture
def canary(tmp_path_factory) -> Canary:
    return Canary(tmp_path_factory.mktemp("host"))


def _store_bytes(root: Path) -> bytes:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                data = Path(p).read_bytes()
            except OSError:
                continue
            if data[:2] == b"\x1f\x8b":
                try:
                    data = gzip.decompress(data)
                except Exception:
                    pass
            out.append(data)
    return b"\n".join(out)


def _build(root: Path, tmp_path: Path, dockerfile: str, files: dict | None = None, **kw):
    return build_in(root, tmp_path / f"ctx-{uuid.uuid4().hex[:6]}", dockerfile,
                    files if files is not None else {"d/x": "from d\n"}, tags=["atk:1"], **kw)


# -- RUN --mount=type=cache,from= seeding ---------------------------------------------------------

@needs_root
@pytest.mark.timeout(60)
def test_cache_mount_seed_from_linked_source_stays_in_cache_dir(busybox_image, tmp_path, canary) -> None:
    """The seeding loop cuts each walked path by len(source), but walks the *resolved* source.

    With source=/sss -> /x, "/x/aaF" becomes "F" and so does "/x/bbF": the first (a symlink to a
    host file) is made as <cache>/F, the second (a regular file) is then copied with
    shutil.copy2 onto <cache>/F, which follows the link and rewrites the host file."""
    victim = canary.dir / "victim"
    df = ("FROM busybox AS s1\n"
          f"RUN mkdir /x && ln -s /x /sss && ln -s {victim} /x/aaF && echo pwned > /x/bbF\n"
          "FROM busybox\n"
          "RUN --mount=type=cache,from=s1,source=/sss,target=/c,id=atk-seed ls -la /c\n")
    try:
        _build(busybox_image, tmp_path, df)
    except BuildError:
        pass
    canary.assert_untouched()


@pytest.fixture
def secret_loop(tmp_path, canary):
    """A loop block device whose contents are the canary's secret (a stand-in for a host disk)."""
    import shutil as _sh
    import subprocess
    if _sh.which("losetup") is None:
        pytest.skip("losetup missing")
    img = canary.dir.parent / "disk.img"
    img.write_bytes((canary.secret + "\n").encode().ljust(1 << 16, b"\0"))
    r = subprocess.run(["losetup", "--find", "--show", "--read-only", str(img)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no loop device: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev, os.stat(dev).st_rdev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@needs_root
@pytest.mark.timeout(60)
def test_cache_mount_seed_does_not_read_device_nodes(busybox_image, tmp_path, canary, secret_loop) -> None:
    """A stage's block device node (made with mknod in a RUN, as Docker's device rules allow)
    is a cache mount's seed: shutil.copy2 reads the *host* device behind it into the cache
    directory, where the next RUN (and the layer it writes) sees it."""
    _, rdev = secret_loop
    df = ("FROM busybox AS s1\n"
          f"RUN mkdir /x && mknod /x/disk b {os.major(rdev)} {os.minor(rdev)}\n"
          "FROM busybox\n"
          "RUN --mount=type=cache,from=s1,source=/x,target=/c,id=atk-dev cat /c/disk > /loot || true\n")
    try:
        _build(busybox_image, tmp_path, df)
    except BuildError:
        pass
    assert canary.secret.encode() not in _store_bytes(busybox_image), \
        "a host block device's contents reached the store through cache-mount seeding"


@needs_root
@pytest.mark.timeout(60)
def test_cache_mount_seed_still_copies_the_tree(busybox_image, tmp_path) -> None:
    """The fix keeps seeding working: files, directories, links, modes, through a linked source."""
    df = ("FROM busybox AS s1\n"
          "RUN mkdir -p /x/a && echo hi > /x/a/f && chmod 4750 /x/a/f && ln -s a/f /x/l && ln -s /x /sss\n"
          "FROM busybox\n"
          "RUN --mount=type=cache,from=s1,source=/sss,target=/c,id=atk-ok "
          "test \"$(cat /c/a/f)\" = hi && test \"$(cat /c/l)\" = hi && test -L /c/l "
          "&& test -u /c/a/f && test ! -e /c/sss\n")
    _build(busybox_image, tmp_path, df)


# -- outputs ------------------------------------------------------------------------------------

@needs_root
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["tar", "oci", "docker"])
def test_archive_output_replaces_a_planted_link_at_dest(busybox_image, tmp_path, canary, kind) -> None:
    """An earlier `-o type=local,dest=out` of a hostile image can leave `out/rootfs.tar ->
    <host file>`; the next `-o type=tar,dest=out/rootfs.tar` must replace that link (as
    docs/security/extract.md says), not resolve it and rename the archive over the host file."""
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "rootfs.tar"
    os.symlink(canary.dir / "victim", dest)
    _build(busybox_image, tmp_path, "FROM busybox\nCOPY d /d\n", outputs=[f"type={kind},dest={dest}"])
    canary.assert_untouched()
    assert dest.is_file() and not dest.is_symlink()


# -- the Dockerfile and .dockerignore of a context -------------------------------------------------

def _tar_of(d: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(d, arcname=".")
    return buf.getvalue()


@needs_root
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["tar-context", "directory"])
def test_context_dockerfile_link_does_not_read_a_host_file(busybox_image, tmp_path, canary, how) -> None:
    """`Dockerfile -> <host file>` in a context: the host file was read as the Dockerfile and its
    first line printed in the parse error (e.g. root's hash from /etc/shadow, in a CI log)."""
    from builder.engine.build import BuildOptions, build
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.symlink(canary.dir / "sentinel", ctx / "Dockerfile")
    os.symlink(canary.dir / "sentinel", ctx / ".dockerignore")
    log = io.StringIO()
    kw = dict(root=str(busybox_image), progress="plain", progress_out=log)
    with pytest.raises(BuildError) as ei:
        if how == "tar-context":
            t = tmp_path / "ctx.tar"
            t.write_bytes(_tar_of(ctx))
            build(BuildOptions(context=str(t), **kw))
        else:
            build(BuildOptions(context=str(ctx), **kw))
    assert canary.secret not in str(ei.value) + log.getvalue()
    assert "not found" in str(ei.value)


@needs_root
@pytest.mark.timeout(60)
def test_context_dockerfile_link_inside_the_context_still_works(busybox_image, tmp_path) -> None:
    from builder.engine.build import BuildOptions, build
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "sub" / "Dockerfile.real").write_text("FROM busybox\nCOPY d /d\n")
    (ctx / "d").write_text("x")
    (ctx / ".dockerignore").write_text("nothing-here\n")
    os.symlink("/sub/Dockerfile.real", ctx / "Dockerfile")  # absolute: resolved inside the context
    t = tmp_path / "ctx.tar"
    t.write_bytes(_tar_of(ctx))
    for spec in (str(t), str(ctx)):
        build(BuildOptions(context=spec, root=str(busybox_image), progress="plain",
                           progress_out=io.StringIO()))


# -- the store ----------------------------------------------------------------------------------

@needs_root
@pytest.mark.timeout(60)
def test_store_paths_are_out_of_other_users_reach(busybox_image, tmp_path) -> None:
    """After a build with RUN, COPY, a cache mount and a secret, no path under the root can be
    reached by another user: every directory on the way from the root is 0700 (or the root's
    own mode keeps others out), and the secret is nowhere in the store."""
    secret = f"s3cr3t-{uuid.uuid4()}"
    sfile = tmp_path / "sec"
    sfile.write_text(secret)
    df = ("FROM busybox\nCOPY d /d\n"
          "RUN --mount=type=cache,target=/c --mount=type=secret,id=tok "
          "cp /bin/busybox /suid && chmod 4755 /suid && cat /run/secrets/tok | wc -c > /n\n")
    _build(busybox_image, tmp_path, df, secrets=[f"id=tok,src={sfile}"])
    root = Path(busybox_image)
    st = os.stat(root)
    assert st.st_mode & 0o077 == 0, oct(st.st_mode)
    # docs/security/store.md: these are 0700; containers/ and cache/ are fenced by the root only.
    for name in ("images", "layers", "l", "snapshots", "tmp", "cachemounts"):
        p = root / name
        if p.exists():
            assert os.lstat(p).st_mode & 0o077 == 0, (p, oct(os.lstat(p).st_mode))
    for p in Path("/dev/shm").glob("pybuild-*"):
        assert os.lstat(p).st_mode & 0o077 == 0, p
    assert secret.encode() not in _store_bytes(root)


# -- layer extraction ---------------------------------------------------------------------------

def _tar(entries) -> bytes:
    """entries: (name, kind, extra) with kind dir/file/sym/hard/chr/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 0
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, extra or 0o6777
                tf.addfile(ti)
            elif kind == "file":
                data = extra if isinstance(extra, bytes) else b"pwned\n"
                ti.size, ti.mode = len(data), 0o4777
                ti.pax_headers = {"SCHILY.xattr.user.pwn": "1"}
                tf.addfile(ti, io.BytesIO(data))
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra
                tf.addfile(ti)
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra
                tf.addfile(ti)
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor, ti.mode = tarfile.CHRTYPE, 1, 3, 0o666
                tf.addfile(ti)
            elif kind == "fifo":
                ti.type, ti.mode = tarfile.FIFOTYPE, 0o666
                tf.addfile(ti)
    return buf.getvalue()


def _shapes(c: Path) -> dict[str, list]:
    up = "../" * 12 + str(c).lstrip("/")
    return {
        "opaque-through-link": [("a", "sym", str(c)), ("a/.wh..wh..opq", "file", b"")],
        "whiteout-through-climbing-link": [("a", "sym", up), ("a/.wh.victim", "file", b""),
                                           ("a/.wh.sub", "file", b"")],
        "hardlink-of-a-link-then-write": [("l", "sym", str(c / "victim")), ("h", "hard", "l"),
                                          ("h", "file", b"over\n")],
        "chain-of-links-then-children": [("a", "sym", "b/.."), ("b", "sym", "/c"), ("c", "sym", up),
                                         ("a/sub", "dir", 0o6777), ("a/victim", "file", None),
                                         ("a/sub/deep", "chr", None), ("a/sentinel", "fifo", None)],
        "dir-then-link-then-deferred-modes": [("x", "dir", 0o6777), ("x/sub", "dir", 0o6777),
                                              ("x/sub/f", "file", None), ("x", "sym", str(c)),
                                              ("x/sub", "dir", 0o6777), ("x/victim", "hard", "x/sub/f")],
        "dotdot-after-link": [("d", "dir", 0o755), ("d/l", "sym", "../../../../../.."),
                              ("d/l/" + str(c).lstrip("/") + "/victim", "file", None)],
        "proc-magic-link-target": [("p", "sym", "/proc/self/root" + str(c)), ("p/victim", "file", None),
                                   ("q", "sym", "/proc/self/cwd"), ("q/victim", "file", None)],
    }


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["apply", "overlay", "none"])
@pytest.mark.parametrize("shape", list(_shapes(Path("/x"))))
@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_extract_hostile_shapes_leave_the_canary_alone(tmp_path, canary, mode, shape, openat2,
                                                        monkeypatch) -> None:
    from registry import inroot
    from registry.errors import RegistryError
    from registry.tarsafe import extract_tar
    if not openat2:
        monkeypatch.setattr(inroot, "_have_openat2", False)
    target = tmp_path / "t"
    cwd = os.getcwd()
    os.chdir(canary.dir)          # /proc/self/cwd would be the canary
    try:
        extract_tar(io.BytesIO(_tar(_shapes(canary.dir)[shape])), target, whiteouts=mode)
    except RegistryError:
        pass
    finally:
        os.chdir(cwd)
    canary.assert_untouched()
