"""`pybuild cache ls|du|prune|explain`, and two builds at once on one root."""
from __future__ import annotations

import json
import os
import subprocess

from builder.cache.records import BuildCache, entries
from builder.cli import main
from builder.storecheck import check_root
from registry.store import Store
from tests.fixtures.building import build_in, write_context
from tests.fixtures.cli import run_pybuild, start_pybuild

DOCKERFILE = "FROM busybox\nARG V=1\nCOPY app/ /app/\nRUN echo $V > /v\nRUN head -c 20000 /dev/urandom > /r\n"
FILES = {"app/a.txt": "a\n", "app/b.txt": "b\n"}


def _cli(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_explain_names_changes(busybox_image, tmp_path, capsys):
    root, ctx = busybox_image, tmp_path / "ctx"
    build_in(root, ctx, DOCKERFILE, FILES)
    out = _cli(capsys, "--root", str(root), "cache", "explain", str(ctx))
    assert "3 of 3 steps would come from the cache" in out
    (ctx / "app" / "b.txt").write_text("changed\n")
    (ctx / "app" / "new.txt").write_text("new\n")
    out = _cli(capsys, "--root", str(root), "cache", "explain", "--build-arg", "V=2", str(ctx))
    assert "files changed: app/b.txt (content); added: app/new.txt" in out
    assert "variable V changed: '1' -> '2'" in out
    assert "0 of 3 steps would come from the cache" in out
    # An edited instruction is named with its old and new text; explaining ran nothing.
    write_context(ctx, DOCKERFILE.replace("echo $V", "echo v=$V"))
    (ctx / "app" / "b.txt").write_text("b\n")
    (ctx / "app" / "new.txt").unlink()
    res = json.loads(_cli(capsys, "--root", str(root), "cache", "explain", "--format", "json", str(ctx)))
    assert [r["cache"] for r in res] == ["hit", "miss", "miss"]
    assert any("command changed" in r and "echo v=$V" in r for r in res[1]["reasons"])
    assert "parent changed" in res[2]["reasons"][0]
    assert len(BuildCache(root).records()) == 3


def test_ls_du_and_prune_keep_image_blobs(busybox_image, tmp_path, capsys):
    root, ctx = busybox_image, tmp_path / "ctx"
    kept = build_in(root, ctx, DOCKERFILE, FILES, tags=["keep:1"])
    build_in(root, ctx, DOCKERFILE)                     # hits: counted
    dangling = build_in(root, ctx, DOCKERFILE, build_args={"V": "2"})  # untagged: kept as <none>
    _cli(capsys, "--root", str(root), "rmi", dangling.image_id)       # ... until removed: then reclaimable
    ls = json.loads(_cli(capsys, "--root", str(root), "cache", "ls", "--format", "json"))
    assert len(ls) == 5
    by_step = {(e["step"], e["referenced_by_image"]): e for e in ls}
    assert by_step[("COPY app/ /app/", True)]["hits"] == 2
    assert {"key", "step", "stage", "size", "created", "last_used", "hits"} <= set(ls[0])
    table = _cli(capsys, "--root", str(root), "cache", "ls")
    assert table.splitlines()[0].split() == ["KEY", "STAGE", "STEP", "SIZE", "CREATED", "LAST", "USED", "HITS"]
    du = json.loads(_cli(capsys, "--root", str(root), "cache", "du", "--format", "json"))
    assert du["entries"] == 5 and 0 < du["reclaimable"] < du["total"]

    # Recent entries survive an age filter.
    out = _cli(capsys, "--root", str(root), "cache", "prune", "--filter", "until=1h")
    assert "Removed 0 cache entries" in out
    # Default prune: the untagged build's entries go, the image's stay.
    out = _cli(capsys, "--root", str(root), "cache", "prune")
    assert "Removed 2 cache entries, kept 3" in out
    store = Store(root)
    for l in kept.layers:
        assert store.has_blob(l.descriptor.digest)
    assert json.loads(_cli(capsys, "--root", str(root), "cache", "du", "--format", "json"))["reclaimable"] == 0
    # --all drops every entry, never the image's blobs; the store stays consistent.
    out = _cli(capsys, "--root", str(root), "cache", "prune", "--all")
    assert "Removed 3 cache entries, kept 0" in out
    for l in kept.layers:
        assert store.has_blob(l.descriptor.digest)
    assert [p for p in check_root(root)] == []
    assert entries(root, store) == []
    assert not list((root / "cache" / "builds").glob("*.json"))     # no-op rebuild summaries too


def test_prune_keep_storage_removes_oldest_first(busybox_image, tmp_path, capsys):
    root, ctx = busybox_image, tmp_path / "ctx"
    for v in ("old", "new"):        # untagged builds are <none> images; removed, their entries are prunable
        res = build_in(root, ctx, DOCKERFILE, FILES, build_args={"V": v})
        _cli(capsys, "--root", str(root), "rmi", res.image_id)
    before = {e.record.key: e for e in entries(root, Store(root))}
    newest_big = max((e for e in before.values() if e.record.size > 15000), key=lambda e: e.last_used)
    _cli(capsys, "--root", str(root), "cache", "prune", "--keep-storage", "25kB")
    after = {e.record.key for e in entries(root, Store(root))}
    assert newest_big.record.key in after       # the most recently used big layer fits in 25 kB
    assert len(after) < len(before)


def test_concurrent_builds_on_one_root(busybox_image, tmp_path):
    root = busybox_image
    procs = []
    for i in range(3):
        ctx = write_context(tmp_path / f"ctx{i}", DOCKERFILE, {**FILES, "app/i.txt": f"{i % 2}\n"})
        procs.append(start_pybuild("build", "-q", "-t", f"c{i}:latest", ctx, root=root, stderr=subprocess.PIPE))
    # A prune racing the builds waits for them (they hold the cache lock shared).
    prune = run_pybuild("cache", "prune", "--all", root=root, timeout=300)
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert prune.returncode == 0, prune.stderr
    assert check_root(root) == []
    store = Store(root)
    for rec in BuildCache(root).records():
        assert rec.layer is None or store.has_blob(rec.layer["digest"])
    for i in range(3):
        store.resolve(f"c{i}:latest")
    os.sync()
    # The cache works after the race: building ctx0 again hits everything that survived.
    res = build_in(root, tmp_path / "ctx0", DOCKERFILE)
    assert res.image_id
