"""`pybuild imagetools create|inspect` and `pybuild manifest create|inspect|add|push`: merge images
and indexes into one index, and describe what a reference names (the second half of a build
fanned out over runners: each pushes its platform by digest, then one `manifest create -t REF D1
D2`, or `imagetools create`, joins them).

    pybuild imagetools create -t reg/app:1 [-t reg2/app:1] reg/app@sha256:... reg/app:arm64 ...
    pybuild imagetools inspect reg/app:1 [--raw]
    pybuild manifest create -t reg/app:1 SRC...     # the same as imagetools create
    pybuild manifest inspect reg/app:1              # the JSON (docker/podman manifest inspect)
    pybuild manifest create LIST [IMAGE...]; manifest add LIST IMAGE...; manifest push LIST [DEST]
                                                    # podman's spelling: a list in the local store

Without -t, `manifest create` is podman's: LIST is an index in the local store made of local
images (each resolved in the store), `manifest add` extends it, `manifest push` pushes it (every
platform, as `pybuild push` pushes an index). `pybuild manifest REF` (no subcommand) prints REF's
manifest exactly as its registry serves it, as it did before the subcommands.

`create` reads each source's manifest (an image: its platform comes from its config; an index:
its entries are taken as they are), writes an OCI index (a Docker manifest list when every entry
is a Docker schema2 manifest) and pushes it to every -t. Sources held by another repository or
registry than a target are copied there first (registry.copier: blobs mounted within one
registry, streamed across registries), since a registry must hold every manifest an index lists.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any


def register(add_command) -> None:
    """Add `imagetools` and `manifest` with their subcommands."""
    p = add_command("imagetools", "create or inspect multi-platform images in a registry "
                                  "(like `docker buildx imagetools`)")
    sub = p.add_subparsers(dest="imagetools_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _usage(p, "imagetools", "create or inspect"))
    c = sub.add_parser("create", help="merge images and indexes in a registry into one index and push it")
    c.add_argument("sources", metavar="SRC", nargs="*",
                   help="REPO@DIGEST or REPO:TAG of an image or index (a bare digest: in the first -t's repository)")
    c.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="REF", required=True,
                   help="where to push the index (repeatable)")
    _create_options(c)
    c.set_defaults(func=_create)
    i = sub.add_parser("inspect", help="print an image's or index's manifest and its platforms")
    i.add_argument("ref", metavar="REF")
    i.add_argument("--raw", action="store_true", help="the manifest or index exactly as the registry serves it")
    i.set_defaults(func=_inspect, remote=True)
    for s in (c, i):
        _common(s)

    m = add_command("manifest", "create, inspect and push multi-platform images (indexes); "
                                "`manifest REF` prints REF's manifest as its registry serves it")
    msub = m.add_subparsers(dest="manifest_command", metavar="SUBCOMMAND", action=_SubcommandOrRef)
    m.set_defaults(func=lambda args: _usage(m, "manifest", "create, inspect, add or push (or give a REF)"))
    c = msub.add_parser("create", help="merge images into one index: pushed with -t (as imagetools create), "
                                       "else a list LIST in the local store (as podman)")
    c.add_argument("sources", metavar="[LIST] SRC", nargs="*",
                   help="with -t: REPO@DIGEST or REPO:TAG in a registry; without: LIST, then local images")
    c.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="REF",
                   help="push the index to REF (repeatable); without -t the index stays local as LIST")
    c.add_argument("--amend", action="store_true", help="LIST exists: add to it (podman)")
    _create_options(c)
    c.set_defaults(func=_manifest_create)
    i = msub.add_parser("inspect", help="print a manifest or index as JSON: LIST in the local store, "
                                        "else the registry's bytes")
    i.add_argument("ref", metavar="REF")
    i.add_argument("--remote", action="store_true", help="ask the registry even if the store has REF")
    i.set_defaults(func=_inspect, raw=True)
    a = msub.add_parser("add", help="add local images (or an index's entries) to LIST in the local store")
    a.add_argument("list", metavar="LIST")
    a.add_argument("sources", metavar="IMAGE", nargs="+")
    _create_options(a)
    a.set_defaults(func=_manifest_add, amend=True, tags=[])
    u = msub.add_parser("push", help="push LIST (the index and every image it lists) to a registry")
    u.add_argument("name", metavar="LIST")
    u.add_argument("dest", metavar="DEST_REF", nargs="?", help="where to push (default: LIST itself)")
    u.add_argument("--all", action="store_true", help="accepted for podman's spelling: every image is pushed")
    u.set_defaults(func=_manifest_push)
    for s in (c, i, a, u):
        _common(s)


def _create_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                   help="annotation of the index (`index:` prefix accepted; repeatable)")
    c.add_argument("--dry-run", action="store_true", help="print the index JSON, store and push nothing")


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="print only results and errors")
    s.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="allow plain HTTP or an unverified certificate for HOST (repeatable)")


def _ref_like(word: str) -> bool:
    return any(c in word for c in "/:@.")


class _Subcommands(dict):
    """The subcommand table of `manifest`, which also admits a reference (see _SubcommandOrRef)."""

    def __contains__(self, word: object) -> bool:
        return super().__contains__(word) or (isinstance(word, str) and _ref_like(word))


class _SubcommandOrRef(argparse._SubParsersAction):
    """`pybuild manifest REF` without a subcommand is `manifest inspect --remote REF` (what the
    command did before it had subcommands). Only a word that looks like a reference (it has a
    ``/``, ``:``, ``@`` or ``.``) is taken so: a mistyped subcommand still gets argparse's error."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._name_parser_map = self.choices = _Subcommands()

    def __call__(self, parser, namespace, values, option_string=None):
        if values and not dict.__contains__(self._name_parser_map, values[0]):
            values = ["inspect", "--remote", *values]
        super().__call__(parser, namespace, values, option_string)


