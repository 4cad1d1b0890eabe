#!/usr/bin/env python3
"""Build buildah's conformance cases with one pybuild source tree and record what each gave, so
that two trees (before and after a change) can be compared image by image.

    python3 scripts/conformance_parity.py build --tree DIR --out A.json [--fs] [--only SLUG...]
    python3 scripts/conformance_parity.py docker --out D.json [--only SLUG...]
    python3 scripts/conformance_parity.py compare [--docker] [-v] A.json B.json

`docker` is the independent replay with Docker BuildKit as reference: it installs Debian's
docker.io when absent (only where a policy-rc.d keeps dpkg from starting its daemon), starts
its own `dockerd` (iptables and the bridge off, data root under /var/tmp,
socket in the work directory; DESIGN.md), builds every case with `/usr/bin/docker build
--network=host --no-cache` (DOCKER_BUILDKIT=1) and records the unpacked filesystem (paths,
types, modes, owners, sizes, hashes, link targets, xattrs) and the runtime config, which
`build --fs` records for pybuild too; `compare` then compares what both records hold
(layer diffIDs and history only between two pybuild runs).

`build` makes the two bases the cases name offline (busybox from Debian's busybox-static, a
Debian minbase with debootstrap from the machine's apt sources, cached under /var/tmp), serves
them from a registry:2 on localhost:5000, and records per case: success or the error's last
line, and the image's layer diffIDs and config (timestamps dropped). SOURCE_DATE_EPOCH is set,
so a case whose steps are deterministic gives the same diffIDs on every build; a case that
differs between two builds of the same tree is reported as unstable by `compare` when given
two such runs. The data is ../shared/conformance/buildah (or $PYBUILD_CONFORMANCE_DIR/buildah).
Run as root.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.fixtures.conformance_cases import (  # noqa: E402  (the helper lives with the tests)
    ConformanceSetupError, _skipped_paths, archive_tree, build_flags, data_dir, environment, failed,
    load_cases, normalized_config)

# Where Docker 20.10's BuildKit (v0.8, fsutil of 2021) gives another image than current BuildKit,
# which pybuild follows, beyond those cases.json notes under `docker_20_10` (no --parents,
# --exclude or heredocs; no symlink/directory replacement). Read in BuildKit's and fsutil's
# sources: fsutil's filter walk (filter.go, since 2021-12/2023-08) descends into an excluded
# directory when an exception pattern has a wildcard (`!**/x`, `!*/sub1*`), where the old walker
# only did so for an exception starting with the directory's own path; and it sends an excluded
# directory only as the parent of something re-included, where the old one sent it empty.
_OLD_FSUTIL_DESCENT = ("fsutil before 2021-12 skips an excluded directory unless an exception "
                       "starts with its path; current fsutil also descends for a wildcard exception")
_OLD_FSUTIL_EMPTY = ("fsutil before 2021-12 sends an excluded directory empty; current fsutil sends "
                     "it only as the parent of a re-included path")
DOCKER_20_10 = {
    "copy-integration1": _OLD_FSUTIL_DESCENT + " (`!*/sub1*` re-includes subdir/sub1.txt)",
    "dockerignore-exceptions-skip": _OLD_FSUTIL_DESCENT + " (`!**/oneline.txt`)",
    "dockerignore-exceptions-weirdness-1": _OLD_FSUTIL_DESCENT + " (`!*/sub1*`)",
    "dockerignore-exclude-deep-subdir-dot-2": _OLD_FSUTIL_DESCENT + " (`!**/subdir-g`)",
    "dockerignore-exclude-deep-subdir-star-2": _OLD_FSUTIL_DESCENT + " (`!**/subdir-g`)",
    "dockerignore-exclude-kind-of-deep-subdir-dot": _OLD_FSUTIL_DESCENT + " (`!**/subdir-f`)",
    "dockerignore-exclude-kind-of-deep-subdir-star": _OLD_FSUTIL_DESCENT + " (`!**/subdir-f`)",
    "dockerignore-allowlist-subsubdir-nofile": _OLD_FSUTIL_EMPTY + " (an empty /folder)",
    "dockerignore-allowlist-subsubdir-nosubdir": _OLD_FSUTIL_EMPTY + " (an empty /folder)",
    "dockerignore-allowlist-subdir-nofile-dir": _OLD_FSUTIL_EMPTY + " (folder1 exists, so ADD folder1 builds)",
    "dockerignore-allowlist-subdir-nofile-file": _OLD_FSUTIL_EMPTY + " (folder1 exists, so ADD folder1 builds)",
    "mount-cache-by-ownership": "BuildKit v0.8 leaves the RUN's mount points (/cache) in the layer; current "
                                "BuildKit's MountStubsCleaner (recursive since 2023) removes them",
    "mount-targets-mount": "BuildKit v0.8 leaves the mount points (/tmp, /subdirectory/..., /etc) in the layer; "
                           "current BuildKit removes them with their created parents, keeping /dev, /proc, /sys",
    "mount-targets-new": "BuildKit v0.8 keeps /etc (made for /etc/hosts, /etc/resolv.conf); current BuildKit "
                         "removes it as a parent of those stubs, keeping /dev, /proc, /sys",
    "multistage-copyback": "BuildKit v0.8 leaves the bind mount point /base in the layer; current BuildKit removes it",
}

DOCKER = "/usr/bin/docker"          # Debian's client, with BuildKit (/usr/local/bin/docker has no buildx)
DOCKER_DATA = Path("/var/tmp/pybuild-parity-docker")


def _cases(args: argparse.Namespace) -> tuple[Path, list[dict]]:
    data = data_dir()
    if data is None:
        sys.exit("conformance data not found: set PYBUILD_CONFORMANCE_DIR")
    cases = load_cases(data)
    if args.only:
        cases = [c for c in cases if c["slug"] in args.only]
    return data, cases


def _replay(args: argparse.Namespace, tree: Path, one) -> None:
    """Set the cases' environment up with `tree`'s pybuild (bases, registry, HTTP server), run
    `one(env, case, work)` for each case and write the results."""
    data, cases = _cases(args)
    work = Path(tempfile.mkdtemp(prefix="pybuild-conformance-"))
    results: dict[str, dict] = {}
    try:
        with environment(tree, data, work) as env:
            for case in cases:
                slug = case["slug"]
                r = one(env, case, work)
                r.pop("stderr", None)
                results[slug] = r
                print(f"{slug}: {'ok' if r['ok'] else 'FAIL ' + r['error'][:120]}", flush=True)
    except ConformanceSetupError as e:
        sys.exit(str(e))
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))


def build(args: argparse.Namespace) -> None:
    _replay(args, Path(args.tree).resolve(), lambda env, case, work: env.build(case, fs=args.fs))


def _start_dockerd(work: Path):
    """A dockerd of this run's own: no iptables, no bridge (builds use --network=host), its own
    data root, exec root, pid file and socket; returns (process, socket URL)."""
    import shutil
    import subprocess
    import time
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists() or not Path(DOCKER).exists():
        _install_docker()
    sock = work / "docker.sock"
    exec_root = Path(tempfile.mkdtemp(prefix="pybuild-parity-dockerd-"))   # short: containerd's socket path
    DOCKER_DATA.mkdir(parents=True, exist_ok=True)
    log = open(work / "dockerd.log", "w")
    proc = subprocess.Popen([dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none",
                             "--data-root", str(DOCKER_DATA), "--exec-root", str(exec_root),
                             "--pidfile", str(work / "dockerd.pid"), "-H", f"unix://{sock}",
                             "--config-file", str(_dockerd_config(work))],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    host = f"unix://{sock}"
    for _ in range(300):
        if proc.poll() is not None:
            raise ConformanceSetupError(f"dockerd exited {proc.returncode}: see {work / 'dockerd.log'}:\n"
                                        + (work / "dockerd.log").read_text()[-2000:])
        if subprocess.run([DOCKER, "-H", host, "version"], capture_output=True).returncode == 0:
            return proc, host, exec_root
        time.sleep(0.2)
    proc.terminate()
    raise ConformanceSetupError("dockerd did not answer within 60 s")


def _install_docker() -> None:
    """Install Debian's docker.io (Docker 20.10 here), only where dpkg will not start its daemon
    (a policy-rc.d that denies, as on these machines: the replay runs a dockerd of its own)."""
    import subprocess
    policy = Path("/usr/sbin/policy-rc.d")
    if not policy.exists() or subprocess.run([str(policy), "docker", "start"]).returncode != 101:
        raise ConformanceSetupError("Docker is not installed, and installing docker.io here would start its "
                                    "daemon (no /usr/sbin/policy-rc.d that exits 101): install docker.io "
                                    f"yourself (the replay needs {DOCKER} and dockerd) and stop its service")
    env = {**__import__("os").environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "docker.io"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise ConformanceSetupError(f"apt-get install docker.io failed:\n{r.stderr[-2000:]}")


def _dockerd_config(work: Path) -> Path:
    conf = work / "daemon.json"
    conf.write_text(json.dumps({"features": {"buildkit": True}, "insecure-registries": ["localhost:5000"]}))
    return conf


def docker(args: argparse.Namespace) -> None:
    import os
    import subprocess
    state: dict = {}

    def one(env, case: dict, work: Path) -> dict:
        if "host" not in state:
            state["proc"], state["host"], state["exec_root"] = _start_dockerd(work)
        prepared = env.prepare(case)
        if isinstance(prepared, dict):
            return prepared
        ctx, dockerfile = prepared
        host = state["host"]
        iid = work / "docker-iid"
        iid.unlink(missing_ok=True)
        r = subprocess.run([DOCKER, "-H", host, "build", "--network=host", "--no-cache", "-q",
                            "--iidfile", str(iid), "-f", dockerfile, *build_flags(case), str(ctx)],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "DOCKER_BUILDKIT": "1"})
        if r.returncode:
            return failed(r)
        image = iid.read_text().strip()
        archive = work / "docker-image.tar"
        subprocess.run([DOCKER, "-H", host, "save", "-o", str(archive), image], check=True, capture_output=True)
        with __import__("tarfile").open(archive) as t:
            manifest = json.load(t.extractfile("manifest.json"))      # type: ignore[arg-type]
            config = json.load(t.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        record = {"ok": True, "config": config.get("config"), "fs": archive_tree(archive, _skipped_paths(case))}
        archive.unlink()
        subprocess.run([DOCKER, "-H", host, "rmi", "-f", image], capture_output=True)
        return record

    try:
        _replay(args, REPO, one)
    finally:
        if "proc" in state:
            subprocess.run([DOCKER, "-H", state["host"], "builder", "prune", "-af"], capture_output=True)
            state["proc"].terminate()
            try:
                state["proc"].wait(30)
            except subprocess.TimeoutExpired:
                state["proc"].kill()
            subprocess.run(["umount", "-R", "-l", str(state["exec_root"])], capture_output=True)
            __import__("shutil").rmtree(state["exec_root"], ignore_errors=True)


def _normalized(path: str) -> dict:
    """A run's results with what differs between any two runs (work dir, HTTP port) taken out."""
    import re
    text = re.sub(r"/tmp/pybuild-conformance-[A-Za-z0-9_]+", "<work>", Path(path).read_text())
    return json.loads(re.sub(r"127\.0\.0\.1:[0-9]+", "127.0.0.1:<port>", text))


