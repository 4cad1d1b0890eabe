"""Moving images between registries and the local store: pull, push and copy.

Blobs move in parallel (bounded per registry host by the client's slots), streamed in 1 MiB
pieces, never whole in memory. Downloads are hashed by the store's blob writer: a mismatch stores
nothing and raises DigestMismatchError. Uploads skip what the destination has (HEAD), mount what
another repository of the same registry holds, and upload the rest; manifests go last, children
before their index, so a registry never refers to content it lacks.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import mediatypes as mt
from .client import RegistryClient, Repository
from .digest import parse_digest
from .errors import DigestMismatchError, NotFoundError, RegistryError
from .manifest import Descriptor, Index, Manifest, parse_manifest
from .platform import Platform, host_platform, parse_platform
from .progress import Progress
from .reference import Reference, parse_reference


@dataclass
class TransferResult:
    """What a pull, push or copy did."""
    reference: str                  # the reference written (local name for pull, remote for push/copy)
    digest: str                     # digest of the top manifest or index written
    media_type: str
    size: int
    platforms: list[str] = field(default_factory=list)   # platforms of the image manifests moved
    source_digest: str = ""         # what the source reference resolved to (an index, for a pull
                                    # that picked one platform from it: Docker's "Digest:")
    blobs_transferred: int = 0
    blobs_skipped: int = 0          # already present at the destination
    blobs_mounted: int = 0
    bytes_transferred: int = 0      # over the network (a resumed download counts only the rest)


class _Counter:
    """Thread-safe tallies for a TransferResult."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transferred = self.skipped = self.mounted = self.bytes = 0

    def add(self, kind: str, nbytes: int = 0) -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            self.bytes += nbytes

    def fill(self, result: TransferResult) -> TransferResult:
        result.blobs_transferred, result.blobs_skipped = self.transferred, self.skipped
        result.blobs_mounted, result.bytes_transferred = self.mounted, self.bytes
        return result


def _as_reference(ref: str | Reference) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


def _as_platform(platform: str | Platform | None) -> Platform:
    if platform is None:
        return host_platform()
    return platform if isinstance(platform, Platform) else parse_platform(platform)


def _label(digest: str) -> str:
    return parse_digest(digest).hex[:12]


def _run_parallel(jobs: list[Callable[[], None]], workers: int) -> None:
    """Run jobs on a thread pool; on the first failure cancel what has not started and raise it."""
    if not jobs:
        return
    if len(jobs) == 1 or workers <= 1:
        for job in jobs:
            job()
        return
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="pybuild-xfer") as pool:
        futures = [pool.submit(job) for job in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]


def _image_blobs(images: Iterable[Manifest]) -> dict[str, Descriptor]:
    """Configs and layers of the image manifests, by digest, each once (first descriptor seen)."""
    blobs: dict[str, Descriptor] = {}
    for m in images:
        for d in [m.config, *m.layers]:
            blobs.setdefault(d.digest, d)
    return blobs


def _images(children: list[tuple[Descriptor, bytes, Any]], top: "Manifest | Index") -> list[Manifest]:
    """The image manifests among `_children`'s result, then `top` if it is one itself."""
    images = [doc for _, _, doc in children if isinstance(doc, Manifest)]
    if isinstance(top, Manifest):
        images.append(top)
    return images


# ---- where blobs came from (for cross-repository mounts) --------------------------------------

