"""COPY/ADD as layer tars written straight from their sources (no filesystem diff).

Sources are resolved into :class:`Source` items (a context path, a path in a stage or image
rootfs, a heredoc's bytes, a downloaded file, or a tar archive to unpack); :func:`emit_copy`
writes the tar entries Docker's COPY would produce at the destination, with parents that
already exist in the target rootfs keeping their metadata.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from registry.layer import EntryMeta, TarEmitter

from ..errors import BuildError
from ..runtime.rootview import RootView

if TYPE_CHECKING:
    from ..context.build_context import BuildContext, ContextEntry


@dataclass
class Source:
    """One top-level COPY/ADD source (a file or directory) after glob expansion.

    ``name`` is the name it keeps at a directory destination (basename, or the relative path
    for ``--parents``); ``keep_owner`` keeps the source's uid/gid (COPY --from);
    ``exclude`` says which paths inside a directory source to skip (relative to it).
    """

    name: str
    keep_owner: bool = False
    exclude: Callable[[str], bool] | None = None


@dataclass
class CopyOptions:
    """--chown (numeric, resolved), --chmod (int or symbolic), --link."""

    uid: int | None = None
    gid: int | None = None
    chmod: int | str | None = None
    link: bool = False


def resolve_dest(dest: str, workdir: str) -> tuple[str, bool]:
    """Absolute destination and whether it was written as a directory (trailing slash)."""
    is_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.")
    if not dest.startswith("/"):
        dest = posixpath.join(workdir or "/", dest)
    dest = posixpath.normpath(dest)
    if dest.startswith("//"):
        dest = dest[1:]
    return dest, is_dir


_SYM_CLAUSE = re.compile(r"^([ugoa]*)([-+=])([rwxXst]*|[ugo])$")


def apply_chmod(spec: int | str | None, mode: int, is_dir: bool) -> int:
    """Apply an octal or symbolic --chmod to ``mode`` (permission bits)."""
    if spec is None:
        return mode
    if isinstance(spec, int):
        return spec
    for clause in spec.split(","):
        who_ops = re.findall(r"([ugoa]*)((?:[-+=][rwxXst]*)+)", clause)
        for who, ops in who_ops:
            who = who or "a"
            mask = 0
            if "u" in who or "a" in who:
                mask |= 0o4700
            if "g" in who or "a" in who:
                mask |= 0o2070
            if "o" in who or "a" in who:
                mask |= 0o1007
            for op, perms in re.findall(r"([-+=])([rwxXst]*)", ops):
                bits = 0
                for p in perms:
                    if p == "r":
                        bits |= 0o444
                    elif p == "w":
                        bits |= 0o222
                    elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                        bits |= 0o111
                    elif p == "s":
                        bits |= 0o6000
                    elif p == "t":
                        bits |= 0o1000
                bits &= mask
                if op == "+":
                    mode |= bits
                elif op == "-":
                    mode &= ~bits
                else:
                    mode = (mode & ~(mask & 0o7777)) | bits
    return mode & 0o7777


class CopyWriter:
    """Writes the entries of one COPY/ADD into a TarEmitter."""

    def __init__(self, em: TarEmitter, target: RootView, opts: CopyOptions):
        self.em = em
        self.target = target
        self.opts = opts
        self.count = 0

    # -- parents -------------------------------------------------------------------------------
    def _parent_meta(self, rel: str) -> EntryMeta:
        """Metadata for a parent directory: the target's own if it exists there."""
        if not self.opts.link:
            s = self.target.stat("/" + rel)
            if s is not None and stat.S_ISDIR(s[1].st_mode):
                st = s[1]
                return EntryMeta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime))
        # Parents the copy creates get the epoch, not the time of the build (BuildKit's copy
        # stamps them with the current time): the same COPY then makes the same layer, so a
        # --no-cache rebuild reuses its extracted directory and the layer is reproducible.
        return EntryMeta(0o755, self.opts.uid or 0, self.opts.gid or 0, 0)

    def ensure_dir(self, path: str, meta: EntryMeta | None = None) -> None:
        """Emit ``path`` (absolute) and its missing parents as directories."""
        rel = path.strip("/")
        if not rel:
            return
        self.em.ensure_parents(rel, self._parent_meta)
        if not self.em.has_dir(rel):
            self.em.add_dir(rel, meta or self._parent_meta(rel))
            self.count += 1

    # -- entries -------------------------------------------------------------------------------
    def _meta(self, st: os.stat_result, keep_owner: bool) -> tuple[int, int, int]:
        mode = apply_chmod(self.opts.chmod, stat.S_IMODE(st.st_mode), stat.S_ISDIR(st.st_mode))
        uid = self.opts.uid if self.opts.uid is not None else (st.st_uid if keep_owner else 0)
        gid = self.opts.gid if self.opts.gid is not None else (st.st_gid if keep_owner else 0)
        return mode, uid, gid

    def _dest_dir(self, dest: str, rel: str, mode: int, uid: int, gid: int, st: os.stat_result) -> None:
        """The directory a directory source is copied into (nothing for the root): an existing
        one keeps its metadata unless --chmod/--chown say otherwise, a new one takes the source's."""
        if not rel:
            return
        self.em.ensure_parents(rel + "/x", self._parent_meta)
        if self.em.has_dir(rel):
            return
        existing = None if self.opts.link else self.target.stat(dest)
        if existing is not None and stat.S_ISDIR(existing[1].st_mode) and \
                self.opts.chmod is None and self.opts.uid is None:
            e = existing[1]
            self.em.add_dir(rel, EntryMeta(stat.S_IMODE(e.st_mode), e.st_uid, e.st_gid, int(e.st_mtime)))
        else:
            self.em.add_dir(rel, EntryMeta(mode, uid, gid, int(st.st_mtime)))
        self.count += 1

    def add_tree(self, dest: str, host: Path, src: Source, follow_top: bool = True) -> None:
        """Copy a host file or directory (its contents, for a directory) to absolute ``dest``."""
        st = os.stat(host) if follow_top else os.lstat(host)
        rel = dest.strip("/")
        if stat.S_ISDIR(st.st_mode):
            mode, uid, gid = self._meta(st, src.keep_owner)
            self._dest_dir(dest, rel, mode, uid, gid, st)
            self._walk(host, rel, src, "")
        else:
            self.em.ensure_parents(rel, self._parent_meta)
            mode, uid, gid = self._meta(st, src.keep_owner)
            self.em.add_path(rel, str(host), st=st, uid=uid, gid=gid, mode=mode)
            self.count += 1

    def _walk(self, host: Path, rel: str, src: Source, inner: str) -> None:
        with os.scandir(host) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for e in entries:
            inner_rel = f"{inner}/{e.name}" if inner else e.name
            if src.exclude is not None and src.exclude(inner_rel):
                continue
            st = e.stat(follow_symlinks=False)
            name = f"{rel}/{e.name}" if rel else e.name
            mode, uid, gid = self._meta(st, src.keep_owner)
            self.em.add_path(name, e.path, st=st, uid=uid, gid=gid, mode=mode)
            self.count += 1
            if stat.S_ISDIR(st.st_mode):
                self._walk(Path(e.path), name, src, inner_rel)

    def add_context(self, dest: str, ctx: "BuildContext", entry: "ContextEntry", src: Source) -> None:
        """Copy a resolved build-context entry (a file, or a directory's contents) to ``dest``.

        Everything is read through descriptors of the context's directories (never by host
        path), so a directory swapped for a symlink meanwhile cannot lead outside; each file
        is checked to be the version the checksum pass read."""
        rel = dest.strip("/")
        items = ctx.iter_tree(entry, src.exclude)
        _inner, host, st, dfd, name = next(items)
        if not stat.S_ISDIR(st.st_mode):
            try:
                self.em.ensure_parents(rel, self._parent_meta)
                mode, uid, gid = self._meta(st, src.keep_owner)
                self._add_context_item(rel, host, st, dfd, name, ctx, uid, gid, mode)
            finally:
                items.close()     # closes the parent's descriptor, used until here
            return
        mode, uid, gid = self._meta(st, src.keep_owner)
        self._dest_dir(dest, rel, mode, uid, gid, st)
        for inner, host, est, dfd, name in items:
            mode, uid, gid = self._meta(est, src.keep_owner)
            self._add_context_item(f"{rel}/{inner}" if rel else inner, host, est, dfd, name, ctx, uid, gid, mode)

    def _add_context_item(self, rel: str, host: str, st: os.stat_result, dfd: int | None, name: str,
                          ctx: "BuildContext", uid: int, gid: int, mode: int) -> None:
        check = (lambda now: ctx.check_unchanged(host, now)) if stat.S_ISREG(st.st_mode) else None
        if dfd is None:
            # The context root itself: only ever a directory.
            self.em.add_dir(rel, EntryMeta(mode, uid, gid, int(st.st_mtime)))
        else:
            try:
                self.em.add_path(rel, name, st=st, uid=uid, gid=gid, mode=mode, dir_fd=dfd, label=host,
                                 check=check)
            except OSError as e:
                # Replaced between its lstat and its read (a link that is no longer one, ...).
                raise ctx._changed(host, e) from None
        self.count += 1

    def add_view_tree(self, dest: str, view: RootView, path: str, src: Source) -> None:
        """Copy ``path`` of another rootfs (COPY --from): a file, or a directory's contents."""
        s = view.stat(path)
        if s is None:
            raise BuildError(f"{path}: not found in the source stage or image")
        rel = dest.strip("/")
        host, st = s
        if not stat.S_ISDIR(st.st_mode):
            self.em.ensure_parents(rel, self._parent_meta)
            mode, uid, gid = self._meta(st, src.keep_owner)
            self.em.add_path(rel, str(host), st=st, uid=uid, gid=gid, mode=mode)
            self.count += 1
            return
        resolved = view.resolve(path) or path
        if rel:
            self.em.ensure_parents(rel + "/x", self._parent_meta)
            if not self.em.has_dir(rel):
                mode, uid, gid = self._meta(st, src.keep_owner)
                self.em.add_dir(rel, EntryMeta(mode, uid, gid, int(st.st_mtime)))
                self.count += 1
        base_len = len(resolved.rstrip("/")) + 1
        first = True
        for vpath, hpath, est in view.walk(resolved):
            if first:
                first = False
                continue
            inner = vpath[base_len:]
            if src.exclude is not None and src.exclude(inner):
                continue
            name = f"{rel}/{inner}" if rel else inner
            mode, uid, gid = self._meta(est, src.keep_owner)
            self.em.add_path(name, str(hpath), st=est, uid=uid, gid=gid, mode=mode)
            self.count += 1

    def add_bytes(self, dest: str, data: bytes, mode: int, mtime: int = 0) -> None:
        """A file with the given contents (heredoc, downloaded URL)."""
        rel = dest.strip("/")
        self.em.ensure_parents(rel, self._parent_meta)
        m = apply_chmod(self.opts.chmod, mode, False)
        self.em.add_bytes(rel, data, EntryMeta(m, self.opts.uid or 0, self.opts.gid or 0, mtime))
        self.count += 1

    def add_archive(self, dest: str, stream: BinaryIO, label: str = "archive") -> None:
        """Unpack a tar (already decompressed) under directory ``dest`` (ADD's auto-extraction).

        As with BuildKit, an entry (or hard link target) whose ``..`` climbs above ``dest``
        makes the whole archive fail; ``label`` names the archive in that error.
        """
        base = dest.strip("/")
        if base:
            self.ensure_dir(dest)

        def inside(raw: str, what: str) -> str:
            name = posixpath.normpath(raw.lstrip("/"))
            if name == ".." or name.startswith("../"):
                raise BuildError(f"ADD {label}: archive {what} {raw!r} is outside the extraction root "
                                 f"{dest} (its '..' climbs above it); Docker refuses such archives "
                                 "too: repack it without climbing names")
            return name

        # Links this archive made, by path under ``dest``: a later entry's parents resolve
        # through them, inside ``dest`` (`symldir1 -> ..` then `symldir1/etc/f` puts f at
        # dest/etc/f and keeps the link), as BuildKit's unpacking resolves names in its root.
        links: dict[str, str] = {}
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                name = inside(m.name, "entry")
                if name in (".", ""):
                    continue
                name = _through_links(name, links)
                if not name:
                    continue
                if m.issym():
                    links[name] = m.linkname
                else:
                    links.pop(name, None)
                full = f"{base}/{name}" if base else name
                self.em.ensure_parents(full, self._parent_meta)
                uid = self.opts.uid if self.opts.uid is not None else m.uid
                gid = self.opts.gid if self.opts.gid is not None else m.gid
                meta = EntryMeta(apply_chmod(self.opts.chmod, m.mode & 0o7777, m.isdir()), uid, gid,
                                 int(m.mtime))
                if m.isdir():
                    if not self.em.has_dir(full):
                        self.em.add_dir(full, meta)
                elif m.isreg():
                    f = tar.extractfile(m)
                    self.em.add_stream(full, f, m.size, meta, source=m.name)
                elif m.issym():
                    self.em.add_symlink(full, m.linkname, meta)
                elif m.islnk():
                    link = _through_links(inside(m.linkname, f"entry {m.name!r}: hard link target"), links)
                    self.em.add_hardlink(full, f"{base}/{link}" if base else link, meta)
                elif m.ischr() or m.isblk():
                    self.em.add_device(full, "char" if m.ischr() else "block", m.devmajor, m.devminor, meta)
                elif m.isfifo():
                    self.em.add_fifo(full, meta)
                self.count += 1


def _through_links(name: str, links: dict[str, str]) -> str:
    """``name`` (relative, normalized) with its parent components resolved through ``links``
    (relative path -> target), never above the root: ``..`` there stays there, an absolute
    target starts again from it. The last component is not followed (an entry replaces it)."""
    todo = name.split("/")
    last = todo.pop()
    cur: list[str] = []
    hops = 0
    while todo:
        comp = todo.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if cur:
                cur.pop()
            continue
        path = "/".join(cur + [comp])
        target = links.get(path)
        if target is None:
            cur.append(comp)
            continue
        hops += 1
        if hops > 40:
            raise BuildError(f"ADD: archive entry {name!r}: too many levels of symbolic links")
        if target.startswith("/"):
            cur = []
        todo = target.split("/") + todo
    return "/".join(cur + [last]) if last not in ("", ".", "..") else "/".join(cur)


def is_archive(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts a tar, possibly compressed."""
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" \
            or head[:4] == b"\x28\xb5\x2f\xfd":
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"
