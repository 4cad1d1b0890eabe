"""Local image commands: `images`, `tag`, `history`, `rmi`, `import`, `save`, `load`, `store gc|verify`.

They work on the store at --root ($PYBUILD_ROOT, else $XDG_DATA_HOME/pybuild) and never touch
the network.
"""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from .format import ago_rfc3339 as human_age, human_size, print_table

if TYPE_CHECKING:
    import argparse     # annotations only: push's --platform check runs without it (cli.quick)


def register(add_command) -> None:
    """Add the images, rmi, import and store commands."""
    p = add_command("images", "list the images in the local store")
    p.add_argument("filter", nargs="?", metavar="REPOSITORY[:TAG]",
                   help="only images of this repository (and tag); shell wildcards allowed")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or json (one object per image, full digests)")
    p.add_argument("--tree", action="store_true",
                   help="under each multi-platform image (index), one row per platform it lists "
                        "(as `docker image ls --tree`), marked when the store lacks that platform's image")
    p.set_defaults(func=_images)

    p = add_command("tag", "give a local image another name (like docker tag)")
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(func=_tag)

    p = add_command("history", "show how a local image was made, one line per config history entry")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="do not cut the CREATED BY column")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--platform", help="the OS/ARCH[/VARIANT] image of a multi-platform image (default: this "
                                      "host's, else the one the store holds)")
    p.set_defaults(func=_history)

    p = add_command("save", "write local images to a tar archive (docker-archive, or OCI with --format oci)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", help="the archive to write (default: standard output)")
    p.add_argument("--format", choices=("docker", "oci"), default="docker",
                   help="docker: `docker load` format (default, this host's platform); oci: an OCI "
                        "image layout tar (all stored platforms)")
    p.add_argument("--platform", help="with --format docker: the OS/ARCH[/VARIANT] image of a multi-platform "
                                      "image (default: this host's, else the one the store holds)")
    p.set_defaults(func=_save)

    p = add_command("load", "store the images of a docker-archive or OCI archive tar (like docker load)")
    p.add_argument("-i", "--input", metavar="FILE", default="-", help="the archive (default: standard input)")
    p.set_defaults(func=_load)

    p = add_command("rmi", "remove image tags and the blobs no other image or cache uses")
    p.add_argument("refs", nargs="+", metavar="REF", help="image name, name:tag, name@digest or digest prefix")
    p.add_argument("--no-prune", action="store_true", help="only untag; keep the blobs until `store gc`")
    p.add_argument("--platform", help="remove only this OS/ARCH[/VARIANT] image of a multi-platform image "
                                      "(the index stays tagged, as docker rmi --platform)")
    p.set_defaults(func=_rmi)

    p = add_command("import", "make a one-layer image from a root filesystem directory or a tar (like docker import)")
    p.add_argument("source", metavar="ROOTFS_DIR|TAR", help="a directory, a tar (gzip/zstd/bzip2/xz ok) or - for stdin")
    p.add_argument("name", metavar="NAME[:TAG]", help="the tag to give the image")
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
                        "ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (repeatable)")
    p.add_argument("-m", "--message", help="history comment for the layer")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to record in the config (default: this host)")
    p.set_defaults(func=_import)

    p = add_command("store", "maintain the local store (gc, verify)")
    p.add_argument("action", choices=("gc", "verify"),
                   help="gc: delete unreferenced blobs; verify: check every blob, image, cache record and "
                        "what crashed processes left behind")
    p.add_argument("--repair", action="store_true",
                   help="with verify: remove what is broken and unreferenced, then check again")
    p.set_defaults(func=_store)


def platform_arg(args: argparse.Namespace):
    """The parsed --platform of a command (None when not given); a bad one is a usage error."""
    if not getattr(args, "platform", None):
        return None
    from registry.errors import RegistryError
    from registry.platform import parse_platform
    from ..errors import BuildError
    try:
        return parse_platform(args.platform)
    except RegistryError as exc:
        raise BuildError(f"--platform {args.platform}: {exc}") from None


def _open(args: argparse.Namespace):
    from registry.store import open_store
    return open_store(args.root)


