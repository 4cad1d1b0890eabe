"""Where the bytes under a store root go (`pybuild system df`) and getting them back (`system prune`),
and the collection of extracted layers nothing references any more (:func:`collect_layers`).

:func:`disk_usage` walks the whole root once, like ``du -sb`` (apparent sizes, directories and
symlinks included, every inode once however many hard links name it), and puts every entry in one
category::

    Images            blobs reachable from tags and from gc roots other than the build cache's
    Containers        containers/ and the snapshots (writable layers) containers own
    Build cache       cache/ and the blobs only the build cache keeps
    Extracted layers  layers/ and l/: image layers extracted for overlay mounts
    Cache mounts      cachemounts/: the directories of RUN --mount=type=cache
    Snapshots         snapshots/ no container owns (a running build's, or a dead one's)
    Temporary         tmp/
    Other             store metadata (index, roots, locks, blob-sources), partial downloads and
                      blobs nothing references

so the sizes add up to ``du -sb ROOT``.

Extracted layers are a cache of the layer blobs: a directory is kept while a stored image (tags
and every gc root, containers' and the build cache's included), a build-cache record, a container
record or a mounted overlay under the root names its diffID. Collection holds the build cache's
lock exclusively, so it waits for running builds (they hold it shared for their whole run) and no
build starts meanwhile; containers are protected by their records (which list their diffIDs) and
by their mounts.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .cache.records import CACHE_ROOT_NAME, BuildCache, gc_roots
from .root import Root

__all__ = ["CATEGORIES", "DiskUsage", "Item", "LayerGCResult", "PruneReport", "collect_layers",
           "disk_usage", "layer_references", "prune", "tree_size"]

CATEGORIES = ("Images", "Containers", "Build cache", "Extracted layers", "Cache mounts", "Snapshots",
              "Temporary", "Other")
# Half-extracted layer directories younger than this may belong to a `pybuild run` extracting now.
STALE_TMP_SECONDS = 600
# A container record this recent without a readable config may be one being created right now.
RECENT_RECORD_SECONDS = 120


# -- sizes -------------------------------------------------------------------------------------
class _Sizer:
    """Apparent sizes like ``du -sb``: each inode counted once across every call."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    def one(self, path: str | os.PathLike) -> int:
        """The entry itself (not its contents)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return 0
        return self._count(st)

    def _count(self, st: os.stat_result) -> int:
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            return 0
        self.seen.add(key)
        return st.st_size

    def tree(self, path: str | os.PathLike) -> int:
        """The entry and, for a directory, everything below it (symlinks not followed)."""
        total = self.one(path)
        stack = [os.fspath(path)]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except (NotADirectoryError, FileNotFoundError, PermissionError):
                continue
            with it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    total += self._count(st)
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        return total


def tree_size(path: str | os.PathLike) -> int:
    """Apparent size of ``path`` and everything below it, hard links once (``du -sb``)."""
    return _Sizer().tree(path)


# -- what references what ----------------------------------------------------------------------
def _closure(store: Any, digests: set[str]) -> set[str]:
    """``digests`` and every blob their manifests and indexes reach."""
    from registry.image import references
    from registry.manifest import parse_manifest
    seen: set[str] = set()
    todo = list(digests)
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        doc = _small_json(store, d)
        if doc is None or not ("manifests" in doc or "layers" in doc):
            continue
        try:
            parsed = parse_manifest(json.dumps(doc).encode())
        except Exception:
            continue
        todo += [c.digest for c in references(parsed)]
    return seen


def _small_json(store: Any, digest: str, limit: int = 4 << 20) -> dict | None:
    """The blob as a JSON object when it is one (manifests, indexes, configs), else None."""
    try:
        path = store.blob_path(digest)
        if path.stat().st_size > limit:
            return None
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not data.lstrip()[:1] == b"{":
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _root_files(store: Any) -> dict[str, list[str]]:
    """gc roots and leases by file name (``roots/NAME``, ``leases/NAME``) -> digests."""
    out: dict[str, list[str]] = {}
    for sub in ("roots", "leases"):
        d = store.layout / sub
        for f in d.iterdir() if d.is_dir() else ():
            if f.name.startswith("."):
                continue
            try:
                out[f"{sub}/{f.name}"] = f.read_text(errors="replace").split()
            except OSError:
                continue
    return out


def _diff_ids(store: Any, digests: set[str]) -> set[str]:
    """The layer diffIDs (hex) that the image configs among ``digests`` list."""
    out = set()
    for d in digests:
        doc = _small_json(store, d)
        rootfs = doc.get("rootfs") if doc else None
        if isinstance(rootfs, dict):
            out.update(_hex(x) for x in rootfs.get("diff_ids") or () if isinstance(x, str))
    return out


def _hex(diff_id: str) -> str:
    return diff_id.split(":", 1)[-1]


def _containers(root: Path) -> tuple[list[dict], bool]:
    """Container configs (with their ``dir``, ``state``) and whether every record was readable
    (a record being written right now, recent and without config, makes it False)."""
    out, sure = [], True
    cdir = Root(root).containers
    for d in cdir.iterdir() if cdir.is_dir() else ():
        if d.name == "names" or d.name.startswith(".") or not d.is_dir():
            continue
        try:
            cfg = json.loads((d / "config.json").read_text())
            try:
                state = json.loads((d / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
            cfg["dir"], cfg["state"] = d, state
            out.append(cfg)
        except (OSError, ValueError):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - d.lstat().st_mtime < RECENT_RECORD_SECONDS:
                    sure = False
    return out, sure


def _mounted_layers(root: Path) -> tuple[set[str], set[str]]:
    """Layer dirs (hex) that overlays mounted under ``root`` use as lower directories, and the
    mount points under ``root``."""
    layers_dir = os.path.realpath(Root(root).layers)
    prefix = os.path.realpath(root)
    used, points = set(), set()
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return used, points
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        mp = fields[4].replace("\\040", " ")
        if not (mp == prefix or mp.startswith(prefix + "/")):
            continue
        points.add(mp)
        for opt in line.split(" - ", 1)[-1].split()[-1].split(","):
            if not opt.startswith("lowerdir="):
                continue
            for low in opt[len("lowerdir="):].split(":"):
                p = os.path.realpath(os.path.join(prefix, low))
                if os.path.dirname(p) == layers_dir:
                    used.add(os.path.basename(p))
    return used, points


def layer_references(root: str | os.PathLike, store: Any) -> set[str] | None:
    """The extracted layers (diffID hex) something still needs, or None when that cannot be told
    for sure (a container record being written): then nothing may be collected."""
    root = Path(root)
    starts = {d.digest for d in store.read_index().manifests}
    for digests in _root_files(store).values():
        starts.update(digests)
    starts.update(gc_roots(root))
    keep = _diff_ids(store, _closure(store, starts))
    for rec in BuildCache(root).records():
        if rec.layer and rec.layer.get("diff_id"):
            keep.add(_hex(rec.layer["diff_id"]))
    containers, sure = _containers(root)
    if not sure:
        return None
    for c in containers:
        keep.update(_hex(d) for d in c.get("diff_ids") or ())
    keep |= _mounted_layers(root)[0]
    return keep


@contextlib.contextmanager
def builds_excluded(root: str | os.PathLike, wait: bool = True) -> Iterator[bool]:
    """Hold the build cache's lock exclusively (builds hold it shared while they run): yields
    True, or False without ``wait`` when a build is running."""
    d = Root(root).cache
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- collecting extracted layers ---------------------------------------------------------------
@dataclass
class LayerGCResult:
    """What :func:`collect_layers` removed (``skipped``: a build ran, or a record was unsure)."""

    removed: int = 0
    freed_bytes: int = 0
    kept: int = 0
    skipped: str = ""


def collect_layers(root: str | os.PathLike, store: Any, wait: bool = True) -> LayerGCResult:
    """Delete extracted layer directories (and their short links) nothing references.

    Waits for running builds (or, without ``wait``, does nothing while one runs). Each victim is
    renamed to ``layers/.gc-<hex>`` before it is deleted, so a crash leaves only trash that the
    next collection removes.
    """
    root = Path(root)
    res = LayerGCResult()
    layers = Root(root).layers
    if not layers.is_dir():
        return res
    with builds_excluded(root, wait) as ok:
        if not ok:
            res.skipped = "a build is running"
            return res
        keep = layer_references(root, store)
        if keep is None:
            res.skipped = "a container is being created"
            return res
        sizer = _Sizer()
        now = time.time()
        for p in sorted(layers.iterdir()):
            name = p.name
            if name == "empty":
                continue
            if name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    if now - p.lstat().st_ctime < STALE_TMP_SECONDS:
                        continue
            elif name in keep:
                res.kept += 1
                continue
            size = sizer.tree(p)
            if not name.startswith((".gc-", ".tmp-")):
                trash = layers / f".gc-{name}"
                try:
                    os.rename(p, trash)
                except FileNotFoundError:
                    continue
                p = trash
                res.removed += 1
            shutil.rmtree(p, ignore_errors=True)
            res.freed_bytes += size
        links = Root(root).links
        for link in links.iterdir() if links.is_dir() else ():
            if link.is_symlink() and not link.exists():
                res.freed_bytes += sizer.one(link)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link)
    return res


# -- df ----------------------------------------------------------------------------------------
@dataclass
class Item:
    """One thing that takes space: an image, a container, a layer directory, a cache mount..."""

    category: str
    name: str
    size: int = 0
    active: bool = False
    reclaimable: int = 0
    detail: dict = field(default_factory=dict)


@dataclass
class DiskUsage:
    """Every byte under the root, by category (``total`` equals ``du -sb ROOT``)."""

    root: Path
    total: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    reclaimable: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    active: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    items: list[Item] = field(default_factory=list)

    def add(self, category: str, size: int, reclaimable: bool = False) -> None:
        self.sizes[category] += size
        self.total += size
        if reclaimable:
            self.reclaimable[category] += size

    def to_dict(self) -> dict:
        return {"root": str(self.root), "total": self.total,
                "types": [{"type": c, "total": self.counts[c], "active": self.active[c], "size": self.sizes[c],
                           "reclaimable": self.reclaimable[c]} for c in CATEGORIES],
                "items": [{"type": i.category, "name": i.name, "size": i.size, "active": i.active,
                           "reclaimable": i.reclaimable, **i.detail} for i in self.items]}


def disk_usage(root: str | os.PathLike, store: Any = None) -> DiskUsage:
    """Walk the whole root once and put every entry in a category (see the module docstring)."""
    from registry.store import Store
    from .storecheck import live_processes
    root = Path(root)
    store = store or Store(root)
    r = Root(root)
    u = DiskUsage(root)
    sz = _Sizer()
    live = live_processes(store)

    # What references what.
    index = store.read_index().manifests
    roots = _root_files(store)
    container_roots = {d for n, ds in roots.items() if n.startswith("roots/container-") for d in ds}
    image_starts = {d.digest for d in index} | {d for n, ds in roots.items()
                                                if n != f"roots/{CACHE_ROOT_NAME}" for d in ds}
    image_blobs = _closure(store, image_starts)
    in_containers = _closure(store, container_roots)
    cache_blobs = _closure(store, set(gc_roots(root))) - image_blobs
    containers, _ = _containers(root)
    snap_owner = {c.get("snapshot"): c for c in containers if c.get("snapshot")}
    layer_refs = layer_references(root, store) or set()
    mounted = _mounted_layers(root)[0]

    u.add("Other", sz.one(root))
    for top in sorted(root.iterdir()):
        name = top.name
        if name == "images" and top.is_dir() and not top.is_symlink():
            u.add("Other", sz.one(top))
            for sub in sorted(top.iterdir()):
                if sub.name == "blobs" and sub.is_dir():
                    _blobs(u, sz, sub, image_blobs, in_containers, cache_blobs)
                elif sub.name == "ingest":
                    u.add("Other", sz.tree(sub), reclaimable=not live)
                else:
                    u.add("Other", sz.tree(sub))
        elif name == "layers" and top.is_dir():
            u.add("Extracted layers", sz.one(top))
            for p in sorted(top.iterdir()):
                n = sz.tree(p)
                used = p.name == "empty" or p.name in layer_refs
                junk = p.name.startswith((".tmp-", ".gc-"))
                u.add("Other" if junk else "Extracted layers", n, reclaimable=not used)
                if not junk and p.name != "empty":
                    u.counts["Extracted layers"] += 1
                    u.active["Extracted layers"] += p.name in mounted
                    u.items.append(Item("Extracted layers", p.name, n, p.name in mounted, 0 if used else n,
                                        {"referenced": used}))
        elif name == "l":
            u.add("Extracted layers", sz.tree(top))
        elif name == "cachemounts" and top.is_dir():
            u.add("Cache mounts", sz.one(top))
            for p in sorted(top.iterdir()):
                n = sz.tree(p)
                u.add("Cache mounts", n, reclaimable=True)
                if p.is_dir():
                    u.counts["Cache mounts"] += 1
                    u.items.append(Item("Cache mounts", p.name, n, False, n,
                                        {"last_used": p.stat().st_mtime}))
        elif name == "cache":
            n = sz.tree(top)
            u.add("Build cache", n, reclaimable=True)
        elif name == "containers" and top.is_dir():
            u.add("Containers", sz.one(top))
            by_dir = {c["dir"].name: c for c in containers}
            for p in sorted(top.iterdir()):
                c = by_dir.get(p.name)
                n = sz.tree(p)
                if c is None:
                    u.add("Containers", n)
                    continue
                running = _running(c)
                snap = c.get("snapshot") or ""
                n += sz.tree(r.snapshots / snap) if snap else 0
                u.add("Containers", n, reclaimable=not running)
                u.counts["Containers"] += 1
                u.active["Containers"] += running
                u.items.append(Item("Containers", c.get("name", p.name[:12]), n, running, 0 if running else n,
                                    {"id": c.get("id", p.name), "image": c.get("image", ""),
                                     "command": " ".join((c.get("entrypoint") or []) + (c.get("cmd") or [])),
                                     "created": c.get("created", ""),
                                     "status": (c.get("state") or {}).get("status", "")}))
        elif name == "snapshots" and top.is_dir():
            u.add("Snapshots", sz.one(top))
            for p in sorted(top.iterdir()):
                if p.name in snap_owner:
                    continue       # counted with its container ("containers" sorts first)
                n = sz.tree(p)
                u.add("Snapshots", n, reclaimable=not live)
                u.counts["Snapshots"] += 1
                u.items.append(Item("Snapshots", p.name, n, live, 0 if live else n))
        elif name == "tmp":
            u.add("Temporary", sz.tree(top), reclaimable=not live)
        else:
            u.add("Other", sz.tree(top))

    used_images = {c.get("image_digest") for c in containers}
    for d in index:
        u.counts["Images"] += 1
        u.active["Images"] += d.digest in used_images
    u.counts["Build cache"] = len(BuildCache(root).records())
    _image_items(u, store, used_images)
    return u


def _running(c: dict) -> bool:
    st = c.get("state") or {}
    if st.get("status") not in ("running", "restarting"):
        return False
    from .containers.lifecycle import _alive     # the containers' own liveness check (zombies too)
    return _alive(int(st.get("pid") or 0))


def _blobs(u: DiskUsage, sz: _Sizer, blobs: Path, image_blobs: set[str], in_containers: set[str],
           cache_blobs: set[str]) -> None:
    u.add("Other", sz.one(blobs))
    for algo in sorted(blobs.iterdir()):
        if not algo.is_dir():
            u.add("Other", sz.tree(algo), reclaimable=True)
            continue
        u.add("Other", sz.one(algo))
        with os.scandir(algo) as it:
            for e in it:
                digest = f"{algo.name}:{e.name}"
                n = sz.tree(e.path)
                if digest in image_blobs:
                    u.add("Images", n, reclaimable=digest not in in_containers)
                elif digest in cache_blobs:
                    u.add("Build cache", n, reclaimable=True)
                else:
                    u.add("Other", n, reclaimable=True)


def _image_items(u: DiskUsage, store: Any, used_images: set[str]) -> None:
    from .cli.images import image_rows
    for row in image_rows(store):
        used = row["digest"] in used_images
        u.items.append(Item("Images", f"{row['repository']}:{row['tag']}", row["size"], used,
                            0 if used else row["size"],
                            {"repository": row["repository"], "tag": row["tag"], "digest": row["digest"],
                             "created": row["created"], "containers": int(used)}))


# -- prune -------------------------------------------------------------------------------------
@dataclass
class PruneReport:
    """What :func:`prune` removed; ``reclaimed`` is the drop of the root's ``du -sb``."""

    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    cache_entries: int = 0
    cache_mounts: int = 0
    layers: int = 0
    leftovers: list[str] = field(default_factory=list)
    blobs: int = 0
    before: int = 0
    after: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def reclaimed(self) -> int:
        return max(0, self.before - self.after)


