"""Multi-platform builds: emulation detection, emulated RUN (real qemu-user-static through
binfmt_misc), two-platform indexes tagged, exported, pushed to a real registry:2 and pulled back.

The arm64 base is made offline from Debian's busybox-static:arm64 (scripts/setup.sh caches the
.deb and registers the emulators); tests needing it skip, saying why, where that is missing.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from builder.engine.emulation import emulation_problem
from builder.errors import BuildError
from registry.platform import parse_platform
from tests.fixtures.building import build_in, need, write_context
from tests.fixtures.cli import run_pybuild
from tests.fixtures.images import import_busybox_index

ARM64 = parse_platform("linux/arm64")


# ---- detection, on a fake binfmt_misc directory ---------------------------------------------------

AARCH64_MAGIC = "7f454c460201010000000000000000000200b700"
AARCH64_MASK = "ffffffffffffff00fffffffffffffffffeffffff"


def _binfmt(d: Path, entry: dict | None, status: str = "enabled") -> Path:
    d.mkdir()
    (d / "register").write_text("")
    (d / "status").write_text(status + "\n")
    if entry is not None:
        (d / "qemu-aarch64").write_text(
            f"{entry.get('state', 'enabled')}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n"
            f"flags: {entry.get('flags', 'POF')}\noffset 0\nmagic {entry.get('magic', AARCH64_MAGIC)}\n"
            f"mask {AARCH64_MASK}\n")
    return d


def test_emulation_detection_says_what_is_missing(tmp_path):
    assert emulation_problem(ARM64, str(_binfmt(tmp_path / "ok", {}))) is None
    msg = emulation_problem(ARM64, str(tmp_path / "unmounted"))
    assert "not mounted" in msg and "mount -t binfmt_misc" in msg
    msg = emulation_problem(ARM64, str(_binfmt(tmp_path / "none", None)))
    assert "no binfmt_misc entry runs linux/arm64" in msg and "0xb7" in msg and "apt-get install qemu-user-static" in msg
    msg = emulation_problem(ARM64, str(_binfmt(tmp_path / "noF", {"flags": "OP"})))
    assert "lacks the F (fix-binary) flag" in msg and "flags: OP" in msg and "echo -1 >" in msg
    msg = emulation_problem(ARM64, str(_binfmt(tmp_path / "off", {"state": "disabled"})))
    assert "is disabled" in msg and "echo 1 >" in msg
    # An entry for another machine (riscv64's e_machine 0xf3) does not count for arm64.
    other = AARCH64_MAGIC[:36] + "f300"
    msg = emulation_problem(ARM64, str(_binfmt(tmp_path / "other", {"magic": other})))
    assert "no binfmt_misc entry runs linux/arm64" in msg
    msg = emulation_problem(ARM64, str(_binfmt(tmp_path / "globaloff", {}, status="disabled")))
    assert "binfmt_misc is disabled" in msg
    assert emulation_problem(parse_platform("linux/amd64"), str(tmp_path / "unmounted")) is None  # native


# ---- images ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def _mp_layout(tmp_path_factory) -> Path:
    """A store with busybox:latest (amd64), arm64-busybox:latest (arm64/v8) and bb:multi, an index
    of the two."""
    from registry.store import Store
    base = tmp_path_factory.mktemp("mp-images")
    store = Store(base / "root")
    import_busybox_index(store, base, "bb:multi")
    return store.layout


@pytest.fixture
def mp_root(root: Path, _mp_layout: Path) -> Path:
    dest = root / "images"
    shutil.copytree(_mp_layout, dest, ignore=shutil.ignore_patterns(".lock", ".gc.lock", "leases"))
    (dest / "leases").mkdir(exist_ok=True)
    return root


def test_emulated_run_prints_aarch64(mp_root, tmp_path):
    t = time.monotonic()
    res = build_in(mp_root, tmp_path / "ctx", "FROM arm64-busybox\nRUN uname -m > /arch\n",
                   platform="linux/arm64", tags=["emu:arm"], outputs=[f"type=local,dest={tmp_path / 'out'}"])
    elapsed = time.monotonic() - t
    assert (tmp_path / "out" / "arch").read_text().strip() == "aarch64"
    assert res.config["architecture"] == "arm64"
    print(f"emulated arm64 build: {elapsed:.2f}s")


MP_DOCKERFILE = """\
FROM --platform=$BUILDPLATFORM busybox AS build
ARG TARGETARCH
ARG BUILDPLATFORM
ARG TARGETPLATFORM
RUN echo "$TARGETARCH $TARGETPLATFORM on $BUILDPLATFORM $(uname -m)" > /made
FROM bb:multi
ARG TARGETOS
COPY --from=build /made /made
RUN uname -m > /arch && echo "$TARGETOS" > /os
"""


def test_two_platform_build_index_push_pull(mp_root, tmp_path, registry):
    from registry import mediatypes as mt
    from registry.store import Store
    skopeo = need("skopeo")
    ref = f"{registry.host}/mp/app:v1"
    out = tmp_path / "out"
    res = build_in(mp_root, tmp_path / "ctx", MP_DOCKERFILE, platform="linux/amd64,linux/arm64", tags=[ref],
                   push=True, insecure_registries=(registry.host,),
                   outputs=[f"type=local,dest={out}", f"type=oci,dest={tmp_path / 'app.tar'}"],
                   metadata_file=str(tmp_path / "meta.json"), progress_out=(log := io.StringIO()))
    # Progress names the platform as BuildKit does (the build stage: build platform -> target).
    assert "[linux/amd64->arm64 build 5/5] RUN echo" in log.getvalue()
    assert "[linux/arm64 stage-1 4/4] RUN uname -m" in log.getvalue()
    assert "[linux/amd64 build 5/5] RUN echo" in log.getvalue()
    assert res.manifest.media_type == mt.OCI_INDEX and len(res.platforms) == 2
    assert [p.config["architecture"] for p in res.platforms] == ["amd64", "arm64"]
    # Per-platform local output; the build stage ran natively for both (x86_64).
    assert (out / "linux_amd64" / "arch").read_text().strip() == "x86_64"
    assert (out / "linux_arm64" / "arch").read_text().strip() == "aarch64"
    assert (out / "linux_arm64" / "made").read_text().strip() == "arm64 linux/arm64 on linux/amd64 x86_64"
    assert (out / "linux_arm64" / "os").read_text().strip() == "linux"
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["containerimage.digest"] == res.digest
    # Tagged locally as the index.
    assert Store(mp_root).resolve(ref).digest == res.digest

    raw = json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert raw["mediaType"] == mt.OCI_INDEX
    # Both platforms, then the provenance of each (on by default for a push, as buildx).
    assert index_shape(raw) == [("image", "linux/amd64"), ("image", "linux/arm64"),
                                ("attestation", "of #0"), ("attestation", "of #1")]
    assert [raw["manifests"][i]["digest"] for i in (0, 1)] == [p.manifest.digest for p in res.platforms]
    info = json.loads(subprocess.run([skopeo, "inspect", "--tls-verify=false", "--override-arch", "arm64",
                                      f"docker://{ref}"], capture_output=True, text=True, check=True).stdout)
    assert info["Architecture"] == "arm64"
    # The OCI archive holds the index.
    oci = json.loads(subprocess.run([skopeo, "inspect", "--raw", f"oci-archive:{tmp_path / 'app.tar'}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert index_shape(oci) == index_shape(raw)

    # Pulled back for arm64 into another store.
    from tests.fixtures.cli import run_pybuild
    other = tmp_path / "other"
    run_pybuild("pull", "--platform", "linux/arm64", "--insecure-registry", registry.host, ref,
                root=other, check_rc=0)
    cfg = Store(other).image_config(ref, parse_platform("linux/arm64"))
    assert cfg.architecture == "arm64"

    # A warm rebuild is all cached.
    again = build_in(mp_root, tmp_path / "ctx", MP_DOCKERFILE, platform="linux/amd64,linux/arm64", tags=[ref])
    assert [p.layers for p in again.platforms] == [p.layers for p in res.platforms]
    work = [s for s in again.steps if s.instruction.startswith(("RUN", "COPY"))]
    assert len(work) == 6 and all(s.cached for s in work)


def index_shape(raw: dict) -> list[tuple[str, str]]:
    """An index as [(kind, what)]: ("image", "linux/arm64") or ("attestation", "of #N"), N the
    position of the image entry its vnd.docker.reference.digest names."""
    pos = {m["digest"]: i for i, m in enumerate(raw["manifests"])}
    out = []
    for m in raw["manifests"]:
        ann = m.get("annotations") or {}
        if ann.get("vnd.docker.reference.type") == "attestation-manifest":
            assert m["platform"] == {"architecture": "unknown", "os": "unknown"}
            out.append(("attestation", f"of #{pos[ann['vnd.docker.reference.digest']]}"))
        else:
            assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
            out.append(("image", f"{m['platform']['os']}/{m['platform']['architecture']}"))
    return out


@contextlib.contextmanager
def _podman_private():
    """podman on a storage of its own (removed afterwards; the run root must be a short path),
    with the flags this machine needs."""
    from tests.fixtures.building import PODMAN_FLAGS
    podman = need("podman")
    d = Path(tempfile.mkdtemp(prefix="pb-pm-", dir="/tmp"))
    argv = [podman, *PODMAN_FLAGS, "--root", str(d / "s"), "--runroot", str(d / "r"), "--storage-driver", "overlay"]
    try:
        yield argv
    finally:
        subprocess.run([*argv, "rmi", "-a", "-f"], capture_output=True, timeout=120)
        subprocess.run(["umount", str(d / "s" / "overlay")], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_done_when_push_then_podman_runs_arm64_and_attestations(mp_root, tmp_path, registry):
    """Issue 13's Done-when: the pushed index has both platforms (skopeo), `podman run --platform
    linux/arm64` prints aarch64 from its RUN-made file while the build stage ran natively; each
    platform image has its own provenance and SBOM (BuildKit's shape) and `--sign` signs the index
    and both images."""
    from tests.fixtures.building import PODMAN_RUN_FLAGS
    skopeo = need("skopeo")
    env = {**os.environ, "COSIGN_PASSWORD": "pw"}
    run_pybuild("generate-key-pair", "--output-key-prefix", tmp_path / "k", env=env, check_rc=0)
    ref = f"{registry.host}/mp/done:v1"
    ctx = write_context(tmp_path / "ctx", MP_DOCKERFILE)
    run_pybuild("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push", "--sbom=true",
                "--sign", tmp_path / "k.key", "--insecure-registry", registry.host, ctx, root=mp_root, env=env,
                check_rc=0, timeout=600)
    raw = json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert index_shape(raw) == [("image", "linux/amd64"), ("image", "linux/arm64"),
                                ("attestation", "of #0"), ("attestation", "of #1")]
    images = {raw["manifests"][i]["platform"]["architecture"]: raw["manifests"][i]["digest"] for i in (0, 1)}

    with _podman_private() as podman:
        r = subprocess.run([*podman, "run", *PODMAN_RUN_FLAGS, "--platform", "linux/arm64", "--tls-verify=false",
                            ref, "cat", "/arch", "/made"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["aarch64", "arm64 linux/arm64 on linux/amd64 x86_64"]

    listing = json.loads(run_pybuild("attestations", "--remote", "--format", "json", "--insecure-registry",
                                     registry.host, ref, check_rc=0).stdout)
    atts = [a for a in listing["attachments"] if a["kind"] == "attestation"]
    assert sorted(a["subject"] for a in atts) == sorted(images.values())
    for a in atts:
        assert a["foundBy"] == ["index", "referrers"]
        arch = next(k for k, v in images.items() if v == a["subject"])
        by_type = {e["predicateType"]: e["content"] for e in a["entries"]}
        assert sorted(by_type) == ["https://slsa.dev/provenance/v1", "https://spdx.dev/Document"]
        for stmt in by_type.values():
            assert [s["digest"]["sha256"] for s in stmt["subject"]] == [a["subject"].split(":")[1]]
            assert f"/mp/done@v1?platform=linux%2F{arch}" in stmt["subject"][0]["name"]
        prov = by_type["https://slsa.dev/provenance/v1"]["predicate"]["buildDefinition"]
        assert prov["externalParameters"]["request"]["args"]["platform"].startswith(f"linux/{arch}")
        deps = sorted(d["uri"] for d in prov["resolvedDependencies"])
        # The $BUILDPLATFORM stage's base was resolved for the host, the target stage's for arm64/amd64.
        assert deps == sorted(["pkg:docker/bb@multi?platform=" + f"linux%2F{arch}",
                               "pkg:docker/busybox@latest?platform=linux%2Famd64"])
        spdx = by_type["https://spdx.dev/Document"]["predicate"]
        assert spdx["spdxVersion"].startswith("SPDX-")
    # --sign: the index and each platform image (not the attestation manifests).
    sigs = sorted(a["subject"] for a in listing["attachments"] if a["kind"] == "signature")
    assert sigs == sorted([listing["digest"], *images.values()])
    for d in images.values():
        run_pybuild("verify", "--key", tmp_path / "k.pub", "--insecure-registry", registry.host,
                    f"{registry.host}/mp/done@{d}", check_rc=0)


def test_done_when_two_runner_fan_out_gives_the_same_index(mp_root, _mp_layout, tmp_path, registry):
    """Issue 13's Done-when: two store roots (two runners) each build one platform and push it by
    digest (buildx's -o spelling, --metadata-file), `manifest create` merges them; the index has the
    shape of the one-machine build's (the images, then an attestation of each), and
    (SOURCE_DATE_EPOCH) the very same platform images."""
    skopeo = need("skopeo")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    ctx = write_context(tmp_path / "ctx", MP_DOCKERFILE)
    host = registry.host
    one = f"{host}/mp/fan:one"
    run_pybuild("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", one, "--push",
                "--insecure-registry", host, ctx, root=mp_root, env=env, check_rc=0, timeout=600)
    digests = []
    for arch in ("amd64", "arm64"):
        runner = tmp_path / f"runner-{arch}"
        shutil.copytree(_mp_layout, runner / "images", ignore=shutil.ignore_patterns(".lock", ".gc.lock", "leases"))
        meta = tmp_path / f"meta-{arch}.json"
        run_pybuild("build", "-q", "--platform", f"linux/{arch}", "--metadata-file", meta, "--insecure-registry", host,
                    "-o", f"type=image,push-by-digest=true,name={host}/mp/fan,push=true", ctx,
                    root=runner, env=env, check_rc=0, timeout=600)
        m = json.loads(meta.read_text())
        assert m["image.name"] == f"{host}/mp/fan@{m['containerimage.digest']}"
        digests.append(m["image.name"])
    r = run_pybuild("manifest", "create", "--insecure-registry", host, "-t", f"{host}/mp/fan:merged", *digests,
                    check_rc=0)
    assert r.stdout.startswith(f"{host}/mp/fan:merged@sha256:")

    def raw(ref):
        return json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                         capture_output=True, text=True, check=True).stdout)
    merged, single = raw(f"{host}/mp/fan:merged"), raw(one)
    assert index_shape(merged) == index_shape(single) == [("image", "linux/amd64"), ("image", "linux/arm64"),
                                                          ("attestation", "of #0"), ("attestation", "of #1")]
    assert merged["manifests"][:2] == single["manifests"][:2]
    # The merged index is what a user pulls: the arm64 image for linux/arm64.
    info = json.loads(subprocess.run([skopeo, "inspect", "--tls-verify=false", "--override-arch", "arm64",
                                      f"docker://{host}/mp/fan:merged"], capture_output=True, text=True,
                                     check=True).stdout)
    arm = raw(f"{host}/mp/fan@{single['manifests'][1]['digest']}")
    assert info["Architecture"] == "arm64" and info["Layers"] == [l["digest"] for l in arm["layers"]]


def test_a_build_platform_stage_without_target_args_runs_once(mp_root, tmp_path):
    """The cross-compilation stage (FROM --platform=$BUILDPLATFORM, no TARGET* argument) is the
    same work for every target: it runs once (the platforms share its cache key) and both images
    carry its one result, as with BuildKit."""
    df = ("FROM --platform=$BUILDPLATFORM busybox AS build\n"
          "RUN cat /proc/sys/kernel/random/uuid > /stamp\n"
          "FROM bb:multi\nCOPY --from=build /stamp /stamp\n")
    out = tmp_path / "out"
    res = build_in(mp_root, tmp_path / "ctx", df, platform="linux/amd64,linux/arm64",
                   outputs=[f"type=local,dest={out}"])
    runs = [s for s in res.steps if s.instruction.startswith("RUN")]
    assert len(runs) == 2 and sorted(s.cached for s in runs) == [False, True]
    stamps = {(out / d / "stamp").read_text() for d in ("linux_amd64", "linux_arm64")}
    assert len(stamps) == 1
    assert res.platforms[0].layers[-1].diff_id == res.platforms[1].layers[-1].diff_id


def test_run_platform_picks_the_image_of_an_index(mp_root, tmp_path):
    build_in(mp_root, tmp_path / "ctx", MP_DOCKERFILE, platform="linux/amd64,linux/arm64", tags=["mprun:1"])

    def run(*argv):
        return run_pybuild("run", "--rm", "--network", "none", *argv, root=mp_root, timeout=300)
    r = run("--platform", "linux/arm64", "mprun:1", "cat", "/arch", "/made")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["aarch64", "arm64 linux/arm64 on linux/amd64 x86_64"]
    assert run("mprun:1", "cat", "/arch").stdout.strip() == "x86_64"      # default: this host's
    r = run("--pull", "never", "--platform", "linux/s390x", "mprun:1", "true")
    assert r.returncode == 125 and "no image for platform linux/s390x; it has linux/amd64, linux/arm64" in r.stderr
    r = run("--platform", "a/b/c/d", "mprun:1", "true")
    assert r.returncode == 125 and "--platform a/b/c/d: invalid platform" in r.stderr and "Traceback" not in r.stderr


def test_images_lists_an_index_platforms(mp_root, tmp_path):
    """`images --tree` (docker image ls --tree): a row per platform under an index, marked when the
    store lacks that platform's image; --format json carries the same as ``platforms``."""
    from registry import mediatypes as mt
    from registry.manifest import Descriptor, Index
    from registry.store import Store
    store = Store(mp_root)
    idx = store.get_manifest(store.resolve("bb:multi").digest)
    absent = Descriptor(mt.OCI_MANIFEST, "sha256:" + "5" * 64, 500, platform=parse_platform("linux/s390x"))
    store.tag("partial:1", store.put_manifest(Index(manifests=[*idx.manifests, absent], media_type=mt.OCI_INDEX)))
    rows = {r["name"]: r for r in json.loads(run_pybuild("images", "--format", "json", root=mp_root,
                                                         check_rc=0).stdout)}
    assert "platforms" not in rows["busybox:latest"]
    plats = rows["partial:1"]["platforms"]
    assert [(p["platform"], p["present"]) for p in plats] == [("linux/amd64", True), ("linux/arm64/v8", True),
                                                              ("linux/s390x", False)]
    assert plats[1]["id"] == store.image_manifest("bb:multi", ARM64)[1].config.digest
    out = run_pybuild("images", "--tree", "partial", root=mp_root, check_rc=0).stdout.splitlines()
    assert out[1].startswith("partial ") and out[2].split()[:2] == ["\u2514", "linux/amd64"]
    assert out[3].split()[:2] == ["\u2514", "linux/arm64/v8"]
    assert out[4].split()[:5] == ["\u2514", "linux/s390x", "(not", "in", "the"] and "5555555555" in out[4]
    assert "\u2514" not in run_pybuild("images", "partial", root=mp_root, check_rc=0).stdout


def test_docker_output_refuses_several_platforms(root, tmp_path):
    with pytest.raises(BuildError, match="type=docker cannot hold a multi-platform image"):
        build_in(root, tmp_path / "ctx", "FROM scratch\n", platform="linux/amd64,linux/arm64",
                 outputs=[f"type=docker,dest={tmp_path / 'x.tar'}"])


def test_docker_format_writes_a_manifest_list(root, tmp_path):
    from registry import mediatypes as mt
    from registry.store import Store
    res = build_in(root, tmp_path / "ctx", "FROM scratch\nCOPY f /f\n", {"f": "x"},
                   platform="linux/amd64,linux/arm64", format="docker", tags=["ml:1"])
    assert res.manifest.media_type == mt.DOCKER_MANIFEST_LIST
    idx = Store(root).get_manifest(res.digest)
    assert [d.media_type for d in idx.manifests] == [mt.DOCKER_MANIFEST] * 2
    assert [str(d.platform) for d in idx.manifests] == ["linux/amd64", "linux/arm64"]


def test_foreign_run_without_emulation_names_the_fix(root, tmp_path, monkeypatch):
    import builder.engine.emulation as emu
    monkeypatch.setattr(emu, "BINFMT_DIR", str(tmp_path / "no-binfmt"))
    monkeypatch.setattr(emu.emulation_problem, "__defaults__", (str(tmp_path / "no-binfmt"),))
    with pytest.raises(BuildError, match=r"stage 0 \(platform linux/arm64\) has RUN steps: cannot run "
                                         r"linux/arm64 binaries .*binfmt_misc is not mounted"):
        build_in(root, tmp_path / "ctx", "FROM scratch\nRUN true\n", platform="linux/arm64")


def test_push_by_digest_writes_the_digest_to_the_metadata_file(root, tmp_path, registry):
    meta = tmp_path / "m.json"
    res = build_in(root, tmp_path / "ctx", "FROM scratch\nCOPY f /f\n", {"f": "x"}, platform="linux/arm64",
                   outputs=[f"type=image,name={registry.host}/pbd/app,push-by-digest=true,name-canonical=true,push=true"],
                   insecure_registries=(registry.host,), metadata_file=str(meta))
    m = json.loads(meta.read_text())
    assert m["containerimage.digest"] == res.digest
    assert m["image.name"] == f"{registry.host}/pbd/app@{res.digest}"