class BlobSources:
    """Remembers which `host/repository` a blob was pulled from or pushed to, under the store root,
    so that a later push to the same registry can mount it instead of uploading it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.dir = Path(root) / "blob-sources"

    def _file(self, digest: str) -> Path:
        d = parse_digest(digest)
        return self.dir / d.algorithm / d.hex

    def add(self, digest: str, host: str, repository: str) -> None:
        """Record that `host/repository` holds `digest`."""
        entry = f"{host}/{repository}"
        if entry in self.get(digest):
            return
        path = self._file(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One short O_APPEND write per entry: concurrent writers never interleave inside a line.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (entry + "\n").encode())
        finally:
            os.close(fd)

    def get(self, digest: str) -> list[str]:
        """Every `host/repository` recorded for `digest`."""
        try:
            return [line for line in self._file(digest).read_text().splitlines() if line]
        except OSError:
            return []

    def repositories_on(self, digest: str, host: str) -> list[str]:
        """Repositories on `host` known to hold `digest` (mount candidates)."""
        prefix = host + "/"
        return [e[len(prefix):] for e in self.get(digest) if e.startswith(prefix)]


# ---- pull ------------------------------------------------------------------------------------

def _fetch_manifest(repo: Repository, desc_or_ref: Descriptor | str) -> tuple[bytes, str, str]:
    """(bytes, media type, digest) of a manifest, checked against its descriptor if given."""
    if isinstance(desc_or_ref, Descriptor):
        m = repo.get_manifest(desc_or_ref.digest)
        if len(m.data) != desc_or_ref.size:
            raise RegistryError(f"manifest {repo.ref}@{desc_or_ref.digest}: {len(m.data)} bytes, "
                                f"the index says {desc_or_ref.size}")
        return m.data, desc_or_ref.media_type or m.media_type, m.digest
    m = repo.get_manifest(desc_or_ref)
    return m.data, m.media_type, m.digest


def _store_bytes(store: Any, digest: str, data: bytes, media_type: str) -> None:
    if not store.has_blob(digest):
        store.put_blob(data, media_type, expected_digest=digest)


# Blobs at least this big are received on a helper thread while the store writes and hashes,
# so network and disk overlap even for an image of one big layer.
_PREFETCH_MIN = 8 << 20
_PREFETCH_DEPTH = 8      # chunks of 1 MiB in flight: bounds the memory a download uses


def _prefetched(chunks: Iterator[bytes], depth: int = _PREFETCH_DEPTH) -> Iterator[bytes]:
    """Iterate `chunks` on a background thread, `depth` items ahead; errors are re-raised here.

    Stopping early (an exception in the consumer) stops the producer and closes `chunks`.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            item: Any = end
        except BaseException as exc:   # handed to the consumer, which re-raises it
            item = exc
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    t = threading.Thread(target=produce, name="pybuild-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def _download(repo: Repository, store: Any, desc: Descriptor, progress: Progress, counter: _Counter,
              sources: BlobSources) -> None:
    """Stream one blob into the store, resuming a partial download left by an earlier attempt
    (in this process or a killed one). Content that fails verification is never stored; it is
    fetched once more from the start (a corrupt leftover or a transient fault) before the
    mismatch is reported."""
    if store.has_blob(desc.digest):
        counter.add("skipped")
        progress.task(_label(desc.digest), desc.size).finish("already exists")
        return
    with repo.client.host_slot(repo.host):
        task = progress.task(_label(desc.digest), desc.size)
        for attempt in range(2):
            resumed = 0
            try:
                with store.blob_writer(desc.digest, desc.size, media_type=desc.media_type,
                                       resumable=True) as w:
                    resumed = w.offset
                    task.advance(resumed)
                    chunks = repo.iter_blob(desc.digest, desc.size, offset=w.offset)
                    if desc.size - w.offset >= _PREFETCH_MIN:
                        chunks = _prefetched(chunks)
                    for chunk in chunks:
                        w.write(chunk)
                        task.advance(len(chunk))
                break
            except DigestMismatchError as exc:
                task.advance(-desc.size)
                if attempt:
                    raise DigestMismatchError(f"pulling blob {desc.digest} from {repo.ref}: {exc}") from None
                progress.message(f"{_label(desc.digest)}: content did not match its digest, downloading again")
    sources.add(desc.digest, repo.host, repo.name)
    counter.add("transferred", desc.size - resumed)
    task.finish("downloaded")


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
    repo = client.repository(r.registry, r.repository)
    want = _as_platform(platform)
    data, media_type, digest = _fetch_manifest(repo, r.identifier)
    doc = parse_manifest(data, media_type, where=f"manifest {r}")
    images: list[tuple[bytes, str, Manifest]] = []
    top = (data, media_type, digest)
    if isinstance(doc, Index) and not all_platforms:
        # The entry for the platform may itself be an index: select again inside it.
        for _ in range(MAX_INDEX_DEPTH):
            child = doc.select(want, where=f"{r}")
            cdata, ctype, cdigest = _fetch_manifest(repo, child)
            cdoc = parse_manifest(cdata, ctype, where=f"manifest {r}@{cdigest}")
            if isinstance(cdoc, Manifest):
                break
            doc = cdoc
        else:
            raise RegistryError(f"manifest {r}: indexes nested more than {MAX_INDEX_DEPTH} levels deep")
        images.append((cdata, cdigest, cdoc))
        top = (cdata, child.media_type or ctype or mt.OCI_MANIFEST, cdigest)
    elif isinstance(doc, Index):
        children = doc.manifests
        for child in children:
            cdata, ctype, cdigest = _fetch_manifest(repo, child)
            cdoc = parse_manifest(cdata, ctype, where=f"manifest {r}@{cdigest}")
            if isinstance(cdoc, Manifest):
                images.append((cdata, cdigest, cdoc))
            else:
                _store_bytes(store, cdigest, cdata, ctype)    # a nested index: keep it, do not descend
    else:
        images.append((data, digest, doc))
    progress.message(f"pulling {r} ({digest})")
    counter = _Counter()
    sources = BlobSources(store.root)
    blobs = _image_blobs(m for _, _, m in images)
    # The lease keeps what this pull writes safe from a concurrent gc until it is tagged. Nothing
    # refers to the blobs before the tag, so manifests are stored alongside the layers (their
    # writes overlap the downloads) and only the tag waits for everything.
    docs = {mdigest: (mdata, m.media_type) for mdata, mdigest, m in images}
    docs.setdefault(top[2], (top[0], top[1]))
    with store.lease():
        jobs = [lambda k=k, v=v: _store_bytes(store, k, v[0], v[1]) for k, v in docs.items()]
        jobs += [lambda d=d: _download(repo, store, d, progress, counter, sources) for d in blobs.values()]
        _run_parallel(jobs, client.options.max_per_host)
        for _, mdigest, _ in images:
            sources.add(mdigest, repo.host, repo.name)
        desc = Descriptor(media_type=top[1], digest=top[2], size=len(top[0]))
        name = str(r)
        if tag:
            store.tag(name, desc)
    result = TransferResult(reference=name, digest=desc.digest, media_type=desc.media_type, size=desc.size,
                            platforms=[_config_platform(store, m) for _, _, m in images], source_digest=digest)
    return counter.fill(result)


