"""The image model: descriptors, image manifests, indexes and image configs (OCI and Docker).

Every class reads a JSON document with `from_bytes`/`from_dict` and writes it with
`to_bytes`/`to_dict`; fields this model does not know are kept in `extra` and written back, so a
round trip loses nothing.

Serialization (`to_bytes`) is deterministic: fields in the order of the OCI Go types (what
BuildKit and containerd emit), empty optional fields left out, map keys sorted, compact separators
(`,` and `:`), UTF-8, no trailing newline. The digest of a document is the sha256 of those exact
bytes. A document read from elsewhere must be stored and pushed as the bytes it came in (its
digest is over them); re-serializing is only for documents pybuild creates or changes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import mediatypes as mt
from .digest import InvalidDigestError, digest_bytes, parse_digest
from .errors import NotFoundError, RegistryError
from .platform import Platform, platform_rank


class InvalidManifestError(RegistryError):
    """A manifest, index or config document is malformed or of an unsupported kind."""


def dump_json(obj: Any) -> bytes:
    """pybuild's canonical JSON bytes: compact separators, UTF-8, insertion order kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# Real manifests, indexes and configs nest a handful of levels (annotations, config.Healthcheck);
# a document nested deeper is hostile or broken. The limit is well below the interpreter's
# recursion limit, so neither the decoder nor any later walk of the document can hit it.
MAX_JSON_DEPTH = 64


def json_depth(obj: Any) -> int:
    """How deeply OBJ's lists and objects nest (a scalar is 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in node if isinstance(child, (dict, list)))
    return deepest


def loads_limited(data: bytes | str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with a nesting limit: InvalidManifestError naming WHERE for a document nested
    deeper than MAX_DEPTH (instead of the decoder's RecursionError); ValueError for invalid JSON."""
    try:
        doc = json.loads(data)
    except RecursionError:
        doc = None
        too_deep = True
    else:
        too_deep = json_depth(doc) > max_depth
    if too_deep:
        raise InvalidManifestError(f"{where}: JSON nested more than {max_depth} levels deep; "
                                   f"refusing it (no image needs that)")
    return doc


def _annotations(value: Any, where: str) -> dict[str, str]:
    """An ``annotations`` member: an object of strings (OCI image-spec), else InvalidManifestError
    (a hostile registry's list, number or nested value would otherwise surface as a TypeError
    wherever an annotation is used)."""
    if not value:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidManifestError(f"{where}: annotations must be an object of strings")
    return dict(value)


def load_json(data: bytes, where: str) -> dict:
    """Decode a JSON object, raising InvalidManifestError naming `where` on anything else."""
    try:
        doc = loads_limited(data, where)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifestError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidManifestError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _extra(d: dict, known: Iterable[str]) -> dict:
    known = set(known)
    return {k: v for k, v in d.items() if k not in known}


def _sorted_map(m: dict | None) -> dict:
    return {k: m[k] for k in sorted(m)} if m else {}