def image_rows(store) -> list[dict]:
    """One dict per stored image (untagged ones as <none> <none>): repository, tag, id (the
    config digest, Docker's IMAGE ID), digest (of the manifest or index), size (compressed bytes
    for this host's platform), created, platform; an index also has ``platforms`` (_platform_rows)."""
    from registry.errors import RegistryError
    from registry.mediatypes import is_index

    rows = []
    for rec in store.list_images():
        ref = rec.reference
        repo = ref.familiar_name if ref else (rec.name or "<none>")
        tag = (ref.tag if ref and ref.tag else "<none>")
        size, created, platform, image_id = 0, None, None, None
        try:
            desc, manifest = store.image_manifest(rec.descriptor.digest, any_present=True)
            image_id = manifest.config.digest
            cfg = store.get_config(manifest.config.digest)
            size = desc.size + manifest.config.size + sum(layer.size for layer in manifest.layers)
            created, platform = cfg.created, str(cfg.platform)
        except RegistryError:
            size = rec.descriptor.size
        row = {"name": rec.name, "repository": repo, "tag": tag, "id": image_id,
               "digest": rec.descriptor.digest,
               "media_type": rec.descriptor.media_type, "size": size, "created": created,
               "platform": platform}
        if is_index(rec.descriptor.media_type):
            row["platforms"] = _platform_rows(store, rec.descriptor.digest)
        rows.append(row)
    return rows


def _platform_rows(store, digest: str) -> list[dict]:
    """The image entries of the index ``digest`` (attestations left out): platform, manifest
    digest, and whether the store holds that image (a one-platform pull keeps only its own)."""
    from registry.errors import RegistryError
    from registry.manifest import Manifest
    out = []
    for d, present in store.index_entries(digest):
        row = {"platform": str(d.platform) if d.platform else None, "digest": d.digest, "present": False,
               "id": None, "size": d.size}
        try:
            m = store.get_manifest(d.digest) if present else None
        except RegistryError:
            m = None
        if isinstance(m, Manifest):
            row.update(present=True, id=m.config.digest,
                       size=d.size + m.config.size + sum(l.size for l in m.layers))
        out.append(row)
    return out


def _matches(row: dict, pattern: str) -> bool:
    """`docker images REPO[:TAG]`: the repository (familiar or full name) and tag, with wildcards."""
    from fnmatch import fnmatchcase
    repo, tag = pattern, "*"
    if ":" in pattern.rpartition("/")[2]:
        repo, _, tag = pattern.rpartition(":")
    full = row["name"].rpartition(":")[0] if ":" in row["name"].rpartition("/")[2] else row["name"]
    names = {row["repository"], full}
    if row["repository"].startswith("docker.io/library/"):
        names.add(row["repository"].removeprefix("docker.io/library/"))
    return any(fnmatchcase(n, repo) for n in names) and fnmatchcase(row["tag"], tag)


def _images(args: argparse.Namespace) -> int:
    rows = image_rows(_open(args))
    if args.filter:
        rows = [r for r in rows if _matches(r, args.filter)]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    table = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for r in rows:
        short = (r["id"] or r["digest"]).removeprefix("sha256:")[:12]
        table.append((r["repository"], r["tag"], short, human_age(r["created"]), human_size(r["size"])))
        for p in r.get("platforms", []) if args.tree else []:
            table.append((f"  \u2514 {p['platform'] or '-'}", "" if p["present"] else "(not in the store)",
                          (p["id"] or p["digest"]).removeprefix("sha256:")[:12], "", human_size(p["size"])))
    print_table(table)
    return 0


