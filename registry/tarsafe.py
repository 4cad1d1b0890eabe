"""Safe extraction of layer tars and other archives: nothing is ever written outside the target.

Every entry name is cleaned: absolute names are taken relative to the target (as a chroot would),
and a name whose `..` climbs above the target is refused with an error naming the entry. The
target is opened once; every directory below it is reached from that descriptor one component at
a time with O_NOFOLLOW opens, symlinks being read and followed *inside* the target only (an
absolute or climbing symlink target is re-rooted at the target, exactly as it would resolve
inside the container), so a symlink planted by one entry (or an earlier layer) can never carry a
later entry out. Entries are made with the *at() calls relative to their parent's descriptor and
their metadata is set through the descriptor of what was made; no host path is walked again. The
final component is never followed: an existing entry there is replaced, files are opened with
O_NOFOLLOW|O_EXCL. Directory modes and times, set at the end, go to the directory made only:
it is reopened by its link-free path with links refused (openat2 RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS) and must be the same inode. Hard links must name an existing non-directory
inside the target.

Whiteouts (OCI): `.wh.NAME` removes NAME from the layers below; `.wh..wh..opq` hides the lower
contents of its directory (entries of the same layer stay). In "overlay" mode they are stored
the way overlayfs expects instead (0/0 character device, `trusted.overlay.opaque=y`, or
`user.overlay.opaque=y` inside a user namespace, where overlay is mounted with `userxattr`).

Device nodes are created only when running as root in the host's user namespace (skipped
otherwise, as rootless Docker does); owners are restored only as root (inside a rootless user
namespace too: an owner outside its id map is refused, naming the entry and the fix); setuid/setgid/sticky bits are kept (applied after chown, which
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
from typing import BinaryIO, Callable, Iterator

from registry import inroot
from registry.fsutil import has_capability, in_initial_user_namespace, overlay_opaque_xattr
from registry.compression import algorithm_for_media_type, open_decompressed
from registry.errors import RegistryError

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
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


def _member_chunks(src: BinaryIO, size: int, m: tarfile.TarInfo, short: Callable[[int], str]) -> Iterator[bytes]:
    """`size` bytes of a member's data in chunks; a truncated archive raises ArchiveError with
    `short(bytes left)` saying where."""
    left = size
    while left > 0:
        chunk = src.read(min(left, _CHUNK))
        if not chunk:
            raise ArchiveError(f"entry {m.name!r} is truncated ({short(left)})")
        left -= len(chunk)
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv):]


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
    # The target itself is the caller's (trusted) path; everything below it is reached only
    # through this descriptor.
    with inroot.opened_root(target_dir) as root_fd:
        ex = _Extractor(root_fd, os.fspath(target_dir), whiteouts,
                        os.geteuid() == 0 if same_owner is None else same_owner, chown, max_bytes)
        try:
            with tarfile.open(fileobj=stream, mode="r|", errorlevel=2, tarinfo=_BoundedTarInfo) as tf:
                for member in tf:
                    try:
                        ex.entry(tf, member)
                    except (OSError, ValueError) as e:
                        # ValueError: os functions refusing a value (a NUL in an xattr name, ...).
                        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                        if isinstance(e, OSError) and e.errno == errno.EINVAL and ex.same_owner \
                                and not in_initial_user_namespace():
                            reason = _unmapped_owner(member)
                        raise ArchiveError(f"cannot extract entry {member.name!r} into {target_dir}: "
                                           f"{reason}") from e
            try:
                ex.finish()
            except OSError as e:
                raise ArchiveError(f"cannot set directory metadata in {target_dir}: {e.strerror or e}") from e
        except tarfile.TarError as e:
            raise ArchiveError(f"malformed tar archive after {ex.stats.entries} entries: {e}") from e
        finally:
            ex.close()
    return ex.stats


def _unmapped_owner(m: tarfile.TarInfo) -> str:
    """Why chown said EINVAL inside a user namespace: the entry's owner has no id there."""
    def top(path: str) -> int:
        try:
            lines = [l.split() for l in open(path).read().splitlines() if l.strip()]
            return max(int(inner) + int(count) - 1 for inner, _outer, count in lines)
        except (OSError, ValueError):
            return -1
    uid_top, gid_top = top("/proc/self/uid_map"), top("/proc/self/gid_map")
    return (f"it is owned by uid {m.uid} gid {m.gid}, outside this user namespace's ids (uids 0-{uid_top}, "
            f"gids 0-{gid_top}); give the user a larger subordinate range in /etc/subuid and /etc/subgid "
            "(e.g. `usermod --add-subuids 200000-265535 --add-subgids 200000-265535 USER`, 65536 ids "
            "cover every id below 65536)")


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


