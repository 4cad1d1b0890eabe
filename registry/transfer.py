"""Moving images between registries and the local store: pull, push and copy.

Each is a thin call over the one copy (registry.copier: plan the manifests, then move the blobs
through an ImageSink) between the Store and a repository (registry.endpoints). Blobs move in
parallel (bounded per registry host by the client's slots), streamed in 1 MiB pieces, never whole
in memory. Downloads are hashed by the store's blob writer: a mismatch stores nothing and raises
DigestMismatchError. Uploads skip what the destination has (HEAD), mount what another repository
of the same registry holds, and upload the rest; manifests go last, children before their index,
so a registry never refers to content it lacks.
"""
from __future__ import annotations

from typing import Any

from .client import RegistryClient
from .copier import TransferResult, plan_copy, run_copy
from .endpoints import BlobSources, RemoteEndpoint, StoreEndpoint
from .errors import LimitError
from .image import MAX_INDEX_DEPTH
from .manifest import Descriptor
from .platform import Platform, host_platform, parse_platform
from .progress import Progress
from .reference import Reference, parse_reference

__all__ = ["BlobSources", "MAX_INDEX_DEPTH", "TransferResult", "copy", "pull", "push"]


def _as_reference(ref: str | Reference) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


def _as_platform(platform: str | Platform | None) -> Platform:
    if platform is None:
        return host_platform()
    return platform if isinstance(platform, Platform) else parse_platform(platform)


def pull(client: RegistryClient, ref: str | Reference, store: Any, *,
         platform: str | Platform | None = None, all_platforms: bool = False,
         progress: Progress | None = None, tag: bool = True) -> TransferResult:
    """Pull an image into the store and tag it with its reference.

    From an index, only the manifest for `platform` (default: this host's) is pulled and tagged,
    like `docker pull`; with `all_platforms` the index and every manifest it lists are. Blobs
    already in the store are skipped. Returns what was tagged.
    """
    progress = progress or Progress()
    r = _as_reference(ref)
    src = RemoteEndpoint(client.repository(r.registry, r.repository))
    dst = StoreEndpoint(store)
    plan = plan_copy(src, r.identifier, platform=_as_platform(platform), all_platforms=all_platforms,
                     where=str(r), known=dst)
    progress.message(f"pulling {r} ({plan.source.digest})")
    name = str(r)
    result = run_copy(plan, src, dst, tag=name if tag else None, progress=progress,
                      workers=client.options.max_per_host, platforms_from=dst)
    result.reference = name
    return result


def push(client: RegistryClient, store: Any, src: str, dest: str | Reference | None = None, *,
         progress: Progress | None = None) -> TransferResult:
    """Push a locally tagged image (manifest or index, with everything it lists) to a registry.

    `src` is a name in the store (`NAME[:TAG]`); `dest` defaults to the same reference. Blobs the
    destination has are skipped, blobs known in another repository of the same registry are
    mounted, the rest uploaded; then manifests, children before the index, the top one by tag.
    """
    progress = progress or Progress()
    dst_ref = _as_reference(dest if dest is not None else src)
    source = StoreEndpoint(store)
    plan = plan_copy(source, src, all_platforms=True)
    dst = RemoteEndpoint(client.repository(dst_ref.registry, dst_ref.repository))
    progress.message(f"pushing {src} to {dst_ref}")
    try:
        result = run_copy(plan, source, dst, tag=dst_ref.tag, progress=progress,
                          workers=client.options.max_per_host)
    finally:
        source.close()
    progress.message(f"{dst_ref}: digest: {result.digest} size: {result.size}")
    result.reference = str(dst_ref)
    return result


# cosign's tags next to an image digest: signatures, attestations, SBOMs.
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")


