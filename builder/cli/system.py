"""`pybuild system df|prune`: every byte of the store root accounted for, and reclaimed; `pybuild
unshare`: a command inside rootless pybuild's user namespace."""
from __future__ import annotations

import argparse
import json
import sys

from .format import ago, ago_rfc3339, human_size, print_table, truncate


def register(add_command) -> None:
    """Add the `system` command and its subcommands."""
    from . import command_group
    sub, common = command_group(add_command, "system", "show and reclaim the disk space of the store root")

    df = sub.add_parser("df", parents=[common],
                        help="disk usage of the store root by type (the sizes add up to `du -sb ROOT`)")
    df.add_argument("-v", "--verbose", action="store_true", help="list each image, container, layer, cache mount")
    df.add_argument("--format", choices=["table", "json"], default="table")
    df.set_defaults(func=_df)

    pr = sub.add_parser("prune", parents=[common],
                        help="remove stopped containers, dangling images, build cache, unreferenced "
                             "extracted layers and leftovers")
    pr.add_argument("-a", "--all", action="store_true",
                    help="remove every image no container uses (not just dangling ones), all build cache "
                         "and cache mounts")
    pr.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    pr.add_argument("--volumes", action="store_true", help="also remove cache mounts (RUN --mount=type=cache)")
    pr.set_defaults(func=_prune)

    un = add_command("unshare", "run a command in pybuild's user namespace (as root: as it is), like "
                                "`buildah unshare`: where rootless files owned by subordinate ids can be "
                                "read and removed")
    un.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]",
                    help="what to run (default: $SHELL, else /bin/sh)")
    un.set_defaults(func=_unshare)


def _unshare(args: argparse.Namespace) -> int:
    import os
    from ..errors import BuildError
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    cmd = cmd or [os.environ.get("SHELL") or "/bin/sh"]
    # The CLI entered the namespace (and checked the store's mode) before this runs.
    os.environ["PYBUILD_UNSHARE"] = "1"
    sys.stdout.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        raise BuildError(f"unshare: cannot run {cmd[0]!r}: {exc.strerror}") from None


def _df(args: argparse.Namespace) -> int:
    from ..system import CATEGORIES, disk_usage
    from registry.store import open_store
    store = open_store(args.root)
    u = disk_usage(store.root, store)
    if args.format == "json":
        print(json.dumps(u.to_dict(), indent=2))
        return 0
    rows = [("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE")]
    for c in CATEGORIES:
        size, rec = u.sizes[c], u.reclaimable[c]
        pct = f" ({100 * rec // size}%)" if size else ""
        rows.append((c, str(u.counts[c]) if c not in ("Temporary", "Other") else "",
                     str(u.active[c]) if c not in ("Build cache", "Cache mounts", "Temporary", "Other") else "",
                     human_size(size), human_size(rec) + pct))
    rows.append(("Total", "", "", human_size(u.total), human_size(sum(u.reclaimable.values()))))
    print_table(rows)
    if not args.verbose:
        return 0
    items = {c: [i for i in u.items if i.category == c] for c in CATEGORIES}
    print("\nImages space usage:\n")
    print_table([("REPOSITORY", "TAG", "DIGEST", "CREATED", "SIZE", "CONTAINERS")] +
                [(i.detail["repository"], i.detail["tag"], i.detail["digest"][7:19],
                  ago_rfc3339(i.detail["created"]), human_size(i.size), str(i.detail["containers"]))
                 for i in items["Images"]])
    print("\nContainers space usage:\n")
    print_table([("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "SIZE", "NAMES")] +
                [(i.detail["id"][:12], i.detail["image"], truncate(json.dumps(i.detail["command"]), 24),
                  ago_rfc3339(i.detail["created"]), i.detail["status"], human_size(i.size), i.name)
                 for i in items["Containers"]])
    print(f"\nBuild cache usage: {human_size(u.sizes['Build cache'])} in {u.counts['Build cache']} "
          "entries (`pybuild cache ls` lists them)")
    print("\nExtracted layers:\n")
    print_table([("LAYER", "SIZE", "REFERENCED", "MOUNTED")] +
                [(i.name[:12], human_size(i.size), "yes" if i.detail["referenced"] else "no",
                  "yes" if i.active else "no") for i in sorted(items["Extracted layers"], key=lambda i: -i.size)])
    print("\nCache mounts:\n")
    print_table([("CACHE ID", "SIZE", "LAST USED")] +
                [(i.name[:12], human_size(i.size), ago(i.detail["last_used"])) for i in items["Cache mounts"]])
    if items["Snapshots"]:
        print("\nSnapshots no container owns:\n")
        print_table([("SNAPSHOT", "SIZE", "IN USE")] +
                    [(i.name, human_size(i.size), "maybe" if i.active else "no") for i in items["Snapshots"]])
    print(f"\nTemporary: {human_size(u.sizes['Temporary'])}; other (store metadata, partial and "
          f"unreferenced blobs): {human_size(u.sizes['Other'])}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..system import prune
    if not args.force:
        what = ["all stopped containers",
                "all images without at least one container associated to them" if args.all
                else "all dangling images",
                "all build cache" if args.all else "unused build cache",
                "extracted layers no image, cache entry or container uses"]
        if args.all or args.volumes:
            what.append("all cache mounts (RUN --mount=type=cache)")
        print("WARNING! This will remove:\n" + "".join(f"  - {w}\n" for w in what), file=sys.stderr)
        print("Are you sure you want to continue? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing removed.", file=sys.stderr)
            return 1
    from registry.store import open_store
    store = open_store(args.root)
    rep = prune(store.root, store, all=args.all, volumes=args.volumes)
    if not args.quiet:
        if rep.containers:
            print("Deleted Containers:\n" + "".join(f"{c}\n" for c in rep.containers))
        if rep.images:
            print("Deleted Images:\n" + "".join(f"{i}\n" for i in rep.images))
        parts = [f"{rep.cache_entries} build cache entries", f"{rep.cache_mounts} cache mounts",
                 f"{rep.layers} extracted layers", f"{rep.blobs} blobs", f"{len(rep.leftovers)} leftovers"]
        print("Deleted: " + ", ".join(parts))
        for s in rep.skipped:
            print(f"skipped {s}", file=sys.stderr)
    print(f"Total reclaimed space: {human_size(rep.reclaimed)}")
    return 0
