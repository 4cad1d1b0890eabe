"""`pybuild imagetools create|inspect` and `pybuild manifest create|inspect|add|push` against a
real registry:2: the fan-out pattern (each platform built on its own and pushed by digest, then
merged into one index by digest), and podman's local lists.

The images are `FROM scratch` + COPY, so building linux/arm64 needs no emulation.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry.platform import parse_platform
from registry.store import Store
from tests.fixtures.building import need, write_context
from tests.fixtures.cli import run_pybuild


def _build_by_digest(root: Path, ctx: Path, platform: str, repo: str, host: str, fmt: str = "oci",
                     *extra: str) -> str:
    meta = ctx.parent / f"{ctx.name}-m.json"
    run_pybuild("build", "--platform", platform, "--format", fmt, *extra, "--insecure-registry", host, "--metadata-file", meta,
                "-o", f"type=image,name={repo},push-by-digest=true,name-canonical=true,push=true", ctx,
                root=root, check_rc=0, timeout=300)
    return json.loads(meta.read_text())["containerimage.digest"]


@pytest.fixture(scope="module")
def two_images(registry, tmp_path_factory):
    """HOST/it/app@D1 (linux/amd64) and @D2 (linux/arm64), built by two store roots (two runners)."""
    base = tmp_path_factory.mktemp("imagetools")
    repo = f"{registry.host}/it/app"
    digests = []
    for arch in ("amd64", "arm64"):
        ctx = base / f"ctx-{arch}"
        write_context(ctx, "FROM scratch\nCOPY arch /arch\n", {"arch": f"{arch}\n"})
        digests.append(_build_by_digest(base / f"runner-{arch}", ctx, f"linux/{arch}", repo, registry.host))
    return repo, digests


def _skopeo_raw(skopeo: str, ref: str) -> tuple[bytes, dict]:
    out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, check=True).stdout
    return out, json.loads(out)


def test_create_merges_two_digests_into_one_index(two_images, registry, tmp_path):
    from registry.store import Store
    skopeo = need("skopeo")
    repo, (d1, d2) = two_images
    host = registry.host
    r = run_pybuild("imagetools", "create", "--insecure-registry", host, "-t", f"{repo}:multi",
                    f"{repo}@{d1}", f"{repo}@{d2}", root=tmp_path / "r", check_rc=0)
    line = r.stdout.strip()
    assert line.startswith(f"{repo}:multi@sha256:")
    data, raw = _skopeo_raw(skopeo, f"{repo}:multi")
    assert raw["mediaType"] == mt.OCI_INDEX
    # Each source is the build's index (its image and the image's provenance attestation): the
    # merged index lists the images of both, then their attestations (BuildKit's order).
    got = [m for d in (d1, d2) for m in _skopeo_raw(skopeo, f"{repo}@{d}")[1]["manifests"]]
    want = [m for m in got if m["platform"]["architecture"] != "unknown"] + \
        [m for m in got if m["platform"]["architecture"] == "unknown"]
    assert raw["manifests"] == want and len(want) == 4
    images = [m for m in raw["manifests"] if m["platform"]["architecture"] != "unknown"]
    assert [(m["platform"]["os"], m["platform"]["architecture"]) for m in images] == [("linux", "amd64"),
                                                                                     ("linux", "arm64")]
    arm = images[1]["digest"]
    assert line.endswith("@sha256:" + hashlib.sha256(data).hexdigest())

    # Pulled for arm64 into a fresh store: the arm64 image.
    fresh = tmp_path / "fresh"
    run_pybuild("pull", "--platform", "linux/arm64", "--insecure-registry", host, f"{repo}:multi",
                root=fresh, check_rc=0)
    store = Store(fresh)
    assert store.image_config(f"{repo}:multi", parse_platform("linux/arm64")).architecture == "arm64"
    assert store.image_manifest(f"{repo}:multi", parse_platform("linux/arm64"))[0].digest == arm

    # inspect lists both platforms; --raw is the registry's bytes.
    out = run_pybuild("imagetools", "inspect", "--insecure-registry", host, f"{repo}:multi", check_rc=0).stdout
    assert f"MediaType: {mt.OCI_INDEX}" in out
    assert all(f"Name:      {repo}@{m['digest']}" in out for m in raw["manifests"])
    assert f"attestation for {arm}" in out
    assert "Platform:  linux/amd64" in out and "Platform:  linux/arm64" in out
    rawout = run_pybuild("imagetools", "inspect", "--raw", "--insecure-registry", host, f"{repo}:multi",
                         check_rc=0, text=False).stdout
    assert rawout.rstrip(b"\n") == data.rstrip(b"\n")
    # A single image: its platform from the config.
    one = run_pybuild("imagetools", "inspect", "--insecure-registry", host, f"{repo}@{arm}", check_rc=0).stdout
    assert "Platform:  linux/arm64" in one and "Manifests:" not in one


def test_dry_run_prints_the_index_and_pushes_nothing(two_images, registry, tmp_path):
    repo, (d1, d2) = two_images
    r = run_pybuild("imagetools", "create", "--dry-run", "--insecure-registry", registry.host,
                    "-t", f"{repo}:dry", "--annotation", "index:org.opencontainers.image.title=it",
                    f"{repo}@{d1}", f"{repo}@{d2}", check_rc=0)
    doc = json.loads(r.stdout)
    assert doc["mediaType"] == mt.OCI_INDEX and doc["annotations"] == {"org.opencontainers.image.title": "it"}
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64", "unknown", "unknown"]
    tags = run_pybuild("tags", "--insecure-registry", registry.host, repo, check_rc=0).stdout.split()
    assert "dry" not in tags


def test_sources_from_another_repository_and_registry_are_copied(two_images, registry, registry2, tmp_path):
    skopeo = need("skopeo")
    repo, (d1, d2) = two_images
    # An index as a source (by tag) plus several targets: another repository on the same registry
    # (children mounted) and another registry (children streamed).
    run_pybuild("imagetools", "create", "--insecure-registry", registry.host, "-t", f"{repo}:pair",
                f"{repo}@{d1}", f"{repo}@{d2}", check_rc=0)
    targets = [f"{registry.host}/it/other:v1", f"{registry2.host}/mirror/app:v1"]
    r = run_pybuild("imagetools", "create", "--insecure-registry", registry.host, "--insecure-registry",
                    registry2.host, "-t", targets[0], "-t", targets[1], f"{repo}:pair", check_rc=0)
    assert len(r.stdout.split()) == 2
    pair = _skopeo_raw(skopeo, f"{repo}:pair")[0]
    for t in targets:
        data, raw = _skopeo_raw(skopeo, t)
        assert data == pair      # the same index, byte for byte
        name = t.rsplit(":", 1)[0]
        for m in raw["manifests"]:      # every child (and its config) is at the target
            _, child = _skopeo_raw(skopeo, f"{name}@{m['digest']}")
            assert child["mediaType"] == mt.OCI_MANIFEST
            subprocess.run([skopeo, "inspect", "--tls-verify=false", "--raw", "--config",
                            f"docker://{name}@{m['digest']}"], capture_output=True, check=True)


def test_docker_typed_sources_give_a_manifest_list(registry, tmp_path):
    skopeo = need("skopeo")
    repo = f"{registry.host}/it/docker"
    digests = []
    for arch in ("amd64", "arm64"):
        ctx = tmp_path / f"ctx-{arch}"
        write_context(ctx, "FROM scratch\nCOPY arch /arch\n", {"arch": arch})
        digests.append(_build_by_digest(tmp_path / "root", ctx, f"linux/{arch}", repo, registry.host, "docker",
                                       "--provenance=false"))   # single Docker manifests
    run_pybuild("imagetools", "create", "--insecure-registry", registry.host, "-t", f"{repo}:ml",
                *[f"{repo}@{d}" for d in digests], check_rc=0)
    _, raw = _skopeo_raw(skopeo, f"{repo}:ml")
    assert raw["mediaType"] == mt.DOCKER_MANIFEST_LIST
    assert [m["mediaType"] for m in raw["manifests"]] == [mt.DOCKER_MANIFEST] * 2


def test_merge_index_dedupes_digests_and_refuses_a_platform_twice():
    from builder.cli.imagetools import Source, merge_index
    from registry.errors import RegistryError
    from registry.manifest import Descriptor
    from registry.reference import parse_reference

    def src(name, *entries):
        return Source(parse_reference(name), None, None,
                      [Descriptor(mt, "sha256:" + d * 64, 10, platform=parse_platform(p)) for mt, d, p in entries])

    a = src("h/r@sha256:" + "a" * 64, (mt.DOCKER_MANIFEST, "a", "linux/amd64"))
    b = src("h/r:arm", (mt.DOCKER_MANIFEST, "b", "linux/arm64"))
    idx = merge_index([a, b, a])
    assert idx.media_type == mt.DOCKER_MANIFEST_LIST and len(idx.manifests) == 2
    assert merge_index([a, b], {"k": "v"}).media_type == mt.OCI_INDEX     # annotations need OCI
    c = src("h/r:oci", (mt.OCI_MANIFEST, "c", "linux/arm64/v8"))
    with pytest.raises(RegistryError, match="platform linux/arm64/v8 is given twice"):
        merge_index([a, b, c])
    assert merge_index([a, c]).media_type == mt.OCI_INDEX


def test_usage_errors(registry):
    r = run_pybuild("imagetools", "create", "-t", f"{registry.host}/it/app:x")
    assert r.returncode == 2 and "name at least one SRC" in r.stderr
    r = run_pybuild("imagetools", "create", "-t", f"{registry.host}/it/app@sha256:" + "0" * 64, "x/y:1")
    assert r.returncode == 2 and "names a tag, not a digest" in r.stderr


# ---- pybuild manifest ------------------------------------------------------------------------------

def test_manifest_create_and_inspect_are_imagetools_create(two_images, registry, tmp_path):
    skopeo = need("skopeo")
    repo, (d1, d2) = two_images
    host = registry.host
    srcs = [f"{repo}@{d1}", f"{repo}@{d2}"]
    run_pybuild("imagetools", "create", "--insecure-registry", host, "-t", f"{repo}:by-it", *srcs, check_rc=0)
    r = run_pybuild("manifest", "create", "--insecure-registry", host, "-t", f"{repo}:by-manifest",
                    "--annotation", "org.opencontainers.image.title=m", *srcs, check_rc=0)
    data, raw = _skopeo_raw(skopeo, f"{repo}:by-manifest")
    assert r.stdout.strip() == f"{repo}:by-manifest@sha256:" + hashlib.sha256(data).hexdigest()
    it = _skopeo_raw(skopeo, f"{repo}:by-it")[1]
    assert raw["manifests"] == it["manifests"] and raw["annotations"] == {"org.opencontainers.image.title": "m"}
    # inspect: the registry's bytes (docker/podman manifest inspect print the JSON); with no local
    # store REF is looked up in its registry; `manifest REF` is the same, as before.
    out = run_pybuild("manifest", "inspect", "--insecure-registry", host, f"{repo}:by-manifest",
                      root=tmp_path / "none", check_rc=0, text=False).stdout
    assert out.rstrip(b"\n") == data.rstrip(b"\n")
    assert not (tmp_path / "none").exists()          # looking did not make a store
    out = run_pybuild("manifest", f"{repo}:by-manifest", check_rc=0, text=False).stdout
    assert out.rstrip(b"\n") == data.rstrip(b"\n")
    r = run_pybuild("manifest", "creat", "x")
    assert r.returncode == 2 and "invalid choice: 'creat'" in r.stderr
    r = run_pybuild("manifest", "create", "--amend", "-t", f"{repo}:x", *srcs)
    assert r.returncode == 2 and "--amend is for a local LIST" in r.stderr


def test_manifest_local_list_podman_spelling(registry, tmp_path):
    """`manifest create LIST IMAGE`, `manifest add`, `manifest inspect`, `manifest push` (podman's
    words) on images in the local store; what skopeo then reads from the registry."""
    skopeo = need("skopeo")
    root = tmp_path / "root"
    for arch in ("amd64", "arm64"):
        ctx = write_context(tmp_path / f"ctx-{arch}", "FROM scratch\nCOPY arch /arch\n", {"arch": arch})
        run_pybuild("build", "-q", "--platform", f"linux/{arch}", "-t", f"app:{arch}", ctx, root=root, check_rc=0)
    amd = Store(root).resolve("app:amd64").digest
    arm = Store(root).resolve("app:arm64").digest
    r = run_pybuild("manifest", "create", "app:list", "app:amd64", root=root, check_rc=0)
    assert r.stdout.strip() == Store(root).resolve("app:list").digest
    r = run_pybuild("manifest", "create", "app:list", "app:arm64", root=root)
    assert r.returncode == 1 and "already names an image" in r.stderr and "manifest add" in r.stderr
    run_pybuild("manifest", "add", "--annotation", "org.opencontainers.image.title=l", "app:list", "app:arm64",
                root=root, check_rc=0)
    doc = json.loads(run_pybuild("manifest", "inspect", "app:list", root=root, check_rc=0).stdout)
    assert doc["mediaType"] == mt.OCI_INDEX and doc["annotations"] == {"org.opencontainers.image.title": "l"}
    assert [(m["digest"], m["platform"]["architecture"]) for m in doc["manifests"]] == [(amd, "amd64"), (arm, "arm64")]
    # Adding the same image again changes nothing; a second image for a platform is refused.
    run_pybuild("manifest", "add", "app:list", "app:arm64", root=root, check_rc=0)
    assert len(json.loads(run_pybuild("manifest", "inspect", "app:list", root=root).stdout)["manifests"]) == 2
    ctx = write_context(tmp_path / "ctx-arm2", "FROM scratch\nCOPY arch /other\n", {"arch": "x"})
    run_pybuild("build", "-q", "--platform", "linux/arm64", "-t", "app:arm2", ctx, root=root, check_rc=0)
    r = run_pybuild("manifest", "add", "app:list", "app:arm2", root=root)
    assert r.returncode == 1 and "platform linux/arm64 is given twice" in r.stderr and "Traceback" not in r.stderr
    r = run_pybuild("manifest", "add", "nolist:1", "app:arm64", root=root)
    assert r.returncode == 1 and "no list nolist:1 in the local store" in r.stderr
    r = run_pybuild("manifest", "create", "other:list", "app:missing", root=root)
    assert r.returncode == 1 and "app:missing: not in the local store" in r.stderr
    r = run_pybuild("manifest", "add", "app:amd64", "app:arm64", root=root)
    assert r.returncode == 1 and "is an image, not a list" in r.stderr

    dest = f"{registry.host}/it/list:v1"
    r = run_pybuild("manifest", "push", "--all", "--insecure-registry", registry.host, "app:list", dest,
                    root=root, check_rc=0)
    data, raw = _skopeo_raw(skopeo, dest)
    assert data == Store(root).read_blob(Store(root).resolve("app:list").digest)
    assert r.stdout.strip() == f"{dest}@sha256:" + hashlib.sha256(data).hexdigest()
    for m in raw["manifests"]:
        _, child = _skopeo_raw(skopeo, f"{registry.host}/it/list@{m['digest']}")
        assert child["mediaType"] == mt.OCI_MANIFEST


def test_manifest_create_of_a_missing_source_names_it(registry, tmp_path):
    missing = f"{registry.host}/it/none@sha256:" + "0" * 64
    r = run_pybuild("manifest", "create", "--insecure-registry", registry.host, "-t", f"{registry.host}/it/none:x",
                    missing)
    assert r.returncode == 1 and f"{registry.host}/it/none" in r.stderr and "Traceback" not in r.stderr
    tags = run_pybuild("tags", "--insecure-registry", registry.host, f"{registry.host}/it/none").stdout.split()
    assert "x" not in tags
