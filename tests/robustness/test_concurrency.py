"""Concurrent use of one root: builds, pulls, imports, tagging and gc at once, in threads and in
separate pybuild processes. Afterwards no tag is lost, `check_root` finds nothing broken, and
nothing deadlocked (every wait has a timeout; pytest-timeout guards the rest).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builder.storecheck import check_root
from registry.store import Store
from tests.fixtures.cli import run_pybuild, start_pybuild

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds mount overlayfs and run runc: needs root")


def _run_threads(targets: list, timeout: float = 120.0) -> None:
    errors: list[BaseException] = []

    def wrap(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:   # noqa: BLE001 - reported to the test below
                errors.append(exc)
        return run
    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread is still running: deadlock?"
    if errors:
        raise errors[0]


@pytest.mark.timeout(180)
def test_threads_tag_import_and_gc_on_one_root(busybox_image: Path, busybox_rootfs: Path) -> None:
    """8 threads tag 25 names each while 2 import images and one runs gc in a loop: every tag
    is there afterwards and the store is consistent."""
    from registry.imports import import_image
    root = busybox_image
    base = Store(root).resolve("busybox:latest")

    def tagger(k: int):  # type: ignore[no-untyped-def]
        def run() -> None:
            s = Store(root)
            for i in range(25):
                s.tag(f"t{k}/img:{i}", base)
        return run

    def importer(k: int):  # type: ignore[no-untyped-def]
        def run() -> None:
            s = Store(root)
            for i in range(2):
                import_image(s, busybox_rootfs, f"imp{k}:{i}", message=f"{k}-{i}")
        return run

    def collector() -> None:
        s = Store(root)
        for _ in range(15):
            s.gc()

    _run_threads([tagger(k) for k in range(8)] + [importer(k) for k in range(2)] + [collector])
    store = Store(root)
    names = {r.name for r in store.list_images()}
    missing = [f"t{k}/img:{i}" for k in range(8) for i in range(25) if f"t{k}/img:{i}" not in names]
    assert not missing, f"lost tags: {missing[:5]}"
    for k in range(2):
        for i in range(2):
            store.image(f"imp{k}:{i}")       # manifest, config and layers all present
    assert check_root(root) == []


def _pybuild(root: Path, *args: str) -> subprocess.Popen:
    return start_pybuild(*args, root=root)


@needs_root
@pytest.mark.timeout(300)
def test_processes_build_pull_import_and_prune_at_once(busybox_image: Path, busybox_rootfs: Path, registry,
                                                       tmp_path: Path) -> None:
    """Three builds, three pulls, two imports and a gc/rmi loop as separate pybuild processes on
    one root at the same time: all succeed, every tag is there, the store is consistent, and
    a rebuild afterwards is served from the cache."""
    root = busybox_image
    reg = registry.host
    setup = run_pybuild("push", "-q", "busybox:latest", f"{reg}/conc/base:1", root=root)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    for k in range(3):   # the pulled images must not be in the store already
        r = run_pybuild("copy", f"{reg}/conc/base:1", f"{reg}/conc/p{k}:1")
        assert r.returncode == 0, r.stdout + r.stderr
    contexts = []
    for k in range(3):
        ctx = tmp_path / f"ctx{k}"
        ctx.mkdir()
        (ctx / "f").write_text(f"context {k}\n" * 1000)
        (ctx / "Dockerfile").write_text(f"FROM busybox\nCOPY f /f\nRUN wc -l /f > /count{k}\n")
        contexts.append(ctx)
    throwaway = " ".join(f"junk{i}:1" for i in range(5))
    prune_loop = (f"for i in 1 2 3 4; do for t in {throwaway}; do {sys.executable} -m builder --root {root} "
                  f"import {busybox_rootfs} $t >/dev/null || exit 1; done; "
                  f"{sys.executable} -m builder --root {root} rmi -q {throwaway} || exit 1; "
                  f"{sys.executable} -m builder --root {root} store gc || exit 1; done")
    procs = {f"build{k}": _pybuild(root, "build", "-q", "-t", f"built{k}:1", str(contexts[k])) for k in range(3)}
    procs.update({f"pull{k}": _pybuild(root, "pull", "-q", f"{reg}/conc/p{k}:1") for k in range(3)})
    procs.update({f"import{k}": _pybuild(root, "import", str(busybox_rootfs), f"cimp{k}:1") for k in range(2)})
    procs["prune"] = subprocess.Popen(["sh", "-c", prune_loop], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)
    failed = {}
    for name, p in procs.items():
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            failed[name] = "timed out (deadlock?): " + out[-1500:]
            continue
        if p.returncode != 0:
            failed[name] = out[-1500:]
    assert not failed, failed
    store = Store(root)
    for name in [f"built{k}:1" for k in range(3)] + [f"{reg}/conc/p{k}:1" for k in range(3)] + \
            [f"cimp{k}:1" for k in range(2)] + ["busybox:latest"]:
        store.image(name)
    assert check_root(root) == []
    # The cache survived the concurrent gc: a rebuild runs no step again.
    r = run_pybuild("build", "--progress", "plain", "-t", "built0:1", contexts[0], root=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (r.stdout + r.stderr).count("CACHED") >= 2, r.stdout + r.stderr     # COPY and RUN
