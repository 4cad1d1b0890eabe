"""Build benchmark: pybuild vs Docker BuildKit and buildah (`buildah bud --layers`) in the same run.

(a) base + COPY of 2000 small files + two RUN steps, cold (no cache) and warm (everything
    cached); the base is the busybox image made with `pybuild import` (or, with --debootstrap,
    a Debian minbase made by debootstrap from Debian's packages, about 30 s once).
(c) `RUN touch /x` on bases of 10k and 100k extra files, timed after a first build (pybuild
    extracts a base layer once and reuses it; the cost of a RUN should not grow with the base).

Both tools are invoked as command lines (start-up included), as a user would run them. "cold"
is --no-cache after one untimed build: every step runs again, but pybuild finds the base layer
(and the identical COPY layer) already extracted under <root>/layers, as buildah finds its
storage warm; a first-ever build also pays one extraction per layer.
Docker BuildKit: the set-up installs Debian's docker.io when it is missing and starts its own
dockerd (no iptables, no bridge, its own data root and socket, stopped at the end); builds use
Debian's /usr/bin/docker with DOCKER_BUILDKIT=1 and --network=host. --no-docker skips it.

Run (root): python3 benchmarks/build/run.py [--repeat 3] [--debootstrap] [--skip-c] [--no-docker]
Prints seconds (median of --repeat) and pybuild/peer ratios (< 1.0: pybuild is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah"]
DOCKER = "/usr/bin/docker"       # Debian's client: it has BuildKit (/usr/local/bin/docker may not)


def sh(*cmd: str, env: dict | None = None, cwd: str | None = None) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


# Measure pybuild as installed, with bytecode caches (some CI images set PYTHONDONTWRITEBYTECODE,
# which would make every run recompile the package).
PYBUILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(*cmd: str, env: dict | None = None) -> float:
    t = time.perf_counter()
    sh(*cmd, env=env)
    return time.perf_counter() - t


def busybox_rootfs(dest: Path, extra_files: int = 0) -> Path:
    """The busybox rootfs of tests/fixtures/images.py, plus ``extra_files`` small files."""
    sys.path.insert(0, str(REPO))
    from tests.fixtures.images import make_busybox_rootfs
    make_busybox_rootfs(dest)
    for i in range(extra_files):
        d = dest / "usr" / "share" / "bulk" / f"{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_text(f"file {i}\n")
    return dest


def debootstrap_rootfs(dest: Path) -> Path:
    sh("debootstrap", "--variant=minbase", "bookworm", str(dest))
    return dest


class Dockerd:
    """A private dockerd for the run: its own socket and data root under ``work``."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "docker"
        self.dir.mkdir()
        self.sock = self.dir / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_BUILDKIT": "1"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if not (os.path.exists(DOCKER) and shutil.which("dockerd")):
            sh("apt-get", "install", "-y", "-qq", "docker.io",
               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        conf = self.dir / "daemon.json"
        conf.write_text(json.dumps({
            "iptables": False, "bridge": "none", "data-root": str(self.dir / "data"),
            "exec-root": str(self.dir / "exec"), "pidfile": str(self.dir / "pid"),
            "hosts": [f"unix://{self.sock}"]}))
        self.proc = subprocess.Popen(["dockerd", "--config-file", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "w"))
        for _ in range(300):
            if subprocess.run([DOCKER, "info"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        sys.exit(f"dockerd did not start: {(self.dir / 'log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            subprocess.run(["umount", "-R", str(self.dir / "data")], capture_output=True)


def make_base(work: Path, root: Path, name: str, rootfs: Path, docker: Dockerd | None = None) -> None:
    """Import ``rootfs`` as ``name`` into pybuild's store, containers-storage for buildah and
    the run's dockerd."""
    env = {**os.environ, "PYBUILD_ROOT": str(root)}
    sh("pybuild", "import", str(rootfs), name, env=env)
    ref = name if "/" in name else f"docker.io/library/{name}"
    sh("skopeo", "copy", "-q", f"oci:{root}/images:{name}", f"containers-storage:{ref}")
    if docker is not None:
        archive = work / "base-docker.tar"
        sh("skopeo", "copy", "-q", f"oci:{root}/images:{name}", f"docker-archive:{archive}:{name}")
        sh(DOCKER, "load", "-q", "-i", str(archive), env=docker.env)
        archive.unlink()


def context_a(work: Path, base: str) -> Path:
    ctx = work / "ctx-a"
    files = ctx / "files"
    for i in range(2000):
        d = files / f"d{i // 100:02d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_text(f"small file {i}\n" * 4)
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\nCOPY files/ /data/\nRUN find /data -type f | wc -l > /count\n"
        "RUN echo built > /done && cat /count\n")
    return ctx


def context_touch(work: Path, base: str, tag: str) -> Path:
    ctx = work / f"ctx-{tag}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN touch /x\n")
    return ctx


def pybuild_cmd(root: Path, ctx: Path, tag: str, no_cache: bool) -> list[str]:
    return ["pybuild", "--root", str(root), "build", "-q", "-t", tag] + (["--no-cache"] if no_cache else []) + [str(ctx)]


def buildah_cmd(ctx: Path, tag: str, no_cache: bool) -> list[str]:
    return BUILDAH + ["bud", "--layers", "--pull-never", "-q", "-t", tag] + (["--no-cache"] if no_cache else []) + [str(ctx)]


def docker_cmd(ctx: Path, tag: str, no_cache: bool) -> list[str]:
    return [DOCKER, "build", "--network=host", "-q", "-t", tag] + (["--no-cache"] if no_cache else []) + [str(ctx)]


def median_of(n: int, cmd: list[str], env: dict | None = None) -> float:
    env = PYBUILD_ENV if cmd[0] == "pybuild" else env
    return statistics.median(timed(*cmd, env=env) for _ in range(n))


def row(label: str, ours: float, buildah: float, buildkit: float | None) -> None:
    bk = f"   BuildKit {buildkit:7.3f}s ratio {ours / buildkit:5.2f}" if buildkit else ""
    print(f"{label:<34} pybuild {ours:7.3f}s{bk}   buildah {buildah:7.3f}s ratio {ours / buildah:5.2f}")


def compare(n: int, root: Path, ctx: Path, tag: str, no_cache: bool, docker: Dockerd | None,
            label: str) -> None:
    ours = median_of(n, pybuild_cmd(root, ctx, tag, no_cache))
    theirs = median_of(n, buildah_cmd(ctx, tag, no_cache))
    bk = median_of(n, docker_cmd(ctx, tag, no_cache), docker.env) if docker else None
    row(label, ours, theirs, bk)


def first_builds(root: Path, ctx: Path, tag: str, docker: Dockerd | None) -> None:
    """One untimed build each: pybuild extracts the base once, the peers warm their storage."""
    sh(*pybuild_cmd(root, ctx, tag, True), env=PYBUILD_ENV)
    sh(*buildah_cmd(ctx, tag, True))
    if docker:
        sh(*docker_cmd(ctx, tag, True), env=docker.env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--debootstrap", action="store_true", help="use a Debian minbase base for (a)")
    ap.add_argument("--skip-c", action="store_true", help="skip the 10k/100k-file bases")
    ap.add_argument("--no-docker", action="store_true", help="do not run Docker BuildKit")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (runc, overlay mounts, buildah)")
    work = Path(tempfile.mkdtemp(prefix="pybuild-bench-"))
    root = work / "root"
    tags: list[str] = []
    docker = None if args.no_docker else Dockerd(work)
    try:
        if docker:
            docker.start()
        run_id = uuid.uuid4().hex[:8]
        base = f"bench-base-{run_id}:latest"
        rootfs = debootstrap_rootfs(work / "minbase") if args.debootstrap else busybox_rootfs(work / "busybox")
        make_base(work, root, base, rootfs, docker)
        ctx = context_a(work, base)
        tag = f"localhost/bench-a-{run_id}:latest"
        tags += [tag, base]
        print(f"(a) {'debootstrap minbase' if args.debootstrap else 'busybox'} + COPY 2000 files + 2 RUN, "
              f"median of {args.repeat}")
        first_builds(root, ctx, tag, docker)
        compare(args.repeat, root, ctx, tag, True, docker, "cold (--no-cache)")
        compare(args.repeat, root, ctx, tag, False, docker, "warm (all steps cached)")
        if not args.skip_c:
            print(f"(c) RUN touch /x on bases with many files, median of {args.repeat} (after one build)")
            for n in (10_000, 100_000):
                big = f"bench-big{n // 1000}k-{run_id}:latest"
                make_base(work, root, big, busybox_rootfs(work / f"big{n}", n), docker)
                tags.append(big)
                bctx = context_touch(work, big, f"{n}")
                btag = f"localhost/bench-c{n // 1000}k-{run_id}:latest"
                tags.append(btag)
                first_builds(root, bctx, btag, docker)
                compare(args.repeat, root, bctx, btag, True, docker, f"{n // 1000}k-file base, RUN touch /x")
    finally:
        for t in tags:
            subprocess.run(BUILDAH + ["rmi", "-f", t], capture_output=True)
        if docker:
            docker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
