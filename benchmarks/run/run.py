"""Containers of one image: pybuild vs podman, both on their DEFAULT (private, bridged) network,
measured side by side in one run.

The image is the busybox sample (Debian's static busybox imported as busybox:latest, the same
image the tests use); podman gets the very same image through
`skopeo copy oci:<root>/images:busybox:latest containers-storage:[overlay@...]...`, into a
private podman storage so that nothing else on the machine is touched. podman runs with
`--network bridge` (netavark's podman0: veth + nftables/iptables NAT, as pybuild's pybuild0), since
this machine's containers.conf makes the host network podman's default.

1. latency: one `run --rm IMAGE true` at a time, median of `--trials * 3` runs, alternating.
2. burst: COUNT (20) `run --rm -e N=i IMAGE sh -c 'echo $N > /tmp/me; cat /tmp/me'` started at
   once (each a separate command, start-up included); wall time until all have exited, median
   over trials, alternating which tool goes first.
3. start: COUNT detached containers (`run -d ... sleep 120`) started at once: wall time until
   every `run -d` has returned (median over trials), then removed.
4. resident: RESIDENT (10) detached sleepers, then while they all run: memory per container
   (PSS of every process that appeared, from /proc/PID/smaps_rollup, divided by RESIDENT), and
   what is kept alive per container without the container's own process (pybuild: conmon, and
   a pasta per container with PYBUILD_CONTAINER_NETWORK=pasta; podman: conmon), PSS, RSS and USS
   (private pages only: what the machine gets back when the container goes; PSS also carries a
   share of library pages that any other process mapping them, of any user, changes); disk per
   container. Measured once per trial, alternating which tool goes first, median over trials.
   The container's own `sleep` is in the total only: its PSS counts the page cache of
   /bin/busybox it maps, and the kernel maps a whole large folio on a fault, so it depends on
   how the tool wrote the layer's files, not on what the tool keeps (measured on this kernel,
   6.18: `sleep` from a busybox written in 1 MiB writes, as pybuild extracts, has 1.76 MB RSS;
   written in 32 KiB writes 1.38 MB, as podman's: the same page cache, more of it mapped).

Usage: python3 benchmarks/run/run.py [--count N] [--resident N] [--trials N] [--no-podman] [--pasta] [--host]
Needs root, runc, conmon, nft and overlayfs; podman and skopeo for the comparison (scripts/setup.sh).
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
from registry.manifest import ContainerConfig  # noqa: E402
from registry.store import Store  # noqa: E402
from tests.fixtures.images import make_busybox_rootfs  # noqa: E402

PYBUILD = [sys.executable, "-m", "builder"]
SHORT = "echo $N > /tmp/me; cat /tmp/me"
PODMAN_IMAGE = "localhost/pybuild-bench/busybox:latest"


class Tool:
    """How to drive one container tool: argv prefixes and its storage directory."""

    def __init__(self, name: str, prefix: list[str], image: str, storage: Path, extra_run: list[str],
                 env: dict[str, str] | None = None):
        self.env = env or {}
        self.name = name
        self.prefix = prefix
        self.image = image
        self.storage = storage
        self.extra_run = extra_run

    def run_argv(self, *args: str) -> list[str]:
        return [*self.prefix, "run", *self.extra_run, *args]

    def cmd(self, *args: str) -> list[str]:
        return [*self.prefix, *args]


def check(cmd: list[str], env: dict[str, str] | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def child_env(work: Path) -> dict[str, str]:
    """The environment of the tools: Python byte-code cached (in the work dir), as on a normal
    install; a session that sets PYTHONDONTWRITEBYTECODE would otherwise recompile every module
    in every one of the twenty processes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    # This checkout's pybuild, whatever is installed (`-m builder` would otherwise find an
    # installed one first, as the work directory is not the checkout).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


ENV: dict[str, str] = dict(os.environ)


def all_at_once(cmds: list[list[str]], env: dict[str, str] | None = None) -> tuple[float, list[str]]:
    """Start every command at once; (seconds until the last exits, their stdouts)."""
    full = {**ENV, **(env or {})}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)
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


