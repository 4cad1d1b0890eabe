"""The build context: a directory, a tar file or `-` (a tar, or a bare Dockerfile, on stdin).

What the build sees of it follows Docker: `.dockerignore` at the context root, or
`<Dockerfile>.dockerignore` next to the Dockerfile instead; ignored files do not exist for COPY
and ADD. Sources are resolved inside the context only: a `..` that climbs out or a symlink that
leads out is a BuildError naming the source. Only referenced files are ever read, and their
hashes come from the stat-keyed hash cache (builder/hashcache.py).

COPY/ADD source globs follow Go's filepath.Match per path segment (`*`, `?`, `[...]`, `\\`
escapes), plus `**` for any number of directories (used with `--parents`).
"""
from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, NamedTuple, Sequence

from builder.dockerignore import DockerignoreError, Matcher, MatchState, go_clean, go_match_regex, read_ignore_lines
from builder.errors import BuildError
from builder.hashcache import HashCache

_MAX_LINKS = 40
_GLOB_CHARS = frozenset("*?[\\")


class ContextEntry(NamedTuple):
    """A matched COPY source, unpackable as `rel, host`: `rel` as the source named it
    (context-relative, "" for the root) and `host` the path on disk after following symlinks
    inside the context (use BuildContext.real_rel for its context-relative form)."""

    rel: str
    host: str


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


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "char"
    if stat.S_ISBLK(mode):
        return "block"
    return "socket"