# ---------------------------------------------------------------------------------------------
@dataclass
class Descriptor:
    """A pointer to content: media type, digest and size, plus optional metadata."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: list[str] = field(default_factory=list)
    artifact_type: str | None = None
    data: str | None = None
    extra: dict = field(default_factory=dict)

    _KNOWN = ("mediaType", "digest", "size", "urls", "annotations", "data", "platform", "artifactType")

    @classmethod
    def from_dict(cls, d: Any, where: str = "descriptor") -> "Descriptor":
        """Validate and read a descriptor object."""
        if not isinstance(d, dict):
            raise InvalidManifestError(f"{where}: expected an object, got {type(d).__name__}")
        digest = d.get("digest")
        try:
            parse_digest(digest)
        except InvalidDigestError as exc:
            raise InvalidManifestError(f"{where}: {exc}") from None
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifestError(f"{where}: size must be a non-negative integer, got {size!r}")
        platform = d.get("platform")
        return cls(media_type=str(d.get("mediaType", "")), digest=digest, size=size,
                   annotations=_annotations(d.get("annotations"), where),
                   platform=Platform.from_dict(platform) if isinstance(platform, dict) else None,
                   urls=list(d.get("urls") or []), artifact_type=d.get("artifactType"),
                   data=d.get("data"), extra=_extra(d, cls._KNOWN))

    def to_dict(self) -> dict:
        """The JSON object, OCI field order, empty optional fields left out."""
        d: dict = {}
        if self.media_type:
            d["mediaType"] = self.media_type
        d["digest"] = self.digest
        d["size"] = self.size
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = _sorted_map(self.annotations)
        if self.data is not None:
            d["data"] = self.data
        if self.platform is not None:
            d["platform"] = self.platform.to_dict()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        d.update(self.extra)
        return d

    @classmethod
    def of(cls, data: bytes, media_type: str, **kw) -> "Descriptor":
        """The descriptor of `data` (its sha256 digest over the exact bytes, and its size)."""
        return cls(media_type=media_type, digest=digest_bytes(data), size=len(data), **kw)


# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class _Document:
    """What an image manifest and an index share: the fields around their own payload
    (schemaVersion, artifactType, subject, annotations, unknown fields; keyword-only) and how
    they are read and written.

    Each subclass declares its own fields and `media_type` (whose default differs), and defines
    `_KNOWN` (the JSON keys it reads), `_KIND` (its name in messages), `_DOCKER_TYPE` (the
    Docker media type of its kind) and `_payload()` (its own fields in OCI order, which stand
    after artifactType).
    """

    schema_version: int = 2
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_docker(self) -> bool:
        """True for a Docker schema2 manifest or manifest list."""
        return self.media_type == self._DOCKER_TYPE

    @staticmethod
    def _common_fields(d: dict, where: str, media_type: str, known: Iterable[str]) -> dict:
        """Keyword arguments for the shared fields, read from the JSON object `d`."""
        subject = d.get("subject")
        return dict(media_type=d.get("mediaType") or media_type, schema_version=d.get("schemaVersion", 2),
                    annotations=_annotations(d.get("annotations"), where),
                    subject=Descriptor.from_dict(subject, f"{where}: subject") if subject else None,
                    artifact_type=d.get("artifactType"), extra=_extra(d, known))

    @classmethod
    def _check_kind(cls, doc: "Manifest | Index", where: str):
        """`doc` if it is of this kind; else InvalidManifestError naming both kinds."""
        if not isinstance(doc, cls):
            raise InvalidManifestError(f"{where}: expected {cls._KIND}, got {doc._KIND} ({doc.media_type})")
        return doc

    def to_dict(self) -> dict:
        """The JSON object in OCI field order."""
        d: dict = {"schemaVersion": self.schema_version, "mediaType": self.media_type}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        d.update(self._payload())
        if self.subject is not None:
            d["subject"] = self.subject.to_dict()
        if self.annotations:
            d["annotations"] = _sorted_map(self.annotations)
        d.update(self.extra)
        return d

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (see the module docstring)."""
        return dump_json(self.to_dict())

    def descriptor(self, **kw) -> Descriptor:
        """The descriptor of `to_bytes()` (digest, size, this media type)."""
        return Descriptor.of(self.to_bytes(), self.media_type, **kw)


@dataclass
class Manifest(_Document):
    """An image manifest: OCI (`application/vnd.oci.image.manifest.v1+json`) or Docker schema2."""

    config: Descriptor
    layers: list[Descriptor] = field(default_factory=list)
    media_type: str = mt.OCI_MANIFEST

    _KNOWN = ("schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations")
    _KIND = "an image manifest"

    _DOCKER_TYPE = mt.DOCKER_MANIFEST

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest", media_type: str = mt.OCI_MANIFEST) -> "Manifest":
        """Validate and read an image manifest object (`media_type` if it names none)."""
        if "config" not in d:
            raise InvalidManifestError(f"{where}: an image manifest needs a 'config' descriptor")
        layers = d.get("layers") or []
        if not isinstance(layers, list):
            raise InvalidManifestError(f"{where}: 'layers' must be a list")
        return cls(config=Descriptor.from_dict(d["config"], f"{where}: config"),
                   layers=[Descriptor.from_dict(x, f"{where}: layers[{i}]") for i, x in enumerate(layers)],
                   **cls._common_fields(d, where, media_type, cls._KNOWN))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "manifest") -> "Manifest":
        """Read an image manifest from its JSON bytes."""
        return cls._check_kind(parse_manifest(data, where=where), where)

    def _payload(self) -> dict:
        return {"config": self.config.to_dict(), "layers": [x.to_dict() for x in self.layers]}


