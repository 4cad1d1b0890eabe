"""Secrets stay secret: `--secret` values and registry credentials.

A build mounts a file secret and an env secret into RUN steps (they are really used: the image
records their lengths). Afterwards the secret values appear nowhere pybuild keeps or prints:
not in any blob of the store (layers decompressed), the image config or history, cache
records, extracted layer directories, temporary directories, the build log or the
--metadata-file. Registry passwords (and their base64 form) never appear in login errors,
authentication errors or push progress.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pybuild

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds run runc: needs root")


def _forms(secret: str) -> list[bytes]:
    """The secret as it could leak: raw, base64 (as in auth headers and config.json), hex."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


def _files_containing(top: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in top.rglob("*"):
        if p.is_symlink() or not p.is_file():
            continue
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                pass
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if any(n in data for n in needles):
            hits.append(str(p))
    return hits


@needs_root
@pytest.mark.timeout(180)
def test_build_secrets_leave_no_trace(busybox_image: Path, tmp_path: Path, monkeypatch) -> None:
    root = busybox_image
    file_secret = "file-secret-" + uuid.uuid4().hex
    env_secret = "env-secret-" + uuid.uuid4().hex
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(file_secret)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /tok-len\n"
        "RUN --mount=type=secret,id=tok,target=/etc/app/token wc -c < /etc/app/token > /target-len\n"
        "RUN --mount=type=secret,id=envtok,env=API_TOKEN sh -c 'echo ${#API_TOKEN} > /env-len'\n"
        "RUN --mount=type=secret,id=tok cp /run/secrets/tok /tmp/x && rm /tmp/x && ls /run/secrets > /listing\n")
    meta = tmp_path / "meta.json"
    env = {**os.environ, "MY_API_TOKEN": env_secret}
    r = run_pybuild("build", "--progress", "plain",
                    "--secret", f"id=tok,src={secret_file}", "--secret", "id=envtok,env=MY_API_TOKEN",
                    "--metadata-file", meta, "--iidfile", tmp_path / "iid", "-t", "sec:1", ctx,
                    root=root, env=env, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    log = r.stdout + r.stderr
    needles = _forms(file_secret) + _forms(env_secret)

    # The secrets were really there for the RUN steps ...
    from tests.fixtures.building import unpack_image
    rootfs = unpack_image(root, "sec:1", tmp_path / "bundle")
    assert (rootfs / "tok-len").read_text().strip() == str(len(file_secret))
    assert (rootfs / "target-len").read_text().strip() == str(len(file_secret))
    assert (rootfs / "env-len").read_text().strip() == str(len(env_secret))
    assert (rootfs / "listing").read_text().strip() == "tok"
    # ... and left nothing behind: no file and no mount point stub in the image.
    assert not (rootfs / "run" / "secrets" / "tok").exists()
    assert not (rootfs / "etc" / "app" / "token").exists()
    assert _files_containing(rootfs, needles) == []

    # Nowhere in the store root: blobs (layers, configs with history), cache, layers/, tmp/.
    assert _files_containing(root, needles) == []
    # Not in the log, the metadata file, or the config's history and env.
    assert not any(n.decode() in log for n in needles)
    assert not any(n in meta.read_bytes() for n in needles)
    from registry.store import Store
    cfg = Store(root).image_config("sec:1")
    text = json.dumps(cfg.to_dict())
    assert file_secret not in text and env_secret not in text
    assert "MY_API_TOKEN" not in text and "API_TOKEN=" not in text
    # A rebuild hits the cache although the secret's value changed: values are not in cache keys.
    secret_file.write_text("another-" + file_secret)
    r2 = run_pybuild("build", "--progress", "plain",
                     "--secret", f"id=tok,src={secret_file}", "--secret", "id=envtok,env=MY_API_TOKEN",
                     "-t", "sec:1", ctx, root=root, env=env, timeout=150)
    assert r2.returncode == 0, r2.stderr
    assert (r2.stdout + r2.stderr).count("CACHED") == 4, r2.stdout + r2.stderr


@needs_root
@pytest.mark.timeout(60)
def test_missing_secret_error_names_the_id_only(busybox_image: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok\n")
    r = run_pybuild("build", "--progress", "plain", ctx, root=busybox_image, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "secret tok is required" in r.stderr, r.stderr


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_pybuild(*args, stdin=stdin, timeout=60)


@pytest.mark.timeout(120)
def test_credentials_never_in_errors_or_progress(basic_registry, cred_env, busybox_image: Path) -> None:
    host = basic_registry.host
    good = basic_registry.users["alice"]
    wrong = "wrong-pw-" + uuid.uuid4().hex
    # A failed login names the registry and the user, never the password.
    r = _cli("login", "-u", "alice", "--password-stdin", host, stdin=wrong + "\n")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert all(n.decode() not in r.stdout + r.stderr for n in _forms(wrong) + _forms(f"alice:{wrong}"))
    # A good login, then a push with progress: the password is in no output.
    r = _cli("login", "-u", "alice", "--password-stdin", host, stdin=good + "\n")
    assert r.returncode == 0, r.stderr
    r = _cli("--root", str(busybox_image), "push", "busybox:latest", f"{host}/secrets/app:1")
    assert r.returncode == 0, r.stderr
    assert all(n.decode() not in r.stdout + r.stderr for n in _forms(good) + _forms(f"alice:{good}"))
    # Stored credentials that the registry refuses: the error does not quote them.
    stale = "stale-pw-" + uuid.uuid4().hex
    cfg = json.loads(cred_env.config_json.read_text())
    cfg["auths"][next(iter(cfg["auths"]))]["auth"] = base64.b64encode(f"alice:{stale}".encode()).decode()
    cred_env.config_json.write_text(json.dumps(cfg))
    for args in (("--root", str(busybox_image), "pull", f"{host}/secrets/app:1"),
                 ("--root", str(busybox_image), "push", "busybox:latest", f"{host}/secrets/app:2")):
        r = _cli(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert all(n.decode() not in r.stdout + r.stderr for n in _forms(stale) + _forms(f"alice:{stale}")), r.stderr
