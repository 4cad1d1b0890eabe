"""SECURITY.md 4b: rootless mode attacked from outside (issue 12's review).

Each test runs one attack as a hostile build context, image, other local user, container or
environment against host canaries: a file of the user's outside the store (which root of the
user's namespace could write, were it reachable), host root's files, another user's directory.
The outcome asserted is the safe one: canary untouched, a clear error, no traceback.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.fixtures.rootless import RootlessUser, store_with

pytestmark = pytest.mark.skipif(shutil.which("runc") is None, reason="runc not installed (Debian's runc)")

CANARY = "the user's own file, outside the store\n"
NOBODY = 65534


def _canary(user: RootlessUser, d: Path) -> Path:
    """A file of the user's in ``d`` (outside the store): root of the namespace may write it."""
    c = d / "canary"
    c.write_text(CANARY)
    os.chown(c, user.uid, user.gid)
    return c


def _ok(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr, r.stderr


def _context(user: RootlessUser, scratch: Path, dockerfile: str, files: dict[str, bytes] = {}) -> Path:
    ctx = scratch / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, data in files.items():
        (ctx / name).write_bytes(data)
    user.give(ctx)
    return ctx


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "",
           pax: dict[str, str] | None = None, uid: int = 0, devmajor: int = 0, devminor: int = 0,
           ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid = kind, mode, linkname, uid, uid
    info.devmajor, info.devminor = devmajor, devminor
    if pax:
        info.pax_headers = dict(pax)
    return info


def _image_on_busybox(store_root: Path, tag: str, layers: list[bytes]) -> None:
    """Tag ``tag`` in the store: busybox's layers, then ``layers`` (uncompressed tars) on top."""
    from registry import mediatypes as mt
    from registry.platform import host_platform
    from registry.store import Store
    from tests.fixtures.synthetic_images import make_image

    store = Store(store_root)
    _, man = store.image_manifest("busybox")
    base = list(zip(man.layers, store.image_config("busybox").diff_ids))
    extra = [(store.put_blob(gzip.compress(t, mtime=0), mt.OCI_LAYER_GZIP), "sha256:" + hashlib.sha256(t).hexdigest())
             for t in layers]
    make_image(store, tag, layer_descs=base + extra, platform=host_platform(), cmd=["true"])


# --- hostile environment ---------------------------------------------------------------------

def test_an_inherited_pybuild_nested_does_not_share_the_hosts_pid_namespace(user, scratch, _busybox_layout):
    """PYBUILD_NESTED=1 in the environment (a CI variable, a copied env file) must not turn an
    ordinary user's RUN steps into the in-container mode, which shares the caller's pid
    namespace and /proc: the step still gets a pid namespace of its own (pid 1 is its shell)."""
    store = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch, "FROM busybox\nRUN echo pid1=$(cat /proc/1/comm) n=$(ls -d /proc/[0-9]* | wc -l)\n")
    r = user.pybuild("build", "--progress", "plain", "--no-cache", ctx, root=store, env={"PYBUILD_NESTED": "1"})
    _ok(r)
    assert r.returncode == 0, r.stderr
    assert "pid1=sh " in r.stderr, r.stderr


def _other_users_dir(scratch: Path, name: str) -> Path:
    """A world-writable directory of another user (nobody) beside the user's scratch tree."""
    d = scratch / name
    d.mkdir()
    os.chmod(scratch, 0o755)
    os.chown(d, NOBODY, NOBODY)
    os.chmod(d, 0o777)
    return d


def test_runc_state_never_goes_to_a_runtime_dir_another_user_planted(user, scratch, _busybox_layout):
    """XDG_RUNTIME_DIR set to a shared directory where another user made `pybuild-runc`
    (world-writable, theirs): runc's state (each container's config and state, the init's
    pid) must not land where that user can read or swap it. pybuild uses the store's own
    `runc/` instead and the other user's directory stays empty."""
    shared = _other_users_dir(scratch, "shared")
    planted = shared / "pybuild-runc"
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    os.chmod(planted, 0o777)
    before = planted.stat().st_mtime_ns
    store = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch, "FROM busybox\nRUN sleep 1 && echo ran\n")
    r = user.pybuild("build", "--progress", "plain", "--no-cache", ctx, root=store, env={"XDG_RUNTIME_DIR": shared})
    _ok(r)
    assert r.returncode == 0, r.stderr
    # runc removes a container's state when it ends: the directory's mtime shows it was used.
    assert planted.stat().st_mtime_ns == before and list(planted.iterdir()) == []
    assert (store / "runc").is_dir() and (store / "runc").stat().st_uid == user.uid


