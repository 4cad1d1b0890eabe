"""Credential lookup and storage: environment, docker config.json, credential helpers, podman auth.json."""
from __future__ import annotations

import base64
import json
import stat
import sys

import pytest

from registry.credentials import (Credential, canonical_host, credential_override, env_var_stem,
                                  erase_credential, lookup_credential, save_credential)
from registry.errors import AuthError

# A real docker-credential-* helper speaking the protocol (get/store/erase on stdin/stdout),
# keeping its secrets in a JSON file next to itself and logging each call.
HELPER = f"""#!{sys.executable}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
store = os.path.join(here, "helper-store.json")
data = json.load(open(store)) if os.path.exists(store) else {{}}
action, payload = sys.argv[1], sys.stdin.read()
with open(os.path.join(here, "helper-calls.log"), "a") as log:
    log.write(action + " " + (payload.strip() if action != "store" else json.loads(payload)["ServerURL"]) + "\\n")
if action == "get":
    entry = data.get(payload.strip())
    if entry is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({{"ServerURL": payload.strip(), "Username": entry[0], "Secret": entry[1]}}))
elif action == "store":
    req = json.loads(payload)
    data[req["ServerURL"]] = [req["Username"], req["Secret"]]
    json.dump(data, open(store, "w"))
elif action == "erase":
    if data.pop(payload.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    json.dump(data, open(store, "w"))
else:
    sys.exit(2)
"""


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_canonical_host_and_docker_hub_aliases():
    for alias in ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/",
                  "HTTPS://Index.Docker.IO/v1/"):
        assert canonical_host(alias) == "docker.io"
    assert canonical_host("http://myreg:5000/v2/") == "myreg:5000"
    assert canonical_host("ghcr.io") == "ghcr.io"
    assert env_var_stem("127.0.0.1:5000") == "PYBUILD_REGISTRY_127_0_0_1_5000"
    assert env_var_stem("ghcr.io") == "PYBUILD_REGISTRY_GHCR_IO"


def test_credential_repr_and_str_hide_secrets():
    c = Credential("ann", "hunter2-pw", identity_token="tok-s3cret")
    for text in (repr(c), str(c), f"{c}", repr([c])):
        assert "hunter2-pw" not in text and "tok-s3cret" not in text
    assert "ann" in repr(c)


def test_nothing_configured_is_anonymous(cred_env):
    assert lookup_credential("example.com") is None


def test_environment_per_host_beats_generic(cred_env, monkeypatch):
    monkeypatch.setenv("PYBUILD_REGISTRY_HOST", "other.example")
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "any")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "any-pw")
    monkeypatch.setenv("PYBUILD_REGISTRY_MYREG_EXAMPLE_5000_USER", "special")
    monkeypatch.setenv("PYBUILD_REGISTRY_MYREG_EXAMPLE_5000_PASSWORD", "special-pw")
    # the environment wins over a stored entry
    _write(cred_env.config_json, {"auths": {"myreg.example:5000": {"auth": _auth("stored", "x")}}})
    assert lookup_credential("myreg.example:5000") == Credential("special", "special-pw")
    assert lookup_credential("other.example") == Credential("any", "any-pw")


def test_hostless_environment_credential_goes_only_to_the_named_registry(cred_env, monkeypatch):
    """PYBUILD_REGISTRY_USER/_PASSWORD used to be offered to every registry that asked (a
    hostile `FROM attacker.example/x` received them): now only PYBUILD_REGISTRY_HOST gets them,
    and without it they are an error, never a credential for whoever asks."""
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "ci")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "ci-secret")
    with pytest.raises(AuthError, match="PYBUILD_REGISTRY_HOST") as e:
        lookup_credential("attacker.example")
    assert "ci-secret" not in str(e.value)
    monkeypatch.setenv("PYBUILD_REGISTRY_HOST", "registry.example:5000")
    assert lookup_credential("registry.example:5000") == Credential("ci", "ci-secret")
    assert lookup_credential("attacker.example") is None
    assert lookup_credential("registry.example") is None        # the port is part of the host


