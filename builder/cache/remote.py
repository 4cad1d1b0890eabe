"""Cache import and export: ``--cache-from`` / ``--cache-to`` in a registry or a local directory.

One cache index per reference, stored as an OCI artifact (an image manifest)::

    manifest  artifactType  application/vnd.pybuild.cache.v1
              config        application/vnd.pybuild.cache.index.v1+json  (the index, below)
              layers        the layer blobs the records name (ordinary blobs: the registry keeps
                            them alive, pushes skip or mount what the repository already has)

    index     {"version": 2, "records": {KEY: {"layer": {diff_id, mediaType, digest, size} | null,
                                                "config": {"history": {...}}, "created": EPOCH,
                                                "stage": NAME, "key": {parent, platform,
                                                "instruction", "inputs"}}}}

No tag per step: the whole cache of a ref is one manifest, replaced by each export.
``type=local`` writes the same manifest into an OCI image layout directory (``dest=DIR``,
read back with ``src=DIR``). ``mode=min`` (default) exports the steps of the final image's
stage chain, ``mode=max`` every step of the build.

Layers of remote hits are not downloaded at lookup: :meth:`BuildCache.ensure_local` fetches
one when a RUN, COPY or the final image needs it.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import BuildCache, CacheRecord
from ..errors import BuildError

ARTIFACT_TYPE = "application/vnd.pybuild.cache.v1"
INDEX_MEDIA_TYPE = "application/vnd.pybuild.cache.index.v1+json"
INDEX_VERSION = 2
MODES = ("min", "max")


@dataclass
class CacheSpec:
    """One parsed ``--cache-from`` / ``--cache-to`` value."""

    type: str                    # registry | local
    ref: str = ""                # registry: REPO:TAG
    path: str = ""               # local: DIR (dest= or src=)
    mode: str = "min"
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """How progress and reports name this cache."""
        return self.ref if self.type == "registry" else f"local:{self.path}"


def parse_cache_spec(spec: str, *, export: bool) -> CacheSpec:
    """Parse ``type=registry,ref=REPO:TAG[,mode=min|max]`` or ``type=local,dest=DIR|src=DIR``.

    A bare ``REPO:TAG`` means ``type=registry,ref=REPO:TAG`` (as docker buildx does).
    """
    flag = "--cache-to" if export else "--cache-from"
    if "=" not in spec:
        spec = f"type=registry,ref={spec}"
    attrs: dict[str, str] = {}
    for part in spec.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            raise BuildError(f"{flag} {spec}: {part!r} is not key=value "
                             "(use type=registry,ref=REPO:TAG or type=local,dest=DIR)")
        attrs[k.strip().lower()] = v.strip()
    typ = attrs.pop("type", "registry")
    mode = attrs.pop("mode", "min")
    if mode not in MODES:
        raise BuildError(f"{flag} {spec}: mode={mode} is not min or max")
    if typ == "registry":
        ref = attrs.pop("ref", "")
        if not ref:
            raise BuildError(f"{flag} {spec}: type=registry needs ref=REPO:TAG")
        from registry.reference import parse_reference
        parse_reference(ref)
        return CacheSpec("registry", ref=ref, mode=mode, attrs=attrs)
    if typ == "local":
        path = attrs.pop("dest" if export else "src", "")
        if not path:
            raise BuildError(f"{flag} {spec}: type=local needs {'dest' if export else 'src'}=DIR")
        return CacheSpec("local", path=path, mode=mode, attrs=attrs)
    raise BuildError(f"{flag} {spec}: unknown type {typ!r}; use registry or local")


# -- the index -------------------------------------------------------------------------------------
def encode_index(records: list[CacheRecord]) -> bytes:
    """The index document of ``records`` (canonical JSON)."""
    doc = {"version": INDEX_VERSION,
           "records": {r.key: {"layer": r.layer, "config": r.config, "created": r.created,
                               "stage": r.stage, "key": r.key_doc} for r in records}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_index(data: bytes, where: str) -> dict[str, CacheRecord]:
    """Records of an index document; a foreign or damaged one is a BuildError naming ``where``."""
    try:
        doc = json.loads(data)
        if doc.get("version") != INDEX_VERSION:
            raise ValueError(f"version {doc.get('version')!r}, expected {INDEX_VERSION}")
        out = {}
        for key, r in doc["records"].items():
            out[key] = CacheRecord(key, r.get("layer"), r["config"], float(r.get("created", 0)),
                                   r.get("stage", ""), r.get("key") or {})
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BuildError(f"cache index {where} cannot be read ({exc}); export it again with --cache-to") from None


def _manifest(index_desc: Any, layers: list[dict]) -> Any:
    from registry.manifest import Descriptor, Manifest
    blobs = {}
    for l in layers:
        blobs.setdefault(l["digest"], Descriptor(l["mediaType"], l["digest"], int(l["size"])))
    return Manifest(config=index_desc, layers=list(blobs.values()), artifact_type=ARTIFACT_TYPE)


# -- sources -------------------------------------------------------------------------------------
class RegistryCache:
    """A cache index in a registry repository (``--cache-from type=registry,ref=...``)."""

    def __init__(self, ref: str, client: Any = None):
        from registry.reference import parse_reference
        self.name = ref
        self.ref = parse_reference(ref)
        self._client = client
        self._records: dict[str, CacheRecord] | None = None

    def _repo(self) -> Any:
        if self._client is None:
            from registry.client import RegistryClient
            self._client = RegistryClient()
        return self._client.repository(self.ref.registry, self.ref.repository)

    def records(self) -> dict[str, CacheRecord]:
        """The records of the index (empty when the ref does not exist yet)."""
        if self._records is None:
            from registry.errors import NotFoundError
            from registry.manifest import Manifest
            repo = self._repo()
            try:
                m = Manifest.from_bytes(repo.get_manifest(self.ref.tag or self.ref.digest).data,
                                        where=f"cache {self.name}")
            except NotFoundError:
                self._records = {}
                return self._records
            if m.config.media_type != INDEX_MEDIA_TYPE:
                raise BuildError(f"--cache-from {self.name}: not a pybuild cache (its config is "
                                 f"{m.config.media_type}); use a ref written by --cache-to")
            self._records = decode_index(repo.fetch_blob(m.config.digest, max_size=256 << 20), self.name)
        return self._records

    def fetch(self, layer: dict, store: Any) -> None:
        """Download a layer blob into ``store`` (verified by the store's writer)."""
        if store.has_blob(layer["digest"]):
            return
        repo = self._repo()
        with store.blob_writer(layer["digest"], int(layer["size"]), media_type=layer["mediaType"],
                               resumable=True) as w:
            for chunk in repo.iter_blob(layer["digest"], int(layer["size"]), offset=w.offset):
                w.write(chunk)


class LocalCache:
    """A cache index in an OCI image layout directory (``type=local,src=DIR``), read as a LayoutDir."""

    def __init__(self, path: str):
        from registry.layout import LayoutDir
        self.path = Path(path)
        self.layout = LayoutDir(path)
        self.name = f"local:{path}"
        self._records: dict[str, CacheRecord] | None = None

    def records(self) -> dict[str, CacheRecord]:
        """The records of the layout's cache manifest (empty when the directory has none)."""
        if self._records is None:
            from registry.errors import NotFoundError
            from registry.manifest import InvalidManifestError
            self._records = {}
            try:
                index = self.layout.index()
            except NotFoundError:
                return self._records
            except InvalidManifestError as exc:
                raise BuildError(f"--cache-from {self.name}: {exc}") from None
            for d in index.manifests:
                if d.artifact_type != ARTIFACT_TYPE:
                    continue
                m = self.layout.read_manifest(d).doc
                with self.layout.open_blob(m.config) as f:
                    self._records = decode_index(f.read(), self.name)
                break
        return self._records

    def fetch(self, layer: dict, store: Any) -> None:
        """Copy a layer blob into ``store`` (verified against its digest)."""
        from registry.manifest import Descriptor
        if not store.has_blob(layer["digest"]):
            with self.layout.open_blob(Descriptor(layer["mediaType"], layer["digest"], int(layer["size"]))) as f:
                with store.blob_writer(layer["digest"], int(layer["size"]), media_type=layer["mediaType"]) as w:
                    while chunk := f.read(1 << 20):
                        w.write(chunk)


def open_build_cache(root: Path, store: Any, *, no_cache: bool = False,
                     no_cache_filter: list[str] | tuple[str, ...] = (),
                     cache_from: list[str] | tuple[str, ...] = ()) -> BuildCache:
    """The BuildCache of one build, with its ``--cache-from`` sources."""
    remotes: list = []
    for spec in cache_from:
        cs = parse_cache_spec(spec, export=False)
        remotes.append(RegistryCache(cs.ref) if cs.type == "registry" else LocalCache(cs.path))
    return BuildCache(root, store, no_cache=no_cache, no_cache_filter=no_cache_filter, remotes=remotes)


def _safe_records(src: Any, progress: Any) -> dict[str, CacheRecord]:
    """A source's records; an unreachable or missing cache is a warning (the build goes on)."""
    from registry.errors import RegistryError
    try:
        return src.records()
    except (RegistryError, OSError) as exc:
        if progress is not None:
            progress.message(f"[warning] --cache-from {src.name}: {str(exc).splitlines()[0]}; building without it")
        src._records = {}
        return {}


def load_remotes(cache: BuildCache, progress: Any = None) -> None:
    """Read every ``--cache-from`` index now (so a failing source warns once, up front)."""
    for src in cache.remotes:
        _safe_records(src, progress)


# -- export --------------------------------------------------------------------------------------
def export_records(cache: BuildCache, mode: str, final_stages: set[str]) -> list[CacheRecord]:
    """The records a ``--cache-to`` of ``mode`` carries: every step this build hit or made
    (max), or those of the stages the final image is built on (min)."""
    keys = [l.key for l in cache.lookups]
    out, seen = [], set()
    for key in keys + list(cache.used):
        rec = cache.used.get(key)
        if rec is None or key in seen:
            continue
        if mode == "min" and rec.stage not in final_stages and \
                not any(l.key == key and l.stage in final_stages for l in cache.lookups):
            continue
        seen.add(key)
        out.append(rec)
    return out


def export_cache(cache: BuildCache, store: Any, spec: CacheSpec, records: list[CacheRecord],
                 progress: Any = None) -> str:
    """Write ``records`` (and their layer blobs) to the cache ``spec``; returns the manifest digest."""
    from registry import mediatypes as mt
    from registry.manifest import Descriptor
    index = encode_index(records)
    index_desc = Descriptor(INDEX_MEDIA_TYPE, "sha256:" + hashlib.sha256(index).hexdigest(), len(index))
    layers = [r.layer for r in records if r.layer]
    manifest = _manifest(index_desc, layers)
    data = manifest.to_bytes()
    t0 = time.monotonic()
    if spec.type == "registry":
        digest = _push(cache, store, spec, index, index_desc, layers, data, mt.OCI_MANIFEST)
    else:
        digest = _write_local(cache, store, spec, index, index_desc, layers, data, mt.OCI_MANIFEST)
    if progress is not None:
        progress.message(f"exported cache ({len(records)} steps, {len({l['digest'] for l in layers})} layers) "
                         f"to {spec.name} in {time.monotonic() - t0:.1f}s")
    return digest


def _artifact_copy(cache: BuildCache, store: Any, index: bytes, index_desc: Any, data: bytes,
                   media_type: str) -> tuple[Any, Any]:
    """The cache artifact as a copy plan and its source: the store's blobs (a lazy remote hit
    is fetched only when it must be sent, and mounted from the cache repository it came from
    when that is on the destination's registry), the index and the manifest from memory."""
    from registry.copier import CopyPlan
    from registry.endpoints import StoreEndpoint
    from registry.errors import NotFoundError
    from registry.image import RawManifest, image_blobs

    raw = RawManifest.parse(data, media_type, where="cache manifest")

    class CacheSource(StoreEndpoint):
        def read_manifest(self, ref: Any) -> RawManifest:
            return raw

        def open_blob(self, desc: Any, offset: int = 0) -> Any:
            if desc.digest == index_desc.digest:
                return iter([index[offset:]])
            cache.ensure_local_digest(desc.digest)
            return super().open_blob(desc, offset)

        def read_config(self, digest: str) -> Any:
            raise NotFoundError("a cache index is not an image config")

        def mount_candidates(self, digest: str, host: str) -> list[str]:
            return [*super().mount_candidates(digest, host), *_mount_sources(cache, digest, host)]

    return CopyPlan(raw, raw, [], image_blobs([raw.doc])), CacheSource(store)


def _push(cache: BuildCache, store: Any, spec: CacheSpec, index: bytes, index_desc: Any,
          layers: list[dict], data: bytes, media_type: str) -> str:
    """The one copy of the cache artifact to its repository (blobs in parallel, mounts)."""
    from registry.client import RegistryClient
    from registry.copier import run_copy
    from registry.endpoints import RemoteEndpoint
    from registry.reference import parse_reference
    ref = parse_reference(spec.ref)
    plan, src = _artifact_copy(cache, store, index, index_desc, data, media_type)
    try:
        with RegistryClient() as client:
            dst = RemoteEndpoint(client.repository(ref.registry, ref.repository))
            return run_copy(plan, src, dst, tag=ref.tag or "latest").digest
    finally:
        src.close()


def _mount_sources(cache: BuildCache, digest: str, host: str) -> list[str]:
    """Repositories on ``host`` whose cache index names ``digest`` (for a cross-repo mount)."""
    out = []
    for src in cache.remotes:
        if isinstance(src, RegistryCache) and src.ref.registry == host:
            if any(r.layer and r.layer.get("digest") == digest for r in (src._records or {}).values()):
                out.append(src.ref.repository)
    return out


def _write_local(cache: BuildCache, store: Any, spec: CacheSpec, index: bytes, index_desc: Any,
                 layers: list[dict], data: bytes, media_type: str) -> str:
    """The one copy of the cache artifact into an OCI layout directory (index.json: this cache
    alone, named by ``tag=``, default latest)."""
    from registry.copier import run_copy
    from registry.layout import LayoutDir
    plan, src = _artifact_copy(cache, store, index, index_desc, data, media_type)
    try:
        return run_copy(plan, src, LayoutDir(spec.path, replace=True), tag=spec.attrs.get("tag", "latest")).digest
    finally:
        src.close()


def finish_build(cache: BuildCache, store: Any, plan: Any, cache_to: list[str], report_path: str | None,
                 progress: Any = None, image: str = "") -> None:
    """After a successful build: export to every ``--cache-to`` and write ``--cache-report``."""
    final_stages = _final_chain(plan)
    for spec_text in cache_to:
        spec = parse_cache_spec(spec_text, export=True)
        export_cache(cache, store, spec, export_records(cache, spec.mode, final_stages), progress)
    if report_path:
        from .report import write_report
        write_report(report_path, cache, image=image)


def _final_chain(plan: Any) -> set[str]:
    """Names of the target stage and the stages it is built FROM (what its layers come from)."""
    names = set()
    i = plan.target
    while i is not None:
        ps = plan.stages[i]
        names.add(ps.name)
        i = ps.base_stage
    return names