def _config_platform(store: Any, m: Manifest) -> str:
    try:
        return str(store.get_config(m.config.digest).platform)
    except RegistryError:
        return ""


def _remote_platform(repo: Repository, m: Manifest) -> str:
    from .manifest import ImageConfig
    try:
        return str(ImageConfig.from_bytes(repo.fetch_blob(m.config.digest)).platform)
    except RegistryError:
        return ""


# ---- push ------------------------------------------------------------------------------------

def _store_source(store: Any, digest: str, opened: list) -> Callable[[int], Any]:
    def source(offset: int) -> Any:
        f = store.open_blob(digest)
        opened.append(f)
        if offset:
            f.seek(offset)
        return f
    return source


def _upload(dst: Repository, desc: Descriptor, open_source: Callable[[int], Any], progress: Progress,
            counter: _Counter, mount_candidates: Iterable[str], sources: BlobSources | None,
            slot_hosts: tuple[str, ...] = (), verify: bool = True) -> None:
    """Put one blob into `dst` unless it is there: HEAD, then mount or upload (holding the
    transfer slots of `dst` and of `slot_hosts`, the source registries read from). `verify`
    hashes what is sent (needless for store blobs, which were verified when stored)."""
    if mt.is_nondistributable(desc.media_type) and desc.urls:
        counter.add("skipped")      # foreign layers stay where their URLs point
        return
    if dst.blob_size(desc.digest) is not None:
        counter.add("skipped")
        progress.task(_label(desc.digest), desc.size).finish("layer already exists")
        if sources is not None:
            sources.add(desc.digest, dst.host, dst.name)
        return
    with dst.client.host_slot(dst.host, *slot_hosts):
        task = progress.task(_label(desc.digest), desc.size)
        outcome = dst.upload_blob(desc.digest, desc.size, open_source, mount_from=list(mount_candidates),
                                  verify=verify, on_progress=task.advance)
    if outcome == "mounted":
        counter.add("mounted")
        task.finish("mounted")
    elif outcome == "exists":
        counter.add("skipped")
        task.finish("layer already exists")
    else:
        counter.add("transferred", desc.size)
        task.finish("pushed")
    if sources is not None:
        sources.add(desc.digest, dst.host, dst.name)