def test_environment_password_file(cred_env, monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("PYBUILD_REGISTRY_HOST", "x.example")
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "ci")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD_FILE", str(secret))
    assert lookup_credential("x.example") == Credential("ci", "from-file")


def test_environment_user_without_password_is_an_error(cred_env, monkeypatch):
    monkeypatch.setenv("PYBUILD_REGISTRY_HOST", "x.example")
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "ci")
    with pytest.raises(AuthError, match="PYBUILD_REGISTRY_PASSWORD"):
        lookup_credential("x.example")


def test_docker_config_auths_forms(cred_env):
    _write(cred_env.config_json, {"auths": {
        "https://index.docker.io/v1/": {"auth": _auth("hubuser", "hub:pw:with:colons")},
        "http://legacy.example:5000/v2/": {"username": "old", "password": "old-pw"},
        "token.example": {"auth": _auth("", ""), "identitytoken": "refresh-123"},
        "empty.example": {},
    }})
    for alias in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert lookup_credential(alias) == Credential("hubuser", "hub:pw:with:colons")
    assert lookup_credential("legacy.example:5000") == Credential("old", "old-pw")
    assert lookup_credential("token.example") == Credential("", "", identity_token="refresh-123")
    assert lookup_credential("empty.example") is None
    assert lookup_credential("legacy.example") is None      # the port is part of the host


def test_broken_entries_give_clear_errors_without_secrets(cred_env):
    _write(cred_env.config_json, {"auths": {"bad.example": {"auth": base64.b64encode(b"nocolon-secretpw").decode()}}})
    with pytest.raises(AuthError) as e:
        lookup_credential("bad.example")
    assert "pybuild login bad.example" in str(e.value) and "secretpw" not in str(e.value)
    cred_env.config_json.write_text('{"auths": {"x": ')
    with pytest.raises(AuthError, match="not valid JSON"):
        lookup_credential("bad.example")


def test_cred_helpers_protocol(cred_env):
    cred_env.write_helper("fake", HELPER)
    (cred_env.bin_dir / "helper-store.json").write_text(json.dumps({
        "helped.example": ["helperuser", "helper-secret"],
        "https://index.docker.io/v1/": ["<token>", "hub-identity-token"],
    }))
    _write(cred_env.config_json, {"credHelpers": {"helped.example": "fake", "docker.io": "fake"},
                                  "auths": {"plain.example": {"auth": _auth("p", "q")}}})
    assert lookup_credential("helped.example") == Credential("helperuser", "helper-secret")
    # Docker Hub is asked for under its config key, and "<token>" means an identity token
    assert lookup_credential("registry-1.docker.io") == Credential("", "", identity_token="hub-identity-token")
    assert lookup_credential("plain.example") == Credential("p", "q")   # no helper for this host
    calls = (cred_env.bin_dir / "helper-calls.log").read_text().splitlines()
    assert calls == ["get helped.example", "get https://index.docker.io/v1/"]


def test_creds_store_not_found_falls_back_to_auths(cred_env):
    cred_env.write_helper("fake", HELPER)
    _write(cred_env.config_json, {"credsStore": "fake", "auths": {"a.example": {"auth": _auth("u", "v")}}})
    assert lookup_credential("a.example") == Credential("u", "v")
    assert lookup_credential("b.example") is None


def test_missing_helper_is_named(cred_env):
    _write(cred_env.config_json, {"credsStore": "nosuchstore"})
    with pytest.raises(AuthError) as e:
        lookup_credential("a.example")
    msg = str(e.value)
    assert "docker-credential-nosuchstore" in msg and "not found" in msg and str(cred_env.config_json) in msg


