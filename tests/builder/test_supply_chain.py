"""Issue 17's registry half: attestations and signatures discoverable through the OCI referrers
API and its tag-schema fallback (registry:2 here is distribution 2.8: no referrers API), and the
`pybuild attestations` command, local and remote."""
from __future__ import annotations

import json

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