# Indexes of indexes exist (an index per platform family, say), a few levels at most. Deeper
# nesting is refused with an error; it would otherwise only serve to exhaust the stack.
MAX_INDEX_DEPTH = 32


def _children(store_or_repo_reader: Callable[[Descriptor], bytes], data: bytes, media_type: str,
              where: str) -> list[tuple[Descriptor, bytes, Any]]:
    """The manifests below an index, children first: (descriptor, bytes, document), each digest
    once. Manifests are read once per digest however often the DAG lists them (a shared child
    listed twice per level would otherwise be read 2^depth times), without recursion."""
    doc = parse_manifest(data, media_type, where=where)
    out: list[tuple[Descriptor, bytes, Any]] = []
    done: set[str] = set()
    # Depth-first, post-order by hand: (index, its entries left to visit, where, its descriptor, its bytes).
    stack: list[tuple[Any, Iterator[Descriptor], str, Descriptor | None, bytes]] = []
    if isinstance(doc, Index):
        stack.append((doc, iter(doc.manifests), where, None, data))
    on_path: set[str] = set()
    while stack:
        idx, entries, here, desc, idata = stack[-1]
        child = next(entries, None)
        if child is None:
            stack.pop()
            if desc is not None:
                on_path.discard(desc.digest)
                done.add(desc.digest)
                out.append((desc, idata, idx))
            continue
        if not mt.is_manifest(child.media_type) or child.digest in done:
            continue
        cwhere = f"{where}@{child.digest}"
        if child.digest in on_path:
            raise RegistryError(f"{cwhere}: the index lists itself through its children; refusing it")
        if len(stack) > MAX_INDEX_DEPTH:
            raise RegistryError(f"{cwhere}: indexes nested more than {MAX_INDEX_DEPTH} levels deep; refusing it")
        cdata = store_or_repo_reader(child)
        cdoc = parse_manifest(cdata, child.media_type, where=cwhere)
        if isinstance(cdoc, Index):
            on_path.add(child.digest)
            stack.append((cdoc, iter(cdoc.manifests), cwhere, child, cdata))
        else:
            done.add(child.digest)
            out.append((child, cdata, cdoc))
    return out


