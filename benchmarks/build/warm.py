"""Warm build benchmark: fully cached rebuilds, pybuild vs buildah (`buildah bud --layers`), same run.

(a) the build engine benchmark's Dockerfile (busybox base + COPY of 2000 small files + two RUN
    steps, see run.py), rebuilt with every step cached;
(b) a no-op rebuild with a 20k-file, 500 MB context (`COPY . /ctx/` + a RUN): nothing changed,
    so the whole cost is start-up, reading the Dockerfile and checking the context.

Docker BuildKit is not run: these machines have no Docker engine. DESIGN.md gives its warm
time for (a) as 0.125 s, which is printed as a reference ratio (pybuild / 0.125 s).

Both tools run as command lines (start-up included) through their real executables (pybuild's
console script in this interpreter's bin directory, not a version-manager shim). Wall time
is the median of --repeat; CPU time (user+sys of the child) is printed too, since wall time
on a loaded machine says little. A start-up profile (`-X importtime`) of one warm (a) build
lists the slowest imports.

Run (root): python3 benchmarks/build/warm.py [--repeat 5] [--skip-b] [--mb 500] [--files 20000]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as engine   # noqa: E402  (the engine benchmark: base image and context (a))

BUILDKIT_WARM_A = 0.125
PYBUILD = str(Path(sys.executable).parent / "pybuild")


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run; exits on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def medians(n: int, cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    runs = [measure(cmd, env) for _ in range(n)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def pybuild_cmd(root: Path, ctx: Path, tag: str) -> list[str]:
    return [PYBUILD, "--root", str(root), "build", "-q", "-t", tag, str(ctx)]


def buildah_cmd(ctx: Path, tag: str) -> list[str]:
    return engine.BUILDAH + ["bud", "--layers", "--pull-never", "-q", "-t", tag, str(ctx)]


def row(label: str, ours: tuple[float, float], theirs: tuple[float, float]) -> None:
    print(f"{label:<34} pybuild {ours[0]:6.3f}s (cpu {ours[1]:5.3f}s)   buildah {theirs[0]:6.3f}s "
          f"(cpu {theirs[1]:5.3f}s)   ratio wall {ours[0] / theirs[0]:5.2f} cpu {ours[1] / theirs[1]:5.2f}")


def big_context(work: Path, base: str, files: int, total_mb: int) -> Path:
    """``files`` files of equal size adding up to ``total_mb`` MB, 200 per directory."""
    ctx = work / "ctx-b"
    size = total_mb * 1_000_000 // files
    block = os.urandom(1 << 16)
    for i in range(files):
        d = ctx / "src" / f"d{i // 200:03d}"
        if i % 200 == 0:
            d.mkdir(parents=True, exist_ok=True)
        head = f"file {i}\n".encode()
        data = head + (block * (size // len(block) + 1))[: max(0, size - len(head))]
        (d / f"f{i:05d}.bin").write_bytes(data)
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY . /ctx/\nRUN ls /ctx/src | wc -l > /dirs\n")
    return ctx


def importtime(root: Path, ctx: Path, tag: str, top: int = 12) -> None:
    """Where start-up goes in one warm build (``python -X importtime``): the interpreter's site
    initialisation (site-packages .pth files: the editable install's finder, and on these
    machines a sandbox hook importing certifi) apart from the modules pybuild imports."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "builder", "--root", str(root), "build", "-q",
                        "-t", tag, str(ctx)], capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line[len("import time:"):].split("|")
            if parts[1].strip().isdigit():
                rows.append((int(parts[1]), parts[2].rstrip()))
    site = next((us for us, name in rows if name.strip() == "site"), 0)
    ours = [(us, name.strip()) for us, name in rows
            if not name.startswith("  ") and name.strip() not in ("site", "encodings")]
    print(f"start-up imports: site {site / 1000:.0f} ms (environment), then {sum(u for u, _ in ours) / 1000:.0f} ms "
          "for pybuild's imports; slowest of those:")
    for us, name in sorted(ours, reverse=True)[:top]:
        print(f"  {us / 1000:7.1f} ms  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-b", action="store_true", help="skip the 20k-file context")
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--mb", type=int, default=500)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (runc, overlay mounts, buildah)")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="pybuild-warm-"))
    root = work / "root"
    tags: list[str] = []
    try:
        run_id = uuid.uuid4().hex[:8]
        base = f"warm-base-{run_id}:latest"
        engine.make_base(work, root, base, engine.busybox_rootfs(work / "busybox"))
        tags.append(base)
        ctx = engine.context_a(work, base)
        tag = f"localhost/warm-a-{run_id}:latest"
        tags.append(tag)
        for cmd in (pybuild_cmd(root, ctx, tag), buildah_cmd(ctx, tag)):
            measure(cmd)                  # fill both caches
        print(f"(a) busybox + COPY 2000 files + 2 RUN, fully cached, median of {args.repeat}")
        ours = medians(args.repeat, pybuild_cmd(root, ctx, tag))
        theirs = medians(args.repeat, buildah_cmd(ctx, tag))
        row("warm (all steps cached)", ours, theirs)
        print(f"{'vs Docker BuildKit (DESIGN.md)':<34} pybuild/0.125s = {ours[0] / BUILDKIT_WARM_A:.2f} (wall), "
              f"{ours[1] / BUILDKIT_WARM_A:.2f} (cpu)")
        # The same rebuild by an interpreter without site initialisation (-S, with the repository
        # and site-packages on PYTHONPATH): what start-up costs where no .pth hooks run. On
        # these machines a sandbox hook imports certifi at every start; CI machines have none.
        import site
        bare_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1])] + site.getsitepackages())}
        bare = medians(args.repeat, [sys.executable, "-S", "-m", "builder"] + pybuild_cmd(root, ctx, tag)[1:],
                       env=bare_env)
        print(f"{'warm, python -S (no .pth hooks)':<34} pybuild {bare[0]:6.3f}s (cpu {bare[1]:5.3f}s)   "
              f"pybuild/0.125s = {bare[0] / BUILDKIT_WARM_A:.2f} (wall), {bare[1] / BUILDKIT_WARM_A:.2f} (cpu)")
        # The same rebuild through the whole engine (a --metadata-file build never takes the
        # no-op path): parse, plan, one lookup per step, a new image config.
        engine_path = medians(args.repeat, pybuild_cmd(root, ctx, tag)[:-1] +
                              ["--metadata-file", str(work / "meta.json"), str(ctx)])
        row("warm, full engine path", engine_path, theirs)
        importtime(root, ctx, tag)
        if not args.skip_b:
            t = time.perf_counter()
            bctx = big_context(work, base, args.files, args.mb)
            btag = f"localhost/warm-b-{run_id}:latest"
            tags.append(btag)
            print(f"(b) no-op rebuild, {args.files} files / {args.mb} MB context (made in "
                  f"{time.perf_counter() - t:.0f}s), median of {args.repeat}")
            for cmd in (pybuild_cmd(root, bctx, btag), buildah_cmd(bctx, btag)):
                w, c = measure(cmd)
                print(f"  first build: {cmd[0].rsplit('/', 1)[-1]} {w:.1f}s")
            ours = medians(args.repeat, pybuild_cmd(root, bctx, btag))
            theirs = medians(args.repeat, buildah_cmd(bctx, btag))
            row("no-op rebuild", ours, theirs)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        for t in tags:
            subprocess.run(engine.BUILDAH + ["rmi", "-f", t], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
