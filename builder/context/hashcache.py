"""A stat-keyed cache of file content hashes, so unchanged context files are not read again.

An entry is keyed by the file's absolute path and trusted only while (size, mtime_ns, inode,
ctime_ns) are unchanged: any write, truncate, rename-over or chmod sets ctime, and ctime cannot
be set back from user space. A stale hit would need a file rewritten within the same timestamp
tick as its previous change, right after we looked at it. To close that window (git's "racy"
problem) a file whose ctime is within RACY_NS of the moment we stat it for hashing (2 s on file
systems with whole-second times) is not cached: it is simply hashed again next time.

Storage: `<root>/cache/hashes.v1`, a marshal'ed dict written atomically (temp file + rename).
Loading it costs a few milliseconds for tens of thousands of entries, which matters for warm
builds. Two builds saving at once merge with what is on disk; a lost entry only costs a re-hash.
Entries unused for MAX_AGE_S are dropped on save.
"""
from __future__ import annotations

import hashlib
import marshal
import os
import stat
import time
from pathlib import Path

from builder.errors import BuildError
from builder.root import Root

_MAGIC = b"PBHASH1\n"
RACY_NS = 100_000_000
RACY_COARSE_NS = 2_000_000_000
MAX_AGE_S = 30 * 24 * 3600
_CHUNK = 1 << 20
# NONBLOCK: a file swapped for a FIFO between its stat and this open must not hang the build.
_FD_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# value: (size, mtime_ns, ino, ctime_ns, sha256 digest bytes, last used epoch seconds)
_Entry = tuple[int, int, int, int, bytes, int]


class HashCache:
    """File sha256 digests keyed by stat identity, persisted under the store root."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, _Entry] = {}
        self._dirty: dict[str, _Entry] = {}
        self._loaded_mtime: int | None = None
        self.hits = 0
        self.misses = 0
        # Last-used times are coarse (see digest), so one clock reading per cache instance will do.
        self._now_s = int(time.time())
        self.bytes_hashed = 0
        if self.path is not None:
            self._entries = self._load()

    def _load(self) -> dict[str, _Entry]:
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return {}
        self._loaded_mtime = st.st_mtime_ns
        if not data.startswith(_MAGIC):
            return {}
        try:
            entries = marshal.loads(data[len(_MAGIC):])
        except (ValueError, EOFError, TypeError):
            return {}  # a damaged cache is only a cold cache
        return entries if isinstance(entries, dict) else {}

    def digest(self, path: str | os.PathLike, st: os.stat_result | None = None, *,
               dir_fd: int | None = None, name: str | None = None) -> str:
        """`sha256:<hex>` of the regular file at `path` (absolute), from the cache when it is fresh.

        With `dir_fd` and `name` (and `st`), a miss reads `name` opened in that directory
        descriptor (O_NOFOLLOW|O_NONBLOCK) and `path` is only the cache key: an untrusted tree
        is never re-walked by path. The file read must be the regular file `st` describes,
        else it is a BuildError."""
        p = os.fspath(path)
        if st is None:
            st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{p}: not a regular file, cannot hash its content")
        now_s = self._now_s
        e = self._entries.get(p)
        if e is not None and e[0] == st.st_size and e[1] == st.st_mtime_ns and e[2] == st.st_ino \
                and e[3] == st.st_ctime_ns:
            self.hits += 1
            if now_s - e[5] > 3600:
                # Refresh the last-used time (coarsely, so a warm build rarely rewrites the file).
                e = e[:5] + (now_s,)  # type: ignore[assignment]
                self._entries[p] = e
                self._dirty[p] = e
            return "sha256:" + e[4].hex()
        self.misses += 1
        h = hashlib.sha256()
        try:
            fd_read = dir_fd is not None and name is not None and st is not None
            with (os.fdopen(os.open(name, _FD_FLAGS, dir_fd=dir_fd), "rb") if fd_read  # type: ignore[arg-type]
                  else open(p, "rb")) as f:
                # The key is the stat of the file we actually read, taken right before reading.
                looked_at = time.time_ns()
                expected = st
                st = os.fstat(f.fileno())
                if fd_read and (not stat.S_ISREG(st.st_mode) or st.st_ino != expected.st_ino):  # type: ignore[union-attr]
                    raise BuildError(f"{p}: was replaced while being read; retry once it is stable")
                while True:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        break
                    h.update(chunk)
                    self.bytes_hashed += len(chunk)
        except PermissionError:
            raise BuildError(f"{p}: permission denied while reading it for the build; make it readable "
                             "or add it to .dockerignore") from None
        raw = h.digest()
        racy = RACY_COARSE_NS if st.st_ctime_ns % 1_000_000_000 == 0 else RACY_NS
        if looked_at - st.st_ctime_ns > racy:
            e = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, raw, now_s)
            self._entries[p] = e
            self._dirty[p] = e
        return "sha256:" + raw.hex()

    def save(self) -> None:
        """Write new entries to disk atomically (merging with a concurrent writer's); no-op if clean."""
        if self.path is None or not self._dirty:
            return
        try:
            cur_mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            cur_mtime = None
        if cur_mtime is not None and cur_mtime != self._loaded_mtime:
            merged = self._load()
            merged.update(self._dirty)
            self._entries = merged
        cutoff = int(time.time()) - MAX_AGE_S
        keep = {k: v for k, v in self._entries.items() if v[5] >= cutoff}
        # Imported only when saving: keeps a warm build's start-up light.
        from registry.fsutil import atomic_write

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Not durable: a cache entry lost in a crash only costs a re-hash, and fsync would cost
        # more than the write. Mode 0600 as before: the paths it lists are the user's business.
        atomic_write(self.path, _MAGIC + marshal.dumps(keep), mode=0o600, durable=False)
        self._loaded_mtime = os.stat(self.path).st_mtime_ns
        self._entries = keep
        self._dirty.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __enter__(self) -> "HashCache":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.save()


def hash_cache_path(root: str | os.PathLike) -> Path:
    """Where the hash cache of the store at `root` lives."""
    return Root(root).cache / "hashes.v1"


def open_hash_cache(root: str | os.PathLike | None) -> HashCache:
    """The hash cache of the store at `root`; an in-memory one when `root` is None."""
    return HashCache(hash_cache_path(root) if root is not None else None)
