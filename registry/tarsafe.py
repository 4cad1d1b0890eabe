"""Safe extraction of layer tars and other archives: nothing is ever written outside the target.

Every entry name is cleaned: absolute names are taken relative to the target (as a chroot would),
and a name whose `..` climbs above the target is refused with an error naming the entry. Parent
directories are resolved component by component with lstat, following symlinks *inside* the
target only (an absolute or climbing symlink target is re-rooted at the target, exactly as it
would resolve inside the container), so a symlink planted by one entry (or an earlier layer)
can never carry a later entry out. The final component is never followed: an existing entry
there is replaced, files are opened with O_NOFOLLOW|O_EXCL. Hard links must name an existing
non-directory inside the target.

Whiteouts (OCI): `.wh.NAME` removes NAME from the layers below; `.wh..wh..opq` hides the lower
contents of its directory (entries of the same layer stay). In "overlay" mode they are stored
the way overlayfs expects instead (0/0 character device, `trusted.overlay.opaque=y`).

Device nodes are created only when running as root (skipped otherwise, as rootless Docker does);
owners are restored only as root; setuid/setgid/sticky bits are kept (applied after chown, which
clears them). Runs of zeros in file data become holes, so sparse files stay sparse.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections import deque
from dataclasses import dataclass, field
from typing import BinaryIO

from registry.compression import algorithm_for_media_type, open_decompressed
from registry.errors import RegistryError

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_MAX_LINKS = 255
# Deeper trees break recursive tree walkers (shutil.rmtree, os.walk recurse once per level and
# Python stops near 1000 frames); no real image nests anywhere near this.
MAX_DEPTH = 512
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)

WHITEOUT_MODES = ("apply", "overlay", "none")


class ArchiveError(RegistryError):
    """An archive is malformed or has an entry that cannot be extracted."""


class UnsafeArchiveError(ArchiveError):
    """An archive entry tried to reach outside the extraction root (path traversal, link escape)."""


# Go's archive/tar refuses PAX and GNU long-name headers above 1 MiB; so do we, before tarfile
# would read a hostile multi-gigabyte "header" into memory.
MAX_META_HEADER = 1 << 20


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized PAX / GNU long-name headers instead of reading them whole."""

    def _proc_pax(self, tarfile_: tarfile.TarFile):  # type: ignore[no-untyped-def,override]
        self._check_meta_size()
        return super()._proc_pax(tarfile_)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile_: tarfile.TarFile):  # type: ignore[no-untyped-def,override]
        self._check_meta_size()
        return super()._proc_gnulong(tarfile_)  # type: ignore[misc]

    def _check_meta_size(self) -> None:
        if self.size > MAX_META_HEADER:
            raise ArchiveError(f"tar extended header of {self.size} bytes exceeds the "
                               f"{MAX_META_HEADER}-byte limit (hostile or corrupt archive)")


@dataclass
class ExtractStats:
    """What an extraction did: entries applied, file bytes written, whiteouts, skipped devices."""

    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0
    skipped_devices: list[str] = field(default_factory=list)


def apply_layer(blob_stream: BinaryIO, target_dir: str | os.PathLike, media_type: str | None = None, *,
                whiteouts: str = "apply", same_owner: bool | None = None,
                max_bytes: int | None = None) -> ExtractStats:
    """Apply a (compressed or not) layer blob onto `target_dir`, handling OCI whiteouts.

    The compression is detected from the stream's magic bytes; `media_type`, when given, must be
    a layer media type (it is checked, not trusted). `whiteouts="overlay"` stores whiteouts in
    overlayfs form, for a directory that will be an overlay lower layer. `same_owner` (default:
    running as root) restores owners. `max_bytes` bounds the total file data (tar bombs).
    Raises UnsafeArchiveError / ArchiveError naming the entry; nothing outside `target_dir`
    is touched in any case.
    """
    if media_type is not None:
        algorithm_for_media_type(media_type)
    return extract_tar(open_decompressed(blob_stream), target_dir, whiteouts=whiteouts,
                       same_owner=same_owner, max_bytes=max_bytes)


