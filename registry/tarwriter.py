"""Deterministic tar production: a PAX/ustar entry encoder and a tree walker.

Output is byte-for-byte reproducible: entries come in sorted order, user and group names are
empty, times are whole seconds (clamped to SOURCE_DATE_EPOCH when given), and only the
`security.capability` extended attribute is recorded by default (as Docker does), so the same
tree always gives the same diffID.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from tarfile import (BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE,  # ustar type flags
                     XHDTYPE as PAXTYPE)
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from registry.errors import RegistryError

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_CHUNK = 1 << 20
_SMALL_FILE = 256 << 10

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
DEFAULT_XATTRS = ("security.capability",)


class TarWriteError(RegistryError):
    """A tar entry could not be produced (unsupported file type, file changed while read, ...)."""


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8") + b"=" + value + b"\n"
    n = len(body) + len(str(len(body)))
    if len(str(n)) != len(str(len(body))):
        n += 1
    return str(n).encode() + body


def _fits_name(b: bytes, limit: int) -> bool:
    return len(b) <= limit and b.isascii()


_MAX_OCT8 = 8 ** 7
_MAX_OCT12 = 8 ** 11
_MAGIC = b"ustar\x0000"
_CONST_SUM = sum(b"        ") + sum(_MAGIC)  # checksum field counted as spaces, plus the magic
_NO_OWNER_NAMES = bytes(64)
_NO_DEV = bytes(16)
_TAIL = bytes(167)  # prefix (155) + pad (12)


def _pax_number(pax: list[tuple[str, bytes]], key: str, value: int, limit: int) -> int:
    """`value` when its ustar field holds it; else a PAX record for it and 0 in the field."""
    if 0 <= value < limit:
        return value
    pax.append((key, str(value).encode()))
    return 0


def encode_header(
    name: bytes,
    typeflag: bytes,
    *,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: dict[str, bytes] | None = None,
) -> bytes:
    """The header block(s) of one entry: a PAX extended header when a field does not fit ustar."""
    if (not xattrs and len(name) <= 100 and len(linkname) <= 100 and name.isascii() and linkname.isascii()
            and 0 <= uid < _MAX_OCT8 and 0 <= gid < _MAX_OCT8 and 0 <= size < _MAX_OCT12
            and 0 <= mtime < _MAX_OCT12):
        return _ustar(name, typeflag, size, mode, uid, gid, mtime, linkname, devmajor, devminor)
    pax: list[tuple[str, bytes]] = []
    if not _fits_name(name, 100):
        pax.append(("path", name))
    if not _fits_name(linkname, 100):
        pax.append(("linkpath", linkname))
    uid = _pax_number(pax, "uid", uid, _MAX_OCT8)
    gid = _pax_number(pax, "gid", gid, _MAX_OCT8)
    size = _pax_number(pax, "size", size, _MAX_OCT12)
    mtime = _pax_number(pax, "mtime", mtime, _MAX_OCT12)
    for key, value in (xattrs or {}).items():
        pax.append(("SCHILY.xattr." + key, value))
    # Records sorted by key for reproducibility (Go sorts them too).
    data = b"".join(_pax_record(k, v) for k, v in sorted(pax))
    out = _ustar(b"PaxHeader", PAXTYPE, len(data), 0o644, 0, 0, 0, b"", 0, 0)
    out += data + bytes(-len(data) % BLOCK)
    return out + _ustar(name, typeflag, size, mode, uid, gid, mtime, linkname, devmajor, devminor)


def _ustar(name: bytes, typeflag: bytes, size: int, mode: int, uid: int, gid: int, mtime: int,
           linkname: bytes, devmajor: int, devminor: int) -> bytes:
    # Over-long or non-ASCII names are carried by the PAX record; the ustar field keeps a stand-in.
    if not _fits_name(name, 100):
        name = name.decode("ascii", "replace").encode("ascii", "replace")[:100]
    if not _fits_name(linkname, 100):
        linkname = linkname.decode("ascii", "replace").encode("ascii", "replace")[:100]
    numbers = b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00" % (mode & 0o7777, uid, gid, size, mtime)
    dev = b"%07o\x00%07o\x00" % (devmajor, devminor) if typeflag in (CHRTYPE, BLKTYPE) else _NO_DEV
    # Only the non-zero parts contribute to the checksum, so sum just those.
    chk = _CONST_SUM + sum(name) + sum(numbers) + typeflag[0] + sum(linkname) + sum(dev)
    return b"".join((name.ljust(100, b"\x00"), numbers, b"%06o\x00 " % chk, typeflag,
                     linkname.ljust(100, b"\x00"), _MAGIC, _NO_OWNER_NAMES, dev, _TAIL))


def _sink_writer(out: Any) -> Callable[[bytes], Any]:
    if hasattr(out, "write"):
        return out.write
    if callable(out):
        return out
    raise TypeError(f"tar output must be a binary file-like object or a callable, not {type(out).__name__}")


def _clean_name(name: str) -> str:
    """Normalize an archive path: relative, no `.` or empty components, no trailing slash."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TarWriteError(f"tar entry name {name!r} contains '..': names must stay inside the layer")
    return "/".join(parts)