def copy(client: RegistryClient, src: str | Reference, dest: str | Reference, *,
         all_platforms: bool = False, platform: str | Platform | None = None,
         progress: Progress | None = None, attachments: bool = False) -> TransferResult:
    """Copy an image from one registry (or repository) to another, streaming blobs through.

    From an index, only the manifest for `platform` (default: this host's) is copied unless
    `all_platforms`, which copies the index and everything it lists. Within one registry blobs are
    mounted from the source repository; across registries each is streamed from GET into the
    upload, hashed on the way (a mismatch commits nothing).

    With `attachments`, what is attached to the copied manifests comes along: their referrers
    (the referrers API or its tag fallback; the destination's fallback index is rebuilt as each
    is written) and cosign's `sha256-<hex>.sig`/`.att`/`.sbom` tags.
    """
    progress = progress or Progress()
    s, d = _as_reference(src), _as_reference(dest)
    source = RemoteEndpoint(client.repository(s.registry, s.repository))
    plan = plan_copy(source, s.identifier, platform=_as_platform(platform), all_platforms=all_platforms,
                     where=str(s))
    dst = RemoteEndpoint(client.repository(d.registry, d.repository))
    progress.message(f"copying {s} to {d}")
    result = run_copy(plan, source, dst, tag=d.tag, progress=progress, workers=client.options.max_per_host)
    if attachments:
        subjects = [plan.top.digest, *(m.digest for m in plan.manifests)]
        copy_attachments(client, source, dst, subjects, progress)
    progress.message(f"{d}: digest: {result.digest} size: {result.size}")
    result.reference = str(d)
    return result


def _merge_signatures(source: RemoteEndpoint, dst: RemoteEndpoint, subject: str, digest: str, plan: Any, tag: str,
                      progress: Progress) -> bool:
    """When the destination already has another signature manifest at ``tag``, add the source's
    signature layers to it instead of replacing it (a source must not erase the destination's
    own signatures of the same digest); True when that was done (or refused), False when the tag
    is new or the same and a plain copy is right."""
    from .signatures import copy_signatures
    existing = dst.repo.head_manifest(tag)
    if existing is None or existing.digest == digest:
        return False
    info = dst.repo.head_manifest(subject)
    if info is None:
        return False
    try:
        added = copy_signatures(source.repo, dst.repo, Descriptor(info.media_type, subject, info.size), plan.top.data,
                                plan.top.descriptor.media_type, f"{source.name}:{tag}")
    except LimitError as exc:
        progress.message(f"not adding the signatures of {source.name}:{tag}: {exc}")
        return True
    progress.message(f"added {added} signature(s) from {source.name}:{tag} to the {tag} the destination had")
    return True


def copy_attachments(client: RegistryClient, source: RemoteEndpoint, dst: RemoteEndpoint, subjects: list[str],
                     progress: Progress) -> int:
    """Copy the referrers and cosign tags of each digest in `subjects` from `source` to `dst`
    (referrers of referrers too, e.g. a signature of an attestation); how many were copied."""
    seen: set[str] = set()
    todo = list(dict.fromkeys(subjects))
    copied = 0
    while todo:
        subject = todo.pop(0)
        if subject in seen:
            continue
        seen.add(subject)
        found: list[tuple[str, str | None]] = [(d["digest"], None) for d in source.repo.referrers(subject)
                                               if isinstance(d.get("digest"), str)]
        tag = source.repo.referrers_tag(subject)
        for suffix in COSIGN_SUFFIXES:
            info = source.repo.head_manifest(tag + suffix)
            if info is not None:
                found.append((info.digest, tag + suffix))
        for digest, as_tag in found:
            plan = plan_copy(source, digest, all_platforms=True, where=f"{source.name}@{digest}")
            named = plan.top.doc.subject.digest if plan.top.doc.subject else None
            if as_tag is None and named != subject:
                # The source's referrers list is the registry's word only: a manifest about
                # another image must not be written into the destination (where its subject
                # may be an image of the destination's own).
                progress.message(f"not copying referrer {digest} of {subject}: its subject is {named or 'missing'}")
                continue
            if as_tag is not None and as_tag.endswith(".sig") and _merge_signatures(source, dst, subject, digest, plan,
                                                                                     as_tag, progress):
                copied += 1
                continue
            progress.message(f"copying {as_tag or 'referrer ' + digest} of {subject}")
            run_copy(plan, source, dst, tag=as_tag, progress=progress, workers=client.options.max_per_host)
            copied += 1
            todo.append(digest)
    return copied