def has_glob(pattern: str) -> bool:
    """Whether a COPY source contains glob syntax."""
    return any(c in _GLOB_CHARS for c in pattern)


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

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Save the hash cache; remove the unpacked copy of a tar context."""
        self.hash_cache.save()
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
        """Whether the ignored `rel` is a directory that an exception pattern may re-include from."""
        if not (self.matcher.has_exceptions and self.matcher.may_include_under(rel)):
            return False
        try:
            return stat.S_ISDIR((st or os.lstat(host)).st_mode)
        except FileNotFoundError:
            return False

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
        component too when `final`): (real rel, stat) or None if it does not exist. A symlink
        leading out of the context is a BuildError naming `src`."""
        done: list[str] = []
        todo = [p for p in rel.split("/") if p] if rel else []
        todo.reverse()
        links = 0
        st = os.lstat(self._root_s)
        while todo:
            c = todo.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if not done:
                    raise BuildError(f"COPY/ADD source {src!r} leads outside the build context "
                                     f"({self.root}) through a symlink")
                done.pop()
                st = os.lstat(self._host("/".join(done)))
                continue
            p = self._host("/".join(done + [c]))
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                return None
            except NotADirectoryError:
                return None
            if stat.S_ISLNK(st.st_mode) and (todo or final):
                links += 1
                if links > _MAX_LINKS:
                    raise BuildError(f"COPY/ADD source {src!r}: too many levels of symbolic links "
                                     f"at {'/'.join(done + [c])!r} in the build context")
                target = os.readlink(p)
                if target.startswith("/"):
                    # An absolute target is fine only when it names a place inside the context.
                    real_target = os.path.normpath(target)
                    if real_target != self._root_s and not real_target.startswith(self._root_s + "/"):
                        raise BuildError(
                            f"COPY/ADD source {src!r}: symlink {'/'.join(done + [c])!r} -> {target!r} "
                            f"leads outside the build context ({self.root})")
                    done = [q for q in real_target[len(self._root_s):].split("/") if q]
                else:
                    todo.extend(reversed(target.split("/")))
                continue
            done.append(c)
        return "/".join(done), st

    def resolve(self, src: str, excludes: Sequence[str] = (), *, parents: bool = False) -> list[ContextEntry]:
        """The context entries a COPY/ADD source names, sorted; [] when nothing matches.

        A plain path is looked up (following symlinks inside the context); a glob is matched
        segment by segment. Ignored files (.dockerignore) and --exclude matches are left out.
        With `parents` (COPY --parents) a `**` segment matches any number of directories,
        without it `**` is an ordinary pattern, like `*`; and a `/./` in the source marks where
        the kept parents start: the entries' `rel` is then relative to that point
        (`./x/./y/*.txt` gives `y/a.txt`).
        """
        pivot = ""
        if parents:
            body = src.lstrip("/")
            while body.startswith("./"):
                body = body[2:]
            head, sep, _ = body.partition("/./")
            if sep:
                pivot = self._clean_source(head)
        entries = self._resolve(src, excludes, parents)
        if not pivot:
            return entries
        cut = len(pivot) + 1
        return [ContextEntry(e.rel[cut:], e.host) for e in entries if e.rel.startswith(pivot + "/")]

    def _resolve(self, src: str, excludes: Sequence[str], parents: bool) -> list[ContextEntry]:
        rel = self._clean_source(src)
        ex = self.exclude_matcher(excludes)
        if not has_glob(rel):
            found = self.follow(rel, src)
            if found is None:
                return []
            real, _ = found
            if rel and (self.is_ignored(rel) or self.is_ignored(real)):
                return []
            if ex is not None and rel and ex(rel.rsplit("/", 1)[-1]):
                return []
            return [ContextEntry(rel, self._host(real))]
        out: list[ContextEntry] = []
        for named, real in self._glob(rel.split("/"), src, parents):
            if self.is_ignored(named) or self.is_ignored(real):
                continue
            if ex is not None and ex(named.rsplit("/", 1)[-1]):
                continue
            out.append(ContextEntry(named, self._host(real)))
        out.sort(key=lambda e: os.fsencode(e.rel))
        return out

    def _glob(self, segments: list[str], src: str, parents: bool) -> Iterator[tuple[str, str]]:
        """(named rel, real rel) for every path matching the segment patterns."""
        import re

        compiled: list[re.Pattern[str] | None] = []
        for seg in segments:
            if seg == "**" and parents:
                compiled.append(None)
                continue
            if not has_glob(seg):
                compiled.append(re.compile(re.escape(seg), re.DOTALL))
                continue
            try:
                compiled.append(re.compile(go_match_regex(seg), re.DOTALL))
            except ValueError as e:
                raise BuildError(f"COPY/ADD source {src!r}: bad glob pattern {seg!r}: {e}") from None
        seen: set[str] = set()

        def walk(i: int, named: str, real: str) -> Iterator[tuple[str, str]]:
            if i == len(compiled):
                if named not in seen:
                    seen.add(named)
                    yield named, real
                return
            pat = compiled[i]
            host = self._host(real)
            if pat is None:
                # `**`: zero directories here, or descend one more and stay on this segment.
                yield from walk(i + 1, named, real)
                for name in self._listdir(host):
                    crel = f"{named}/{name}" if named else name
                    found = self.follow(f"{real}/{name}" if real else name, src, final=True)
                    if found is not None and stat.S_ISDIR(found[1].st_mode) and not self.is_ignored(crel):
                        yield from walk(i, crel, found[0])
                return
            for name in self._listdir(host):
                if not pat.fullmatch(name):
                    continue
                crel = f"{named}/{name}" if named else name
                found = self.follow(f"{real}/{name}" if real else name, src, final=True)
                if found is None:
                    continue
                if i + 1 < len(compiled) and not stat.S_ISDIR(found[1].st_mode):
                    continue
                yield from walk(i + 1, crel, found[0])

        yield from walk(0, "", "")

    @staticmethod
    def _listdir(host: str) -> list[str]:
        """Names in a directory, in the order walks use ([] if it is not a directory)."""
        try:
            names = os.listdir(host)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(names)

    # -- walking and hashing ------------------------------------------------------------------
    def walk(self, entry: ContextEntry, excludes: Sequence[str] = ()) -> Iterator[tuple[str, str, os.stat_result]]:
        """Every entry under the directory source `entry`: (path relative to it, host path,
        lstat), depth-first in name order, .dockerignore and --exclude applied. Symlinks are
        reported, not followed. An ignored directory is skipped whole unless an exception
        pattern could re-include something inside it."""
        ex = Matcher(excludes).matches if excludes else None
        m = self.matcher if self.matcher else None
        base = self.real_rel(entry)
        prefix = base + "/" if base else ""
        parent_state: MatchState | None = None
        if m is not None and base:
            # Seed the incremental matcher with the source directory's own ancestry.
            parts = base.split("/")
            for i in range(len(parts)):
                _, parent_state = m.match_child("/".join(parts[:i + 1]), parent_state)
        S_ISDIR = stat.S_ISDIR
        stack: list[tuple[Iterator[os.DirEntry], str, MatchState | None]] = [
            (iter(_scandir_sorted(entry.host)), "", parent_state)]
        while stack:
            entries, inner_dir, pstate = stack[-1]
            e = next(entries, None)
            if e is None:
                stack.pop()
                continue
            inner = inner_dir + e.name
            st = e.stat(follow_symlinks=False)
            is_dir = S_ISDIR(st.st_mode)
            state: MatchState | None = None
            if m is not None:
                if not is_dir and pstate is not None:
                    if m.child_excluded(prefix + inner, pstate):
                        continue
                else:
                    ignored, state = m.match_child(prefix + inner, pstate)
                    if ignored and not (is_dir and self._descend_ignored(prefix + inner, e.path, st)):
                        continue
            if ex is not None and ex(inner):
                continue
            yield inner, e.path, st
            if is_dir:
                stack.append((iter(_scandir_sorted(e.path)), inner + "/", state))

    def file_digest(self, host: str, st: os.stat_result | None = None) -> str:
        """sha256 of a context file's content, through the hash cache."""
        try:
            return self.hash_cache.digest(host, st)
        except FileNotFoundError:
            raise BuildError(f"{host}: disappeared from the build context while it was being read") from None

    def checksum(self, srcs: Sequence[str], excludes: Sequence[str] = (), *, parents: bool = False,
                 uid: int | None = None, gid: int | None = None,
                 chmod: Callable[[int, bool], int] | None = None) -> str:
        """Shorthand for checksum_sources(self, ...)."""
        return checksum_sources(self, srcs, excludes, parents=parents, uid=uid, gid=gid, chmod=chmod)


