"""Remote cache round trips: --cache-to / --cache-from through a real registry:2 and a local
directory, into a fresh store root that gets its hits remotely and fetches only needed layers."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from builder.cache.remote import ARTIFACT_TYPE, INDEX_MEDIA_TYPE, parse_cache_spec
from builder.errors import BuildError
from registry.store import Store
from tests.fixtures.building import build_in

# The builder stage's layer is needed only by the COPY --from step; once that step hits,
# a fresh root has no reason to download it.
DOCKERFILE = """FROM busybox AS builder
RUN head -c 300000 /dev/urandom > /big && echo tool > /out
FROM busybox
COPY --from=builder /out /out
RUN cat /out > /copied
"""


def _fresh_root(tmp_path: Path, layout: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    shutil.copytree(layout, root / "images", ignore=shutil.ignore_patterns(".lock", ".gc.lock", "leases"))
    (root / "images" / "leases").mkdir(exist_ok=True)
    return root


def _lookups(meta: Path) -> list[str]:
    return [l["cache"] for l in json.loads(meta.read_text())["pybuild.cache"]]


def _round_trip(tmp_path, busybox_image, _busybox_layout, cache_to: str, cache_from: str):
    first = build_in(busybox_image, tmp_path / "ctx", DOCKERFILE, cache_to=[cache_to])
    fresh = _fresh_root(tmp_path, _busybox_layout, "fresh")
    meta = tmp_path / "meta.json"
    second = build_in(fresh, tmp_path / "ctx", DOCKERFILE, cache_from=[cache_from], metadata_file=str(meta))
    assert _lookups(meta) == ["remote", "remote", "remote"]
    # Same layers as the first build, and every layer of the final image is now local.
    assert [l.diff_id for l in second.layers] == [l.diff_id for l in first.layers]
    store = Store(fresh)
    for l in second.layers:
        assert store.has_blob(l.descriptor.digest)
    return first, second, fresh, store


def test_registry_round_trip_fresh_root_lazy(busybox_image, _busybox_layout, registry, tmp_path):
    ref = f"{registry.host}/cache/app-{uuid.uuid4().hex[:8]}:buildcache"
    first, second, fresh, store = _round_trip(tmp_path, busybox_image, _busybox_layout,
                                              f"type=registry,ref={ref},mode=max", f"type=registry,ref={ref}")
    # The builder stage's RUN layer was a remote hit nobody needed: not downloaded.
    src = Store(busybox_image)
    final = {l.descriptor.digest for l in first.layers}
    extra = [d for d in src.blobs() if d not in final and src.blob_size(d) > 250_000]
    assert extra, "the builder stage's layer should exist in the first store"
    assert not any(store.has_blob(d) for d in extra)
    # The cache is one artifact under one tag, with an index config and ordinary layer blobs.
    from registry.client import RegistryClient
    from registry.reference import parse_reference
    r = parse_reference(ref)
    with RegistryClient() as client:
        repo = client.repository(r.registry, r.repository)
        m = repo.get_manifest(r.tag).json()
        assert repo.tags() == ["buildcache"]
    assert m["artifactType"] == ARTIFACT_TYPE and m["config"]["mediaType"] == INDEX_MEDIA_TYPE
    assert {l["digest"] for l in m["layers"]} >= final - {first.layers[0].descriptor.digest} | set(extra)
    # What the fresh root downloaded became local records; the lazy step did not.
    from builder.cache.records import BuildCache
    keys = [l["key"] for l in json.loads((tmp_path / "meta.json").read_text())["pybuild.cache"]]
    local = BuildCache(fresh)
    assert local.get(keys[0]) is None
    assert local.get(keys[1]) is not None and local.get(keys[2]) is not None


def test_registry_min_mode_exports_final_chain_only(busybox_image, _busybox_layout, registry, tmp_path):
    ref = f"{registry.host}/cache/min-{uuid.uuid4().hex[:8]}:c"
    # A builder stage whose layer is reproducible (a COPY from the context).
    df = "FROM busybox AS builder\nCOPY out /out\nFROM busybox\nCOPY --from=builder /out /out\nRUN cat /out > /c\n"
    build_in(busybox_image, tmp_path / "ctx", df, {"out": "tool\n"}, cache_to=[f"type=registry,ref={ref}"])
    fresh = _fresh_root(tmp_path, _busybox_layout, "fresh")
    meta = tmp_path / "meta.json"
    build_in(fresh, tmp_path / "ctx", df, cache_from=[f"type=registry,ref={ref}"], metadata_file=str(meta))
    # min exported only the final stage: the builder stage runs again, gives the same content,
    # and the final stage's steps still hit (they are keyed on content, not on earlier keys).
    assert _lookups(meta) == ["miss", "remote", "remote"]


def test_local_round_trip(busybox_image, _busybox_layout, tmp_path):
    d = tmp_path / "cachedir"
    _round_trip(tmp_path, busybox_image, _busybox_layout, f"type=local,dest={d},mode=max", f"type=local,src={d}")
    index = json.loads((d / "index.json").read_text())
    assert index["manifests"][0]["artifactType"] == ARTIFACT_TYPE


def test_missing_cache_from_is_a_warning(busybox_image, registry, tmp_path):
    import io
    out = io.StringIO()
    ref = f"{registry.host}/cache/none-{uuid.uuid4().hex[:8]}:x"
    build_in(busybox_image, tmp_path / "ctx", "FROM busybox\nRUN true\n", cache_from=[ref], progress_out=out)
    build_in(busybox_image, tmp_path / "ctx", "FROM busybox\nRUN true\n",
             cache_from=["type=registry,ref=127.0.0.1:1/none:x"], progress_out=out)
    assert "[warning] --cache-from 127.0.0.1:1/none:x" in out.getvalue()


def test_cache_spec_parsing():
    s = parse_cache_spec("type=registry,ref=localhost:5000/a/b:c,mode=max", export=True)
    assert (s.type, s.ref, s.mode) == ("registry", "localhost:5000/a/b:c", "max")
    assert parse_cache_spec("localhost:5000/a:b", export=False).ref == "localhost:5000/a:b"
    assert parse_cache_spec("type=local,src=/x", export=False).path == "/x"
    for bad in ("type=registry", "type=local,src=/x", "type=s3,ref=x", "type=registry,ref=a:b,mode=all"):
        with pytest.raises(BuildError):
            parse_cache_spec(bad, export=True)