def test_a_runc_root_in_the_environment_owned_by_another_user_is_refused(user, scratch, _busybox_layout):
    """PYBUILD_RUNC_ROOT pointing at another user's world-writable directory: refused with a
    clear error naming it and its owner; nothing is written there."""
    planted = _other_users_dir(scratch, "planted")
    store = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch, "FROM busybox\nRUN echo ran\n")
    r = user.pybuild("build", "--no-cache", ctx, root=store, env={"PYBUILD_RUNC_ROOT": planted})
    _ok(r)
    assert r.returncode == 1 and str(planted) in r.stderr and "65534" in r.stderr, r.stderr
    assert list(planted.iterdir()) == []


def test_a_store_root_made_by_another_user_is_refused(user, scratch, _busybox_layout):
    """`--root` (or $PYBUILD_ROOT, or a pre-created ~/.local/share/pybuild) at a directory
    another user made: that user could swap its blobs and layers under the build. Refused
    with a clear error naming the directory and its owner; nothing is written in it."""
    planted = _other_users_dir(scratch, "planted")
    r = user.pybuild("images", root=planted)
    _ok(r)
    assert r.returncode == 1 and str(planted) in r.stderr and "65534" in r.stderr, r.stderr
    assert list(planted.iterdir()) == []

    home = scratch / "home"
    (home / ".local" / "share").mkdir(parents=True)
    user.give(home)
    (home / ".local" / "share" / "pybuild").mkdir(mode=0o777)
    os.chown(home / ".local" / "share" / "pybuild", NOBODY, NOBODY)
    r = user.run("python3", "-m", "builder", "images", env={"HOME": str(home)})
    _ok(r)
    assert r.returncode == 1 and "65534" in r.stderr, r.stderr
    assert list((home / ".local" / "share" / "pybuild").iterdir()) == []


# --- hostile Dockerfile / RUN step ---------------------------------------------------------

def test_a_run_step_reaches_nothing_of_the_host_through_proc_or_fds(user, scratch, _busybox_layout):
    """A RUN step (root of the namespace, where the user's own files are writable) tries every
    way out through /proc: /proc/*/root and /proc/*/cwd, fds it inherited (/proc/self/fd/*,
    and `..` from any directory fd), /proc/self/root. The user's canary beside the store is
    neither read nor written; the step holds only its stdio fds."""
    canary = _canary(user, scratch)
    store = store_with(_busybox_layout, scratch / "store", user)
    c = str(canary)
    step = (f"ls -l /proc/self/fd/ > /fds.txt; "
            f"for p in /proc/[0-9]*/root /proc/[0-9]*/cwd /proc/self/root /proc/self/fd/*; do "
            f"cat $p{c} 2>/dev/null && echo LE\\AK; echo pwned > $p{c} 2>/dev/null; "
            f"cat $p/../../../../../..{c} 2>/dev/null && echo LE\\AK; done; "
            "ls /proc/[0-9]* -d > /pids.txt; true")
    ctx = _context(user, scratch, f"FROM busybox\nRUN sh -c '{step}'\nRUN cat /fds.txt /pids.txt\n")
    r = user.pybuild("build", "--progress", "plain", "--no-cache", "-t", "probe", ctx, root=store)
    _ok(r)
    assert r.returncode == 0, r.stderr
    assert "LEAK" not in r.stderr and canary.read_text() == CANARY
    fds = [l.split()[-3:] for l in r.stderr.splitlines() if " -> " in l]
    # 0-2 are the step's stdio (pipes, /fds.txt), 3 at most ls's own listing of /proc/self/fd.
    names = {f[0] for f in fds}
    assert {"0", "1", "2"} <= names <= {"0", "1", "2", "3"}, fds
    assert not [f for f in fds if f[2].startswith(str(scratch))], fds


