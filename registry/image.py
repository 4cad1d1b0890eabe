"""The image model: small value types, the source/sink protocols, one tree walk, one platform
selector.

    Layer         a layer blob's descriptor and the diff_id of its uncompressed tar
    RawManifest   a manifest or index as fetched: its descriptor, exact bytes and parsed document
    Image         an image manifest with its config (and so its layers)
    ImageIndex    an index with the manifests it lists that were read (children first)

An `ImageSource` gives manifests and blobs (the local Store, a registry repository, an OCI layout
directory or tar: see `registry.endpoints` and `registry.layout`); an `ImageSink` receives them.
`registry.copier.copy_image(src, dst, ...)` moves an image or index from one to the other.

Nothing here does I/O itself: readers are passed in, so the walk and the selection serve every
source alike.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Protocol, runtime_checkable

from . import mediatypes as mt
from .errors import RegistryError
from .manifest import Descriptor, ImageConfig, Index, Manifest, parse_manifest
from .platform import Platform, platform_matches

# Indexes of indexes exist (an index per platform family, say), a few levels at most. Deeper
# nesting is refused with an error; it would otherwise only serve to exhaust the stack.
MAX_INDEX_DEPTH = 32


@dataclass(frozen=True)
class Layer:
    """One layer: the blob's descriptor (compressed digest, size, media type) and its diff_id."""

    descriptor: Descriptor
    diff_id: str

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type


@dataclass(frozen=True)
class RawManifest:
    """A manifest or an index as stored or sent: descriptor, exact bytes, parsed document."""

    descriptor: Descriptor
    data: bytes
    doc: "Manifest | Index"

    @classmethod
    def parse(cls, data: bytes, media_type: str | None = None, digest: str | None = None,
              where: str = "manifest") -> "RawManifest":
        """Parse `data`; the descriptor gets `media_type` (else the document's) and `digest`
        (else the sha256 of the bytes)."""
        doc = parse_manifest(data, media_type or None, where=where)
        desc = Descriptor.of(data, media_type or doc.media_type)
        if digest is not None:
            desc.digest = digest
        return cls(desc, data, doc)

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    @property
    def is_index(self) -> bool:
        return isinstance(self.doc, Index)


@dataclass
class Image:
    """An image manifest and its config; `layers` pairs the manifest's layers with the diff_ids."""

    manifest: RawManifest
    config: ImageConfig

    @property
    def layers(self) -> list[Layer]:
        doc = self.manifest.doc
        assert isinstance(doc, Manifest)
        if len(doc.layers) != len(self.config.diff_ids):
            raise RegistryError(f"image {self.manifest.digest}: {len(doc.layers)} layers but the config lists "
                                f"{len(self.config.diff_ids)} diff_ids")
        return [Layer(d, diff_id) for d, diff_id in zip(doc.layers, self.config.diff_ids)]

    @property
    def platform(self) -> Platform:
        return self.config.platform


@dataclass
class ImageIndex:
    """An index and the manifests below it that were read, children before their index."""

    manifest: RawManifest
    children: list[RawManifest] = field(default_factory=list)

    def images(self) -> list[RawManifest]:
        return [c for c in self.children if not c.is_index]


# ---- sources and sinks -------------------------------------------------------------------------

# What a blob source yields: a binary file positioned at the offset, or an iterable of bytes.
BlobStream = "BinaryIO | Iterable[bytes]"


@runtime_checkable
class ImageSource(Protocol):
    """Where images come from."""

    name: str                     # for messages ("localhost:5000/app", "store", a path)
    verified: bool                # True when its blobs were verified when they were written
    host: str | None              # registry host for a remote repository, else None
    repository: str | None

    def read_manifest(self, ref: "str | Descriptor") -> RawManifest:
        """The manifest a reference (tag, digest, name) or a descriptor names; NotFoundError if absent."""

    def open_blob(self, desc: Descriptor, offset: int = 0) -> Any:
        """The blob's bytes from `offset` (a file positioned there or an iterable of bytes)."""

    def read_config(self, digest: str) -> ImageConfig:
        """An image config."""

    def slot(self) -> AbstractContextManager:
        """Held while a blob is read (bounds transfers per registry host)."""

    def mount_candidates(self, digest: str, host: str) -> list[str]:
        """Repositories on `host` known to hold `digest` (for a cross-repository mount)."""

    def remember(self, digest: str, host: str, repository: str) -> None:
        """Note that `host/repository` holds `digest` (the Store keeps it for later mounts)."""


