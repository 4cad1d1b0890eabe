"""Layers of a build: committing changes to the store and materializing layers as directories.

A :class:`LayerRef` is a stored, compressed blob plus its diffID. ``commit_*`` produce one in a
single streaming pass (tar -> diffID hash + compression + blob hash -> store), or return None
when the change is empty. :meth:`LayerMaker.dirs` extracts layers once for overlay mounts.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from registry.manifest import Descriptor
from registry.store import Store

from .rootview import RootView
from .snapshot import LayerDirs, is_opaque

if TYPE_CHECKING:
    from registry.compression import Compression
    from registry.layer import TarEmitter


@dataclass
class LayerRef:
    """A layer in the store: its blob descriptor and the digest of its uncompressed tar."""

    diff_id: str
    descriptor: Descriptor

    def to_dict(self) -> dict:
        return {"diff_id": self.diff_id, **self.descriptor.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerRef":
        d = dict(d)
        diff_id = d.pop("diff_id")
        return cls(diff_id, Descriptor.from_dict(d, "cached layer"))


class LayerMaker:
    """Writes layers into ``store`` and keeps their extracted forms under the pybuild root."""

    def __init__(self, store: Store, root: Path, compression: Compression,
                 source_date_epoch: int | None = None):
        self.store = store
        self.root = Path(root)
        self.compression = compression
        self.source_date_epoch = source_date_epoch
        self.layer_dirs = LayerDirs(self.root)

    def commit_tar(self, write: Callable[[TarEmitter], None]) -> LayerRef | None:
        """Build a layer from entries emitted by ``write``; None when it emitted nothing."""
        from registry.layer import TarEmitter

        def body(sink) -> int:
            em = TarEmitter(sink, source_date_epoch=self.source_date_epoch)
            write(em)
            em.close()
            return em.entries
        return self._commit(body)

    def commit_upper(self, upper: Path) -> LayerRef | None:
        """Turn an overlay upper directory into a layer (None if it holds no change).

        On success the directory becomes the layer's extracted form (no re-extraction later).
        """
        if not any(os.scandir(upper)):
            return None
        from registry.layer import write_overlay_upper_tar
        ref = self._commit(lambda sink: write_overlay_upper_tar(
            upper, sink, source_date_epoch=self.source_date_epoch))
        if ref is not None:
            self.layer_dirs.adopt(ref.diff_id, upper)
        return ref

    def _commit(self, body: Callable) -> LayerRef | None:
        # The tar and compression modules are the build's: a container's `run --rm` and exit
        # command come here only for prune_upper, without them.
        from registry.layer import LayerWriter
        w = self.store.blob_writer(media_type=self.compression.media_type())
        try:
            with LayerWriter(w, self.compression) as lw:
                entries = body(lw)
            if not entries:
                w.abort()
                return None
            desc = w.commit()
        except BaseException:
            w.abort()
            raise
        res = lw.result
        return LayerRef(res.diff_id, Descriptor(res.media_type, desc.digest, res.size))

    def dirs(self, layers: list[LayerRef]) -> list[Path]:
        """Extracted directories of ``layers`` (bottom first), extracting the missing ones."""
        out = []
        for layer in layers:
            digest = layer.descriptor.digest
            out.append(self.layer_dirs.ensure(
                layer.diff_id, lambda d=digest: self.store.open_blob(d)))
        return out

    def view(self, layers: list[LayerRef]) -> RootView:
        """A read-only merged view of ``layers``."""
        return RootView(self.dirs(layers))


def prune_upper(upper: Path, lowers: RootView) -> None:
    """Drop directories from an overlay upper dir that carry no change.

    Overlay copies a directory up when anything inside it is created, even a mount point that
    the sandbox removes again; an empty copied-up directory whose owner, mode and mtime equal
    the lower one's is no change. (The sandbox puts back the mtime of the parents of its
    mount-point stubs, so a directory whose only change is its time, `RUN touch /etc`, is
    kept, as in BuildKit.)
    """
    for dirpath, dirnames, filenames in os.walk(upper, topdown=False):
        if dirpath == str(upper) or filenames or os.listdir(dirpath):
            continue
        if is_opaque(dirpath):
            continue
        rel = "/" + os.path.relpath(dirpath, upper)
        low = lowers.stat(rel, follow=False)
        if low is None or not stat.S_ISDIR(low[1].st_mode):
            continue
        st = os.lstat(dirpath)
        if (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == \
                (low[1].st_mode, low[1].st_uid, low[1].st_gid, low[1].st_mtime_ns):
            os.rmdir(dirpath)
