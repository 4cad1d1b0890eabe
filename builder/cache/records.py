"""The build cache: one record per step key -> the step's layer (if any) and its history entry.

Keys are made by builder.cache.keys (re-exported here as ``step_key``). Layout under the root::

    cache/<hex>.json            one record per key, written atomically (temp file + rename)
    cache/inputs/<hex>.json     per-file source records of a COPY/ADD (read by `cache explain`)
    cache/parents/<p>/<hex>     empty markers: keys recorded on top of parent content <p>
    cache/usage.log             appended "<hex> <epoch>" per hit (last used, hit counts)
    cache/layers.idx            appended layer digest per record (the gc roots, without reading records)
    cache/.lock                 builds hold it shared, `cache prune` exclusively

A record is written only after its layer blob is in the store, so a killed build never leaves
a record naming a missing blob; the blobs records name are kept alive by :func:`gc_roots`.

:class:`BuildCache` is also a build's view of the cache: ``lookup`` consults the local records,
then the remote sources (``--cache-from``; their layers are fetched only when
:meth:`BuildCache.ensure_local` is asked for them), and remembers for every lookup whether it
hit and, on a miss, why (the nearest earlier entry and what differs).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from registry.manifest import History

from ..root import Root
from .keys import StepKey, describe, diff_inputs, key_document, step_key

__all__ = ["BuildCache", "CacheRecord", "Lookup", "RemoteSource", "gc_roots", "sync_gc_root", "step_key",
           "CACHE_ROOT_NAME", "Entry", "Usage", "PruneResult", "entries", "disk_usage", "prune", "image_blobs"]

RECORD_VERSION = 2
LAYERS_INDEX = "layers.idx"
CACHE_ROOT_NAME = "build-cache"


@dataclass
class CacheRecord:
    """What a step produced: its layer descriptor (with ``diff_id``) or None, and the config
    change it made (``config["history"]``: the history entry, as JSON; ``history`` gives it
    typed, what a hit appends to the stage's config). ``key_doc`` holds the key's
    parent, platform, instruction and inputs; ``stage`` the stage that recorded it."""

    key: str
    layer: dict | None
    config: dict
    created: float = 0.0
    stage: str = ""
    key_doc: dict = field(default_factory=dict)

    @property
    def history(self) -> History:
        """The history entry of the step."""
        return History.from_dict(self.config.get("history") or {})

    @property
    def size(self) -> int:
        """The compressed size of the layer (0 without one)."""
        return int((self.layer or {}).get("size", 0))

    @property
    def step(self) -> str:
        """A one-line description of the step."""
        return describe(self.key_doc) if self.key_doc else (self.history.created_by or "")

    def to_json(self) -> dict:
        """The stored form."""
        return {"v": RECORD_VERSION, "layer": self.layer, "config": self.config,
                "created": self.created or time.time(), "stage": self.stage, "key": self.key_doc}

    @classmethod
    def from_json(cls, key: str, d: dict) -> "CacheRecord":
        """Read the stored form (KeyError/TypeError/ValueError for records of another version)."""
        if d.get("v") != RECORD_VERSION or not isinstance(d["config"], dict):
            raise ValueError("not a current cache record")
        return cls(key, d.get("layer"), d["config"], float(d.get("created", 0.0)), d.get("stage", ""),
                   d.get("key") or {})


class RemoteSource(Protocol):
    """A ``--cache-from`` source (see builder.cache.remote)."""

    name: str

    def records(self) -> dict[str, CacheRecord]:
        """Every record the source offers, by key."""

    def fetch(self, layer: dict, store: Any) -> None:
        """Download the layer blob into ``store``."""


@dataclass
class Lookup:
    """One lookup of a build: for --metadata-file, --cache-report and progress."""

    stage: str
    step: str
    key: str
    status: str                  # hit | remote | miss
    reason: str = ""
    size: int = 0
    source: str = ""
    title: str = ""              # the progress step's name (``[build 2/3] RUN make``), if shown


def _hex(key: str) -> str:
    return key.split(":", 1)[-1]


def _atomic_write(dirpath: Path, dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dirpath)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class BuildCache:
    """Reads and writes cache records under ``<root>/cache`` (see the module docstring)."""

    def __init__(self, root: Path, store: Any = None, *, no_cache: bool = False,
                 no_cache_filter: list[str] | tuple[str, ...] = (), remotes: list | None = None):
        self.root = Path(root)
        self.dir = Root(self.root).cache
        self.store = store
        self.no_cache = no_cache
        self.no_cache_filter = set(no_cache_filter)
        self.remotes: list[RemoteSource] = list(remotes or [])
        self.lookups: list[Lookup] = []
        self.used: dict[str, CacheRecord] = {}          # key -> record, every step this build hit or made
        self._pending: dict[str, tuple[Any, list[CacheRecord]]] = {}   # layer digest -> (remote, records)
        self._lock = threading.Lock()
        self._remote_records: dict[str, tuple[Any, CacheRecord]] | None = None
        self.fetched: list[str] = []                     # layer digests downloaded from remotes
        self.context_checks: list[list] = []             # [srcs, excludes, parents, digest] per context read

    # -- records -------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.dir / (_hex(key) + ".json")

    def get(self, key: str) -> CacheRecord | None:
        """The record for ``key``, or None (also for unreadable records or other versions)."""
        try:
            return CacheRecord.from_json(key, json.loads(self._path(key).read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, record: CacheRecord, files: list | None = None) -> None:
        """Store ``record`` atomically; ``files`` (SourceRecords) go to its inputs file first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not record.created:
            record.created = time.time()
        h = _hex(record.key)
        if files is not None:
            (self.dir / "inputs").mkdir(exist_ok=True)
            rows = [[r.path, r.kind, r.mode, r.uid, r.gid, r.content] for r in files]
            _atomic_write(self.dir, self.dir / "inputs" / f"{h}.json",
                          json.dumps(rows, separators=(",", ":")).encode("utf-8", "surrogateescape"))
        if record.layer and record.layer.get("digest"):
            # The gc root line first: killed in between, a blob is kept too long, never lost.
            if not (self.dir / LAYERS_INDEX).exists():
                rewrite_layers_index(self)      # a root from before the index: start it complete
            _append(self.dir / LAYERS_INDEX, record.layer["digest"] + "\n")
        _atomic_write(self.dir, self._path(record.key), json.dumps(record.to_json()).encode())
        parent = record.key_doc.get("parent")
        if parent:
            d = self.dir / "parents" / _hex(parent)
            d.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(d / h, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    def input_files(self, key: str) -> list | None:
        """The per-file source records stored with a COPY/ADD record (None if there are none)."""
        from ..context.build_context import SourceRecord
        try:
            rows = json.loads((self.dir / "inputs" / f"{_hex(key)}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return [SourceRecord(*r) for r in rows]

    def records(self) -> list[CacheRecord]:
        """All readable records."""
        out = []
        if not self.dir.is_dir():
            return out
        for p in self.dir.glob("*.json"):
            rec = self.get("sha256:" + p.stem)
            if rec is not None:
                out.append(rec)
        return out

    def remove(self, key: str) -> None:
        """Delete a record with its inputs file and parent marker."""
        rec = self.get(key)
        h = _hex(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / "inputs" / f"{h}.json")
        if rec is not None and rec.key_doc.get("parent"):
            d = self.dir / "parents" / _hex(rec.key_doc["parent"])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / h)
            with contextlib.suppress(OSError):
                os.rmdir(d)

    def children(self, parent: str) -> list[CacheRecord]:
        """Records (local and remote) of steps recorded on top of ``parent`` content, newest first."""
        out = []
        try:
            names = os.listdir(self.dir / "parents" / _hex(parent))
        except OSError:
            names = []
        for n in names:
            rec = self.get("sha256:" + n)
            if rec is not None:
                out.append(rec)
        seen = {r.key for r in out}
        out += [r for _, r in self._remote().values() if r.key_doc.get("parent") == parent and r.key not in seen]
        out.sort(key=lambda r: r.created, reverse=True)
        return out

    # -- usage ---------------------------------------------------------------------------------
    def touch(self, key: str) -> None:
        """Note one hit on ``key`` (an O_APPEND write of one short line: cheap and safe to race)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _append(self.dir / "usage.log", f"{_hex(key)} {int(time.time())}\n")

    def usage(self) -> dict[str, tuple[int, float]]:
        """key -> (hits, last used epoch) from the usage log."""
        out: dict[str, tuple[int, float]] = {}
        try:
            data = (self.dir / "usage.log").read_text()
        except OSError:
            return out
        for line in data.splitlines():
            parts = line.split()
            try:
                t = float(parts[1])
                n = int(parts[2]) if len(parts) > 2 else 1
            except (IndexError, ValueError):
                continue
            hits, last = out.get("sha256:" + parts[0], (0, 0.0))
            out["sha256:" + parts[0]] = (hits + n, max(last, t))
        return out

    def compact_usage(self, keep: set[str]) -> None:
        """Rewrite the usage log as one ``<hex> <last used> <hits>`` line per surviving key."""
        if not self.dir.is_dir():
            return
        lines = [f"{_hex(k)} {int(last)} {hits}\n" for k, (hits, last) in self.usage().items() if k in keep]
        _atomic_write(self.dir, self.dir / "usage.log", "".join(lines).encode())

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def in_use(self, exclusive: bool = False) -> Iterator[None]:
        """Hold the cache lock: shared for a build, exclusive for prune (which waits for builds)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- a build's lookups ---------------------------------------------------------------------
    def _remote(self) -> dict[str, tuple[Any, CacheRecord]]:
        if self._remote_records is None:
            merged: dict[str, tuple[Any, CacheRecord]] = {}
            for src in self.remotes:
                for key, rec in src.records().items():
                    merged.setdefault(key, (src, rec))
            self._remote_records = merged
        return self._remote_records

    def lookup(self, key: StepKey | str, stage: str = "", step: Any = None,
               no_cache: bool = False) -> CacheRecord | None:
        """The usable record for ``key`` (local, or remote with its layer fetched lazily), or None.

        Every lookup is remembered (``self.lookups``); a miss gets a reason, which is also
        written to the progress ``step`` when one is given.
        """
        label = describe(key) if isinstance(key, StepKey) else ""
        if no_cache or self.no_cache or stage in self.no_cache_filter:
            self._note(Lookup(stage, label, key, "miss", "--no-cache" if no_cache or self.no_cache else
                              f"--no-cache-filter {stage}"), step)
            return None
        rec = self.get(key)
        if rec is not None and (rec.layer is None or self._local_blob(rec.layer["digest"])):
            self.touch(key)
            self.used[key] = rec
            self._note(Lookup(stage, label, key, "hit", size=rec.size), step)
            return rec
        found = self._remote().get(key)
        if found is not None:
            src, rec = found
            with self._lock:
                if rec.layer is not None and not self._local_blob(rec.layer["digest"]):
                    self._pending.setdefault(rec.layer["digest"], (src, []))[1].append(rec)
                else:
                    self.put(CacheRecord(rec.key, rec.layer, rec.config, rec.created, rec.stage, rec.key_doc))
            self.used[key] = rec
            self._note(Lookup(stage, label, key, "remote", size=rec.size, source=src.name), step)
            return rec
        reasons = self.explain_miss(key, stage)[1] if isinstance(key, StepKey) else ["not in the cache"]
        # The report keeps every reason; progress gets the first, short: the rest is for
        # `pybuild cache explain`.
        short = reasons[0] + (f" (+{len(reasons) - 1} more: pybuild cache explain)" if len(reasons) > 1 else "")
        self._note(Lookup(stage, label, key, "miss", "; ".join(reasons)), step, short)
        return None

    def _local_blob(self, digest: str) -> bool:
        return self.store is None or self.store.has_blob(digest)

    def _note(self, lk: Lookup, step: Any, short: str = "") -> None:
        lk.title = getattr(step, "name", "")
        with self._lock:
            self.lookups.append(lk)
        # A note, not output: it must not show among a RUN's lines nor lead its error tail.
        if step is not None and lk.status == "miss":
            step.note(f"cache miss: {short or lk.reason}")
        elif step is not None and lk.status == "remote":
            step.note(f"cache hit from {lk.source}")

    def context_sources(self, context: Any, srcs: list[str], excludes: list[str] = (), parents: bool = False) -> list:
        """SourceRecords of a COPY/ADD (or bind mount) from the build context; the check is
        remembered (sources and digest) so that a later no-op rebuild can repeat just the checks."""
        from ..context.build_context import source_records
        from .keys import records_digest
        files = source_records(context, srcs, list(excludes), parents=parents)
        with self._lock:
            self.context_checks.append([list(srcs), list(excludes), parents, records_digest(files)])
        return files

    def record(self, key: StepKey | str, layer: dict | None, history: History, stage: str) -> CacheRecord:
        """Store what a step just produced (its layer blob must already be in the store) and
        the history entry it appended to the config."""
        doc = key_document(key) if isinstance(key, StepKey) else {}
        rec = CacheRecord(key, layer, {"history": history.to_dict()}, time.time(), stage, doc)
        self.put(rec, key.files if isinstance(key, StepKey) else None)
        self.used[key] = rec
        return rec

    def ensure_local(self, layers: list) -> None:
        """Fetch the blobs of ``layers`` (LayerRefs) that remote hits left in their source;
        their records then become local ones."""
        for layer in layers:
            self.ensure_local_digest(layer.descriptor.digest)

    def ensure_local_digest(self, digest: str) -> None:
        """Fetch one layer blob of a remote hit (no-op for blobs already local)."""
        with self._lock:
            pending = self._pending.pop(digest, None)
            if pending is None:
                return
            src, recs = pending
            try:
                src.fetch(recs[0].layer, self.store)
            except BaseException:
                self._pending[digest] = pending
                raise
            for rec in recs:
                self.put(CacheRecord(rec.key, rec.layer, rec.config, rec.created, rec.stage, rec.key_doc))
            self.fetched.append(digest)

    # -- explanations ----------------------------------------------------------------------------
    def nearest(self, key: StepKey, stage: str) -> tuple[CacheRecord | None, bool]:
        """The earlier build of this step's own line: (record, same_parent), or (None, False).

        Only the same line compares: a record of the same stage and instruction kind built on
        the same parent content (the step was edited, or an input changed), else one of the
        same stage with the same instruction (and for RUN the same command line) on another
        parent (an earlier step changed). A different instruction that once followed the same
        parent is not an earlier build of this step: diffing against it names unrelated fields.
        """
        kind = key.instruction.split(" ", 1)[0]

        def likeness(r: CacheRecord) -> int:
            a = r.key_doc.get("inputs", {})
            return sum(1 for k, v in key.inputs.items() if a.get(k) == v)

        sibs = [r for r in self.children(key.parent) if r.key != key and r.stage == stage
                and r.key_doc.get("instruction", "").split(" ", 1)[0] == kind]
        if sibs:
            def score(r: CacheRecord) -> tuple:
                doc = r.key_doc
                return (doc.get("instruction") == key.instruction,
                        doc.get("inputs", {}).get("argv") == key.inputs.get("argv"), likeness(r), r.created)
            return max(sibs, key=score), True
        same = [r for r in self._all_records()
                if r.stage == stage and r.key_doc.get("instruction") == key.instruction
                and r.key_doc.get("platform") == key.platform
                and r.key_doc.get("inputs", {}).get("argv") == key.inputs.get("argv")]
        if not same:
            return None, False
        return max(same, key=lambda r: (likeness(r), r.created)), False

    def _all_records(self) -> list[CacheRecord]:
        return self.records() + [r for _, r in self._remote().values()]

    def miss_reason(self, key: StepKey, stage: str) -> str:
        """Why ``key`` missed, in one line."""
        return "; ".join(self.explain_miss(key, stage)[1])

    def explain_miss(self, key: StepKey, stage: str) -> tuple[CacheRecord | None, list[str]]:
        """The nearest earlier entry and the reasons ``key`` differs from it."""
        near, same_parent = self.nearest(key, stage)
        if near is None:
            if not self.dir.is_dir() and not self.remotes:
                return None, ["the cache is empty"]
            return None, ["no earlier build of this step"]
        if not same_parent:
            new = key_document(key)
            reasons = [r for r in diff_inputs({**near.key_doc, "parent": new["parent"]}, new)]
            return near, ["parent changed (the previous step's result differs)"] + reasons
        reasons = diff_inputs(near.key_doc, key_document(key))
        if "source files changed" in reasons and key.files is not None:
            old_files = self.input_files(near.key)
            if old_files is not None:
                from ..context.build_context import diff_source_records
                d = diff_source_records(old_files, key.files)
                parts = []
                for what in ("changed", "added", "removed"):
                    if d[what]:
                        shown = ", ".join(d[what][:5]) + (f" (+{len(d[what]) - 5} more)" if len(d[what]) > 5 else "")
                        parts.append(f"{what}: {shown}")
                if parts:
                    reasons[reasons.index("source files changed")] = "files " + "; ".join(parts)
        return near, reasons or ["no difference in the recorded inputs"]

    def report(self) -> list[dict]:
        """Every lookup of the build as JSON-able dicts (for --metadata-file)."""
        return [{"stage": l.stage, "step": l.step, "key": l.key, "cache": l.status,
                 **({"reason": l.reason} if l.reason else {}),
                 **({"layer_size": l.size} if l.size else {}),
                 **({"source": l.source} if l.source else {})} for l in self.lookups]


def gc_roots(root: Path) -> set[str]:
    """Blob digests the cache still needs (layers of cached steps): extra roots for store gc.

    Read from ``cache/layers.idx`` (one digest per line, appended by every record with a layer,
    rewritten by prune), so a build does not read every record; digests whose blob is gone
    are left out. Without the index (an older root) the records are read and the index written.
    """
    cache = BuildCache(root)
    blobs = Root(root).blobs
    try:
        lines = (cache.dir / LAYERS_INDEX).read_text().split()
    except FileNotFoundError:
        return rewrite_layers_index(cache)
    out = set()
    for d in lines:
        algo, _, hexd = d.partition(":")
        if hexd and (blobs / algo / hexd).is_file():
            out.add(d)
    return out


def sync_gc_root(store: Any, root: Path) -> None:
    """Point the store's build-cache gc root at :func:`gc_roots`, writing only when it changed
    (the write is fsynced twice: a fully cached build should not pay for it)."""
    digests = sorted(gc_roots(root))
    text = "".join(f"{d}\n" for d in digests)
    try:
        if (store.layout / "roots" / CACHE_ROOT_NAME).read_text() == text:
            return
    except OSError:
        pass
    store.add_root(CACHE_ROOT_NAME, digests)


def rewrite_layers_index(cache: BuildCache) -> set[str]:
    """Rewrite ``cache/layers.idx`` from the records; returns the digests."""
    digests = {rec.layer["digest"] for rec in cache.records() if rec.layer and rec.layer.get("digest")}
    if cache.dir.is_dir():
        _atomic_write(cache.dir, cache.dir / LAYERS_INDEX, "".join(f"{d}\n" for d in sorted(digests)).encode())
    return digests


def _append(path: Path, text: str) -> None:
    # One write with O_APPEND: lines of concurrent writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# -- inventory and pruning (`pybuild cache ls|du|prune`) ---------------------------------------
@dataclass
class Entry:
    """A record with its usage, for listing and pruning."""

    record: CacheRecord
    hits: int
    last_used: float
    referenced: bool            # its layer blob belongs to a stored image (pruning frees nothing)

    def to_dict(self) -> dict:
        """JSON form (`cache ls --format json`)."""
        r = self.record
        return {"key": r.key, "step": r.step, "stage": r.stage, "size": r.size,
                "layer": (r.layer or {}).get("digest", ""), "created": r.created,
                "last_used": self.last_used, "hits": self.hits, "referenced_by_image": self.referenced}


def image_blobs(store: Any) -> set[str]:
    """Digests stored images (tags, and gc roots other than the build cache's) reference."""
    from registry.manifest import Manifest
    todo = [d.digest for d in store.read_index().manifests]
    roots = store.layout / "roots"
    for f in roots.iterdir() if roots.is_dir() else ():
        if f.name != CACHE_ROOT_NAME and not f.name.startswith("."):
            todo += [l.strip() for l in f.read_text().splitlines() if l.strip()]
    seen: set[str] = set()
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            doc = store.get_manifest(d)
        except Exception:      # a layer, a config, or a missing blob: nothing to descend into
            continue
        if isinstance(doc, Manifest):
            todo += [doc.config.digest] + [l.digest for l in doc.layers]
        else:
            todo += [m.digest for m in doc.manifests]
    return seen


def entries(root: Path, store: Any) -> list[Entry]:
    """Every record with hits, last use and whether an image references its layer; oldest use first."""
    cache = BuildCache(root)
    usage = cache.usage()
    used_by_images = image_blobs(store)
    out = []
    for rec in cache.records():
        hits, last = usage.get(rec.key, (0, 0.0))
        digest = (rec.layer or {}).get("digest", "")
        out.append(Entry(rec, hits, max(last, rec.created), bool(digest) and digest in used_by_images))
    out.sort(key=lambda e: e.last_used)
    return out


@dataclass
class Usage:
    """`cache du`: sizes of the layer blobs the cache names (each blob counted once)."""

    entries: int
    total: int
    reclaimable: int            # blobs only the cache keeps (no stored image references them)


def disk_usage(items: list[Entry]) -> Usage:
    """Total and reclaimable bytes of ``items``."""
    total: dict[str, int] = {}
    reclaim: dict[str, int] = {}
    for e in items:
        if e.record.layer:
            d = e.record.layer["digest"]
            total[d] = e.record.size
            if not e.referenced:
                reclaim[d] = e.record.size
    return Usage(len(items), sum(total.values()), sum(reclaim.values()))


@dataclass
class PruneResult:
    """What `cache prune` removed."""

    removed: int = 0
    freed_bytes: int = 0
    kept: int = 0


def prune(root: Path, store: Any, *, all: bool = False, keep_storage: int | None = None,
          older_than: float | None = None) -> PruneResult:
    """Remove cache entries, least recently used first, then collect the blobs nothing needs.

    Without options: entries whose layer no stored image references (those free space).
    ``all``: every entry. ``keep_storage``: stop once the reclaimable size is at most that many
    bytes. ``older_than`` (seconds): only entries last used longer ago than that. Blobs of
    stored images are never removed (the store's gc keeps everything images reference), and
    running builds are waited for (they hold the cache lock shared).
    """
    cache = BuildCache(root)
    with cache.in_use(exclusive=True):
        items = entries(root, store)
        now = time.time()
        candidates = [e for e in items if older_than is None or now - e.last_used > older_than]
        victims: list[Entry] = []
        if keep_storage is not None:
            reclaim = disk_usage(items).reclaimable
            holders: dict[str, int] = {}
            for e in items:
                if e.record.layer:
                    holders[e.record.layer["digest"]] = holders.get(e.record.layer["digest"], 0) + 1
            for e in candidates:
                if reclaim <= keep_storage:
                    break
                victims.append(e)
                d = (e.record.layer or {}).get("digest")
                if d:
                    holders[d] -= 1
                    if holders[d] == 0 and not e.referenced:
                        reclaim -= e.record.size
        elif all:
            victims = candidates
        else:
            victims = [e for e in candidates if e.record.layer and not e.referenced]
        gone = {e.record.key for e in victims}
        for e in victims:
            cache.remove(e.record.key)
        keep = {e.record.key for e in items if e.record.key not in gone}
        cache.compact_usage(keep)
        roots = rewrite_layers_index(cache)
        store.add_root(CACHE_ROOT_NAME, sorted(roots))
        gc = store.gc(extra_roots=roots)
        _prune_build_summaries(cache.dir / "builds", store, everything=all)
        return PruneResult(len(victims), gc.freed_bytes, len(keep))


def _prune_build_summaries(d: Path, store: Any, everything: bool) -> None:
    """Drop no-op rebuild summaries (builder.cache.fast) whose image is gone, or all of them."""
    for p in d.glob("*.json") if d.is_dir() else ():
        try:
            manifest = json.loads(p.read_bytes())["manifest"]
            gone = everything or not store.has_blob(manifest)
        except (OSError, ValueError, KeyError, TypeError):
            gone = True
        if gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