@dataclass
class Index(_Document):
    """An OCI image index or a Docker manifest list: manifests for several platforms."""

    manifests: list[Descriptor] = field(default_factory=list)
    media_type: str = mt.OCI_INDEX

    _KNOWN = ("schemaVersion", "mediaType", "artifactType", "manifests", "subject", "annotations")
    _KIND = "an index"

    _DOCKER_TYPE = mt.DOCKER_MANIFEST_LIST

    @classmethod
    def from_dict(cls, d: dict, where: str = "index", media_type: str = mt.OCI_INDEX) -> "Index":
        """Validate and read an index object (`media_type` if it names none)."""
        manifests = d.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidManifestError(f"{where}: an index needs a 'manifests' list")
        return cls(manifests=[Descriptor.from_dict(x, f"{where}: manifests[{i}]") for i, x in enumerate(manifests)],
                   **cls._common_fields(d, where, media_type, cls._KNOWN))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "index") -> "Index":
        """Read an index from its JSON bytes."""
        return cls._check_kind(parse_manifest(data, where=where), where)

    def _payload(self) -> dict:
        return {"manifests": [x.to_dict() for x in self.manifests]}

    def platforms(self) -> list[Platform]:
        """Platforms of the runnable entries (attestations and other artifacts left out)."""
        return [d.platform for d in self.manifests if d.platform is not None and not is_attestation(d)]

    def select(self, platform: Platform, where: str = "index") -> Descriptor:
        """The entry that best runs on `platform` (see select_manifest)."""
        return select_manifest(self.manifests, platform, where)


def is_attestation(desc: Descriptor) -> bool:
    """True for BuildKit attestation manifests (provenance/SBOM), which are not runnable images."""
    return (desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest"
            or (desc.platform is not None and desc.platform.os == "unknown"))


def select_manifest(manifests: list[Descriptor], platform: Platform, where: str = "index") -> Descriptor:
    """Pick the manifest for `platform` from an index's entries.

    Exact os/arch/variant wins, then compatible variants (arm v7 runs v6); an entry without a
    platform is taken only when nothing matches. Raises NotFoundError listing what is there.
    """
    best: tuple[int, int] | None = None
    chosen: Descriptor | None = None
    for pos, desc in enumerate(manifests):
        if is_attestation(desc) or not (mt.is_manifest(desc.media_type) or desc.media_type == ""):
            continue
        rank = platform_rank(platform, desc.platform) if desc.platform is not None else 100
        if rank is None:
            continue
        if best is None or (rank, pos) < best:
            best, chosen = (rank, pos), desc
    if chosen is None:
        have = sorted({str(d.platform) for d in manifests if d.platform is not None and not is_attestation(d)})
        raise NotFoundError(f"{where}: no image for platform {platform}; it has {', '.join(have) or 'none'}"
                            " (choose one with --platform)")
    return chosen


