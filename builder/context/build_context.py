"""The build context: a directory, a tar file or `-` (a tar, or a bare Dockerfile, on stdin).

What the build sees of it follows Docker: `.dockerignore` at the context root, or
`<Dockerfile>.dockerignore` next to the Dockerfile instead; ignored files do not exist for COPY
and ADD. Sources are resolved inside the context only: a `..` that climbs out or a symlink that
leads out is a BuildError naming the source. Only referenced files are ever read, and their
hashes come from the stat-keyed hash cache (builder/context/hashcache.py).

COPY/ADD source globs are builder/context/globbing.py's (Go's filepath.Match per path segment,
`**` for any number of directories), shared with `COPY --from`.

An excluded directory that a `!` exception re-includes something from exists, as current
BuildKit's context transfer (fsutil) sends it: only as the parent of what is re-included (an
excluded directory with nothing re-included under it does not exist), whether a COPY names it,
a wildcard matches it or a walk passes through it.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, NamedTuple, Sequence

from builder.context.dockerignore import DockerignoreError, Matcher, MatchState, go_clean, read_ignore_lines
from builder.context.globbing import Walker, compile_segments, parents_pivot
from builder.context.globbing import has_glob as has_glob
from builder.errors import BuildError
from builder.context.hashcache import HashCache

_MAX_LINKS = 40
# Every context path is opened from a descriptor of its parent directory, never as a joined
# host path: a directory swapped for a symlink meanwhile then fails (ENOTDIR/ELOOP) instead of
# being followed to the host. NONBLOCK: a file swapped for a FIFO must not hang the open.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ContextEntry(NamedTuple):
    """A matched COPY source, unpackable as `rel, host`: `rel` as the source named it
    (context-relative, "" for the root) and `host` the path on disk after following symlinks
    inside the context (use BuildContext.real_rel for its context-relative form)."""

    rel: str
    host: str


@dataclass
class MountSource:
    """A bind-mount source in the context (see BuildContext.mount_source): `fd` is an O_PATH
    descriptor of it (close() releases it), `host` its path as a label, `st` its lstat, and
    `hidden` the paths under it (relative, '/'-separated) that .dockerignore leaves out."""

    fd: int
    host: str
    st: os.stat_result
    hidden: list[str]

    def lstat(self, inner: str) -> os.stat_result:
        """lstat of `inner` under the source, walked through descriptors (O_NOFOLLOW)."""
        fd = os.dup(self.fd)
        try:
            parts = [p for p in inner.split("/") if p]
            for part in parts[:-1]:
                nxt = os.open(part, _PATH_DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False) if parts else os.fstat(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class SourceRecord:
    """One file of a COPY/ADD source as it enters the cache key (see checksum_sources)."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    content: str

    def line(self) -> str:
        """The record as it is fed into checksum_sources."""
        return _line(self.path, self.kind, self.mode, self.uid, self.gid, self.content)


def _line(path: str, kind: str, mode: int, uid: int, gid: int, content: str) -> str:
    return f"{path}\0{kind}\0{mode:o}\0{uid}:{gid}\0{content}\n"


_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "socket")


