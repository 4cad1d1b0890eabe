"""The image model (registry.image), its sources and sinks (Store, repository, OCI layout dir and
tar), the one copy (registry.copier) and the pure config transformations (registry.mutate)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from registry import mutate
from registry.copier import copy_image
from registry.endpoints import RemoteEndpoint, StoreEndpoint
from registry.errors import NotFoundError, RegistryError
from registry.image import (Image, ImageSink, ImageSource, RawManifest, image_blobs, select_image, walk)
from registry.layout import LayoutDir, LayoutTarReader, LayoutTarWriter
from registry.manifest import Descriptor, History, ImageConfig, Index
from registry.platform import Platform
from registry.store import Store
from registry.archive import load_archive
from tests.fixtures.synthetic_images import make_image, multi_platform_image, tar_layer


def _tree(store: Store, digest: str) -> list[str]:
    doc = store.get_manifest(digest)
    if isinstance(doc, Index):
        out = [digest]
        for d in doc.manifests:
            out += _tree(store, d.digest) if store.has_blob(d.digest) else [d.digest]
        return out
    return [digest, doc.config.digest, *[x.digest for x in doc.layers]]


def test_endpoints_implement_the_protocols(tmp_path):
    store = Store(tmp_path / "s")
    for ep in (StoreEndpoint(store), LayoutDir(tmp_path / "l")):
        assert isinstance(ep, ImageSource) and isinstance(ep, ImageSink)


def test_image_pairs_layers_with_diff_ids(tmp_path):
    store = Store(tmp_path / "s")
    layers = [tar_layer({"a": b"1"}), tar_layer({"b": b"2"})]
    desc = make_image(store, "m:1", layers)
    raw = StoreEndpoint(store).read_manifest("m:1")
    img = Image(raw, store.get_config(raw.doc.config.digest))
    assert [layer.diff_id for layer in img.layers] == [d for _, d in layers]
    assert img.layers[0].digest == raw.doc.layers[0].digest and raw.digest == desc.digest


def test_walk_reads_each_child_once_and_refuses_cycles(tmp_path):
    store = Store(tmp_path / "s")
    idx, children = multi_platform_image(store, "multi:1")
    src = StoreEndpoint(store)
    reads: list[str] = []

    def read(d: Descriptor) -> RawManifest:
        reads.append(d.digest)
        return src.read_manifest(d)
    top = src.read_manifest("multi:1")
    twice = RawManifest.parse(Index(manifests=top.doc.manifests * 2).to_bytes())
    below = walk(read, twice, "x")
    assert sorted(m.digest for m in below) == sorted(d.digest for d in children.values())
    assert len(reads) == 2
    assert len(image_blobs(m.doc for m in below)) == 5     # 2 configs, 2 own layers, the base once
    # An index listing itself.
    selfish = RawManifest.parse(Index(manifests=[Descriptor(top.media_type, "sha256:" + "0" * 64, 1)]).to_bytes())
    with pytest.raises(RegistryError, match="itself"):
        walk(lambda d: RawManifest(d, b"", selfish.doc), selfish, "loop")


def test_select_image_descends_nested_indexes(tmp_path):
    store = Store(tmp_path / "s")
    idx, children = multi_platform_image(store, "multi:1")
    outer = store.put_manifest(Index(manifests=[idx]))
    src = StoreEndpoint(store)
    raw = select_image(src.read_manifest, src.read_manifest(outer.digest), Platform("linux", "arm64", "v8"), "o")
    assert raw.digest == children["linux/arm64/v8"].digest
    with pytest.raises(NotFoundError, match="no image for platform linux/s390x"):
        select_image(src.read_manifest, src.read_manifest(outer.digest), Platform("linux", "s390x"), "o")


def test_store_to_layout_to_registry_to_store_keeps_digests(client, registry, tmp_path):
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    idx, _ = multi_platform_image(a, "multi:1")
    layout = LayoutDir(tmp_path / "layout")
    r1 = copy_image(StoreEndpoint(a), layout, "multi:1", tag="v1")
    assert r1.digest == idx.digest and r1.blobs_transferred == 5
    assert json.loads((tmp_path / "layout/index.json").read_text())["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "v1"}
    # Again: nothing to write.
    assert copy_image(StoreEndpoint(a), layout, "multi:1", tag="v1").blobs_skipped == 5
    repo = RemoteEndpoint(client.repository(registry.host, "model/multi"))
    r2 = copy_image(layout, repo, "v1", tag="v1", workers=client.options.max_per_host)
    assert r2.digest == idx.digest and r2.blobs_transferred == 5
    r3 = copy_image(repo, StoreEndpoint(b), "v1", tag="copied:v1")
    assert r3.digest == idx.digest
    assert _tree(b, idx.digest) == _tree(a, idx.digest)
    for d in _tree(a, idx.digest):
        assert b.read_blob(d) == a.read_blob(d)
    assert b.resolve("copied:v1").digest == idx.digest
    # One platform out of the index.
    one = copy_image(StoreEndpoint(a), LayoutDir(tmp_path / "one"), "multi:1", tag="arm",
                     platform=Platform("linux", "arm64", "v8"), all_platforms=False)
    assert one.platforms == ["linux/arm64/v8"] and one.source_digest == idx.digest


def test_skopeo_reads_the_layout_and_the_archive(tmp_path):
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (scripts/setup.sh installs it)")
    store = Store(tmp_path / "s")
    desc = make_image(store, "app:1", [tar_layer({"hello": b"world"})], cmd=["sh"])
    copy_image(StoreEndpoint(store), LayoutDir(tmp_path / "layout"), "app:1", tag="1")
    out = subprocess.run([skopeo, "inspect", "--raw", f"oci:{tmp_path / 'layout'}:1"],
                         capture_output=True, check=True)
    assert out.stdout == store.read_blob(desc.digest)
    with open(tmp_path / "app.tar", "wb") as f:
        w = LayoutTarWriter(f)
        copy_image(StoreEndpoint(store), w, "app:1", tag="1")
        w.close()
    out = subprocess.run([skopeo, "inspect", "--raw", f"oci-archive:{tmp_path / 'app.tar'}:1"],
                         capture_output=True, check=True)
    assert out.stdout == store.read_blob(desc.digest)


def test_layout_tar_round_trip(tmp_path):
    a, b, c = Store(tmp_path / "a"), Store(tmp_path / "b"), Store(tmp_path / "c")
    idx, _ = multi_platform_image(a, "multi:1")
    with open(tmp_path / "m.tar", "wb") as f:
        w = LayoutTarWriter(f)
        copy_image(StoreEndpoint(a), w, "multi:1", tag="docker.io/library/multi:1")
        w.close()
    reader = LayoutTarReader(tmp_path / "m.tar")
    r = copy_image(reader, StoreEndpoint(b), "docker.io/library/multi:1", tag="multi:1")
    reader.close()
    assert r.digest == idx.digest and _tree(b, idx.digest) == _tree(a, idx.digest)
    assert load_archive(c, str(tmp_path / "m.tar")).tags == ["multi:1"]


def test_layout_refuses_corrupt_blobs(tmp_path):
    a = Store(tmp_path / "a")
    make_image(a, "app:1", [tar_layer({"x": b"y" * 100})])
    copy_image(StoreEndpoint(a), LayoutDir(tmp_path / "l"), "app:1", tag="1")
    man = StoreEndpoint(a).read_manifest("app:1")
    layer = man.doc.layers[0]
    path = tmp_path / "l/blobs/sha256" / layer.digest.split(":")[1]
    path.chmod(0o644)
    path.write_bytes(b"\0" * layer.size)           # same size, other content
    with pytest.raises(RegistryError, match="digest"):
        copy_image(LayoutDir(tmp_path / "l"), StoreEndpoint(Store(tmp_path / "b")), "1", tag="x:1")


def test_mutate_is_pure():
    cfg = ImageConfig(architecture="amd64")
    a = mutate.with_env(cfg, [("A", "1"), ("B", "2")])
    b = mutate.with_env(a, [("A", "3")])
    assert cfg.config.env is None and a.config.env == ["A=1", "B=2"] and b.config.env == ["A=3", "B=2"]
    c = mutate.with_workdir(mutate.with_workdir(b, "/app"), "src/..//x")
    assert c.config.working_dir == "/app/x" and b.config.working_dir == ""
    d = mutate.with_labels(mutate.with_cmd(mutate.with_entrypoint(c, ["/e"]), ["x"]), {"k": "v"})
    assert (d.config.entrypoint, d.config.cmd, d.config.labels) == (["/e"], ["x"], {"k": "v"})
    assert mutate.with_entrypoint(d, ["/f"], reset_cmd=True).config.cmd is None and d.config.cmd == ["x"]
    e = mutate.append_layer(mutate.append_history(d, History(created_by="ENV")), "sha256:" + "1" * 64,
                            History(created_by="RUN"))
    assert e.diff_ids == ["sha256:" + "1" * 64] and [h.empty_layer for h in e.history] == [True, False]
    assert d.history == [] and d.diff_ids == []
    f = mutate.with_created(mutate.with_user(mutate.with_exposed_ports(e, ["80/tcp"]), "nobody"), "2024-01-01T00:00:00Z")
    assert (f.config.user, f.config.exposed_ports, f.created) == ("nobody", {"80/tcp": {}}, "2024-01-01T00:00:00Z")
    assert e.config.user == "" and e.created is None
