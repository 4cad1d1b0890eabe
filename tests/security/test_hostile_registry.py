"""A hostile distribution server on loopback: credentials stay with their registry, everything read
from the network is bounded, refusals are clear errors.

Each test runs the attack against real servers (a `HostileServer` below, registry:2 from the
fixtures) and asserts what the other side received or sent: the other host's server records every
header it got, endless bodies count the bytes they managed to send, and manifest GETs are counted
where they arrive (the fault proxy's log).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

import pytest

from registry import mediatypes
from registry.client import MAX_PAGES
from registry.credentials import lookup_credential
from registry.digest import digest_bytes
from registry.errors import AuthError, InvalidReferenceError, NotFoundError, RegistryError
from registry.reference import parse_reference
from tests.fixtures.cli import REPO, run_pybuild
from tests.fixtures.loopback_http import LoopbackHTTPServer
from tests.fixtures.registry import fast_client

ENDLESS_LIMIT = 1 << 30          # an "endless" body stops here at the latest, so a failing test ends
CHUNK = b"A" * (1 << 16)


@dataclass
class Seen:
    """One request a HostileServer answered."""
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HostileServer(LoopbackHTTPServer):
    """An HTTP(S) server whose answers a test programs: `route(request) -> (status, headers, body)`,
    where body is bytes or "endless" (a chunked body that does not stop until the client hangs up).
    Records every request with its headers, and how many body bytes it sent."""
    route: Callable[["HostileServer", Seen], tuple[int, dict[str, str], bytes | str]] = None  # type: ignore[assignment]
    tls: tuple[str, str] | None = None
    seen: list[Seen] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "HostileServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                req = Seen(self.command, self.path, {k: v for k, v in self.headers.items()})
                with server.lock:
                    server.seen.append(req)
                status, headers, body = server.route(server, req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if body == "endless":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        while server.sent < ENDLESS_LIMIT:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                            with server.lock:
                                server.sent += len(CHUNK)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self._serve(Handler, "hostile-registry", self.tls)
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def authorizations(self) -> list[str]:
        return [s.headers.get("Authorization", "") for s in self.seen if s.headers.get("Authorization")]


@pytest.fixture
def servers():
    started: list[HostileServer] = []

    def make(route, tls=None) -> HostileServer:
        s = HostileServer(route=route, tls=tls).start()
        started.append(s)
        return s
    yield make
    for s in started:
        s.stop()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _auth_config(monkeypatch, host: str, user: str, password: str) -> None:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    monkeypatch.setenv("PYBUILD_AUTH_CONFIG", json.dumps({"auths": {host: {"auth": auth}}}))


def _maxrss_mib() -> float:
    """This process's resident set in MiB, after resetting its high-water mark (clear_refs 5):
    what a later _peak_mib() reads is the peak since this call, whatever ran in the session
    before (ru_maxrss never goes down, and a child inherits its forking parent's)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    return _status_mib("VmHWM")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


# -- credentials by exact host -------------------------------------------------------------------

def test_per_host_env_variable_never_reaches_a_host_that_folds_alike(cred_env, monkeypatch):
    """registry-gitlab.com folds to the same variable name as registry.gitlab.com: the variable
    serves only the host it can name, and the look-alike is refused with a pointer to the JSON
    variable, never handed the token."""
    monkeypatch.setenv("PYBUILD_REGISTRY_REGISTRY_GITLAB_COM_USER", "ci")
    monkeypatch.setenv("PYBUILD_REGISTRY_REGISTRY_GITLAB_COM_PASSWORD", "glpat-secret")
    cred = lookup_credential("registry.gitlab.com")
    assert cred is not None and cred.password == "glpat-secret"
    for lookalike in ("registry-gitlab.com", "registry_gitlab.com", "registry.gitlab-com"):
        with pytest.raises(AuthError) as e:
            lookup_credential(lookalike)
        assert "PYBUILD_AUTH_CONFIG" in str(e.value) and "glpat-secret" not in str(e.value)
    # Without a folded variable set, such hosts simply have no environment credential.
    monkeypatch.delenv("PYBUILD_REGISTRY_REGISTRY_GITLAB_COM_USER")
    monkeypatch.delenv("PYBUILD_REGISTRY_REGISTRY_GITLAB_COM_PASSWORD")
    assert lookup_credential("registry-gitlab.com") is None


def test_auth_config_variable_is_exact_per_host(cred_env, monkeypatch):
    auth = base64.b64encode(b"me:tok-1").decode()
    other = base64.b64encode(b"you:tok-2").decode()
    monkeypatch.setenv("PYBUILD_AUTH_CONFIG", json.dumps({"auths": {
        "registry.gitlab.com": {"auth": auth}, "registry-gitlab.com": {"auth": other},
        "https://index.docker.io/v1/": {"username": "hub", "password": "hubpw"}}}))
    assert lookup_credential("registry.gitlab.com").password == "tok-1"
    assert lookup_credential("registry-gitlab.com").password == "tok-2"
    assert lookup_credential("docker.io").password == "hubpw"
    assert lookup_credential("registry.gitlab.com:5000") is None
    monkeypatch.setenv("PYBUILD_AUTH_CONFIG", "{not json")
    with pytest.raises(AuthError, match="PYBUILD_AUTH_CONFIG is not valid JSON"):
        lookup_credential("ghcr.io")


def test_auth_config_variable_logs_in_to_a_real_basic_registry(basic_registry, cred_env, monkeypatch):
    from tests.registry.test_auth import _push_image
    _auth_config(monkeypatch, basic_registry.host, "alice", basic_registry.users["alice"])
    with fast_client() as c:
        digest, _ = _push_image(c, basic_registry.host, "authconfig/app")
        assert c.repository(basic_registry.host, "authconfig/app").get_manifest("v1").digest == digest


def _basic_registry_route(password: str, other: Callable[[], HostileServer], *, blob_redirect: bool = False,
                          upload_location: bool = False):
    """A registry that wants Basic alice:PASSWORD and points at OTHER for blobs or uploads."""
    def route(server: HostileServer, req: Seen):
        if req.headers.get("Authorization") != _basic("alice", password):
            return 401, {"WWW-Authenticate": 'Basic realm="hostile"'}, b""
        if req.path == "/v2/":
            return 200, {}, b"{}"
        if blob_redirect and "/blobs/sha256:" in req.path:
            return 307, {"Location": f"{other().url}/cdn{req.path}"}, b""
        if upload_location and req.method == "POST" and "/blobs/uploads/" in req.path:
            return 202, {"Location": f"{other().url}/upload/1", "Docker-Upload-UUID": "1"}, b""
        if req.method == "HEAD":
            return 404, {}, b""
        return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"UNKNOWN"}]}'
    return route


