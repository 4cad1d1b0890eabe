"""Layers: one streaming pass from a tar byte stream to a stored blob, and overlay uppers as layers.

`LayerWriter` takes the uncompressed tar through write() and, in the same pass, hashes it (the
diffID), compresses it, hashes the compressed bytes (the blob digest) and hands them to a sink
(a store blob writer, any binary file, or a callable). Hashing the uncompressed stream runs in
a helper thread while the main thread compresses: both release the GIL, so on two cores the
diffID is nearly free.

Tar production lives in registry/tarwriter.py (re-exported here); `write_overlay_upper_tar`
turns an overlayfs upper directory into an OCI layer (whiteouts, opaque directories).
"""
from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from registry.compression import Compression
from registry.errors import RegistryError
from registry.tarwriter import (
    DEFAULT_XATTRS,
    EntryMeta,
    TarEmitter,
    TarWriteError,
    emit_tree,
    write_tree_tar,
)

if TYPE_CHECKING:
    from registry.manifest import Descriptor

__all__ = [
    "LayerResult", "LayerWriter", "LayerError", "TarEmitter", "EntryMeta", "TarWriteError",
    "write_tree_tar", "emit_tree", "write_overlay_upper_tar", "store_layer", "OVERLAY_OPAQUE_XATTRS",
]

_CHUNK = 1 << 20
# Below this, handing a chunk to the hashing thread costs more than hashing it here.
_THREAD_MIN = 64 << 10

OVERLAY_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_OVERLAY_UNSUPPORTED = {
    "trusted.overlay.redirect": "redirect_dir=off", "user.overlay.redirect": "redirect_dir=off",
    "trusted.overlay.metacopy": "metacopy=off", "user.overlay.metacopy": "metacopy=off",
}


class LayerError(RegistryError):
    """A layer could not be written or converted."""


@dataclass(frozen=True)
class LayerResult:
    """What one LayerWriter pass produced.

    diff_id: sha256 of the uncompressed tar (goes in the image config's rootfs.diff_ids);
    digest/size: of the compressed blob (go in the manifest's layer descriptor);
    media_type: the layer media type matching the compression;
    uncompressed_size: bytes of tar written.
    """

    diff_id: str
    digest: str
    size: int
    media_type: str
    uncompressed_size: int

    def descriptor(self) -> "Descriptor":
        """The manifest layer descriptor of the blob."""
        from registry.manifest import Descriptor

        return Descriptor(self.media_type, self.digest, self.size)