# --- hostile image layers --------------------------------------------------------------------

def test_hostile_layer_links_write_nothing_outside_the_layer(user, scratch, _busybox_layout):
    """An image whose layers carry a hard link to the user's canary (absolute and by `..`), a
    symlink to the canary's directory with a file written through it (same layer), and a
    symlink in one layer with a file through it in the next. Run rootless: the canary is
    unchanged and nothing lands beside it (a refused entry is a clear error)."""
    canary = _canary(user, scratch)
    c, d = str(canary), str(scratch)
    low = _tar([(_entry("out", tarfile.SYMTYPE, 0o777, linkname=d), None)])
    high = _tar([(_entry("hard-abs", tarfile.LNKTYPE, linkname=c), None),
                 (_entry("hard-rel", tarfile.LNKTYPE, linkname="../../../../../../.." + c), None),
                 (_entry("esc", tarfile.SYMTYPE, 0o777, linkname=d), None),
                 (_entry("esc/planted-same-layer"), b"pwned\n"),
                 (_entry("out/planted-next-layer"), b"pwned\n")])
    store = store_with(_busybox_layout, scratch / "store", user)
    _image_on_busybox(store, "hostile:latest", [low, high])
    user.give(store)
    r = user.pybuild("run", "--rm", "hostile", "sh", "-c",
                     "cat /hard-abs /hard-rel; echo pwned > /hard-abs; echo pwned > /out/x; true", root=store)
    _ok(r)
    assert canary.read_text() == CANARY
    assert sorted(p.name for p in scratch.iterdir()) == ["canary", "store"]
    assert CANARY not in r.stdout
    assert r.returncode == 0 or "error:" in r.stderr, r.stderr


def test_hostile_layer_devices_setuid_and_overlay_xattrs(user, scratch, _busybox_layout):
    """An image whose top layer carries device nodes (mem 1:1, sda 8:0), a setuid file, and
    `user.overlay.*` / `trusted.overlay.*` xattrs meant to make a directory opaque, redirect
    it, or turn a file into a whiteout in the rootless overlay (userxattr). Run rootless: the
    devices are absent, the lower layer's files the xattrs meant to hide are all there, and
    the setuid file cannot be reached by another user (the store is 0700)."""
    low = _tar([(_entry("keep", tarfile.DIRTYPE, 0o755), None),
                (_entry("keep/lower.txt"), b"lower\n"),
                (_entry("keep2", tarfile.DIRTYPE, 0o755), None),
                (_entry("keep2/lower.txt"), b"lower\n"),
                (_entry("keep3.txt"), b"lower\n")])
    high = _tar([(_entry("dev/mem1", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=1), None),
                 (_entry("dev/sda1", tarfile.BLKTYPE, 0o666, devmajor=8, devminor=0), None),
                 (_entry("suid", mode=0o4755), b"#!/bin/sh\nid -u\n"),
                 (_entry("keep", tarfile.DIRTYPE, 0o755, pax={"SCHILY.xattr.user.overlay.opaque": "y",
                                                               "SCHILY.xattr.trusted.overlay.opaque": "y"}), None),
                 (_entry("keep2", tarfile.DIRTYPE, 0o755,
                         pax={"SCHILY.xattr.user.overlay.redirect": "/nowhere"}), None),
                 (_entry("keep3.txt", pax={"SCHILY.xattr.user.overlay.whiteout": "y"}), b"upper\n"),
                 (_entry("./", tarfile.DIRTYPE, 0o755, pax={"SCHILY.xattr.user.overlay.whiteouts": "y"}), None)])
    store = store_with(_busybox_layout, scratch / "store", user)
    _image_on_busybox(store, "hostile:latest", [low, high])
    user.give(store)
    r = user.pybuild("run", "--rm", "hostile", "sh", "-c",
                     "cat /keep/lower.txt /keep2/lower.txt /keep3.txt; ls /dev/mem1 /dev/sda1; ls -ln /suid; true",
                     root=store)
    _ok(r)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("lower") == 2 and "upper" in r.stdout, r.stdout + r.stderr
    assert "/dev/mem1" not in r.stdout and "/dev/sda1" not in r.stdout
    assert "-rwsr-xr-x" in r.stdout
    suid = [p for p in (store / "layers").rglob("suid")]
    assert suid
    probe = subprocess.run(["runuser", "-u", "nobody", "--", "test", "-e", str(suid[0])])
    assert probe.returncode != 0


