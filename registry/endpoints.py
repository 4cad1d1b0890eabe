"""The local Store and a registry repository as image sources and sinks (see registry.image).

`StoreEndpoint` reads tagged images from the store and receives blobs into it (resuming partial
downloads, verifying every byte, under a gc lease); `RemoteEndpoint` reads a repository and
receives blobs into it (HEAD, cross-repository mount, upload). Both remember, through the Store's
`BlobSources`, which registry repositories hold a blob, so that a later push can mount it.
"""
from __future__ import annotations

import os
import queue
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from . import mediatypes as mt
from .digest import parse_digest
from .errors import DigestMismatchError, NotFoundError, RegistryError
from .image import RawManifest
from .manifest import MAX_MANIFEST_SIZE, Descriptor, ImageConfig


def label(digest: str) -> str:
    """The short form of a digest shown in progress lines."""
    return parse_digest(digest).hex[:12]


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


# ---- reading into buffers -------------------------------------------------------------------------

# Blobs at least this big are read on a helper thread, a few buffers ahead, while the store
# hashes and writes, so that network and disk overlap even for an image of one big layer.
PREFETCH_MIN = 8 << 20
BUFFER_SIZE = 1 << 20
PREFETCH_DEPTH = 4      # buffers per download: bounds the memory a download uses


class BufferPool:
    """Page-aligned buffers (for O_DIRECT writes) kept across the blobs of a transfer: a fresh
    buffer costs a page fault per page on first touch, a reused one nothing."""

    def __init__(self, size: int = BUFFER_SIZE) -> None:
        self.size = size
        self._free: list[memoryview] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> list[memoryview]:
        from .fsutil import aligned_buffer
        with self._lock:
            got, self._free = self._free[:n], self._free[n:]
        return got + [aligned_buffer(self.size) for _ in range(n - len(got))]

    def give(self, bufs: list[memoryview]) -> None:
        with self._lock:
            self._free.extend(bufs)


def filled(readinto: Callable[[memoryview], int], bufs: list[memoryview]) -> Iterator[memoryview]:
    """Views of `bufs` filled by `readinto(buffer)` (which fills it whole unless the data ends;
    0 at the end), in order. Each view is valid until the next one is asked for. With more than
    one buffer the reading runs on a helper thread, up to len(bufs) - 1 buffers ahead; its
    errors are re-raised here, and stopping early (an exception in the consumer) stops it."""
    if len(bufs) == 1:
        buf = bufs[0]
        while n := readinto(buf):
            yield buf[:n]
            if n < len(buf):
                return
        return
    free: queue.SimpleQueue = queue.SimpleQueue()
    full: queue.SimpleQueue = queue.SimpleQueue()
    for b in bufs:
        free.put(b)
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                buf = free.get()
                if buf is None or stop.is_set():
                    return
                n = readinto(buf)
                full.put((buf, n))
                if n < len(buf):
                    return
        except BaseException as exc:   # handed to the consumer, which re-raises it
            full.put((None, exc))

    t = threading.Thread(target=produce, name="pybuild-prefetch", daemon=True)
    t.start()
    try:
        while True:
            buf, n = full.get()
            if buf is None:
                raise n
            if n:
                yield buf[:n]
            if n < len(buf):
                return
            free.put(buf)
    finally:
        stop.set()
        free.put(None)
        t.join()


def iter_chunks(stream: Any, size: int = 1 << 20) -> Iterator[bytes]:
    """Chunks of a file (closed at the end) or the items of an iterable of bytes."""
    if hasattr(stream, "read"):
        try:
            while chunk := stream.read(size):
                yield chunk
        finally:
            stream.close()
    else:
        yield from stream


# ---- the local store -------------------------------------------------------------------------------