@runtime_checkable
class ImageSink(Protocol):
    """Where images go."""

    name: str
    host: str | None
    repository: str | None
    ordered: bool                 # True: manifests only after all blobs, children before parents

    def session(self) -> AbstractContextManager:
        """Held around a whole copy (the Store's gc lease)."""

    def receive_blob(self, desc: Descriptor, src: ImageSource, progress: Any) -> tuple[str, int]:
        """Make the sink hold a blob read from `src`: ("skipped"|"transferred"|"mounted"|"foreign",
        bytes moved)."""

    def put_manifest(self, raw: RawManifest) -> None:
        """Store a manifest or index by digest."""

    def finish(self, top: RawManifest, tag: str | None) -> str:
        """Make the top manifest reachable (under `tag` if given); returns its digest."""

    def remember(self, digest: str, host: str, repository: str) -> None:
        """As ImageSource.remember."""


# ---- one tree walk -------------------------------------------------------------------------------

def references(doc: "Manifest | Index") -> list[Descriptor]:
    """Every descriptor a manifest or index points at: config and layers, or manifests; and subject."""
    out = [doc.config, *doc.layers] if isinstance(doc, Manifest) else list(doc.manifests)
    if doc.subject is not None:
        out.append(doc.subject)
    return out


def walk(read: Callable[[Descriptor], "RawManifest | None"], top: RawManifest, where: str) -> list[RawManifest]:
    """The manifests below `top` (not `top` itself), children before their index, each digest once.

    `read(desc)` reads a child (None: absent and fine to skip, e.g. the other platforms of a
    one-platform pull). Each manifest is read once however often the DAG lists it (a shared child
    listed twice per level would otherwise be read 2^depth times), without recursion; cycles and
    nesting deeper than MAX_INDEX_DEPTH are refused.
    """
    out: list[RawManifest] = []
    if not isinstance(top.doc, Index):
        return out
    done: set[str] = set()
    on_path: set[str] = set()
    # Depth-first, post-order by hand: (raw index or None for the top, its entries left to visit).
    stack: list[tuple[RawManifest | None, Iterator[Descriptor], str]] = [(None, iter(top.doc.manifests), where)]
    while stack:
        raw, entries, here = stack[-1]
        child = next(entries, None)
        if child is None:
            stack.pop()
            if raw is not None:
                on_path.discard(raw.digest)
                done.add(raw.digest)
                out.append(raw)
            continue
        if not mt.is_manifest(child.media_type) or child.digest in done:
            continue
        cwhere = f"{where}@{child.digest}"
        if child.digest in on_path:
            raise RegistryError(f"{cwhere}: the index lists itself through its children; refusing it")
        if len(stack) > MAX_INDEX_DEPTH:
            raise RegistryError(f"{cwhere}: indexes nested more than {MAX_INDEX_DEPTH} levels deep; refusing it")
        craw = read(child)
        if craw is None:
            continue
        if isinstance(craw.doc, Index):
            on_path.add(child.digest)
            stack.append((craw, iter(craw.doc.manifests), cwhere))
        else:
            done.add(child.digest)
            out.append(craw)
    return out


def image_blobs(manifests: Iterable["Manifest | Index"]) -> dict[str, Descriptor]:
    """Configs and layers of the image manifests among `manifests`, by digest, each once."""
    blobs: dict[str, Descriptor] = {}
    for m in manifests:
        if isinstance(m, Manifest):
            for d in [m.config, *m.layers]:
                blobs.setdefault(d.digest, d)
    return blobs


# ---- one platform selector -----------------------------------------------------------------------

def select_path(read: Callable[[Descriptor], RawManifest], top: RawManifest, platform: Platform,
                where: str, *, config: Callable[[Manifest], ImageConfig] | None = None) -> list[RawManifest]:
    """The manifests from `top` down to the image manifest for `platform`: `[top]` when it is an
    image, else `[top, nested indexes..., image]`, each index resolved to the entry that best runs
    on `platform` (Index.select).

    With `config`, a single manifest is checked against `platform` (a config without an
    architecture passes) and NotFoundError names what the image is for.
    """
    from .errors import NotFoundError
    path = [top]
    for _ in range(MAX_INDEX_DEPTH):
        raw = path[-1]
        if isinstance(raw.doc, Manifest):
            if config is not None:
                cfg = config(raw.doc)
                if cfg.architecture and not platform_matches(platform, cfg.platform):
                    raise NotFoundError(f"{where} is for {cfg.platform}, not {platform} "
                                        "(choose another --platform)")
            return path
        path.append(read(raw.doc.select(platform, where=where)))
    raise RegistryError(f"manifest {where}: indexes nested more than {MAX_INDEX_DEPTH} levels deep")


def select_image(read: Callable[[Descriptor], RawManifest], top: RawManifest, platform: Platform,
                 where: str, *, config: Callable[[Manifest], ImageConfig] | None = None) -> RawManifest:
    """The image manifest for `platform`: the last of select_path."""
    return select_path(read, top, platform, where, config=config)[-1]
