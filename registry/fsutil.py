"""Small filesystem primitives for the store: atomic file writes, advisory file locks and
private (0700) directories."""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
from pathlib import Path

# The mode of every directory pybuild makes in its store: extracted layers hold setuid-root
# binaries and device nodes from images, which another local user must not be able to reach.
PRIVATE_DIR_MODE = 0o700


def private_dir(path: str | os.PathLike) -> Path:
    """Create the directory `path` with mode 0700 unless it exists; return it.

    Missing parents get the default mode (they may be the user's, like ~/.local/share): callers
    create the levels they own one by one.
    """
    path = Path(path)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path.parent, exist_ok=True)
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            pass
    return path


def tighten_dir(path: str | os.PathLike) -> None:
    """Take group and other permissions away from the directory `path`, if it exists.

    Stores made by older versions (or roots the user created) may be world-traversable. A
    directory we may not chmod (another user's) is left alone: it is not ours to change.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077:
        try:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EROFS):
                raise


# O_DIRECT wants the buffer's address, the length and the file offset aligned to the device's
# logical block (512 or 4096 bytes); a page satisfies both.
PAGE = mmap.PAGESIZE


def aligned_buffer(size: int) -> memoryview:
    """A writable buffer of `size` bytes at a page-aligned address (anonymous memory), for
    reads into it and O_DIRECT writes from it."""
    return memoryview(mmap.mmap(-1, size))


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for an open file; False when the file system refuses it (tmpfs,
    some FUSE and network file systems)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    want = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    if want == flags:
        return True
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, want)
    except OSError:
        return False
    return True


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry change (a rename or create) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int, durable: bool) -> str:
    """Write `data` to a new temp file beside `path` (same file system, so it can be renamed or
    linked onto `path`) and return the temp file's name; on failure nothing is left behind."""
    # O_EXCL with a random name, as tempfile.mkstemp does (importing tempfile costs start-up).
    tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` so readers see the old or the new content, never a mix.

    Temp file in the same directory, fsync, rename over, fsync the directory. With
    durable=False the two fsyncs are skipped: for caches, where losing the latest write in a
    crash only costs recomputing it, and the flush would cost more than the write.
    """
    path = Path(path)
    tmp = _write_temp(path, data, mode, durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def create_if_absent(path: str | os.PathLike, data: bytes, sync_dir: bool = True) -> bool:
    """Atomically create `path` with `data` unless it exists; True if this call created it.

    Uses link(2), which fails on an existing name, so concurrent creators never overwrite
    each other (a plain rename would replace a file another process already filled).
    """
    path = Path(path)
    if path.exists():
        return False
    tmp = _write_temp(path, data, 0o644, durable=True)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    if sync_dir:        # sync_dir=False: the caller syncs the directory once for several files
        fsync_dir(path.parent)
    return True


class FileLock:
    """An flock(2) on a lock file, exclusive by default; a context manager.

    Each acquisition opens its own file description, so the lock also excludes other threads
    of the same process.
    """

    def __init__(self, path: str | os.PathLike, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with blocking=False return False instead of waiting."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        flags = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        if not blocking:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def fd(self) -> int | None:
        """The locked file descriptor while held."""
        return self._fd

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_initial_userns: bool | None = None


def in_initial_user_namespace() -> bool:
    """True in the host's user namespace, False inside a user namespace with a mapped range
    (rootless pybuild, a rootless container). Decides the overlay format of extracted layers:
    outside the initial namespace overlay keeps its metadata in ``user.overlay.*`` xattrs
    (mounted with ``userxattr``) and device nodes other than whiteouts cannot be made."""
    global _initial_userns
    if _initial_userns is None:
        try:
            # The initial namespace maps every id to itself; another one maps a range.
            _initial_userns = Path("/proc/self/uid_map").read_text().split() == ["0", "0", "4294967295"]
        except OSError:
            _initial_userns = False
    return _initial_userns


def has_capability(bit: int) -> bool:
    """True when capability number ``bit`` (CAP_MKNOD is 27) is in this process's effective set."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool((int(line.split()[1], 16) >> bit) & 1)
    except (OSError, ValueError):
        pass
    return False


def forget_user_namespace() -> None:
    """Ask again on the next call (after the process entered a user namespace)."""
    global _initial_userns
    _initial_userns = None


_user_xattrs = False


def use_user_overlay_xattrs() -> None:
    """Keep overlay metadata in ``user.*`` xattrs from now on, in the host's user namespace too:
    for root without CAP_SYS_ADMIN that could make no user namespace (builder's isolation
    ``none``), which cannot set trusted.* xattrs. Its store has the rootless format."""
    global _user_xattrs
    _user_xattrs = True


def overlay_opaque_xattr() -> str:
    """The xattr that marks an opaque directory for the overlay mounts this process makes:
    ``trusted.overlay.opaque`` in the host's user namespace, ``user.overlay.opaque`` (the
    ``userxattr`` mount option) in any other, where trusted.* xattrs cannot be set (and after
    :func:`use_user_overlay_xattrs`)."""
    if _user_xattrs or not in_initial_user_namespace():
        return "user.overlay.opaque"
    return "trusted.overlay.opaque"
