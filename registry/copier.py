"""The one copy: an image or index, with every blob it needs, from an ImageSource to an ImageSink.

    plan = plan_copy(src, "app:v1", platform=..., all_platforms=...)   # reads manifests only
    result = run_copy(plan, src, dst, tag="app:v1", progress=...)      # moves blobs, then manifests

or `copy_image(src, dst, ref, ...)` for both. Blobs move in parallel (`workers`), each once, through
the sink's `receive_blob` (the Store resumes partial downloads and verifies every byte; a registry
is asked first, then mounted from a repository known to hold the blob, then uploaded, hashed on
the way unless the source verified it). For an ordered sink (a registry) manifests go after the
blobs, children before their index, the top one last; an unordered sink (the Store, under its
lease) writes them alongside the blobs and only the tag waits.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .digest import parse_digest
from .errors import NotFoundError
from .image import ImageSink, ImageSource, RawManifest, image_blobs, select_path, walk
from .manifest import Descriptor, Index, Manifest
from .platform import Platform
from .progress import Progress


@dataclass
class TransferResult:
    """What a pull, push or copy did."""
    reference: str                  # the reference written (local name for pull, remote for push/copy)
    digest: str                     # digest of the top manifest or index written
    media_type: str
    size: int
    platforms: list[str] = field(default_factory=list)   # platforms of the image manifests moved
    images: list[str] = field(default_factory=list)      # their digests, in the same order
    source_digest: str = ""         # what the source reference resolved to (an index, for a pull
                                    # that picked one platform from it: Docker's "Digest:")
    blobs_transferred: int = 0
    blobs_skipped: int = 0          # already present at the destination
    blobs_mounted: int = 0
    bytes_transferred: int = 0      # over the network (a resumed download counts only the rest)


@dataclass
class CopyPlan:
    """What a copy will move: the top manifest written, what the reference resolved to, the
    manifests below the top (children first) and the blobs of the image manifests."""
    top: RawManifest
    source: RawManifest
    manifests: list[RawManifest]
    blobs: dict[str, Descriptor]

    @property
    def images(self) -> list[RawManifest]:
        """The image manifests moved (the top last when it is one)."""
        return [m for m in [*self.manifests, self.top] if isinstance(m.doc, Manifest)]


class _Counter:
    """Thread-safe tallies for a TransferResult."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transferred = self.skipped = self.mounted = self.bytes = 0

    def add(self, kind: str, nbytes: int = 0) -> None:
        with self.lock:
            kind = "skipped" if kind == "foreign" else kind
            setattr(self, kind, getattr(self, kind) + 1)
            self.bytes += nbytes

    def fill(self, result: TransferResult) -> TransferResult:
        result.blobs_transferred, result.blobs_skipped = self.transferred, self.skipped
        result.blobs_mounted, result.bytes_transferred = self.mounted, self.bytes
        return result


def run_parallel(jobs: list[Callable[[], None]], workers: int) -> None:
    """Run jobs on up to `workers` threads (the calling one among them); on the first failure
    start no further job, wait for the running ones and raise it."""
    if not jobs:
        return
    if len(jobs) == 1 or workers <= 1:
        for job in jobs:
            job()
        return
    lock = threading.Lock()
    pending = iter(jobs)
    errors: list[BaseException] = []
    stop = [False]

    def work() -> None:
        while True:
            with lock:
                job = None if stop[0] or errors else next(pending, None)
            if job is None:
                return
            try:
                job()
            except BaseException as exc:    # re-raised by the calling thread
                with lock:
                    errors.append(exc)
                return

    # Plain threads, not concurrent.futures: its import is a noticeable part of a small pull.
    threads = [threading.Thread(target=work, name=f"pybuild-xfer-{i}", daemon=True)
               for i in range(min(workers, len(jobs)) - 1)]
    for t in threads:
        t.start()
    try:
        work()
    finally:
        with lock:
            stop[0] = True
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def plan_copy(src: ImageSource, ref: str, *, platform: Platform | None = None,
              all_platforms: bool = True, where: str | None = None, keep_index: bool = False,
              known: Any = None) -> CopyPlan:
    """Read what `ref` names at `src` and everything below it.

    With a `platform` and not `all_platforms`, an index is resolved to that platform's image
    manifest (selecting again inside nested indexes), which becomes the top; with `keep_index`
    the index stays the top and only the manifests on the way to that image are moved below it
    (a store keeps a partly pulled index; a registry would refuse one). Otherwise the whole tree
    is moved. Manifests that `known` (the destination store) already holds are read from it, not
    from `src`: they are content-addressed and were verified when stored, so a cached pull asks
    the registry for the tag only.
    """
    where = where or ref
    source = src.read_manifest(ref)
    has = getattr(known, "has_blob", None)

    def read(desc: Descriptor) -> RawManifest:
        if has is not None and has(desc.digest):
            return known.read_manifest(desc)
        try:
            return src.read_manifest(desc)
        except NotFoundError as exc:
            plat = f" (the {desc.platform} image it lists)" if desc.platform is not None else ""
            raise NotFoundError(f"{where}: {exc}{plat}") from None

    top = source
    if isinstance(source.doc, Index) and not all_platforms and platform is not None:
        path = select_path(read, source, platform, where)
        if keep_index:
            below = path[:0:-1]          # the image first, then the nested indexes inside out
            return CopyPlan(source, source, below, image_blobs(m.doc for m in below))
        top = path[-1]
    manifests = walk(read, top, where)
    return CopyPlan(top, source, manifests, image_blobs(m.doc for m in [*manifests, top]))


