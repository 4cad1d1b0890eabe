"""Multi-platform build benchmark: pybuild vs buildah, one two-platform build of the same
Dockerfile, cold and warm, measured side by side in one run.

    pybuild build --platform linux/amd64,linux/arm64 -t localhost/bench-mp-<id> CTX
    buildah bud --layers --pull-never --platform linux/amd64,linux/arm64 --jobs 2 --manifest LIST CTX

The Dockerfile is the cross-compilation pattern: a `FROM --platform=$BUILDPLATFORM` stage that
does the work over 500 context files (native for pybuild; buildah 1.28 ignores the flag and
runs it emulated, see ../shared/multiplatform.md), then a target-platform stage that copies its
result and runs one emulated RUN (arm64 through qemu-user-static and binfmt_misc). The base is an
index of the busybox amd64 and arm64/v8 images made offline from Debian's packages
(tests/fixtures/images.py, as the tests make it; scripts/setup.sh caches the arm64 .deb and
registers the emulator), imported into pybuild's store; buildah gets the same two images with
`skopeo copy` and a `buildah manifest create/add` list of them, in a containers-storage of its own under the run's work directory (nothing else on the
machine is touched; it is removed at the end).

"cold" is --no-cache after one untimed build of each (every step of both platforms runs again,
the bases already unpacked); "warm" rebuilds with everything cached. buildah's manifest list is
removed (untimed) before each of its runs, since `--manifest` adds to an existing list.

Run (root): python3 benchmarks/multiplatform/run.py [--repeat 3]
Prints seconds (median of --repeat) and pybuild/buildah ratios (< 1.0: pybuild is faster).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "build"))
import run as engine   # noqa: E402  (sh, timed, median_of, PYBUILD_ENV of the build benchmark)

sys.path.insert(0, str(engine.REPO))
PLATFORMS = "linux/amd64,linux/arm64"
DOCKERFILE = """\
FROM --platform=$BUILDPLATFORM {base} AS build
ARG TARGETARCH
COPY src/ /src/
RUN find /src -type f | wc -l > /count && cat /src/*/* | md5sum > /sum && echo "$TARGETARCH" > /target
FROM {base}
COPY --from=build /count /sum /target /out/
RUN uname -m > /arch && cat /out/target /arch
"""


class Buildah:
    """buildah on a private overlay storage under ``work``."""

    def __init__(self, work: Path) -> None:
        self.graph, self.run = work / "storage", work / "storage-run"
        self.argv = ["buildah", "--root", str(self.graph), "--runroot", str(self.run), "--storage-driver", "overlay"]
        self.transport = f"containers-storage:[overlay@{self.graph}+{self.run}]"

    def cleanup(self) -> None:
        subprocess.run(self.argv + ["rm", "-a"], capture_output=True)
        subprocess.run(self.argv + ["rmi", "-a", "-f"], capture_output=True)
        subprocess.run(["umount", str(self.graph / "overlay")], capture_output=True)


def make_base(work: Path, root: Path, name: str, buildah: Buildah) -> None:
    """The busybox index as ``name`` in pybuild's store, and as a manifest list of the same two
    images in buildah's storage (containers-storage cannot take an index in one `skopeo copy --all`)."""
    from registry.store import Store
    from tests.fixtures.images import import_busybox_index
    children = [name.replace("bench-mp-base", f"bench-bb-{a}") for a in ("amd64", "arm64")]
    import_busybox_index(Store(root), work / "base", name, amd64=children[0], arm64=children[1])
    engine.sh(*buildah.argv, "manifest", "create", name)
    for c in children:
        engine.sh("skopeo", "copy", "-q", f"oci:{root}/images:{c}", f"{buildah.transport}{c}")
        engine.sh(*buildah.argv, "manifest", "add", name, f"containers-storage:{c}")


def context(work: Path, base: str) -> Path:
    ctx = work / "ctx"
    for i in range(500):
        d = ctx / "src" / f"d{i // 50:02d}"
        if i % 50 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03d}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n" * 8)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    return ctx


def pybuild_cmd(root: Path, ctx: Path, tag: str, no_cache: bool) -> list[str]:
    return (["pybuild", "--root", str(root), "build", "-q", "--platform", PLATFORMS, "-t", tag]
            + (["--no-cache"] if no_cache else []) + [str(ctx)])


def buildah_cmd(buildah: Buildah, ctx: Path, manifest: str, no_cache: bool) -> list[str]:
    return (buildah.argv + ["bud", "--layers", "--pull-never", "-q", "--platform", PLATFORMS, "--jobs", "2",
                              "--manifest", manifest] + (["--no-cache"] if no_cache else []) + [str(ctx)])


def buildah_median(buildah: Buildah, n: int, ctx: Path, manifest: str, no_cache: bool) -> float:
    times = []
    for _ in range(n):
        subprocess.run(buildah.argv + ["manifest", "rm", manifest], capture_output=True)
        times.append(engine.timed(*buildah_cmd(buildah, ctx, manifest, no_cache)))
    return sorted(times)[len(times) // 2]


def check_result(root: Path, tag: str) -> None:
    """Both platforms are in pybuild's index (so the figures are for a real two-platform build)."""
    from registry.store import Store
    from registry.manifest import Index
    doc = Store(root).get_manifest(Store(root).resolve(tag).digest)
    archs = sorted(d.platform.architecture for d in doc.manifests) if isinstance(doc, Index) else []
    if archs != ["amd64", "arm64"]:
        sys.exit(f"pybuild's {tag} is not a two-platform index: {archs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (runc, overlay mounts, binfmt_misc, buildah)")
    from builder.engine.emulation import emulation_problem
    from registry.platform import parse_platform
    problem = emulation_problem(parse_platform("linux/arm64"))
    if problem:
        sys.exit(f"arm64 emulation is not available: {problem}")
    work = Path(tempfile.mkdtemp(prefix="pybuild-bench-mp-"))
    root = work / "root"
    run_id = uuid.uuid4().hex[:8]
    base = f"localhost/bench-mp-base-{run_id}:latest"
    tag = f"localhost/bench-mp-{run_id}:latest"
    manifest = f"localhost/bench-mp-buildah-{run_id}:latest"
    buildah = Buildah(work)
    try:
        make_base(work, root, base, buildah)
        ctx = context(work, base)
        print(f"two-platform build ({PLATFORMS}): $BUILDPLATFORM stage over 500 files + emulated RUN, "
              f"median of {args.repeat}")
        engine.sh(*pybuild_cmd(root, ctx, tag, True), env=engine.PYBUILD_ENV)
        check_result(root, tag)
        buildah_median(buildah, 1, ctx, manifest, True)
        for label, no_cache in (("cold (--no-cache)", True), ("warm (all steps cached)", False)):
            ours = engine.median_of(args.repeat, pybuild_cmd(root, ctx, tag, no_cache))
            theirs = buildah_median(buildah, args.repeat, ctx, manifest, no_cache)
            print(f"{label:<26} pybuild {ours:7.3f}s   buildah {theirs:7.3f}s   ratio {ours / theirs:5.2f}")
    finally:
        buildah.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
