"""Read-only lookups in a stack of extracted layer directories, without mounting anything.

The directories are in overlay format (see builder.runtime.snapshot): a 0/0 character device hides a
name of the layers below, a directory with ``trusted.overlay.opaque=y`` hides their contents.
Used to resolve users (/etc/passwd), to check what exists before WORKDIR/COPY, and to read
files for ``COPY --from``.

The view follows overlayfs's lookup rules exactly (tests/builder/test_rootview.py compares it with a
real read-only overlay mount), one path component at a time: each directory of the view is the
list of layer directories merged into it, topmost first, and a child is looked up only in
those. So a host path is only ever built from components already seen (by lstat) to be real
directories of that layer: a symlink in a lower layer that an upper directory hides is never
touched, and no symlink of the image is ever followed by the host. Symlinks of the image are
resolved inside the view, as in a chroot. Files are opened relative to their layer directory
with the kernel refusing any symlink on the way (openat2, else an O_NOFOLLOW walk).
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from registry import inroot

from ..errors import BuildError
from .snapshot import is_opaque

MAX_SYMLINKS = 40


@dataclass(frozen=True)
class _Node:
    """One name of the view: the topmost layer entry that decides it.

    ``layer`` is that layer's directory and ``rel`` the entry's path inside it (verified real
    directories all the way down); for a directory, ``dirs`` are the host directories merged
    into it, topmost first (they stop below an opaque one or a non-directory).
    """

    layer: str
    rel: str
    st: os.stat_result
    dirs: tuple[tuple[str, str], ...] = field(default=())   # (layer, rel) pairs

    @property
    def host(self) -> str:
        return self.layer + "/" + self.rel if self.rel else self.layer

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _join(rel: str, name: str) -> str:
    return rel + "/" + name if rel else name


def _merge(found: Iterator[tuple[str, str, os.stat_result]]) -> _Node | None:
    """The node that candidates ``(layer, rel, lstat)`` of one name (topmost first) make.

    overlayfs's rules: the topmost entry decides; a whiteout hides the name (or, below a
    directory, ends the merge); a non-directory hides everything below; a directory merges
    with the directories below it until one is opaque or a non-directory comes.
    """
    top: _Node | None = None
    dirs: list[tuple[str, str]] = []
    for layer, rel, st in found:
        if _is_whiteout(st):
            break
        if not stat.S_ISDIR(st.st_mode):
            if top is None:
                return _Node(layer, rel, st)
            break
        if top is None:
            top = _Node(layer, rel, st)
        dirs.append((layer, rel))
        if is_opaque(layer + "/" + rel):
            break
    if top is None:
        return None
    return _Node(top.layer, top.rel, top.st, tuple(dirs))


def open_beneath(layer: str, rel: str, flags: int = os.O_RDONLY) -> int:
    """An fd for ``rel`` inside directory ``layer``, no symlink followed on the way or at the end."""
    root = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return inroot.open_beneath(root, rel, flags)
    finally:
        os.close(root)


class RootView:
    """A merged view of ``layers`` (bottom first)."""

    def __init__(self, layers: list[Path]):
        self.layers = [Path(p) for p in layers]
        self._root: _Node | None = None

    # -- lookup --------------------------------------------------------------------------------
    def _root_node(self) -> _Node | None:
        # As in overlayfs, the root merges every layer (an opaque mark on a layer's root is not
        # looked at: the root is never looked up).
        if self._root is None:
            dirs = []
            top_st = None
            for layer in reversed(self.layers):
                try:
                    st = os.lstat(layer)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    dirs.append((str(layer), ""))
                    top_st = top_st or st
            if top_st is None:
                return None
            self._root = _Node(dirs[0][0], "", top_st, tuple(dirs))
        return self._root

    @staticmethod
    def _child(parent: _Node, name: str) -> _Node | None:
        def candidates() -> Iterator[tuple[str, str, os.stat_result]]:
            for layer, rel in parent.dirs:
                crel = _join(rel, name)
                try:
                    st = os.lstat(layer + "/" + crel)
                except (OSError, ValueError):
                    continue
                yield layer, crel, st
        return _merge(candidates())

    def _children(self, node: _Node) -> list[tuple[str, _Node]]:
        """The live entries of directory ``node``, sorted by name, merged over its layers."""
        seen: dict[str, list[tuple[str, str, os.stat_result]]] = {}
        for layer, rel in node.dirs:
            with os.scandir(layer + "/" + rel if rel else layer) as it:
                for e in it:
                    seen.setdefault(e.name, []).append((layer, _join(rel, e.name), e.stat(follow_symlinks=False)))
        out = []
        for name in sorted(seen):
            child = _merge(iter(seen[name]))
            if child is not None:
                out.append((name, child))
        return out

    def _resolve(self, path: str, follow_last: bool, keep_missing: bool) -> tuple[str, _Node | None] | None:
        root = self._root_node()
        todo = [p for p in path.split("/") if p]
        todo.reverse()                      # a stack: the next component is last
        done: list[tuple[str, _Node]] = []
        hops = 0
        while todo:
            name = todo.pop()
            parent = done[-1][1] if done else root
            if name in (".", ".."):
                if parent is not None and not parent.is_dir:
                    # The kernel's ENOTDIR: "file/.." is not the file's directory.
                    return ("/" + "/".join([n for n, _ in done] + [name] + todo[::-1]), None) \
                        if keep_missing else None
                if name == ".." and done:
                    done.pop()
                continue
            node = self._child(parent, name) if parent is not None and parent.is_dir else None
            if node is None:
                if not keep_missing:
                    return None
                names = [n for n, _ in done] + [name] + todo[::-1]
                return "/" + "/".join(names), None
            if stat.S_ISLNK(node.st.st_mode) and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise BuildError(f"too many levels of symbolic links resolving {path} in the image; "
                                     "fix the image's links or use another path")
                target = os.readlink(node.host)
                if target.startswith("/"):
                    done = []
                todo.extend(reversed([t for t in target.split("/") if t]))
                continue
            done.append((name, node))
        return "/" + "/".join(n for n, _ in done), (done[-1][1] if done else root)

    def resolve(self, path: str, follow_last: bool = True, keep_missing: bool = False) -> str | None:
        """``path`` with symlinks resolved inside the view as in a chroot (absolute, normalized;
        ``..`` and absolute link targets never leave the root).

        A missing component gives None, or with ``keep_missing`` is kept as written with the
        rest of the path (what COPY and WORKDIR create; a dangling link is followed to where it
        points, as BuildKit does inside the rootfs)."""
        r = self._resolve(path, follow_last, keep_missing)
        return None if r is None else r[0]

    def _node(self, path: str, follow: bool = True) -> _Node | None:
        r = self._resolve(path, follow, False)
        return None if r is None else r[1]

    # -- queries -------------------------------------------------------------------------------
    def stat(self, path: str, follow: bool = True) -> tuple[Path, os.stat_result] | None:
        """The host path and lstat of ``path`` in the view, or None if it does not exist.

        The host path's parents are real directories of its layer; open it only without
        following symlinks (as TarEmitter.add_path and :meth:`read_bytes` do)."""
        node = self._node(path, follow)
        return None if node is None else (Path(node.host), node.st)

    def exists(self, path: str) -> bool:
        return self._node(path) is not None

    def is_dir(self, path: str) -> bool:
        node = self._node(path)
        return node is not None and node.is_dir

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        """Contents of a regular file in the view, or None; more than ``limit`` bytes is an error."""
        node = self._node(path)
        if node is None or not stat.S_ISREG(node.st.st_mode):
            return None
        if limit is not None and node.st.st_size > limit:
            raise BuildError(f"{path} in the image is {node.st.st_size} bytes, more than the {limit} "
                             "read for it; shrink the file")
        try:
            fd = open_beneath(node.layer, node.rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise BuildError(f"{path} in the image: cannot open {node.host}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(f.fileno())
            if (now.st_dev, now.st_ino) != (node.st.st_dev, node.st.st_ino):
                raise BuildError(f"{path} in the image: {node.host} was replaced while being read")
            return f.read(node.st.st_size)

    def read_text(self, path: str, limit: int | None = None) -> str | None:
        """Contents of a regular file in the view (undecodable bytes replaced), or None."""
        data = self.read_bytes(path, limit)
        return None if data is None else data.decode(errors="replace")

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path`` (merged over layers), sorted."""
        node = self._node(path)
        if node is None or not node.is_dir:
            return []
        return [name for name, _ in self._children(node)]

    def walk(self, path: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        """Yield ``(view path, host path, lstat)`` for ``path`` and, if a directory, everything below."""
        node = self._node(path, follow=False)
        if node is None:
            return
        yield path, Path(node.host), node.st
        if node.is_dir:
            yield from self._walk(path, node)

    def _walk(self, vpath: str, node: _Node) -> Iterator[tuple[str, Path, os.stat_result]]:
        for name, child in self._children(node):
            p = posixpath.join(vpath, name)
            yield p, Path(child.host), child.st
            if child.is_dir:
                yield from self._walk(p, child)