def test_hostile_build_context_tar_in_add(user, scratch, _busybox_layout):
    """A build context whose `ADD evil.tar /` carries a symlink out of the rootfs with a file
    written through it, a world-writable device node and a `user.overlay.opaque` xattr on /etc
    (to hide busybox's /etc/passwd in the rootless overlay): confined, the file lands inside
    the image, no device, /etc/passwd still there. The same tar with a hard link to the
    user's canary: a clear error naming the entry. The canary unchanged, nothing beside it."""
    canary = _canary(user, scratch)
    entries = [(_entry("esc", tarfile.SYMTYPE, 0o777, linkname=str(scratch)), None),
               (_entry("esc/planted"), b"pwned\n"),
               (_entry("mem", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=1), None),
               (_entry("etc", tarfile.DIRTYPE, 0o755, pax={"SCHILY.xattr.user.overlay.opaque": "y"}), None)]
    store = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch, "FROM busybox\nADD evil.tar /\nRUN ls /etc/passwd; ls /mem; "
                   "echo pwned > /esc/x; true\n", {"evil.tar": _tar(entries)})
    r = user.pybuild("build", "--progress", "plain", "--no-cache", ctx, root=store)
    _ok(r)
    assert r.returncode == 0, r.stderr
    assert " /etc/passwd\n" in r.stderr and "ls: /mem: No such file" in r.stderr, r.stderr
    assert canary.read_text() == CANARY
    assert sorted(p.name for p in scratch.iterdir()) == ["canary", "ctx", "store"]

    hard = [(_entry("hard", tarfile.LNKTYPE, linkname=str(canary)), None)]
    (ctx / "evil.tar").write_bytes(_tar(entries + hard))
    (ctx / "Dockerfile").write_text("FROM busybox\nADD evil.tar /\nRUN cat /hard; echo pwned > /hard\n")
    r = user.pybuild("build", "--progress", "plain", "--no-cache", ctx, root=store)
    _ok(r)
    assert r.returncode == 1 and "error:" in r.stderr and "'hard'" in r.stderr, r.stderr
    assert canary.read_text() == CANARY
    assert sorted(p.name for p in scratch.iterdir()) == ["canary", "ctx", "store"]


# --- hostile container -------------------------------------------------------------------------

def test_a_hostile_container_leaves_diff_commit_and_rm_inside_the_store(user, scratch, _busybox_layout):
    """A detached container plants symlinks to the user's canary and its directory, a hard
    link attempt, a fifo, and tries to signal every process it sees. `diff`, `commit`, `stop`
    and `rm` as the user then read and remove the upper directory: the canary is unchanged,
    nothing is created beside it, and the committed image holds the symlinks as symlinks."""
    canary = _canary(user, scratch)
    store = store_with(_busybox_layout, scratch / "store", user)
    pb = lambda *a, **kw: user.pybuild(*a, root=store, **kw)   # noqa: E731
    plant = (f"ln -s {canary} /l; ln -s {scratch} /d; ln /l /hl; mkfifo /f; mkdir -p /x; ln -s /proc/self/root /x/r; "
             "kill -9 -1; ls /proc | grep -c '^[0-9]' > /nprocs; sleep 300")
    pb("run", "-d", "--name", "evil", "busybox", "sh", "-c", plant, check_rc=0)
    pb("exec", "evil", "sh", "-c", "for i in $(seq 100); do test -e /nprocs && exit 0; sleep 0.1; done; exit 1",
       check_rc=0)
    diff = pb("diff", "evil", check_rc=0).stdout.split("\n")
    assert {"A /l", "A /d", "A /f"} <= set(diff), diff
    pb("stop", "-t", "1", "evil", check_rc=0)
    pb("commit", "evil", "evil-img", check_rc=0)
    out = pb("run", "--rm", "evil-img", "sh", "-c", "readlink /l; readlink /d; cat /nprocs; cat /l; echo pwned > /d/new; true",
             check_rc=0).stdout.split()
    assert out[:2] == [str(canary), str(scratch)] and int(out[2]) <= 3, out
    pb("rm", "evil", check_rc=0)
    assert canary.read_text() == CANARY and sorted(p.name for p in scratch.iterdir()) == ["canary", "store"]