def uss_kb(pid: int) -> int:
    """Private pages (clean and dirty): freed when the process ends, whoever else runs."""
    try:
        return sum(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                   if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except OSError:
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
    wall, outs = all_at_once(cmds, tool.env)
    ids = [o.strip().splitlines()[-1] for o in outs]
    time.sleep(1.0)      # let start-up transients exit
    new = ours(pids() - before_pids, tool.storage)
    mem_kb = sum(pss_kb(p) for p in new)
    # What the tool keeps alive per container, without the container's own process (`sleep`).
    kept = {p: comm(p) for p in new if comm(p) != "sleep"}
    kept_kb = sum(pss_kb(p) for p in kept)
    kept_rss_kb = sum(rss_kb(p) for p in kept)
    kept_uss_kb = sum(uss_kb(p) for p in kept)
    kinds = [f"{k} {sum(pss_kb(p) for p, n in kept.items() if n == k) / 1024 / count:.2f}"
             for k in sorted(set(kept.values()))]
    own = [p for p in new if p not in kept]
    own_text = (f"the container's own: PSS {sum(pss_kb(p) for p in own) / 1024 / count:.2f}, "
                f"USS {sum(uss_kb(p) for p in own) / 1024 / count:.2f}")
    disk1 = du_bytes(tool.storage)
    check(tool.cmd("rm", "-f", *ids), tool.env)
    return {"start_s": wall, "mem_mb": mem_kb / 1024 / count, "disk_kb": (disk1 - disk0) / 1024 / count,
            "procs": len(new) / count, "kept_mb": kept_kb / 1024 / count, "kept_rss_mb": kept_rss_kb / 1024 / count,
            "kept_uss_mb": kept_uss_kb / 1024 / count, "kinds": ",".join(kinds), "own": own_text}


def start_many(tool: Tool, count: int) -> float:
    """Seconds until ``count`` `run -d` started at once have all returned; then removed."""
    cmds = [tool.run_argv("-d", tool.image, "sleep", "120") for _ in range(count)]
    wall, outs = all_at_once(cmds, tool.env)
    check(tool.cmd("rm", "-f", *[o.strip().splitlines()[-1] for o in outs]), tool.env)
    return wall


def latency(tool: Tool) -> float:
    t0 = time.perf_counter()
    check(tool.run_argv("--rm", tool.image, "true"), tool.env)
    return time.perf_counter() - t0


def setup(work: Path, use_podman: bool, pasta: bool = False, host: bool = False) -> list[Tool]:
    root = work / "pybuild-root"
    rootfs = make_busybox_rootfs(work / "rootfs")
    import_image(Store(root), rootfs, "busybox:latest", container=ContainerConfig(cmd=["sh"]),
                 created="2000-01-01T00:00:00Z")
    pyb = [*PYBUILD, "--root", str(root)]
    tools = [Tool("pybuild", pyb, "busybox:latest", root, ["-q"])]
    if pasta:      # rootless pybuild's default network: a pasta per container
        tools.append(Tool("pyb-pasta", pyb, "busybox:latest", root, ["-q"], {"PYBUILD_CONTAINER_NETWORK": "pasta"}))
    if host:
        tools.append(Tool("pyb-host", pyb, "busybox:latest", root, ["-q", "--network", "host"]))
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
                          ["--network", "bridge", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]))
    return tools


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20, help="containers at once for burst and start (20)")
    ap.add_argument("--resident", type=int, default=10, help="detached containers for memory (10)")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--no-podman", action="store_true")
    ap.add_argument("--pasta", action="store_true", help="also pybuild with a pasta per container (rootless' way)")
    ap.add_argument("--host", action="store_true", help="also pybuild on the host's network")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (overlay mounts, namespaces)")
    work = Path(tempfile.mkdtemp(prefix="pybuild-bench-run-"))
    ENV.clear()
    ENV.update(child_env(work))
    try:
        tools = setup(work, not a.no_podman, a.pasta, a.host)
        for t in tools:      # warm-up: pybuild extracts the layer once, podman sets up its storage
            check(t.run_argv("--rm", t.image, "true"), t.env)
        lat: dict[str, list[float]] = {t.name: [] for t in tools}
        burst: dict[str, list[float]] = {t.name: [] for t in tools}
        start: dict[str, list[float]] = {t.name: [] for t in tools}
        resident_runs: dict[str, list[dict]] = {t.name: [] for t in tools}
        for trial in range(a.trials):
            order = tools if trial % 2 == 0 else list(reversed(tools))
            for _ in range(3):
                for t in order:
                    lat[t.name].append(latency(t))
            for t in order:
                wall, outs = all_at_once([t.run_argv("--rm", "-e", f"N={i}", t.image, "sh", "-c", SHORT)
                                          for i in range(a.count)], t.env)
                if outs != [f"{i}\n" for i in range(a.count)]:
                    raise SystemExit(f"{t.name}: wrong outputs {outs}")
                burst[t.name].append(wall)
            for t in order:
                start[t.name].append(start_many(t, a.count))
            for t in order:
                resident_runs[t.name].append(resident(t, a.resident))
        med = statistics.median
        res = {name: {k: (runs[len(runs) // 2][k] if isinstance(runs[0][k], str) else med(r[k] for r in runs))
                      for k in runs[0]} for name, runs in resident_runs.items()}
        print(f"busybox containers, default networks (pybuild: pybuild0 bridge; podman: --network bridge); "
              f"medians of {a.trials} trials; load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"{'':9} {'run --rm (s)':>12} {a.count:>3} x run --rm (s) {a.count:>3} x run -d (s) "
              f"{'mem/ctr MB PSS':>15} {'kept/ctr PSS/RSS/USS':>21} {'disk/ctr KB':>11} {'procs/ctr':>9}")
        for t in tools:
            r = res[t.name]
            print(f"{t.name:9} {med(lat[t.name]):12.3f} {med(burst[t.name]):19.2f} {med(start[t.name]):17.2f} "
                  f"{r['mem_mb']:15.2f} {r['kept_mb']:7.2f}/{r['kept_rss_mb']:.2f}/{r['kept_uss_mb']:<7.2f} "
                  f"{r['disk_kb']:11.1f} "
                  f"{r['procs']:9.1f}")
        print(f"kept alive per detached container ({a.resident} running), by process kind (MB PSS; the middle trial):")
        for t in tools:
            print(f"  {t.name:9} {res[t.name]['kinds']}; {res[t.name]['own']}")
        if "podman" in res:
            p = res["podman"]
            for t in tools[:-1]:
                r = res[t.name]
                print(f"{t.name}/podman: run --rm latency {med(lat[t.name]) / med(lat['podman']):.2f}, "
                      f"{a.count} at once run --rm {med(burst[t.name]) / med(burst['podman']):.2f}, "
                      f"{a.count} at once run -d {med(start[t.name]) / med(start['podman']):.2f}, "
                      f"memory per container: total PSS {r['mem_mb'] / p['mem_mb']:.2f}, "
                      f"kept PSS {r['kept_mb'] / p['kept_mb']:.3f}, kept RSS {r['kept_rss_mb'] / p['kept_rss_mb']:.3f}, "
                      f"kept USS {r['kept_uss_mb'] / p['kept_uss_mb']:.3f}")
    finally:
        for m in sorted((l.split()[4] for l in Path("/proc/self/mountinfo").read_text().splitlines()
                         if str(work) in l.split()[4]), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
