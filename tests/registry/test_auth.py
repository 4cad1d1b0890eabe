"""Authentication against real registry:2 instances: HTTP Basic, Docker's token flow, TLS, login/logout.

The registries come from tests/fixtures/registry_secure.py; the client is registry.client's
RegistryClient, whose Authenticator (registry/auth.py) gets credentials from the environment or the
Docker config (isolated per test by `cred_env`).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from registry import mediatypes
from registry.auth import Authenticator, parse_challenges, repository_scopes
from registry.client import ClientOptions, RegistryClient
from registry.credentials import Credential, env_var_stem
from registry.digest import digest_bytes
from registry.errors import AuthError, RegistryError
from registry.tlsconfig import ca_bundle_for, client_cert_for
from tests.fixtures.registry import fast_client
from tests.fixtures.cli import run_pybuild

pytestmark = pytest.mark.integration


def _login_env(monkeypatch: pytest.MonkeyPatch, host: str, user: str, password: str) -> None:
    stem = env_var_stem(host)
    monkeypatch.setenv(f"{stem}_USER", user)
    monkeypatch.setenv(f"{stem}_PASSWORD", password)


def _blob(n: int, seed: int) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


def _push_image(client: RegistryClient, host: str, name: str, seed: int = 0, layers: int = 2) -> tuple[str, dict]:
    """Push a small OCI image (config + LAYERS layers) tagged `v1`; returns (manifest digest, manifest)."""
    repo = client.repository(host, name)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    descs = []
    for i, data in enumerate([config] + [_blob(5000 + i, seed * 100 + i) for i in range(layers)]):
        d = digest_bytes(data)
        assert repo.upload_blob(d, len(data), lambda off, data=data: [data[off:]]) in ("uploaded", "exists")
        descs.append({"mediaType": mediatypes.OCI_CONFIG if i == 0 else mediatypes.OCI_LAYER_GZIP,
                      "digest": d, "size": len(data)})
    manifest = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST, "config": descs[0], "layers": descs[1:]}
    data = json.dumps(manifest).encode()
    return repo.put_manifest("v1", data, mediatypes.OCI_MANIFEST), manifest


def _pull_image(client: RegistryClient, host: str, name: str) -> str:
    """Fetch tag v1 and every blob it names (each verified against its digest); the manifest digest."""
    repo = client.repository(host, name)
    m = repo.get_manifest("v1")
    doc = m.json()
    for desc in [doc["config"]] + doc["layers"]:
        assert digest_bytes(repo.fetch_blob(desc["digest"])) == desc["digest"]
    return m.digest


# -- WWW-Authenticate parsing ----------------------------------------------------------------------

def test_parse_challenges():
    h = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
         'scope="repository:samalba/my-app:pull,push",error="insufficient_scope"')
    assert parse_challenges(h) == [("bearer", {"realm": "https://auth.docker.io/token",
                                               "service": "registry.docker.io",
                                               "scope": "repository:samalba/my-app:pull,push",
                                               "error": "insufficient_scope"})]
    assert parse_challenges('Basic realm="a \\"quoted\\" realm", Bearer realm=https://x/t, scope="a b"') == [
        ("basic", {"realm": 'a "quoted" realm'}), ("bearer", {"realm": "https://x/t", "scope": "a b"})]
    assert parse_challenges("Negotiate") == [("negotiate", {})]
    assert parse_challenges("") == []


def test_repository_scopes():
    assert repository_scopes("a/b") == ["repository:a/b:pull"]
    assert repository_scopes("a/b", push=True, mount_from="c") == ["repository:a/b:pull,push",
                                                                   "repository:c:pull"]


# -- Basic -------------------------------------------------------------------------------------------

def test_basic_push_pull_round_trip(basic_registry, cred_env, monkeypatch):
    host = basic_registry.host
    _login_env(monkeypatch, host, "alice", basic_registry.users["alice"])
    with fast_client() as c:
        digest, _ = _push_image(c, host, "basic/roundtrip")
    with fast_client() as c:             # a fresh client: nothing cached
        assert _pull_image(c, host, "basic/roundtrip") == digest


def test_basic_without_credentials_says_how_to_log_in(basic_registry, cred_env):
    with fast_client() as c, pytest.raises(AuthError) as e:
        c.repository(basic_registry.host, "basic/anything").tags()
    assert f"pybuild login {basic_registry.host}" in str(e.value)


def test_basic_wrong_password_is_rejected_without_echoing_it(basic_registry, cred_env, monkeypatch):
    host = basic_registry.host
    _login_env(monkeypatch, host, "alice", "WrongPassw0rd")
    with fast_client() as c, pytest.raises(AuthError) as e:
        _push_image(c, host, "basic/denied")
    msg = str(e.value)
    assert "rejected" in msg and "'alice'" in msg and "WrongPassw0rd" not in msg


# -- Bearer tokens -----------------------------------------------------------------------------------

def test_token_pusher_pushes_puller_pulls_but_cannot_push(token_registry, cred_env, monkeypatch):
    host, server = token_registry.host, token_registry.server
    _login_env(monkeypatch, host, "pusher", "pushpass")
    with fast_client() as c:
        digest, manifest = _push_image(c, host, "tok/app", layers=4)
    # one token for the push scope serves the HEADs, the uploads and the manifest PUT
    assert server.issued_count("pusher") <= 2, server.requests

    _login_env(monkeypatch, host, "puller", "pullpass")
    with fast_client() as c:
        assert _pull_image(c, host, "tok/app") == digest
        with pytest.raises(AuthError) as e:
            _push_image(c, host, "tok/app", seed=7)
    msg = str(e.value)
    assert "denied user 'puller' push on repository tok/app" in msg and "pullpass" not in msg
    # nothing of the refused push landed
    _login_env(monkeypatch, host, "pusher", "pushpass")
    with fast_client() as c:
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": 7,
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        assert not c.repository(host, "tok/app").has_blob(digest_bytes(config))
        assert c.repository(host, "tok/app").get_manifest("v1").digest == digest


def test_token_anonymous_access(token_registry, cred_env, monkeypatch):
    host = token_registry.host
    _login_env(monkeypatch, host, "pusher", "pushpass")
    with fast_client() as c:
        digest, _ = _push_image(c, host, "public/tool")
        _push_image(c, host, "private/tool")
    monkeypatch.delenv(f"{env_var_stem(host)}_USER")
    with fast_client() as c:
        assert _pull_image(c, host, "public/tool") == digest      # anonymous token, pull granted
        with pytest.raises(AuthError) as e:
            c.repository(host, "private/tool").get_manifest("v1")
    assert "anonymous" in str(e.value) and f"pybuild login {host}" in str(e.value)


def test_token_server_rejects_wrong_password(token_registry, cred_env, monkeypatch):
    host = token_registry.host
    _login_env(monkeypatch, host, "pusher", "not-the-Password")
    with fast_client() as c, pytest.raises(AuthError) as e:
        c.repository(host, "tok/x").tags()
    msg = str(e.value)
    assert "rejected the credentials of user 'pusher'" in msg and token_registry.server.realm in msg
    assert "not-the-Password" not in msg


def test_identity_token_uses_oauth2_refresh_grant(token_registry, cred_env):
    host, server = token_registry.host, token_registry.server
    server.refresh_tokens["refresh-tok-1"] = "pusher"
    cred_env.config_json.write_text(json.dumps({"auths": {host: {"auth": "", "identitytoken": "refresh-tok-1"}}}))
    with fast_client() as c:
        digest, _ = _push_image(c, host, "tok/oauth")
        assert _pull_image(c, host, "tok/oauth") == digest
    assert server.requests and all(r.method == "POST" and r.user == "pusher" for r in server.requests)
    del server.refresh_tokens["refresh-tok-1"]
    with fast_client() as c, pytest.raises(AuthError, match="identity token"):
        c.repository(host, "tok/oauth").tags()


def test_cross_repo_mount_asks_for_source_pull_scope(token_registry, cred_env, monkeypatch):
    host, server = token_registry.host, token_registry.server
    _login_env(monkeypatch, host, "pusher", "pushpass")
    data = _blob(3000, 42)
    d = digest_bytes(data)
    with fast_client() as c:
        assert c.repository(host, "mnt/src").upload_blob(d, len(data), lambda off: [data[off:]]) == "uploaded"
        assert c.repository(host, "mnt/dst").upload_blob(d, len(data), lambda off: [data[off:]],
                                                         mount_from=["mnt/src"]) == "mounted"
        assert c.repository(host, "mnt/dst").fetch_blob(d) == data
    asked = [set(r.scopes) for r in server.requests]
    assert {"repository:mnt/dst:pull,push", "repository:mnt/src:pull"} in asked


def test_catalog_scope(token_registry, cred_env, monkeypatch):
    host = token_registry.host
    _login_env(monkeypatch, host, "pusher", "pushpass")
    with fast_client() as c:
        _push_image(c, host, "cat/one")
        assert "cat/one" in c.catalog(host)
    _login_env(monkeypatch, host, "puller", "pullpass")
    with fast_client() as c, pytest.raises(AuthError, match="denied user 'puller'.*registry catalog"):
        c.catalog(host)


def _slow_source(data: bytes, pieces: int, pause: float):
    """A blob source that yields DATA in PIECES with PAUSE seconds before each piece after the first."""
    step = max(1, len(data) // pieces)

    def source(offset: int):
        for i in range(offset, len(data), step):
            if i:
                time.sleep(pause)
            yield data[i:i + step]
    return source


def test_expiring_tokens_are_refreshed_before_use(token_registry, cred_env, monkeypatch):
    """Tokens that live 2 s and say so: a transfer of several requests over 3 s keeps going."""
    host, server = token_registry.host, token_registry.server
    server.lifetime = 2
    _login_env(monkeypatch, host, "pusher", "pushpass")
    data = os.urandom(7 * 4096)
    d = digest_bytes(data)
    with fast_client() as c:
        repo = c.repository(host, "refresh/ahead")
        # chunked upload: one PATCH per 4 KiB, each sent after a pause
        assert repo.upload_blob(d, len(data), _slow_source(data, 7, 0.5), chunk_size=4096) == "uploaded"
        assert repo.fetch_blob(d) == data
    assert server.issued_count("pusher") >= 2


def test_token_dying_early_is_replaced_after_401_mid_transfer(token_registry, cred_env, monkeypatch):
    """Tokens announced for 300 s that the registry refuses after 1-2 s: 401s in the middle of an
    upload and of a pull are answered with a new token and the transfers complete."""
    host, server = token_registry.host, token_registry.server
    server.lifetime, server.advertised_expires_in = 1, 300
    _login_env(monkeypatch, host, "pusher", "pushpass")
    data = os.urandom(6 * 4096)
    d = digest_bytes(data)
    with fast_client() as c:
        repo = c.repository(host, "refresh/early")
        assert repo.upload_blob(d, len(data), _slow_source(data, 6, 0.6), chunk_size=4096) == "uploaded"
        issued = server.issued_count("pusher")
        assert issued >= 2
        time.sleep(2.1)                              # the token in the cache is now refused
        assert repo.fetch_blob(d) == data
        assert server.issued_count("pusher") > issued


def test_authenticator_shares_one_token_between_threads(token_registry, cred_env):
    import requests

    host, server = token_registry.host, token_registry.server
    session = requests.Session()
    auth = Authenticator(host, Credential("puller", "pullpass"), session)
    url = f"{token_registry.registry.url}/v2/"
    first = session.get(url)
    assert first.status_code == 401 and auth.challenge(first, [])
    scopes = ["repository:threads/x:pull"]
    results: list[int] = []

    def work() -> None:
        for _ in range(5):
            r = session.get(f"{token_registry.registry.url}/v2/threads/x/tags/list", headers=auth.headers(scopes))
            results.append(r.status_code)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [404] * 40                        # authorized (the repository does not exist)
    assert sum(1 for r in server.requests if r.scopes == scopes) == 1
    assert "pullpass" not in repr(auth)


# -- TLS ---------------------------------------------------------------------------------------------

def test_tls_registry_trusted_through_certs_dir(tls_registry, cred_env, monkeypatch):
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(tls_registry.certs_dir))
    with fast_client() as c:
        assert c.base_url(tls_registry.host).startswith("https://")
        digest, _ = _push_image(c, tls_registry.host, "tls/app")
        assert _pull_image(c, tls_registry.host, "tls/app") == digest


def test_tls_registry_rejected_without_its_ca(tls_registry, cred_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(tmp_path / "empty-certs.d"))
    with fast_client() as c, pytest.raises(RegistryError) as e:
        c.repository(tls_registry.host, "tls/app").tags()
    msg = str(e.value)
    assert "TLS" in msg and f"certs.d/{tls_registry.host}/ca.crt" in msg


def test_ca_bundle_lookup(tmp_path, monkeypatch, test_ca):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("PYBUILD_CERTS_DIR", f"{a}{os.pathsep}{b}")
    assert ca_bundle_for("reg.example:5000") is None
    (b / "reg.example:5000").mkdir(parents=True)
    (b / "reg.example:5000" / "ca.crt").write_bytes(test_ca.cert_pem)
    bundle = ca_bundle_for("reg.example:5000")
    text = Path(bundle).read_bytes()
    assert text.endswith(test_ca.cert_pem) and text.count(b"BEGIN CERTIFICATE") > 1   # system roots kept
    assert ca_bundle_for("reg.example:5000") == bundle
    assert ca_bundle_for("reg.example") is None
    assert client_cert_for("reg.example:5000") is None
    leaf = test_ca.issue("client", server=False)
    leaf.write(b / "reg.example:5000", "client")
    (b / "reg.example:5000" / "client.crt").rename(b / "reg.example:5000" / "client.cert")
    assert client_cert_for("reg.example:5000") == (str(b / "reg.example:5000" / "client.cert"),
                                                   str(b / "reg.example:5000" / "client.key"))


# -- login / logout ------------------------------------------------------------------------------------

def _pybuild(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return run_pybuild(*args, stdin=stdin)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_login_logout_round_trip(kind, basic_registry, token_registry, cred_env):
    reg = basic_registry if kind == "basic" else token_registry
    user, pw = ("alice", basic_registry.users["alice"]) if kind == "basic" else ("pusher", "pushpass")
    host = reg.host

    bad = _pybuild("login", host, "-u", user, "--password-stdin", stdin="WrongOne\n")
    assert bad.returncode == 1 and "WrongOne" not in bad.stdout + bad.stderr
    assert "error:" in bad.stderr and "Traceback" not in bad.stderr
    assert not cred_env.config_json.exists()

    ok = _pybuild("login", host, "-u", user, "--password-stdin", stdin=pw + "\n")
    assert ok.returncode == 0, ok.stderr
    assert "Login Succeeded" in ok.stdout and pw not in ok.stdout + ok.stderr
    entry = json.loads(cred_env.config_json.read_text())["auths"][host]
    assert entry == {"auth": __import__("base64").b64encode(f"{user}:{pw}".encode()).decode()}
    # the saved credential is what later commands use
    with fast_client() as c:
        digest, _ = _push_image(c, host, f"login/{kind}")
        assert _pull_image(c, host, f"login/{kind}") == digest

    out = _pybuild("logout", host)
    assert out.returncode == 0 and "Removed login credentials" in out.stdout
    assert host not in json.loads(cred_env.config_json.read_text())["auths"]
    with fast_client() as c, pytest.raises(AuthError):
        _push_image(c, host, f"login/{kind}", seed=3)
    again = _pybuild("logout", host)
    assert again.returncode == 0 and "Not logged in" in again.stdout


def test_mutual_tls_client_certificate_from_certs_dir(mtls_registry, cred_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(mtls_registry.certs_dir))
    with fast_client() as c:
        digest, _ = _push_image(c, mtls_registry.host, "mtls/app")
        assert _pull_image(c, mtls_registry.host, "mtls/app") == digest
    # the same CA without the client pair: the registry refuses the handshake
    only_ca = tmp_path / "only-ca"
    (only_ca / mtls_registry.host).mkdir(parents=True)
    (only_ca / mtls_registry.host / "ca.crt").write_bytes(mtls_registry.ca_cert.read_bytes())
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(only_ca))
    with fast_client() as c, pytest.raises(RegistryError, match="TLS|connection"):
        c.repository(mtls_registry.host, "mtls/app").tags()


# -- interop: credentials written by skopeo, and by pybuild for skopeo ----------------------------------

def _skopeo(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def skopeo_bin():
    import shutil
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (Debian package skopeo; run scripts/setup.sh)")


def test_skopeo_login_file_is_used_by_pybuild(skopeo_bin, basic_registry, cred_env, monkeypatch, tmp_path):
    host = basic_registry.host
    authfile = tmp_path / "podman-auth.json"
    r = _skopeo("login", "--authfile", str(authfile), "--tls-verify=false", "-u", "bob", "--password-stdin",
                host, stdin=basic_registry.users["bob"] + "\n")
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    with fast_client() as c:
        digest, _ = _push_image(c, host, "interop/skopeo-login")
        assert _pull_image(c, host, "interop/skopeo-login") == digest


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_pybuild_login_is_used_by_skopeo(kind, skopeo_bin, basic_registry, token_registry, cred_env):
    reg = basic_registry if kind == "basic" else token_registry
    user, pw = ("bob", basic_registry.users["bob"]) if kind == "basic" else ("pusher", "pushpass")
    assert _pybuild("login", reg.host, "-u", user, "--password-stdin", stdin=pw).returncode == 0
    with fast_client() as c:
        digest, _ = _push_image(c, reg.host, f"interop/{kind}")
    r = _skopeo("inspect", "--raw", "--authfile", str(cred_env.config_json), "--tls-verify=false",
                f"docker://{reg.host}/interop/{kind}:v1")
    assert r.returncode == 0, r.stderr
    assert digest_bytes(r.stdout.encode()) == digest


def test_token_server_over_https_trusted_through_certs_dir(token_registry_https_realm, cred_env,
                                                          monkeypatch, tmp_path):
    host = token_registry_https_realm.host
    _login_env(monkeypatch, host, "pusher", "pushpass")
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(token_registry_https_realm.certs_dir))
    with fast_client() as c:
        digest, _ = _push_image(c, host, "realm/tls")
        assert _pull_image(c, host, "realm/tls") == digest
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(tmp_path / "no-certs"))
    with fast_client() as c, pytest.raises(AuthError) as e:
        c.repository(host, "realm/tls").tags()
    msg = str(e.value)
    assert "TLS verification of token server https://127.0.0.1:" in msg and "/ca.crt" in msg
    assert "pushpass" not in msg


def test_insecure_registry_reaches_its_self_signed_token_server(token_registry_https_realm, cred_env,
                                                                monkeypatch, tmp_path):
    from registry.client import RegistryClient
    host = token_registry_https_realm.host
    _login_env(monkeypatch, host, "pusher", "pushpass")
    monkeypatch.setenv("PYBUILD_CERTS_DIR", str(tmp_path / "no-certs"))
    # Like Docker: --insecure-registry HOST also skips verification of HOST's token realm.
    with RegistryClient(ClientOptions(insecure_registries=(host,))) as c:
        digest, _ = _push_image(c, host, "realm/insecure")
        assert _pull_image(c, host, "realm/insecure") == digest


def _response(status: int, www_authenticate: str | None, sent_auth: str | None = None):
    """A requests.Response as the client would hand it to challenge()."""
    import requests

    req = requests.Request("GET", "https://reg.example/v2/x/tags/list",
                           headers={"Authorization": sent_auth} if sent_auth else {}).prepare()
    resp = requests.Response()
    resp.status_code, resp.request, resp.url = status, req, req.url
    if www_authenticate is not None:
        resp.headers["WWW-Authenticate"] = www_authenticate
    return resp


def test_challenge_edge_cases():
    import requests

    session = requests.Session()
    anon = Authenticator("reg.example", None, session)
    assert anon.challenge(_response(404, None), []) is False          # not a 401: nothing to do
    with pytest.raises(AuthError, match="without a WWW-Authenticate"):
        anon.challenge(_response(401, None), [])
    with pytest.raises(AuthError, match="negotiate.*not support"):
        anon.challenge(_response(401, "Negotiate"), [])
    with pytest.raises(AuthError, match="requires a user name and password.*pybuild login reg.example"):
        anon.challenge(_response(401, 'Basic realm="r"'), [])
    assert anon.headers(["repository:x:pull"]) == {}

    alice = Authenticator("reg.example", Credential("alice", "s3cret-pw"), session)
    assert alice.headers([]) == {}                                      # nothing sent before a challenge
    assert alice.challenge(_response(401, 'Basic realm="r"'), []) is True
    sent = alice.headers([])["Authorization"]
    assert sent.startswith("Basic ")
    with pytest.raises(AuthError) as e:                                 # the same header refused again
        alice.challenge(_response(401, 'Basic realm="r"', sent_auth=sent), [])
    assert "'alice'" in str(e.value) and "s3cret-pw" not in str(e.value)


def test_registry_that_distrusts_the_token_server_is_reported(token_registry, test_ca, cred_env, monkeypatch,
                                                              tmp_path):
    """A registry configured for another issuer refuses every token at once: the error says that
    the registry and the token server disagree instead of blaming the (correct) password."""
    from tests.fixtures.registry_secure import start_secure_registry

    server = token_registry.server
    bundle = tmp_path / "ca.crt"
    bundle.write_bytes(test_ca.cert_pem)
    reg = start_secure_registry({"auth": {"token": {"realm": server.realm, "service": server.service,
                                                    "issuer": "somebody-else", "rootcertbundle": str(bundle)}}})
    try:
        _login_env(monkeypatch, reg.host, "pusher", "pushpass")
        with fast_client() as c, pytest.raises(AuthError) as e:
            c.repository(reg.host, "distrust/x").tags()
        msg = str(e.value)
        assert "refused a token" in msg and "disagree" in msg and "pushpass" not in msg
    finally:
        reg.stop()


def test_cli_pull_push_with_token_auth(token_registry, cred_env, tmp_path):
    """`pybuild login` as pusher, pull and push; as puller the push fails with a clear message."""
    host = token_registry.host
    assert _pybuild("login", host, "-u", "pusher", "--password-stdin", stdin="pushpass").returncode == 0
    with fast_client() as c:
        digest, _ = _push_image(c, host, "cli/app")
    root = str(tmp_path / "root")
    pulled = _pybuild("--root", root, "pull", f"{host}/cli/app:v1")
    assert pulled.returncode == 0, pulled.stderr
    pushed = _pybuild("--root", root, "push", f"{host}/cli/app:v1", f"{host}/cli/copy:v1")
    assert pushed.returncode == 0, pushed.stderr
    with fast_client() as c:
        assert c.repository(host, "cli/copy").get_manifest("v1").digest == digest

    assert _pybuild("login", host, "-u", "puller", "--password-stdin", stdin="pullpass").returncode == 0
    denied = _pybuild("--root", root, "push", f"{host}/cli/app:v1", f"{host}/cli/denied:v1")
    out = denied.stdout + denied.stderr
    assert denied.returncode == 1 and "Traceback" not in out
    assert "denied user 'puller' push on repository cli/denied" in denied.stderr
    assert "pullpass" not in out and "pushpass" not in out


def test_debug_logging_shows_no_secrets(token_registry, basic_registry, cred_env, monkeypatch, caplog):
    """With every logger at DEBUG (urllib3 logs each request line), no password or token leaks."""
    import logging

    caplog.set_level(logging.DEBUG)
    _login_env(monkeypatch, token_registry.host, "pusher", "pushpass")
    _login_env(monkeypatch, basic_registry.host, "alice", basic_registry.users["alice"])
    with fast_client() as c:
        _push_image(c, token_registry.host, "logs/tok")
        _push_image(c, basic_registry.host, "logs/basic")
    assert "/v2/" in caplog.text and "/token?" in caplog.text            # requests were logged
    for secret in ("pushpass", basic_registry.users["alice"], "Bearer ", "Basic "):
        assert secret not in caplog.text
