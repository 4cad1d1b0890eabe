"""Checking a pybuild root after crashes, and repairing what a crash can leave behind.

`check_root(root)` looks at everything pybuild keeps under one root:

- images/: every blob's content against its name, index.json, every tagged image's manifests,
  configs and layers (present, announced size, one diff_id per layer), like `Store.verify()`;
- images/roots/: digests kept alive for other components (e.g. the build cache) that are gone;
- cache/: build-cache records that do not parse or name a layer blob the store lacks, and
  temp files of interrupted record writes;
- layers/ and l/: half-extracted layer directories (`.tmp-*`) and short links to nothing;
- snapshots/ and tmp/: overlay snapshots and sandbox bundles of builds that died, and the
  in-memory directories (/dev/shm/pybuild-<root hash>-*) of their steps that used secrets.

containers/ records are never removed: a container's snapshot (its writable layer, mounted
while it runs) belongs to the container, live or exited, and only `pybuild rm` deletes it. A
container whose pybuild or conmon was killed ("Dead" in `ps`) has its runtime container and
network released (it is recorded as exited); bridge leases and veths whose network namespace is
gone (builder.runtime.bridge, host-wide) are deleted.

Leftovers of dead processes are not damage: the next build ignores them. They are reported as
"leftover" problems; real damage (a corrupt blob, a tag without its manifest, an unreadable
index) is reported as "broken". `repair_root(root)` deletes corrupt blobs, drops tags whose
manifest is missing or corrupt, drops broken cache records and root entries, removes leftovers
and finally runs gc, so what is broken and unreferenced is gone. Snapshots, sandbox bundles and
ingest temp files are only removed when no live pybuild process holds a lease on the root
(a running build or pull would lose its work otherwise).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from registry.digest import CHUNK, is_digest, new_hasher, parse_digest
from registry.errors import RegistryError
from registry import mediatypes as mt
from registry.fsutil import FileLock, atomic_write
from registry.manifest import Index
from registry.store import REF_NAME, Store

from .cache.records import BuildCache, gc_roots
from .root import Root


@dataclass
class Problem:
    """One finding: `kind` is "broken" (damage) or "leftover" (debris of a dead process)."""

    kind: str
    message: str


@dataclass
class RepairResult:
    """What repair_root removed, and the problems still present afterwards."""

    removed: list[str] = field(default_factory=list)
    remaining: list[Problem] = field(default_factory=list)


def check_root(root: str | os.PathLike) -> list[Problem]:
    """Every problem found under `root` (see the module docstring); empty when consistent."""
    return _Checker(Path(root)).run()


def repair_root(root: str | os.PathLike) -> RepairResult:
    """Remove what is broken and unreferenced under `root`, then check again."""
    checker = _Checker(Path(root))
    checker.run(repair=True)
    result = RepairResult(removed=checker.removed)
    result.remaining = _Checker(Path(root)).run()
    return result


def remove_leftovers(root: str | os.PathLike) -> list[str]:
    """Remove only the debris of dead processes (half-extracted layers, links to nothing, and,
    when no live process holds a lease, snapshots, bundles and partial blobs); what was removed."""
    checker = _Checker(Path(root))
    checker.repair = True
    checker._layers()
    store = Store(checker.root)
    if not live_processes(store):
        checker._debris(store)
    return checker.removed


def live_processes(store: Store) -> bool:
    """True when some process holds a lease on the store (a build, pull or import is running)."""
    leases = store.layout / "leases"
    for f in leases.iterdir() if leases.is_dir() else ():
        lock = FileLock(f)
        try:
            if not lock.acquire(blocking=False):
                return True
            lock.release()
        except FileNotFoundError:
            continue
    return False


class _Checker:
    def __init__(self, root: Path):
        self.root = root
        self.problems: list[Problem] = []
        self.removed: list[str] = []
        self.repair = False

    def run(self, repair: bool = False) -> list[Problem]:
        self.repair = repair
        store = Store(self.root)
        self._blobs(store)
        self._tags(store)
        self._roots(store)
        self._cache(store)
        self._layers()
        if not live_processes(store):
            self._debris(store)
        if repair:
            # Blobs the build cache still names are referenced, even if no build finished since.
            gc = store.gc(extra_roots=gc_roots(self.root))
            if gc.removed_blobs:
                self.removed.append(f"{gc.removed_blobs} unreferenced blobs ({gc.freed_bytes} bytes)")
        return self.problems

    def _report(self, kind: str, message: str, fix=None, what: str = "") -> None:
        """Record a problem; when repairing and a fix is given, apply it instead."""
        if self.repair and fix is not None:
            fix()
            self.removed.append(what or message)
            return
        self.problems.append(Problem(kind, message))

    # -- images/ -----------------------------------------------------------------------------
    def _blobs(self, store: Store) -> None:
        for digest in list(store.blobs()):
            path = store.blob_path(digest) if is_digest(digest) else store.layout / "blobs" / digest.replace(":", "/")
            if not is_digest(digest):
                self._report("broken", f"unexpected file in blobs/: {path}", lambda p=path: _rm(p),
                             f"stray file {path}")
                continue
            try:
                actual = _hash_file(path, parse_digest(digest).algorithm)
            except FileNotFoundError:
                continue     # gc'ed meanwhile
            if actual != digest:
                self._report("broken", f"blob {digest} is corrupt: its content hashes to {actual}",
                             lambda p=path: _rm(p), f"corrupt blob {digest}")

    def _tags(self, store: Store) -> None:
        try:
            index = store.read_index()
        except (RegistryError, OSError) as exc:
            self.problems.append(Problem("broken", f"{store.layout / 'index.json'}: {exc} "
                                                   "(restore it or delete it to start with no tags)"))
            return
        for entry in index.manifests:
            label = entry.annotations.get(REF_NAME) or entry.digest
            if not store.has_blob(entry.digest):
                self._report("broken", f"tag {label}: manifest {entry.digest} is missing",
                             lambda e=entry: _untag(store, e), f"tag {label} (manifest missing)")
                continue
            try:
                store.get_manifest(entry.digest)
            except RegistryError as exc:
                self._report("broken", f"tag {label}: {exc}", lambda e=entry: _untag(store, e),
                             f"tag {label} (unreadable manifest)")
                continue
            self._tree(store, entry, label, 0)

    def _tree(self, store: Store, desc, label: str, depth: int) -> None:
        """Below a tag: every child present with its announced size; one diff_id per layer."""
        if not store.blob_path(desc.digest).is_file():
            self.problems.append(Problem("broken", f"{label}: {desc.media_type or 'blob'} {desc.digest} is "
                                                   "missing (pull or build the image again)"))
            return
        size = store.blob_size(desc.digest)
        if size != desc.size:
            self.problems.append(Problem("broken", f"{label}: {desc.digest} is {size} bytes, its "
                                                   f"descriptor says {desc.size}"))
        if not mt.is_manifest(desc.media_type) or depth > 8:
            return
        try:
            doc = store.get_manifest(desc.digest)
        except RegistryError:
            return      # reported for the tag itself, or as a corrupt blob
        if isinstance(doc, Index):
            for child in doc.manifests:
                # A single-platform pull legitimately lacks the other platforms' manifests.
                if store.blob_path(child.digest).is_file():
                    self._tree(store, child, label, depth + 1)
            return
        for child in (doc.config, *doc.layers):
            if not mt.is_nondistributable(child.media_type):
                self._tree(store, child, label, depth + 1)
        if doc.config.media_type in mt.CONFIG_TYPES and store.blob_path(doc.config.digest).is_file():
            try:
                cfg = store.get_config(doc.config.digest)
            except RegistryError as exc:
                self.problems.append(Problem("broken", f"{label}: {exc}"))
                return
            if len(cfg.diff_ids) != len(doc.layers):
                self.problems.append(Problem("broken", f"{label}: config lists {len(cfg.diff_ids)} diff_ids "
                                                       f"for {len(doc.layers)} layers"))

    def _roots(self, store: Store) -> None:
        for f in sorted((store.layout / "roots").iterdir()):
            if f.name.startswith("."):
                continue
            lines = f.read_text(errors="replace").split()
            missing = [d for d in lines if not is_digest(d) or not store.blob_path(d).is_file()]
            if missing:
                keep = [d for d in lines if d not in missing]
                self._report("leftover", f"gc root {f.name}: {len(missing)} of {len(lines)} digests are not "
                             f"in the store (e.g. {missing[0]})",
                             lambda f=f, keep=keep: atomic_write(f, "".join(d + "\n" for d in keep).encode()),
                             f"{len(missing)} dangling entries of gc root {f.name}")

    def _cache(self, store: Store) -> None:
        cache = BuildCache(self.root)
        if not cache.dir.is_dir():
            return
        for p in sorted(cache.dir.rglob(".tmp-*")):
            self._report("leftover", f"interrupted cache write {p}", lambda p=p: _rm(p))
        for p in sorted(cache.dir.iterdir()):
            if p.name.startswith(".tmp-") or p.suffix != ".json":
                continue
            rec = cache.get("sha256:" + p.stem)
            if rec is None:
                # Builds skip such a record (a miss): debris, not damage.
                self._report("leftover", f"cache record {p} is unreadable or from another pybuild version",
                             lambda p=p: _rm(p), f"unreadable cache record {p.name}")
                continue
            digest = (rec.layer or {}).get("digest")
            if digest and (not is_digest(digest) or not store.blob_path(digest).is_file()):
                self._report("broken", f"cache record {p.name} names layer {digest}, which is not in the store",
                             lambda p=p: _rm(p), f"cache record {p.name} (layer gone)")

    # -- layers/, l/, snapshots/, tmp/ ------------------------------------------------------
    def _layers(self) -> None:
        layers = Root(self.root).layers
        for p in sorted(layers.iterdir()) if layers.is_dir() else ():
            if p.name.startswith(".tmp-"):
                self._report("leftover", f"half-extracted layer directory {p}", lambda p=p: _rm(p))
        links = Root(self.root).links
        for p in sorted(links.iterdir()) if links.is_dir() else ():
            if p.is_symlink() and not p.exists():
                self._report("leftover", f"short link {p} points at nothing", lambda p=p: _rm(p))

    def _debris(self, store: Store) -> None:
        snaps = Root(self.root).snapshots
        owned, since = container_snapshots(self.root)
        for p in sorted(snaps.iterdir()) if snaps.is_dir() else ():
            if p.name in owned:
                continue
            if since is not None and _mtime(p) >= since - 2:
                continue         # maybe the snapshot of a container being started right now
            self._report("leftover", f"snapshot {p} of a build that did not finish",
                         lambda p=p: _remove_snapshot(p))
        tmp = Root(self.root).tmp
        for p in sorted(tmp.iterdir()) if tmp.is_dir() else ():
            self._report("leftover", f"temporary {p} of a process that did not finish",
                         lambda p=p: _remove_bundle(p))
        # Runtime bundles and secret files of steps that used secrets live in memory, outside
        # the root, named after it (builder.engine.executor.memory_dir).
        from .engine.executor import MEMORY_TMP, memory_dir_prefix
        prefix = memory_dir_prefix(self.root)
        for p in sorted(MEMORY_TMP.glob(prefix + "*")) if MEMORY_TMP.is_dir() else ():
            if not _own_directory(p):
                continue     # planted by another user in the shared /dev/shm: not ours to touch
            self._report("leftover", f"in-memory temporary {p} (maybe holding a build secret) of a "
                         "process that did not finish", lambda p=p: _remove_snapshot(p))
        self._networks()
        for p in sorted((store.layout / "ingest").iterdir()):
            if p.suffix == ".tmp":
                self._report("leftover", f"partial blob {p} of a process that did not finish",
                             lambda p=p: _rm(p))


    def _networks(self) -> None:
        """Runtimes and networks of containers whose pybuild or conmon was killed, and bridge
        leases and veths (host-wide: builder.runtime.bridge) whose namespace is gone."""
        from .containers import lifecycle as ct
        for c in ct.dead_containers(self.root):
            self._report("leftover", f"container {c.name} ({c.id[:12]}) is dead but its runtime and "
                         "network may be left", lambda c=c: ct.reap(c),
                         what=f"runtime and network of dead container {c.name}")
        from .runtime import bridge
        if self.repair and bridge.available():
            self.removed += bridge.repair()


def container_snapshots(root: Path) -> tuple[set[str], float | None]:
    """The snapshot names container records under ``root`` own, and the time of the oldest
    recent record (under two minutes) that does not name one yet (None if none).

    A container mounts its snapshot a moment before its config records the name, so snapshots
    newer than such a record may be its own and are left alone too. Older records without a
    snapshot are containers that never started: they do not protect anything.
    """
    owned: set[str] = set()
    since: float | None = None
    cdir = Root(root).containers
    for d in cdir.iterdir() if cdir.is_dir() else ():
        if d.name == "names" or d.name.startswith(".") or not d.is_dir():
            continue
        try:
            name = json.loads((d / "config.json").read_text()).get("snapshot") or ""
        except (OSError, ValueError, AttributeError):
            name = ""        # being written, or unreadable: it may own a snapshot
        if name:
            owned.add(name)
        elif (t := _mtime(d)) > time.time() - 120:
            since = t if since is None else min(since, t)
    return owned, since


def _mtime(p: Path) -> float:
    try:
        return p.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def _hash_file(path: Path, algorithm: str) -> str:
    h = new_hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def _untag(store: Store, entry) -> None:
    with store._index_update() as index:
        index.manifests = [d for d in index.manifests if d.digest != entry.digest or d.annotations != entry.annotations]


def _own_directory(path: Path) -> bool:
    """True for a directory (not a symlink) this user owns. /dev/shm is everyone's: a name
    there matching our prefix may be another user's symlink to a mount point (which the
    removal would unmount) or to a directory of ours (which it would empty)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def _remove_bundle(path: Path) -> None:
    """A dead build's temporary: stop the pasta of a private network it left, then remove it."""
    from .runtime.sandbox import release_network
    release_network(path)
    _remove_snapshot(path)


def _remove_snapshot(path: Path) -> None:
    """Unmount whatever a dead build left mounted under `path`, then delete it."""
    for mp in mounts_under(path):
        r = subprocess.run(["umount", mp], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True)
    try:
        _rm(path)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
