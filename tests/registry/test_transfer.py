"""Pull, push and copy against real registry:2 instances: digests survive round trips, blobs
are skipped or mounted when possible, corrupt content never lands in the store."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient
from registry.errors import DigestMismatchError, NotFoundError, RegistryError
from registry.manifest import Index, Manifest
from registry.platform import Platform
from registry.store import Store
from registry.transfer import BlobSources, copy, pull, push
from tests.fixtures.registry import fast_client
from tests.fixtures.synthetic_images import make_image, multi_platform_image, random_layer, tar_layer

pytestmark = pytest.mark.integration


def _store(path: Path) -> Store:
    return Store(path)


def _tree(store: Store, digest: str) -> list[str]:
    """Every digest reachable from a manifest or index, in a stable order."""
    doc = store.get_manifest(digest)
    out = [digest]
    if isinstance(doc, Index):
        for d in doc.manifests:
            out += _tree(store, d.digest) if store.has_blob(d.digest) else [d.digest]
    else:
        out += [doc.config.digest] + [layer.digest for layer in doc.layers]
    return out


def _registry_blob_path(registry, digest: str) -> Path:
    hexd = digest.split(":")[1]
    return registry.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def test_round_trip_identical_digests(client, registry, tmp_path):
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    layers = [tar_layer({f"file{i}": bytes([i]) * (1000 * (i + 1))}) for i in range(3)]
    src = make_image(a, f"{registry.host}/rt/app:v1", layers, cmd=["/bin/true"])
    res = push(client, a, f"{registry.host}/rt/app:v1")
    assert res.digest == src.digest and res.blobs_transferred == 4 and res.blobs_skipped == 0

    got = pull(client, f"{registry.host}/rt/app:v1", b)
    assert got.digest == src.digest
    assert _tree(b, got.digest) == _tree(a, src.digest)
    for d in _tree(a, src.digest):
        assert b.read_blob(d) == a.read_blob(d)
    assert b.resolve(f"{registry.host}/rt/app:v1").digest == src.digest
    assert got.platforms == ["linux/amd64"]

    # Again: everything is there already, on both sides.
    assert push(client, a, f"{registry.host}/rt/app:v1").blobs_skipped == 4
    again = pull(client, f"{registry.host}/rt/app:v1", b)
    assert again.blobs_skipped == 4 and again.bytes_transferred == 0


def test_push_to_other_name_and_mount(client, registry, tmp_path):
    a = _store(tmp_path / "a")
    src = make_image(a, "local/thing:1", [tar_layer({"x": b"mount me" * 500})])
    push(client, a, "local/thing:1", f"{registry.host}/mnt/first:1")
    assert BlobSources(a.root).repositories_on(src.digest, registry.host) == []
    assert "mnt/first" in BlobSources(a.root).repositories_on(
        a.get_manifest(src.digest).layers[0].digest, registry.host)
    res = push(client, a, "local/thing:1", f"{registry.host}/mnt/second:1")
    assert res.blobs_mounted == 2 and res.blobs_transferred == 0
    assert client.repository(registry.host, "mnt/second").head_manifest("1").digest == src.digest


def test_pull_by_digest(client, registry, tmp_path):
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    src = make_image(a, f"{registry.host}/bydigest/app:v1", [tar_layer({"d": b"digest"})])
    push(client, a, f"{registry.host}/bydigest/app:v1")
    got = pull(client, f"{registry.host}/bydigest/app@{src.digest}", b)
    assert got.digest == src.digest
    assert b.resolve(f"{registry.host}/bydigest/app@{src.digest}").digest == src.digest


def test_multi_platform_index(client, registry, tmp_path):
    a = _store(tmp_path / "a")
    ref = f"{registry.host}/multi/app:v1"
    index, children = multi_platform_image(a, ref)
    res = push(client, a, ref)
    assert res.digest == index.digest
    assert sorted(res.platforms) == ["linux/amd64", "linux/arm64/v8"]
    # Shared base layer: 2 configs + 1 base + 2 own layers.
    assert res.blobs_transferred == 5

    # One platform: the index is kept and tagged, with only that platform's image below it (as
    # Docker's containerd image store keeps it).
    arm = _store(tmp_path / "arm")
    got = pull(client, ref, arm, platform="linux/arm64")
    assert got.digest == index.digest and got.media_type == mt.OCI_INDEX and got.source_digest == index.digest
    assert got.images == [children["linux/arm64/v8"].digest] and got.platforms == ["linux/arm64/v8"]
    assert arm.resolve(ref).digest == index.digest
    assert not arm.has_blob(children["linux/amd64"].digest)
    assert arm.image_manifest(ref, Platform("linux", "arm64"))[0].digest == children["linux/arm64/v8"].digest
    with pytest.raises(NotFoundError, match="without the linux/amd64 image.*it has linux/arm64/v8 here"):
        arm.image_manifest(ref)                     # this host's platform is not there
    assert arm.image_manifest(ref, any_present=True)[0].digest == children["linux/arm64/v8"].digest
    assert arm.verify() == []                       # the other platform's absence is expected
    assert arm.gc().removed_blobs == 0              # and what is there is kept

    # A second pull for another platform adds it below the same index.
    again = pull(client, ref, arm)                  # this machine: amd64
    assert again.digest == index.digest and again.images == [children["linux/amd64"].digest]
    assert again.blobs_skipped == 1                 # the shared base layer
    assert _tree(arm, index.digest) == _tree(a, index.digest)

    full = _store(tmp_path / "full")
    got = pull(client, ref, full, all_platforms=True)
    assert got.digest == index.digest and got.media_type == mt.OCI_INDEX
    assert sorted(got.images) == sorted(d.digest for d in children.values())
    assert _tree(full, index.digest) == _tree(a, index.digest)
    none = _store(tmp_path / "none")
    with pytest.raises(NotFoundError, match="s390x"):
        pull(client, ref, none, platform="linux/s390x")
    assert none.list_images() == [] and list(none.blobs()) == []


def test_cached_pull_of_an_index_asks_for_the_tag_only(client, registry, fault_proxy, tmp_path):
    """A second pull of a kept index reads the platform's manifest from the store: one manifest
    GET (the tag), no blob request."""
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    ref = f"{registry.host}/cachedidx/app:v1"
    index, children = multi_platform_image(a, ref, seed=11)
    push(client, a, ref)
    via = f"{fault_proxy.host}/cachedidx/app:v1"
    pull(client, via, b, platform="linux/arm64")
    fault_proxy.clear()
    res = pull(client, via, b, platform="linux/arm64")
    assert res.digest == index.digest and res.blobs_skipped == 3 and res.bytes_transferred == 0
    asked = [(m, p) for m, p, _, _ in fault_proxy.log if "/v2/cachedidx/" in p]
    assert asked == [("GET", "/v2/cachedidx/app/manifests/v1")], asked


def test_push_of_a_partly_pulled_index(client, registry, registry2, tmp_path):
    """Docker's rules for an index the store holds only partly, and never an index listing a
    manifest the registry lacks."""
    import subprocess
    from tests.fixtures.building import need
    skopeo = need("skopeo")

    def raw(ref: str) -> dict:
        import json
        return json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                         capture_output=True, text=True, check=True).stdout)
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    ref = f"{registry.host}/partial/app:v1"
    index, children = multi_platform_image(a, ref, seed=3)
    push(client, a, ref)
    pull(client, ref, b, platform="linux/arm64")

    # Back to the registry it came from (which has the other platform): the index as it is.
    res = push(client, b, ref, f"{registry.host}/partial/app:v2")
    assert res.digest == index.digest and raw(f"{registry.host}/partial/app:v2")["manifests"] == \
        raw(ref)["manifests"]

    # Elsewhere: only the one image the store has, not an index listing what registry2 lacks.
    other = f"{registry2.host}/partial/other:1"
    res = push(client, b, ref, other)
    assert res.digest == children["linux/arm64/v8"].digest
    assert raw(other)["mediaType"] == mt.OCI_MANIFEST and raw(other)["config"]["digest"] == \
        a.get_manifest(children["linux/arm64/v8"].digest).config.digest

    # --platform: that platform's image; one the store lacks is a clear error naming it.
    res = push(client, b, ref, f"{registry2.host}/partial/plat:1", platform="linux/arm64")
    assert res.digest == children["linux/arm64/v8"].digest
    with pytest.raises(NotFoundError, match=r"lacks manifest .* \(linux/amd64\).*--platform"):
        push(client, b, ref, f"{registry2.host}/partial/plat:2", platform="linux/amd64")
    assert client.repository(registry2.host, "partial/plat").head_manifest("2") is None

    # Two of three platforms here and the third nowhere at the destination: refused, naming it.
    c = _store(tmp_path / "c")
    three = {p: make_image(a, None, [tar_layer({"p": str(p).encode()})], platform=p)
             for p in (Platform("linux", "amd64"), Platform("linux", "arm64", "v8"), Platform("linux", "s390x"))}
    from tests.fixtures.synthetic_images import make_index
    ref3 = f"{registry.host}/partial/three:v1"
    idx3 = make_index(a, ref3, list(three.values()))
    push(client, a, ref3)
    pull(client, ref3, c, platform="linux/amd64")
    pull(client, ref3, c, platform="linux/s390x")
    with pytest.raises(NotFoundError, match=r"neither it nor the registry has linux/arm64/v8.*--platform "
                                            r"\(present here: linux/amd64, linux/s390x\)"):
        push(client, c, ref3, f"{registry2.host}/partial/three:v1")
    assert client.repository(registry2.host, "partial/three").head_manifest("v1") is None
    # ... and pushed whole once the store has all of it.
    pull(client, ref3, c, all_platforms=True)
    assert push(client, c, ref3, f"{registry2.host}/partial/three:v1").digest == idx3.digest

    # Every platform pulled one by one, but not the attestation manifest (BuildKit's shape):
    # refused, saying that is what is missing.
    from registry.manifest import Descriptor
    att = make_image(a, None, [tar_layer({"statement": b"{}"})], platform=Platform("unknown", "unknown"))
    att = Descriptor(att.media_type, att.digest, att.size, platform=Platform("unknown", "unknown"),
                     annotations={"vnd.docker.reference.type": "attestation-manifest",
                                  "vnd.docker.reference.digest": children["linux/amd64"].digest})
    ref4 = f"{registry.host}/partial/attested:v1"
    make_index(a, ref4, [children["linux/amd64"], children["linux/arm64/v8"], att])
    push(client, a, ref4)
    d = _store(tmp_path / "d")
    pull(client, ref4, d)
    pull(client, ref4, d, platform="linux/arm64")
    with pytest.raises(NotFoundError, match="neither it nor the registry has 1 attestation manifest;"):
        push(client, d, ref4, f"{registry2.host}/partial/attested:v1")


def test_docker_media_types_round_trip(client, registry, tmp_path):
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    ref = f"{registry.host}/dockertypes/app:v1"
    src = make_image(a, ref, [tar_layer({"d": b"docker"})], docker=True)
    push(client, a, ref)
    got = pull(client, ref, b)
    assert got.digest == src.digest and got.media_type == mt.DOCKER_MANIFEST


def test_copy_between_registries(client, registry, registry2, tmp_path):
    a = _store(tmp_path / "a")
    ref = f"{registry.host}/copy/app:v1"
    index, children = multi_platform_image(a, ref, seed=7)
    push(client, a, ref)
    dst = f"{registry2.host}/copied/app:v2"
    res = copy(client, ref, dst, all_platforms=True)
    assert res.digest == index.digest and res.blobs_transferred == 5
    repo2 = client.repository(registry2.host, "copied/app")
    assert repo2.get_manifest("v2").digest == index.digest
    b = _store(tmp_path / "b")
    pull(client, dst, b, all_platforms=True)
    assert _tree(b, index.digest) == _tree(a, index.digest)
    for d in _tree(a, index.digest):
        assert b.read_blob(d) == a.read_blob(d)
    # Single platform: only that manifest, tagged.
    one = copy(client, ref, f"{registry2.host}/copied/one:v1", platform="linux/arm64")
    assert one.digest == children["linux/arm64/v8"].digest
    assert one.blobs_transferred == 3     # config, base and own layer: HEAD is per repository


def test_an_index_whose_registry_lost_a_child(client, registry, registry2, tmp_path):
    """A source index listing a manifest its registry no longer has: copying or pulling all of it
    is refused naming that platform and writes nothing; its other platform still copies and pulls."""
    a = _store(tmp_path / "a")
    ref = f"{registry.host}/lostchild/app:v1"
    index, children = multi_platform_image(a, ref, seed=13)
    push(client, a, ref)
    client.repository(registry.host, "lostchild/app").delete_manifest(children["linux/arm64/v8"].digest)
    dst = f"{registry2.host}/lostchild/app:v1"
    with pytest.raises(NotFoundError, match=r"not found.*\(the linux/arm64/v8 image it lists\)"):
        copy(client, ref, dst, all_platforms=True)
    repo2 = client.repository(registry2.host, "lostchild/app")
    assert repo2.head_manifest("v1") is None and not repo2.has_blob(children["linux/amd64"].digest)
    b = _store(tmp_path / "b")
    with pytest.raises(NotFoundError, match="linux/arm64/v8"):
        pull(client, ref, b, all_platforms=True)
    assert b.list_images() == [] and list(b.blobs()) == []
    assert copy(client, ref, dst).digest == children["linux/amd64"].digest
    got = pull(client, ref, b)
    assert got.digest == index.digest and got.images == [children["linux/amd64"].digest]


def test_copy_within_registry_mounts(client, registry, tmp_path):
    a = _store(tmp_path / "a")
    ref = f"{registry.host}/copysrc/app:v1"
    src = make_image(a, ref, [tar_layer({"m": b"mounted" * 100})])
    push(client, a, ref)
    res = copy(client, ref, f"{registry.host}/copydst/app:v1")
    assert res.digest == src.digest and res.blobs_mounted == 2 and res.blobs_transferred == 0


def test_corrupt_blob_in_registry_stores_nothing(client, registry, tmp_path):
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    ref = f"{registry.host}/corrupt/app:v1"
    src = make_image(a, ref, [tar_layer({"c": hashlib.sha256(b"x").digest() * 4000})])
    push(client, a, ref)
    layer = a.get_manifest(src.digest).layers[0]
    path = _registry_blob_path(registry, layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError):
        pull(client, ref, b)
    assert not b.has_blob(layer.digest)
    with pytest.raises(NotFoundError):
        b.resolve(ref)
    assert list((b.layout / "ingest").glob("*.partial")) == []


def test_resume_partial_download(client, registry, tmp_path):
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    ref = f"{registry.host}/resume/app:v1"
    big, diff = random_layer(a, 3 * 1024 * 1024 + 5, seed=11)
    make_image(a, ref, layer_descs=[(big, diff)])
    push(client, a, ref)
    # A killed earlier pull left the first 1 MiB behind.
    hexd = big.digest.split(":")[1]
    partial = b.layout / "ingest" / f"sha256-{hexd}.partial"
    partial.write_bytes(a.read_blob(big.digest)[: 1 << 20])
    res = pull(client, ref, b)
    assert b.read_blob(big.digest, verify=True) == a.read_blob(big.digest)
    config = a.get_manifest(a.resolve(ref).digest).config
    assert res.bytes_transferred == config.size + big.size - (1 << 20)
    # A corrupt leftover is detected and the blob fetched again from the start.
    c = _store(tmp_path / "c")
    partial = c.layout / "ingest" / f"sha256-{hexd}.partial"
    partial.write_bytes(b"\0" * 1000)
    pull(client, ref, c)
    assert c.read_blob(big.digest, verify=True) == a.read_blob(big.digest)


@pytest.mark.large
def test_large_blob_round_trip(client, registry, tmp_path):
    """A 200 MB layer: pushed through the chunked (POST+PATCH+PUT) path, pulled streaming."""
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    ref = f"{registry.host}/large/app:v1"
    big, diff = random_layer(a, 200 * 1000 * 1000 + 123, seed=200)
    src = make_image(a, ref, layer_descs=[(big, diff)])
    res = push(client, a, ref)
    assert res.bytes_transferred >= big.size
    got = pull(client, ref, b)
    assert got.digest == src.digest
    assert b.blob_size(big.digest) == big.size
    assert b.read_blob(big.digest, verify=True) == a.read_blob(big.digest)


def test_chunked_push_with_small_chunks(registry, tmp_path):
    c = RegistryClient(ClientOptions(chunk_size=1024 * 1024))
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    ref = f"{registry.host}/chunks/app:v1"
    big, diff = random_layer(a, 4 * 1024 * 1024 + 99, seed=4)
    src = make_image(a, ref, layer_descs=[(big, diff)])
    push(c, a, ref)
    assert pull(c, ref, b).digest == src.digest
    assert b.read_blob(big.digest, verify=True) == a.read_blob(big.digest)
    c.close()


def test_manifest_platform_in_index_only(client, registry, tmp_path):
    """Docker manifest list flavour with arm/v7 selection."""
    a = _store(tmp_path / "a")
    ref = f"{registry.host}/armv7/app:v1"
    descs = [make_image(a, None, [tar_layer({"p": str(p).encode()})], platform=p, docker=True)
             for p in (Platform("linux", "amd64"), Platform("linux", "arm", "v7"))]
    from tests.fixtures.synthetic_images import make_index
    make_index(a, ref, descs, docker=True)
    push(client, a, ref)
    b = _store(tmp_path / "b")
    got = pull(client, ref, b, platform="linux/arm/v7")
    assert got.images == [descs[1].digest] and got.media_type == mt.DOCKER_MANIFEST_LIST
    assert isinstance(b.get_manifest(got.images[0]), Manifest)


def test_failed_pull_resumes_next_time(registry, fault_proxy, tmp_path):
    """A pull that gives up mid-blob leaves its partial download; the next pull (a new client,
    as in a new process) continues from there instead of starting over."""
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    big, diff = random_layer(a, 6 * 1024 * 1024, seed=31)
    src = make_image(a, "local/resume:v1", layer_descs=[(big, diff)])
    direct = RegistryClient()
    push(direct, a, "local/resume:v1", f"{registry.host}/resume2/app:v1")
    # A short body (not a reset, whose RST may discard what the client has not read yet).
    fault_proxy.add("truncate", method="GET", path=big.digest, after=3 * 1024 * 1024, times=-1)
    ref = f"{fault_proxy.host}/resume2/app:v1"
    with RegistryClient(ClientOptions(retries=0)) as flaky, pytest.raises(RegistryError, match="download failed"):
        pull(flaky, ref, b)
    partial = b.layout / "ingest" / f"sha256-{big.digest.split(':')[1]}.partial"
    kept = partial.stat().st_size
    assert kept == 3 * 1024 * 1024 and not b.has_blob(big.digest)
    fault_proxy.clear()
    with RegistryClient() as fresh:
        res = pull(fresh, ref, b)
    assert res.digest == src.digest
    assert res.blobs_skipped == 1                 # the config arrived the first time
    assert res.bytes_transferred == big.size - kept
    assert b.read_blob(big.digest, verify=True) == a.read_blob(big.digest)
    direct.close()


@pytest.mark.parametrize("kind", ["manifest", "index"])
def test_pull_of_a_cached_image_is_one_request_and_writes_nothing(kind, registry, fault_proxy, tmp_path):
    """Pulling what the tag already names asks the registry once (the manifest or index GET; an
    index's platform manifest is read from the store) and writes nothing: no lease, no
    index.json rewrite. A changed tag is pulled again."""
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    if kind == "index":
        multi_platform_image(a, "local/cached:v1", seed=5)
    else:
        make_image(a, "local/cached:v1", [tar_layer({"etc/v": b"1"})])
    with RegistryClient() as direct:
        push(direct, a, "local/cached:v1", f"{registry.host}/cached/{kind}:v1")
    ref = f"{fault_proxy.host}/cached/{kind}:v1"
    with RegistryClient() as c:
        first = pull(c, ref, b, platform="linux/arm64/v8")
    index_json = b.layout / "index.json"
    before = (index_json.stat().st_mtime_ns, index_json.read_bytes())
    fault_proxy.settled_log()           # the first pull's requests all recorded, then forgotten
    fault_proxy.clear()
    with RegistryClient() as c:
        again = pull(c, ref, b, platform="linux/arm64/v8")
    assert [(m, p) for m, p, _, _ in fault_proxy.settled_log()] == [("GET", f"/v2/cached/{kind}/manifests/v1")]
    assert (again.digest, again.source_digest, again.platforms) == (first.digest, first.source_digest,
                                                                    first.platforms)
    assert again.blobs_transferred == 0 and again.blobs_skipped == first.blobs_transferred
    assert (index_json.stat().st_mtime_ns, index_json.read_bytes()) == before
    assert list((b.layout / "leases").iterdir()) == []
    # The tag moves on at the registry: the next pull fetches the new image.
    make_image(a, "local/cached:v1", [tar_layer({"etc/v": b"2"})], platform=Platform("linux", "arm64", "v8"))
    with RegistryClient() as direct:
        push(direct, a, "local/cached:v1", f"{registry.host}/cached/{kind}:v1")
    with RegistryClient() as c:
        moved = pull(c, ref, b, platform="linux/arm64/v8")
    assert moved.digest != first.digest and moved.blobs_transferred >= 2
    assert b.resolve(ref).digest == moved.digest


@pytest.mark.parametrize("chunked", [False, True])
def test_copy_of_corrupt_source_commits_nothing(registry, registry2, tmp_path, chunked):
    """A source blob that does not match its digest is refused on the way (by the client before
    the final PUT on the chunked path, by the destination on the monolithic one)."""
    c = fast_client(monolithic_max=0 if chunked else 32 << 20)
    a = _store(tmp_path / "a")
    ref = f"{registry.host}/copycorrupt/app{int(chunked)}:v1"
    src = make_image(a, ref, [tar_layer({"x": hashlib.sha256(b"c").digest() * (3000 + chunked)})])
    push(c, a, ref)
    layer = a.get_manifest(src.digest).layers[0]
    path = _registry_blob_path(registry, layer.digest)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    dst = f"{registry2.host}/copycorrupt/app{int(chunked)}:v1"
    with pytest.raises(RegistryError) as e:
        copy(c, ref, dst)
    assert layer.digest in str(e.value)
    if chunked:
        assert isinstance(e.value, DigestMismatchError)
    repo2 = c.repository(registry2.host, f"copycorrupt/app{int(chunked)}")
    assert not repo2.has_blob(layer.digest)
    assert repo2.head_manifest("v1") is None
    c.close()


@pytest.mark.parametrize("action", ["truncate", "drop", "corrupt"])
def test_damaged_manifest_is_fetched_again(registry, fault_proxy, tmp_path, action):
    """A manifest body that is short (looks complete), broken off, or has a flipped byte."""
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    src = make_image(a, "local/cut:v1", [tar_layer({"m": b"manifest cut"})])
    with RegistryClient() as direct:
        push(direct, a, "local/cut:v1", f"{registry.host}/cut-{action}/app:v1")
    rule = fault_proxy.add(action, method="GET", path="/manifests/", after=50, times=2)
    with fast_client() as c:
        res = pull(c, f"{fault_proxy.host}/cut-{action}/app:v1", b)
    assert rule.hits == 2 and res.digest == src.digest