def compare(args: argparse.Namespace) -> None:
    """Compare two runs case by case. With --docker (A is a `docker` run), a difference that
    cases.json's `docker_20_10` or DOCKER_20_10 above explains is counted apart, with its reason."""
    a, b = (_normalized(p) for p in (args.a, args.b))
    known: dict[str, str] = {}
    if args.docker:
        data, cases = _cases(argparse.Namespace(only=None))
        known = {c["slug"]: c["docker_20_10"] for c in cases if c.get("docker_20_10")} | DOCKER_20_10
    same = both_fail = differ = explained = 0
    for slug in sorted(set(a) | set(b)):
        x, y = a.get(slug), b.get(slug)
        if x is None or y is None:
            line = f"only in {'B' if x is None else 'A'}"
        elif x["ok"] != y["ok"]:
            line = f"A {'ok' if x['ok'] else x['error']!r} / B {'ok' if y['ok'] else y['error']!r}"
        elif not x["ok"]:
            both_fail += 1
            if args.verbose:
                print(f"{slug}: both fail, A {x['error']!r} / B {y['error']!r}")
            continue
        else:
            keys = [k for k in ("diff_ids", "config", "history", "fs") if k in x and k in y]
            what = [k for k in keys if _comparable(k, x[k]) != _comparable(k, y[k])]
            if not what:
                same += 1
                continue
            line = f"images differ in {', '.join(what)}"
        if slug in known:
            explained += 1
            print(f"{slug}: {line[:160]}\n    Docker 20.10: {known[slug]}")
        else:
            differ += 1
            print(f"{slug}: {line}")
        if args.verbose and x and y and x["ok"] and y["ok"]:
            _explain(x, y, what)
    print(f"{same} cases identical, {both_fail} fail in both"
          + (f", {explained} differ where Docker 20.10's BuildKit is not current BuildKit" if args.docker else "")
          + f", {differ} differ")


def _comparable(key: str, value):
    return normalized_config(value) if key == "config" else value


def _explain(x: dict, y: dict, what: list[str]) -> None:
    """Print what differs (fs: per path; config: per field), A first."""
    if "fs" in what:
        a, b = x["fs"], y["fs"]
        for path in sorted(set(a) | set(b)):
            if a.get(path) != b.get(path):
                print(f"    {path}: A {a.get(path)} / B {b.get(path)}")
    if "config" in what:
        a, b = normalized_config(x["config"]), normalized_config(y["config"])
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                print(f"    config {k}: A {a.get(k)!r} / B {b.get(k)!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--tree", default=str(REPO), help="the pybuild source tree to build with")
    b.add_argument("--out", required=True)
    b.add_argument("--only", nargs="*")
    b.add_argument("--fs", action="store_true", help="also record the unpacked filesystem (to compare with docker)")
    d = sub.add_parser("docker")
    d.add_argument("--out", required=True)
    d.add_argument("--only", nargs="*")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("-v", "--verbose", action="store_true", help="print each differing path and field")
    c.add_argument("--docker", action="store_true",
                   help="A is a `docker` run: count the known Docker 20.10 differences apart")
    args = ap.parse_args()
    {"build": build, "docker": docker, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
