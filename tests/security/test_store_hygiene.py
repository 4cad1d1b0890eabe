"""Store hygiene: the store is pybuild's alone, and `store verify --repair` leaves containers be.

- Every directory pybuild makes in a root is 0700, and opening a store tightens an older one,
  so a setuid-root binary or a device node in an extracted layer
  (`<root>/layers/<id>/usr/local/bin/helper`) cannot be reached by another local user: the
  attack is tried as uid 65534 and must fail with EACCES.
- `store verify --repair` keeps the snapshots (writable layers) and records of containers,
  running and exited, which still work afterwards (`logs`, `diff`, `stop`, `rm`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from builder.runtime.snapshot import LayerDirs
from builder.storecheck import check_root
from registry.store import ROOT_SUBDIRS, Store
from tests.fixtures.cli import run_pybuild
from tests.fixtures.trees import tree_digest as _digest_tree

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setuid files, device nodes, setpriv)")
NOBODY = 65534


def _as_nobody(code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` as uid/gid 65534 with no supplementary groups."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not found (util-linux)")
    return subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30)


def _probe(paths: list[Path]) -> dict[str, str]:
    """What uid 65534 gets for stat / open / exec of each path: "ok" or the errno name."""
    code = (
        "import errno, json, os, sys\n"
        "out = {}\n"
        f"for p in {[str(p) for p in paths]!r}:\n"
        "    res = []\n"
        "    for op in ('stat', 'open', 'exec'):\n"
        "        try:\n"
        "            if op == 'stat': os.stat(p)\n"
        "            elif op == 'open': os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK))\n"
        "            elif not os.access(p, os.X_OK): raise PermissionError(errno.EACCES, 'no exec')\n"
        "            res.append(op + ':ok')\n"
        "        except OSError as e:\n"
        "            res.append(op + ':' + errno.errorcode[e.errno])\n"
        "    out[p] = ' '.join(res)\n"
        "print(json.dumps(out))\n")
    r = _as_nobody(code)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _hostile_layer() -> tuple[bytes, str]:
    """A layer with a setuid-root helper and world-writable device nodes; (tar, diff_id)."""
    buf = io.BytesIO()
    helper = Path("/bin/busybox").read_bytes() if Path("/bin/busybox").exists() else b"#!/bin/sh\nid\n"
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("usr", "usr/local", "usr/local/bin", "dev"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        ti = tarfile.TarInfo("usr/local/bin/helper")
        ti.mode, ti.uid, ti.gid, ti.size = 0o4755, 0, 0, len(helper)
        tar.addfile(ti, io.BytesIO(helper))
        for name, kind, major, minor in (("dev/mem", tarfile.CHRTYPE, 1, 1), ("dev/sda", tarfile.BLKTYPE, 8, 0)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.devmajor, ti.devminor = kind, 0o666, major, minor
            tar.addfile(ti)
    data = buf.getvalue()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def open_parent():
    """A directory every user may traverse, as a root's parent often is (/var/lib, a home
    directory): pytest's own tmp_path is 0700, which would hide the store anyway."""
    d = Path(tempfile.mkdtemp(prefix="pybuild-hygiene-"))
    os.chmod(d, 0o755)
    yield d
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        mp = line.split()[4]
        if mp.startswith(str(d) + "/"):
            subprocess.run(["umount", "-l", mp], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_setuid_files_and_devices_of_layers_are_out_of_other_users_reach(open_parent: Path) -> None:
    root = open_parent / "root"
    Store(root)
    data, diff_id = _hostile_layer()
    layer = LayerDirs(root).ensure(diff_id, lambda: io.BytesIO(data))
    helper = layer / "usr/local/bin/helper"
    mem, sda = layer / "dev/mem", layer / "dev/sda"
    st = os.lstat(helper)
    assert st.st_uid == 0 and st.st_mode & stat.S_ISUID              # extracted as the image says
    assert stat.S_ISCHR(os.lstat(mem).st_mode) and stat.S_ISBLK(os.lstat(sda).st_mode)

    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for d in ("images", "layers", "l"):
        if (root / d).exists():
            assert stat.S_IMODE(os.stat(root / d).st_mode) == 0o700, d
    got = _probe([helper, mem, sda, root])
    for p in (helper, mem, sda):
        assert got[str(p)] == "stat:EACCES open:EACCES exec:EACCES", (p, got)
    # The root itself can be seen, but neither listed nor entered.
    assert got[str(root)] == "stat:ok open:EACCES exec:EACCES", got

    # Control: with the modes pybuild used to give (0755), the same user reaches all three,
    # so the probe above really tests the modes.
    for d in (root, root / "layers"):
        os.chmod(d, 0o755)
    got = _probe([helper, mem])
    assert got[str(helper)] == "stat:ok open:ok exec:ok", got
    assert got[str(mem)].startswith("stat:ok"), got

    # Opening the store again (any pybuild command does) takes those permissions back.
    Store(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "layers").st_mode) == 0o700
    assert _probe([helper])[str(helper)] == "stat:EACCES open:EACCES exec:EACCES"


