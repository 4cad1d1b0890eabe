"""Commands that talk to registries: pull, push, copy, tags, inspect, delete, catalog (`manifest`
is in imagetools.py, beside the index tools).

Progress goes to stderr (bars on a terminal, lines otherwise, nothing with -q); results go to
stdout so that scripts can use them: pull/push/copy print the reference with its digest.
"""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse     # annotations only: `pull` and `push` run without it (builder.cli.quick)


def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="allow plain HTTP or an unverified certificate for HOST (repeatable)")


def register(add_command) -> None:
    """Add the registry commands."""
    parsers = []

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = add_command(name, help)
        p.set_defaults(func=func)
        parsers.append(p)
        return p

    p = command("pull", "pull an image from a registry into the local store", _pull)
    p.add_argument("ref", metavar="REF", help="image reference, e.g. busybox:latest or localhost:5000/app@sha256:...")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this host)")
    p.add_argument("--all-platforms", action="store_true", help="pull the index and every platform's image")

    p = command("push", "push an image from the local store to a registry", _push)
    p.add_argument("name", metavar="NAME[:TAG]", help="image in the local store")
    p.add_argument("dest", metavar="DEST_REF", nargs="?", help="where to push (default: NAME itself)")
    p.add_argument("--platform", help="push only this OS/ARCH[/VARIANT] image of a multi-platform image "
                                      "(default: the whole index, when the store holds all of it)")

    p = command("copy", "copy an image from one registry or repository to another, streamed", _copy)
    p.add_argument("src", metavar="SRC_REF")
    p.add_argument("dest", metavar="DST_REF")
    p.add_argument("--all-platforms", action="store_true", help="copy the index and every platform's image")
    p.add_argument("--all", action="store_true",
                   help="everything: every platform, and the signatures and attestations attached to them "
                        "(referrers and cosign's sha256-<digest>.sig/.att/.sbom tags)")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to copy from a multi-platform image (default: this host)")

    p = command("tags", "list the tags of a repository", _tags)
    p.add_argument("repo", metavar="REPO", help="repository, e.g. localhost:5000/app or library/busybox")
    p.add_argument("-n", "--page-size", type=int, help="tags per request (the registry may cap it)")

    p = command("inspect", "describe a container, or an image in the local store, or else in its registry",
                _inspect)
    p.add_argument("ref", metavar="REF")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to describe from a multi-platform image")
    p.add_argument("--remote", action="store_true", help="ask the registry even if the store has the image")

    p = command("delete", "delete a manifest (by tag or digest) from a registry", _delete)
    p.add_argument("ref", metavar="REF")

    p = command("catalog", "list the repositories of a registry", _catalog)
    p.add_argument("registry", metavar="REGISTRY", help="registry host, e.g. localhost:5000")
    p.add_argument("-n", "--page-size", type=int, help="repositories per request")

    for p in parsers:           # last, as in every command's help
        _registry_options(p)


def _client(args: argparse.Namespace) -> Any:
    from registry.client import ClientOptions, RegistryClient
    return RegistryClient(ClientOptions(insecure_registries=tuple(args.insecure_registry)))


def _progress(args: argparse.Namespace) -> Any:
    from registry.progress import make_progress
    return make_progress(quiet=args.quiet)


def _pull(args: argparse.Namespace) -> int:
    from registry.store import open_store
    from registry.transfer import pull
    store = open_store(args.root)
    progress = _progress(args)
    with _client(args) as client:
        try:
            res = pull(client, args.ref, store, platform=args.platform, all_platforms=args.all_platforms,
                       progress=progress)
        finally:
            progress.close()
    if not args.quiet:
        one = len(res.images) == 1 and res.images[0] != res.digest     # one platform of an index
        picked = f" (platform {res.platforms[0]}: {res.images[0]})" if one else ""
        print(f"Digest: {res.source_digest}{picked}; {res.blobs_transferred} blobs downloaded, "
              f"{res.blobs_skipped} already present", file=sys.stderr)
    print(res.reference)
    return 0


def _push(args: argparse.Namespace) -> int:
    from registry.store import open_store
    from registry.transfer import push
    from .images import platform_arg
    store = open_store(args.root)
    progress = _progress(args)
    with _client(args) as client:
        try:
            res = push(client, store, args.name, args.dest, platform=platform_arg(args),
                       whole=getattr(args, "whole", False), progress=progress)
        finally:
            progress.close()
    print(f"{res.reference}@{res.digest}")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from registry.transfer import copy
    progress = _progress(args)
    with _client(args) as client:
        try:
            res = copy(client, args.src, args.dest, all_platforms=args.all_platforms or args.all,
                       platform=args.platform, progress=progress, attachments=args.all)
        finally:
            progress.close()
    print(f"{res.reference}@{res.digest}")
    return 0


def _repo(text: str) -> Any:
    from registry.reference import parse_reference
    return parse_reference(text, default_tag=None)


def _tags(args: argparse.Namespace) -> int:
    r = _repo(args.repo)
    with _client(args) as client:
        for tag in client.repository(r.registry, r.repository).tags(page_size=args.page_size):
            print(tag)
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from registry.credentials import canonical_host
    with _client(args) as client:
        for name in client.catalog(canonical_host(args.registry), page_size=args.page_size):
            print(name)
    return 0