def _read_xattrs(path: str | int, names: Iterable[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for n in names:
        try:
            found[n] = os.getxattr(path, n) if isinstance(path, int) else \
                os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
    return found


@dataclass
class EntryMeta:
    """Ownership, permissions and time of one entry; `mode` holds permission and setuid/setgid/sticky bits."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0


class TarEmitter:
    """Writes tar entries one by one to `out` (a binary file-like object or a callable).

    Names are archive paths relative to the image root (`usr/bin/x`); directories get a trailing
    slash as Docker writes them. Times are clamped to `source_date_epoch` when given. The emitter
    remembers the directories it wrote, so `ensure_parents` adds only missing ones, and the inodes
    of multiply-linked files it read, so later names of the same inode become hard links.
    Call close() to write the end-of-archive marker; it does not close `out`.
    """

    def __init__(self, out: Any, *, source_date_epoch: int | None = None,
                 xattrs: Iterable[str] = DEFAULT_XATTRS) -> None:
        self._write = _sink_writer(out)
        self.source_date_epoch = source_date_epoch
        self.xattr_names = tuple(xattrs)
        self._dirs: set[str] = set()
        self._inodes: dict[tuple[int, int], str] = {}
        self._buf = bytearray()
        self.entries = 0
        self.closed = False

    # -- low level -------------------------------------------------------------------------
    def _time(self, mtime: float | int) -> int:
        t = int(mtime)
        if self.source_date_epoch is not None and t > self.source_date_epoch:
            t = self.source_date_epoch
        return max(t, 0)

    def _emit(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._write(bytes(self._buf))
            self._buf.clear()

    def _header(self, name: str, typeflag: bytes, meta: EntryMeta, **kw: Any) -> None:
        bname = os.fsencode(name)
        self._emit(encode_header(bname, typeflag, mode=meta.mode, uid=meta.uid, gid=meta.gid,
                                 mtime=self._time(meta.mtime), **kw))
        self.entries += 1

    # -- entries ---------------------------------------------------------------------------
    def add_dir(self, name: str, meta: EntryMeta, *, xattrs: dict[str, bytes] | None = None) -> None:
        """A directory entry (written as `name/`)."""
        name = _clean_name(name)
        if not name:
            return
        self._header(name + "/", DIRTYPE, meta, xattrs=xattrs)
        self._dirs.add(name)

    def has_dir(self, name: str) -> bool:
        """Whether a directory entry for `name` was already written by this emitter."""
        return _clean_name(name) in self._dirs

    def ensure_parents(self, name: str, meta: EntryMeta | Callable[[str], EntryMeta]) -> None:
        """Add directory entries for every parent of `name` not yet written, outermost first.

        `meta` is fixed metadata or a function from the parent's path to its metadata (the build
        engine passes the base image's metadata so existing directories keep theirs).
        """
        parts = _clean_name(name).split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self.add_dir(d, meta(d) if callable(meta) else meta)

    def add_bytes(self, name: str, data: bytes, meta: EntryMeta,
                  *, xattrs: dict[str, bytes] | None = None) -> None:
        """A regular file with contents given in memory (heredocs, generated files)."""
        self._header(_clean_name(name), REGTYPE, meta, size=len(data), xattrs=xattrs)
        self._emit(data)
        self._emit(bytes(-len(data) % BLOCK))

    def add_stream(self, name: str, stream: BinaryIO, size: int, meta: EntryMeta,
                   *, xattrs: dict[str, bytes] | None = None, source: str | None = None) -> None:
        """A regular file of exactly `size` bytes read from `stream` (error if it is shorter)."""
        self._header(_clean_name(name), REGTYPE, meta, size=size, xattrs=xattrs)
        self._flush()
        left = size
        while left > 0:
            chunk = stream.read(min(left, _CHUNK))
            if not chunk:
                raise TarWriteError(self._shrank(source or name, size - left, size))
            self._write(chunk)
            left -= len(chunk)
        self._emit(bytes(-size % BLOCK))

    def _add_file(self, name: str, path: str, st: os.stat_result, meta: EntryMeta,
                  xattrs: dict[str, bytes] | None, dir_fd: int | None = None, label: str | None = None,
                  check: Callable[[os.stat_result], None] | None = None) -> None:
        # O_NOFOLLOW|O_NONBLOCK: if the file was swapped for a symlink or a FIFO since lstat, fail
        # instead of reading through the link or blocking forever.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as e:
            raise TarWriteError(f"{label or path}: cannot read it: {e.strerror}") from None
        if label is not None:
            path = label
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode) or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                raise TarWriteError(f"{path}: was replaced while being read; retry once it is stable")
            if check is not None:
                check(now)
            if dir_fd is not None and self.xattr_names:
                # Read from the descriptor written from: a name relative to dir_fd has no path.
                xattrs = _read_xattrs(fd, self.xattr_names) or None
            size = st.st_size
            self._header(name, REGTYPE, meta, size=size, xattrs=xattrs)
            if size <= _SMALL_FILE:
                # Small files go through the emitter's buffer: one sink write for many files.
                data = os.read(fd, size) if size else b""
                while len(data) < size:
                    more = os.read(fd, size - len(data))
                    if not more:
                        raise TarWriteError(self._shrank(path, len(data), size))
                    data += more
                self._emit(data + bytes(-size % BLOCK))
                return
            self._flush()
            left = size
            while left > 0:
                chunk = os.read(fd, min(left, _CHUNK))
                if not chunk:
                    raise TarWriteError(self._shrank(path, size - left, size))
                self._write(chunk)
                left -= len(chunk)
            self._emit(bytes(-size % BLOCK))
        finally:
            os.close(fd)

    @staticmethod
    def _shrank(source: str, got: int, size: int) -> str:
        return (f"{source}: file shrank while being read ({got} of {size} bytes); "
                "retry once it is no longer being written")

    def add_symlink(self, name: str, target: str, meta: EntryMeta) -> None:
        """A symbolic link to `target` (stored verbatim)."""
        self._header(_clean_name(name), SYMTYPE, meta, linkname=os.fsencode(target))

    def add_hardlink(self, name: str, target: str, meta: EntryMeta) -> None:
        """A hard link to the earlier entry `target` (an archive path)."""
        self._header(_clean_name(name), LNKTYPE, meta, linkname=os.fsencode(_clean_name(target)))

    def add_device(self, name: str, kind: str, major: int, minor: int, meta: EntryMeta) -> None:
        """A character (`kind="char"`) or block (`kind="block"`) device node."""
        flag = CHRTYPE if kind == "char" else BLKTYPE
        self._header(_clean_name(name), flag, meta, devmajor=major, devminor=minor)

    def add_fifo(self, name: str, meta: EntryMeta) -> None:
        """A named pipe."""
        self._header(_clean_name(name), FIFOTYPE, meta)

    def add_whiteout(self, name: str, mtime: int = 0) -> None:
        """An OCI whiteout for `name`: an empty file `.wh.<base>` in the same directory."""
        parent, _, base = _clean_name(name).rpartition("/")
        wh = (parent + "/" if parent else "") + WHITEOUT_PREFIX + base
        self._header(wh, REGTYPE, EntryMeta(0, 0, 0, mtime), size=0)

    def add_opaque(self, dirname: str, mtime: int = 0) -> None:
        """An OCI opaque marker: lower layers' contents of `dirname` are hidden."""
        d = _clean_name(dirname)
        self._header((d + "/" if d else "") + OPAQUE_WHITEOUT, REGTYPE, EntryMeta(0, 0, 0, mtime), size=0)

    def add_path(self, name: str, path: str, *, st: os.stat_result | None = None,
                 uid: int | None = None, gid: int | None = None, mode: int | None = None,
                 mtime: int | None = None, dir_fd: int | None = None, label: str | None = None,
                 check: Callable[[os.stat_result], None] | None = None) -> None:
        """The file system object at `path` (not followed if a symlink) as entry `name`.

        `uid`, `gid`, `mode` (permission bits) and `mtime` override what lstat says (COPY --chown,
        --chmod). A second name of an already written inode becomes a hard link. Sockets are
        skipped, as Docker does. With `dir_fd`, `path` is a name in that directory descriptor
        (an untrusted tree read without re-walking host paths) and `label` names it in errors;
        `check(fstat)` may refuse the opened regular file (raise) before it is written.
        """
        if st is None:
            st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        m = st.st_mode
        meta = EntryMeta(
            mode=stat.S_IMODE(m) if mode is None else mode,
            uid=st.st_uid if uid is None else uid,
            gid=st.st_gid if gid is None else gid,
            mtime=int(st.st_mtime) if mtime is None else mtime,
        )
        if stat.S_ISDIR(m):
            xpath = path if dir_fd is None else f"/proc/self/fd/{dir_fd}/{path}"
            self.add_dir(name, meta, xattrs=_read_xattrs(xpath, self.xattr_names) or None)
            return
        if stat.S_ISLNK(m):
            self.add_symlink(name, os.readlink(path, dir_fd=dir_fd), meta)
            return
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._inodes.get(key)
            if first is not None:
                self.add_hardlink(name, first, meta)
                return
            self._inodes[key] = _clean_name(name)
        if stat.S_ISREG(m):
            xattrs = None if dir_fd is not None else _read_xattrs(path, self.xattr_names) or None
            self._add_file(_clean_name(name), path, st, meta, xattrs, dir_fd, label, check)
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            self.add_device(name, "char" if stat.S_ISCHR(m) else "block",
                            os.major(st.st_rdev), os.minor(st.st_rdev), meta)
        elif stat.S_ISFIFO(m):
            self.add_fifo(name, meta)
        elif stat.S_ISSOCK(m):
            return
        else:
            raise TarWriteError(f"{label or path}: unsupported file type {stat.S_IFMT(m):o}")

    def close(self) -> None:
        """Write the end-of-archive marker (two zero blocks) and flush; `out` stays open."""
        if not self.closed:
            self._emit(_ZERO_BLOCK * 2)
            self._flush()
            self.closed = True


def _sorted_entries(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        entries = list(it)
    # Byte order of the encoded names, like Go's sort of strings: stable across locales.
    entries.sort(key=lambda e: os.fsencode(e.name))
    return entries


def walk_sorted(root_dir: str, exclude: Callable[[str], bool] | None = None
                ) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield (relative path, path, lstat) for every entry under `root_dir`, depth-first, each
    directory's entries in byte order of their names, a directory before its contents.

    `exclude(relpath)` true skips an entry (and a directory's contents) before it is stat'ed.
    A directory's entries are listed after the consumer has handled the directory itself.
    """
    # An explicit stack of directory iterators: deep trees cannot hit the recursion limit.
    stack: list[tuple[Iterator[os.DirEntry], str]] = [(iter(_sorted_entries(root_dir)), "")]
    while stack:
        it, rel = stack[-1]
        e = next(it, None)
        if e is None:
            stack.pop()
            continue
        crel = f"{rel}/{e.name}" if rel else e.name
        if exclude is not None and exclude(crel):
            continue
        st = e.stat(follow_symlinks=False)
        yield crel, e.path, st
        if stat.S_ISDIR(st.st_mode):
            stack.append((iter(_sorted_entries(e.path)), crel))


def write_tree_tar(root_dir: str | os.PathLike, out: Any, *, source_date_epoch: int | None = None,
                   prefix: str = "", exclude: Callable[[str], bool] | None = None,
                   uid: int | None = None, gid: int | None = None,
                   xattrs: Iterable[str] = DEFAULT_XATTRS, close: bool = True) -> int:
    """Write the tree under `root_dir` as a deterministic tar to `out`; return the entry count.

    Entries are named relative to `root_dir` (under `prefix` if given), walked depth-first in
    byte order, PAX format, with owners, modes, symlinks, hard links (same inode), devices, FIFOs
    and the `xattrs` named (security.capability by default). `exclude(relpath)` true skips an
    entry (and a directory's contents). `uid`/`gid` override every owner. The root itself is not
    an entry. `close=False` leaves the archive open for more entries (returns the emitter count).
    """
    em = TarEmitter(out, source_date_epoch=source_date_epoch, xattrs=xattrs)
    emit_tree(em, os.fspath(root_dir), prefix=prefix, exclude=exclude, uid=uid, gid=gid)
    if close:
        em.close()
    return em.entries


def emit_tree(em: TarEmitter, root_dir: str, *, prefix: str = "",
              exclude: Callable[[str], bool] | None = None,
              uid: int | None = None, gid: int | None = None) -> None:
    """Add every entry under `root_dir` to `em` (see write_tree_tar)."""
    prefix = _clean_name(prefix)
    for crel, path, st in walk_sorted(root_dir, exclude):
        em.add_path(f"{prefix}/{crel}" if prefix else crel, path, st=st, uid=uid, gid=gid)
