"""Read-only lookups in a stack of extracted layer directories, without mounting anything.

The directories are in overlay format (see builder.snapshot): a 0/0 character device hides a
name of the layers below, a directory with ``trusted.overlay.opaque=y`` hides their contents.
Used to resolve users (/etc/passwd), to check what exists before WORKDIR/COPY, and to read
files for ``COPY --from``.
"""
from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from .errors import BuildError
from .snapshot import OPAQUE_XATTR

MAX_SYMLINKS = 40


class RootView:
    """A merged view of ``layers`` (bottom first)."""

    def __init__(self, layers: list[Path]):
        self.layers = [Path(p) for p in layers]

    def _lookup_exact(self, rel: str) -> tuple[Path, os.stat_result] | None:
        """The topmost real entry for ``rel`` (no symlink resolution), honouring whiteouts."""
        parts = [p for p in rel.split("/") if p]
        for layer in reversed(self.layers):
            path = layer.joinpath(*parts) if parts else layer
            try:
                st = os.lstat(path)
            except OSError:
                if self._hidden_below(layer, parts):
                    return None
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None
            return path, st
        return None

    @staticmethod
    def _hidden_below(layer: Path, parts: list[str]) -> bool:
        """True when an ancestor of ``parts`` in ``layer`` is a whiteout or an opaque dir."""
        cur = layer
        for name in parts[:-1]:
            cur = cur / name
            try:
                st = os.lstat(cur)
            except OSError:
                return False
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return True
            if not stat.S_ISDIR(st.st_mode):
                return False
            try:
                if os.getxattr(cur, OPAQUE_XATTR) == b"y":
                    return True
            except OSError:
                pass
        return False

    def resolve(self, path: str, follow_last: bool = True, keep_missing: bool = False) -> str | None:
        """``path`` with symlinks resolved inside the view as in a chroot (absolute, normalized;
        ``..`` and absolute link targets never leave the root).

        A missing component gives None, or with ``keep_missing`` is kept as written with the
        rest of the path (what COPY and WORKDIR create; a dangling link is followed to where it
        points, as BuildKit does inside the rootfs)."""
        todo = [p for p in path.split("/") if p]
        done: list[str] = []
        hops = 0
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            rel = "/".join(done + [name])
            found = self._lookup_exact(rel)
            if found is None:
                if not keep_missing:
                    return None
                done += [name, *todo]
                break
            p, st = found
            if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise BuildError(f"too many levels of symbolic links resolving {path} in the image; "
                                     "fix the image's links or use another path")
                target = os.readlink(p)
                if target.startswith("/"):
                    done = []
                todo = [t for t in target.split("/") if t] + todo
                continue
            done.append(name)
        return "/" + "/".join(done)

    def stat(self, path: str, follow: bool = True) -> tuple[Path, os.stat_result] | None:
        """The host path and lstat of ``path`` in the view, or None if it does not exist."""
        r = self.resolve(path, follow_last=follow)
        if r is None:
            return None
        if r == "/":
            top = self.layers[-1] if self.layers else None
            return (top, os.lstat(top)) if top else None
        return self._lookup_exact(r.lstrip("/"))

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_dir(self, path: str) -> bool:
        s = self.stat(path)
        return s is not None and stat.S_ISDIR(s[1].st_mode)

    def read_text(self, path: str) -> str | None:
        """Contents of a regular file in the view, or None."""
        s = self.stat(path)
        if s is None or not stat.S_ISREG(s[1].st_mode):
            return None
        return s[0].read_text(errors="replace")

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path`` (merged over layers), sorted."""
        r = self.resolve(path)
        if r is None:
            return []
        parts = [p for p in r.split("/") if p]
        names: dict[str, bool] = {}
        for layer in reversed(self.layers):
            d = layer.joinpath(*parts) if parts else layer
            try:
                st = os.lstat(d)
            except OSError:
                if self._hidden_below(layer, parts + ["x"]) and parts:
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            for e in os.scandir(d):
                if e.name not in names:
                    est = e.stat(follow_symlinks=False)
                    names[e.name] = not (stat.S_ISCHR(est.st_mode) and est.st_rdev == 0)
            try:
                if os.getxattr(d, OPAQUE_XATTR) == b"y":
                    break
            except OSError:
                pass
        return sorted(n for n, alive in names.items() if alive)

    def walk(self, path: str):
        """Yield ``(view path, host path, lstat)`` for ``path`` and, if a directory, everything below."""
        s = self.stat(path, follow=False)
        if s is None:
            return
        yield path, s[0], s[1]
        if stat.S_ISDIR(s[1].st_mode):
            for name in self.listdir(path):
                yield from self.walk(posixpath.join(path, name))
