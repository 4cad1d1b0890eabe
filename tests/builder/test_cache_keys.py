"""The cache hit/miss matrix: which changes make which steps miss, and why (real builds, runc)."""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from tests.fixtures.building import build_in

DOCKERFILE = """FROM busybox
ARG USED=1
COPY app/ /app/
RUN echo $USED > /used && cat /app/a.txt > /copy
RUN echo done > /done
"""
FILES = {"app/a.txt": "a\n", "app/b.txt": "b\n", "app/ignored.txt": "x\n", ".dockerignore": "app/ignored.txt\n"}


def _build(root: Path, ctx: Path, dockerfile: str = DOCKERFILE, files: dict | None = None, **kw) -> list[dict]:
    """Build and return the cache lookups of the metadata file (stage, step, key, cache, reason)."""
    meta = ctx.parent / f"meta-{time.monotonic_ns()}.json"
    build_in(root, ctx, dockerfile, files, metadata_file=str(meta), **kw)
    return json.loads(meta.read_text())["pybuild.cache"]


def _status(lookups: list[dict]) -> list[str]:
    return [l["cache"] for l in lookups]


def test_hit_miss_matrix(busybox_image, tmp_path):
    root, ctx = busybox_image, tmp_path / "ctx"
    first = _build(root, ctx, files=FILES)
    assert _status(first) == ["miss", "miss", "miss"]
    assert _status(_build(root, ctx)) == ["hit", "hit", "hit"]

    # mtime-only touch: same content, same key
    os.utime(ctx / "app" / "a.txt", (1, 1))
    assert _status(_build(root, ctx)) == ["hit", "hit", "hit"]

    # a .dockerignore'd file changed: not part of the build
    (ctx / "app" / "ignored.txt").write_text("changed\n")
    assert _status(_build(root, ctx)) == ["hit", "hit", "hit"]

    # content changed: the COPY misses and names the file; later steps miss (their parent changed)
    (ctx / "app" / "a.txt").write_text("a2\n")
    res = _build(root, ctx)
    assert _status(res) == ["miss", "miss", "miss"]
    assert "app/a.txt" in res[0]["reason"] and "content" in res[0]["reason"]
    assert "parent changed" in res[1]["reason"]

    # chmod: the mode is in the key
    os.chmod(ctx / "app" / "b.txt", 0o600)
    res = _build(root, ctx)
    assert _status(res)[0] == "miss"
    assert "app/b.txt (mode)" in res[0]["reason"]

    # a build arg a RUN sees changed: that RUN misses and names it; the COPY still hits
    res = _build(root, ctx, build_args={"USED": "2"})
    assert _status(res)[:2] == ["hit", "miss"]
    assert "USED" in res[1]["reason"] and "'1' -> '2'" in res[1]["reason"]
    # The step after it misses for its parent; compared with its own earlier entry, not the RUN
    # just built with the same arguments.
    assert "parent changed" in res[2]["reason"] and "command changed" not in res[2]["reason"]
    # a build arg nothing declares: everything hits
    assert _status(_build(root, ctx, build_args={"USED": "2", "UNUSED": "x"})) == ["hit", "hit", "hit"]

    # the first RUN edited: misses from there on
    edited = DOCKERFILE.replace("cat /app/a.txt > /copy", "cat /app/b.txt > /copy")
    res = _build(root, ctx, edited)
    assert _status(res) == ["hit", "miss", "miss"]
    assert "command changed" in res[1]["reason"]
    # the last RUN edited: only it misses
    res = _build(root, ctx, DOCKERFILE.replace("echo done", "echo finished"))
    assert _status(res) == ["hit", "hit", "miss"]


def test_miss_that_reproduces_content_keeps_later_hits(busybox_image, tmp_path):
    """Children are keyed on their parent's content, not on the parent's key."""
    root, ctx = busybox_image, tmp_path / "ctx"
    df = "FROM busybox\nLABEL v=1\nRUN echo one > /dev/null\nRUN echo two > /two\n"
    assert _status(_build(root, ctx, df)) == ["miss", "miss"]
    # A changed label adds no layer; an edited RUN that changes no file leaves the same content.
    res = _build(root, ctx, df.replace("v=1", "v=2").replace("echo one", "echo uno"))
    assert _status(res) == ["miss", "hit"]


def test_no_cache_filter_and_report(busybox_image, tmp_path):
    root, ctx = busybox_image, tmp_path / "ctx"
    df = ("FROM busybox AS base\nRUN echo base > /base\n"
          "FROM base AS app\nRUN echo app > /app\n")
    _build(root, ctx, df)
    res = _build(root, ctx, df, no_cache_filter=["app"])
    assert _status(res) == ["hit", "miss"]
    assert res[1]["reason"] == "--no-cache-filter app"
    report = tmp_path / "summary.md"
    out = io.StringIO()
    build_in(root, ctx, df, cache_report=str(report), progress_out=out)
    text = report.read_text()
    assert "**2/2 steps cached** (100%)" in text
    assert "| base | `RUN echo base > /base` | CACHED |" in text
    assert "CACHED" in out.getvalue()


def test_miss_reason_in_progress(busybox_image, tmp_path):
    root, ctx = busybox_image, tmp_path / "ctx"
    df = "FROM busybox\nARG V=1\nRUN echo $V > /v\n"
    _build(root, ctx, df)
    out = io.StringIO()
    build_in(root, ctx, df, build_args={"V": "2"}, progress_out=out)
    assert "cache miss: variable V changed: '1' -> '2'" in out.getvalue()


def test_key_documents_and_reasons():
    """Keys hash their inputs canonically; reasons name what differs."""
    from builder.cache.keys import content_id, diff_inputs, key_document, step_key
    a = step_key("sha256:p", "linux/amd64", "RUN", argv=["sh", "-c", "make"], env=["A=1", "B=2"])
    b = step_key("sha256:p", "linux/amd64", "RUN", env=["A=1", "B=2"], argv=["sh", "-c", "make"])
    assert a == b and a.startswith("sha256:")
    c = step_key("sha256:p", "linux/amd64", "RUN", argv=["sh", "-c", "make"], env=["A=2", "C=3"])
    assert c != a
    assert diff_inputs(key_document(a), key_document(c)) == [
        "variable A changed: '1' -> '2'", "variable B removed (was '2')", "variable C added (='3')"]
    d = step_key("sha256:q", "linux/amd64", "RUN", argv=["sh", "-c", "make"], env=["A=1", "B=2"])
    assert diff_inputs(key_document(a), key_document(d)) == ["parent changed (the previous step's result differs)"]
    # Content IDs depend on the layers and their order only.
    assert content_id(["sha256:1", "sha256:2"]) != content_id(["sha256:2", "sha256:1"])
    assert content_id([]) == content_id(())


def test_size_and_duration_parsing():
    import pytest
    from builder.cli.cache import parse_duration, parse_size
    from builder.errors import BuildError
    assert parse_size("500MB") == 500 << 20 and parse_size("2g") == 2 << 30 and parse_size("1024") == 1024
    assert parse_duration("24h") == 86400 and parse_duration("1h30m") == 5400 and parse_duration("7d") == 7 * 86400
    for bad in ("", "12x", "MB"):
        with pytest.raises(BuildError):
            parse_size(bad)
    for bad in ("", "1y", "h", "10"):
        with pytest.raises(BuildError):
            parse_duration(bad)
