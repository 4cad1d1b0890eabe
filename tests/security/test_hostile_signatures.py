"""Issue 17 attacked from outside: `pybuild verify`, `sign`, `attestations` and `generate-key-pair`
against a hostile registry (registry:2 behind tests/fixtures/fault_proxy.py serving crafted
answers) and a hostile image publisher (signature manifests written straight into registry:2 over
HTTP, never through pybuild's own code).

The safe outcome of every attack: verify exits 1 with one line naming the reference and why, no
traceback, nothing written where it must not be; where a signature is good it binds to one digest
and says which.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from tests.fixtures.cli import REPO, pybuild_argv, run_on_pty, run_pybuild

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIG = "dev.cosignproject.cosign/signature"
IN_TOTO = "application/vnd.in-toto+json"
SPDX = "https://spdx.dev/Document"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST])


# ---- a hostile publisher's tools: plain HTTP into registry:2 -------------------------------------

def put_blob(url: str, repo: str, data: bytes) -> dict:
    """Upload ``data``; its descriptor fields (digest, size)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = requests.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=10).headers["Location"]
    loc = url + loc if loc.startswith("/") else loc
    requests.put(f"{loc}{'&' if '?' in loc else '?'}digest={digest}", data=data, timeout=10).raise_for_status()
    return {"digest": digest, "size": len(data)}


def put_manifest(url: str, repo: str, ref: str, doc: dict | bytes, media_type: str = OCI_MANIFEST) -> str:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    requests.put(f"{url}/v2/{repo}/manifests/{ref}", data=data, headers={"Content-Type": media_type},
                 timeout=10).raise_for_status()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(url: str, repo: str, tag: str, text: str) -> str:
    """A one-layer image (the registry does not look inside); its manifest digest."""
    layer = put_blob(url, repo, text.encode())
    cfg = put_blob(url, repo, json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    return put_manifest(url, repo, tag, {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                         "config": {"mediaType": OCI_CONFIG, **cfg},
                                         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                                     **layer}]})


def simple_signing(digest: str, identity: str) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": identity},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"}, "optional": None}).encode()


