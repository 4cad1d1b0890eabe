"""The build context swapped under a running build, and bind mounts of the context.

The attack: while builds run, a thread exchanges (renameat2 RENAME_EXCHANGE, atomically) the
context directory `d` with a symlink `dlink -> <host canary dir>`, so that every path through
`d` flips between the context's directory and the host's. pybuild reads the context through
descriptors opened inside it (COPY) and mounts a descriptor of the source (RUN --mount), so each
build either succeeds with the context's own files or fails with a clear error; the canary is
never read into an image nor written.
"""
from __future__ import annotations

import ctypes
import gzip
import os
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pybuild
from tests.fixtures.trees import tree_state as _snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="RUN steps mount overlayfs and run runc: needs root")
pytestmark = [needs_root]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2_X86_64 = 316


def _renameat2():
    """renameat2(2) from libc (glibc >= 2.28), else the raw syscall (x86_64 number)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: fn(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    if os.uname().machine != "x86_64":
        pytest.skip("no renameat2 in libc and no known syscall number for this machine")
    sc = libc.syscall
    return lambda a, b: sc(ctypes.c_long(_SYS_RENAMEAT2_X86_64), _AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)


def _blobs_containing(root: Path, needle: bytes) -> list[str]:
    """Files under the store root (layer blobs decompressed) holding `needle`."""
    hits = []
    for p in root.rglob("*"):
        if p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                pass
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            try:
                import zstandard
                data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            except Exception:
                pass
        if needle in data:
            hits.append(str(p))
    return hits


def _build(root: Path, ctx: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return run_pybuild("build", "--progress", "plain", *args, ctx, root=root, timeout=timeout)


@pytest.mark.timeout(600)
def test_context_swapped_for_a_host_symlink_never_reaches_the_host(busybox_image: Path, tmp_path: Path) -> None:
    root = busybox_image
    secret = "canary-secret-" + uuid.uuid4().hex
    canary = Path("/tmp") / f"canary-dir-{uuid.uuid4().hex[:12]}"
    canary.mkdir()
    try:
        (canary / "f").write_text(secret)          # what `cat /m/f` / `COPY d` would take
        (canary / "w").write_text("untouched\n")   # what `echo pwn > /m/w` would write
        before = _snapshot(canary)
        ctx = tmp_path / "ctx"
        (ctx / "d").mkdir(parents=True)
        (ctx / "d" / "f").write_text("inside the context\n")
        (ctx / "d" / "w").write_text("context w\n")
        os.symlink(str(canary), ctx / "dlink")
        copy_df = ctx / "Dockerfile.copy"
        copy_df.write_text("FROM busybox\nCOPY d /x/\n")
        mount_df = ctx / "Dockerfile.mount"
        mount_df.write_text(
            "FROM busybox\n"
            "RUN --mount=type=bind,source=d,target=/m,rw cat /m/f > /seen; echo pwn > /m/w; ls /m > /listing; true\n")
        (ctx / "Dockerfile").write_text(copy_df.read_text() + mount_df.read_text().split("\n", 1)[1])
        exchange = _renameat2()
        a, b = os.fsencode(ctx / "d"), os.fsencode(ctx / "dlink")
        stop = threading.Event()
        swaps = [0]
        pause = [0.0]

        def swapper() -> None:
            # A tight loop makes nearly every build meet a swap (and be refused); a paced one
            # lets builds through between swaps, so the copy and the mount really run.
            while not stop.is_set():
                if exchange(a, b) == 0:
                    swaps[0] += 1
                if pause[0]:
                    stop.wait(pause[0])

        t = threading.Thread(target=swapper, daemon=True)
        t.start()
        results = []
        try:
            for i in range(16):
                pause[0] = 0.0 if i % 2 == 0 else 0.05
                df = copy_df if i % 4 < 2 else mount_df
                results.append(_build(root, ctx, "--no-cache", "-f", str(df), "-t", f"race:{i}"))
        finally:
            stop.set()
            t.join()
        if (ctx / "d").is_symlink():
            exchange(a, b)
        assert swaps[0] > 100, "the swapper did not run"
        for r in results:
            text = r.stdout + r.stderr
            assert "Traceback" not in text, text
            assert secret not in text
            if r.returncode != 0:
                # Refused, saying what and where: a source that led out or changed under the build.
                assert "build context" in text, text
        assert _snapshot(canary) == before
        assert _blobs_containing(root, secret.encode()) == []
        ok = [i for i, r in enumerate(results) if r.returncode == 0]
        # Without the swapper running the same build succeeds with the context's own files.
        r = _build(root, ctx, "--no-cache", "-t", "race:calm", "--output", f"type=local,dest={tmp_path / 'out'}")
        assert r.returncode == 0, r.stdout + r.stderr
        out = tmp_path / "out"
        assert (out / "x" / "f").read_text() == "inside the context\n"
        assert (out / "seen").read_text() == "inside the context\n"
        assert (ctx / "d" / "w").read_text() == "context w\n"       # rw mount: writes discarded
        assert _snapshot(canary) == before
        print(f"{swaps[0]} swaps, builds that succeeded under the race: {ok} of {len(results)}")
        for r in results:
            if r.returncode != 0:
                print("  refused:", r.stderr.strip().splitlines()[-1][:200])
    finally:
        import shutil
        shutil.rmtree(canary, ignore_errors=True)


@pytest.mark.timeout(300)
def test_bind_mount_of_the_context_applies_dockerignore(busybox_image: Path, tmp_path: Path) -> None:
    root = busybox_image
    ctx = tmp_path / "ctx"
    (ctx / "dir" / "sub").mkdir(parents=True)
    (ctx / "secret.txt").write_text("ignored secret\n")
    (ctx / "keep.txt").write_text("kept\n")
    (ctx / "dir" / "a").write_text("a\n")
    (ctx / "dir" / "b").write_text("b\n")
    (ctx / "dir" / "sub" / "c").write_text("c\n")
    (ctx / "logs").mkdir()
    (ctx / "logs" / "x.log").write_text("log\n")
    (ctx / "src").mkdir()
    (ctx / "src" / "keep").write_text("keep\n")
    (ctx / "src" / "drop.tmp").write_text("drop\n")
    (ctx / ".dockerignore").write_text("secret.txt\nlogs\ndir\n!dir/b\nsrc/*.tmp\n")
    os.utime(ctx / "dir", ns=(10**18, 10**18))
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=bind,target=/c ls -a /c > /root-list; ls -a /c/dir > /dir-list; "
        "stat -c %Y /c/dir > /dir-mtime; cat /c/secret.txt > /secret 2>/dev/null; true\n"
        "RUN --mount=type=bind,source=src,target=/d ls -a /d > /d-list\n"
        "RUN --mount=type=bind,target=/c,rw rm /c/keep.txt && echo new > /c/new && ls /c > /rw-list\n"
        "RUN --mount=type=bind,target=/c ls /c > /after-rw\n")
    out = tmp_path / "out"
    r = _build(root, ctx, "--output", f"type=local,dest={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "root-list").read_text().split() == [".", "..", ".dockerignore", "Dockerfile", "dir", "keep.txt",
                                                        "src"]
    assert (out / "dir-list").read_text().split() == [".", "..", "b"]     # re-included by !dir/b
    assert (out / "dir-mtime").read_text().strip() == str(10**9)          # the dir keeps its metadata
    assert (out / "secret").read_text() == ""
    assert (out / "d-list").read_text().split() == [".", "..", "keep"]
    assert (out / "rw-list").read_text().split() == ["Dockerfile", "dir", "new", "src"]
    assert (out / "after-rw").read_text().split() == ["Dockerfile", "dir", "keep.txt", "src"]
    assert (ctx / "keep.txt").read_text() == "kept\n" and not (ctx / "new").exists()
    # An ignored source is not there for the mount, as for COPY.
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=bind,source=logs,target=/l ls /l\n")
    r = _build(root, ctx)
    assert r.returncode != 0
    assert "'logs': no such file or directory in the build context" in r.stderr
    assert "excluded by .dockerignore" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.timeout(300)
def test_bind_mount_of_a_context_file_and_of_a_symlink_inside(busybox_image: Path, tmp_path: Path) -> None:
    root = busybox_image
    ctx = tmp_path / "ctx"
    (ctx / "real").mkdir(parents=True)
    (ctx / "real" / "f").write_text("real f\n")
    os.symlink("real", ctx / "alias")
    os.symlink("/etc", ctx / "out")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=bind,source=real/f,target=/one cat /one > /one-copy\n"
        "RUN --mount=type=bind,source=real/f,target=/one,rw sh -c 'echo changed > /one' && cat /one > /one-rw\n"
        "RUN --mount=type=bind,source=alias,target=/a cat /a/f > /alias-copy\n")
    out = tmp_path / "out"
    r = _build(root, ctx, "--output", f"type=local,dest={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "one-copy").read_text() == "real f\n"
    assert (out / "one-rw").read_text() == "changed\n"
    assert (ctx / "real" / "f").read_text() == "real f\n"
    assert (out / "alias-copy").read_text() == "real f\n"
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=bind,source=out,target=/o ls /o\n")
    r = _build(root, ctx)
    assert r.returncode != 0 and "leads outside the build context" in r.stderr, r.stderr
