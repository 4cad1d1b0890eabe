"""`pybuild imagetools create|inspect`: merge images and indexes already in a registry into one
index, and describe what a reference names there (the second half of a build fanned out over
runners: each pushes its platform by digest, then one `imagetools create -t REF D1 D2` joins them).

    pybuild imagetools create -t reg/app:1 [-t reg2/app:1] reg/app@sha256:... reg/app:arm64 ...
    pybuild imagetools inspect reg/app:1 [--raw]

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
    """Add `imagetools` and its subcommands."""
    p = add_command("imagetools", "create or inspect multi-platform images in a registry "
                                  "(like `docker buildx imagetools`)")
    sub = p.add_subparsers(dest="imagetools_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _usage(p))

    c = sub.add_parser("create", help="merge images and indexes in a registry into one index and push it")
    c.add_argument("sources", metavar="SRC", nargs="*",
                   help="REPO@DIGEST or REPO:TAG of an image or index (a bare digest: in the first -t's repository)")
    c.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="REF", required=True,
                   help="where to push the index (repeatable)")
    c.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                   help="annotation of the index (`index:` prefix accepted; repeatable)")
    c.add_argument("--dry-run", action="store_true", help="print the index JSON, push nothing")
    c.set_defaults(func=_create)

    i = sub.add_parser("inspect", help="print an image's or index's manifest and its platforms")
    i.add_argument("ref", metavar="REF")
    i.add_argument("--raw", action="store_true", help="the manifest or index exactly as the registry serves it")
    i.set_defaults(func=_inspect)

    for s in (c, i):
        s.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="print only results and errors")
        s.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                       help="allow plain HTTP or an unverified certificate for HOST (repeatable)")


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    print("pybuild imagetools: name a subcommand: create or inspect", file=sys.stderr)
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


def read_sources(client: Any, refs: list[Any]) -> list[Source]:
    """Read every source's manifest; an image's entry gets the platform of its config."""
    from registry.endpoints import RemoteEndpoint
    from registry.errors import RegistryError
    from registry.manifest import Descriptor, Index
    out = []
    for r in refs:
        ep = RemoteEndpoint(client.repository(r.registry, r.repository))
        top = ep.read_manifest(r.identifier)
        if isinstance(top.doc, Index):
            entries = list(top.doc.manifests)
        else:
            config = ep.read_config(top.doc.config.digest)
            if not config.architecture or not config.os:
                raise RegistryError(f"{r}: its config names no os/architecture; an index entry needs a platform")
            entries = [Descriptor(top.media_type, top.digest, len(top.data), platform=config.platform)]
        out.append(Source(r, ep, top, entries))
    return out


def merge_index(sources: list[Source], annotations: dict[str, str] | None = None) -> Any:
    """One index of every source's entries (each digest once, platforms unique); a Docker manifest
    list when every entry is a Docker schema2 manifest, else an OCI index."""
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
        raise RegistryError("imagetools create: no source given")
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


# ---- inspect ----------------------------------------------------------------------------------

def _inspect(args: argparse.Namespace) -> int:
    from registry.endpoints import RemoteEndpoint
    from registry.manifest import Index
    from registry.reference import parse_reference
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
