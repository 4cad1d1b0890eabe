"""The registry HTTP client against a real registry:2 (Debian's docker-registry) on loopback."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading

import pytest

from registry import mediatypes
from registry.client import ClientOptions, RegistryClient, is_loopback
from registry.digest import digest_bytes
from registry.errors import DigestMismatchError, NotFoundError, RegistryError
from tests.fixtures.registry import fast_client

pytestmark = pytest.mark.integration


def _blob(n: int, seed: int = 0) -> tuple[bytes, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (n // 32) + os.urandom(n % 32)
    return data, digest_bytes(data)


def _push_blob(repo, data: bytes) -> str:
    d = digest_bytes(data)
    assert repo.upload_blob(d, len(data), lambda off: [data[off:]]) == "uploaded"
    return d


def _image_manifest(repo, media_type: str = mediatypes.OCI_MANIFEST, seed: int = 0) -> bytes:
    """Push a config and a layer, return a manifest (not yet pushed) referencing them."""
    docker = media_type == mediatypes.DOCKER_MANIFEST
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "seed": seed}).encode()
    layer, _ = _blob(1000, seed)
    cd, ld = _push_blob(repo, config), _push_blob(repo, layer)
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": mediatypes.DOCKER_CONFIG if docker else mediatypes.OCI_CONFIG,
                   "digest": cd, "size": len(config)},
        "layers": [{"mediaType": mediatypes.DOCKER_LAYER_GZIP if docker else mediatypes.OCI_LAYER_GZIP,
                    "digest": ld, "size": len(layer)}],
    }).encode()


def test_loopback_rule():
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("example.com:5000") and not is_loopback("10.0.0.1")


def test_ping_uses_plain_http_on_loopback(client, registry):
    assert client.ping(registry.host)
    assert client.base_url(registry.host) == f"http://{registry.host}"


def test_monolithic_blob_round_trip_and_range(client, registry):
    repo = client.repository(registry.host, "client/mono")
    data, d = _blob(300_000, 1)
    assert not repo.has_blob(d)
    assert repo.upload_blob(d, len(data), lambda off: [data[off:]]) == "uploaded"
    assert repo.blob_size(d) == len(data)
    assert b"".join(repo.iter_blob(d, len(data))) == data
    # Range resume: start in the middle, as after a dropped connection.
    assert b"".join(repo.iter_blob(d, len(data), offset=123_457)) == data[123_457:]


def test_chunked_upload_in_small_chunks(client, registry):
    repo = client.repository(registry.host, "client/chunked")
    data, d = _blob(5 * 1024 * 1024 + 17, 2)
    sent = []
    result = repo.upload_blob(d, len(data), lambda off: [data[off:]], chunk_size=1024 * 1024,
                              on_progress=sent.append)
    assert result == "uploaded"
    assert sum(sent) == len(data)
    assert hashlib.sha256(b"".join(repo.iter_blob(d))).hexdigest() == d.split(":")[1]


def test_upload_of_wrong_content_commits_nothing(client, registry):
    repo = client.repository(registry.host, "client/wrong")
    data, d = _blob(2 * 1024 * 1024, 3)
    bad = bytearray(data)
    bad[1000] ^= 0xFF
    with pytest.raises(DigestMismatchError):
        repo.upload_blob(d, len(data), lambda off: [bytes(bad[off:])], chunk_size=1024 * 1024)
    assert not repo.has_blob(d)
    # Monolithic: the registry itself refuses the PUT whose content does not match.
    with pytest.raises(RegistryError):
        repo.upload_blob(d, len(data), lambda off: [bytes(bad[off:])], monolithic=True)
    assert not repo.has_blob(d)


def test_cross_repo_mount(client, registry):
    src = client.repository(registry.host, "client/mount-src")
    dst = client.repository(registry.host, "client/mount-dst")
    data, d = _blob(50_000, 4)
    _push_blob(src, data)
    assert dst.upload_blob(d, len(data), lambda off: [data[off:]], mount_from=["client/mount-src"]) == "mounted"
    assert dst.blob_size(d) == len(data)
    # Mounting from a repository that lacks the blob falls back to uploading.
    other, od = _blob(10_000, 5)
    assert dst.upload_blob(od, len(other), lambda off: [other[off:]], mount_from=["client/nothing"]) == "uploaded"
    assert dst.has_blob(od)


@pytest.mark.parametrize("media_type", [mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST])
def test_manifest_put_get_head_delete(client, registry, media_type):
    name = "client/manifest-" + media_type.split(".")[2]
    repo = client.repository(registry.host, name)
    data = _image_manifest(repo, media_type)
    d = repo.put_manifest("v1", data, media_type)
    assert d == digest_bytes(data)
    got = repo.get_manifest("v1")
    assert got.data == data and got.media_type == media_type and got.digest == d
    assert repo.get_manifest(d).data == data
    info = repo.head_manifest("v1")
    assert info is not None and info.digest == d and info.size == len(data)
    assert repo.delete_manifest("v1") == d
    assert repo.head_manifest(d) is None
    with pytest.raises(NotFoundError):
        repo.get_manifest("v1")


@pytest.mark.parametrize("index_type,child_type", [
    (mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST),
    (mediatypes.DOCKER_MANIFEST_LIST, mediatypes.DOCKER_MANIFEST)])
def test_index_types(client, registry, index_type, child_type):
    repo = client.repository(registry.host, "client/index-" + index_type.split(".")[-1].split("+")[0])
    children = []
    for seed, arch in enumerate(["amd64", "arm64"]):
        m = _image_manifest(repo, child_type, seed=10 + seed)
        children.append({"mediaType": child_type, "digest": repo.put_manifest(digest_bytes(m), m, child_type),
                         "size": len(m), "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": children}).encode()
    d = repo.put_manifest("multi", index, index_type)
    got = repo.get_manifest("multi")
    assert got.media_type == index_type and got.digest == d
    assert [m["digest"] for m in got.json()["manifests"]] == [c["digest"] for c in children]


def test_tags_pagination(client, registry):
    repo = client.repository(registry.host, "client/tags")
    data = _image_manifest(repo)
    names = [f"t{i}" for i in range(7)]
    for t in names:
        repo.put_manifest(t, data, mediatypes.OCI_MANIFEST)
    assert sorted(repo.tags(page_size=2)) == names
    assert sorted(repo.tags()) == names


def test_catalog(client, fresh_registry):
    for name in ("a/one", "b/two", "c/three"):
        repo = client.repository(fresh_registry.host, name)
        repo.put_manifest("x", _image_manifest(repo), mediatypes.OCI_MANIFEST)
    assert client.catalog(fresh_registry.host, page_size=2) == ["a/one", "b/two", "c/three"]


def test_missing_things_raise_not_found(client, registry):
    repo = client.repository(registry.host, "client/none")
    _, d = _blob(10, 6)
    assert repo.blob_size(d) is None
    with pytest.raises(NotFoundError):
        b"".join(repo.iter_blob(d))
    with pytest.raises(NotFoundError):
        repo.get_manifest("nope")
    with pytest.raises(NotFoundError):
        repo.delete_manifest("nope")


def test_referrers_tag_schema_fallback(client, registry):
    repo = client.repository(registry.host, "client/referrers")
    subject = _image_manifest(repo)
    sd = repo.put_manifest("app", subject, mediatypes.OCI_MANIFEST)
    assert repo.referrers(sd) == []
    empty = b"{}"
    ed = _push_blob(repo, empty)
    artifacts = {}
    for kind in ("application/vnd.example.sbom", "application/vnd.example.sig"):
        art = json.dumps({
            "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST, "artifactType": kind,
            "config": {"mediaType": mediatypes.OCI_EMPTY, "digest": ed, "size": 2},
            "layers": [{"mediaType": mediatypes.OCI_EMPTY, "digest": ed, "size": 2}],
            "subject": {"mediaType": mediatypes.OCI_MANIFEST, "digest": sd, "size": len(subject)},
        }).encode()
        artifacts[kind] = repo.put_manifest(digest_bytes(art), art, mediatypes.OCI_MANIFEST)
    # registry 2.8 has no referrers API: the client kept the sha256-<hex> index up to date.
    assert repo.referrers_tag(sd) in repo.tags()
    found = repo.referrers(sd)
    assert sorted(m["digest"] for m in found) == sorted(artifacts.values())
    sig = repo.referrers(sd, artifact_type="application/vnd.example.sig")
    assert [m["digest"] for m in sig] == [artifacts["application/vnd.example.sig"]]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Storage backend stand-in on another loopback address: records the headers it receives."""
    seen: list[dict] = []

    def do_GET(self):
        _Recorder.seen.append(dict(self.headers))
        body = b"blob-bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self):
        self.send_response(307)
        self.send_header("Location", _Redirector.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_authorization_not_forwarded_to_another_host(client):
    storage = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Recorder)
    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    _Redirector.target = f"http://127.0.0.2:{storage.server_address[1]}"
    for srv in (storage, front):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{front.server_address[1]}"
        resp = client.request(host, "GET", "/v2/x/blobs/sha256:00", scopes=[],
                              headers={"Authorization": "Bearer secret-token"})
        assert resp.content == b"blob-bytes"
        assert _Recorder.seen and all("Authorization" not in h for h in _Recorder.seen)
    finally:
        storage.shutdown()
        front.shutdown()


