"""Crash safety: pybuild killed with SIGKILL at random points never damages the store.

The campaign (tests/robustness/crash_harness.py) runs import, pull, push, build, cache export
(`--cache-to`), `store gc`, `rmi` and `cache prune`
against one root and a real registry:2, SIGKILLs each run at a random moment (over 200 kills in
all), checks the root after every kill with `check_root` (the code behind `pybuild store
verify`), repairs every few kills with `repair_root` (`pybuild store verify --repair`) and then
requires the same operation to succeed. The first tests pin down verify/repair themselves.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from builder.cache.records import BuildCache, CacheRecord, gc_roots
from builder.cli import main
from builder.storecheck import check_root, repair_root
from registry.store import Store
from tests.robustness.crash_harness import CrashCampaign, preload, run_pybuild, unmount_under
from tests.fixtures.building import build_in

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds mount overlayfs and run runc: needs root")


# -- verify / repair ----------------------------------------------------------------------------

def test_verify_clean_store(busybox_image: Path, capsys) -> None:
    assert check_root(busybox_image) == []
    assert main(["--root", str(busybox_image), "store", "verify"]) == 0
    assert "intact" in capsys.readouterr().out


def test_repair_removes_corrupt_blob_and_dangling_tag(busybox_image: Path, capsys) -> None:
    store = Store(busybox_image)
    desc = store.resolve("busybox:latest")
    store.tag("other:1", desc)
    manifest = store.get_manifest(desc.digest)
    layer = store.blob_path(manifest.layers[0].digest)
    os.chmod(layer, 0o644)
    with open(layer, "r+b") as f:          # flip one byte of the layer blob
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0xFF]))
    os.unlink(store.blob_path(desc.digest))      # and lose the manifest
    problems = check_root(busybox_image)
    text = "\n".join(p.message for p in problems)
    assert all(p.kind == "broken" for p in problems)
    assert f"blob {manifest.layers[0].digest} is corrupt" in text
    assert "tag busybox:latest: manifest" in text and "is missing" in text
    assert main(["--root", str(busybox_image), "store", "verify"]) == 1
    assert main(["--root", str(busybox_image), "store", "verify", "--repair"]) == 0
    out = capsys.readouterr().out
    assert "removed: corrupt blob" in out and "removed: tag busybox:latest (manifest missing)" in out
    assert check_root(busybox_image) == []
    assert store.read_index().manifests == [] and list(store.blobs()) == []


def test_repair_clears_leftovers_of_dead_processes(busybox_image: Path) -> None:
    store = Store(busybox_image)
    (store.layout / "ingest" / "0123.tmp").write_bytes(b"half a blob")
    (busybox_image / "layers" / ".tmp-abc" / "bin").mkdir(parents=True)
    (busybox_image / "snapshots" / "deadbeef" / "upper").mkdir(parents=True)
    (busybox_image / "cache").mkdir()
    (busybox_image / "cache" / ".tmp-x").write_text("{")
    (busybox_image / "cache" / ("a" * 64 + ".json")).write_text("not json")
    (busybox_image / "cache" / ("b" * 64 + ".json")).write_text(
        '{"v": 2, "layer": {"digest": "sha256:' + "c" * 64 + '", "size": 1, "mediaType": "x", "diff_id": "sha256:'
        + "d" * 64 + '"}, "config": {}}')
    store.add_root("build-cache", ["sha256:" + "e" * 64])
    kinds = sorted(p.kind for p in check_root(busybox_image))
    assert kinds == ["broken"] + ["leftover"] * 6
    result = repair_root(busybox_image)
    assert result.remaining == [] and len(result.removed) == 7
    assert store.resolve("busybox:latest")     # nothing good was lost


def test_leftovers_of_live_processes_are_kept(busybox_image: Path) -> None:
    store = Store(busybox_image)
    snap = busybox_image / "snapshots" / "live"
    snap.mkdir(parents=True)
    with store.lease():       # a running build in this process
        assert repair_root(busybox_image).remaining == []
        assert snap.is_dir()
    assert repair_root(busybox_image).remaining == [] and not snap.exists()


@needs_root
@pytest.mark.timeout(180)
def test_gc_keeps_blobs_of_cached_steps_of_a_failed_build(busybox_image: Path, tmp_path: Path) -> None:
    """A build that fails after caching an ADD step: `store gc` must keep that step's layer
    (its cache record still names it), so verify stays clean and the retry hits the cache."""
    from builder.errors import BuildError
    df = "FROM busybox\nCOPY f /f\nRUN exit 3\n"
    with pytest.raises(BuildError):
        build_in(busybox_image, tmp_path / "ctx", df, {"f": "data"})
    assert main(["--root", str(busybox_image), "store", "gc"]) == 0
    assert check_root(busybox_image) == []


# -- the kill-at-random campaign -----------------------------------------------------------------

@pytest.fixture
def crash_root(busybox_image: Path):
    yield busybox_image
    unmount_under(busybox_image)


@needs_root
@pytest.mark.timeout(400)
def test_kill_at_random_points(crash_root: Path, registry, busybox_rootfs: Path, tmp_path: Path) -> None:
    preload()
    root = crash_root
    r = str(root)
    seed = int(os.environ.get("PYBUILD_CRASH_SEED", random.randrange(1 << 30)))
    camp = CrashCampaign(root, random.Random(seed))
    store = Store(root)
    reg = registry.host
    kill_scale = float(os.environ.get("PYBUILD_CRASH_SCALE", "1"))
    rounds = lambda n: max(1, int(n * kill_scale))   # noqa: E731

    # import: a directory tree becomes a gzip layer, config, manifest and tag.
    camp.hammer("import", lambda i: ["--root", r, "import", str(busybox_rootfs), f"imp:{i + 1}"], rounds(55),
                then=lambda i: store.resolve(f"imp:{i + 1}"))

    # push: every round to a new repository, so blobs are uploaded again (no mount, no skip).
    assert run_pybuild(["--root", r, "push", "busybox:latest", f"{reg}/crash/base:1"]).returncode == 0
    camp.hammer("push", lambda i: ["--root", r, "push", "busybox:latest", f"{reg}/crash/push{i + 1}:v"],
                rounds(30))

    # pull: drop the local copy first so every pull downloads all blobs.
    def pull_argv(i: int) -> list[str]:
        for rec in store.list_images():
            if rec.name.startswith(f"{reg}/crash/base"):
                store.untag(rec.name)
        store.gc(extra_roots=gc_roots(root))
        return ["--root", r, "pull", f"{reg}/crash/base:1"]
    camp.hammer("pull", pull_argv, rounds(25), then=lambda i: store.resolve(f"{reg}/crash/base:1"))

    # build: new content every round, so COPY and RUN really run (layer commit, cache records).
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY f /f\nRUN cat /f > /g && echo done >> /g\n")

    def build_argv(i: int) -> list[str]:
        (ctx / "f").write_text(f"round {i} {random.random()}\n" * 200)
        return ["--root", r, "build", "-q", "--progress", "quiet", "-t", "built:latest", str(ctx)]
    camp.hammer("build", build_argv, rounds(30), then=lambda i: store.resolve("built:latest"))

    # cache export: the build above is cached; exporting its cache is the work.
    export = tmp_path / "cache-export"
    camp.hammer("cache-export", lambda i: ["--root", r, "build", "-q", "--progress", "quiet", "-t", "built:latest",
                                           "--cache-to", f"type=local,dest={export}/{i + 1}", str(ctx)],
                rounds(20), then=lambda i: (export / str(i + 1) / "index.json").read_bytes())

    # store gc, rmi and cache prune, with something to remove every round.
    def gc_argv(i: int) -> list[str]:
        for k in range(5):
            store.put_blob(os.urandom(2000))
        return ["--root", r, "store", "gc"]
    camp.hammer("gc", gc_argv, rounds(20))

    def rmi_argv(i: int) -> list[str]:
        desc = store.resolve("imp:0") if i < 0 else store.resolve("busybox:latest")
        for k in range(3):
            store.tag(f"victim{k}:{i + 1}", desc)
        store.put_blob(os.urandom(5000))
        return ["--root", r, "rmi", *[f"victim{k}:{i + 1}" for k in range(3)]]
    camp.hammer("rmi", rmi_argv, rounds(20))

    def prune_argv(i: int) -> list[str]:
        cache = BuildCache(root)
        for k in range(3):
            blob = store.put_blob(os.urandom(3000), "application/vnd.oci.image.layer.v1.tar+gzip")
            cache.put(CacheRecord(key="sha256:" + os.urandom(32).hex(),
                                  layer={**blob.to_dict(), "diff_id": "sha256:" + os.urandom(32).hex()},
                                  config={"history": {"created_by": "test"}}))
        return ["--root", r, "cache", "prune", "--all"]
    camp.hammer("cache-prune", prune_argv, rounds(20))

    print("\n".join(camp.log))
    print(f"crash campaign (seed {seed}): {camp.kills} kills, {camp.finished} runs finished before their kill")
    assert camp.kills >= rounds(210)
    # The images the campaign relied on are all still there and intact.
    for name in ("busybox:latest", "built:latest", f"{reg}/crash/base:1"):
        store.resolve(name)
    assert check_root(root) == []
    assert main(["--root", r, "store", "verify"]) == 0
    shutil.rmtree(root / "snapshots", ignore_errors=True)
