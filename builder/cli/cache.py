"""`pybuild cache ls|du|prune|explain`: look into the build cache and trim it."""
from __future__ import annotations

import argparse
import json
import sys

from .format import ago as _ago, human_size, parse_duration, parse_size, print_table, truncate

__all__ = ["parse_duration", "parse_size", "register"]


def register(add_command) -> None:
    """Add the `cache` command and its subcommands."""
    from . import command_group
    sub, common = command_group(add_command, "cache", "inspect, explain and prune the build cache")

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


def _ls(args: argparse.Namespace) -> int:
    from ..cache.records import entries
    from registry.store import open_store
    store = open_store(args.root)
    items = entries(store.root, store)
    if args.format == "json":
        print(json.dumps([e.to_dict() for e in items], indent=2))
        return 0
    rows = [("KEY", "STAGE", "STEP", "SIZE", "CREATED", "LAST USED", "HITS")]
    for e in items:
        r = e.record
        step = r.step.removesuffix(" # buildkit")
        rows.append((r.key[7:19], r.stage, truncate(step, 48),
                     human_size(r.size) if r.layer else "0B", _ago(r.created), _ago(e.last_used if e.hits else 0),
                     str(e.hits)))
    print_table(rows)
    return 0


def _du(args: argparse.Namespace) -> int:
    from ..cache.records import disk_usage, entries
    from registry.store import open_store
    store = open_store(args.root)
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
    from registry.store import open_store
    store = open_store(args.root)
    res = prune(store.root, store, all=args.all, keep_storage=args.keep_storage, older_than=older)
    from ..system import collect_layers
    layers = collect_layers(store.root, store)     # extracted forms of the layers just dropped
    print(f"Removed {res.removed} cache entries, kept {res.kept}"
          + (f", {layers.removed} extracted layers" if layers.removed else "")
          + f"; total reclaimed space: {human_size(res.freed_bytes + layers.freed_bytes)}")
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