def test_401_bearer_from_a_redirect_target_gets_no_credentials(servers, cred_env, monkeypatch):
    """CVE-2020-15157 pattern: the registry redirects a blob to another host, which answers 401
    with a Bearer realm of its own. The realm must not be learned, nor Basic credentials sent."""
    other = servers(lambda s, req: (401, {"WWW-Authenticate": f'Bearer realm="{s.url}/token",service="x"'}, b""))
    reg = servers(_basic_registry_route("pw-123", lambda: other, blob_redirect=True))
    _auth_config(monkeypatch, reg.host, "alice", "pw-123")
    d = "sha256:" + "ab" * 32
    with fast_client() as c:
        repo = c.repository(reg.host, "app")
        with pytest.raises(AuthError) as e:
            b"".join(repo.iter_blob(d))
        assert other.host in str(e.value) and "is not registry" in str(e.value)
        assert c.ping(reg.host)
        # The registry's own authentication is unchanged: Basic still works there afterwards.
        with pytest.raises(NotFoundError):
            repo.get_manifest("v1")
    assert [s.path for s in other.seen if "/token" in s.path] == []      # realm never asked
    assert other.authorizations() == []                                 # no credential, any kind
    assert any(s.path.startswith("/cdn/") for s in other.seen)          # the redirect did happen