def extract_tar(stream: BinaryIO, target_dir: str | os.PathLike, *, whiteouts: str = "none",
                same_owner: bool | None = None, chown: tuple[int, int] | None = None,
                max_bytes: int | None = None) -> ExtractStats:
    """Extract an uncompressed tar stream safely into `target_dir` (created if missing).

    `whiteouts`: "apply" (layer semantics), "overlay" (store as overlayfs whiteouts) or "none"
    (`.wh.` files are ordinary files, e.g. ADD of an archive). `chown=(uid, gid)` gives every
    entry that owner (ADD --chown). See apply_layer for the rest.
    """
    if whiteouts not in WHITEOUT_MODES:
        raise ValueError(f"whiteouts must be one of {WHITEOUT_MODES}, not {whiteouts!r}")
    os.makedirs(target_dir, exist_ok=True)
    ex = _Extractor(os.path.realpath(target_dir), whiteouts,
                    os.geteuid() == 0 if same_owner is None else same_owner, chown, max_bytes)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2, tarinfo=_BoundedTarInfo) as tf:
            for member in tf:
                try:
                    ex.entry(tf, member)
                except (OSError, ValueError) as e:
                    # ValueError: os functions refusing a value (a NUL in an xattr name, ...).
                    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    raise ArchiveError(f"cannot extract entry {member.name!r} into {target_dir}: "
                                       f"{reason}") from e
    except tarfile.TarError as e:
        raise ArchiveError(f"malformed tar archive after {ex.stats.entries} entries: {e}") from e
    ex.finish()
    return ex.stats


def _clean(name: str, what: str) -> list[str]:
    """Path components of an archive name, relative to the root; `..` above the root is refused."""
    if "\0" in name:
        raise ArchiveError(f"{what} {name!r} contains a NUL byte: corrupt or hostile archive")
    parts: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise UnsafeArchiveError(
                    f"{what} {name!r} climbs out of the extraction root with '..': refusing the archive")
            parts.pop()
        else:
            parts.append(p)
    return parts