@needs_root
def test_existing_world_readable_store_is_tightened_on_open(open_parent: Path) -> None:
    root = open_parent / "old"
    for d in ROOT_SUBDIRS:
        (root / d).mkdir(parents=True)
    (root / "keep-me").mkdir()                      # not ours: left as it is
    for d in (root, *[root / s for s in ROOT_SUBDIRS], root / "keep-me"):
        os.chmod(d, 0o755)
    Store(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for d in ROOT_SUBDIRS:
        assert stat.S_IMODE(os.stat(root / d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(root / "keep-me").st_mode) == 0o755
    for sub in ("blobs", "blobs/sha256", "ingest", "roots", "leases"):
        assert stat.S_IMODE(os.stat(root / "images" / sub).st_mode) == 0o700, sub


def _pybuild(root: Path, *args: str, check_rc: int | None = 0, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_pybuild(*args, root=root, check_rc=check_rc, timeout=timeout)


def _modes_under(root: Path) -> dict[str, int]:
    """Mode of the root and of the known directories directly under it."""
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for d in ROOT_SUBDIRS:
        if (root / d).is_dir():
            out[d] = stat.S_IMODE(os.stat(root / d).st_mode)
    return out


@needs_root
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_build_and_run_make_only_private_directories(busybox_image: Path, tmp_path: Path) -> None:
    root = busybox_image
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/var/cache/x cp /bin/busybox /helper && chmod 4755 /helper\n")
    _pybuild(root, "build", "-q", "-t", "suid:1", str(ctx))
    _pybuild(root, "run", "--name", "c1", "suid:1", "true")
    modes = _modes_under(root)
    assert set(modes) >= {".", "images", "layers", "snapshots", "tmp", "cachemounts", "containers"}, modes
    bad = {d: oct(m) for d, m in modes.items() if m != 0o700 and d not in ("containers", "cache")}
    assert bad == {}, bad
    for p in (root / "snapshots").iterdir():             # the container's snapshot
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700, p
    helpers = list((root / "layers").glob("*/helper"))
    assert helpers and os.stat(helpers[0]).st_mode & stat.S_ISUID


# --- store verify --repair and containers -------------------------------------------------------

def _container(root: Path, name: str) -> tuple[str, dict]:
    for cfg in (root / "containers").glob("*/config.json"):
        doc = json.loads(cfg.read_text())
        if doc.get("name") == name:
            return doc["id"], doc
    raise AssertionError(f"no container {name}")


@needs_root
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_repair_never_touches_containers(busybox_image: Path) -> None:
    root = busybox_image
    try:
        _repair_with_containers(root)
    finally:
        _pybuild(root, "rm", "-f", "live", "done", check_rc=None)     # never leave a container running


def _repair_with_containers(root: Path) -> None:
    cid_live = _pybuild(root, "run", "-d", "--name", "live", "busybox", "sh", "-c",
                        "echo live-data > /live; echo started; exec sleep 3600").stdout.strip()
    deadline = time.monotonic() + 30
    while "started" not in _pybuild(root, "logs", "live").stdout:
        assert time.monotonic() < deadline, "the detached container never started"
        time.sleep(0.1)
    _pybuild(root, "run", "--name", "done", "busybox", "sh", "-c", "echo done-data > /done; echo out")
    _, live = _container(root, "live")
    cid_done, done = _container(root, "done")
    snaps = root / "snapshots"
    live_upper, done_upper = snaps / live["snapshot"] / "upper", snaps / done["snapshot"] / "upper"
    assert (live_upper / "live").read_text() == "live-data\n"
    assert (done_upper / "done").read_text() == "done-data\n"
    before = {c: _digest_tree(root / "containers" / c) for c in (cid_live, cid_done)}
    before_uppers = (_digest_tree(live_upper), _digest_tree(done_upper))
    live_merged = str((snaps / live["snapshot"] / "merged").resolve())
    assert live_merged in Path("/proc/self/mountinfo").read_text()
    # Debris that repair must still clear: a snapshot no container owns.
    stray = snaps / "0123456789ab"
    (stray / "upper").mkdir(parents=True)
    old = time.time() - 3600
    os.utime(stray, (old, old))

    # Neither reported as a leftover nor removed.
    found = [p.message for p in check_root(root)]
    assert not [m for m in found if live["snapshot"] in m or done["snapshot"] in m], found
    r = _pybuild(root, "store", "verify", "--repair")
    assert not stray.exists(), r.stdout + r.stderr
    assert (_digest_tree(live_upper), _digest_tree(done_upper)) == before_uppers
    assert {c: _digest_tree(root / "containers" / c) for c in (cid_live, cid_done)} == before
    assert live_merged in Path("/proc/self/mountinfo").read_text()      # still mounted: still running

    # And they still work.
    assert _pybuild(root, "logs", "done").stdout == "out\n"
    assert "/done" in _pybuild(root, "diff", "done").stdout
    assert "Up " in _pybuild(root, "ps").stdout
    _pybuild(root, "stop", "-t", "1", "live")
    assert "/live" in _pybuild(root, "diff", "live").stdout
    _pybuild(root, "rm", "live", "done")
    assert list(snaps.iterdir()) == []
    assert check_root(root) == []


@needs_root
def test_repair_leaves_other_users_entries_in_dev_shm_alone(tmp_path: Path) -> None:
    """Another local user plants, under the predictable name of a store's in-memory directories
    (/dev/shm/pybuild-<hash of the root>-*), a symlink to a mount point and a directory of
    theirs. `store verify --repair` as root unmounts nothing (before the fix it unmounted the
    target: `-> /` would have meant `umount -l /`) and removes neither; it still removes a
    real leftover directory of its own (the control)."""
    from builder.engine.executor import MEMORY_TMP, memory_dir_prefix
    root = tmp_path / "store"
    run_pybuild("images", root=root, check_rc=0)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "pybuild-test-canary", str(mnt)], check=True)
    prefix = MEMORY_TMP / memory_dir_prefix(root)
    link, theirs, ours = Path(f"{prefix}link"), Path(f"{prefix}theirs"), Path(f"{prefix}ours")
    try:
        (mnt / "f").write_text("canary\n")
        os.symlink(mnt, link)
        os.lchown(link, NOBODY, NOBODY)
        theirs.mkdir()
        (theirs / "f").write_text("theirs\n")
        os.chown(theirs / "f", NOBODY, NOBODY)
        os.chown(theirs, NOBODY, NOBODY)
        ours.mkdir(mode=0o700)
        r = run_pybuild("store", "verify", "--repair", root=root)
        assert "Traceback" not in r.stderr
        assert (mnt / "f").read_text() == "canary\n"
        assert os.path.ismount(mnt)
        assert link.is_symlink() and (theirs / "f").read_text() == "theirs\n"
        assert not ours.exists(), r.stdout + r.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        for p in (link, ours):
            if p.is_symlink() or p.exists():
                p.unlink() if p.is_symlink() else shutil.rmtree(p)
        shutil.rmtree(theirs, ignore_errors=True)