# Containers created this recently and not started yet may be a `pybuild run` about to start them.
FRESH_CONTAINER_SECONDS = 60


def prune(root: str | os.PathLike, store: Any = None, *, all: bool = False, volumes: bool = False) -> PruneReport:
    """`docker system prune`: stopped containers, dangling images (``all``: every image no
    container uses), the build cache (``all``: all of it, else what no image uses), cache mounts
    (with ``all`` or ``volumes``), extracted layers nothing references, leftovers of dead
    processes, then the blobs nothing references."""
    from registry.errors import NotFoundError
    from registry.store import Store
    from .cache.records import prune as cache_prune
    from .cli.images import image_rows
    from .containers import lifecycle as ct
    from .storecheck import remove_leftovers
    root = Path(root)
    store = store or Store(root)
    rep = PruneReport(before=tree_size(root))
    blobs_before = sum(1 for _ in store.blobs())

    now = time.time()
    for c in ct.list_containers(root, all=True):
        if c.running or c.restarting:
            continue
        if c.state.status == "created" and now - ct._parse_time(c.created) < FRESH_CONTAINER_SECONDS:
            continue
        ct.remove(c, force=True)
        rep.containers.append(c.id)
    used = {c.image_digest for c in ct.list_containers(root, all=True)}
    for row in image_rows(store):
        dangling = row["tag"] == "<none>"
        if row["digest"] in used or not (dangling or all):
            continue
        try:
            store.untag(row["name"])
        except NotFoundError:
            continue
        rep.images.append(f"untagged: {row['name']}")

    res = cache_prune(root, store, all=all)
    rep.cache_entries = res.removed
    if all or volumes:
        with builds_excluded(root) as _:
            d = Root(root).cachemounts
            for p in sorted(d.iterdir()) if d.is_dir() else ():
                if p.is_dir() and not p.is_symlink():
                    rep.cache_mounts += 1
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
            if all:
                # The context hash cache and no-op rebuild summaries are build cache too.
                cache = Root(root).cache
                for p in (cache / "hashes.v1", cache / "builds", cache / "parents", cache / "inputs"):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(p)
    rep.leftovers = remove_leftovers(root)
    lg = collect_layers(root, store)
    rep.layers = lg.removed
    if lg.skipped:
        rep.skipped.append(f"extracted layers: {lg.skipped}")
    store.gc(extra_roots=gc_roots(root))
    rep.blobs = max(0, blobs_before - sum(1 for _ in store.blobs()))
    rep.after = tree_size(root)
    return rep