Rel = tuple[str, ...]
# Directory descriptors kept open at once; tars list a directory's entries together, so a few
# hundred cover any real layer. Beyond that the oldest are closed and walked to again.
_FD_CACHE = 256
_PATH_MAX = 4096
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _DeferredDir:
    """A directory entry whose mode and mtime are set at the end, when its children are in."""

    ino: tuple[int, int]
    mode: int
    mtime: int


class _Extractor:
    """Applies entries through descriptors: every directory is reached from a descriptor of the
    root one component at a time (O_NOFOLLOW; links are read and followed inside the root by
    us), entries are made with the *at() calls relative to their parent's descriptor, and
    metadata goes through the descriptor of what was made. No host path is ever walked again,
    so a link swapped in later (by this archive or anyone else) cannot redirect a write."""

    def __init__(self, root_fd: int, target: str, whiteouts: str, same_owner: bool,
                 chown: tuple[int, int] | None, max_bytes: int | None) -> None:
        self.root_fd = root_fd
        self.target = target
        self.whiteouts = whiteouts
        self.same_owner = same_owner or chown is not None
        self.chown = chown
        self.max_bytes = max_bytes
        # Real device nodes need root in the host's user namespace with CAP_MKNOD (podman's
        # containers lack it); a 0/0 whiteout needs neither.
        self.can_mknod = os.geteuid() == 0 and in_initial_user_namespace() and has_capability(27)
        self.stats = ExtractStats()
        # Archive path -> the real (link-free) path inside the root it resolved to.
        self._dircache: dict[Rel, Rel] = {}
        # Real path -> an O_PATH descriptor of that directory (the root's is not in here).
        self._fds: dict[Rel, int] = {}
        # Descriptors dropped from the cache while an entry may still use them: closed when
        # the next entry starts.
        self._retired: list[int] = []
        self._created: set[Rel] = set()
        self._dirs: dict[Rel, _DeferredDir] = {}

    # -- descriptors ----------------------------------------------------------------------
    def _retire_all(self) -> None:
        self._retired.extend(self._fds.values())
        self._fds.clear()
        self._dircache.clear()

    def close(self) -> None:
        self._retire_all()
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def _remember(self, rel: Rel, fd: int) -> None:
        old = self._fds.pop(rel, None)
        if old is not None:
            self._retired.append(old)
        self._fds[rel] = fd
        if len(self._fds) > _FD_CACHE:
            oldest = next(iter(self._fds))
            self._retired.append(self._fds.pop(oldest))

    def _fd(self, rel: Rel) -> int:
        """The descriptor of a real directory path found earlier (walked to again if evicted)."""
        if not rel:
            return self.root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        i = len(rel) - 1
        while i > 0 and rel[:i] not in self._fds:
            i -= 1
        cur = self._fds[rel[:i]] if i else self.root_fd
        for j in range(i, len(rel)):
            # A real path holds no links: one that appears now was swapped in, and is not followed.
            cur = os.open(rel[j], _DIR_FLAGS, dir_fd=cur)
            self._remember(rel[:j + 1], cur)
        return cur

    # -- path resolution -----------------------------------------------------------------
    def resolve_dir(self, parts: list[str], entry: str, create: bool = True) -> tuple[Rel, int] | None:
        """The real directory for `parts` inside the root, following symlinks as a chroot
        would: its link-free path in the root and a descriptor of it (valid for this entry)."""
        key = tuple(parts)
        hit = self._dircache.get(key)
        if hit is not None:
            return hit, self._fd(hit)
        # Continue from the parent's resolution when known: walking from the root for every
        # entry made a deep chain of directory entries cost quadratic time or worse.
        parent = self._dircache.get(key[:-1]) if key else ()
        if parent is not None:
            rel, todo = list(parent), deque(parts[-1:])
        else:
            rel, todo = [], deque(parts)
        cur = self._fd(tuple(rel))
        links = 0
        while todo:
            c = todo.popleft()
            if c in ("", "."):
                continue
            if c == "..":
                if rel:
                    rel.pop()
                    cur = self._fd(tuple(rel))
                continue
            try:
                st = os.stat(c, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    return None
                self._check_depth(len(rel), entry)
                os.mkdir(c, 0o755, dir_fd=cur)
                rel.append(c)
                self._created.add(tuple(rel))
                cur = os.open(c, _DIR_FLAGS, dir_fd=cur)
                self._remember(tuple(rel), cur)
                continue
            if stat.S_ISDIR(st.st_mode):
                self._check_depth(len(rel), entry)
                rel.append(c)
                cur = self._fd(tuple(rel))
            elif stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise ArchiveError(f"entry {entry!r}: too many levels of symbolic links under "
                                       f"{'/'.join(rel + [c])!r}")
                target = os.readlink(c, dir_fd=cur)
                if target.startswith("/"):
                    rel, cur = [], self.root_fd
                todo.extendleft(reversed(target.split("/")))
            else:
                raise ArchiveError(f"entry {entry!r}: {'/'.join(rel + [c])!r} is not a directory "
                                   "in the extracted tree")
        real = tuple(rel)
        self._dircache[key] = real
        return real, cur

    @staticmethod
    def _check_depth(depth: int, entry: str) -> None:
        if depth >= MAX_DEPTH:
            raise ArchiveError(f"entry {entry[:200]!r}... is nested more than {MAX_DEPTH} directories deep: "
                               "refusing the archive")

    def _remove(self, dir_fd: int, name: str, rel: Rel) -> None:
        """Remove `name` (at real path `rel`) from the directory `dir_fd`."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            # rmtree with dir_fd walks by descriptors and never follows a link inside.
            shutil.rmtree(name, dir_fd=dir_fd)
            # Directories recorded under it are gone: a new one made at the same path may even
            # get the same inode number, so forget them rather than trust the inode check.
            n = len(rel)
            for r in [r for r in self._dirs if r[:n] == rel]:
                del self._dirs[r]
        else:
            os.unlink(name, dir_fd=dir_fd)
        # Removing may have turned a cached directory into nothing: resolve afresh.
        self._retire_all()

    # -- entries --------------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if self._retired:
            for fd in self._retired:
                os.close(fd)
            self._retired.clear()
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
        found = self.resolve_dir(parts[:-1], m.name)
        assert found is not None
        prel, pfd = found
        # The parent may come from the cache, unchecked: check the depth it reaches.
        self._check_depth(len(prel), m.name)
        self.stats.entries += 1
        try:
            existing = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        keep_dir = existing is not None and m.isdir() and stat.S_ISDIR(existing.st_mode)
        if existing is not None and not keep_dir:
            if m.islnk() and self._link_source(m)[0] == prel + (base,):
                raise ArchiveError(f"entry {m.name!r} is a hard link to itself")
            self._remove(pfd, base, prel + (base,))
        rel = prel + (base,)
        # Entries are made relative to their parent's descriptor, so the kernel's PATH_MAX no
        # longer stops a path that no tool could name afterwards: refuse it here instead.
        if len(os.fsencode("/".join(rel))) >= _PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), m.name)
        self.create(tf, m, pfd, base, rel, dir_exists=keep_dir)
        self._created.add(rel)
        if m.isdir():
            self._dircache[tuple(parts)] = rel     # children of this entry resolve from here

    def _link_source(self, m: tarfile.TarInfo) -> tuple[Rel, int, str]:
        """(real path, parent descriptor, name) of a hard link's target."""
        parts = _clean(m.linkname, f"hard link {m.name!r} ->")
        if not parts:
            raise UnsafeArchiveError(f"hard link {m.name!r} points at the extraction root")
        found = self.resolve_dir(parts[:-1], m.name, create=False)
        if found is None:
            raise ArchiveError(f"hard link {m.name!r} -> {m.linkname!r}: target does not exist")
        prel, pfd = found
        return prel + (parts[-1],), pfd, parts[-1]

    def create(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, name: str, rel: Rel,
               dir_exists: bool) -> None:
        uid, gid = self.chown if self.chown is not None else (m.uid, m.gid)
        mode = m.mode & 0o7777
        if m.isreg():
            self.write_file(tf, m, pfd, name, uid, gid, mode)
            return
        if m.isdir():
            if not dir_exists:
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            self._remember(rel, fd)
            st = os.fstat(fd)
            # Mode and time of directories are set at the end: children are still to come.
            # The inode is kept to make sure the end finds this very directory again.
            self._dirs[rel] = _DeferredDir((st.st_dev, st.st_ino), mode, int(m.mtime))
            if self.same_owner:
                os.chown(inroot.fd_path(fd), uid, gid)
            self._xattrs(m, inroot.fd_path(fd))
            return
        if m.issym():
            if not m.linkname or "\0" in m.linkname:
                raise ArchiveError(f"symlink {m.name!r} has an empty or NUL-containing target")
            os.symlink(m.linkname, name, dir_fd=pfd)
            if self.same_owner:
                os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            t = int(m.mtime)
            os.utime(name, (t, t), dir_fd=pfd, follow_symlinks=False)
            return
        if m.islnk():
            _, sfd, sname = self._link_source(m)
            try:
                st = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                raise ArchiveError(f"hard link {m.name!r} -> {m.linkname!r}: target does not exist "
                                   "(it must come earlier in the archive)") from None
            if stat.S_ISDIR(st.st_mode):
                raise ArchiveError(f"hard link {m.name!r} -> {m.linkname!r}: target is a directory")
            os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
            return
        if m.ischr() or m.isblk():
            if not self.can_mknod:
                self.stats.skipped_devices.append(m.name)
                return
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
        elif m.isfifo():
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            raise ArchiveError(f"entry {m.name!r} has unsupported tar type {m.type!r}")
        # A node cannot be opened for I/O without side effects (a FIFO blocks): an O_PATH
        # descriptor pins it, and /proc/self/fd/N reaches that very inode.
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._set_meta(m, inroot.fd_path(fd), uid, gid, mode)
        finally:
            os.close(fd)

    def write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, name: str,
                   uid: int, gid: int, mode: int) -> None:
        if self.max_bytes is not None and self.stats.bytes + m.size > self.max_bytes:
            raise ArchiveError(f"entry {m.name!r} takes the archive past the limit of "
                               f"{self.max_bytes} bytes of file data (tar bomb?)")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=pfd)
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
                    for chunk in _member_chunks(raw, size, m, lambda _left: f"sparse data at {offset}"):
                        _write_all(fd, chunk)
                os.ftruncate(fd, m.size)
            else:
                hole = False
                for chunk in _member_chunks(src, m.size, m, lambda left: f"{m.size - left} of {m.size} bytes"):
                    if len(chunk) >= 4096 and chunk == _ZEROS[:len(chunk)]:
                        os.lseek(fd, len(chunk), os.SEEK_CUR)
                        hole = True
                    else:
                        _write_all(fd, chunk)
                if hole:
                    os.ftruncate(fd, m.size)
            self._set_meta(m, fd, uid, gid, mode)
        finally:
            os.close(fd)
        self.stats.bytes += m.size

    def _set_meta(self, m: tarfile.TarInfo, target: int | str, uid: int, gid: int, mode: int) -> None:
        """Owner, mode, xattrs and mtime of the entry on `target`: a descriptor, or the /proc
        path of an O_PATH one (which takes no fchown/fchmod)."""
        # Owner before mode: chown clears setuid/setgid bits.
        if self.same_owner:
            os.chown(target, uid, gid)
        os.chmod(target, mode)
        self._xattrs(m, target)
        t = int(m.mtime)
        os.utime(target, (t, t))

    def _xattrs(self, m: tarfile.TarInfo, target: int | str) -> None:
        """Set the entry's xattrs on `target`: a descriptor, or the /proc path of one."""
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
                os.setxattr(target, name, value.encode("utf-8", "surrogateescape"))
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
            found = self.resolve_dir(parts[:-1], name)
            assert found is not None
            prel, pfd = found
            if base == OPAQUE_WHITEOUT:
                os.setxattr(inroot.fd_path(pfd), overlay_opaque_xattr(), b"y")
            elif not meta:
                self._remove(pfd, target, prel + (target,))
                os.mknod(target, stat.S_IFCHR | 0o600, 0, dir_fd=pfd)
            return
        found = self.resolve_dir(parts[:-1], name, create=False)
        if found is None:
            return
        prel, pfd = found
        if base == OPAQUE_WHITEOUT:
            lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            try:
                with os.scandir(lfd) as it:
                    doomed = [e.name for e in it if prel + (e.name,) not in self._created]
            finally:
                os.close(lfd)
            for n in doomed:
                self._remove(pfd, n, prel + (n,))
            return
        if meta:
            return  # other AUFS metadata (.wh..wh.plnk, ...): not part of the image
        self._remove(pfd, target, prel + (target,))

    @staticmethod
    def _whiteout_target(base: str, name: str) -> str:
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise UnsafeArchiveError(f"whiteout {name!r} names no removable entry")
        return target

    def finish(self) -> None:
        self.close()
        # Deepest first, so setting a parent's mtime is not undone by touching a child. Each
        # directory is opened again by its link-free path with links refused, and must be the
        # inode made for it: a directory replaced since (by a link, or another directory) is
        # left alone, so its mode and time never land on whatever the path reaches now.
        for rel in sorted(self._dirs, key=len, reverse=True):
            d = self._dirs[rel]
            try:
                fd = inroot.open_beneath(self.root_fd, "/".join(rel), os.O_RDONLY | os.O_DIRECTORY)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                    continue
                raise
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != d.ino:
                    continue
                os.fchmod(fd, d.mode)
                os.utime(fd, (d.mtime, d.mtime))
            finally:
                os.close(fd)
