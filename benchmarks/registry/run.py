"""Registry transfer benchmark: pybuild vs `skopeo copy`, measured side by side in one run.

1. Push and pull of each image size of issue 18 (default: 51 MB in one layer, 280 MB in nine,
   1 GB in twenty; incompressible layers) to and from a local registry:2: each tool runs as a
   command (start-up included), each trial against a fresh registry so that neither tool can skip
   or mount blobs from an earlier trial, pulls into a fresh store or layout. Prints median wall
   seconds, the ratio pybuild/skopeo (targets: one layer <= 0.8x, nine layers <= 0.6x), and median
   CPU seconds (user+sys of the child: steadier than wall time on a shared machine).
2. pybuild's peak RSS (of the child process, via wait4) pulling a 500 MB image (target < 150 MB).
3. Start-up (issue 18: under 40 ms): `pybuild --version`, and `pybuild pull` of an image the store
   already holds (one manifest GET), against `skopeo --version` and `skopeo copy` of an image its
   layout already holds; medians of --startup-trials alternating runs.

Usage: python3 benchmarks/registry/run.py [--trials N] [--cases 1x51,9x31.1,20x51.2] [--big-mb MB]
(a case is LAYERSxMB_PER_LAYER). Needs Debian's docker-registry and skopeo (scripts/setup.sh).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from registry.platform import host_platform  # noqa: E402
from registry.store import Store  # noqa: E402
from tests.fixtures.registry import start_registry  # noqa: E402
from tests.fixtures.synthetic_images import make_image, random_layer  # noqa: E402

PYBUILD = [sys.executable, "-m", "builder"]
# Children run as users run them: with cached bytecode (a session may set this to 1).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def build_image(root: Path, name: str, layers: int, layer_bytes: int, seed: int) -> None:
    """A store under `root` holding `name`: `layers` random layers of `layer_bytes` each."""
    store = Store(root)
    descs = [random_layer(store, layer_bytes, seed=seed * 1000 + i) for i in range(layers)]
    make_image(store, name, layer_descs=descs, platform=host_platform(), cmd=["sh"])


def run_child(cmd: list[str]) -> tuple[float, float, float]:
    """Run a command; (wall seconds, CPU seconds user+sys, peak RSS MB) of that child (wait4)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n{p.stderr.read().decode()}")
    p.stderr.close()
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


LIBRARY_PULL = """
import sys, time
from registry.client import RegistryClient
from registry.store import Store
from registry.transfer import pull
store = Store(sys.argv[2])
with RegistryClient() as client:        # imports done before the clock starts
    t0, c0 = time.perf_counter(), time.process_time()
    pull(client, sys.argv[1], store)
    print(time.perf_counter() - t0, time.process_time() - c0)
"""


def library_pull(ref: str, root: Path) -> tuple[float, float, float]:
    """pull() as the build engine calls it, timed inside the process (no interpreter start-up or
    imports: what a build pays for pulling its base image)."""
    r = subprocess.run([sys.executable, "-c", LIBRARY_PULL, ref, str(root)], capture_output=True, text=True,
                       env=ENV, check=True)
    wall, cpu = (float(x) for x in r.stdout.split())
    return wall, cpu, 0.0


def bench_push_pull(work: Path, trials: int, layers: int, layer_bytes: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per tool and direction."""
    src_root = work / "src"
    build_image(src_root, "bench/app:v1", layers, layer_bytes, seed=1)
    layout = Store(src_root).layout
    runs: dict[str, list[tuple[float, float, float]]] = {
        "pybuild push": [], "skopeo push": [], "pybuild pull": [], "skopeo pull": [],
        "pybuild pull (library)": []}
    for t in range(trials):
        # Alternate who goes first so that page-cache warmth does not favour one tool.
        order = ["pybuild", "skopeo"] if t % 2 == 0 else ["skopeo", "pybuild"]
        for tool in order:
            reg = start_registry()
            try:
                ref = f"{reg.host}/bench/app:v1"
                dst = work / f"pull-{tool}-{t}"
                if tool == "pybuild":
                    runs["pybuild push"].append(run_child(
                        PYBUILD + ["--root", str(src_root), "-q", "push", "bench/app:v1", ref]))
                    runs["pybuild pull"].append(run_child(PYBUILD + ["--root", str(dst), "-q", "pull", ref]))
                    runs["pybuild pull (library)"].append(library_pull(ref, work / f"lib-{t}"))
                    shutil.rmtree(work / f"lib-{t}", ignore_errors=True)
                else:
                    runs["skopeo push"].append(run_child(
                        ["skopeo", "copy", "-q", "--dest-tls-verify=false",
                         f"oci:{layout}:bench/app:v1", f"docker://{ref}"]))
                    runs["skopeo pull"].append(run_child(
                        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dst}:app"]))
                shutil.rmtree(dst, ignore_errors=True)
            finally:
                reg.stop()
    return {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}


def bench_rss(work: Path, big_mb: int) -> tuple[float, float]:
    root = work / "big"
    per = big_mb * 1000 * 1000 // 4
    build_image(root, "bench/big:v1", 4, per, seed=2)
    reg = start_registry()
    try:
        ref = f"{reg.host}/bench/big:v1"
        run_child(PYBUILD + ["--root", str(root), "-q", "push", "bench/big:v1", ref])
        secs, _, rss = run_child(PYBUILD + ["--root", str(work / "big-pull"), "-q", "pull", ref])
        return secs, rss
    finally:
        reg.stop()


TARGETS = {1: 0.8, 9: 0.6}      # issue 18: ratio to skopeo by number of layers
STARTUP_TARGET_MS = 40


def bench_startup(work: Path, trials: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of the start-up-bound commands, alternating the tools."""
    src = work / "startup-src"
    build_image(src, "bench/small:v1", 1, 1 << 20, seed=3)
    reg = start_registry()
    try:
        ref = f"{reg.host}/bench/small:v1"
        store, layout = work / "startup-store", work / "startup-layout"
        run_child(PYBUILD + ["--root", str(src), "-q", "push", "bench/small:v1", ref])
        run_child(PYBUILD + ["--root", str(store), "-q", "pull", ref])
        skopeo_pull = ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:app"]
        run_child(skopeo_pull)
        cmds = {"pybuild --version": PYBUILD + ["--version"], "skopeo --version": ["skopeo", "--version"],
                "pybuild pull (cached)": PYBUILD + ["--root", str(store), "-q", "pull", ref],
                "skopeo pull (cached)": skopeo_pull}
        runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in cmds}
        for t in range(trials):
            for name in (list(cmds) if t % 2 == 0 else list(reversed(cmds))):
                runs[name].append(run_child(cmds[name]))
    finally:
        reg.stop()
    return {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}