# --- another local user; forged state ---------------------------------------------------------

HOLDER = """\
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000) == 0, ctypes.get_errno()
print("ready", flush=True)
time.sleep(300)
"""


def test_a_forged_container_record_cannot_make_pybuild_join_roots_namespace(user, scratch):
    """A container record in the store names as its running monitor a process host root put
    in a user namespace with exactly the uid map rootless pybuild makes (0 -> the user, 1.. ->
    the range): joining it would run the command in root's mount namespace. pybuild does not
    join it (root owns that namespace, setns is refused) and runs in a namespace of its own;
    a record naming pid 1 or a dead pid is ignored the same way."""
    holder = subprocess.Popen([shutil.which("python3") or "/usr/bin/python3", "-c", HOLDER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        Path(f"/proc/{holder.pid}/uid_map").write_text(f"0 {user.uid} 1\n1 200000 65536\n")
        Path(f"/proc/{holder.pid}/gid_map").write_text(f"0 {user.gid} 1\n1 200000 65536\n")
        theirs = os.readlink(f"/proc/{holder.pid}/ns/user")
        store = scratch / "store"
        user.pybuild("images", root=store, check_rc=0)
        for n, pid in (("a", holder.pid), ("b", 1), ("c", 999999999)):
            rec = store / "containers" / f"{n * 64}"
            rec.mkdir(parents=True)
            (rec / "state.json").write_text(f'{{"status": "running", "pid": {pid}}}')
        user.give(store)
        r = user.pybuild("unshare", "sh", "-c", "readlink /proc/self/ns/user; cat /proc/self/uid_map", root=store)
        _ok(r)
        assert r.returncode == 0, r.stderr
        ns, *maps = r.stdout.splitlines()
        assert ns != theirs
        assert [m.split() for m in maps] == [["0", str(user.uid), "1"], ["1", "200000", "65536"]]
    finally:
        holder.kill()
        holder.wait()


def test_unshare_argument_handling(user, scratch):
    """`pybuild unshare` with a missing program, with `--` before an option-like command, and
    passing the exit code through; the command inherits no fd of pybuild's."""
    store = scratch / "store"
    r = user.pybuild("unshare", "/nonexistent/prog", root=store)
    _ok(r)
    assert r.returncode != 0 and "/nonexistent/prog" in r.stderr, r.stderr
    r = user.pybuild("unshare", "--", "--help", root=store)
    _ok(r)
    assert r.returncode != 0 and "'--help'" in r.stderr, r.stderr
    r = user.pybuild("unshare", "sh", "-c", "exit 7", root=store)
    assert r.returncode == 7
    r = user.pybuild("unshare", "ls", "/proc/self/fd", root=store, check_rc=0)
    assert set(r.stdout.split()) <= {"0", "1", "2", "3"}, r.stdout


def test_a_symlink_at_the_runc_root_is_refused(user, scratch, _busybox_layout):
    """`pybuild-runc` in the user's own XDG_RUNTIME_DIR replaced by a symlink to a directory
    of the user's elsewhere: refused with a clear error, nothing written through it. A new
    store's runc/ (no XDG_RUNTIME_DIR) is made 0700 with its root."""
    run = scratch / "run"
    run.mkdir(mode=0o700)
    elsewhere = scratch / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run / "pybuild-runc")
    user.give(run)
    user.give(elsewhere)
    r = user.pybuild("images", root=scratch / "store", env={"XDG_RUNTIME_DIR": run})
    _ok(r)
    assert r.returncode == 1 and str(run / "pybuild-runc") in r.stderr and "symlink" in r.stderr, r.stderr
    assert list(elsewhere.iterdir()) == []

    r = user.pybuild("images", root=scratch / "new" / "store", check_rc=0)
    for d in (scratch / "new" / "store", scratch / "new" / "store" / "runc"):
        assert d.stat().st_mode & 0o777 == 0o700 and d.stat().st_uid == user.uid


def test_repair_as_the_user_leaves_another_users_dev_shm_entries_alone(user, scratch):
    """Another user plants /dev/shm/pybuild-<hash of the user's store>-* as a symlink to a
    directory of the user's and as a directory of their own: the user's `store verify
    --repair` follows neither (the user's files stay), removes nothing of theirs, and ends
    without a traceback. (tests/security/test_store_hygiene.py has root's case, where the
    symlink made root unmount its target.)"""
    from builder.engine.executor import MEMORY_TMP, memory_dir_prefix
    store = scratch / "store"
    user.pybuild("images", root=store, check_rc=0)
    mine = scratch / "mine"
    mine.mkdir()
    _canary(user, mine)
    user.give(mine)
    prefix = MEMORY_TMP / memory_dir_prefix(store)
    link, theirs = Path(f"{prefix}link"), Path(f"{prefix}theirs")
    try:
        os.symlink(mine, link)
        os.lchown(link, NOBODY, NOBODY)
        theirs.mkdir(mode=0o777)
        (theirs / "f").write_text("theirs\n")
        os.chown(theirs / "f", NOBODY, NOBODY)
        os.chown(theirs, NOBODY, NOBODY)
        r = user.pybuild("store", "verify", "--repair", root=store)
        _ok(r)
        assert r.returncode == 0, r.stderr
        assert (mine / "canary").read_text() == CANARY
        assert link.is_symlink() and (theirs / "f").read_text() == "theirs\n"
    finally:
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(theirs, ignore_errors=True)


def test_context_symlinks_out_of_the_context_reach_nothing_rootless(user, scratch, _busybox_layout):
    """A build context with symlinks to the user's canary and its directory, used by
    `COPY`, `RUN --mount=type=bind` (whole context and through the link) and `ADD`: nothing of
    the user's outside the context is copied, mounted or written; a source through a link
    that leaves the context is a clear error."""
    outside = scratch / "outside"
    outside.mkdir()
    canary = _canary(user, outside)
    user.give(outside)
    store = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch, "FROM busybox\nCOPY . /c\nRUN --mount=type=bind,target=/m,rw "
                   "sh -c 'cat /m/l /m/d/canary /c/l /c/d/canary; echo pwned > /m/d/canary; "
                   "echo pwned > /m/l; readlink /c/l; true'\n")
    os.symlink(canary, ctx / "l")
    os.symlink(outside, ctx / "d")
    os.lchown(ctx / "l", user.uid, user.gid)
    os.lchown(ctx / "d", user.uid, user.gid)
    r = user.pybuild("build", "--progress", "plain", "--no-cache", ctx, root=store)
    _ok(r)
    assert r.returncode == 0, r.stderr
    assert CANARY.strip() not in r.stderr and str(canary) in r.stderr      # the link, copied as a link
    assert canary.read_text() == CANARY and sorted(p.name for p in outside.iterdir()) == ["canary"]

    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=bind,source=d,target=/m cat /m/canary\n")
    r = user.pybuild("build", "--progress", "plain", "--no-cache", ctx, root=store)
    _ok(r)
    assert CANARY.strip() not in r.stderr
    assert r.returncode != 0 and "error:" in r.stderr, r.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY d/canary /x\n")
    r = user.pybuild("build", "--progress", "plain", "--no-cache", "-t", "x", ctx, root=store)
    _ok(r)
    assert r.returncode != 0 and "error:" in r.stderr, r.stderr
    assert canary.read_text() == CANARY


