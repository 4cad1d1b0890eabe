"""Twenty containers of one image at once: pybuild vs `podman run`, measured side by side in one run.

The image is the busybox sample (Debian's static busybox imported as busybox:latest, the same
image the tests use); podman gets the very same image through
`skopeo copy oci:<root>/images:busybox:latest containers-storage:[overlay@...]...`, into a
private podman storage so that nothing else on the machine is touched.

1. burst: twenty `run --rm -e N=i IMAGE sh -c 'echo $N > /tmp/me; cat /tmp/me'` started at once
   (each a separate command, start-up included); total wall time until all have exited, median
   over trials, alternating which tool goes first.
2. resident: twenty detached containers (`run -d ... sleep 120`) started at once, then while they
   all run: extra memory per container (PSS of every process that appeared, from
   /proc/PID/smaps_rollup, divided by twenty: pybuild's supervisor + runc, podman's conmon +
   runc's leftovers, plus the container processes) and extra disk per container (growth of the
   tool's storage directory divided by twenty). Then everything is removed. Also what is kept
   alive per container without the container's own process (pybuild: conmon, and pasta on its
   default network; podman: conmon), PSS and RSS, for pybuild on its default network and on
   the host's network (as podman runs here).

Usage: python3 benchmarks/run/run.py [--count N] [--trials N] [--no-podman]
Needs root, runc and overlayfs; podman and skopeo for the comparison (scripts/setup.sh).
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

from registry.imports import import_image  # noqa: E402
from registry.store import Store  # noqa: E402
from tests.fixtures.images import make_busybox_rootfs  # noqa: E402

PYBUILD = [sys.executable, "-m", "builder"]
SHORT = "echo $N > /tmp/me; cat /tmp/me"
PODMAN_IMAGE = "localhost/pybuild-bench/busybox:latest"


class Tool:
    """How to drive one container tool: argv prefixes and its storage directory."""

    def __init__(self, name: str, prefix: list[str], image: str, storage: Path, extra_run: list[str]):
        self.name = name
        self.prefix = prefix
        self.image = image
        self.storage = storage
        self.extra_run = extra_run

    def run_argv(self, *args: str) -> list[str]:
        return [*self.prefix, "run", *self.extra_run, *args]

    def cmd(self, *args: str) -> list[str]:
        return [*self.prefix, *args]


def check(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def child_env(work: Path) -> dict[str, str]:
    """The environment of the tools: Python byte-code cached (in the work dir), as on a normal
    install; a session that sets PYTHONDONTWRITEBYTECODE would otherwise recompile every module
    in every one of the twenty processes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


ENV: dict[str, str] = dict(os.environ)


def all_at_once(cmds: list[list[str]]) -> tuple[float, list[str]]:
    """Start every command at once; (seconds until the last exits, their stdouts)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for c in cmds]
    outs = []
    for p, c in zip(procs, cmds):
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"command failed ({p.returncode}): {' '.join(c)}\n{err}")
        outs.append(out)
    return time.perf_counter() - t0, outs


def du_bytes(path: Path) -> int:
    """Disk blocks used under ``path`` (bytes), like `du -sx`, counting hard links once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    dev = os.lstat(path).st_dev
    for dirpath, dirnames, filenames in os.walk(path):
        # Mounted rootfs views (overlay "merged" dirs) are other filesystems: not disk used here.
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        for n in dirnames + filenames + ["."]:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def pids() -> set[int]:
    return {int(d) for d in os.listdir("/proc") if d.isdigit()}


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def ours(candidates: set[int], storage: Path) -> set[int]:
    """The tool's processes among ``candidates``: those naming its storage directory (pybuild's
    supervisors, runc, conmon) and their descendants (the containers)."""
    found = {p for p in candidates if str(storage) in cmdline(p)}
    for _ in range(4):
        found |= {p for p in candidates if ppid(p) in found}
    return found


def resident(tool: Tool, count: int) -> dict[str, float]:
    """Start ``count`` detached sleepers at once; memory and disk per container while they run."""
    marker = f"bench-{tool.name}-{os.getpid()}"
    before_pids = pids()
    disk0 = du_bytes(tool.storage)
    cmds = [tool.run_argv("-d", "--name", f"{marker}-{i}", tool.image, "sleep", "120") for i in range(count)]
    wall, outs = all_at_once(cmds)
    ids = [o.strip().splitlines()[-1] for o in outs]
    time.sleep(1.0)      # let start-up transients exit
    new = ours(pids() - before_pids, tool.storage)
    mem_kb = sum(pss_kb(p) for p in new)
    # What the tool keeps alive per container, without the container's own process (`sleep`).
    kept = {p: comm(p) for p in new if comm(p) != "sleep"}
    kept_kb = sum(pss_kb(p) for p in kept)
    kept_rss_kb = sum(rss_kb(p) for p in kept)
    kinds = [f"{k} {sum(pss_kb(p) for p, n in kept.items() if n == k) / 1024 / count:.2f}"
             for k in sorted(set(kept.values()))]
    disk1 = du_bytes(tool.storage)
    check(tool.cmd("rm", "-f", *ids))
    return {"start_s": wall, "mem_mb": mem_kb / 1024 / count, "disk_kb": (disk1 - disk0) / 1024 / count,
            "procs": len(new) / count, "kept_mb": kept_kb / 1024 / count, "kept_rss_mb": kept_rss_kb / 1024 / count,
            "kinds": ",".join(kinds)}


