"""No-op rebuilds without starting the build engine: a summary of the last build, re-checked.

After every successful build, :func:`remember` writes ``<root>/cache/builds/<id>.json`` where
``<id>`` hashes everything the build was given: the Dockerfile's path and bytes, the context
directory, build args, target, platform, labels, network, isolation, compression and
SOURCE_DATE_EPOCH. The summary holds what else decided the result: the manifest digest of
every base image, every check of the build context (sources, excludes, the digest of their
files) and the cache keys of the steps, plus the image it produced.

:func:`try_fast_build` (called by ``pybuild build`` before the engine is imported) finds the
summary of the same inputs, resolves the base images in the store's index.json again, repeats
each context check through the stat-keyed hash cache and, when all of them agree and every tag
already names the image, reports the image without parsing the Dockerfile, planning or
looking steps up one by one: the result is the one those steps would give, since each step's
key is made of exactly these inputs. Anything else (a changed file, a new base image, outputs,
push, remote caches, --no-cache, ADD from a URL, an image named by COPY --from) takes the normal
path. This module imports neither the engine nor the registry package: start-up is the cost.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..root import Root
from ..root import resolve as resolve_root

FAST_VERSION = "pybuild-fast-v1"
_REF_NAME = "org.opencontainers.image.ref.name"
_IMAGE_NAME = "io.containerd.image.name"


def _dockerfile_path(context: str, dockerfile: str | None) -> Path | None:
    if dockerfile == "-" or context == "-" or not os.path.isdir(context):
        return None
    return Path(dockerfile) if dockerfile else Path(context) / "Dockerfile"


def build_id(*, context: str, dockerfile: str | None, dockerfile_bytes: bytes, build_args: dict[str, str],
             target: str | None, platform: str | None, labels: dict[str, str], network: str,
             isolation: str, compression: str, source_date_epoch: Any) -> str:
    """The identity of a build's given inputs (see the module docstring)."""
    doc = [FAST_VERSION, os.path.realpath(context), os.path.abspath(dockerfile or os.path.join(context, "Dockerfile")),
           hashlib.sha256(dockerfile_bytes).hexdigest(), sorted(build_args.items()), target or "",
           platform or "", sorted(labels.items()), network, isolation, compression,
           "" if source_date_epoch is None else str(source_date_epoch),
           os.environ.get("SOURCE_DATE_EPOCH", "")]
    return hashlib.sha256(json.dumps(doc).encode("utf-8", "surrogateescape")).hexdigest()


def _summary_path(root: Path, bid: str) -> Path:
    return Root(root).cache / "builds" / f"{bid}.json"


def _index_names(root: Path) -> dict[str, str]:
    """Full and familiar names in the store's index.json -> manifest digest."""
    try:
        index = json.loads((Root(root).images / "index.json").read_bytes())
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    for d in index.get("manifests", []):
        ann = d.get("annotations") or {}
        for k in (_IMAGE_NAME, _REF_NAME):
            if ann.get(k):
                out.setdefault("name:" + ann[k], d["digest"])
    return out


