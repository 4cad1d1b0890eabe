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
from .copier import CopyPlan, TransferResult, plan_copy, run_copy
from .endpoints import BlobSources, RemoteEndpoint, StoreEndpoint
from .errors import LimitError, NotFoundError
from .image import MAX_INDEX_DEPTH, RawManifest, image_blobs, walk
from .manifest import Descriptor, Index, is_attestation
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

    An index is kept as the index, tagged, with the image for `platform` (default: this host's)
    below it, as Docker's containerd image store keeps it: the other platforms' manifests stay
    out until a pull for them adds them (`result.images` names the one pulled). With
    `all_platforms` the index comes with every manifest it lists. Blobs and manifests already in
    the store are not fetched again. Returns what was tagged.
    """
    progress = progress or Progress()
    r = _as_reference(ref)
    src = RemoteEndpoint(client.repository(r.registry, r.repository))
    dst = StoreEndpoint(store)
    plan = plan_copy(src, r.identifier, platform=_as_platform(platform), all_platforms=all_platforms,
                     where=str(r), keep_index=True, known=dst)
    progress.message(f"pulling {r} ({plan.source.digest})")
    name = str(r)
    result = run_copy(plan, src, dst, tag=name if tag else None, progress=progress,
                      workers=client.options.max_per_host, platforms_from=dst)
    result.reference = name
    return result


def push(client: RegistryClient, store: Any, src: str, dest: str | Reference | None = None, *,
         platform: str | Platform | None = None, whole: bool = False,
         progress: Progress | None = None) -> TransferResult:
    """Push a locally tagged image (manifest or index, with everything it lists) to a registry.

    `src` is a name in the store (`NAME[:TAG]`); `dest` defaults to the same reference. Blobs the
    destination has are skipped, blobs known in another repository of the same registry are
    mounted, the rest uploaded; then manifests, children before the index, the top one by tag.

    With `platform`, only that platform's image of an index is pushed (as `docker push
    --platform`). An index the store holds only partly (a one-platform pull) is pushed whole
    when the destination already has the manifests the store lacks; else, when the store holds
    just one of its images, that image is pushed instead (as Docker does, with a message saying
    so; not with `whole`, as for a manifest list); else the push is refused naming the missing
    platforms. A registry never gets an index that lists a manifest it lacks.
    """
    progress = progress or Progress()
    dst_ref = _as_reference(dest if dest is not None else src)
    source = StoreEndpoint(store)
    dst = RemoteEndpoint(client.repository(dst_ref.registry, dst_ref.repository))
    try:
        if platform is not None:
            plan = plan_copy(source, src, platform=_as_platform(platform), all_platforms=False, where=src)
        else:
            plan = _push_plan(store, source, src, dst, str(dst_ref), progress, whole)
        progress.message(f"pushing {src} to {dst_ref}")
        result = run_copy(plan, source, dst, tag=dst_ref.tag, progress=progress,
                          workers=client.options.max_per_host)
    finally:
        source.close()
    progress.message(f"{dst_ref}: digest: {result.digest} size: {result.size}")
    result.reference = str(dst_ref)
    return result


def _push_plan(store: Any, source: StoreEndpoint, src: str, dst: RemoteEndpoint, where: str,
               progress: Progress, whole: bool) -> CopyPlan:
    """What a push of `src` without --platform sends (see push): the whole tree, or the index
    with the manifests the destination already has left out, or the one image the store has."""
    top = source.read_manifest(src)
    missing: list[str] = []

    def read(desc: Any) -> RawManifest | None:
        if store.has_blob(desc.digest):
            return source.read_manifest(desc)
        missing.append(desc.digest)
        return None
    below = walk(read, top, src)
    # The registry may hold what the store lacks (pushing back where it was pulled from): then
    # the index is valid there as it is.
    absent = [d for d in missing if dst.repo.head_manifest(d) is None]
    if not absent:
        return CopyPlan(top, top, below, image_blobs(m.doc for m in [*below, top]))
    entries = store.index_entries(top.digest)
    have = [d for d, present in entries if present]
    lacks = [str(d.platform or d.digest) for d, present in entries if not present and d.digest in absent]
    if len(have) == 1 and lacks and not whole:
        plat = str(have[0].platform or "?")
        progress.message(f"{src} is a multi-platform index the store holds only the {plat} image of (it lacks "
                         f"{', '.join(lacks)}): pushing that image instead of the index; `pybuild pull "
                         "--all-platforms` of it first pushes the whole index")
        return plan_copy(source, have[0].digest, where=f"{src}@{have[0].digest}")
    listed = top.doc.manifests if isinstance(top.doc, Index) else []
    attestations = sum(1 for d in listed if is_attestation(d) and d.digest in absent)
    parts = lacks + ([f"{attestations} attestation manifest{'s' * (attestations > 1)}"] if attestations else [])
    what = ", ".join(parts) or f"{len(absent)} manifests it lists (e.g. {absent[0]})"
    present = ", ".join(str(d.platform or d.digest) for d in have) or "none"
    raise NotFoundError(f"cannot push {src} to {where}: the store holds this multi-platform index only partly "
                        f"and neither it nor the registry has {what}; a registry refuses an index that lists "
                        f"a manifest it lacks. Push one platform with --platform (present here: {present}), or "
                        "pull the whole index first (`pybuild pull --all-platforms` of the image it came from)")


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
