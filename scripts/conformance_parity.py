#!/usr/bin/env python3
"""Build buildah's conformance cases with one pybuild source tree and record what each gave, so
that two trees (before and after a change) can be compared image by image.

    python3 scripts/conformance_parity.py build --tree DIR --out A.json [--only SLUG...]
    python3 scripts/conformance_parity.py compare A.json B.json

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
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEBIAN_CACHE = Path("/var/tmp/pybuild-conformance-debian")
EPOCH = "1485449953"


def data_dir() -> Path:
    for d in (os.environ.get("PYBUILD_CONFORMANCE_DIR"), REPO.parent / "shared/conformance",
              "/work/shared/conformance"):
        if d and (Path(d) / "buildah/cases.json").is_file():
            return Path(d) / "buildah"
    sys.exit("conformance data not found: set PYBUILD_CONFORMANCE_DIR")


def mirror() -> str:
    """The Debian mirror of the machine's apt sources that carries bookworm itself."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
             *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():          # one-line format: deb URI SUITE COMPONENTS
            words = line.split()
            if words[:1] == ["deb"] and "bookworm" in words:
                return next(w for w in words[1:] if "://" in w)
        for stanza in text.split("\n\n"):         # deb822 format
            fields = dict(l.split(":", 1) for l in stanza.splitlines() if ":" in l and not l.startswith("#"))
            if "bookworm" in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
    sys.exit("no Debian bookworm mirror in the apt sources")


def pybuild(tree: Path, root: Path, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "SOURCE_DATE_EPOCH": EPOCH, "PYBUILD_ROOT": str(root)}
    # cwd=tree: `python -m` puts the working directory before PYTHONPATH on sys.path, so a run
    # from another checkout would build with that checkout's code.
    r = subprocess.run([sys.executable, "-m", "builder", *args], env=env, capture_output=True, text=True,
                       cwd=str(tree), **kw)
    if check and r.returncode:
        sys.exit(f"pybuild {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(work: Path) -> subprocess.Popen:
    conf = work / "registry.yml"
    conf.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'registry'}\n"
                    "http:\n  addr: 127.0.0.1:5000\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", 5000), 0.1).close()
            return proc
        except OSError:
            threading.Event().wait(0.1)
    sys.exit("registry:2 did not start on 127.0.0.1:5000 (port taken?)")


def make_bases(tree: Path, work: Path) -> str:
    """Push both bases to localhost:5000; returns the busybox manifest digest."""
    root = work / "bases"
    sys.path.insert(0, str(REPO))
    from tests.fixtures.images import make_busybox_rootfs
    make_busybox_rootfs(work / "busybox")
    pybuild(tree, root, "import", str(work / "busybox"), "localhost:5000/busybox:latest",
            "--change", 'CMD ["sh"]')
    if not (DEBIAN_CACHE / "usr/bin/apt-get").exists():
        shutil.rmtree(DEBIAN_CACHE, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(DEBIAN_CACHE), mirror()],
                       check=True, capture_output=True)
    pybuild(tree, root, "import", str(DEBIAN_CACHE), "localhost:5000/debian:bookworm",
            "--change", 'CMD ["bash"]')
    for ref in ("localhost:5000/busybox:latest", "localhost:5000/debian:bookworm"):
        pybuild(tree, root, "push", ref)
    index = json.loads((root / "images/index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if "busybox" in m.get("annotations", {}).get("org.opencontainers.image.ref.name", ""))


def image_record(root: Path, iid_file: Path) -> dict:
    iid = iid_file.read_text().strip()
    config = json.loads((root / "images/blobs" / iid.replace(":", "/")).read_text())
    for h in config.get("history", []):
        h.pop("created", None)
    config.pop("created", None)
    return {"diff_ids": config.get("rootfs", {}).get("diff_ids"), "config": config.get("config"),
            "history": config.get("history")}


def build(args: argparse.Namespace) -> None:
    data = data_dir()
    cases = json.loads((data / "cases.json").read_text())["cases"]
    if args.only:
        cases = [c for c in cases if c["slug"] in args.only]
    tree = Path(args.tree).resolve()
    work = Path(tempfile.mkdtemp(prefix="pybuild-conformance-"))
    registry = start_registry(work)
    www = work / "www"
    subprocess.run([sys.executable, str(data / "prepare.py"), "--www", str(www)], check=True)
    port = free_port()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(www))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    results: dict[str, dict] = {}
    try:
        digest = make_bases(tree, work)
        for n, case in enumerate(cases):
            slug = case["slug"]
            ctx = work / "cases" / slug
            prep = subprocess.run([sys.executable, str(data / "prepare.py"), str(data / "cases.json"), slug,
                                   str(ctx), "--var", f"HTTP_PORT={port}", "--var", f"BUSYBOX_DIGEST={digest}",
                                   "--var", f"RUNID={n}"], capture_output=True, text=True)
            if prep.returncode:
                results[slug] = {"ok": False, "error": "prepare: " + prep.stderr.strip()[-300:]}
                continue
            dockerfile = prep.stdout.strip().splitlines()[-1]
            root = work / "root"
            iid = work / "iid"
            iid.unlink(missing_ok=True)
            cmd = ["build", "-q", "--iidfile", str(iid), "-f", dockerfile]
            for k, v in (case.get("build_args") or {}).items():
                cmd += ["--build-arg", f"{k}={v}"]
            if case.get("target"):
                cmd += ["--target", case["target"]]
            r = pybuild(tree, root, *cmd, str(ctx), check=False, timeout=600)
            if r.returncode:
                lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
                results[slug] = {"ok": False, "error": lines[-1][-300:] if lines else f"exit {r.returncode}"}
            else:
                results[slug] = {"ok": True, **image_record(root, iid)}
            print(f"{slug}: {'ok' if results[slug]['ok'] else 'FAIL ' + results[slug]['error'][:120]}",
                  flush=True)
    finally:
        httpd.shutdown()
        registry.terminate()
        subprocess.run(["umount", "-R", "-l", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))


def _normalized(path: str) -> dict:
    """A run's results with what differs between any two runs (work dir, HTTP port) taken out."""
    import re
    text = re.sub(r"/tmp/pybuild-conformance-[A-Za-z0-9_]+", "<work>", Path(path).read_text())
    return json.loads(re.sub(r"127\.0\.0\.1:[0-9]+", "127.0.0.1:<port>", text))


def compare(args: argparse.Namespace) -> None:
    a, b = (_normalized(p) for p in (args.a, args.b))
    same = differ = 0
    for slug in sorted(set(a) | set(b)):
        x, y = a.get(slug), b.get(slug)
        if x == y:
            same += 1
            continue
        differ += 1
        if x is None or y is None:
            print(f"{slug}: only in {'B' if x is None else 'A'}")
        elif x["ok"] != y["ok"]:
            print(f"{slug}: A {'ok' if x['ok'] else x['error']!r} / B {'ok' if y['ok'] else y['error']!r}")
        elif not x["ok"]:
            print(f"{slug}: both fail, A {x['error']!r} / B {y['error']!r}")
        else:
            what = [k for k in ("diff_ids", "config", "history") if x.get(k) != y.get(k)]
            print(f"{slug}: images differ in {', '.join(what)}")
    print(f"{same} cases identical, {differ} differ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--tree", default=str(REPO), help="the pybuild source tree to build with")
    b.add_argument("--out", required=True)
    b.add_argument("--only", nargs="*")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    build(args) if args.cmd == "build" else compare(args)


if __name__ == "__main__":
    main()