def test_upload_location_on_another_host_gets_no_authorization(servers, cred_env, monkeypatch):
    other = servers(lambda s, req: (201, {"Docker-Content-Digest": "sha256:" + "00" * 32}, b""))
    reg = servers(_basic_registry_route("pw-456", lambda: other, upload_location=True))
    _auth_config(monkeypatch, reg.host, "alice", "pw-456")
    data = b"layer bytes"
    with fast_client() as c:
        outcome = c.repository(reg.host, "app").upload_blob(digest_bytes(data), len(data), lambda off: [data[off:]],
                                                            monolithic=True)
    assert outcome == "uploaded"
    assert [s.method for s in other.seen] == ["PUT"]
    assert other.authorizations() == []
    assert reg.authorizations()                 # the registry itself did get its credential


def test_https_registry_with_plain_http_realm_is_refused(servers, test_ca, cred_env, monkeypatch, tmp_path):
    realm = servers(lambda s, req: (200, {"Content-Type": "application/json"}, b'{"token":"t"}'))
    cert, key = test_ca.issue("hostile tls registry", hosts=["127.0.0.1"]).write(tmp_path, "reg")
    reg = servers(lambda s, req: (401, {"WWW-Authenticate": f'Bearer realm="{realm.url}/token",service="s"'}, b""),
                  tls=(str(cert), str(key)))
    certs = tmp_path / "certs.d" / reg.host
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes(test_ca.cert_pem)
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(tmp_path / "certs.d"))
    _auth_config(monkeypatch, reg.host, "alice", "pw-789")
    with fast_client() as c, pytest.raises(AuthError) as e:
        c.repository(reg.host, "app").tags()
    assert "plain-http token realm" in str(e.value) and "pw-789" not in str(e.value)
    assert realm.seen == []
    assert reg.seen                             # the request did reach the (https) registry


# -- bounded bodies ---------------------------------------------------------------------------------

def _bounded(server: HostileServer, before_mib: float) -> None:
    """The client stopped reading long before the endless body would end, in bounded memory."""
    assert server.sent < 128 << 20, server.sent
    assert _peak_mib() - before_mib < 200


def test_endless_v2_probe_and_404_bodies_are_cut_off(servers):
    server = servers(lambda s, req: (200 if req.path == "/v2/" else 404, {}, "endless"))
    before = _maxrss_mib()
    with fast_client() as c:
        assert c.ping(server.host)                       # the probe and ping read a bounded prefix
        with pytest.raises(NotFoundError) as e:
            c.repository(server.host, "app").get_manifest("v1")
    assert f"{server.host}/app" in str(e.value)
    _bounded(server, before)


def test_endless_tag_list_page_is_refused(servers):
    def route(s, req):
        if req.path == "/v2/":
            return 200, {}, b"{}"
        return 200, {"Content-Type": "application/json"}, "endless"
    server = servers(route)
    before = _maxrss_mib()
    with fast_client() as c, pytest.raises(RegistryError) as e:
        c.repository(server.host, "app").tags()
    assert "larger than" in str(e.value) and f"{server.host}/v2/app/tags/list" in str(e.value)
    _bounded(server, before)


def test_endless_token_response_is_refused(servers):
    def route(s, req):
        if req.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, "endless"
        return 401, {"WWW-Authenticate": f'Bearer realm="{s.url}/token",service="s"'}, b""
    server = servers(route)
    before = _maxrss_mib()
    with fast_client() as c, pytest.raises(AuthError) as e:
        c.repository(server.host, "app").tags()
    assert "answered more than" in str(e.value) and "/token" in str(e.value)
    _bounded(server, before)


def test_endless_link_pagination_stops_at_the_page_cap(servers):
    def route(s, req):
        if req.path == "/v2/":
            return 200, {}, b"{}"
        n = len(s.seen)
        return 200, {"Content-Type": "application/json",
                     "Link": f'</v2/app/tags/list?n=1&last=t{n}>; rel="next"'}, json.dumps({"tags": [f"t{n}"]}).encode()
    server = servers(route)
    with fast_client() as c, pytest.raises(RegistryError) as e:
        c.repository(server.host, "app").tags()
    assert f"past {MAX_PAGES} pages" in str(e.value)
    assert sum(1 for s in server.seen if "/tags/list" in s.path) == MAX_PAGES