def _delete(args: argparse.Namespace) -> int:
    from registry.reference import parse_reference
    r = parse_reference(args.ref)
    with _client(args) as client:
        digest = client.repository(r.registry, r.repository).delete_manifest(r.identifier)
    print(f"deleted {r.name}@{digest}")
    return 0


# ---- inspect ---------------------------------------------------------------------------------

def _inspect(args: argparse.Namespace) -> int:
    from registry.errors import NotFoundError
    info = None
    if not args.remote and not args.platform:
        from builder.containers.lifecycle import find_exact, inspect_doc
        from registry.store import open_store
        c = find_exact(open_store(args.root).root, args.ref)
        if c is not None:
            print(json.dumps(inspect_doc(c), indent=2))
            return 0
    if not args.remote:
        from registry.store import open_store
        try:
            info = _inspect_local(open_store(args.root), args.ref, args.platform)
        except NotFoundError:
            info = None
    if info is None:
        with _client(args) as client:
            info = _inspect_remote(client, args.ref, args.platform)
    if args.format == "json":
        print(json.dumps(info, indent=2))
    else:
        _print_summary(info)
    return 0


def _image_info(name: str, source: str, digest: str, media_type: str, manifest: Any, config: Any,
                index: dict | None) -> dict:
    """One JSON-able description of an image (manifest + config), optionally with its index."""
    cfg = config.to_dict()
    c = cfg.get("config") or {}
    return {
        "Id": manifest.config.digest, "Name": name, "Source": source, "Digest": digest, "MediaType": media_type,
        **({"Index": index} if index else {}),
        "Platform": str(config.platform), "Created": cfg.get("created"), "Author": cfg.get("author"),
        "Config": {k: c.get(k) for k in ("User", "Env", "Entrypoint", "Cmd", "WorkingDir", "ExposedPorts",
                                         "Volumes", "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell")
                   if c.get(k)},
        "ConfigDigest": manifest.config.digest,
        "Layers": [{"Digest": layer.digest, "Size": layer.size, "MediaType": layer.media_type}
                   for layer in manifest.layers],
        "Size": manifest.config.size + sum(layer.size for layer in manifest.layers),
        "History": [h.get("created_by", "") for h in cfg.get("history") or []],
    }


def _index_info(digest: str, media_type: str, index: Any, store: Any = None) -> dict:
    """An index's entries; from the store, each says whether the store holds it (`Present`)."""
    return {"Digest": digest, "MediaType": media_type,
            "Manifests": [{"Digest": d.digest, "MediaType": d.media_type, "Size": d.size,
                           "Platform": str(d.platform) if d.platform else None,
                           **({"Present": store.has_blob(d.digest)} if store is not None else {})}
                          for d in index.manifests]}


def _inspect_local(store: Any, ref: str, platform: str | None) -> dict:
    from registry.manifest import Index
    from registry.platform import parse_platform
    tagged = store.resolve(ref)
    doc = store.get_manifest(tagged.digest)
    index = _index_info(tagged.digest, tagged.media_type, doc, store) if isinstance(doc, Index) else None
    want = parse_platform(platform) if platform else None
    desc, manifest = store.image_manifest(ref, want, any_present=True)
    config = store.get_config(manifest.config.digest)
    return _image_info(ref, "local", desc.digest, desc.media_type or manifest.media_type, manifest, config, index)


def _inspect_remote(client: Any, ref: str, platform: str | None) -> dict:
    from registry.manifest import ImageConfig, Index, parse_manifest
    from registry.platform import host_platform, parse_platform
    from registry.reference import parse_reference
    r = parse_reference(ref)
    repo = client.repository(r.registry, r.repository)
    m = repo.get_manifest(r.identifier)
    doc = parse_manifest(m.data, m.media_type, where=f"manifest {r}")
    index = None
    digest, media_type = m.digest, m.media_type
    if isinstance(doc, Index):
        index = _index_info(m.digest, m.media_type, doc)
        child = doc.select(parse_platform(platform) if platform else host_platform(), where=str(r))
        cm = repo.get_manifest(child.digest)
        doc = parse_manifest(cm.data, cm.media_type, where=f"manifest {r}@{child.digest}")
        digest, media_type = cm.digest, cm.media_type
    config = ImageConfig.from_bytes(repo.fetch_blob(doc.config.digest), where=f"config of {r}")
    return _image_info(str(r), "remote", digest, media_type, doc, config, index)


def _print_summary(info: dict) -> None:
    from .format import human_size
    rows = [("Name", info["Name"]), ("Source", info["Source"]), ("Digest", info["Digest"]),
            ("MediaType", info["MediaType"]), ("Platform", info["Platform"]),
            ("Created", info.get("Created") or "-"), ("Size", human_size(info["Size"]))]
    if info.get("Index"):
        idx = info["Index"]
        rows.insert(2, ("Index", f"{idx['Digest']} ({len(idx['Manifests'])} manifests: " + ", ".join(
            (m["Platform"] or "?") + (" (not in the store)" if m.get("Present") is False else "")
            for m in idx["Manifests"]) + ")"))
    for key, value in info["Config"].items():
        rows.append((key, json.dumps(value) if not isinstance(value, str) else value))
    width = max(len(k) for k, _ in rows) + 1
    for k, v in rows:
        print(f"{k + ':':<{width}} {v}")
    print(f"Layers ({len(info['Layers'])}):")
    for layer in info["Layers"]:
        print(f"  {layer['Digest']}  {human_size(layer['Size']):>9}  {layer['MediaType']}")
