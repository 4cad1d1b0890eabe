"""Paths inside an untrusted tree, resolved by the kernel inside its root.

An image rootfs, a layer directory, a build context or an output destination is written by
strangers: any component of a path in it may be a symlink to the host, and may be swapped for
one while pybuild works. So a path in such a tree is never joined to the host path of its root
and walked again; it is opened relative to a file descriptor of the root with openat2(2) and
RESOLVE_IN_ROOT (symlinks, absolute or climbing, resolve as in a chroot) plus
RESOLVE_NO_MAGICLINKS (no /proc/self/fd/N jumps out). Where openat2 is missing (Linux < 5.6,
seccomp filters that refuse it) the same rules are applied one component at a time with
O_PATH|O_NOFOLLOW opens and readlinkat.

Callers then act on the file descriptor they got (fchmod, fchown, os.utime(fd), xattrs through
/proc/self/fd/N of an fd they hold) instead of on a path: a swap after the open cannot redirect
it.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from contextlib import contextmanager
from typing import Iterator

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# openat2 has the same number on every architecture (syscalls after 424 are unified).
_SYS_OPENAT2 = 437
MAX_SYMLINKS = 40


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_have_openat2: bool | None = None


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """The raw openat2(2) syscall; raises OSError (ENOSYS where the kernel lacks it)."""
    # A mode without O_CREAT/O_TMPFILE is EINVAL (O_TMPFILE's bits include O_DIRECTORY's).
    creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
    how = _OpenHow(flags | os.O_CLOEXEC, mode if creates else 0, resolve)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), os.fsencode(path),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def openat2_available() -> bool:
    """True when the kernel (and any seccomp filter around us) lets openat2 run."""
    global _have_openat2
    if _have_openat2 is None:
        try:
            os.close(openat2(-100, "/", os.O_PATH | os.O_DIRECTORY, resolve=RESOLVE_IN_ROOT))
            _have_openat2 = True
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                raise
            _have_openat2 = False
    return _have_openat2


def open_root(path: str | os.PathLike) -> int:
    """An O_PATH descriptor of a tree's root directory (the caller's own, trusted path)."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


@contextmanager
def opened_root(path: str | os.PathLike) -> Iterator[int]:
    """open_root as a context manager that closes the descriptor."""
    fd = open_root(path)
    try:
        yield fd
    finally:
        os.close(fd)


def open_in_root(root_fd: int, path: str, flags: int = os.O_RDONLY, mode: int = 0o644, *,
                 follow: bool = True) -> int:
    """Open ``path`` (absolute or relative: both taken from the root) inside the tree.

    Symlinks resolve inside the root as in a chroot; with ``follow=False`` the last component
    is not followed (O_NOFOLLOW: a symlink there gives ELOOP, or the link itself with O_PATH).
    Raises OSError like open(2) does.
    """
    if not follow:
        flags |= os.O_NOFOLLOW
    rel = path.lstrip("/") or "."
    if openat2_available():
        while True:
            try:
                return openat2(root_fd, rel, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            except InterruptedError:
                continue
            except OSError as e:
                # EAGAIN: a concurrent rename in the tree made the kernel give up; try again.
                if e.errno != errno.EAGAIN:
                    raise
    return _walk_open(root_fd, rel, flags, mode, follow)


def _walk_open(root_fd: int, rel: str, flags: int, mode: int, follow: bool) -> int:
    """The fallback: the directories by hand, the last component opened with O_NOFOLLOW."""
    todo = _components(rel)
    for _ in range(MAX_SYMLINKS + 1):
        if not todo or todo[-1] == "..":
            # The path names a directory reached by walking (the root, or through '..').
            dir_fd = _walk_dirs(root_fd, todo, create=False)
            try:
                return os.open(".", (flags & ~(os.O_NOFOLLOW | os.O_CREAT | os.O_EXCL)) | os.O_CLOEXEC,
                               dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        parent, name = todo[:-1], todo[-1]
        dir_fd = _walk_dirs(root_fd, parent, create=False)
        try:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
            except OSError as e:
                # A link as the last component: ELOOP, or ENOTDIR when O_DIRECTORY is asked.
                if not (follow and e.errno in (errno.ELOOP, errno.ENOTDIR)):
                    raise
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except OSError:
                    raise e from None
            else:
                if not (follow and flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode)):
                    return fd
                os.close(fd)
                target = os.readlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        todo = _components(target) if target.startswith("/") else parent + _components(target)
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), rel)


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _walk_dirs(root_fd: int, parts: list[str], *, create: bool, mode: int = 0o755) -> int:
    """An O_PATH descriptor of the directory ``parts`` names inside the root, walked one
    component at a time without letting the kernel follow any link; with ``create``, missing
    directories are made (a dangling link is followed to where it points, which is made)."""
    todo = list(parts)
    stack = [os.dup(root_fd)]
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, mode, dir_fd=stack[-1])
                except FileExistsError:
                    pass          # made by someone else meanwhile: open it again
                todo.insert(0, name)
                continue
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                stack.append(fd)
                continue
            os.close(fd)
            if not stat.S_ISLNK(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "/".join(parts))
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), "/".join(parts))
            target = os.readlink(name, dir_fd=stack[-1])
            if target.startswith("/"):
                for fd in stack[1:]:
                    os.close(fd)
                del stack[1:]
            todo = _components(target) + todo
        return os.dup(stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def split_parent(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a path in a tree; the name is never empty, '.' or '..'."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        raise OSError(errno.EINVAL, "path names no entry of its own", path)
    return "/".join(parts[:-1]), parts[-1]


def open_parent(root_fd: int, path: str, *, create: bool = False, mode: int = 0o755) -> tuple[int, str]:
    """A directory descriptor of ``path``'s parent inside the tree (made, with its own missing
    parents, when ``create``) and the last component's name, to act on with ``dir_fd=``."""
    parent, name = split_parent(path)
    if create:
        return makedirs_in_root(root_fd, parent, mode), name
    return open_in_root(root_fd, parent, os.O_RDONLY | os.O_DIRECTORY), name


def makedirs_in_root(root_fd: int, path: str, mode: int = 0o755) -> int:
    """``mkdir -p path`` inside the tree; returns an O_RDONLY descriptor of the directory.

    Existing links on the way are followed inside the root (a dangling one is followed to where
    it points, which is made), as a chroot's mkdir -p would.
    """
    fd = _walk_dirs(root_fd, _components(path), create=True, mode=mode)
    try:
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def open_beneath(root_fd: int, path: str, flags: int = os.O_RDONLY) -> int:
    """Open ``path`` (relative, no '..') below the root only if no component of it is a link.

    For re-finding an entry made earlier by its in-root path: a link swapped in anywhere on the
    way makes this fail (ELOOP) instead of following it. Raises OSError like open(2) does.
    """
    parts = _components(path)
    if ".." in parts:
        raise OSError(errno.EXDEV, "path climbs with '..'", path)
    rel = "/".join(parts) or "."
    if openat2_available():
        while True:
            try:
                return openat2(root_fd, rel, flags | os.O_NOFOLLOW, 0,
                               RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=root_fd)
    fd = os.dup(root_fd)
    try:
        for name in parts[:-1]:
            # O_NOFOLLOW|O_DIRECTORY: a link here is ELOOP/ENOTDIR, never followed.
            nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def fd_path(fd: int) -> str:
    """The /proc path of a descriptor we hold: for calls that take only paths (mount sources,
    setxattr on an O_PATH fd); the kernel resolves it to that very file."""
    return f"/proc/self/fd/{fd}"