def test_link_pagination_that_loops_ends(servers):
    def route(s, req):
        if req.path == "/v2/":
            return 200, {}, b"{}"
        return 200, {"Content-Type": "application/json", "Link": '</v2/app/tags/list>; rel="next"'}, \
            b'{"tags": ["a"]}'
    server = servers(route)
    with fast_client() as c:
        assert c.repository(server.host, "app").tags() == ["a"]
    assert sum(1 for s in server.seen if "/tags/list" in s.path) == 1


# -- manifests ----------------------------------------------------------------------------------------

def test_deeply_nested_manifest_is_a_clear_error(servers):
    body = b'{"schemaVersion":2,"annotations":' + b"[" * 200000 + b"]" * 200000 + b"}"

    def route(s, req):
        if req.path == "/v2/":
            return 200, {}, b"{}"
        return 200, {"Content-Type": mediatypes.OCI_MANIFEST}, body
    server = servers(route)
    with fast_client() as c, pytest.raises(RegistryError) as e:
        c.repository(server.host, "app").get_manifest("v1")
    assert "nested more than" in str(e.value) and f"{server.host}/app" in str(e.value)
    out = run_pybuild("pull", f"{server.host}/app:v1",
                      root=Path(os.environ.get("TMPDIR", "/tmp")) / f"pybuild-hostile-{os.getpid()}")
    assert out.returncode != 0 and "Traceback" not in out.stderr and "nested more than" in out.stderr


def test_index_naming_a_stored_layer_as_a_manifest_is_refused(servers, tmp_path):
    """A pull reads the manifests the store already holds from the store: a hostile index that
    names a big layer the store has as its platform's manifest gets a clear refusal, not the layer
    read whole into memory as JSON; nothing is tagged."""
    from registry.store import Store
    from registry.transfer import pull
    store = Store(tmp_path / "root")
    with store.blob_writer() as w:                               # a 48 MiB "layer" already stored
        for _ in range(48):
            w.write(os.urandom(1 << 20))
    big = w.descriptor
    index = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": big.digest, "size": big.size,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()

    def route(s, req):
        if req.path == "/v2/":
            return 200, {}, b"{}"
        if req.path == "/v2/app/manifests/v1":
            return 200, {"Content-Type": mediatypes.OCI_INDEX, "Docker-Content-Digest": digest_bytes(index)}, index
        return 404, {}, b""
    server = servers(route)
    before = _maxrss_mib()
    with fast_client() as c, pytest.raises(RegistryError) as e:
        pull(c, f"{server.host}/app:v1", store, platform="linux/amd64")
    assert _peak_mib() - before < 24                               # the 48 MiB blob was not read
    assert f"manifest {big.digest}" in str(e.value) and "refusing the index" in str(e.value)
    assert store.list_images() == []
    assert not any("/manifests/sha256:" in s.path for s in server.seen)


def _push_dag(client, host: str, name: str, levels: int) -> str:
    """An image manifest under LEVELS indexes, each listing the one below twice: 2^LEVELS paths
    through LEVELS + 1 manifests. Returns the top index's digest (also tagged `dag`)."""
    from tests.registry.test_auth import _push_image
    repo = client.repository(host, name)
    digest, manifest = _push_image(client, host, name)
    data = json.dumps(manifest).encode()
    desc = {"mediaType": mediatypes.OCI_MANIFEST, "digest": digest, "size": len(data),
            "platform": {"architecture": "amd64", "os": "linux"}}
    for i in range(levels):
        index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                 "manifests": [desc, dict(desc, annotations={"copy": str(i)})]}
        data = json.dumps(index).encode()
        digest = repo.put_manifest(digest_bytes(data), data, mediatypes.OCI_INDEX)
        desc = {"mediaType": mediatypes.OCI_INDEX, "digest": digest, "size": len(data),
                "platform": {"architecture": "amd64", "os": "linux"}}
    repo.put_manifest("dag", data, mediatypes.OCI_INDEX)
    return digest