def test_rate_limit_headers_in_error_and_no_futile_retries(registry, fault_proxy):
    """Docker Hub answers 429 with ratelimit-* headers when the pull quota is spent: the error
    shows them, and the client does not keep retrying a quota that refills over hours."""
    rule = fault_proxy.add("status", status=429, path="/manifests/", times=-1,
                           headers={"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"})
    c = fast_client()
    with pytest.raises(RegistryError) as e:
        c.repository(fault_proxy.host, "library/busybox").get_manifest("latest")
    c.close()
    msg = str(e.value)
    assert "rate limited" in msg and "ratelimit-limit: 100;w=21600" in msg and "ratelimit-remaining: 0" in msg
    assert rule.hits == 1


def test_retry_after_is_honoured_then_succeeds(registry, fault_proxy):
    repo_direct = RegistryClient().repository(registry.host, "client/retry")
    data = _image_manifest(repo_direct)
    repo_direct.put_manifest("v1", data, mediatypes.OCI_MANIFEST)
    slept: list[float] = []
    c = RegistryClient(ClientOptions(backoff_initial=0.01, backoff_max=0.05), sleep=slept.append)
    fault_proxy.add("status", status=503, path="/manifests/", times=2, headers={"Retry-After": "2"})
    assert c.repository(fault_proxy.host, "client/retry").get_manifest("v1").data == data
    assert len(slept) == 2 and all(s >= 2 for s in slept)
    c.close()