class _HashThread:
    """One persistent worker that runs hash updates off the main thread, one chunk at a time."""

    def __init__(self, h: "hashlib._Hash") -> None:
        self._h = h
        self._cv = threading.Condition()
        self._job: bytes | None = None
        self._stop = False
        self._t = threading.Thread(target=self._run, name="diffid-hash", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._stop:
                    self._cv.wait()
                if self._job is None:
                    return
                job = self._job
            self._h.update(job)
            with self._cv:
                self._job = None
                self._cv.notify_all()

    def submit(self, data: bytes) -> None:
        with self._cv:
            while self._job is not None:
                self._cv.wait()
            self._job = data

            self._cv.notify_all()

    def wait(self) -> None:
        with self._cv:
            while self._job is not None:
                self._cv.wait()

    def stop(self) -> None:
        with self._cv:
            while self._job is not None:
                self._cv.wait()
            self._stop = True
            self._cv.notify_all()
        self._t.join()


class LayerWriter:
    """A writable binary stream: tar bytes in, compressed blob out to `sink`, hashes on the way.

    `sink` is an object with write(bytes) (a store blob writer or a file) or a callable taking
    bytes. close() (or leaving a `with` block without error) finishes the stream and returns
    the LayerResult; the sink itself is neither closed nor committed here.

        with store.blob_writer() as w:
            with LayerWriter(w, Compression("gzip")) as lw:
                write_tree_tar(rootfs, lw)
            result = lw.result
    """

    def __init__(self, sink: Any, compression: Compression | None = None, *,
                 docker_media_types: bool = False, threaded: bool = True) -> None:
        if hasattr(sink, "write"):
            self._sink: Callable[[bytes], Any] = sink.write
        elif callable(sink):
            self._sink = sink
        else:
            raise TypeError(f"layer sink must have write() or be callable, not {type(sink).__name__}")
        self.compression = compression or Compression()
        self.media_type = self.compression.media_type(docker=docker_media_types)
        self._compressor = self.compression.compressor()
        self._diff = hashlib.sha256()
        self._blob = hashlib.sha256()
        self._size = 0
        self._usize = 0
        self._buf = bytearray()
        self._hasher = _HashThread(self._diff) if threaded else None
        self.result: LayerResult | None = None

    # io-like surface so tarfile and shutil.copyfileobj accept it
    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self.result is not None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Accept more of the uncompressed tar; returns the number of bytes taken."""
        if self.result is not None:
            raise ValueError("write to a closed LayerWriter")
        n = len(data)
        if not self._buf and n >= _CHUNK:
            self._process(bytes(data))
            return n
        self._buf += data
        if len(self._buf) >= _CHUNK:
            chunk = bytes(self._buf)
            self._buf.clear()
            self._process(chunk)
        return n

    def _out(self, data: bytes) -> None:
        if data:
            self._blob.update(data)
            self._size += len(data)
            self._sink(data)

    def _process(self, chunk: bytes) -> None:
        self._usize += len(chunk)
        if self._hasher is not None and len(chunk) >= _THREAD_MIN:
            self._hasher.submit(chunk)
        else:
            if self._hasher is not None:
                self._hasher.wait()
            self._diff.update(chunk)
        self._out(self._compressor.compress(chunk))

    def flush(self) -> None:
        """No-op: data is compressed in 1 MiB chunks and flushed when the layer is closed."""

    def close(self) -> LayerResult:
        """Finish compression, write the tail to the sink and return the LayerResult (idempotent)."""
        if self.result is not None:
            return self.result
        if self._buf:
            chunk = bytes(self._buf)
            self._buf.clear()
            self._process(chunk)
        self._out(self._compressor.flush())
        if self._hasher is not None:
            self._hasher.stop()
        self.result = LayerResult(
            diff_id="sha256:" + self._diff.hexdigest(),
            digest="sha256:" + self._blob.hexdigest(),
            size=self._size,
            media_type=self.media_type,
            uncompressed_size=self._usize,
        )
        return self.result

    def abort(self) -> None:
        """Stop the helper thread without producing a result (the caller discards the sink)."""
        if self._hasher is not None:
            self._hasher.stop()
            self._hasher = None

    def __enter__(self) -> "LayerWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.close()
        else:
            self.abort()


def store_layer(store: Any, write_tar: Callable[[LayerWriter], Any], compression: Compression | None = None,
                *, docker_media_types: bool = False) -> LayerResult:
    """Produce a layer straight into `store` (anything with `blob_writer(media_type=...)`).

    `write_tar(lw)` writes the uncompressed tar into the LayerWriter (e.g.
    `lambda lw: write_tree_tar(rootfs, lw)`). The blob is committed only if everything
    succeeded; on an exception nothing is stored.
    """
    compression = compression or Compression()
    with store.blob_writer(media_type=compression.media_type(docker=docker_media_types)) as w:
        with LayerWriter(w, compression, docker_media_types=docker_media_types) as lw:
            write_tar(lw)
    assert lw.result is not None
    return lw.result


def _overlay_xattr(path: str, names: Iterable[str]) -> bytes | None:
    for n in names:
        try:
            return os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
    return None


def write_overlay_upper_tar(upper_dir: str | os.PathLike, out: Any, *,
                            source_date_epoch: int | None = None,
                            xattrs: Iterable[str] = DEFAULT_XATTRS,
                            close: bool = True) -> int:
    """Write an overlayfs upper directory as an OCI layer tar to `out`; return the entry count.

    A 0/0 character device (overlay's whiteout) becomes an empty `.wh.NAME` file; a directory
    with `trusted.overlay.opaque=y` (or `user.overlay.opaque` for userxattr mounts) becomes the
    directory entry followed by `.wh..wh..opq`. Overlay's own xattrs are never copied. Uppers
    made with redirect_dir or metacopy (content living in a lower layer) are refused: mount
    with redirect_dir=off,metacopy=off.
    """
    upper = os.fspath(upper_dir)
    em = TarEmitter(out, source_date_epoch=source_date_epoch, xattrs=xattrs)
    wh_time = 0 if source_date_epoch is None else min(0, source_date_epoch)

    def check(path: str, rel: str) -> None:
        for name, option in _OVERLAY_UNSUPPORTED.items():
            try:
                os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
            raise LayerError(
                f"overlay upper entry {rel!r} has {name}: its content lives in a lower layer; "
                f"mount the overlay with {option}")

    stack = [(iter(_sorted(upper)), "")]
    while stack:
        it, rel = stack[-1]
        e = next(it, None)
        if e is None:
            stack.pop()
            continue
        crel = f"{rel}/{e.name}" if rel else e.name
        st = e.stat(follow_symlinks=False)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            em.add_whiteout(crel, wh_time)
            continue
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            check(e.path, crel)
        em.add_path(crel, e.path, st=st)
        if stat.S_ISDIR(st.st_mode):
            if _overlay_xattr(e.path, OVERLAY_OPAQUE_XATTRS) == b"y":
                em.add_opaque(crel, wh_time)
            stack.append((iter(_sorted(e.path)), crel))
    if close:
        em.close()
    return em.entries


def _sorted(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        entries = list(it)
    entries.sort(key=lambda e: os.fsencode(e.name))
    return entries