def test_copy_of_a_manifest_dag_fetches_each_manifest_once(fault_proxy, registry2):
    """24 indexes each listing the next twice (2^24 paths): the copy reads each manifest once."""
    from registry.transfer import copy
    with fast_client() as c:
        top = _push_dag(c, fault_proxy.host, "dag/src", 24)
        fault_proxy.clear()
        result = copy(c, f"{fault_proxy.host}/dag/src:dag", f"{registry2.host}/dag/dst:dag", all_platforms=True)
        assert result.digest == top
        assert c.repository(registry2.host, "dag/dst").get_manifest("dag").digest == top
    gets = [p for m, p, _, _ in fault_proxy.log if m == "GET" and "/manifests/" in p]
    assert len(gets) <= 26, len(gets)          # the tag, then each of the 25 manifests at most once


def test_pull_of_one_platform_through_a_nested_index(registry, tmp_path):
    """An index whose platform entry is itself an index is descended (it gave IndexError)."""
    from registry.store import open_store
    from registry.transfer import pull
    with fast_client() as c:
        _push_dag(c, registry.host, "nested/app", 2)
        store = open_store(tmp_path / "root")
        result = pull(c, f"{registry.host}/nested/app:dag", store, platform="linux/amd64")
    assert result.platforms == ["linux/amd64"]


# -- references ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["busybox:ｖ1", "busybox:v١", "bü/x:1", "busybox:v1\u200b", "busybox:é"])
def test_unicode_references_are_refused(ref):
    with pytest.raises(InvalidReferenceError) as e:
        parse_reference(ref)
    assert "not ASCII" in str(e.value)


def test_unicode_tag_on_the_command_line_is_a_clear_error(tmp_path):
    out = run_pybuild("pull", "127.0.0.1:1/app:tag\u0661", root=tmp_path / "root", timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "not ASCII" in out.stderr


# -- ADD <URL> ----------------------------------------------------------------------------------------

def test_add_url_with_an_endless_body_is_cut_off_on_disk(servers, tmp_path):
    """ADD of an endless URL: the build fails at the size cap naming the URL, having streamed to a
    temporary file (the pybuild process's peak memory stays far below what it downloaded)."""
    server = servers(lambda s, req: (200, {"Content-Type": "application/octet-stream"}, "endless"))
    cap = 256 << 20
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {server.url}/big.bin /big.bin\n")
    probe = ("import runpy, sys\n"
             "sys.argv = ['pybuild'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('builder', run_name='__main__')\n"
             "finally:\n"
             "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
             "    print('MAXRSS', hwm.split()[1], file=sys.stderr)\n")
    env = dict(os.environ, PYBUILD_ADD_URL_MAX_BYTES=str(cap))
    out = subprocess.run([sys.executable, "-c", probe, "--root", str(tmp_path / "root"), "build", "-t", "addurl:x",
                          str(ctx)], capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and f"{server.url}/big.bin" in out.stderr
    assert f"more than the {cap} bytes allowed" in out.stderr
    maxrss_mib = int(out.stderr.rsplit("MAXRSS", 1)[1].split()[0]) / 1024
    assert server.sent >= cap                     # it really got that far
    assert maxrss_mib < 200, maxrss_mib           # ... without holding it in memory
    assert not (tmp_path / "root").exists() or "addurl" not in run_pybuild(
        "images", root=tmp_path / "root", timeout=60).stdout


def test_add_url_still_downloads_a_normal_file(servers, tmp_path):
    payload = hashlib.sha256(b"seed").digest() * 1000
    server = servers(lambda s, req: (200, {"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"}, payload))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD --checksum={digest} {server.url}/f.bin /f.bin\n")
    root = tmp_path / "root"
    out = run_pybuild("build", "-t", "addurl:ok", ctx, root=root, timeout=300)
    assert out.returncode == 0, out.stderr
    if shutil.which("umoci") is None:
        return
    from registry.store import open_store
    store = open_store(root)
    img = store.resolve("addurl:ok")
    manifest = json.loads(store.read_blob(img.digest))
    import gzip
    import io
    import tarfile
    layer = store.read_blob(manifest["layers"][-1]["digest"])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer)) as t:
        member = t.getmember("f.bin")
        assert t.extractfile(member).read() == payload
        assert member.mtime == 1445412480