def test_pasta_of_a_rootless_container_runs_as_the_user(user, scratch, _busybox_layout):
    """The private network's pasta of a rootless container is the user's process (an exploit
    of pasta through the container's traffic lands as the user): while the container runs,
    the pasta in the user namespace of the container's monitor belongs to the user."""
    import json
    store = store_with(_busybox_layout, scratch / "store", user)
    pb = lambda *a, **kw: user.pybuild(*a, root=store, **kw)   # noqa: E731
    pb("run", "-d", "--name", "net", "busybox", "sleep", "300", check_rc=0)
    try:
        (state,) = (store / "containers").glob("*/state.json")
        ns = os.readlink(f"/proc/{json.loads(state.read_text())['pid']}/ns/user")
        found = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and (p / "comm").read_text().startswith(("pasta", "passt")) \
                        and os.readlink(p / "ns" / "user") == ns:
                    found.append(p.stat().st_uid)
            except OSError:
                continue
        assert found and set(found) == {user.uid}, found
    finally:
        pb("rm", "-f", "net")


def test_a_store_under_a_directory_another_user_may_write_is_refused(user, scratch):
    """The store root is the user's own, but the directory above it is another user's: they
    could rename the store away and put theirs in its place between two commands. Refused,
    naming that directory; under a directory of root's it is fine."""
    shared = _other_users_dir(scratch, "shared")
    store = shared / "store"
    store.mkdir(mode=0o700)
    os.chown(store, user.uid, user.gid)
    r = user.pybuild("images", root=store)
    _ok(r)
    assert r.returncode == 1 and f"{shared} above it belongs to uid 65534" in r.stderr, r.stderr
    assert list(store.iterdir()) == []

    os.chown(shared, 0, 0)             # root's: fine
    user.pybuild("images", root=store, check_rc=0)


