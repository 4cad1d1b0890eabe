"""SECURITY.md, rootless: uid 0 of a RUN step or container is the invoking user on the host.

Whatever of the host a rootless RUN step or container reaches (a cache mount, a bind-mounted
volume), it can change only what the user could: host root's files stay as they were, although
the command runs as root with CAP_DAC_OVERRIDE and CAP_CHOWN inside. Each test plants host root's
canaries where the command can reach them and runs the attack (the same attack as root succeeds:
the control).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pybuild
from tests.fixtures.rootless import RootlessUser, store_with

pytestmark = pytest.mark.skipif(shutil.which("runc") is None, reason="runc not installed (Debian's runc)")

ATTACK = ("echo pwned > {d}/canary; chmod 666 {d}/canary; chown 0:0 {d}/userfile; "
          "echo pwned > {d}/rootdir/new; echo pwned > {d}/rootdir/inside; cat {d}/rootdir/inside; true")
CANARY = "canary of the host's root\n"


def _plant(d: Path, user: RootlessUser) -> None:
    """Host root's canary (0644) and directory (0755, a 0600 file inside), and a file of the
    user's, in the user's directory ``d``."""
    (d / "canary").write_text(CANARY)
    os.chmod(d / "canary", 0o644)
    (d / "rootdir").mkdir(mode=0o755)
    (d / "rootdir" / "inside").write_text(CANARY)
    os.chmod(d / "rootdir" / "inside", 0o600)
    (d / "userfile").write_text("the user's\n")
    os.chown(d / "userfile", user.uid, user.gid)


def _intact(d: Path, user: RootlessUser) -> None:
    assert (d / "canary").read_text() == CANARY
    assert (d / "canary").stat().st_mode & 0o777 == 0o644
    assert (d / "rootdir" / "inside").read_text() == CANARY
    assert not (d / "rootdir" / "new").exists()
    assert (d / "userfile").stat().st_uid == user.uid


def test_rootless_run_step_cannot_write_host_roots_files_in_its_cache_mount(user, scratch, _busybox_layout, tmp_path):
    """A RUN step (root inside, CAP_DAC_OVERRIDE) on a cache mount where host root planted
    files: it cannot overwrite, chmod or read them, nor chown the user's file. As root, the
    same step overwrites the canary (control)."""
    store = store_with(_busybox_layout, scratch / "store", user)
    ctx = scratch / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=cache,id=canary,target=/c "
                                    f"sh -c '{ATTACK.format(d='/c')}; id -u > /c/ran'\n")
    user.give(ctx)
    user.pybuild("build", "-q", "--no-cache", ctx, root=store, check_rc=0)     # makes the cache dir
    (cache,) = [p for p in (store / "cachemounts").iterdir() if p.is_dir()]
    for p in list(cache.iterdir()):
        p.unlink()
    _plant(cache, user)
    r = user.pybuild("build", "--progress", "plain", "--no-cache", ctx, root=store, check_rc=0)
    assert (cache / "ran").read_text().strip() == "0"        # it ran, as root in its namespace
    assert "Permission denied" in r.stderr
    _intact(cache, user)

    # Control: the same step as root does overwrite a root-owned canary in its cache mount.
    rstore = store_with(_busybox_layout, tmp_path / "rootstore")
    run_pybuild("build", "-q", "--no-cache", ctx, root=rstore, check_rc=0)
    (rcache,) = [p for p in (rstore / "cachemounts").iterdir() if p.is_dir()]
    for p in list(rcache.iterdir()):
        p.unlink()
    _plant(rcache, user)
    run_pybuild("build", "-q", "--no-cache", ctx, root=rstore, check_rc=0)
    assert (rcache / "canary").read_text() == "pwned\n"


def test_rootless_container_cannot_write_host_roots_files_in_a_volume(user, scratch, _busybox_layout):
    """`pybuild run -v DIR:/h` as the user, the container as root: host root's files in DIR
    stay unwritten and unread, the user's file keeps its owner."""
    store = store_with(_busybox_layout, scratch / "store", user)
    vol = scratch / "vol"
    vol.mkdir()
    os.chown(vol, user.uid, user.gid)
    _plant(vol, user)
    r = user.pybuild("run", "--rm", "-v", f"{vol}:/h", "busybox", "sh", "-c",
                     ATTACK.format(d="/h") + "; id -u", root=store, check_rc=0)
    assert r.stdout.split()[-1] == "0" and "pwned" not in r.stdout
    _intact(vol, user)