def parse_manifest(data: bytes, media_type: str | None = None, where: str = "manifest") -> "Manifest | Index":
    """Read any of the four manifest kinds from its bytes.

    The kind comes from the document's `mediaType`, else from `media_type` (e.g. the
    Content-Type a registry sent), else from its shape. Schema 1 gets a clear error.
    """
    doc = load_json(data, where)
    kind = doc.get("mediaType") or media_type
    if not isinstance(kind, (str, type(None))):
        raise InvalidManifestError(f"{where}: mediaType must be a string, not {json.dumps(kind)[:80]}")
    if kind in mt.SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise InvalidManifestError(
            f"{where}: Docker schema 1 manifests are not supported (deprecated since 2017); "
            "re-push the image with a current tool to get a schema 2 or OCI manifest")
    if doc.get("schemaVersion", 2) != 2:
        raise InvalidManifestError(f"{where}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if kind is None or kind == "":
        kind = mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST
    try:
        if mt.is_index(kind):
            return Index.from_dict(doc, where, kind)
        if mt.is_image_manifest(kind):
            return Manifest.from_dict(doc, where, kind)
        if "config" in doc:      # an artifact manifest with an unusual Content-Type
            return Manifest.from_dict(doc, where)
    except (TypeError, ValueError, AttributeError) as exc:
        # A field of the wrong JSON type (a list where an object belongs, ...).
        raise InvalidManifestError(f"{where}: malformed {kind}: {exc}") from None
    raise InvalidManifestError(f"{where}: unsupported manifest media type {kind!r}; expected one of "
                               + ", ".join(mt.MANIFEST_TYPES))


# ---------------------------------------------------------------------------------------------
@dataclass
class ContainerConfig:
    """The `config` object of an image config: how a container of the image runs.

    `cmd`/`entrypoint`/`shell`/`on_build`/`env` are None when absent; an empty list is written
    as `[]`. `healthcheck` is kept as its JSON object (Test, Interval, Timeout, StartPeriod,
    StartInterval, Retries; durations in nanoseconds).
    """

    user: str = ""
    exposed_ports: dict[str, dict] = field(default_factory=dict)
    env: list[str] | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    volumes: dict[str, dict] = field(default_factory=dict)
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    args_escaped: bool = False
    healthcheck: dict | None = None
    on_build: list[str] | None = None
    shell: list[str] | None = None
    extra: dict = field(default_factory=dict)

    _KNOWN = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
              "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")

    @classmethod
    def from_dict(cls, d: dict | None) -> "ContainerConfig":
        """Read the `config` object (None or missing gives an empty one)."""
        d = d or {}

        def strlist(key: str) -> list[str] | None:
            v = d.get(key)
            if v is None:
                return None
            return [v] if isinstance(v, str) else [str(x) for x in v]

        return cls(user=d.get("User") or "", exposed_ports=dict(d.get("ExposedPorts") or {}),
                   env=strlist("Env"), entrypoint=strlist("Entrypoint"), cmd=strlist("Cmd"),
                   volumes=dict(d.get("Volumes") or {}), working_dir=d.get("WorkingDir") or "",
                   labels=dict(d.get("Labels") or {}), stop_signal=d.get("StopSignal") or "",
                   args_escaped=bool(d.get("ArgsEscaped", False)), healthcheck=d.get("Healthcheck"),
                   on_build=strlist("OnBuild"), shell=strlist("Shell"), extra=_extra(d, cls._KNOWN))

    def to_dict(self) -> dict:
        """The JSON object (OCI ImageConfig order, then Docker's Healthcheck, OnBuild, Shell)."""
        d: dict = {}
        if self.user:
            d["User"] = self.user
        if self.exposed_ports:
            d["ExposedPorts"] = {k: self.exposed_ports[k] or {} for k in sorted(self.exposed_ports)}
        if self.env is not None:
            d["Env"] = list(self.env)
        if self.entrypoint is not None:
            d["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            d["Cmd"] = list(self.cmd)
        if self.volumes:
            d["Volumes"] = {k: self.volumes[k] or {} for k in sorted(self.volumes)}
        if self.working_dir:
            d["WorkingDir"] = self.working_dir
        if self.labels:
            d["Labels"] = _sorted_map(self.labels)
        if self.stop_signal:
            d["StopSignal"] = self.stop_signal
        if self.args_escaped:
            d["ArgsEscaped"] = True
        if self.healthcheck is not None:
            d["Healthcheck"] = self.healthcheck
        if self.on_build is not None:
            d["OnBuild"] = list(self.on_build)
        if self.shell is not None:
            d["Shell"] = list(self.shell)
        d.update(self.extra)
        return d

    def env_dict(self) -> dict[str, str]:
        """Env as an ordered mapping (a later duplicate wins, as in a container)."""
        out: dict[str, str] = {}
        for item in self.env or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def set_env(self, key: str, value: str) -> None:
        """Set one variable, replacing it in place if present, else appending (Docker's order)."""
        env = list(self.env or [])
        for i, item in enumerate(env):
            if item.partition("=")[0] == key:
                env[i] = f"{key}={value}"
                break
        else:
            env.append(f"{key}={value}")
        self.env = env


@dataclass
class History:
    """One entry of an image's history; `empty_layer` marks steps that added no layer."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False
    extra: dict = field(default_factory=dict)

    _KNOWN = ("created", "created_by", "author", "comment", "empty_layer")

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        """Read one history object."""
        return cls(created=d.get("created"), created_by=d.get("created_by"), author=d.get("author"),
                   comment=d.get("comment"), empty_layer=bool(d.get("empty_layer", False)),
                   extra=_extra(d, cls._KNOWN))

    def to_dict(self) -> dict:
        """The JSON object, empty fields left out."""
        d: dict = {}
        for key in ("created", "created_by", "author", "comment"):
            v = getattr(self, key)
            if v:
                d[key] = v
        if self.empty_layer:
            d["empty_layer"] = True
        d.update(self.extra)
        return d


@dataclass
class ImageConfig:
    """An image configuration (OCI `application/vnd.oci.image.config.v1+json` or Docker's).

    `diff_ids` are the sha256 digests of the uncompressed layer tars, bottom first.
    `created` is an RFC 3339 string, kept as written.
    """

    architecture: str = ""
    os: str = "linux"
    variant: str | None = None
    os_version: str | None = None
    os_features: list[str] = field(default_factory=list)
    created: str | None = None
    author: str | None = None
    config: ContainerConfig = field(default_factory=ContainerConfig)
    diff_ids: list[str] = field(default_factory=list)
    rootfs_type: str = "layers"
    history: list[History] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    rootfs_extra: dict = field(default_factory=dict)

    _KNOWN = ("created", "author", "architecture", "os", "os.version", "os.features", "variant",
              "config", "rootfs", "history")

    @property
    def platform(self) -> Platform:
        """The platform this image is for."""
        return Platform(self.os, self.architecture, self.variant, self.os_version, tuple(self.os_features))

    @classmethod
    def from_dict(cls, d: dict, where: str = "image config") -> "ImageConfig":
        """Validate and read an image config object."""
        rootfs = d.get("rootfs") or {}
        if not isinstance(rootfs, dict):
            raise InvalidManifestError(f"{where}: 'rootfs' must be an object")
        diff_ids = list(rootfs.get("diff_ids") or [])
        for i, x in enumerate(diff_ids):
            try:
                parse_digest(x)
            except InvalidDigestError as exc:
                raise InvalidManifestError(f"{where}: rootfs.diff_ids[{i}]: {exc}") from None
        cfg = d.get("config")
        if cfg is not None and not isinstance(cfg, dict):
            raise InvalidManifestError(f"{where}: 'config' must be an object")
        return cls(architecture=d.get("architecture") or "", os=d.get("os") or "",
                   variant=d.get("variant") or None, os_version=d.get("os.version") or None,
                   os_features=list(d.get("os.features") or []), created=d.get("created"),
                   author=d.get("author"), config=ContainerConfig.from_dict(cfg), diff_ids=diff_ids,
                   rootfs_type=rootfs.get("type", "layers"),
                   history=[History.from_dict(h) for h in d.get("history") or [] if isinstance(h, dict)],
                   extra=_extra(d, cls._KNOWN), rootfs_extra=_extra(rootfs, ("type", "diff_ids")))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "image config") -> "ImageConfig":
        """Read an image config from its JSON bytes."""
        doc = load_json(data, where)
        try:
            return cls.from_dict(doc, where)
        except (TypeError, ValueError, AttributeError) as exc:
            # A field of the wrong JSON type (`"Env": true`, `"history": 1`, ...).
            raise InvalidManifestError(f"{where}: malformed image config: {exc}") from None

    def to_dict(self) -> dict:
        """The JSON object in OCI field order (`config` and `rootfs` always present)."""
        d: dict = {}
        if self.created:
            d["created"] = self.created
        if self.author:
            d["author"] = self.author
        # architecture, os, os.version, os.features, variant: the same fields in the same order
        # as a descriptor's platform object.
        d.update(self.platform.to_dict())
        d["config"] = self.config.to_dict()
        d["rootfs"] = {"type": self.rootfs_type, "diff_ids": list(self.diff_ids), **self.rootfs_extra}
        if self.history:
            d["history"] = [h.to_dict() for h in self.history]
        d.update(self.extra)
        return d

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (see the module docstring)."""
        return dump_json(self.to_dict())

    def descriptor(self, media_type: str = mt.OCI_CONFIG, **kw) -> Descriptor:
        """The descriptor of `to_bytes()`."""
        return Descriptor.of(self.to_bytes(), media_type, **kw)

    def layer_history(self) -> list[History]:
        """History entries that produced layers, in layer order (empty_layer ones left out)."""
        return [h for h in self.history if not h.empty_layer]
