"""`pybuild cache ls|du|prune|explain`: look into the build cache and trim it."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``500MB``, ``2g``, ``1048576`` -> bytes (binary multiples, as docker does)."""
    from ..errors import BuildError
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise BuildError(f"size {text!r}: use a number with an optional unit, e.g. 500MB or 2GB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    """``24h``, ``90m``, ``7d``, ``1h30m`` -> seconds."""
    from ..errors import BuildError
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise BuildError(f"duration {text!r}: use e.g. 24h, 90m, 7d or 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def human_size(n: float) -> str:
    """Bytes as docker prints them (1.5MB)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


def _ago(ts: float) -> str:
    if not ts:
        return "never"
    s = max(0, time.time() - ts)
    for unit, sec in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= sec:
            return f"{int(s // sec)} {unit} ago"
    return f"{int(s)} seconds ago"


def register(add_command) -> None:
    """Add the `cache` command and its subcommands."""
    p = add_command("cache", "inspect, explain and prune the build cache")
    sub = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    ls = sub.add_parser("ls", parents=[common], help="list cache entries (oldest use first)")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=_ls)

    du = sub.add_parser("du", parents=[common], help="cache disk usage: total and reclaimable")
    du.add_argument("--format", choices=["table", "json"], default="table")
    du.set_defaults(func=_du)

    pr = sub.add_parser("prune", parents=[common], help="remove cache entries, least recently used first")
    pr.add_argument("--all", "-a", action="store_true",
                    help="remove every entry (default: only entries whose layers no image uses)")
    pr.add_argument("--keep-storage", metavar="SIZE", type=parse_size,
                    help="remove entries until the reclaimable size is at most SIZE (e.g. 2GB)")
    pr.add_argument("--filter", dest="filters", action="append", default=[], metavar="until=DURATION",
                    help="only entries last used longer ago than DURATION (e.g. until=24h)")
    pr.set_defaults(func=_prune)

    ex = sub.add_parser("explain", parents=[common],
                        help="say which steps of a build would hit the cache, and why the others miss")
    ex.add_argument("context", metavar="CONTEXT")
    ex.add_argument("-f", "--file", dest="file", metavar="FILE", help="the Dockerfile (default CONTEXT/Dockerfile)")
    ex.add_argument("--build-arg", dest="build_args", action="append", default=[], metavar="KEY[=VALUE]")
    ex.add_argument("--target")
    ex.add_argument("--cache-from", dest="cache_from", action="append", default=[],
                    metavar="type=registry,ref=REPO:TAG|type=local,src=DIR")
    ex.add_argument("--format", choices=["text", "json"], default="text")
    ex.set_defaults(func=_explain)


def _store(args):
    from registry.store import open_store
    return open_store(args.root)


def _ls(args: argparse.Namespace) -> int:
    from ..cache.records import entries
    store = _store(args)
    items = entries(store.root, store)
    if args.format == "json":
        print(json.dumps([e.to_dict() for e in items], indent=2))
        return 0
    rows = [("KEY", "STAGE", "STEP", "SIZE", "CREATED", "LAST USED", "HITS")]
    for e in items:
        r = e.record
        step = r.step.removesuffix(" # buildkit")
        rows.append((r.key[7:19], r.stage, step if len(step) <= 48 else step[:47] + "…",
                     human_size(r.size) if r.layer else "0B", _ago(r.created), _ago(e.last_used if e.hits else 0),
                     str(e.hits)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _du(args: argparse.Namespace) -> int:
    from ..cache.records import disk_usage, entries
    store = _store(args)
    u = disk_usage(entries(store.root, store))
    if args.format == "json":
        print(json.dumps({"entries": u.entries, "total": u.total, "reclaimable": u.reclaimable}))
    else:
        print(f"Entries:      {u.entries}")
        print(f"Total:        {human_size(u.total)}")
        print(f"Reclaimable:  {human_size(u.reclaimable)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..cache.records import prune
    from ..errors import BuildError
    older = None
    for f in args.filters:
        k, eq, v = f.partition("=")
        if not eq or k != "until":
            raise BuildError(f"--filter {f}: only until=DURATION is supported (e.g. until=24h)")
        older = parse_duration(v)
    store = _store(args)
    res = prune(store.root, store, all=args.all, keep_storage=args.keep_storage, older_than=older)
    print(f"Removed {res.removed} cache entries, kept {res.kept}; total reclaimed space: {human_size(res.freed_bytes)}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from ..cache.explain import explain, render
    from .build import _build_args
    result = explain(args.context, args.file, root=args.root, build_args=_build_args(args.build_args),
                     target=args.target, cache_from=args.cache_from)
    if args.format == "json":
        print(json.dumps([e.to_dict() for e in result], indent=2))
    else:
        sys.stdout.write(render(result))
    return 0