def remember(root: Path, opts: Any, dockerfile_bytes: bytes, plan: Any, cache: Any, store: Any,
             manifest_digest: str, config_digest: str) -> None:
    """Write the summary of a successful build (no-op for builds the fast path cannot repeat)."""
    from registry.reference import parse_reference
    if _dockerfile_path(opts.context, opts.dockerfile) is None or opts.dockerfile_text is not None:
        return
    bases: dict[str, str] = {}
    for i in plan.order:
        ps = plan.stages[i]
        for inst in ps.stage.instructions:
            if getattr(inst, "from_", "") and plan.stage_by_ref(inst.from_, ps.index) is None:
                return            # COPY --from an image: not tracked here
            if any(u.startswith(("http://", "https://")) for u in getattr(inst, "sources", [])):
                return            # ADD from a URL: the remote file may change
            if any(getattr(m, "from_", "") and plan.stage_by_ref(m.from_, ps.index) is None
                   for m in getattr(inst, "mounts", [])):
                return
        if ps.base_stage is None and ps.base.lower() != "scratch":
            bases[str(parse_reference(ps.base))] = store.resolve(ps.base).digest
    tags = {t: str(parse_reference(t)) for t in opts.tags}     # as given -> full name in index.json
    bid = build_id(context=opts.context, dockerfile=opts.dockerfile, dockerfile_bytes=dockerfile_bytes,
                   build_args=opts.build_args, target=opts.target, platform=opts.platform, labels=opts.labels,
                   network=opts.network, isolation=opts.isolation, compression=opts.compression,
                   source_date_epoch=opts.source_date_epoch)
    steps = [[l.stage, l.step.removesuffix(" # buildkit"), l.key, l.title] for l in cache.lookups]
    doc = {"version": FAST_VERSION, "bases": bases, "context": cache.context_checks, "tags": tags,
           "manifest": manifest_digest, "image_id": config_digest, "steps": steps, "created": time.time()}
    path = _summary_path(root, bid)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file sits in cache/ itself, where `store verify --repair` removes leftovers.
    tmp = Root(root).cache / f".tmp-{os.getpid()}-{path.name}"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def try_fast_build(args: Any, build_args: dict[str, str], labels: dict[str, str]) -> str | None:
    """The image ID of the build ``args`` asks for when it is a no-op rebuild, else None."""
    if (args.no_cache or args.no_cache_filter or args.pull or args.outputs or args.push or args.cache_from
            or args.cache_to or args.cache_report or args.metadata_file or args.secrets or args.context == "-"
            or args.progress == "rawjson"
            or getattr(args, "sbom", None) or getattr(args, "provenance", None) or getattr(args, "attest", None)):
        return None
    df = _dockerfile_path(args.context, args.file)
    if df is None:
        return None
    root = resolve_root(args.root)
    try:
        data = df.read_bytes()
    except OSError:
        return None
    bid = build_id(context=args.context, dockerfile=args.file, dockerfile_bytes=data, build_args=build_args,
                   target=args.target, platform=args.platform, labels=labels, network=args.network,
                   isolation=args.isolation, compression=args.compression, source_date_epoch=None)
    try:
        doc = json.loads(_summary_path(root, bid).read_bytes())
    except (OSError, ValueError):
        return None
    if doc.get("version") != FAST_VERSION:
        return None
    names = _index_names(root)
    for ref, digest in doc["bases"].items():
        if names.get("name:" + ref) != digest:
            return None
    manifest = doc["manifest"]
    if not (Root(root).blobs / "sha256" / manifest.split(":", 1)[1]).is_file():
        return None
    # Every tag must already name this image (tags as given map to the full names recorded).
    for t in args.tags:
        full = doc["tags"].get(t)
        if full is None or names.get("name:" + full) != manifest:
            return None
    if not _context_unchanged(root, args, doc["context"]):
        return None
    _touch(root, [s[2] for s in doc["steps"]])
    _progress(args, doc, df)
    if args.iidfile:
        p = Path(args.iidfile)
        tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
        tmp.write_text(doc["image_id"])
        os.replace(tmp, p)
    return doc["image_id"]


def _context_unchanged(root: Path, args: Any, checks: list) -> bool:
    if not checks:
        return True
    from ..context.build_context import BuildContext, checksum_sources
    from ..context.dockerignore import read_ignore_lines
    from ..errors import BuildError
    from ..context.hashcache import open_hash_cache
    ctx_root = os.path.realpath(args.context)
    # The ignore file rule of builder.context.build_context.open_context for a directory context.
    ignore: Path | None = None
    if args.file:
        cand = Path(args.file + ".dockerignore")
        if cand.is_file():
            ignore = cand
    if ignore is None and os.path.isfile(os.path.join(ctx_root, ".dockerignore")):
        ignore = Path(ctx_root) / ".dockerignore"
    patterns = read_ignore_lines(ignore.read_bytes().decode("utf-8", "surrogateescape")) if ignore else []
    try:
        ctx = BuildContext(ctx_root, ignore_file=ignore, ignore_patterns=patterns, hash_cache=open_hash_cache(root))
    except BuildError:
        return False
    try:
        for srcs, excludes, parents, digest in checks:
            try:
                # Equal to cache_keys.records_digest of the same records, without building them.
                if checksum_sources(ctx, srcs, excludes, parents=parents) != digest:
                    return False
            except (BuildError, OSError):
                return False
        return True
    finally:
        ctx.close()


def _touch(root: Path, keys: list[str]) -> None:
    """Count a hit for every step (one append to the usage log)."""
    if not keys:
        return
    now = int(time.time())
    fd = os.open(Root(root).cache / "usage.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{k.split(':', 1)[-1]} {now}\n" for k in keys).encode())
    finally:
        os.close(fd)


def _progress(args: Any, doc: dict, df: Path) -> None:
    if args.quiet or args.progress == "quiet":
        return
    import sys
    out = sys.stderr
    lines = [f"#1 [internal] load build definition from {df.name}", "#1 DONE 0.0s",
             "#2 [internal] no-op rebuild: base images and build context unchanged", "#2 CACHED"]
    for n, (stage, step, _key, *title) in enumerate(doc["steps"], start=3):
        # The name the full build showed (BuildKit's ``[stage-1 2/3] RUN ...``) when recorded.
        lines += [f"#{n} {title[0] if title and title[0] else f'[{stage}] {step}'}", f"#{n} CACHED"]
    lines.append(f"writing image {doc['image_id']} done" +
                 (f", naming to {', '.join(args.tags)}" if args.tags else ""))
    out.write("\n".join(lines) + "\n")
    out.flush()