def run_copy(plan: CopyPlan, src: ImageSource, dst: ImageSink, *, tag: str | None = None,
             progress: Progress | None = None, workers: int = 4,
             platforms_from: Any = None) -> TransferResult:
    """Move what `plan` lists from `src` to `dst`, then make its top reachable under `tag`
    (a tag at a registry, a name in the Store or a layout; None: by digest only)."""
    progress = progress or Progress()
    counter = _Counter()

    def remember(digest: str, both: bool = True) -> None:
        if both and dst.host and dst.repository:
            src.remember(digest, dst.host, dst.repository)
        if src.host and src.repository:
            dst.remember(digest, src.host, src.repository)

    def move(desc: Descriptor) -> None:
        kind, nbytes = dst.receive_blob(desc, src, progress)
        counter.add(kind, nbytes)
        if kind != "foreign":
            remember(desc.digest)

    has = getattr(dst, "has_blob", None)
    if _up_to_date(plan, dst, tag, has):
        # A pull of what the tag already names: nothing to write, so no lease, no index.json
        # rewrite and no fsync.
        for d in plan.blobs.values():
            progress.task(parse_digest(d.digest).short, d.size).finish("already exists")
            counter.add("skipped")
        return counter.fill(_result(plan, tag, plan.top.digest, platforms_from if platforms_from is not None else src))
    with dst.session():
        # What the sink already holds is settled here, without a thread (a pull of a cached image
        # starts none); the rest moves in parallel.
        jobs: list[Callable[[], None]] = []
        if not dst.ordered:
            jobs += [lambda m=m: dst.put_manifest(m) for m in [*plan.manifests, plan.top]
                     if has is None or not has(m.digest)]
        for d in plan.blobs.values():
            if has is not None and has(d.digest):
                move(d)
            else:
                jobs.append(lambda d=d: move(d))
        run_parallel(jobs, workers)
        if dst.ordered:
            for m in plan.manifests:
                dst.put_manifest(m)
        for m in plan.images:           # a later push of the manifest's blobs may mount them
            remember(m.digest, both=False)
        digest = dst.finish(plan.top, tag)
    return counter.fill(_result(plan, tag, digest, platforms_from if platforms_from is not None else src))


def _up_to_date(plan: CopyPlan, dst: ImageSink, tag: str | None, has: Any) -> bool:
    """True when an unordered sink (the Store) already has `tag` on the plan's top manifest and
    holds every manifest and blob of the plan."""
    tagged = getattr(dst, "tagged", None)
    if not tag or dst.ordered or tagged is None or has is None or tagged(tag) != plan.top.digest:
        return False
    return all(has(m.digest) for m in plan.manifests) and all(has(d) for d in plan.blobs)


def _result(plan: CopyPlan, tag: str | None, digest: str, reader: Any) -> TransferResult:
    return TransferResult(reference=tag or "", digest=digest, media_type=plan.top.media_type,
                          size=len(plan.top.data), platforms=[_platform(reader, m) for m in plan.images],
                          images=[m.digest for m in plan.images], source_digest=plan.source.digest)


def copy_image(src: ImageSource, dst: ImageSink, ref: str, *, tag: str | None = None,
               platform: Platform | None = None, all_platforms: bool = True,
               progress: Progress | None = None, workers: int = 4) -> TransferResult:
    """Copy the image or index `ref` names at `src` to `dst` (under `tag`): plan, then run."""
    plan = plan_copy(src, ref, platform=platform, all_platforms=all_platforms)
    return run_copy(plan, src, dst, tag=tag, progress=progress, workers=workers)


def _platform(reader: Any, m: RawManifest) -> str:
    from .errors import RegistryError
    try:
        return str(reader.read_config(m.doc.config.digest).platform)   # type: ignore[union-attr]
    except RegistryError:
        return ""