def setup(work: Path, use_podman: bool) -> list[Tool]:
    root = work / "pybuild-root"
    rootfs = make_busybox_rootfs(work / "rootfs")
    import_image(Store(root), rootfs, "busybox:latest", changes=['CMD ["sh"]'], created="2000-01-01T00:00:00Z")
    tools = [Tool("pybuild", [*PYBUILD, "--root", str(root)], "busybox:latest", root, ["-q"]),
             # podman below runs on the host's network: the same for pybuild, for a like-for-like
             # monitor cost (pybuild's default private network adds a pasta per container).
             Tool("pyb-host", [*PYBUILD, "--root", str(root)], "busybox:latest", root, ["-q", "--network", "host"])]
    if use_podman:
        if not (shutil.which("podman") and shutil.which("skopeo")):
            print("podman or skopeo not installed: measuring pybuild alone", file=sys.stderr)
            return tools
        proot, prun = work / "podman-root", work / "podman-runroot"
        check(["skopeo", "copy", "-q", f"oci:{root}/images:busybox:latest",
               f"containers-storage:[overlay@{proot}+{prun}]{PODMAN_IMAGE}"])
        prefix = ["podman", "--root", str(proot), "--runroot", str(prun), "--storage-driver", "overlay",
                  "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        tools.append(Tool("podman", prefix, PODMAN_IMAGE, proot,
                          ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]))
    return tools


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--no-podman", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (overlay mounts, namespaces)")
    work = Path(tempfile.mkdtemp(prefix="pybuild-bench-run-"))
    ENV.clear()
    ENV.update(child_env(work))
    try:
        tools = setup(work, not a.no_podman)
        for t in tools:      # warm-up: pybuild extracts the layer once, podman sets up its storage
            check(t.run_argv("--rm", t.image, "true"))
        burst: dict[str, list[float]] = {t.name: [] for t in tools}
        for trial in range(a.trials):
            order = tools if trial % 2 == 0 else list(reversed(tools))
            for t in order:
                wall, outs = all_at_once([t.run_argv("--rm", "-e", f"N={i}", t.image, "sh", "-c", SHORT)
                                          for i in range(a.count)])
                if outs != [f"{i}\n" for i in range(a.count)]:
                    raise SystemExit(f"{t.name}: wrong outputs {outs}")
                burst[t.name].append(wall)
        res = {t.name: resident(t, a.count) for t in tools}
        res_names = [t.name for t in tools]
        print(f"{a.count} containers of busybox at once (median of {a.trials} trials; load avg "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        print(f"{'':8} {'burst run --rm (s)':>18} {'start -d (s)':>12} {'mem/ctr (MB PSS)':>17} "
              f"{'disk/ctr (KB)':>13} {'procs/ctr':>9}")
        for t in tools:
            r = res[t.name]
            print(f"{t.name:8} {statistics.median(burst[t.name]):18.2f} {r['start_s']:12.2f} "
                  f"{r['mem_mb']:17.1f} {r['disk_kb']:13.1f} {r['procs']:9.1f}")
        print(f"kept alive per detached container, without the container's own process "
              "(PSS / RSS, MB; process kinds):")
        for t in tools:
            r = res[t.name]
            print(f"  {t.name:8} {r['kept_mb']:6.2f} / {r['kept_rss_mb']:6.2f}   {r['kinds']}")
        if "podman" in res:
            for name in res_names[:-1]:
                print(f"per-container memory {name}/podman: total PSS {res[name]['mem_mb'] / res['podman']['mem_mb']:.2f}, "
                      f"kept PSS {res[name]['kept_mb'] / res['podman']['kept_mb']:.2f}, "
                      f"kept RSS {res[name]['kept_rss_mb'] / res['podman']['kept_rss_mb']:.2f}")
        if "podman" in burst:
            ratio = statistics.median(burst["pybuild"]) / statistics.median(burst["podman"])
            print(f"burst wall time pybuild/podman: {ratio:.2f}")
    finally:
        for m in sorted((l.split()[4] for l in Path("/proc/self/mountinfo").read_text().splitlines()
                         if str(work) in l.split()[4]), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