def ecdsa(key, data: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def sig_manifest(url: str, repo: str, layers: list[tuple[bytes, object]]) -> dict:
    """A cosign signature manifest whose layers are (payload, signature annotation value)."""
    descs = []
    for payload, sig in layers:
        d = {"mediaType": SIMPLESIGNING, **put_blob(url, repo, payload)}
        if sig is not None:
            d["annotations"] = {SIG: sig}
        descs.append(d)
    cfg = put_blob(url, repo, json.dumps({"architecture": "", "os": "", "config": {},
                                          "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG, **cfg},
            "layers": descs}


def sig_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two P-256 key pairs (unencrypted PKCS#8 private PEMs: no scrypt in every test)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("good", "other"):
        k = ec.generate_private_key(ec.SECP256R1())
        (d / f"{name}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        (d / f"{name}.pub").write_bytes(k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        out[name] = k
    out["dir"] = d
    return out


def verify(ref: str, pub: Path, *extra: str, rc: int | None = None):
    r = run_pybuild("verify", "--key", pub, *extra, ref, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    if rc is not None:
        assert r.returncode == rc, f"rc {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def refused(ref: str, pub: Path, *extra: str) -> str:
    """verify's one error line for ``ref`` (asserting exit 1 and that it names the reference)."""
    r = verify(ref, pub, *extra, rc=1)
    assert ref in r.stderr and r.stdout == "", r.stderr
    return r.stderr


def serve(proxy, path: str, body: bytes, media_type: str = OCI_MANIFEST, times: int = -1, status: int = 200,
          method: str | None = None, **headers: str) -> None:
    """Make the fault proxy answer requests whose path matches ``path`` with ``body``."""
    hdrs = {"Content-Type": media_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if media_type != "application/json" and status == 200:
        hdrs.setdefault("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
    proxy.add("serve", path=path, body=body, headers=hdrs, times=times, status=status, method=method)


@pytest.fixture
def image(registry, request):
    """(url, repo, tag reference, digest) of a fresh image in the session's registry:2."""
    repo = "hostile-sig/t" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    digest = push_image(registry.url, repo, "1", f"{repo} one")
    return registry.url, repo, f"{registry.host}/{repo}:1", digest


# ---- digest confusion ----------------------------------------------------------------------------

def _other_algorithms(url: str, repo: str, digest: str) -> list[str]:
    data = requests.get(f"{url}/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT}, timeout=10).content
    hexpart = digest.split(":", 1)[1]
    return ["SHA256:" + hexpart, "sha256:" + hexpart.upper(), " " + digest, digest + "\n",
            "sha512:" + hashlib.sha512(data).hexdigest(), hexpart]


def test_a_signature_naming_another_digest_or_spelling_does_not_verify(image, keys):
    url, repo, ref, digest = image
    other = push_image(url, repo, "2", "another image")
    spellings = [other, *_other_algorithms(url, repo, digest)]
    # Each signed by the right key: only the named digest is wrong.
    put_manifest(url, repo, sig_tag(digest), sig_manifest(url, repo, [
        (p := simple_signing(d, f"{ref.rsplit(':', 1)[0]}"), ecdsa(keys["good"], p)) for d in spellings]))
    err = refused(ref, keys["dir"] / "good.pub")
    assert f"no valid signature by this key among {len(spellings)}" in err
    assert err.count("signed by this key, but it signs") == len(spellings)
    assert digest in err


def test_a_signature_made_for_another_repository(image, keys):
    """cosign binds by digest only; pybuild says which repository the signature names, and with
    --identity refuses one made for another repository."""
    url, repo, ref, digest = image
    elsewhere = "127.0.0.1:1/someone/else"
    p = simple_signing(digest, elsewhere)
    put_manifest(url, repo, sig_tag(digest), sig_manifest(url, repo, [(p, ecdsa(keys["good"], p))]))
    r = verify(ref, keys["dir"] / "good.pub", rc=0)
    assert f"signed for {elsewhere}" in r.stderr and json.loads(r.stdout)["critical"]["image"][
        "docker-manifest-digest"] == digest
    err = refused(ref, keys["dir"] / "good.pub", "--identity", ref.rsplit(":", 1)[0])
    assert f"it was made for {elsewhere}" in err
    r = verify(ref, keys["dir"] / "good.pub", "--identity", "Not A Repo!", rc=1)
    assert "identity 'Not A Repo!' is not a repository reference" in r.stderr


# ---- the signature annotation --------------------------------------------------------------------

def _der_with_trailing_junk(key, p: bytes) -> str:
    return base64.b64encode(base64.b64decode(ecdsa(key, p)) + b"\x00").decode()


def _raw_r_s(key, p: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    r, s = decode_dss_signature(base64.b64decode(ecdsa(key, p)))
    return base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()


ANNOTATIONS = {
    "not-base64": lambda k, p: "not base64 at all!",
    "base64-with-junk-chars": lambda k, p: ecdsa(k, p)[:-4] + "*@#$",
    "huge": lambda k, p: base64.b64encode(b"\x30" * (2 << 20)).decode(),
    "der-trailing-junk": _der_with_trailing_junk,
    "raw-r-s": _raw_r_s,
    "empty": lambda k, p: "",
    "missing": lambda k, p: None,
}


@pytest.mark.parametrize("kind", sorted(ANNOTATIONS))
def test_a_malformed_signature_annotation_is_refused(image, keys, kind):
    url, repo, ref, digest = image
    p = simple_signing(digest, ref.rsplit(":", 1)[0])
    put_manifest(url, repo, sig_tag(digest), sig_manifest(url, repo, [(p, ANNOTATIONS[kind](keys["good"], p))]))
    err = refused(ref, keys["dir"] / "good.pub")
    assert "no valid signature by this key among 1" in err and len(err) < 2000, err


@pytest.mark.parametrize("annotations", ["a string", ["a", "list"], 7, {SIG: 12345}, {SIG: ["x"]}])
def test_a_signature_layer_whose_annotations_are_not_strings(image, keys, fault_proxy, annotations):
    """registry:2 refuses such a manifest; a hostile registry serves it anyway."""
    url, repo, _, digest = image
    m = sig_manifest(url, repo, [(simple_signing(digest, repo), None)])
    m["layers"][0]["annotations"] = annotations
    serve(fault_proxy, f"/manifests/{sig_tag(digest)}$", json.dumps(m).encode())
    refused(f"{fault_proxy.host}/{repo}:1", keys["dir"] / "good.pub")


# ---- a hostile registry --------------------------------------------------------------------------

def test_a_registry_serving_other_bytes_for_the_payload_digest(image, keys, fault_proxy):
    """The registry swaps the payload blob for one naming the same image (an attacker's own
    signature over it cannot be by the key; the swap itself must be caught by the digest)."""
    url, repo, _, digest = image
    p = simple_signing(digest, repo)
    m = sig_manifest(url, repo, [(p, ecdsa(keys["good"], p))])
    put_manifest(url, repo, sig_tag(digest), m)
    forged = simple_signing(digest, repo).replace(b'"optional": null', b'"optional": {"x": 1}')
    serve(fault_proxy, f"/blobs/{m['layers'][0]['digest']}", forged, "application/octet-stream")
    ref = f"{fault_proxy.host}/{repo}:1"
    err = refused(ref, keys["dir"] / "good.pub")
    assert "hashes to" in err


def test_a_registry_answering_another_manifest_for_a_digest(image, keys, fault_proxy):
    url, repo, _, digest = image
    other = push_image(url, repo, "2", "the attacker's image")
    p = simple_signing(other, repo)
    put_manifest(url, repo, sig_tag(other), sig_manifest(url, repo, [(p, ecdsa(keys["good"], p))]))
    body = requests.get(f"{url}/v2/{repo}/manifests/{other}", headers={"Accept": ACCEPT}, timeout=10).content
    serve(fault_proxy, f"/manifests/{digest}$", body)
    ref = f"{fault_proxy.host}/{repo}@{digest}"
    err = refused(ref, keys["dir"] / "good.pub")
    assert "hashes to" in err


def test_a_tag_repushed_between_lookups_binds_to_the_first_answer(image, keys, fault_proxy):
    """TOCTOU: the tag names the signed image at the first GET and an unsigned one afterwards.
    verify asks for the tag once, and everything after that is by the digest it got, which it
    prints."""
    url, repo, _, signed = image
    p = simple_signing(signed, repo)
    put_manifest(url, repo, sig_tag(signed), sig_manifest(url, repo, [(p, ecdsa(keys["good"], p))]))
    body = requests.get(f"{url}/v2/{repo}/manifests/{signed}", headers={"Accept": ACCEPT}, timeout=10).content
    unsigned = push_image(url, repo, "1", "re-pushed, unsigned")
    serve(fault_proxy, "/manifests/1$", body, times=1)
    ref = f"{fault_proxy.host}/{repo}:1"
    r = verify(ref, keys["dir"] / "good.pub", rc=0)
    assert f"({signed})" in r.stderr and unsigned not in r.stderr + r.stdout
    tag_lookups = [e for e in fault_proxy.log if e[1].endswith("/manifests/1")]
    assert len(tag_lookups) == 1
    # Asked again, the tag now names the unsigned image, and verify says so.
    assert unsigned in refused(ref, keys["dir"] / "good.pub")


@pytest.mark.parametrize("what", ["sig-manifest", "payload"])
def test_huge_answers_are_cut_off(image, keys, fault_proxy, what):
    url, repo, _, digest = image
    p = simple_signing(digest, repo)
    m = sig_manifest(url, repo, [(p, ecdsa(keys["good"], p))])
    put_manifest(url, repo, sig_tag(digest), m)
    huge = b"{" + b" " * (5 << 20) + b"}"
    if what == "sig-manifest":
        serve(fault_proxy, f"/manifests/{sig_tag(digest)}$", huge)
    else:
        serve(fault_proxy, f"/blobs/{m['layers'][0]['digest']}", huge, "application/octet-stream")
    err = refused(f"{fault_proxy.host}/{repo}:1", keys["dir"] / "good.pub")
    assert "larger than" in err


def test_thousands_of_signature_layers_are_refused_without_fetching_them(image, keys, fault_proxy):
    """Resource exhaustion: a .sig manifest of 3000 layers (one junk payload named 3000 times)."""
    url, repo, _, digest = image
    p = simple_signing(digest, repo)
    one = sig_manifest(url, repo, [(p, ecdsa(keys["other"], p))])
    one["layers"] = one["layers"] * 3000
    put_manifest(url, repo, sig_tag(digest), one)
    err = refused(f"{fault_proxy.host}/{repo}:1", keys["dir"] / "good.pub")
    assert "3000 signature layers" in err and len(err) < 2000
    assert len([e for e in fault_proxy.log if "/blobs/" in e[1]]) == 0
    # Signing on top of it would only add a signature nobody can verify: refused, tag unchanged.
    before = requests.get(f"{url}/v2/{repo}/manifests/{sig_tag(digest)}", headers={"Accept": ACCEPT}, timeout=10).content
    r = run_pybuild("sign", "--key", keys["dir"] / "good.key", f"{fault_proxy.host}/{repo}:1", timeout=120)
    assert r.returncode == 1 and "already holds 3000 signature layers" in r.stderr and "Traceback" not in r.stderr
    assert requests.get(f"{url}/v2/{repo}/manifests/{sig_tag(digest)}", headers={"Accept": ACCEPT},
                        timeout=10).content == before
    # At the limit every layer is checked, and the message stays short.
    one["layers"] = one["layers"][:100]
    put_manifest(url, repo, sig_tag(digest), one)
    err = refused(f"{fault_proxy.host}/{repo}:1", keys["dir"] / "good.pub")
    assert "among 100" in err and "and 90 more" in err and len(err) < 2000


def test_one_good_signature_among_foreign_ones(image, keys):
    """Signatures by another key, for another image, and one good one: exactly the good one counts."""
    url, repo, ref, digest = image
    other = push_image(url, repo, "2", "other")
    p_good, p_other_img = simple_signing(digest, repo), simple_signing(other, repo)
    layers = [(p_good, ecdsa(keys["other"], p_good)), (p_other_img, ecdsa(keys["good"], p_other_img))]
    put_manifest(url, repo, sig_tag(digest), sig_manifest(url, repo, layers))
    err = refused(ref, keys["dir"] / "good.pub")
    assert "not signed by this key" in err and f"it signs {other}" in err
    put_manifest(url, repo, sig_tag(digest), sig_manifest(url, repo, [*layers, (p_good, ecdsa(keys["good"], p_good))]))
    r = verify(ref, keys["dir"] / "good.pub", rc=0)
    assert "1 valid signature(s)" in r.stderr and len(r.stdout.splitlines()) == 1


def test_the_sig_tag_pointing_at_an_index_or_junk(image, keys, fault_proxy):
    url, repo, _, digest = image
    ref = f"{fault_proxy.host}/{repo}:1"
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    serve(fault_proxy, f"/manifests/{sig_tag(digest)}$", index, OCI_INDEX, times=1)
    assert "no simple-signing signature" in refused(ref, keys["dir"] / "good.pub")
    fault_proxy.clear()
    serve(fault_proxy, f"/manifests/{sig_tag(digest)}$", b"[" * 100000, times=-1)
    refused(ref, keys["dir"] / "good.pub")


def test_escape_sequences_from_the_registry_are_not_printed(image, keys, fault_proxy):
    url, repo, _, digest = image
    evil = json.dumps({"errors": [{"code": "DENIED", "message": "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r"}]}).encode()
    serve(fault_proxy, f"/manifests/{sig_tag(digest)}$", evil, "application/json", status=403)
    err = refused(f"{fault_proxy.host}/{repo}:1", keys["dir"] / "good.pub")
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err
    assert "\\x1b]0;pwned" in err            # shown, made harmless


# ---- key files -----------------------------------------------------------------------------------

def _public_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _bad_public_keys(tmp: Path, keys) -> dict[str, Path]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    made = {"p384": _public_pem(ec.generate_private_key(ec.SECP384R1())),
            "secp256k1": _public_pem(ec.generate_private_key(ec.SECP256K1())),
            "rsa": _public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ed25519": _public_pem(ed25519.Ed25519PrivateKey.generate()),
            "private-key-given": (keys["dir"] / "good.key").read_bytes(),
            "not-pem": b"hello\n", "empty": b"",
            "junk-base64": b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
            "huge": b"-----BEGIN PUBLIC KEY-----\n" + b"A" * (32 << 20) + b"\n-----END PUBLIC KEY-----\n"}
    out = {}
    for name, data in made.items():
        (tmp / name).write_bytes(data)
        out[name] = tmp / name
    (tmp / "a-directory").mkdir()
    out["a-directory"] = tmp / "a-directory"
    return out


def test_a_public_key_that_is_not_p256_is_refused(image, keys, tmp_path):
    url, repo, ref, digest = image
    p = simple_signing(digest, repo)
    put_manifest(url, repo, sig_tag(digest), sig_manifest(url, repo, [(p, ecdsa(keys["good"], p))]))
    for name, path in _bad_public_keys(tmp_path, keys).items():
        r = verify(ref, path, rc=1)
        assert str(path) in r.stderr and r.stdout == "", (name, r.stderr)
        assert "P-256" in r.stderr or "PEM public key" in r.stderr or "cannot read" in r.stderr \
            or "larger than" in r.stderr, (name, r.stderr)


def test_a_private_key_that_is_not_p256_or_a_crafted_key_document(image, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    _, _, ref, _ = image
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def encrypted(doc: bytes) -> bytes:
        b64 = base64.b64encode(doc).decode()
        return f"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{b64}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n".encode()

    salt = base64.b64encode(b"s" * 32).decode()
    crafted = {
        "p384": p384,
        "deeply-nested": encrypted(b"[" * 100000 + b"]" * 100000),
        "huge-scrypt-n": encrypted(json.dumps({"kdf": {"name": "scrypt", "params": {"N": 1 << 30, "r": 8, "p": 1},
                                                       "salt": salt}, "cipher": {"name": "nacl/secretbox",
                                                                                 "nonce": salt[:32]},
                                               "ciphertext": salt}).encode()),
        "kdf-a-list": encrypted(b'{"kdf": [], "cipher": {}, "ciphertext": ""}'),
        "huge-file": encrypted(b"{" + b" " * (32 << 20) + b"}"),
    }
    for name, data in crafted.items():
        path = tmp_path / f"{name}.key"
        path.write_bytes(data)
        r = run_pybuild("sign", "--key", path, ref, env={**os.environ, "COSIGN_PASSWORD": "x"}, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr and str(path) in r.stderr, (name, r.stderr)


# ---- what generate-key-pair writes ---------------------------------------------------------------

def test_generate_key_pair_does_not_follow_a_planted_symlink(tmp_path, monkeypatch):
    """Another user of a shared directory plants symlinks where the key files are written (the
    final names and the temporary name the writer would pick): the canary they point at is
    neither written nor truncated, and the private key lands 0600 in a file of its own."""
    from builder.cli import main
    canary = tmp_path / "canary"
    canary.write_text("host canary\n")
    work = tmp_path / "shared"
    work.mkdir()
    prefix = work / "cosign"
    planted = [f"cosign.key.tmp{os.getpid()}", f"cosign.pub.tmp{os.getpid()}"]    # the names it used to write
    for name in ("cosign.key", "cosign.pub", *planted):
        (work / name).symlink_to(canary)
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    old = os.umask(0)
    try:
        assert main(["generate-key-pair", "--force", "--output-key-prefix", str(prefix)]) == 0
    finally:
        os.umask(old)
    assert canary.read_text() == "host canary\n"
    key = work / "cosign.key"
    assert not key.is_symlink() and b"ENCRYPTED SIGSTORE PRIVATE KEY" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (work / "cosign.pub").is_symlink()
    assert sorted(p.name for p in work.iterdir()) == sorted(["cosign.key", "cosign.pub", *planted])


def test_generate_key_pair_without_a_password_source_refuses(tmp_path):
    """No COSIGN_PASSWORD and no terminal to ask on: refuse rather than write a key anyone can
    decrypt; COSIGN_PASSWORD= (empty) is the explicit way to want that."""
    env = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}
    r = run_pybuild("generate-key-pair", "--output-key-prefix", tmp_path / "k", env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "COSIGN_PASSWORD" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
    run_pybuild("generate-key-pair", "--output-key-prefix", tmp_path / "k", env={**env, "COSIGN_PASSWORD": ""},
                stdin=subprocess.DEVNULL, check_rc=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "k.pub"]


# ---- attestations --------------------------------------------------------------------------------

def statement(digest: str, predicate: object = None, predicate_type: str = SPDX) -> bytes:
    return json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": predicate_type,
                       "subject": [{"name": "pkg:docker/x", "digest": {"sha256": digest.split(":", 1)[1]}}],
                       "predicate": predicate if predicate is not None else {"spdxVersion": "SPDX-2.3"}}).encode()


def attestation(url: str, repo: str, layers: list[bytes | tuple[bytes, dict]], subject: str | None) -> dict:
    """An attestation manifest (BuildKit's layout, OCI subject ``subject``) of in-toto layers."""
    descs = []
    for layer in layers:
        data, ann = layer if isinstance(layer, tuple) else (layer, {"in-toto.io/predicate-type": SPDX})
        descs.append({"mediaType": IN_TOTO, **put_blob(url, repo, data), "annotations": ann})
    cfg = put_blob(url, repo, b'{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers"}}')
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.docker.attestation.manifest.v1+json",
         "config": {"mediaType": OCI_CONFIG, **cfg}, "layers": descs}
    if subject:
        size = len(requests.get(f"{url}/v2/{repo}/manifests/{subject}", headers={"Accept": ACCEPT}, timeout=10).content)
        m["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": size}
    return m


def fallback(url: str, repo: str, subject: str, entries: list) -> None:
    """Write the referrers tag-schema index of ``subject`` (registry 2.8 has no referrers API)."""
    put_manifest(url, repo, subject.replace(":", "-"),
                 {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, OCI_INDEX)


def entry(digest: str, doc: dict) -> dict:
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(json.dumps(doc).encode()),
            "artifactType": doc.get("artifactType", "")}


def attestations(ref: str, *extra: str, rc: int | None = 0):
    r = run_pybuild("attestations", "--remote", *extra, ref, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    if rc is not None:
        assert r.returncode == rc, f"rc {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def test_a_referrer_about_another_image_is_not_listed(image):
    """The fallback index of A lists an attestation manifest whose subject is B, and one with no
    subject at all: neither is A's."""
    url, repo, ref, a = image
    b = push_image(url, repo, "b", "image b")
    foreign = attestation(url, repo, [statement(b, {"evil": True})], subject=b)
    orphan = attestation(url, repo, [statement(a, {"orphan": True})], subject=None)
    fd = put_manifest(url, repo, "foreign", foreign)
    od = put_manifest(url, repo, "orphan", orphan)
    fallback(url, repo, a, [entry(fd, foreign), entry(od, orphan)])
    doc = json.loads(attestations(ref, "--format", "json").stdout)
    assert doc["digest"] == a and doc["attachments"] == []
    assert "no sbom attached" in attestations(ref, "--type", "sbom", rc=1).stderr


def test_an_attestation_whose_statement_names_another_image(image):
    """The manifest's OCI subject is A, but its in-toto statement is about B (a statement moved
    from another image): listed with the problem, never printed as A's SBOM."""
    url, repo, ref, a = image
    b = push_image(url, repo, "b", "image b")
    m = attestation(url, repo, [statement(b, {"moved": True})], subject=a)
    md = put_manifest(url, repo, "moved", m)
    fallback(url, repo, a, [entry(md, m)])
    [att] = json.loads(attestations(ref, "--format", "json").stdout)["attachments"]
    [e] = att["entries"]
    assert "about another image" in e["problem"] and "content" not in e
    err = attestations(ref, "--type", "sbom", rc=1).stderr
    assert "none usable" in err and "about another image" in err


def test_an_index_attestation_entry_for_a_digest_not_in_the_index(image):
    url, repo, ref, a = image
    b = push_image(url, repo, "b", "image b")
    m = attestation(url, repo, [statement(b)], subject=None)
    md = put_manifest(url, repo, "att", m)
    amd = requests.get(f"{url}/v2/{repo}/manifests/{a}", headers={"Accept": ACCEPT}, timeout=10).content
    idx = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": a, "size": len(amd), "platform": {"architecture": "amd64", "os": "linux"}},
        {**entry(md, m), "platform": {"architecture": "unknown", "os": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": b}}]}
    put_manifest(url, repo, "idx", idx, OCI_INDEX)
    doc = json.loads(attestations(ref.rsplit(":", 1)[0] + ":idx", "--format", "json").stdout)
    assert doc["attachments"] == []


@pytest.mark.parametrize("kind", ["not-json", "deeply-nested", "declared-huge"])
def test_a_malformed_or_huge_attestation_layer(image, fault_proxy, kind):
    url, repo, _, a = image
    if kind == "declared-huge":
        m = attestation(url, repo, [statement(a)], subject=a)
        m["layers"][0]["size"] = 100 << 20        # listed, never fetched
    else:
        m = attestation(url, repo, [b"{not json" if kind == "not-json" else b"[" * 100000 + b"]" * 100000],
                        subject=a)
    body = json.dumps(m).encode()
    md = "sha256:" + hashlib.sha256(body).hexdigest()
    serve(fault_proxy, f"/manifests/{md}$", body)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry(md, m)]}
    serve(fault_proxy, f"/manifests/{a.replace(':', '-')}$", json.dumps(index).encode(), OCI_INDEX)
    ref = f"{fault_proxy.host}/{repo}:1"
    [att] = json.loads(attestations(ref, "--format", "json").stdout)["attachments"]
    [e] = att["entries"]
    assert "content" not in e
    if kind == "declared-huge":
        assert not [x for x in fault_proxy.log if m["layers"][0]["digest"] in x[1]]
    else:
        assert "not valid JSON" in e["problem"]
        assert "none usable" in attestations(ref, "--type", "sbom", rc=1).stderr


def test_junk_in_the_referrers_fallback_index(image, fault_proxy):
    url, repo, _, a = image
    good = attestation(url, repo, [statement(a)], subject=a)
    gd = put_manifest(url, repo, "good", good)
    junk = [{}, {"digest": 5}, {"digest": "sha256:../../../v2/_catalog"}, "a string", 7, None, entry(gd, good)]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": junk}).encode()
    serve(fault_proxy, f"/manifests/{a.replace(':', '-')}$", body, OCI_INDEX)
    ref = f"{fault_proxy.host}/{repo}:1"
    [att] = json.loads(attestations(ref, "--format", "json").stdout)["attachments"]
    assert att["manifest"] == gd
    fault_proxy.clear()
    serve(fault_proxy, f"/manifests/{a.replace(':', '-')}$", b'["not", "an", "index"]', OCI_INDEX)
    assert "not a JSON object" in attestations(ref, rc=1).stderr


@pytest.mark.parametrize("where", ["fallback-tag", "referrers-api"])
def test_thousands_of_referrers_are_refused_unread(image, fault_proxy, where):
    """The same list from the tag-schema fallback index, or from a registry that claims the
    referrers API (the proxy answers /v2/REPO/referrers/DIGEST)."""
    url, repo, _, a = image
    good = attestation(url, repo, [statement(a)], subject=a)
    gd = put_manifest(url, repo, "good", good)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry(gd, good)] * 3000}).encode()
    path = f"/manifests/{a.replace(':', '-')}$" if where == "fallback-tag" else f"/referrers/{a}$"
    serve(fault_proxy, path, body, OCI_INDEX)
    err = attestations(f"{fault_proxy.host}/{repo}:1", rc=1).stderr
    assert "lists 3000, more than the 256" in err
    assert not [x for x in fault_proxy.log if x[1].endswith(f"/manifests/{gd}")]


def test_escape_sequences_in_attached_fields_are_not_printed(image):
    url, repo, ref, a = image
    evil = "\x1b]0;owned\x07\x1b[2J\x1b[1;31mSAFE\r\u202e"
    m = attestation(url, repo, [(statement(a, predicate_type=evil), {"in-toto.io/predicate-type": evil})], subject=a)
    md = put_manifest(url, repo, "evil", m)
    fallback(url, repo, a, [entry(md, m)])
    out = attestations(ref).stdout
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "\\x1b]0;owned" in out


def test_copy_all_does_not_carry_a_foreign_referrer_into_the_destination(image, registry):
    """Mirroring a hostile image A whose referrers list names an attestation about C, an image
    of the destination's own: the attestation must not land there as C's."""
    url, repo, ref, a = image
    dst_repo = repo + "-mirror"
    c = push_image(url, dst_repo, "c", "the destination's own image")
    push_image(url, repo, "c", "the destination's own image")         # the same manifest, so C exists here too
    foreign = attestation(url, repo, [statement(c, {"injected": True})], subject=c)
    fd = put_manifest(url, repo, "foreign", foreign)
    fallback(url, repo, a, [entry(fd, foreign)])
    r = run_pybuild("copy", "--all", ref, f"{registry.host}/{dst_repo}:1", timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert requests.get(f"{url}/v2/{dst_repo}/manifests/{fd}", headers={"Accept": ACCEPT}, timeout=10).status_code == 404
    doc = json.loads(attestations(f"{registry.host}/{dst_repo}:c", "--format", "json").stdout)
    assert doc["attachments"] == []


def _on_a_terminal(argv: list[str], answers: list[bytes], env: dict) -> tuple[int, bytes]:
    """Run ``argv`` on a pseudo-terminal, typing each of ``answers`` at the next prompt."""
    return run_on_pty(argv, [((b": ",), a + b"\n") for a in answers], env=env, timeout=60)


def test_passwords_are_asked_on_a_terminal(image, tmp_path):
    """Without COSIGN_PASSWORD, a terminal is asked: twice for a new key (a mismatch writes
    nothing), once to sign; the password is not echoed."""
    env = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}
    env["PYTHONPATH"] = str(REPO)
    gen = [*pybuild_argv("generate-key-pair", "--output-key-prefix", tmp_path / "k")]
    rc, shown = _on_a_terminal(gen, [b"s3cret-one", b"s3cret-two"], env)
    assert rc == 1 and b"differ" in shown and list(tmp_path.iterdir()) == []
    rc, shown = _on_a_terminal(gen, [b"s3cret-pw", b"s3cret-pw"], env)
    assert rc == 0 and b"s3cret" not in shown, shown
    from builder.attest.keys import KeyFileError, load_private_key
    load_private_key(tmp_path / "k.key", b"s3cret-pw")
    with pytest.raises(KeyFileError, match="wrong password"):
        load_private_key(tmp_path / "k.key", b"")
    _, _, ref, digest = image
    rc, shown = _on_a_terminal([*pybuild_argv("sign", "--key", tmp_path / "k.key", ref)], [b"s3cret-pw"], env)
    assert rc == 0 and digest.encode() in shown, shown


def test_copy_all_from_a_hostile_source_keeps_the_destinations_signatures(image, keys, registry):
    """The destination holds image D signed by its owner; a hostile source holds the same D with a
    `.sig` of its own (junk and another key's). Mirroring it with copy --all must not replace the
    destination's signature: afterwards the owner's key still verifies there, and the source's
    signature layers are carried along beside it."""
    url, repo, ref, d = image
    dst_repo = repo + "-dst"
    body = requests.get(f"{url}/v2/{repo}/manifests/{d}", headers={"Accept": ACCEPT}, timeout=10).content
    for layer in json.loads(body)["layers"] + [json.loads(body)["config"]]:
        blob = requests.get(f"{url}/v2/{repo}/blobs/{layer['digest']}", timeout=10).content
        put_blob(url, dst_repo, blob)
    assert put_manifest(url, dst_repo, "1", body) == d
    dst = f"{registry.host}/{dst_repo}:1"
    run_pybuild("sign", "--key", keys["dir"] / "good.key", dst, check_rc=0)
    p = simple_signing(d, repo)
    put_manifest(url, repo, sig_tag(d), sig_manifest(url, repo, [(p, ecdsa(keys["other"], p)), (b"{}", "junk")]))
    r = run_pybuild("copy", "--all", ref, dst, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"added 2 signature(s) from {registry.host}/{repo}:{sig_tag(d)}" in r.stderr, r.stderr
    v = verify(dst, keys["dir"] / "good.pub", rc=0)
    assert f"({d})" in v.stderr
    verify(dst, keys["dir"] / "other.pub", rc=0)          # the source's signature came along too