def _rmi(args: argparse.Namespace) -> int:
    store = _open(args)
    platform = platform_arg(args)
    for ref in args.refs:
        if platform is not None:
            gone = store.remove_platform(ref, platform)
            if not args.quiet:
                print(f"Removed: the {platform} image {gone.digest} of {ref}")
            continue
        named = store.tag_of(ref) is not None
        entry = store.untag(ref)
        if not args.quiet:
            # As docker rmi: a name is untagged; an image ID (or prefix) deletes the image.
            print(f"Untagged: {ref}" if named else f"Deleted: {store.image_id(entry) or entry.digest}")
    if not args.no_prune:
        from ..cache.records import gc_roots   # blobs of cached build steps stay
        from ..system import collect_layers
        result = store.gc(extra_roots=gc_roots(store.root))
        # Not while a build runs (it may be using them): the next gc or prune collects them.
        layers = collect_layers(store.root, store, wait=False)
        if not args.quiet and result.removed_blobs:
            print(f"Deleted: {result.removed_blobs} blobs ({human_size(result.freed_bytes)})")
        if not args.quiet and layers.removed:
            print(f"Deleted: {layers.removed} extracted layers ({human_size(layers.freed_bytes)})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from registry.imports import import_image
    from registry.platform import parse_platform

    store = _open(args)
    platform = parse_platform(args.platform) if args.platform else None
    container = None
    if args.change:
        from registry.manifest import ImageConfig
        from ..engine.changes import apply_changes
        container = apply_changes(ImageConfig(), args.change).config
    result = import_image(store, args.source, args.name, container=container, platform=platform,
                          message=args.message)
    if not args.quiet:
        print(f"Imported {result.reference.familiar} ({result.layer.size} bytes compressed)", file=sys.stderr)
    print(store.image_id(result.descriptor) or result.descriptor.digest)   # the image ID, as docker import
    return 0


def _store(args: argparse.Namespace) -> int:
    store = _open(args)
    if args.action == "gc":
        from ..cache.records import gc_roots   # blobs of cached build steps stay
        from ..system import collect_layers
        result = store.gc(extra_roots=gc_roots(store.root))
        layers = collect_layers(store.root, store)       # waits for running builds
        if not args.quiet:
            print(f"removed {result.removed_blobs} blobs ({human_size(result.freed_bytes)}), "
                  f"kept {result.kept_blobs}; removed {layers.removed} extracted layers "
                  f"({human_size(layers.freed_bytes)}), kept {layers.kept}")
        return 0
    from ..storecheck import check_root, repair_root
    if args.repair:
        repaired = repair_root(store.root)
        if not args.quiet:
            for what in repaired.removed:
                print(f"removed: {what}")
        problems = repaired.remaining
    else:
        problems = check_root(store.root)
    for p in problems:
        print(f"{p.kind}: {p.message}")
    if not problems and not args.quiet:
        print(f"store at {store.root}: all blobs, images and cache records are intact")
    return 1 if problems else 0


def _tag(args: argparse.Namespace) -> int:
    store = _open(args)
    store.tag(args.target, store.resolve(args.source))
    return 0


def _history(args: argparse.Namespace) -> int:
    store = _open(args)
    _, manifest = store.image_manifest(args.image, platform_arg(args), any_present=True)
    cfg = store.read_blob(manifest.config.digest)
    history = json.loads(cfg).get("history") or []
    layers = list(manifest.layers)
    rows = []
    # Entries with empty_layer do not own a layer; the others take the manifest's layers in order.
    for h in history:
        size = 0
        if not h.get("empty_layer") and layers:
            size = layers.pop(0).size
        rows.append({"created": h.get("created"), "created_by": h.get("created_by", ""), "size": size,
                     "comment": h.get("comment", "")})
    rows.reverse()                          # newest first, as docker prints it
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    table = [("CREATED", "CREATED BY", "SIZE", "COMMENT")]
    for r in rows:
        by = " ".join(r["created_by"].split()) if not args.no_trunc else r["created_by"]
        if not args.no_trunc and len(by) > 45:
            by = by[:44] + "…"
        table.append((human_age(r["created"]), by, human_size(r["size"]), r["comment"]))
    print_table(table)
    if not args.quiet:
        print("(SIZE: compressed layer size)", file=sys.stderr)
    return 0


def _save(args: argparse.Namespace) -> int:
    from registry.archive import save_docker_archive, save_oci_archive, write_archive
    from ..errors import BuildError
    store = _open(args)
    for name in args.images:
        store.resolve(name)                  # a missing image fails before anything is written
    if args.format == "oci":
        if args.platform:
            raise BuildError("save: --platform is for --format docker; an OCI archive holds every platform "
                             "the store has")
        writer = save_oci_archive
    else:
        platform = platform_arg(args)

        def writer(store, names, out):
            save_docker_archive(store, names, out, platform=platform)
    if args.output in (None, "-"):
        if sys.stdout.isatty():
            raise BuildError("save: refusing to write an archive to a terminal; use -o FILE or redirect")
        out = sys.stdout.buffer
        writer(store, args.images, out)
        out.flush()
        return 0
    write_archive(args.output, lambda f: writer(store, args.images, f))
    if not args.quiet:
        print(f"Saved {', '.join(args.images)} to {args.output} ({args.format} archive)", file=sys.stderr)
    return 0


def _load(args: argparse.Namespace) -> int:
    from registry.archive import load_archive
    store = _open(args)
    if args.input == "-":
        import shutil
        import tempfile
        # A tar is read with random access (manifest.json comes last in a docker-archive): spill
        # standard input into the store's filesystem first.
        with tempfile.NamedTemporaryFile(dir=store.root, prefix=".load-") as tmp:
            shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
            tmp.flush()
            result = load_archive(store, tmp.name)
    else:
        result = load_archive(store, args.input)
    for tag in result.tags:
        print(f"Loaded image: {tag}")
    if not result.tags:
        # As docker load: an image without a name is kept (listed as <none>) and named by its ID.
        for digest in result.digests:
            desc = store.descriptor_of(digest)
            store.add_untagged(desc)
            iid = store.image_id(desc) or digest
            print(f"Loaded image ID: {iid} (untagged: name it with `pybuild tag {iid[7:19]} NAME`)")
    return 0
