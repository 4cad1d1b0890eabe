"""Pull and push through a fault-injecting proxy in front of a real registry:2.

Every transfer either completes with the right digests or fails with a clear RegistryError after
its retries, and the local store never holds a blob whose content does not match its digest. What
reaches the registry is checked by pulling it again without the proxy.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from registry.client import RegistryClient
from registry.errors import DigestMismatchError, RegistryError
from registry.manifest import Index
from registry.store import Store
from registry.transfer import pull, push
from tests.fixtures.fault_proxy import FaultProxy, Rule
from tests.fixtures.registry import fast_client
from tests.fixtures.synthetic_images import make_image, random_layer, tar_layer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BLOB = r"/blobs/sha256:"
MANIFEST = r"/manifests/"
UPLOADS = r"/blobs/uploads/"


def _tree(store: Store, digest: str) -> list[str]:
    doc = store.get_manifest(digest)
    if isinstance(doc, Index):
        return [digest] + [x for d in doc.manifests for x in _tree(store, d.digest)]
    return [digest, doc.config.digest] + [layer.digest for layer in doc.layers]


def assert_store_sound(store: Store) -> int:
    """Hash every blob in the store; fail on any whose content does not match its name."""
    n = 0
    for digest in store.blobs():
        algorithm, hexd = digest.split(":")
        h = hashlib.new(algorithm)
        with open(store.blob_path(digest), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == hexd, f"corrupt blob {digest} in the store"
        n += 1
    assert store.verify() == []
    return n


def _source_image(tmp_path: Path, name: str, seed: int) -> tuple[Store, str]:
    """A store holding an image of three layers (2 MiB and 600 KiB random, one small tar)."""
    a = Store(tmp_path / f"src-{seed}")
    big = random_layer(a, 2 << 20, seed=seed)
    mid = random_layer(a, 600 << 10, seed=seed + 1000)
    desc = make_image(a, name, [tar_layer({"etc/seed": str(seed).encode()})], layer_descs=[big, mid],
                      cmd=["/bin/true"])
    return a, desc.digest


def _seed_registry(client: RegistryClient, registry, tmp_path: Path, repo: str, seed: int) -> tuple[str, Store]:
    """Push a source image straight to the registry (no proxy): (reference path, source store)."""
    a, _ = _source_image(tmp_path, "local/seed:v1", seed)
    push(client, a, "local/seed:v1", f"{registry.host}/{repo}:v1")
    return f"{repo}:v1", a


def _pulled_directly(registry, ref: str, tmp_path: Path) -> tuple[Store, str]:
    """Pull REF from the registry itself (no proxy) into a fresh store; checks what a push left."""
    s = Store(tmp_path / "check")
    with fast_client() as c:
        res = pull(c, f"{registry.host}/{ref}", s)
    return s, res.digest


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _program(proxy: FaultProxy, rules: list[dict]) -> list[Rule]:
    return [proxy.add(**r) for r in rules]


# -- pull --------------------------------------------------------------------------------------------

PULL_RECOVERABLE = {
    "drop mid-blob twice": [dict(action="drop", method="GET", path=BLOB, after=300_000, times=2)],
    "429 on manifest with Retry-After": [dict(action="status", status=429, method="GET", path=MANIFEST,
                                              headers={"Retry-After": "1"}, times=1)],
    "500 and 503 on blobs": [dict(action="status", status=500, method="GET", path=BLOB, times=2),
                             dict(action="status", status=503, method="GET", path=BLOB, times=1)],
    "502 on blob HEAD-free GETs and manifest": [dict(action="status", status=502, path=MANIFEST, times=1),
                                                dict(action="status", status=504, path=BLOB, times=1)],
    "truncated blob body": [dict(action="truncate", method="GET", path=BLOB, after=100_000, times=1)],
    "truncated three times": [dict(action="truncate", method="GET", path=BLOB, after=1000, times=3)],
    "reset before answering": [dict(action="reset", method="GET", path=BLOB, times=2),
                               dict(action="reset", method="GET", path=MANIFEST, times=1)],
}


@pytest.mark.parametrize("scenario", sorted(PULL_RECOVERABLE))
def test_pull_recovers(scenario, client, registry, fault_proxy, tmp_path):
    ref, src = _seed_registry(client, registry, tmp_path, f"faults/pull-{_slug(scenario)}", seed=1)
    rules = _program(fault_proxy, PULL_RECOVERABLE[scenario])
    b = Store(tmp_path / "dst")
    res = pull(client, f"{fault_proxy.host}/{ref}", b)
    assert all(r.hits > 0 for r in rules), fault_proxy.log       # every fault was really injected
    assert _tree(b, res.digest) == _tree(src, src.resolve("local/seed:v1").digest)
    assert assert_store_sound(b) == 5


@pytest.mark.parametrize("size", [2 << 20, 9 << 20], ids=["one-buffer", "read-ahead"])
def test_pull_resumes_from_a_server_that_ignores_range(size, client, registry, fault_proxy, tmp_path):
    """A download cut short at an odd byte resumes with Range; the server answers with the whole
    blob (200), whose first bytes are dropped. Both download loops: one reused buffer (small blobs)
    and buffers read ahead on a helper thread (blobs of 8 MiB and more)."""
    a = Store(tmp_path / "src")
    layer = random_layer(a, size, seed=size)
    make_image(a, "local/big:v1", layer_descs=[layer], cmd=["/bin/true"])
    repo = f"faults/norange-{size}"
    push(client, a, "local/big:v1", f"{registry.host}/{repo}:v1")
    blob = BLOB + layer[0].digest.split(":")[1]
    rules = _program(fault_proxy, [dict(action="truncate", method="GET", path=blob, after=size // 2 + 12345,
                                                        times=1),
                                   dict(action="norange", method="GET", path=blob, times=1)])
    b = Store(tmp_path / "dst")
    res = pull(client, f"{fault_proxy.host}/{repo}:v1", b)
    assert all(r.hits == 1 for r in rules), fault_proxy.log
    assert [(m, st) for m, p, st, act in fault_proxy.settled_log(2) if blob in p] == [("GET", 200), ("GET", 200)]
    assert _tree(b, res.digest) == _tree(a, a.resolve("local/big:v1").digest)
    assert assert_store_sound(b) == 3


PULL_CORRUPTING = {
    "corrupt blob body": [dict(action="corrupt", method="GET", path=BLOB, after=12345, times=1)],
    "corrupt blob body on every try": [dict(action="corrupt", method="GET", path=BLOB, after=7, times=-1)],
    "corrupt manifest": [dict(action="corrupt", method="GET", path=MANIFEST, after=20, times=1)],
}


@pytest.mark.parametrize("scenario", sorted(PULL_CORRUPTING))
def test_pull_never_stores_corrupt_content(scenario, client, registry, fault_proxy, tmp_path):
    ref, src = _seed_registry(client, registry, tmp_path, f"faults/corrupt-{_slug(scenario)}", seed=2)
    _program(fault_proxy, PULL_CORRUPTING[scenario])
    b = Store(tmp_path / "dst")
    try:
        res = pull(client, f"{fault_proxy.host}/{ref}", b)
    except RegistryError as exc:
        msg = str(exc)
        # names what failed: the manifest reference or the blob digest
        assert fault_proxy.host in msg and ("sha256:" in msg or ":v1" in msg), msg
        assert isinstance(exc, DigestMismatchError) or "invalid JSON" in msg or "fail" in msg
    else:
        assert _tree(b, res.digest) == _tree(src, src.resolve("local/seed:v1").digest)
    assert fault_proxy.faults(), "the fault was never injected"
    assert_store_sound(b)
    # once the network behaves, the same store completes the pull
    fault_proxy.clear()
    res = pull(client, f"{fault_proxy.host}/{ref}", b)
    assert res.digest == src.resolve("local/seed:v1").digest
    assert assert_store_sound(b) == 5


PULL_FATAL = {
    "503 forever": ([dict(action="status", status=503, path=BLOB, times=-1)], "503"),
    "dropped at byte 0 forever": ([dict(action="drop", method="GET", path=BLOB, after=0, times=-1)], "fail"),
    "empty bodies forever": ([dict(action="truncate", method="GET", path=BLOB, after=0, times=-1)], "fail"),
    "429 asking for an hour": ([dict(action="status", status=429, path=MANIFEST, times=-1,
                                     headers={"Retry-After": "3600"})], "3600"),
}


@pytest.mark.parametrize("scenario", sorted(PULL_FATAL))
def test_pull_gives_up_with_a_clear_error(scenario, registry, fault_proxy, tmp_path):
    with fast_client(retries=3) as c:
        ref, _ = _seed_registry(c, registry, tmp_path, f"faults/fatal-{_slug(scenario)}", seed=3)
        rules, words = PULL_FATAL[scenario]
        _program(fault_proxy, rules)
        b = Store(tmp_path / "dst")
        with pytest.raises(RegistryError) as e:
            pull(c, f"{fault_proxy.host}/{ref}", b)
    msg = str(e.value)
    assert words in msg and fault_proxy.host in msg, msg
    assert_store_sound(b)
    assert b.read_index().manifests == []                         # nothing was tagged


# -- push --------------------------------------------------------------------------------------------

PUSH_RECOVERABLE = {
    "reset during blob upload": [dict(action="reset", method="PUT", path=UPLOADS, after=200_000, times=2)],
    "500 on upload start, 429 on manifest": [
        dict(action="status", status=500, method="POST", path=UPLOADS, times=2),
        dict(action="status", status=429, method="PUT", path=MANIFEST, headers={"Retry-After": "1"}, times=1)],
    "answer of a committed upload lost": [dict(action="drop", method="PUT", path=UPLOADS, after=0, times=2)],
    "503 on HEAD checks": [dict(action="status", status=503, method="HEAD", path=BLOB, times=3)],
    "manifest PUT reset": [dict(action="reset", method="PUT", path=MANIFEST, after=-1, times=1)],
}


@pytest.mark.parametrize("scenario", sorted(PUSH_RECOVERABLE))
def test_push_recovers(scenario, client, registry, fault_proxy, tmp_path):
    a, digest = _source_image(tmp_path, "local/app:v1", seed=10)
    repo = f"faults/push-{_slug(scenario)}"
    rules = _program(fault_proxy, PUSH_RECOVERABLE[scenario])
    res = push(client, a, "local/app:v1", f"{fault_proxy.host}/{repo}:v1")
    assert res.digest == digest
    assert all(r.hits > 0 for r in rules), fault_proxy.log
    check, got = _pulled_directly(registry, f"{repo}:v1", tmp_path)
    assert got == digest and _tree(check, got) == _tree(a, digest)
    assert_store_sound(check)
    assert_store_sound(a)


def test_chunked_push_resumes_after_resets(registry, fault_proxy, tmp_path):
    """PATCH uploads in 256 KiB chunks; two PATCHes are cut off mid-body and the upload goes on
    from what the registry reports it holds."""
    a, digest = _source_image(tmp_path, "local/chunky:v1", seed=11)
    rules = _program(fault_proxy, [dict(action="reset", method="PATCH", path=UPLOADS, after=100_000, times=2)])
    with fast_client(chunk_size=256 << 10) as c:
        res = push(c, a, "local/chunky:v1", f"{fault_proxy.host}/faults/chunky:v1")
    assert res.digest == digest and rules[0].hits == 2
    check, got = _pulled_directly(registry, "faults/chunky:v1", tmp_path)
    assert _tree(check, got) == _tree(a, digest)


def test_push_gives_up_with_a_clear_error(registry, fault_proxy, tmp_path):
    a, _ = _source_image(tmp_path, "local/never:v1", seed=12)
    _program(fault_proxy, [dict(action="status", status=503, method="POST", path=UPLOADS, times=-1)])
    with fast_client(retries=2) as c, pytest.raises(RegistryError) as e:
        push(c, a, "local/never:v1", f"{fault_proxy.host}/faults/never:v1")
    assert "503" in str(e.value) and "faults/never" in str(e.value)
    with fast_client() as c:                                # no manifest refers to missing blobs
        assert c.repository(registry.host, "faults/never").head_manifest("v1") is None
    assert_store_sound(a)


# -- copy (registry to registry, streamed) --------------------------------------------------------------

COPY_FAULTS = {
    "source drops mid-blob": [dict(action="drop", method="GET", path=BLOB, after=250_000, times=2)],
    "source truncates and answers 503": [dict(action="truncate", method="GET", path=BLOB, after=5000, times=1),
                                         dict(action="status", status=503, method="GET", path=BLOB, times=1)],
    "source corrupts a blob": [dict(action="corrupt", method="GET", path=BLOB, after=99, times=1)],
}


@pytest.mark.parametrize("scenario", sorted(COPY_FAULTS))
def test_copy_from_a_faulty_source(scenario, client, registry, registry2, fault_proxy, tmp_path):
    """Source behind the proxy, destination a second registry: the copy completes with identical
    digests, or fails clearly with no manifest at the destination (so no image refers to a blob
    that did not arrive intact; the destination registry verifies every upload's digest)."""
    from registry.transfer import copy

    ref, src = _seed_registry(client, registry, tmp_path, f"faults/copy-{_slug(scenario)}", seed=20)
    _program(fault_proxy, COPY_FAULTS[scenario])
    dest = f"{registry2.host}/copied/{_slug(scenario)}:v1"
    try:
        res = copy(client, f"{fault_proxy.host}/{ref}", dest)
    except RegistryError as exc:
        assert "sha256:" in str(exc) or fault_proxy.host in str(exc), str(exc)
        assert client.repository(registry2.host, f"copied/{_slug(scenario)}").head_manifest("v1") is None
    else:
        assert res.digest == src.resolve("local/seed:v1").digest
        check, got = _pulled_directly(registry2, f"copied/{_slug(scenario)}:v1", tmp_path)
        assert _tree(check, got) == _tree(src, res.digest)
        assert_store_sound(check)
    assert fault_proxy.faults()