class _Extractor:
    def __init__(self, root: str, whiteouts: str, same_owner: bool, chown: tuple[int, int] | None,
                 max_bytes: int | None) -> None:
        self.root = root
        self.whiteouts = whiteouts
        self.same_owner = same_owner or chown is not None
        self.chown = chown
        self.max_bytes = max_bytes
        self.is_root = os.geteuid() == 0
        self.stats = ExtractStats()
        self._dircache: dict[tuple[str, ...], str] = {}
        self._created: set[str] = set()
        self._dirs: dict[str, tuple[int, int]] = {}

    # -- path resolution -----------------------------------------------------------------
    def resolve_dir(self, parts: list[str], entry: str, create: bool = True) -> str | None:
        """The real directory for `parts` inside the root, following symlinks as a chroot would."""
        key = tuple(parts)
        hit = self._dircache.get(key)
        if hit is not None:
            return hit
        # Continue from the parent's resolution when known, and build the path one component
        # at a time: walking from the root with a full join per step made a deep chain of
        # directory entries cost cubic time (minutes for 500 levels).
        parent = self._dircache.get(key[:-1]) if len(key) > 1 else None
        if parent is not None:
            rel = parent[len(self.root):].strip("/").split("/") if parent != self.root else []
            cur = parent
            todo = deque(parts[-1:])
        else:
            rel, cur, todo = [], self.root, deque(parts)
        links = 0
        while todo:
            c = todo.popleft()
            if c in ("", "."):
                continue
            if c == "..":
                if rel:
                    rel.pop()
                    cur = os.path.dirname(cur)
                continue
            p = os.path.join(cur, c)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                if not create:
                    return None
                self._check_depth(len(rel), entry)
                os.mkdir(p, 0o755)
                self._created.add(p)
                rel.append(c)
                cur = p
                continue
            if stat.S_ISDIR(st.st_mode):
                self._check_depth(len(rel), entry)
                rel.append(c)
                cur = p
            elif stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise ArchiveError(f"entry {entry!r}: too many levels of symbolic links under "
                                       f"{'/'.join(rel + [c])!r}")
                target = os.readlink(p)
                if target.startswith("/"):
                    rel, cur = [], self.root
                todo.extendleft(reversed(target.split("/")))
            else:
                raise ArchiveError(f"entry {entry!r}: {'/'.join(rel + [c])!r} is not a directory "
                                   "in the extracted tree")
        self._dircache[key] = cur
        return cur

    @staticmethod
    def _check_depth(depth: int, entry: str) -> None:
        if depth >= MAX_DEPTH:
            raise ArchiveError(f"entry {entry[:200]!r}... is nested more than {MAX_DEPTH} directories deep: "
                               "refusing the archive")

    def _remove(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        # Removing may have turned a cached directory into nothing: resolve afresh.
        self._dircache.clear()

    # -- entries --------------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        # PAX headers can carry NUL bytes, which no file name or link target may contain.
        if "\0" in m.name or "\0" in m.linkname:
            raise ArchiveError(f"entry {m.name!r} has a NUL byte in its name or link target")
        parts = _clean(m.name, "entry")
        if not parts:
            # The root's own entry ("./"): the target's metadata is the caller's business.
            return
        base = parts[-1]
        if self.whiteouts != "none" and base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, m.name)
            return
        parent = self.resolve_dir(parts[:-1], m.name)
        assert parent is not None
        # The parent may come from the cache, unchecked: check the depth it reaches.
        self._check_depth(parent.count("/") - self.root.rstrip("/").count("/"), m.name)
        dst = os.path.join(parent, base)
        self.stats.entries += 1
        try:
            existing = os.lstat(dst)
        except FileNotFoundError:
            existing = None
        keep_dir = existing is not None and m.isdir() and stat.S_ISDIR(existing.st_mode)
        if existing is not None and not keep_dir:
            if m.islnk() and self._link_source(m) == dst:
                raise ArchiveError(f"entry {m.name!r} is a hard link to itself")
            self._remove(dst)
        self.create(tf, m, dst, dir_exists=keep_dir)
        self._created.add(dst)
        if m.isdir():
            self._dircache[tuple(parts)] = dst     # children of this entry resolve from here

    def _link_source(self, m: tarfile.TarInfo) -> str:
        parts = _clean(m.linkname, f"hard link {m.name!r} ->")
        if not parts:
            raise UnsafeArchiveError(f"hard link {m.name!r} points at the extraction root")
        parent = self.resolve_dir(parts[:-1], m.name, create=False)
        if parent is None:
            raise ArchiveError(f"hard link {m.name!r} -> {m.linkname!r}: target does not exist")
        return os.path.join(parent, parts[-1])

    def create(self, tf: tarfile.TarFile, m: tarfile.TarInfo, dst: str, dir_exists: bool) -> None:
        uid, gid = self.chown if self.chown is not None else (m.uid, m.gid)
        mode = m.mode & 0o7777
        if m.isreg():
            self.write_file(tf, m, dst)
        elif m.isdir():
            if not dir_exists:
                os.mkdir(dst, 0o700)
            # Mode and time of directories are set at the end: children are still to come.
            self._dirs[dst] = (mode, int(m.mtime))
            self._own(dst, uid, gid)
            self._xattrs(m, dst)
            return
        elif m.issym():
            if not m.linkname or "\0" in m.linkname:
                raise ArchiveError(f"symlink {m.name!r} has an empty or NUL-containing target")
            os.symlink(m.linkname, dst)
            self._own(dst, uid, gid)
            self._mtime(dst, m.mtime)
            return
        elif m.islnk():
            src = self._link_source(m)
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                raise ArchiveError(f"hard link {m.name!r} -> {m.linkname!r}: target does not exist "
                                   "(it must come earlier in the archive)") from None
            if stat.S_ISDIR(st.st_mode):
                raise ArchiveError(f"hard link {m.name!r} -> {m.linkname!r}: target is a directory")
            os.link(src, dst, follow_symlinks=False)
            return
        elif m.ischr() or m.isblk():
            if not self.is_root:
                self.stats.skipped_devices.append(m.name)
                return
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(dst, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(dst, 0o600)
        else:
            raise ArchiveError(f"entry {m.name!r} has unsupported tar type {m.type!r}")
        self._own(dst, uid, gid)
        os.chmod(dst, mode)
        self._xattrs(m, dst)
        self._mtime(dst, m.mtime)

    def write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, dst: str) -> None:
        if self.max_bytes is not None and self.stats.bytes + m.size > self.max_bytes:
            raise ArchiveError(f"entry {m.name!r} takes the archive past the limit of "
                               f"{self.max_bytes} bytes of file data (tar bomb?)")
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            src = tf.extractfile(m)
            assert src is not None
            if m.sparse:
                # A GNU/PAX sparse member lists its data regions: write just those and leave
                # holes, instead of reading its apparent size of synthesized zeros (a 10 KB
                # archive can announce terabytes). The raw member reader seeks without asking
                # the (unseekable) stream; a map that would need to go back in the archive
                # raises tarfile.StreamError, reported as a malformed archive.
                raw = src.raw
                for offset, size in m.sparse:
                    raw.seek(offset)
                    os.lseek(fd, offset, os.SEEK_SET)
                    left = size
                    while left > 0:
                        chunk = raw.read(min(left, _CHUNK))
                        if not chunk:
                            raise ArchiveError(f"entry {m.name!r} is truncated (sparse data at {offset})")
                        left -= len(chunk)
                        mv = memoryview(chunk)
                        while mv:
                            mv = mv[os.write(fd, mv):]
                os.ftruncate(fd, m.size)
                self.stats.bytes += m.size
                return
            left = m.size
            hole = False
            while left > 0:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    raise ArchiveError(f"entry {m.name!r} is truncated ({m.size - left} of {m.size} bytes)")
                left -= len(chunk)
                if len(chunk) >= 4096 and chunk == _ZEROS[:len(chunk)]:
                    os.lseek(fd, len(chunk), os.SEEK_CUR)
                    hole = True
                else:
                    mv = memoryview(chunk)
                    while mv:
                        mv = mv[os.write(fd, mv):]
            if hole:
                os.ftruncate(fd, m.size)
        finally:
            os.close(fd)
        self.stats.bytes += m.size

    def _own(self, path: str, uid: int, gid: int) -> None:
        if self.same_owner:
            os.lchown(path, uid, gid)

    def _mtime(self, path: str, mtime: float) -> None:
        t = int(mtime)
        os.utime(path, (t, t), follow_symlinks=False)

    def _xattrs(self, m: tarfile.TarInfo, path: str) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if "\0" in name:
                raise ArchiveError(f"entry {m.name!r} has a NUL byte in the name of xattr {name!r}")
            # An archive must not forge overlay metadata (fake opaque dirs, redirects).
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                continue
            try:
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise

    # -- whiteouts ------------------------------------------------------------------------
    def whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        self.stats.whiteouts += 1
        meta = base == OPAQUE_WHITEOUT or base.startswith(WHITEOUT_PREFIX * 2)
        target = "" if meta else self._whiteout_target(base, name)
        if self.whiteouts == "overlay":
            parent = self.resolve_dir(parts[:-1], name)
            assert parent is not None
            if base == OPAQUE_WHITEOUT:
                os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y")
            elif not meta:
                path = os.path.join(parent, target)
                self._remove(path)
                os.mknod(path, stat.S_IFCHR | 0o600, 0)
            return
        parent = self.resolve_dir(parts[:-1], name, create=False)
        if parent is None:
            return
        if base == OPAQUE_WHITEOUT:
            with os.scandir(parent) as it:
                doomed = [e.path for e in it if e.path not in self._created]
            for p in doomed:
                self._remove(p)
            return
        if meta:
            return  # other AUFS metadata (.wh..wh.plnk, ...): not part of the image
        self._remove(os.path.join(parent, target))

    @staticmethod
    def _whiteout_target(base: str, name: str) -> str:
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise UnsafeArchiveError(f"whiteout {name!r} names no removable entry")
        return target

    def finish(self) -> None:
        # Deepest first, so setting a parent's mtime is not undone by touching a child.
        for path in sorted(self._dirs, key=len, reverse=True):
            mode, mtime = self._dirs[path]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime), follow_symlinks=False)