class BuildContext:
    """The files a build may read. Use `open_context(...)`; close() removes an unpacked tar context."""

    def __init__(self, root: str | os.PathLike, *, ignore_file: Path | None = None,
                 ignore_patterns: Sequence[str] | None = None, hash_cache: HashCache | None = None,
                 temporary: bool = False, dockerfile_text: str | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        self._root_s = str(self.root)
        self.ignore_file = ignore_file
        self.ignore_patterns: list[str] = list(ignore_patterns or [])
        try:
            self.matcher = Matcher(self.ignore_patterns)
        except DockerignoreError as e:
            where = f"{ignore_file}: " if ignore_file else ""
            raise BuildError(f"{where}{e}; fix or remove the pattern") from None
        self.hash_cache = hash_cache if hash_cache is not None else HashCache(None)
        self.temporary = temporary
        self.dockerfile_text = dockerfile_text
        self._root_fd: int | None = None
        # What the checksum pass saw of each regular file (host label -> stat identity), so the
        # copy can check it writes the very version that went into the cache key.
        self._seen: dict[str, os.stat_result] = {}
        self._visible: dict[str, bool] = {}     # excluded dirs: is anything under them re-included

    @property
    def root_fd(self) -> int:
        """An O_PATH descriptor of the context root, opened once: every context path is
        opened from it (or from a directory descriptor reached from it), never by host path."""
        if self._root_fd is None:
            self._root_fd = os.open(self._root_s, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._root_fd

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Save the hash cache; remove the unpacked copy of a tar context."""
        self.hash_cache.save()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        if self.temporary:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)
            self.temporary = False

    def __enter__(self) -> "BuildContext":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.close()

    # -- ignore rules -------------------------------------------------------------------------
    def is_ignored(self, rel: str) -> bool:
        """Whether the context-relative path is excluded by the .dockerignore rules."""
        return bool(self.matcher) and self.matcher.matches(rel)

    def exclude_matcher(self, excludes: Sequence[str]) -> Callable[[str], bool] | None:
        """A predicate for COPY --exclude patterns, applied to paths relative to a source
        (None when there are none). Bad patterns are a BuildError naming them."""
        if not excludes:
            return None
        try:
            m = Matcher(excludes)
        except DockerignoreError as e:
            raise BuildError(f"--exclude: {e}") from None
        return m.matches

    def source_filter(self, entry: ContextEntry, excludes: Sequence[str] = ()) -> Callable[[str], bool] | None:
        """A predicate over paths inside the directory source `entry` (relative to it) that is
        true for what the copy must skip: .dockerignore'd files and --exclude matches.

        An ignored directory that a `!` exception could re-include something from is not
        skipped (the copy must descend into it; Docker then creates it as the parent of what
        is re-included), matching walk()."""
        ex = self.exclude_matcher(excludes)
        if not self.matcher and ex is None:
            return None
        base = self.real_rel(entry)
        host = entry.host

        def skip(inner: str) -> bool:
            if ex is not None and ex(inner):
                return True
            rel = f"{base}/{inner}" if base else inner
            if not self.is_ignored(rel):
                return False
            return not self._descend_ignored(rel, os.path.join(host, inner))

        return skip

    def _descend_ignored(self, rel: str, host: str, st: os.stat_result | None = None) -> bool:
        """Whether the ignored `rel` (a real path: no symlinks in it) is a directory that
        something re-included by an exception pattern lies under, so that it exists in the
        context as that entry's parent (fsutil sends excluded parents lazily)."""
        if not (self.matcher.has_exceptions and self.matcher.may_include_under(rel)):
            return False
        known = self._visible.get(rel)
        if known is not None:
            return known
        if st is None:
            try:
                pfd, name = self._open_parent(rel)
            except OSError:
                return False
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except OSError:
                return False
            finally:
                os.close(pfd)
        if not stat.S_ISDIR(st.st_mode):
            return False
        # Anything walk_fds yields under it is re-included or (recursively) such a parent.
        self._visible[rel] = False
        visible = False
        try:
            for _ in self.walk_fds(ContextEntry(rel, self._host(rel))):
                visible = True
                break
        except BuildError:
            visible = False
        self._visible[rel] = visible
        return visible

    def _hidden(self, named: str, real: str, is_dir: bool) -> bool:
        """Whether a resolved source (as named, and its real path) is left out by .dockerignore."""
        if not named or not (self.is_ignored(named) or self.is_ignored(real)):
            return False
        return not (is_dir and real and self._descend_ignored(real, ""))

    # -- resolving sources --------------------------------------------------------------------
    def real_rel(self, entry: ContextEntry) -> str:
        """The context-relative path of an entry's resolved host path ("" for the root)."""
        return entry.host[len(self._root_s) + 1:] if entry.host != self._root_s else ""

    def _host(self, rel: str) -> str:
        return os.path.join(self._root_s, rel) if rel else self._root_s

    def _clean_source(self, src: str) -> str:
        cleaned = go_clean(src.lstrip("/") or ".")
        if cleaned == ".." or cleaned.startswith("../"):
            raise BuildError(f"COPY/ADD source {src!r} is outside the build context ({self.root}): "
                             "sources must be inside the context directory")
        return "" if cleaned == "." else cleaned

    def follow(self, rel: str, src: str, *, final: bool = True) -> tuple[str, os.stat_result] | None:
        """Resolve context-relative `rel`, following symlinks inside the context (the last
        component too when `final`): (real rel, lstat) or None if it does not exist. A symlink
        leading out of the context is a BuildError naming `src`.

        The walk goes from directory descriptor to directory descriptor (O_NOFOLLOW), so a
        component swapped for a symlink meanwhile is read as the link it now is, never
        followed by the kernel to somewhere outside."""
        done: list[str] = []
        fds: list[int] = []          # descriptors of done[:len(fds)]
        todo = [p for p in rel.split("/") if p] if rel else []
        todo.reverse()
        links = 0
        root_fd = self.root_fd
        st = os.fstat(root_fd)

        def dir_fd(depth: int) -> int | None:
            """The descriptor of done[:depth], opening what is missing (None: not a directory)."""
            while len(fds) < depth:
                parent = fds[-1] if fds else root_fd
                try:
                    fds.append(os.open(done[len(fds)], _PATH_DIR_FLAGS, dir_fd=parent))
                except (FileNotFoundError, NotADirectoryError):
                    return None
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        return None
                    raise
            return fds[depth - 1] if depth else root_fd

        try:
            while todo:
                c = todo.pop()
                if c in ("", "."):
                    continue
                if c == "..":
                    if not done:
                        raise BuildError(f"COPY/ADD source {src!r} leads outside the build context "
                                         f"({self.root}) through a symlink")
                    done.pop()
                    while len(fds) > len(done):
                        os.close(fds.pop())
                    d = dir_fd(len(done))
                    if d is None:
                        return None
                    st = os.fstat(d)
                    continue
                d = dir_fd(len(done))
                if d is None:
                    return None
                try:
                    st = os.stat(c, dir_fd=d, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                if stat.S_ISLNK(st.st_mode) and (todo or final):
                    links += 1
                    if links > _MAX_LINKS:
                        raise BuildError(f"COPY/ADD source {src!r}: too many levels of symbolic links "
                                         f"at {'/'.join(done + [c])!r} in the build context")
                    try:
                        target = os.readlink(c, dir_fd=d)
                    except FileNotFoundError:
                        return None
                    except OSError as e:
                        if e.errno != errno.EINVAL:
                            raise
                        # No longer a link (replaced meanwhile): look at the name again; the
                        # link count bounds how often.
                        todo.append(c)
                        continue
                    if target.startswith("/"):
                        # An absolute target is fine only when it names a place inside the context.
                        real_target = os.path.normpath(target)
                        if real_target != self._root_s and not real_target.startswith(self._root_s + "/"):
                            raise BuildError(
                                f"COPY/ADD source {src!r}: symlink {'/'.join(done + [c])!r} -> {target!r} "
                                f"leads outside the build context ({self.root})")
                        # Walked again from the root: links in the target resolve like the rest.
                        for fd in fds:
                            os.close(fd)
                        fds.clear()
                        done = []
                        st = os.fstat(root_fd)
                        todo.extend(reversed([q for q in real_target[len(self._root_s):].split("/") if q]))
                    else:
                        todo.extend(reversed(target.split("/")))
                    continue
                done.append(c)
            return "/".join(done), st
        finally:
            for fd in fds:
                os.close(fd)

    def open_dir(self, real: str) -> int:
        """An O_RDONLY descriptor of the directory at context-relative `real` (a path that
        follow() returned: no symlinks in it), opened component by component with O_NOFOLLOW.
        Raises OSError: ENOENT when it vanished, ENOTDIR/ELOOP when a component is no longer
        a directory (swapped for a file or a symlink)."""
        fd = os.dup(self.root_fd)
        try:
            for part in (real.split("/") if real else []):
                nxt = os.open(part, _PATH_DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return os.open(".", _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)

    def _open_parent(self, real: str) -> tuple[int, str]:
        """(descriptor of the parent directory, name) of context-relative `real` (not "")."""
        parent, _, name = real.rpartition("/")
        return self.open_dir(parent), name

    def _stat_in_parent(self, real: str, host: str) -> tuple[int, str, os.stat_result]:
        """(descriptor of the parent directory, name, lstat) of context-relative `real` (not
        ""), for acting on it with ``dir_fd=``; the caller closes the descriptor."""
        try:
            pfd, name = self._open_parent(real)
        except OSError as e:
            raise self._changed(host, e) from None
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError as e:
            os.close(pfd)
            raise self._changed(host, e) from None
        return pfd, name, st

    def _open_at(self, name: str, flags: int, dir_fd: int, host: str) -> int:
        """`name` opened in the directory descriptor `dir_fd`; if that fails, the BuildError
        saying that `host` (its label) disappeared or changed while the build read it."""
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as e:
            raise self._changed(host, e) from None

    def _changed(self, host: str, exc: OSError) -> BuildError:
        if isinstance(exc, FileNotFoundError):
            return BuildError(f"{host}: disappeared from the build context while it was being read")
        # ENOTDIR/ELOOP/EINVAL: a directory or link was replaced by something else meanwhile.
        return BuildError(f"{host}: changed in the build context while it was being read "
                          f"({exc.strerror or exc}); retry once it is stable")

    def resolve(self, src: str, excludes: Sequence[str] = (), *, parents: bool = False) -> list[ContextEntry]:
        """The context entries a COPY/ADD source names, sorted; [] when nothing matches.

        A plain path is looked up (following symlinks inside the context); a glob is matched
        segment by segment. Ignored files (.dockerignore) and --exclude matches are left out.
        With `parents` (COPY --parents) a `**` segment matches any number of directories,
        without it `**` is an ordinary pattern, like `*`; and a `/./` in the source marks where
        the kept parents start: the entries' `rel` is then relative to that point
        (`./x/./y/*.txt` gives `y/a.txt`).
        """
        head = parents_pivot(src) if parents else None
        pivot = self._clean_source(head) if head is not None else ""
        entries = self._resolve(src, excludes, parents)
        if not pivot:
            return entries
        cut = len(pivot) + 1
        # `./x/./` names x itself with nothing kept above it: its contents go to the destination.
        return [ContextEntry(e.rel[cut:] if e.rel != pivot else "", e.host) for e in entries
                if e.rel == pivot or e.rel.startswith(pivot + "/")]

    def _resolve(self, src: str, excludes: Sequence[str], parents: bool) -> list[ContextEntry]:
        rel = self._clean_source(src)
        ex = self.exclude_matcher(excludes)
        if not has_glob(rel):
            found = self.follow(rel, src)
            if found is None:
                return []
            real, st = found
            if self._hidden(rel, real, stat.S_ISDIR(st.st_mode)):
                return []
            if ex is not None and rel and ex(rel.rsplit("/", 1)[-1]):
                return []
            return [ContextEntry(rel, self._host(real))]
        out: list[ContextEntry] = []
        for named, real in self._glob(rel.split("/"), src, parents):
            if ex is not None and ex(named.rsplit("/", 1)[-1]):
                continue
            out.append(ContextEntry(named, self._host(real)))
        out.sort(key=lambda e: os.fsencode(e.rel))
        return out

    def _glob(self, segments: list[str], src: str, parents: bool) -> Iterator[tuple[str, str]]:
        """(named rel, real rel) for every path matching the segment patterns (the one glob of
        builder/context/globbing.py: `**` is any depth with --parents only). A directory
        that .dockerignore excludes is seen only when something under it is re-included."""
        try:
            compiled = compile_segments(segments, any_depth=parents)
        except ValueError as e:
            raise BuildError(f"COPY/ADD source {src!r}: bad glob pattern: {e}") from None

        def step(real: str, name: str, named: str) -> tuple[str, bool] | None:
            found = self.follow(f"{real}/{name}" if real else name, src, final=True)
            if found is None:
                return None
            is_dir = stat.S_ISDIR(found[1].st_mode)
            if self._hidden(named, found[0], is_dir):
                return None
            return found[0], is_dir

        for named, real in Walker(self._listdir, step).matches(compiled, ""):
            yield named, real

    def _listdir(self, real: str) -> list[str]:
        """Names in the context directory `real`, in the order walks use ([] if it is not a
        directory, or no longer one)."""
        try:
            fd = self.open_dir(real)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            if e.errno == errno.ELOOP:
                return []
            raise
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    # -- walking and hashing ------------------------------------------------------------------
    def walk(self, entry: ContextEntry, excludes: Sequence[str] = ()) -> Iterator[tuple[str, str, os.stat_result]]:
        """Every entry under the directory source `entry`: (path relative to it, host path,
        lstat), depth-first in name order, .dockerignore and --exclude applied. Symlinks are
        reported, not followed. An ignored directory is skipped whole unless an exception
        pattern could re-include something inside it. The host path is a label: the entries
        were read through directory descriptors (see walk_fds)."""
        for inner, host, st, _dir_fd, _name in self.walk_fds(entry, excludes):
            yield inner, host, st

    def walk_fds(self, entry: ContextEntry, excludes: Sequence[str] = (), *,
                 hidden: list[str] | None = None, top_fd: int | None = None) -> Iterator[tuple[str, str, os.stat_result, int, str]]:
        """walk(), with the descriptor of each entry's directory and its name in it, to open
        or readlink the entry relative to that descriptor (valid until the next item).

        With `hidden`, the paths (relative to `entry`) that .dockerignore leaves out are
        appended to it: an ignored directory once, not what is under it. `top_fd`: a
        descriptor of the entry already held (walked instead of opening the entry again)."""
        ex = Matcher(excludes).matches if excludes else None
        m = self.matcher if self.matcher else None
        base = self.real_rel(entry)
        prefix = base + "/" if base else ""
        host_prefix = self._host(base) + "/"
        parent_state: MatchState | None = None
        if m is not None and base:
            # Seed the incremental matcher with the source directory's own ancestry.
            parts = base.split("/")
            for i in range(len(parts)):
                _, parent_state = m.match_child("/".join(parts[:i + 1]), parent_state)
        S_ISDIR = stat.S_ISDIR

        def admit(inner: str, st: os.stat_result, pstate: MatchState | None) -> tuple[bool, MatchState | None]:
            state: MatchState | None = None
            if m is not None:
                if not S_ISDIR(st.st_mode) and pstate is not None:
                    if m.child_excluded(prefix + inner, pstate):
                        if hidden is not None:
                            hidden.append(inner)
                        return False, None
                else:
                    ignored, state = m.match_child(prefix + inner, pstate)
                    if ignored and not (S_ISDIR(st.st_mode) and self._descend_ignored(prefix + inner, "", st)):
                        if hidden is not None:
                            hidden.append(inner)
                        return False, None
            if ex is not None and ex(inner):
                return False, None
            return True, state

        try:
            top = self.open_dir(base) if top_fd is None else os.open(".", _DIR_FLAGS, dir_fd=top_fd)
        except OSError as e:
            raise self._changed(entry.host, e) from None
        yield from self._walk_open(top, host_prefix, state=parent_state,
                                   admit=admit if m is not None or ex is not None else None)

    def _walk_open(self, top: int, label: str, *, bytes_order: bool = False, state: MatchState | None = None,
                   skip: Callable[[str], bool] | None = None,
                   admit: Callable[[str, os.stat_result, MatchState | None], tuple[bool, MatchState | None]]
                   | None = None) -> Iterator[tuple[str, str, os.stat_result, int, str]]:
        """The one descriptor walk under the open directory `top` (closed here), depth-first in
        name order (byte order with `bytes_order`, as tars are written): (path relative to it,
        `label` + that path, lstat, directory descriptor, name in it), the descriptor valid
        until the next item. `skip(inner)` prunes an entry before it is read;
        `admit(inner, lstat, parent's state)` -> (False, _) prunes it after, (True, state) keeps
        it and hands `state` to a directory's children (`state` is the top's)."""
        S_ISDIR = stat.S_ISDIR
        try:
            first = _scandir_sorted(top, bytes_order=bytes_order)
        except BaseException:
            os.close(top)
            raise
        stack: list[tuple[Iterator[os.DirEntry], str, MatchState | None, int]] = [(iter(first), "", state, top)]
        try:
            while stack:
                entries, inner_dir, pstate, dfd = stack[-1]
                e = next(entries, None)
                if e is None:
                    stack.pop()
                    os.close(dfd)
                    continue
                inner = inner_dir + e.name
                if skip is not None and skip(inner):
                    continue
                host = label + inner
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError as exc:
                    raise self._changed(host, exc) from None
                dstate: MatchState | None = None
                if admit is not None:
                    keep, dstate = admit(inner, st, pstate)
                    if not keep:
                        continue
                yield inner, host, st, dfd, e.name
                if S_ISDIR(st.st_mode):
                    sub = self._open_at(e.name, _DIR_FLAGS, dfd, host)
                    stack.append((iter(_scandir_sorted(sub, bytes_order=bytes_order)), inner + "/", dstate, sub))
        finally:
            for item in stack:
                os.close(item[3])

    def iter_tree(self, entry: ContextEntry, skip: Callable[[str], bool] | None = None
                  ) -> Iterator[tuple[str, str, os.stat_result, int | None, str]]:
        """The tree a COPY writes for `entry`: first the entry itself as ("", host, lstat,
        parent descriptor or None for the context root, name), then, for a directory, every
        entry under it in tar order (byte order of names, depth-first) as (path relative to
        it, host, lstat, directory descriptor, name); `skip(inner)` prunes an entry and what
        is under it. Everything is read through descriptors; the labels are host paths."""
        real = self.real_rel(entry)
        if not real:
            st = os.fstat(self.root_fd)
            yield "", entry.host, st, None, ""
            top = self.open_dir("")
        else:
            pfd, name, st = self._stat_in_parent(real, entry.host)
            try:
                yield "", entry.host, st, pfd, name
                if not stat.S_ISDIR(st.st_mode):
                    return
                top = self._open_at(name, _DIR_FLAGS, pfd, entry.host)
            finally:
                os.close(pfd)
        yield from self._walk_open(top, entry.host + "/", bytes_order=True, skip=skip)

    def entry_stat(self, entry: ContextEntry) -> os.stat_result:
        """lstat of a resolved entry, read through its parent's descriptor."""
        for _inner, _host, st, _dfd, _name in self.iter_tree(entry, skip=lambda _: True):
            return st
        raise AssertionError("iter_tree yields the entry first")

    def open_file(self, entry: ContextEntry) -> BinaryIO | None:
        """The resolved entry opened for reading when it is a regular file (None otherwise:
        a FIFO or device is never opened), checked against what the checksum pass read."""
        real = self.real_rel(entry)
        if not real:
            return None
        pfd, name, st = self._stat_in_parent(real, entry.host)
        try:
            if not stat.S_ISREG(st.st_mode):
                return None
            fd = self._open_at(name, FILE_FLAGS, pfd, entry.host)
        finally:
            os.close(pfd)
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino:
            os.close(fd)
            raise BuildError(f"{entry.host}: was replaced while being read; retry once it is stable")
        try:
            self.check_unchanged(entry.host, now)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def mount_source(self, src: str) -> "MountSource":
        """What `RUN --mount=type=bind,source=src` (from the context) mounts: an O_PATH
        descriptor of the source inside the context (symlinks followed inside it only, like
        COPY) and, for a directory, the paths under it that .dockerignore leaves out, which
        the mount must hide (BuildKit's mount only sees what the context transfer sends)."""
        rel = self._clean_source(src)
        found = self.follow(rel, src)
        if found is None or self._hidden(rel, found[0], stat.S_ISDIR(found[1].st_mode)):
            why = " (excluded by .dockerignore)" if found is not None else ""
            raise BuildError(f"bind mount source {src!r}: no such file or directory in the build context "
                             f"({self.root}){why}")
        real, _ = found
        entry = ContextEntry(rel, self._host(real))
        try:
            if real:
                pfd, name = self._open_parent(real)
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                finally:
                    os.close(pfd)
            else:
                fd = os.dup(self.root_fd)
        except OSError as e:
            raise self._changed(entry.host, e) from None
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            # follow() saw no link here: it was swapped in since. Never hand a link to mount.
            os.close(fd)
            raise self._changed(entry.host, OSError(errno.ELOOP, "replaced by a symbolic link"))
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            os.close(fd)
            raise BuildError(f"bind mount source {src!r}: {entry.host} is neither a directory nor a "
                             "regular file")
        hidden: list[str] = []
        if stat.S_ISDIR(st.st_mode) and self.matcher:
            try:
                for _ in self.walk_fds(entry, hidden=hidden, top_fd=fd):
                    pass
            except BaseException:
                os.close(fd)
                raise
        return MountSource(fd, entry.host, st, hidden)

    def check_unchanged(self, host: str, st: os.stat_result) -> None:
        """Refuse to copy a file other than the version the checksum pass read (its size,
        times or inode differ): the layer must hold what its cache key says."""
        seen = self._seen.get(host)
        if seen is not None and (seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns) != \
                (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            raise BuildError(f"{host}: changed in the build context while the build was reading it; "
                             "retry once it is stable")

    def file_digest(self, host: str, st: os.stat_result | None = None, *, dir_fd: int | None = None,
                    name: str | None = None) -> str:
        """sha256 of a context file's content, through the hash cache; read (on a miss) from
        `name` opened in the directory descriptor `dir_fd`, else from `host`."""
        try:
            digest = self.hash_cache.digest(host, st, dir_fd=dir_fd, name=name)
        except OSError as e:
            raise self._changed(host, e) from None
        if st is not None:
            self._seen[host] = st
        return digest

    def checksum(self, srcs: Sequence[str], excludes: Sequence[str] = (), *, parents: bool = False,
                 uid: int | None = None, gid: int | None = None,
                 chmod: Callable[[int, bool], int] | None = None) -> str:
        """Shorthand for checksum_sources(self, ...)."""
        return checksum_sources(self, srcs, excludes, parents=parents, uid=uid, gid=gid, chmod=chmod)


def _source_files(ctx: BuildContext, srcs: Sequence[str], excludes: Sequence[str],
                  parents: bool) -> Iterator[tuple[str, str, os.stat_result, int | None, str]]:
    """(path as named, host path, lstat, directory descriptor, name in it) of every file a
    COPY/ADD of `srcs` takes, in order (descriptor None for the context root itself)."""
    for src in srcs:
        entries = ctx.resolve(src, excludes, parents=parents)
        if not entries and has_glob(ctx._clean_source(src)):
            # BuildKit's COPY/ADD allow a wildcard that matches nothing (AllowEmptyWildcard).
            continue
        if not entries:
            raise BuildError(f"COPY/ADD source {src!r}: no such file or directory in the build context "
                             f"({ctx.root}){' (excluded by .dockerignore)' if _ignored_literal(ctx, src) else ''}")
        for e in entries:
            # The entry itself, read through its parent's descriptor (closed after this item).
            top = ctx.iter_tree(e, skip=lambda _: True)
            _inner, host, st, dfd, name = next(top)
            yield e.rel, e.host, st, dfd, name
            top.close()
            if stat.S_ISDIR(st.st_mode):
                prefix = e.rel + "/" if e.rel else ""
                for inner, host, est, dfd, name in ctx.walk_fds(e, excludes):
                    yield prefix + inner, host, est, dfd, name


def _records(ctx: BuildContext, srcs: Sequence[str], excludes: Sequence[str], parents: bool,
             uid: int | None, gid: int | None,
             chmod: Callable[[int, bool], int] | None) -> Iterator[tuple[str, str, int, int, int, str]]:
    owner_uid = 0 if uid is None else uid
    owner_gid = 0 if gid is None else gid
    digest = ctx.file_digest
    try:
        for path, host, st, dfd, name in _source_files(ctx, srcs, excludes, parents):
            m = st.st_mode
            mode = m & 0o7777
            if stat.S_ISREG(m):
                kind, content = "file", digest(host, st, dir_fd=dfd, name=name)
            elif stat.S_ISLNK(m):
                try:
                    content = os.readlink(name, dir_fd=dfd) if dfd is not None else os.readlink(host)
                except OSError as e:
                    raise ctx._changed(host, e) from None
                kind = "symlink"
            else:
                kind = _kind(m)
                content = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}" if kind in ("char", "block") else ""
            if chmod is not None and kind != "symlink":
                mode = chmod(mode, kind == "dir")
            yield path, kind, mode, owner_uid, owner_gid, content
    except FileNotFoundError as exc:
        # Something else deleted a source between resolving and reading it (lstat, readlink, walk).
        raise ctx._changed(exc.filename, exc) from None


def source_records(ctx: BuildContext, srcs: Sequence[str], excludes: Sequence[str] = (), *,
                   parents: bool = False, uid: int | None = None, gid: int | None = None,
                   chmod: Callable[[int, bool], int] | None = None) -> list[SourceRecord]:
    """Every file a COPY/ADD of `srcs` would take from the context, as SourceRecords (in order).

    A source that matches nothing is a BuildError naming it. See checksum_sources for fields.
    """
    return [SourceRecord(*r) for r in _records(ctx, srcs, excludes, parents, uid, gid, chmod)]


def diff_source_records(old: Sequence[SourceRecord], new: Sequence[SourceRecord]) -> dict[str, list[str]]:
    """What changed between two recordings of a COPY/ADD's sources (for `cache explain`):
    paths `added`, `removed`, and `changed` (with what: content, mode, type, owner, link)."""
    before = {r.path: r for r in old}
    after = {r.path: r for r in new}
    changed: list[str] = []
    for path in sorted(before.keys() & after.keys()):
        a, b = before[path], after[path]
        what = [name for name, x, y in (("type", a.kind, b.kind), ("mode", a.mode, b.mode),
                                        ("owner", (a.uid, a.gid), (b.uid, b.gid)))
                if x != y]
        if a.content != b.content:
            what.append("link target" if b.kind == "symlink" else "content")
        if what:
            changed.append(f"{path} ({', '.join(what)})")
    return {"added": sorted(after.keys() - before.keys()), "removed": sorted(before.keys() - after.keys()),
            "changed": changed}


def _ignored_literal(ctx: BuildContext, src: str) -> bool:
    try:
        rel = ctx._clean_source(src)
    except BuildError:
        return False
    return bool(rel) and not has_glob(rel) and ctx.is_ignored(rel)


def checksum_sources(ctx: BuildContext, srcs: Sequence[str], excludes: Sequence[str] = (), *,
                     parents: bool = False, uid: int | None = None, gid: int | None = None,
                     chmod: Callable[[int, bool], int] | None = None) -> str:
    """A stable `sha256:` digest of what a COPY/ADD takes from the context: the cache key input.

    It covers, for every source file after .dockerignore and --exclude, in walk order: its path
    relative to the context (as named by the source), its type (file, dir, symlink, fifo, char,
    block), its permission bits (after `chmod(mode, is_dir)` when --chmod is given), its owner
    (the --chown `uid`/`gid`, else 0:0, as COPY from the context always gives root), and its
    content: sha256 of a file, the target of a symlink, major,minor of a device. The source
    strings themselves are covered through the paths they matched. Not covered: mtimes,
    the context's absolute path, inode numbers, xattrs.
    """
    h = hashlib.sha256()
    lines = [_line(*r) for r in _records(ctx, srcs, excludes, parents, uid, gid, chmod)]
    h.update("".join(lines).encode("utf-8", "surrogateescape"))
    return "sha256:" + h.hexdigest()


def _scandir_sorted(fd: int, *, bytes_order: bool = False) -> list[os.DirEntry]:
    # Name order (code points; fixed for a given tree, which is all a cache key needs); tars
    # are written in byte order. The entries' stat() reads relative to `fd`: keep it open.
    with os.scandir(fd) as it:
        if bytes_order:
            return sorted(it, key=lambda e: os.fsencode(e.name))
        return sorted(it, key=lambda e: e.name)


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


# A Dockerfile or .dockerignore larger than this is refused (a link to /dev/zero, a bomb).
CONTEXT_TEXT_MAX = 16 << 20


def read_in_context(root: str | os.PathLike, rel: str, what: str) -> str | None:
    """The text of ``rel`` (a Dockerfile, a .dockerignore) inside the context ``root``, or None
    when it does not exist. Links resolve inside the root, as the context's own files do (a
    context may come from a stranger: ``Dockerfile -> /etc/shadow`` must not be read, and
    printed back in a parse error); it must be a regular file of at most CONTEXT_TEXT_MAX bytes.
    """
    from registry import inroot
    with inroot.opened_root(root) as root_fd:
        try:
            fd = inroot.open_in_root(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BuildError(f"cannot read {what} {rel} in the build context: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BuildError(f"{what} {rel} in the build context is not a regular file")
        data = f.read(CONTEXT_TEXT_MAX + 1)
    if len(data) > CONTEXT_TEXT_MAX:
        raise BuildError(f"{what} {rel} in the build context is larger than {CONTEXT_TEXT_MAX} bytes")
    return data.decode("utf-8", "surrogateescape")


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def _unpack_context(spec_s: str, stdin: BinaryIO | None,
                    tmp_dir: str | os.PathLike | None) -> tuple[str, str | None]:
    """Unpack a tar context (file or stdin, any compression) into a new temporary directory:
    (its path, None); or for a bare Dockerfile on stdin: (an empty directory, the text)."""
    import shutil
    import tempfile

    from registry.compression import open_decompressed, with_head
    from registry.errors import RegistryError
    from registry.tarsafe import extract_tar

    dockerfile_text: str | None = None
    if spec_s == "-":
        raw: BinaryIO = stdin if stdin is not None else sys.stdin.buffer
        label = "standard input"
    else:
        if not os.path.exists(spec_s):
            raise BuildError(f"build context {spec_s!r} not found: give a directory, a tar file or '-'")
        raw = open(spec_s, "rb")
        label = spec_s
    try:
        stream = open_decompressed(raw)
        head = stream.read(512)
        stream = with_head(head, stream)
        root = tempfile.mkdtemp(prefix="pybuild-context-", dir=tmp_dir)
        if _is_tar(head):
            try:
                extract_tar(stream, root, whiteouts="none", same_owner=False)
            except RegistryError as e:
                shutil.rmtree(root, ignore_errors=True)
                raise BuildError(f"build context from {label}: {e}") from None
        elif spec_s == "-":
            dockerfile_text = stream.read().decode("utf-8", "surrogateescape")
        else:
            shutil.rmtree(root, ignore_errors=True)
            raise BuildError(f"build context {spec_s!r} is neither a directory nor a tar archive")
    finally:
        if spec_s != "-":
            raw.close()
    return root, dockerfile_text


def open_context(spec: str | os.PathLike, *, dockerfile: str | os.PathLike | None = None,
                 hash_cache: HashCache | None = None, stdin: BinaryIO | None = None,
                 tmp_dir: str | os.PathLike | None = None) -> BuildContext:
    """Open the build context named on the command line: a directory, a tar file (plain or
    compressed), or `-` for stdin (a tar, or a bare Dockerfile meaning an empty context).

    `dockerfile` is the Dockerfile's path (relative ones are relative to the current directory
    for a directory context, to the archive root for a tar context); `<Dockerfile>.dockerignore`
    next to it replaces the context's `.dockerignore`. Tar contexts are unpacked safely into a
    temporary directory (under `tmp_dir`), removed by close().
    """
    spec_s = os.fspath(spec)
    dockerfile_text: str | None = None
    temporary = spec_s == "-" or not os.path.isdir(spec_s)
    if temporary:
        root, dockerfile_text = _unpack_context(spec_s, stdin, tmp_dir)
    else:
        root = spec_s
    root_real = os.path.realpath(root)
    try:
        ignore_file: Path | None = None
        ignore_text: str | None = None
        if dockerfile is not None and dockerfile_text is None:
            df = Path(dockerfile)
            if temporary and not df.is_absolute():
                # Inside the unpacked archive: resolved in its root, never on the host.
                ignore_text = read_in_context(root_real, str(df) + ".dockerignore", "ignore file")
                if ignore_text is not None:
                    ignore_file = Path(root_real) / (str(df) + ".dockerignore")
            else:
                candidate = Path(str(df) + ".dockerignore")
                if candidate.is_file():
                    ignore_file = candidate
                    ignore_text = _read_text(candidate)
        if ignore_file is None:
            ignore_text = read_in_context(root_real, ".dockerignore", "ignore file")
            if ignore_text is not None:
                ignore_file = Path(root_real) / ".dockerignore"
        patterns = read_ignore_lines(ignore_text) if ignore_text is not None else []
        return BuildContext(root_real, ignore_file=ignore_file, ignore_patterns=patterns, hash_cache=hash_cache,
                            temporary=temporary, dockerfile_text=dockerfile_text)
    except BaseException:
        if temporary:
            import shutil

            shutil.rmtree(root_real, ignore_errors=True)
        raise

