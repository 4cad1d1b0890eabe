"""Layers: one streaming pass from a tar byte stream to a stored blob, and overlay uppers as layers.

`LayerWriter` takes the uncompressed tar through write() and, in the same pass, hashes it (the
diffID), compresses it, hashes the compressed bytes (the blob digest) and hands them to a sink
(a store blob writer, any binary file, or a callable). Compression, the blob hash and the sink
writes run in a helper thread while the producer's thread writes the tar and hashes it: ISA-L,
zstd and hashlib release the GIL, so the stages overlap on two cores.

Tar production lives in registry/tarwriter.py (re-exported here); `write_overlay_upper_tar`
turns an overlayfs upper directory into an OCI layer (whiteouts, opaque directories).
"""
from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from registry.compression import Compression
from registry.errors import RegistryError
from registry.fsutil import overlay_opaque_xattr
from registry.tarwriter import (
    DEFAULT_XATTRS,
    EntryMeta,
    TarEmitter,
    TarWriteError,
    emit_tree,
    walk_sorted,
    write_tree_tar,
)

if TYPE_CHECKING:
    from registry.manifest import Descriptor

__all__ = [
    "LayerResult", "LayerWriter", "LayerError", "TarEmitter", "EntryMeta", "TarWriteError",
    "write_tree_tar", "emit_tree", "write_overlay_upper_tar", "store_layer", "OVERLAY_OPAQUE_XATTRS",
]

_CHUNK = 1 << 20

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


class _CompressThread:
    """Compresses, hashes and writes out chunks in order, off the producer's thread.

    The producer (tar writing and diffID hashing) and this stage run side by side; ISA-L, zstd
    and hashlib release the GIL, so on two cores both stay busy. The bounded queue keeps memory
    at a few MiB. An error here (a full disk in the sink) is raised to the producer on its next
    call.
    """

    def __init__(self, work: Callable[[bytes], None]) -> None:
        self._work = work
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="layer-compress", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            chunk = self._q.get()
            if chunk is None:
                return
            if self.error is None:
                try:
                    self._work(chunk)
                except BaseException as e:  # handed to the producer thread
                    self.error = e

    def put(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._q.put(chunk)

    def finish(self) -> None:
        """Wait until every chunk is processed; re-raise a worker error."""
        self._q.put(None)
        self._t.join()
        if self.error is not None:
            raise self.error


class LayerWriter:
    """A writable binary stream: tar bytes in, compressed blob out to `sink`, hashes on the way.

    `sink` is an object with write(bytes) (a store blob writer or a file) or a callable taking
    bytes. close() (or leaving a `with` block without error) finishes the stream and returns
    the LayerResult; the sink itself is neither closed nor committed here. With `threaded`
    (the default) compression and sink writes run in a helper thread once the layer passes
    1 MiB; the sink is then called from that thread, one call at a time, in order.

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
        self._threaded = threaded
        self._worker: _CompressThread | None = None
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

    def _compress(self, chunk: bytes) -> None:
        self._out(self._compressor.compress(chunk))

    def _out(self, data: bytes) -> None:
        if data:
            self._blob.update(data)
            self._size += len(data)
            self._sink(data)

    def _process(self, chunk: bytes) -> None:
        self._usize += len(chunk)
        self._diff.update(chunk)
        if self._threaded:
            if self._worker is None:
                self._worker = _CompressThread(self._compress)
            self._worker.put(chunk)
        else:
            self._compress(chunk)

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
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.finish()
        self._out(self._compressor.flush())
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
        if self._worker is not None:
            worker, self._worker = self._worker, None
            try:
                worker.finish()
            except BaseException:
                pass  # the caller is already handling the error that made it abort

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
    with `trusted.overlay.opaque=y` (`user.overlay.opaque` in a user namespace, whose overlay
    mounts use userxattr) becomes the
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

    for crel, path, st in walk_sorted(upper):
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            em.add_whiteout(crel, wh_time)
            continue
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            check(path, crel)
        em.add_path(crel, path, st=st)
        # Only the xattr overlay honoured in this mode: a RUN as root may set user.* xattrs
        # on its files, which a rootful overlay never took for opaque.
        if stat.S_ISDIR(st.st_mode) and _overlay_xattr(path, (overlay_opaque_xattr(),)) == b"y":
            em.add_opaque(crel, wh_time)
    if close:
        em.close()
    return em.entries
