"""Attestations (issue 17): pybuild's own SBOM (dpkg, apk, Python, npm), SLSA provenance, and
attaching both as BuildKit does (an index with attestation manifests), in the store and pushed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.attest import Limits, make_sbom, parse_attest_options, scan_view
from builder.errors import BuildError
from builder.runtime.rootview import RootView
from tests.fixtures.building import build_in

DEBIAN_CACHE = Path("/var/tmp/pybuild-conformance-debian")

STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl (3.0.11-1~deb12u2)
Version: 3.0.11-1~deb12u2
Description: Secure Sockets Layer toolkit
 continuation line

Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1:1.21.22
"""

APK = """C:Q1abc
P:musl
V:1.2.4-r2
A:x86_64
o:musl
L:MIT

P:busybox
V:1.36.1-r5
A:x86_64
L:GPL-2.0-only
"""


def _tree(base: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return base


def synthetic(tmp_path: Path) -> RootView:
    low = _tree(tmp_path / "l0", {
        "etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
        "var/lib/dpkg/status": STATUS,
        "lib/apk/db/installed": APK,
        "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nLicense: MIT\n\nbody\nName: not-me\n",
        "usr/local/lib/python3.11/site-packages/Foo_Bar.egg-info/PKG-INFO":
            "Name: Foo_Bar\nVersion: 0.3\n",
        "app/node_modules/left-pad/package.json": json.dumps({"name": "left-pad", "version": "1.3.0",
                                                              "license": "WTFPL"}),
        "app/node_modules/@types/node/package.json": json.dumps({"name": "@types/node", "version": "20.1.0"}),
        "app/node_modules/broken/package.json": "{not json",
    })
    up = _tree(tmp_path / "l1", {"app/node_modules/left-pad/package.json":
                                 json.dumps({"name": "left-pad", "version": "1.3.1"})})
    return RootView([low, up])


def test_scan_finds_every_ecosystem_with_purls(tmp_path):
    res = scan_view(synthetic(tmp_path))
    purls = [p.purl for p in res.packages]
    assert purls == [
        "pkg:apk/alpine/busybox@1.36.1-r5?arch=x86_64&distro=12",
        "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=12",
        "pkg:deb/debian/dpkg@1%3A1.21.22?arch=amd64&distro=debian-12",
        "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64&distro=debian-12&upstream=glibc",
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl%403.0.11-1~deb12u2",
        "pkg:npm/%40types/node@20.1.0",
        "pkg:npm/left-pad@1.3.1",                # the upper layer's file wins
        "pkg:pypi/foo-bar@0.3",
        "pkg:pypi/six@1.16.0",
    ]
    libc = next(p for p in res.packages if p.name == "libc6")
    assert (libc.version, libc.source, libc.arch) == ("2.36-9+deb12u4", "glibc", "amd64")
    assert res.truncated == []


def test_spdx_and_cyclonedx_are_deterministic(tmp_path):
    view = synthetic(tmp_path)
    a = make_sbom(view, "x:1", "spdx", source_date_epoch=0)
    b = make_sbom(view, "x:1", "spdx", source_date_epoch=0)
    assert a == b
    assert a["spdxVersion"] == "SPDX-2.3" and a["creationInfo"]["created"] == "1970-01-01T00:00:00Z"
    names = [p["name"] for p in a["packages"]]
    assert "libc6" in names and "removed-one" not in names
    six = next(p for p in a["packages"] if p["name"] == "six")
    assert six["licenseDeclared"] == "MIT"
    assert six["externalRefs"][0]["referenceLocator"] == "pkg:pypi/six@1.16.0"
    assert len(a["relationships"]) == len(a["packages"])
    c = make_sbom(view, "x:1", "cyclonedx", source_date_epoch=0)
    assert c["bomFormat"] == "CycloneDX" and c["specVersion"] == "1.5"
    assert c == make_sbom(view, "x:1", "cyclonedx", source_date_epoch=0)
    assert {x["purl"] for x in c["components"]} == {p["externalRefs"][0]["referenceLocator"] for p in a["packages"]}


def test_scan_is_bounded_and_says_so(tmp_path):
    many = "".join(f"Package: p{i}\nStatus: install ok installed\nVersion: 1\n\n" for i in range(200))
    files = {"var/lib/dpkg/status": many}
    for i in range(50):
        files[f"node_modules/m{i}/package.json"] = json.dumps({"name": f"m{i}", "version": "1"})
    view = RootView([_tree(tmp_path / "l", files)])
    res = scan_view(view, Limits(status_bytes=2000, packages=60))
    assert len(res.packages) == 60
    assert any("only its first 2000" in t for t in res.truncated)
    assert any("more than 60 packages" in t for t in res.truncated)
    doc = make_sbom(view, "x", limits=Limits(status_bytes=2000, packages=60))
    assert "TRUNCATED" in doc["creationInfo"]["comment"]
    # A deep tree stops at the depth cap instead of recursing.
    deep = tmp_path / "d"
    p = deep
    for _ in range(80):
        p = p / "a"
    p.mkdir(parents=True)
    res = scan_view(RootView([deep]), Limits(walk_depth=20))
    assert any("deeper than 20" in t for t in res.truncated)


def test_scan_never_follows_links_out_of_the_image(tmp_path):
    canary = tmp_path / "host-status"
    canary.write_text("Package: host-only\nStatus: install ok installed\nVersion: 9\n")
    layer = tmp_path / "l"
    (layer / "var/lib/dpkg").mkdir(parents=True)
    os.symlink(str(canary), layer / "var/lib/dpkg/status")
    (layer / "node_modules").mkdir()
    os.symlink(str(tmp_path), layer / "node_modules/evil")
    res = scan_view(RootView([layer]))
    assert [p.name for p in res.packages] == []


def test_attest_option_parsing():
    o = parse_attest_options(None, None, [], default_provenance=False)
    assert not o.any and not o.explicit
    o = parse_attest_options(None, None, [], default_provenance=True)
    assert o.provenance == "min" and not o.sbom
    o = parse_attest_options("true", "false", [], default_provenance=True)
    assert o.sbom and o.provenance is None and o.explicit
    o = parse_attest_options(None, None, ["type=sbom,format=cyclonedx", "type=provenance,mode=max"], False)
    assert (o.sbom, o.sbom_format, o.provenance) == (True, "cyclonedx", "max")
    o = parse_attest_options("format=spdx", "mode=max", [], False)
    assert (o.sbom, o.provenance) == (True, "max")
    with pytest.raises(BuildError, match="runs no scanner"):
        parse_attest_options("generator=docker/scout-sbom-indexer", None, [], False)
    with pytest.raises(BuildError, match="use min or max"):
        parse_attest_options(None, "mode=full", [], False)


# ---- real builds -----------------------------------------------------------------------------------
def _attestations(root: Path, ref: str):
    from registry.manifest import Index
    from registry.store import Store
    store = Store(root)
    idx = store.get_manifest(store.resolve(ref).digest)
    assert isinstance(idx, Index)
    out = {}
    for e in idx.manifests:
        if e.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            assert (e.platform.os, e.platform.architecture) == ("unknown", "unknown")
            m = store.get_manifest(e.digest)
            for layer in m.layers:
                assert layer.media_type == "application/vnd.in-toto+json"
                stmt = json.loads(store.read_blob(layer.digest))
                assert layer.annotations["in-toto.io/predicate-type"] == stmt["predicateType"]
                out[stmt["predicateType"]] = (e, stmt)
    return idx, out


def test_plain_build_stays_a_bare_manifest(busybox_image, tmp_path):
    from registry.store import Store
    r = build_in(busybox_image, tmp_path / "ctx", "FROM busybox:latest\nRUN echo hi > /x\n", tags=["plain:1"],
                 source_date_epoch=0)
    assert r.index is None
    assert Store(busybox_image).resolve("plain:1").digest == r.manifest.digest


def test_build_with_sbom_and_provenance(busybox_image, tmp_path):
    from registry.store import Store
    secret = tmp_path / "s.txt"
    secret.write_text("TOPSECRET-VALUE-42")
    df = ("FROM busybox:latest\nARG GREETING\n"
          "RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null; mkdir -p "
          "/usr/lib/python3/dist-packages/demo-2.0.dist-info && printf 'Name: demo\\nVersion: 2.0\\n' > "
          "/usr/lib/python3/dist-packages/demo-2.0.dist-info/METADATA\n")
    r = build_in(busybox_image, tmp_path / "ctx", df, tags=["att:1"], sbom="true", provenance="mode=max",
                 build_args={"GREETING": "hello"}, secrets=[f"id=tok,src={secret}"], source_date_epoch=1700000000)
    assert r.index is not None
    store = Store(busybox_image)
    base = store.resolve("busybox:latest").digest
    idx, atts = _attestations(busybox_image, "att:1")
    assert idx.manifests[0].digest == r.manifest.digest and idx.manifests[0].platform.os == "linux"
    entry, sbom = atts["https://spdx.dev/Document"]
    assert entry.annotations["vnd.docker.reference.digest"] == r.manifest.digest
    assert sbom["subject"][0]["digest"]["sha256"] == r.manifest.digest.split(":")[1]
    assert "pkg:pypi/demo@2.0" in [p["externalRefs"][0]["referenceLocator"] for p in sbom["predicate"]["packages"]]
    _, prov = atts["https://slsa.dev/provenance/v1"]
    pred = prov["predicate"]
    bd = pred["buildDefinition"]
    assert bd["externalParameters"]["request"]["args"]["build-arg:GREETING"] == "hello"
    import hashlib
    assert bd["externalParameters"]["configSource"]["digest"]["sha256"] == hashlib.sha256(df.encode()).hexdigest()
    assert [d["digest"]["sha256"] for d in bd["resolvedDependencies"]] == [base.split(":")[1]]
    assert bd["resolvedDependencies"][0]["uri"].startswith("pkg:docker/busybox@latest")
    assert pred["runDetails"]["metadata"]["startedOn"] == "2023-11-14T22:13:20Z"
    assert pred["runDetails"]["builder"]["id"].startswith("pybuild/")
    # The secret's value is nowhere in what was stored for the build (its id is).
    for d in store.blobs():
        data = store.read_blob(d)
        assert b"TOPSECRET-VALUE-42" not in data, d
    assert bd["externalParameters"]["request"]["secrets"] == [{"id": "tok"}]
    # The store's image for this platform is still the image, not the attestation.
    desc, _ = store.image_manifest("att:1")
    assert desc.digest == r.manifest.digest
    # Deterministic: the same build gives the same SBOM (the max provenance differs: its steps
    # now say "cached").
    r2 = build_in(busybox_image, tmp_path / "ctx", df, tags=["att:1"], sbom="true", provenance="mode=max",
                  build_args={"GREETING": "hello"}, secrets=[f"id=tok,src={secret}"], source_date_epoch=1700000000)
    assert r2.manifest.digest == r.manifest.digest
    _, atts2 = _attestations(busybox_image, "att:1")
    assert atts2["https://spdx.dev/Document"][1] == atts["https://spdx.dev/Document"][1]
    assert atts2["https://slsa.dev/provenance/v1"][1]["predicate"]["buildDefinition"] == bd


def test_cyclonedx_option(busybox_image, tmp_path):
    build_in(busybox_image, tmp_path / "ctx", "FROM busybox:latest\n", tags=["cdx:1"],
             attest=["type=sbom,format=cyclonedx"], source_date_epoch=0)
    _, atts = _attestations(busybox_image, "cdx:1")
    assert set(atts) == {"https://cyclonedx.org/bom"}
    assert atts["https://cyclonedx.org/bom"][1]["predicate"]["specVersion"] == "1.5"


def test_debian_minbase_sbom_matches_dpkg_status(root, tmp_path):
    if not (DEBIAN_CACHE / "var/lib/dpkg/status").is_file():
        pytest.skip(f"no Debian minbase cached at {DEBIAN_CACHE} (scripts/conformance_parity.py makes it "
                    "with debootstrap, which needs a Debian mirror)")
    from registry.imports import import_image
    from registry.store import Store
    import_image(Store(root), DEBIAN_CACHE, "debian:bookworm", created="2000-01-01T00:00:00Z")
    build_in(root, tmp_path / "ctx", "FROM debian:bookworm\n", tags=["deb:1"], sbom="true",
             provenance="false", source_date_epoch=0)
    _, atts = _attestations(root, "deb:1")
    pkgs = {p["name"]: p for p in atts["https://spdx.dev/Document"][1]["predicate"]["packages"]}
    want = {}
    from builder.attest.sbom import _paragraphs
    for para in _paragraphs((DEBIAN_CACHE / "var/lib/dpkg/status").read_text()):
        if para.get("Status", "").endswith(" installed"):
            want[para["Package"]] = para["Version"]
    assert {n: p["versionInfo"] for n, p in pkgs.items()} == want
    assert "dpkg" in pkgs and "libc6" in pkgs
    assert "pkg:deb/debian/libc6@" + want["libc6"].replace(":", "%3A") in \
        pkgs["libc6"]["externalRefs"][0]["referenceLocator"]
    if shutil.which("dpkg-query"):
        out = subprocess.run(["dpkg-query", f"--admindir={DEBIAN_CACHE}/var/lib/dpkg", "-W",
                              "-f", "${Package} ${Version}\\n"], capture_output=True, text=True, check=True).stdout
        assert dict(line.split(" ", 1) for line in out.splitlines()) == want


def test_push_carries_the_attestations(busybox_image, tmp_path, registry):
    skopeo = shutil.which("skopeo")
    reg = registry
    if True:
        ref = f"{reg.host}/att/push:1"
        r = build_in(busybox_image, tmp_path / "ctx", "FROM busybox:latest\nRUN echo x > /y\n", tags=[ref],
                     push=True, insecure_registries=(reg.host,), source_date_epoch=0)
        assert r.index is not None          # --push: provenance on by default (mode=min), as buildx
        if skopeo is None:
            pytest.skip("skopeo not installed")
        raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                             capture_output=True, text=True, check=True).stdout
        idx = json.loads(raw)
        assert idx["mediaType"] == "application/vnd.oci.image.index.v1+json"
        assert idx["manifests"][0]["digest"] == r.manifest.digest
        att = idx["manifests"][1]
        assert att["platform"] == {"architecture": "unknown", "os": "unknown"}
        assert att["annotations"] == {"vnd.docker.reference.digest": r.manifest.digest,
                                      "vnd.docker.reference.type": "attestation-manifest"}
        am = json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                                        f"docker://{reg.host}/att/push@{att['digest']}"],
                                       capture_output=True, text=True, check=True).stdout)
        assert [l["annotations"]["in-toto.io/predicate-type"] for l in am["layers"]] == \
            ["https://slsa.dev/provenance/v1"]