def test_unreachable_loopback_registry_is_probed_again_later():
    from tests.fixtures.registry import free_port, start_registry
    port = free_port()
    c = RegistryClient(ClientOptions(retries=0))
    with pytest.raises(RegistryError, match="connection failed"):
        c.ping(f"127.0.0.1:{port}")
    reg = start_registry({"http": {"addr": f"127.0.0.1:{port}"}})
    try:
        assert c.ping(reg.host) and c.base_url(reg.host) == f"http://{reg.host}"
    finally:
        reg.stop()
        c.close()


def test_insecure_registry_skips_tls_verification(tls_registry, cred_env, monkeypatch, tmp_path):
    """--insecure-registry HOST: a registry whose CA we do not have still works, over https."""
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(tmp_path / "empty-certs.d"))
    c = RegistryClient(ClientOptions(insecure_registries=(tls_registry.host,)))
    try:
        repo = c.repository(tls_registry.host, "client/insecure")
        data = _image_manifest(repo)
        digest = repo.put_manifest("v1", data, mediatypes.OCI_MANIFEST)
        assert c.base_url(tls_registry.host).startswith("https://")
        assert repo.get_manifest("v1").digest == digest
    finally:
        c.close()


class _KeepAlive(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the client's port; /close also ends the connection."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_session_reuses_connections_and_survives_closed_ones():
    from registry.http import Session
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    s = Session()
    try:
        ports = [s.request("GET", f"{base}/a", {}).content for _ in range(3)]
        assert len(set(ports)) == 1                      # one keep-alive connection
        s.request("GET", f"{base}/close", {})            # the server hangs up after this answer
        after = s.request("GET", f"{base}/a", {}).content
        assert after != ports[0]                         # a fresh connection, no error
        streamed = s.request("GET", f"{base}/a", {}, stream=True)
        assert b"".join(streamed.iter_bytes(1)) == after  # read to the end: back to the pool
        assert s.request("GET", f"{base}/a", {}).content == after
    finally:
        s.close()
        srv.shutdown()


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy (absolute-form request lines); records what it forwarded."""
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, str | None]] = []

    def _forward(self):
        import http.client
        from urllib.parse import urlsplit as split
        u = split(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        _ForwardProxy.seen.append((self.command, self.path, self.headers.get("Proxy-Authorization")))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")}
        up = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        up.request(self.command, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers)
        r = up.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        up.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args):
        pass


def test_http_proxy_from_environment(registry, monkeypatch):
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    _ForwardProxy.seen.clear()
    monkeypatch.setenv("HTTP_PROXY", f"http://bob:pw@127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    c = fast_client()
    try:
        repo = c.repository(registry.host, "client/proxied")
        data = _image_manifest(repo)
        d = repo.put_manifest("v1", data, mediatypes.OCI_MANIFEST)
        assert repo.get_manifest("v1").digest == d
    finally:
        c.close()
        proxy.shutdown()
    methods = {m for m, _, _ in _ForwardProxy.seen}
    assert {"GET", "POST", "PUT"} <= methods
    assert all(path.startswith(f"http://{registry.host}/v2/") for _, path, _ in _ForwardProxy.seen)
    assert all(auth == "Basic Ym9iOnB3" for _, _, auth in _ForwardProxy.seen)
