"""Issue 17's registry half: attestations and signatures discoverable through the OCI referrers
API and its tag-schema fallback (registry:2 here is distribution 2.8: no referrers API), and the
`pybuild attestations` command, local and remote."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import requests

from tests.fixtures.building import build_in
from tests.fixtures.cli import run_pybuild

PROVENANCE = "https://slsa.dev/provenance/v1"


def _tags(reg, repo: str) -> list[str]:
    return requests.get(f"{reg.url}/v2/{repo}/tags/list", timeout=10).json().get("tags") or []


def _manifest(reg, repo: str, ref: str) -> dict:
    accept = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json"])
    r = requests.get(f"{reg.url}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_pushed_attestations_are_referrers_with_the_tag_fallback(busybox_image, tmp_path, registry):
    ref = f"{registry.host}/sc/referrers:1"
    r = build_in(busybox_image, tmp_path / "ctx", "FROM busybox:latest\nRUN echo x > /y\n", tags=[ref],
                 push=True, sbom="true", source_date_epoch=0)
    image = r.manifest.digest
    # registry 2.8 answers 404 for the referrers API, so the push kept the fallback index up to date.
    assert requests.get(f"{registry.url}/v2/sc/referrers/referrers/{image}", timeout=10).status_code == 404
    fallback = "sha256-" + image.split(":")[1]
    assert fallback in _tags(registry, "sc/referrers")
    idx = _manifest(registry, "sc/referrers", fallback)
    assert idx["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [entry] = idx["manifests"]
    assert entry["artifactType"] == "application/vnd.docker.attestation.manifest.v1+json"
    att = _manifest(registry, "sc/referrers", entry["digest"])
    assert att["subject"]["digest"] == image
    assert sorted(l["annotations"]["in-toto.io/predicate-type"] for l in att["layers"]) == \
        [PROVENANCE, "https://spdx.dev/Document"]
    # The same manifest is the index's attestation entry (BuildKit's layout, what buildx reads).
    top = _manifest(registry, "sc/referrers", "1")
    assert [m["digest"] for m in top["manifests"]] == [image, entry["digest"]]

    # `pybuild attestations` finds it both ways, from the registry.
    out = run_pybuild("attestations", "--remote", "--format", "json", ref, root=busybox_image, check_rc=0).stdout
    doc = json.loads(out)
    assert doc["source"] == "remote" and doc["digest"] == top_digest(registry, "sc/referrers", "1")
    [a] = doc["attachments"]
    assert a["kind"] == "attestation" and a["subject"] == image and a["manifest"] == entry["digest"]
    assert a["foundBy"] == ["index", "referrers"]
    prov = json.loads(run_pybuild("attestations", "--remote", "--type", "provenance", ref, root=busybox_image,
                                  check_rc=0).stdout)
    assert prov["predicateType"] == PROVENANCE
    assert prov["subject"][0]["digest"]["sha256"] == image.split(":")[1]
    text = run_pybuild("attestations", "--remote", ref, root=busybox_image, check_rc=0).stdout
    assert "https://spdx.dev/Document" in text and "index, referrers" in text

    # And from the local store (the build's index there).
    local = json.loads(run_pybuild("attestations", "--format", "json", ref, root=busybox_image, check_rc=0).stdout)
    assert local["source"] == "local"
    assert [x["manifest"] for x in local["attachments"]] == [entry["digest"]]


def top_digest(reg, repo: str, ref: str) -> str:
    r = requests.head(f"{reg.url}/v2/{repo}/manifests/{ref}",
                      headers={"Accept": "application/vnd.oci.image.index.v1+json"}, timeout=10)
    return r.headers["Docker-Content-Digest"]


def test_attestations_of_a_bare_image_and_a_missing_type(busybox_image, tmp_path, registry):
    ref = f"{registry.host}/sc/bare:1"
    build_in(busybox_image, tmp_path / "ctx", "FROM busybox:latest\n", tags=[ref], push=True,
             provenance="false", source_date_epoch=0)
    out = run_pybuild("attestations", "--remote", ref, root=busybox_image, check_rc=0).stdout
    assert "nothing attached" in out
    r = run_pybuild("attestations", "--remote", "--type", "sbom", ref, root=busybox_image, check_rc=1)
    assert "no sbom attached" in r.stderr and "Traceback" not in r.stderr


# ---- keys, sign, verify -------------------------------------------------------------------------
import base64  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402

import pytest  # noqa: E402

from tests.fixtures.sigstore import NotVerified, check_signed, cosign_sign, current_digest  # noqa: E402

# go-securesystemslib's published vector for its "encrypted" format (what cosign key files hold).
SSL_VECTOR = (b'{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},'
              b'"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},'
              b'"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}')


def test_encrypted_key_format_matches_the_published_vector():
    from builder.attest.keys import KeyFileError, decrypt, encrypt
    assert decrypt(SSL_VECTOR, b"supersecret") == b"reallyimportant"
    with pytest.raises(KeyFileError, match="wrong password"):
        decrypt(SSL_VECTOR, b"supersecreT")
    doc = json.loads(encrypt(b"x" * 138, b"pw"))
    assert doc["kdf"] == {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": doc["kdf"]["salt"]}
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 32 and len(base64.b64decode(doc["cipher"]["nonce"])) == 24
    assert len(base64.b64decode(doc["ciphertext"])) == 138 + 16      # secretbox: tag + ciphertext
    assert decrypt(json.dumps(doc).encode(), b"pw") == b"x" * 138


def _keys(tmp_path, name: str, password: str = "pw") -> tuple:
    env = {**os.environ, "COSIGN_PASSWORD": password}
    run_pybuild("generate-key-pair", "--output-key-prefix", tmp_path / name, env=env, check_rc=0)
    return tmp_path / f"{name}.key", tmp_path / f"{name}.pub", env


def _push(root, tmp_path, ref: str, text: str) -> str:
    build_in(root, tmp_path / "ctx", f"FROM busybox:latest\nRUN echo {text} > /f\n", tags=[ref], push=True,
             source_date_epoch=0)
    return ref


def test_sign_and_verify_refuse_what_they_must(busybox_image, tmp_path, registry):
    key, pub, env = _keys(tmp_path, "one")
    key2, pub2, _ = _keys(tmp_path, "two")
    assert key.read_text().startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    repo, url = "sc/signed", registry.url
    ref = _push(busybox_image, tmp_path, f"{registry.host}/{repo}:1", "one")
    first = current_digest(url, repo, "1")

    # Unsigned: refused by both verifiers.
    r = run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=1)
    assert "is not signed" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(NotVerified):
        check_signed(url, repo, "1", pub.read_bytes())

    # A wrong password is a clear error; the right one signs.
    r = run_pybuild("sign", "--key", key, ref, root=busybox_image, env={**env, "COSIGN_PASSWORD": "nope"}, check_rc=1)
    assert "wrong password" in r.stderr and "Traceback" not in r.stderr
    run_pybuild("sign", "--key", key, ref, root=busybox_image, env=env, check_rc=0)
    out = run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=0).stdout
    assert json.loads(out.splitlines()[0])["critical"]["image"]["docker-manifest-digest"] == first
    [doc] = check_signed(url, repo, "1", pub.read_bytes())
    assert doc["critical"]["identity"]["docker-reference"] == f"{registry.host}/{repo}"

    # The .sig manifest is also a referrer of the image (tag fallback on registry 2.8).
    listing = json.loads(run_pybuild("attestations", "--remote", "--format", "json", ref, root=busybox_image,
                                     check_rc=0).stdout)
    sigs = [a for a in listing["attachments"] if a["kind"] == "signature"]
    assert len(sigs) == 1 and sigs[0]["subject"] == first
    assert sigs[0]["foundBy"] == ["referrers", f"tag {first.replace(':', '-')}.sig"]

    # Another key's public key: refused by both.
    r = run_pybuild("verify", "--key", pub2, ref, root=busybox_image, check_rc=1)
    assert "not signed by this key" in r.stderr
    with pytest.raises(NotVerified, match="bad signature"):
        check_signed(url, repo, "1", pub2.read_bytes())

    # Signing again with the second key adds a layer; each key then verifies, the referrers
    # fallback lists only the newest .sig manifest.
    run_pybuild("sign", "--key", key2, ref, root=busybox_image, env=env, check_rc=0)
    run_pybuild("verify", "--key", pub2, ref, root=busybox_image, check_rc=0)
    run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=0)
    sig_tag = first.replace(":", "-") + ".sig"
    fallback = _manifest(registry, repo, first.replace(":", "-"))
    sig_now = current_digest(url, repo, sig_tag)
    assert [m["digest"] for m in fallback["manifests"] if "sig" in m.get("artifactType", "")] == [sig_now]

    # A tampered payload (same signature, altered bytes) is refused by both.
    sig_manifest = _manifest(registry, repo, sig_tag)
    layer = sig_manifest["layers"][0]
    blob = requests.get(f"{url}/v2/{repo}/blobs/{layer['digest']}", timeout=10).content
    evil = blob.replace(b"pybuild", b"evilbld")
    from tests.fixtures.sigstore import _put_blob
    layer["digest"], layer["size"] = _put_blob(url, repo, evil), len(evil)
    sig_manifest["layers"] = [layer]
    requests.put(f"{url}/v2/{repo}/manifests/{sig_tag}", data=json.dumps(sig_manifest).encode(),
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).raise_for_status()
    r = run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=1)
    assert "not signed by this key (or the payload was altered)" in r.stderr
    with pytest.raises(NotVerified):
        check_signed(url, repo, "1", pub.read_bytes())
    run_pybuild("sign", "--key", key, ref, root=busybox_image, env=env, check_rc=0)   # signed again
    good_sig = requests.get(f"{url}/v2/{repo}/manifests/{sig_tag}",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).content

    # A re-pushed tag names another digest: unsigned, refused...
    _push(busybox_image, tmp_path, ref, "two")
    second = current_digest(url, repo, "1")
    assert second != first
    r = run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=1)
    assert "is not signed" in r.stderr
    # ...and so when the old signature manifest is copied to the new digest's .sig tag.
    requests.put(f"{url}/v2/{repo}/manifests/{second.replace(':', '-')}.sig", data=good_sig,
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).raise_for_status()
    r = run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=1)
    assert f"it signs {first}, not this image ({second})" in r.stderr
    with pytest.raises(NotVerified, match="signs sha256:"):
        check_signed(url, repo, "1", pub.read_bytes())
    # The old digest is still signed.
    run_pybuild("verify", "--key", pub, f"{registry.host}/{repo}@{first}", root=busybox_image, check_rc=0)


def test_verify_accepts_a_signature_written_by_the_independent_signer(busybox_image, tmp_path, registry):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    repo = "sc/foreign"
    ref = _push(busybox_image, tmp_path, f"{registry.host}/{repo}:1", "f")
    k = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "k.pub"
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    cosign_sign(registry.url, repo, current_digest(registry.url, repo, "1"), k, f"{registry.host}/{repo}")
    run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=0)
    r = run_pybuild("verify", "--key", pub, "--identity", f"{registry.host}/{repo}", ref, root=busybox_image,
                    check_rc=0)
    # Signed in another repository (as a mirror's copy is): the digest binds, as in cosign; with
    # --identity the repository must match too.
    cosign_sign(registry.url, repo, current_digest(registry.url, repo, "1"), k, f"{registry.host}/other")
    run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=0)
    r = run_pybuild("verify", "--key", pub, "--identity", f"{registry.host}/{repo}", ref, root=busybox_image,
                    check_rc=1)
    assert f"it was made for {registry.host}/other, not {registry.host}/{repo}" in r.stderr


def test_build_push_sign_signs_what_it_pushed(busybox_image, tmp_path, registry):
    from tests.fixtures.building import write_context
    key, pub, env = _keys(tmp_path, "b")
    ctx = write_context(tmp_path / "bctx", "FROM busybox:latest\nRUN echo signed > /s\n")
    ref = f"{registry.host}/sc/built:1"
    r = run_pybuild("build", "--push", "--sign", key, "-t", ref, ctx, root=busybox_image,
                    env={**env, "COSIGN_PASSWORD": "bad"}, check_rc=1)
    assert "wrong password" in r.stderr and "Traceback" not in r.stderr
    assert requests.get(f"{registry.url}/v2/sc/built/tags/list", timeout=10).status_code == 404   # nothing pushed
    run_pybuild("build", "--push", "--sign", key, "-t", ref, ctx, root=busybox_image, env=env, check_rc=0)
    [doc] = check_signed(registry.url, "sc/built", "1", pub.read_bytes())
    # What was pushed (the index with the default provenance) is what is signed.
    assert doc["critical"]["image"]["docker-manifest-digest"] == current_digest(registry.url, "sc/built", "1")
    run_pybuild("verify", "--key", pub, ref, root=busybox_image, check_rc=0)
    r = run_pybuild("build", "--sign", key, "-t", "local:1", ctx, root=busybox_image, env=env, check_rc=1)
    assert "add --push" in r.stderr


def test_copy_all_carries_signatures_and_attestations(busybox_image, tmp_path, registry, registry2):
    key, pub, env = _keys(tmp_path, "c")
    src = f"{registry.host}/sc/copysrc:1"
    build_in(busybox_image, tmp_path / "ctx", "FROM busybox:latest\nRUN echo c > /c\n", tags=[src], push=True,
             sbom="true", source_date_epoch=0)
    run_pybuild("sign", "--key", key, src, root=busybox_image, env=env, check_rc=0)
    digest = current_digest(registry.url, "sc/copysrc", "1")
    # Without --all the signature stays behind.
    plain = f"{registry2.host}/sc/plain:1"
    run_pybuild("copy", "--all-platforms", src, plain, root=busybox_image, check_rc=0)
    assert "is not signed" in run_pybuild("verify", "--key", pub, plain, root=busybox_image, check_rc=1).stderr
    dst = f"{registry2.host}/sc/copydst:1"
    run_pybuild("copy", "--all", src, dst, root=busybox_image, check_rc=0)
    assert current_digest(registry2.url, "sc/copydst", "1") == digest
    [doc] = check_signed(registry2.url, "sc/copydst", "1", pub.read_bytes())
    assert doc["critical"]["identity"]["docker-reference"] == f"{registry.host}/sc/copysrc"
    run_pybuild("verify", "--key", pub, dst, root=busybox_image, check_rc=0)
    listing = json.loads(run_pybuild("attestations", "--remote", "--format", "json", dst, root=busybox_image,
                                     check_rc=0).stdout)
    kinds = sorted((a["kind"], tuple(a["foundBy"])) for a in listing["attachments"])
    sig_tag = f"tag {digest.replace(':', '-')}.sig"
    assert kinds == [("attestation", ("index", "referrers")), ("signature", ("referrers", sig_tag))]
    # The destination's own fallback indexes were written (registry 2.8 has no referrers API).
    tags = _tags(registry2, "sc/copydst")
    assert digest.replace(":", "-") in tags and digest.replace(":", "-") + ".sig" in tags


def _containers_config(tmp_path, registry, pub, attachments: bool = True):
    """A HOME whose registries.d turns on sigstore attachments for the test registry (never the
    system's), a sigstoreSigned policy for it and a registries.conf marking it insecure."""
    home = tmp_path / ("home" if attachments else "home-plain")
    regd = home / ".config/containers/registries.d"
    regd.mkdir(parents=True)
    if attachments:
        (regd / "local.yaml").write_text(f"docker:\n  {registry.host}:\n    use-sigstore-attachments: true\n")
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {registry.host: [
        {"type": "sigstoreSigned", "keyPath": str(pub), "signedIdentity": {"type": "matchRepository"}}]}}}))
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    return regd, pol, {**os.environ, "HOME": str(home), "CONTAINERS_REGISTRIES_CONF": str(conf)}


