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
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.fixtures.conformance_cases import (  # noqa: E402  (the helper lives with the tests)
    ConformanceSetupError, data_dir, environment, load_cases)


def build(args: argparse.Namespace) -> None:
    data = data_dir()
    if data is None:
        sys.exit("conformance data not found: set PYBUILD_CONFORMANCE_DIR")
    cases = load_cases(data)
    if args.only:
        cases = [c for c in cases if c["slug"] in args.only]
    tree = Path(args.tree).resolve()
    work = Path(tempfile.mkdtemp(prefix="pybuild-conformance-"))
    results: dict[str, dict] = {}
    try:
        with environment(tree, data, work) as env:
            for case in cases:
                slug = case["slug"]
                r = env.build(case)
                r.pop("stderr", None)
                results[slug] = r
                print(f"{slug}: {'ok' if r['ok'] else 'FAIL ' + r['error'][:120]}", flush=True)
    except ConformanceSetupError as e:
        sys.exit(str(e))
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