class StoreEndpoint:
    """The local Store as an image source (tagged names, digests) and sink (tags)."""

    verified = True
    ordered = False           # a lease protects what is written before the tag: order is free
    host: str | None = None
    repository: str | None = None

    def __init__(self, store: Any) -> None:
        self.store = store
        self.name = str(store.root)
        self.sources = BlobSources(store.root)
        self._opened: list = []
        self._opened_lock = threading.Lock()
        self._buffers = BufferPool()

    # -- source --
    def read_manifest(self, ref: "str | Descriptor") -> RawManifest:
        store = self.store
        if isinstance(ref, Descriptor):
            if not store.has_blob(ref.digest):
                raise NotFoundError(f"the store lacks manifest {ref.digest}"
                                    + (f" ({ref.platform})" if ref.platform else "")
                                    + " that the index lists (a pull keeps only the platforms it was asked "
                                    "for: pull that one with --platform, or all with --all-platforms)")
            # An index (perhaps a hostile registry's) may name any stored blob as a manifest, a
            # layer of gigabytes too: read only what can be the manifest it describes.
            size = store.blob_size(ref.digest)
            if size != ref.size or size > MAX_MANIFEST_SIZE:
                raise RegistryError(f"manifest {ref.digest}: the store's blob of that digest is {size} bytes, the "
                                    f"index says {ref.size} (a manifest is at most {MAX_MANIFEST_SIZE}); "
                                    "refusing the index")
            data = store.read_blob(ref.digest)
            return RawManifest.parse(data, ref.media_type, ref.digest, where=f"manifest {ref.digest}")
        desc = store.resolve(ref)
        data = store.read_blob(desc.digest)
        return RawManifest.parse(data, desc.media_type, desc.digest, where=str(ref))

    def open_blob(self, desc: Descriptor, offset: int = 0) -> Any:
        f = self.store.open_blob(desc.digest)
        with self._opened_lock:
            self._opened.append(f)
        if offset:
            f.seek(offset)
        return f

    def close(self) -> None:
        """Close the blob files handed out (an upload may leave one open after a failure)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for f in opened:
            f.close()

    def read_config(self, digest: str) -> ImageConfig:
        return self.store.get_config(digest)

    def slot(self) -> AbstractContextManager:
        return nullcontext()

    def mount_candidates(self, digest: str, host: str) -> list[str]:
        return self.sources.repositories_on(digest, host)

    def remember(self, digest: str, host: str, repository: str) -> None:
        self.sources.add(digest, host, repository)

    # -- sink --
    @contextmanager
    def session(self) -> Iterator[None]:
        """Under a gc lease; blob directory entries are fsynced once for the batch (before the
        tag is written, see Store.blob_writer's defer_sync, and at the end)."""
        try:
            with self.store.lease():
                yield
        finally:
            self.store.sync()

    def has_blob(self, digest: str) -> bool:
        """True when the store holds `digest` (inside session(): also kept from gc by the lease)."""
        return self.store.has_blob(digest)

    def tagged(self, tag: str) -> str | None:
        """The digest `tag` names in the store now (None when it names nothing)."""
        desc = self.store.lookup(tag)
        return desc.digest if desc is not None else None

    def receive_blob(self, desc: Descriptor, src: Any, progress: Any) -> tuple[str, int]:
        """Stream one blob into the store, resuming a partial download left by an earlier attempt
        (in this process or a killed one). Content that fails verification is never stored; it is
        fetched once more from the start (a corrupt leftover or a transient fault) before the
        mismatch is reported."""
        store = self.store
        if store.has_blob(desc.digest):
            progress.task(label(desc.digest), desc.size).finish("already exists")
            return "skipped", 0
        with src.slot():
            task = progress.task(label(desc.digest), desc.size)
            for attempt in range(2):
                resumed = 0
                try:
                    with store.blob_writer(desc.digest, desc.size, media_type=desc.media_type,
                                           resumable=True, defer_sync=True) as w:
                        resumed = w.offset
                        task.advance(resumed)
                        self._copy_into(w, src.open_blob(desc, w.offset), desc.size - w.offset, task)
                    break
                except DigestMismatchError as exc:
                    task.advance(-desc.size)
                    if attempt:
                        raise DigestMismatchError(f"pulling blob {desc.digest} from {src.name}: {exc}") from None
                    progress.message(f"{label(desc.digest)}: content did not match its digest, downloading again")
        task.finish("downloaded")
        return "transferred", desc.size - resumed

    def _copy_into(self, w: Any, stream: Any, remaining: int, task: Any) -> None:
        """Write a blob source's bytes into a blob writer. A source that can `readinto` (a
        registry's BlobReader, a file) fills reused page-aligned buffers, which the writer puts
        on disk without the page cache (BlobWriter.write_aligned); other sources give chunks."""
        if not hasattr(stream, "readinto"):
            for chunk in iter_chunks(stream):
                w.write(chunk)
                task.advance(len(chunk))
            return
        bufs = self._buffers.take(PREFETCH_DEPTH if remaining >= PREFETCH_MIN else 1)
        try:
            for view in filled(stream.readinto, bufs):
                w.write_aligned(view)
                task.advance(len(view))
        finally:
            stream.close()
            self._buffers.give(bufs)

    def put_manifest(self, raw: RawManifest) -> None:
        if not self.store.has_blob(raw.digest):
            self.store.put_blob(raw.data, raw.media_type, expected_digest=raw.digest, defer_sync=True)

    def finish(self, top: RawManifest, tag: str | None) -> str:
        self.put_manifest(top)
        if tag:
            self.store.tag(tag, Descriptor(top.media_type, top.digest, len(top.data)))
        return top.digest


# ---- a registry repository -------------------------------------------------------------------------

class RemoteEndpoint:
    """One repository of a registry (a registry.client.Repository) as image source and sink."""

    verified = False
    ordered = True            # a registry must never refer to content it lacks

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self.client = repo.client
        self.host: str | None = repo.host
        self.repository: str | None = repo.name
        self.name = repo.ref

    # -- source --
    def read_manifest(self, ref: "str | Descriptor") -> RawManifest:
        repo = self.repo
        if isinstance(ref, Descriptor):
            m = repo.get_manifest(ref.digest)
            if len(m.data) != ref.size:
                raise RegistryError(f"manifest {repo.ref}@{ref.digest}: {len(m.data)} bytes, "
                                    f"the index says {ref.size}")
            return RawManifest.parse(m.data, ref.media_type or m.media_type, m.digest,
                                     where=f"manifest {repo.ref}@{m.digest}")
        m = repo.get_manifest(ref)
        sep = "@" if ":" in ref else ":"
        return RawManifest.parse(m.data, m.media_type, m.digest, where=f"manifest {repo.ref}{sep}{ref}")

    def open_blob(self, desc: Descriptor, offset: int = 0) -> Any:
        return self.repo.blob_reader(desc.digest, desc.size, offset)

    def read_config(self, digest: str) -> ImageConfig:
        return ImageConfig.from_bytes(self.repo.fetch_blob(digest))

    def slot(self) -> AbstractContextManager:
        return self.client.host_slot(self.repo.host)

    def mount_candidates(self, digest: str, host: str) -> list[str]:
        return [self.repo.name] if host == self.repo.host else []

    def remember(self, digest: str, host: str, repository: str) -> None:
        pass

    # -- sink --
    def session(self) -> AbstractContextManager:
        return nullcontext()

    def receive_blob(self, desc: Descriptor, src: Any, progress: Any) -> tuple[str, int]:
        """Put one blob into the repository unless it is there: HEAD, then mount or upload
        (holding the transfer slots of this registry and of a source registry read from).
        What is sent is hashed unless the source verified its blobs when it stored them."""
        dst = self.repo
        if mt.is_nondistributable(desc.media_type) and desc.urls:
            return "foreign", 0       # foreign layers stay where their URLs point
        if dst.blob_size(desc.digest) is not None:
            progress.task(label(desc.digest), desc.size).finish("layer already exists")
            return "skipped", 0
        src_host = getattr(src, "host", None)
        same_client = getattr(src, "client", None) is self.client
        slot_hosts = (src_host,) if src_host and src_host != dst.host and same_client else ()
        with self.client.host_slot(dst.host, *slot_hosts):
            task = progress.task(label(desc.digest), desc.size)
            outcome = dst.upload_blob(desc.digest, desc.size, lambda offset: src.open_blob(desc, offset),
                                      mount_from=list(src.mount_candidates(desc.digest, dst.host)),
                                      verify=not src.verified, on_progress=task.advance)
        if outcome == "mounted":
            task.finish("mounted")
            return "mounted", 0
        if outcome == "exists":
            task.finish("layer already exists")
            return "skipped", 0
        task.finish("pushed")
        return "transferred", desc.size

    def put_manifest(self, raw: RawManifest) -> None:
        self.repo.put_manifest(raw.digest, raw.data, raw.media_type)

    def finish(self, top: RawManifest, tag: str | None) -> str:
        return self.repo.put_manifest(tag or top.digest, top.data, top.media_type)