# Debian 12's podman and skopeo are built with sigstore verification disabled: an image whose
# sigstore attachment they found fails with this message; one without any, with the next.
FOUND = "Debian-local change: sigstore disabled"
NONE = "A signature was required, but no signature exists"


def test_podman_and_skopeo_find_the_signature_attachment(busybox_image, tmp_path, registry):
    import subprocess
    import tempfile
    from tests.fixtures.building import need
    skopeo, podman = need("skopeo"), need("podman")
    key, pub, env = _keys(tmp_path, "s")
    signed = _push(busybox_image, tmp_path, f"{registry.host}/sc/podman:signed", "p1")
    run_pybuild("sign", "--recursive", "--key", key, signed, root=busybox_image, env=env, check_rc=0)
    unsigned = _push(busybox_image, tmp_path, f"{registry.host}/sc/podman:unsigned", "p2")
    regd, pol, cenv = _containers_config(tmp_path, registry, pub)
    short = tempfile.mkdtemp(prefix="pbsig", dir="/tmp")     # podman refuses a runroot over 50 characters
    try:
        def outcome(ref: str, config_env: dict) -> tuple[str, str]:
            s = subprocess.run([skopeo, "--registries.d", str(regd) if config_env is cenv else str(tmp_path / "none"),
                                "--policy", str(pol), "copy", "--src-tls-verify=false", f"docker://{ref}",
                                f"dir:{tmp_path / 'out'}"], capture_output=True, text=True, env=config_env,
                               timeout=120)
            p = subprocess.run([podman, "--root", f"{short}/r", "--runroot", f"{short}/rr", "--storage-driver", "vfs",
                                "pull", "--signature-policy", str(pol), ref], capture_output=True, text=True,
                               env=config_env, timeout=120)
            assert s.returncode != 0 and p.returncode != 0, (s.stderr, p.stderr)
            return s.stderr, p.stderr

        for err in outcome(signed, cenv):
            assert FOUND in err, err
        for err in outcome(unsigned, cenv):
            assert NONE in err, err
        # Control: without use-sigstore-attachments the signed image's attachment is not looked for.
        (tmp_path / "plain").mkdir()
        _, _, plain_env = _containers_config(tmp_path / "plain", registry, pub, attachments=False)
        for err in outcome(signed, plain_env):
            assert NONE in err, err
        # A re-pushed tag names a digest nobody signed.
        _push(busybox_image, tmp_path, signed, "p3")
        for err in outcome(signed, cenv):
            assert NONE in err, err
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_skopeo_copies_the_attachment_along(busybox_image, tmp_path, registry):
    import subprocess
    from tests.fixtures.building import need
    skopeo = need("skopeo")
    key, pub, env = _keys(tmp_path, "a")
    signed = _push(busybox_image, tmp_path, f"{registry.host}/sc/along:1", "a1")
    run_pybuild("sign", "--key", key, signed, root=busybox_image, env=env, check_rc=0)
    regd, _, cenv = _containers_config(tmp_path, registry, pub)
    pol = tmp_path / "accept.json"
    pol.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    out = tmp_path / "dir"
    subprocess.run([skopeo, "--registries.d", str(regd), "--policy", str(pol), "copy", "--all", "--src-tls-verify=false",
                    f"docker://{signed}", f"dir:{out}"], capture_output=True, text=True, env=cenv, timeout=120, check=True)
    sig = _manifest(registry, "sc/along", current_digest(registry.url, "sc/along", "1").replace(":", "-") + ".sig")
    annotation = sig["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]
    # The index's signature, stored by skopeo beside the copied index as its signature-1.
    assert annotation.encode() in (out / "signature-1").read_bytes()


# ---- the Done-when SBOM/provenance item, against a real Debian image ------------------------------
DEB_DIRS = (Path("/var/cache/pybuild"), Path("/var/cache/apt/archives"))
# Two real Debian packages whose dependencies a minbase satisfies (scripts/setup.sh fetches them).
EXTRA_DEBS = ("tini_*_amd64.deb", "arch-test_*_all.deb")


def test_debian_image_sbom_equals_dpkg_query_inside_it(root, tmp_path, registry):
    from registry.imports import import_image
    from registry.store import Store
    from tests.fixtures.building import write_context
    from tests.fixtures.conformance_cases import ConformanceSetupError, debian_minbase
    try:
        base_tree = debian_minbase()
    except ConformanceSetupError as exc:
        pytest.skip(f"no Debian minbase (debootstrap needs the Debian mirror of apt's sources): {exc}")
    debs = [next(iter(sorted(p for d in DEB_DIRS for p in d.glob(g))), None) for g in EXTRA_DEBS]
    if None in debs:
        pytest.skip(f"{EXTRA_DEBS} not in {DEB_DIRS[0]} (scripts/setup.sh fetches them with apt-get download)")
    import_image(Store(root), base_tree, "debian:bookworm", created="2000-01-01T00:00:00Z")
    base_digest = Store(root).resolve("debian:bookworm").digest
    ctx = write_context(tmp_path / "ctx", (
        "FROM debian:bookworm\nCOPY *.deb /tmp/\n"
        "RUN dpkg -i /tmp/*.deb && rm /tmp/*.deb && d=/usr/lib/python3/dist-packages/demo_pkg-1.4.2.dist-info"
        " && mkdir -p $d && printf 'Metadata-Version: 2.1\\nName: demo-pkg\\nVersion: 1.4.2\\n' > $d/METADATA\n"),
        {d.name: d.read_bytes() for d in debs})
    ref = f"{registry.host}/sc/debian:1"
    run_pybuild("build", "--push", "--sbom=true", "--provenance=mode=max", "-t", ref, ctx, root=root, check_rc=0,
                timeout=600)
    inside = run_pybuild("run", "--rm", ref, "dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version}\\n",
                         root=root, check_rc=0, timeout=300).stdout
    want = {}
    for line in inside.splitlines():
        status, name, version = line.split(" ", 2)
        if status == "installed":
            want[name] = version
    assert {"tini", "arch-test", "dpkg", "libc6"} <= set(want)

    sbom = json.loads(run_pybuild("attestations", "--remote", "--type", "spdx", ref, root=root, check_rc=0).stdout)
    purls = [r["referenceLocator"] for p in sbom["predicate"]["packages"] for r in p.get("externalRefs", [])
             if r.get("referenceType") == "purl"]
    debian = {p["name"]: p["versionInfo"] for p in sbom["predicate"]["packages"]
              if any(r["referenceLocator"].startswith("pkg:deb/") for r in p.get("externalRefs", []))}
    assert debian == want
    assert "pkg:pypi/demo-pkg@1.4.2" in purls

    # Provenance: its subject is the manifest pushed (read from the registry), its material the base.
    top = _manifest(registry, "sc/debian", "1")
    image = top["manifests"][0]["digest"]
    prov = json.loads(run_pybuild("attestations", "--remote", "--type", "provenance", ref, root=root,
                                  check_rc=0).stdout)
    assert [s["digest"]["sha256"] for s in prov["subject"]] == [image.split(":")[1]]
    deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert [d["digest"]["sha256"] for d in deps] == [base_digest.split(":")[1]]
    assert sbom["subject"] == prov["subject"]