def test_whiteouts_through_a_lower_layers_symlink_delete_nothing_outside(user, scratch, _busybox_layout):
    """A lower layer's symlink `out` to the user's directory, and an upper layer whose
    whiteouts (`out/.wh.canary`, an opaque `out/.wh..wh..opq`) would delete through it. Run
    rootless (the overlay form) and exported with `-o type=local` (the whiteouts applied):
    the user's canary stays; the export holds the link as a link, or fails with a clear error
    (it does today, as root too: the merged view lists the whited-out name; not a leak)."""
    mine = scratch / "mine"
    mine.mkdir()
    canary = _canary(user, mine)
    user.give(mine)
    low = _tar([(_entry("out", tarfile.SYMTYPE, 0o777, linkname=str(mine)), None)])
    high = _tar([(_entry("out/.wh.canary"), b""), (_entry("out/.wh..wh..opq"), b"")])
    store = store_with(_busybox_layout, scratch / "store", user)
    _image_on_busybox(store, "wh:latest", [low, high])
    user.give(store)
    r = user.pybuild("run", "--rm", "wh", "sh", "-c", "ls -la /out; true", root=store)
    _ok(r)
    assert canary.read_text() == CANARY
    ctx = _context(user, scratch, "FROM wh\n")
    out = scratch / "export"
    r = user.pybuild("build", "-o", f"type=local,dest={out}", ctx, root=store)
    _ok(r)
    assert canary.read_text() == CANARY and sorted(p.name for p in mine.iterdir()) == ["canary"]
    if r.returncode == 0:
        assert not (out / "out").is_symlink() or os.readlink(out / "out") == str(mine)
    else:
        assert "error:" in r.stderr, r.stderr


def test_a_user_beyond_the_mapped_ids_and_an_unreachable_volume_are_clear_errors(user, scratch, _busybox_layout):
    """A Dockerfile's `USER 70000` (no such id in the namespace) before a RUN, a `COPY
    --chown=70000`: each a clear error naming the id, no traceback, nothing run as some other
    id. `pybuild run -v /root:/r` (a directory the user cannot enter): root of the container
    cannot list it either."""
    store = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch, "FROM busybox\nUSER 70000\nRUN id -u > /tmp/ran\n", {"f": b"x\n"})
    r = user.pybuild("build", "--no-cache", ctx, root=store)
    _ok(r)
    assert r.returncode == 1 and "error:" in r.stderr and "70000" in r.stderr, r.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY --chown=70000 f /f\nRUN ls -ln /f\n")
    r = user.pybuild("build", "--no-cache", ctx, root=store)
    _ok(r)
    assert r.returncode == 1 and "error:" in r.stderr and "70000" in r.stderr, r.stderr
    r = user.pybuild("run", "--rm", "-v", "/root:/r", "busybox", "ls", "/r", root=store)
    _ok(r)
    # The bind is made (only /root itself is looked up); its contents stay the user's to not read.
    assert r.returncode != 0 and "Permission denied" in r.stderr and not r.stdout, r.stderr