def test_failing_helper_reports_its_error(cred_env):
    cred_env.write_helper("broken", "#!/bin/sh\necho 'keychain locked' >&2\nexit 3\n")
    _write(cred_env.config_json, {"credHelpers": {"a.example": "broken"}})
    with pytest.raises(AuthError, match=r"docker-credential-broken get failed .*exit 3.*keychain locked"):
        lookup_credential("a.example")


def test_podman_auth_files_in_order(cred_env, monkeypatch, tmp_path):
    runtime_auth = cred_env.runtime_dir / "containers" / "auth.json"
    _write(runtime_auth, {"auths": {"p.example": {"auth": _auth("runtime", "1")},
                                    "q.example": {"auth": _auth("runtime", "2")}}})
    _write(cred_env.home / ".config" / "containers" / "auth.json",
           {"auths": {"r.example": {"auth": _auth("home", "3")}}})
    explicit = tmp_path / "explicit-auth.json"
    _write(explicit, {"auths": {"p.example": {"auth": _auth("explicit", "4")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    _write(cred_env.config_json, {"auths": {"q.example": {"auth": _auth("docker", "5")}}})
    assert lookup_credential("p.example") == Credential("explicit", "4")
    assert lookup_credential("q.example") == Credential("docker", "5")
    assert lookup_credential("r.example") == Credential("home", "3")


def test_save_and_erase_in_config_file(cred_env):
    _write(cred_env.config_json, {"auths": {"keep.example": {"auth": _auth("k", "k")}},
                                  "psFormat": "table {{.ID}}"})
    path = save_credential("index.docker.io", Credential("me", "my-pw"))
    assert path == cred_env.config_json
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "table {{.ID}}" and "keep.example" in doc["auths"]
    assert doc["auths"]["https://index.docker.io/v1/"] == {"auth": _auth("me", "my-pw")}
    assert lookup_credential("docker.io") == Credential("me", "my-pw")
    # a second login replaces, whatever alias the old key used
    save_credential("registry-1.docker.io", Credential("me2", "pw2"))
    assert [k for k in json.loads(path.read_text())["auths"] if "docker" in k] == ["https://index.docker.io/v1/"]
    assert erase_credential("docker.io") is True
    assert lookup_credential("docker.io") is None
    assert erase_credential("docker.io") is False
    assert lookup_credential("keep.example") == Credential("k", "k")


def test_save_creates_config_dir(cred_env, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "new" / "dir"))
    p = save_credential("n.example:5000", Credential("a", "b"))
    assert p == tmp_path / "new" / "dir" / "config.json"
    assert lookup_credential("n.example:5000") == Credential("a", "b")


def test_save_and_erase_through_helper(cred_env):
    cred_env.write_helper("fake", HELPER)
    _write(cred_env.config_json, {"credsStore": "fake"})
    save_credential("h.example", Credential("hu", "hidden-pw"))
    # the secret went to the helper, not into the file
    assert "hidden-pw" not in cred_env.config_json.read_text()
    assert json.loads(cred_env.config_json.read_text())["auths"] == {"h.example": {}}
    assert lookup_credential("h.example") == Credential("hu", "hidden-pw")
    assert erase_credential("h.example") is True
    assert lookup_credential("h.example") is None
    calls = (cred_env.bin_dir / "helper-calls.log").read_text().splitlines()
    assert calls == ["store h.example", "get h.example", "erase h.example", "get h.example"]


def test_credential_override(cred_env):
    _write(cred_env.config_json, {"auths": {"o.example": {"auth": _auth("file", "f")}}})
    with credential_override("o.example", Credential("mem", "m")):
        assert lookup_credential("o.example") == Credential("mem", "m")
    assert lookup_credential("o.example") == Credential("file", "f")


def test_unwritable_config_dir_is_a_clear_error(cred_env, monkeypatch, tmp_path):
    from registry.errors import RegistryError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DOCKER_CONFIG", str(blocker / "sub"))
    with pytest.raises(RegistryError, match="cannot write registry credentials file .*DOCKER_CONFIG"):
        save_credential("w.example", Credential("u", "secret-value"))