def _usage(p: argparse.ArgumentParser, name: str, choices: str) -> int:
    p.print_usage(sys.stderr)
    print(f"pybuild {name}: name a subcommand: {choices}", file=sys.stderr)
    return 2


def _client(args: argparse.Namespace) -> Any:
    from registry.client import ClientOptions, RegistryClient
    return RegistryClient(ClientOptions(insecure_registries=tuple(getattr(args, "insecure_registry", []))))


# ---- create -----------------------------------------------------------------------------------

@dataclass
class Source:
    """One SRC argument, read: its reference, endpoint, top manifest and the index entries it gives."""
    ref: Any                 # registry.reference.Reference
    endpoint: Any            # registry.endpoints.RemoteEndpoint
    top: Any                 # registry.image.RawManifest
    entries: list            # [Descriptor]


def _parse_source(text: str, first_target: Any) -> Any:
    from registry.reference import parse_reference
    if text.startswith("sha256:"):
        text = f"{first_target.name}@{text}"
    r = parse_reference(text)
    return r


def read_source(ref: Any, endpoint: Any, key: str) -> Source:
    """Read one source's manifest from ``endpoint`` (a registry repository, or the local store)
    by ``key``; an image's entry gets the platform of its config."""
    from registry.errors import RegistryError
    from registry.manifest import Descriptor, Index
    top = endpoint.read_manifest(key)
    if isinstance(top.doc, Index):
        entries = list(top.doc.manifests)
    else:
        config = endpoint.read_config(top.doc.config.digest)
        if not config.architecture or not config.os:
            raise RegistryError(f"{ref}: its config names no os/architecture; an index entry needs a platform")
        entries = [Descriptor(top.media_type, top.digest, len(top.data), platform=config.platform)]
    return Source(ref, endpoint, top, entries)


def read_sources(client: Any, refs: list[Any]) -> list[Source]:
    """Read every source's manifest from its registry (see read_source)."""
    from registry.endpoints import RemoteEndpoint
    return [read_source(r, RemoteEndpoint(client.repository(r.registry, r.repository)), r.identifier)
            for r in refs]


def merge_index(sources: list[Source], annotations: dict[str, str] | None = None) -> Any:
    """One index of every source's entries (each digest once, platforms unique; the images, then
    the attestation manifests); a Docker manifest list when every entry is a Docker schema2
    manifest, else an OCI index."""
    from registry import mediatypes as mt
    from registry.errors import RegistryError
    from registry.manifest import Index, is_attestation
    from registry.platform import _DEFAULT_VARIANT
    entries, seen, platforms = [], set(), {}
    for s in sources:
        for d in s.entries:
            if d.digest in seen:
                continue
            seen.add(d.digest)
            if d.platform is not None and not is_attestation(d):
                n = d.platform.normalized()      # linux/arm64 and linux/arm64/v8 are one platform
                key = (n.os, n.architecture, n.variant or _DEFAULT_VARIANT.get(n.architecture), n.os_version)
                if key in platforms:
                    raise RegistryError(f"platform {d.platform} is given twice: by {platforms[key]} and by "
                                        f"{s.ref.name}@{d.digest}; an index holds one image per platform")
                platforms[key] = f"{s.ref.name}@{d.digest}"
            entries.append(d)
    if not entries:
        raise RegistryError("no source given: name at least one image or index")
    # Runnable images first, attestations after them all (BuildKit's attestation storage), so a
    # merge of per-runner indexes has the shape of a one-machine multi-platform build.
    entries = [d for d in entries if not is_attestation(d)] + [d for d in entries if is_attestation(d)]
    docker = all(d.media_type == mt.DOCKER_MANIFEST for d in entries)
    if docker and annotations:
        docker = False          # a Docker manifest list has no annotations
    return Index(manifests=entries, media_type=mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX,
                 annotations=dict(annotations or {}))