def push(client: RegistryClient, store: Any, src: str, dest: str | Reference | None = None, *,
         progress: Progress | None = None) -> TransferResult:
    """Push a locally tagged image (manifest or index, with everything it lists) to a registry.

    `src` is a name in the store (`NAME[:TAG]`); `dest` defaults to the same reference. Blobs the
    destination has are skipped, blobs known in another repository of the same registry are
    mounted, the rest uploaded; then manifests, children before the index, the top one by tag.
    """
    progress = progress or Progress()
    top = store.resolve(src)
    dst_ref = _as_reference(dest if dest is not None else src)
    dst = client.repository(dst_ref.registry, dst_ref.repository)
    top_data = store.read_blob(top.digest)

    def local(desc: Descriptor) -> bytes:
        if not store.has_blob(desc.digest):
            raise NotFoundError(f"{src}: the store lacks manifest {desc.digest} that the index lists "
                                f"(pull it with --all-platforms, or push a single-platform image)")
        return store.read_blob(desc.digest)

    manifests = _children(local, top_data, top.media_type, src)
    top_doc = parse_manifest(top_data, top.media_type, where=src)
    images = _images(manifests, top_doc)
    blobs = _image_blobs(images)
    sources = BlobSources(store.root)
    counter = _Counter()
    opened: list = []
    progress.message(f"pushing {src} to {dst_ref}")
    try:
        jobs = [lambda d=d: _upload(dst, d, _store_source(store, d.digest, opened), progress, counter,
                                    sources.repositories_on(d.digest, dst.host), sources, verify=False)
                for d in blobs.values()]
        _run_parallel(jobs, client.options.max_per_host)
    finally:
        for f in opened:
            f.close()
    for desc, data, _ in manifests:
        dst.put_manifest(desc.digest, data, desc.media_type)
    tag_or_digest = dst_ref.tag or top.digest
    digest = dst.put_manifest(tag_or_digest, top_data, top.media_type)
    progress.message(f"{dst_ref}: digest: {digest} size: {len(top_data)}")
    return counter.fill(TransferResult(reference=str(dst_ref), digest=digest, media_type=top.media_type,
                                       size=len(top_data),
                                       platforms=[_config_platform(store, m) for m in images],
                                       source_digest=top.digest))


# ---- copy ------------------------------------------------------------------------------------

def copy(client: RegistryClient, src: str | Reference, dest: str | Reference, *,
         all_platforms: bool = False, platform: str | Platform | None = None,
         progress: Progress | None = None) -> TransferResult:
    """Copy an image from one registry (or repository) to another, streaming blobs through.

    From an index, only the manifest for `platform` (default: this host's) is copied unless
    `all_platforms`, which copies the index and everything it lists. Within one registry blobs are
    mounted from the source repository; across registries each is streamed from GET into the
    upload, hashed on the way (a mismatch commits nothing).
    """
    progress = progress or Progress()
    s, d = _as_reference(src), _as_reference(dest)
    srepo = client.repository(s.registry, s.repository)
    drepo = client.repository(d.registry, d.repository)
    data, media_type, digest = _fetch_manifest(srepo, s.identifier)
    source_digest = digest
    doc = parse_manifest(data, media_type, where=f"manifest {s}")

    def remote(desc: Descriptor) -> bytes:
        return _fetch_manifest(srepo, desc)[0]

    if isinstance(doc, Index) and not all_platforms:
        child = doc.select(_as_platform(platform), where=str(s))
        data, media_type, digest = _fetch_manifest(srepo, child)
        doc = parse_manifest(data, media_type, where=f"manifest {s}@{digest}")
    manifests = _children(remote, data, media_type, str(s))
    images = _images(manifests, doc)
    blobs = _image_blobs(images)
    counter = _Counter()
    same_registry = s.registry == d.registry
    progress.message(f"copying {s} to {d}")

    def job(b: Descriptor) -> None:
        def source(offset: int) -> Any:
            return srepo.iter_blob(b.digest, b.size, offset=offset)
        if same_registry:
            _upload(drepo, b, source, progress, counter, [s.repository], None)
        else:
            _upload(drepo, b, source, progress, counter, [], None, slot_hosts=(s.registry,))

    _run_parallel([lambda b=b: job(b) for b in blobs.values()], client.options.max_per_host)
    for desc, mdata, _ in manifests:
        drepo.put_manifest(desc.digest, mdata, desc.media_type)
    out = drepo.put_manifest(d.tag or digest, data, media_type)
    progress.message(f"{d}: digest: {out} size: {len(data)}")
    return counter.fill(TransferResult(reference=str(d), digest=out, media_type=media_type, size=len(data),
                                       platforms=[_remote_platform(srepo, m) for m in images],
                                       source_digest=source_digest))