def _source_files(ctx: BuildContext, srcs: Sequence[str], excludes: Sequence[str],
                  parents: bool) -> Iterator[tuple[str, str, os.stat_result]]:
    """(path as named, host path, lstat) of every file a COPY/ADD of `srcs` takes, in order."""
    for src in srcs:
        entries = ctx.resolve(src, excludes, parents=parents)
        if not entries:
            raise BuildError(f"COPY/ADD source {src!r}: no such file or directory in the build context "
                             f"({ctx.root}){' (excluded by .dockerignore)' if _ignored_literal(ctx, src) else ''}")
        for e in entries:
            st = os.lstat(e.host)
            yield e.rel, e.host, st
            if stat.S_ISDIR(st.st_mode):
                prefix = e.rel + "/" if e.rel else ""
                for inner, host, est in ctx.walk(e, excludes):
                    yield prefix + inner, host, est


def _records(ctx: BuildContext, srcs: Sequence[str], excludes: Sequence[str], parents: bool,
             uid: int | None, gid: int | None,
             chmod: Callable[[int, bool], int] | None) -> Iterator[tuple[str, str, int, int, int, str]]:
    owner_uid = 0 if uid is None else uid
    owner_gid = 0 if gid is None else gid
    digest = ctx.file_digest
    try:
        for path, host, st in _source_files(ctx, srcs, excludes, parents):
            m = st.st_mode
            mode = m & 0o7777
            if stat.S_ISREG(m):
                kind, content = "file", digest(host, st)
            elif stat.S_ISLNK(m):
                kind, content = "symlink", os.readlink(host)
            else:
                kind = _kind(m)
                content = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}" if kind in ("char", "block") else ""
            if chmod is not None and kind != "symlink":
                mode = chmod(mode, kind == "dir")
            yield path, kind, mode, owner_uid, owner_gid, content
    except FileNotFoundError as exc:
        # Something else deleted a source between resolving and reading it (lstat, readlink, walk).
        raise BuildError(f"{exc.filename}: disappeared from the build context while it was being read") from None


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


def _scandir_sorted(path: str) -> list[os.DirEntry]:
    # Name order (code points; fixed for a given tree, which is all a cache key needs).
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


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
        if dockerfile is not None and dockerfile_text is None:
            df = Path(dockerfile)
            if temporary and not df.is_absolute():
                df = Path(root_real) / df
            candidate = Path(str(df) + ".dockerignore")
            if candidate.is_file():
                ignore_file = candidate
        if ignore_file is None and os.path.isfile(os.path.join(root_real, ".dockerignore")):
            ignore_file = Path(root_real) / ".dockerignore"
        patterns = read_ignore_lines(_read_text(ignore_file)) if ignore_file is not None else []
        return BuildContext(root_real, ignore_file=ignore_file, ignore_patterns=patterns, hash_cache=hash_cache,
                            temporary=temporary, dockerfile_text=dockerfile_text)
    except BaseException:
        if temporary:
            import shutil

            shutil.rmtree(root_real, ignore_errors=True)
        raise