def push_index(client: Any, index: Any, sources: list[Source], targets: list[Any],
               progress: Any = None) -> list[tuple[str, str]]:
    """Copy into each target's repository the sources it lacks (by digest), then push the index
    under the target's tag; returns (reference, digest) per target."""
    from registry.copier import plan_copy, run_copy
    from registry.digest import digest_bytes
    from registry.endpoints import RemoteEndpoint
    from registry.errors import RegistryError
    data = index.to_bytes()
    want = digest_bytes(data)
    plans = {}
    out = []
    for t in targets:
        dst = RemoteEndpoint(client.repository(t.registry, t.repository))
        for s in sources:
            if (s.ref.registry, s.ref.repository) == (t.registry, t.repository):
                continue
            key = (s.ref.registry, s.ref.repository, s.top.digest)
            if key not in plans:
                plans[key] = plan_copy(s.endpoint, s.top.digest, all_platforms=True, where=str(s.ref))
            run_copy(plans[key], s.endpoint, dst, tag=None, progress=progress)
        digest = dst.repo.put_manifest(t.tag or want, data, index.media_type)
        if digest != want:
            raise RegistryError(f"{t.name}: the registry stored the index as {digest}, not {want}")
        out.append((str(t), digest))
    return out


class UsageError(ValueError):
    """A wrong argument: printed, exit code 2."""