def parse_case(text: str) -> tuple[int, float]:
    layers, mb = text.lower().split("x")
    return int(layers), float(mb)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--cases", default="1x51,9x31.1,20x51.2",
                    help="comma-separated LAYERSxMB cases (default: the 51 MB, 280 MB and 1 GB images)")
    ap.add_argument("--big-trials", type=int, default=3, help="trials of cases over 500 MB")
    ap.add_argument("--big-mb", type=int, default=500, help="RSS measurement image (0: skip)")
    ap.add_argument("--startup-trials", type=int, default=15, help="runs of each start-up command (0: skip)")
    args = ap.parse_args()
    if not shutil.which("skopeo"):
        raise SystemExit("skopeo is not installed (run scripts/setup.sh)")
    run_child(PYBUILD + ["--help"])      # warm-up: writes the bytecode caches
    if args.startup_trials:
        with tempfile.TemporaryDirectory(prefix="pybuild-bench-") as tmp:
            res = bench_startup(Path(tmp), args.startup_trials)
        print(f"start-up, median of {args.startup_trials} runs (load average {os.getloadavg()[0]:.1f}):")
        for what in ("--version", "pull (cached)"):
            (ours, ours_cpu), (theirs, theirs_cpu) = res[f"pybuild {what}"], res[f"skopeo {what}"]
            print(f"  {what}: pybuild {ours * 1000:.1f} ms (target < {STARTUP_TARGET_MS} ms), skopeo "
                  f"{theirs * 1000:.1f} ms, ratio {ours / theirs:.2f}x; CPU {ours_cpu * 1000:.1f} ms vs "
                  f"{theirs_cpu * 1000:.1f} ms", flush=True)
    for text in args.cases.split(","):
        layers, mb = parse_case(text)
        size = layers * mb
        trials = args.big_trials if size > 500 else args.trials
        with tempfile.TemporaryDirectory(prefix="pybuild-bench-") as tmp:
            res = bench_push_pull(Path(tmp), trials, layers, int(mb * 1000 * 1000))
        print(f"image: {layers} layer(s) x {mb:g} MB = {size:.0f} MB, median of {trials} trials "
              f"(load average {os.getloadavg()[0]:.1f})")
        target = TARGETS.get(layers)
        for op in ("push", "pull"):
            (ours, ours_cpu), (theirs, theirs_cpu) = res[f"pybuild {op}"], res[f"skopeo {op}"]
            goal = f" (target <= {target}x)" if target else ""
            print(f"  {op}: pybuild {ours:.3f} s, skopeo {theirs:.3f} s, ratio {ours / theirs:.2f}x{goal}; "
                  f"CPU {ours_cpu:.3f} s vs {theirs_cpu:.3f} s ({ours_cpu / theirs_cpu:.2f}x)")
        lib, lib_cpu = res["pybuild pull (library)"]
        theirs, _ = res["skopeo pull"]
        print(f"  pull as a library call (no start-up, no imports): {lib:.3f} s, ratio {lib / theirs:.2f}x "
              f"to skopeo's command; CPU {lib_cpu:.3f} s", flush=True)
    if args.big_mb:
        with tempfile.TemporaryDirectory(prefix="pybuild-bench-") as tmp:
            secs, rss = bench_rss(Path(tmp), args.big_mb)
        print(f"pull of a {args.big_mb} MB image: {secs:.2f} s, pybuild peak RSS {rss:.1f} MB (target < 150 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