def _annotations(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if key.startswith("index:"):
            key = key[len("index:"):]
        if not sep or not key:
            raise UsageError(f"--annotation {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _create(args: argparse.Namespace) -> int:
    try:
        return _create_checked(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _create_checked(args: argparse.Namespace) -> int:
    from registry.progress import make_progress
    from registry.reference import parse_reference
    targets = [parse_reference(t) for t in args.tags]
    for t in targets:
        if t.digest:
            raise UsageError(f"-t {t}: a target names a tag, not a digest")
    if not args.sources:
        raise UsageError("imagetools create: name at least one SRC (REPO@DIGEST or REPO:TAG)")
    refs = [_parse_source(s, targets[0]) for s in args.sources]
    annotations = _annotations(args.annotation)
    with _client(args) as client:
        sources = read_sources(client, refs)
        index = merge_index(sources, annotations)
        if args.dry_run:
            print(json.dumps(index.to_dict(), indent=2))
            return 0
        progress = make_progress(quiet=getattr(args, "quiet", False))
        try:
            pushed = push_index(client, index, sources, targets, progress=progress)
        finally:
            progress.close()
    for ref, digest in pushed:
        print(f"{ref}@{digest}")
    return 0


# ---- manifest create|add|push (podman's local lists) ----------------------------------------------

def _manifest_create(args: argparse.Namespace) -> int:
    if args.tags:
        if args.amend:
            print("error: --amend is for a local LIST (without -t)", file=sys.stderr)
            return 2
        return _create(args)
    if not args.sources:
        print("error: manifest create: name LIST (a local index, as podman), or -t REF SRC... to push",
              file=sys.stderr)
        return 2
    args.list, args.sources = args.sources[0], args.sources[1:]
    return _local_list(args)


def _manifest_add(args: argparse.Namespace) -> int:
    return _local_list(args)


def _local_list(args: argparse.Namespace) -> int:
    """Create (or with ``amend`` extend) the index LIST in the local store from local images."""
    from registry.endpoints import StoreEndpoint
    from registry.errors import NotFoundError
    from registry.manifest import Index
    from registry.reference import parse_reference
    from registry.store import open_store
    try:
        annotations = _annotations(args.annotation)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = parse_reference(args.list)
    store = open_store(args.root)
    ep = StoreEndpoint(store)
    sources = []
    try:
        existing = store.resolve(name)
    except NotFoundError:
        existing = None
    if existing is not None:
        if not args.amend:
            print(f"error: {args.list} already names an image in the local store: `pybuild manifest add "
                  f"{args.list} IMAGE`, or create --amend", file=sys.stderr)
            return 1
        first = read_source(name, ep, str(name))
        if not isinstance(first.top.doc, Index):
            print(f"error: {args.list} is an image, not a list (index): name a new LIST", file=sys.stderr)
            return 1
        annotations = {**first.top.doc.annotations, **annotations}
        sources.append(first)
    elif args.func is _manifest_add:
        print(f"error: no list {args.list} in the local store: `pybuild manifest create {args.list} IMAGE...`",
              file=sys.stderr)
        return 1
    for text in args.sources:
        try:
            sources.append(read_source(parse_reference(text), ep, text))
        except NotFoundError:
            print(f"error: {text}: not in the local store at {store.root}: pull it (`pybuild pull {text}`), "
                  "or give -t REF to merge images that are in a registry", file=sys.stderr)
            return 1
    if sources:
        index = merge_index(sources, annotations)
    else:        # podman: an empty list, filled by `manifest add`
        from registry import mediatypes as mt
        index = Index(manifests=[], media_type=mt.OCI_INDEX, annotations=annotations)
    if args.dry_run:
        print(json.dumps(index.to_dict(), indent=2))
        return 0
    with store.lease():
        desc = store.put_manifest(index)
        store.tag(name, desc)
    print(desc.digest)
    return 0


def _manifest_push(args: argparse.Namespace) -> int:
    from .remote import _push
    return _push(args)


# ---- inspect ----------------------------------------------------------------------------------

def _local_bytes(args: argparse.Namespace) -> bytes | None:
    """The bytes of the manifest or index REF names in the local store (None: not there)."""
    from pathlib import Path

    from registry.errors import NotFoundError
    from registry.store import IMAGES_DIR, default_root, open_store
    root = Path(args.root) if args.root else default_root()
    if not (root / IMAGES_DIR / "index.json").is_file():
        return None           # no store: do not make one to look
    store = open_store(root)
    try:
        return store.read_blob(store.resolve(args.ref).digest)
    except NotFoundError:
        return None


def _inspect(args: argparse.Namespace) -> int:
    from registry.endpoints import RemoteEndpoint
    from registry.manifest import Index
    from registry.reference import parse_reference
    local = None if args.remote else _local_bytes(args)
    if local is not None:
        sys.stdout.buffer.write(local if local.endswith(b"\n") else local + b"\n")
        sys.stdout.flush()
        return 0
    r = parse_reference(args.ref)
    with _client(args) as client:
        ep = RemoteEndpoint(client.repository(r.registry, r.repository))
        raw = ep.read_manifest(r.identifier)
        if args.raw:
            sys.stdout.buffer.write(raw.data if raw.data.endswith(b"\n") else raw.data + b"\n")
            sys.stdout.flush()
            return 0
        rows = [("Name", str(r)), ("MediaType", raw.media_type), ("Digest", raw.digest)]
        if not isinstance(raw.doc, Index):
            rows.append(("Platform", str(ep.read_config(raw.doc.config.digest).platform)))
        _rows(rows, "")
        if isinstance(raw.doc, Index):
            if raw.doc.annotations:
                _annotations_block(raw.doc.annotations, "")
            print("\nManifests:")
            for n, d in enumerate(raw.doc.manifests):
                if n:
                    print()
                _rows([("Name", f"{r.name}@{d.digest}"), ("MediaType", d.media_type),
                       ("Platform", _platform_text(d))], "  ")
                if d.annotations:
                    _annotations_block(d.annotations, "  ")
    return 0


def _platform_text(d: Any) -> str:
    from registry.manifest import is_attestation
    if is_attestation(d):
        ref = d.annotations.get("vnd.docker.reference.digest", "")
        return f"attestation for {ref}" if ref else "attestation"
    return str(d.platform) if d.platform else "-"


def _rows(rows: list[tuple[str, str]], indent: str) -> None:
    width = 11
    for k, v in rows:
        print(f"{indent}{k + ':':<{width}}{v}")


def _annotations_block(annotations: dict, indent: str) -> None:
    print(f"{indent}Annotations:")
    for k in sorted(annotations):
        print(f"{indent}  {k}: {annotations[k]}")
