"""Image archives: `docker save` tars (docker-archive) and OCI layout tars (oci-archive), both ways.

A docker-archive holds ``manifest.json`` (a list of {Config, RepoTags, Layers}) with the config
and layer files it names (``repositories`` beside it for old readers). An OCI archive holds
``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``; the image's name is the index entry's
``org.opencontainers.image.ref.name`` (a full reference here, so that nothing is lost) and
``io.containerd.image.name``. Newer docker versions write both sets of files in one tar: the
docker manifest is read first.

Archive member names are only looked up, never extracted to the filesystem, so a hostile name
cannot write anywhere; every blob is verified against its digest on the way into the store, and
the JSON files are read with a size bound.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from . import mediatypes as mt
from .errors import RegistryError
from .manifest import Descriptor, Manifest
from .reference import parse_reference
from .store import Store

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_JSON_LIMIT = 16 << 20          # manifest.json / index.json / a config: far above any real one
_CHUNK = 1 << 20


class ArchiveError(RegistryError):
    """An image archive could not be read or written (the message names the archive)."""


@dataclass
class LoadResult:
    """What `load_archive` stored: the tags it set and the manifest digests it stored."""

    format: str                                  # "docker-archive" or "oci-archive"
    tags: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)


def archive_format(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> str | None:
    """"docker-archive", "oci-archive" or None (e.g. a rootfs tar), from a tar's top files."""
    m = members.get("manifest.json")
    if m is not None and m.isfile() and m.size <= _JSON_LIMIT:
        try:
            with tar.extractfile(m) as f:      # type: ignore[union-attr]
                doc = json.loads(f.read())
        except (ValueError, tarfile.TarError):
            doc = None
        # A project's own manifest.json at the top of a rootfs tar is not a list of {Config}.
        if isinstance(doc, list) and doc and all(isinstance(e, dict) and "Config" in e for e in doc):
            return "docker-archive"
    if "oci-layout" in members and "index.json" in members:
        return "oci-archive"
    return None


def sniff_archive(path: str) -> str | None:
    """The image-archive format of the tar file at ``path`` (None when it is not one, or not a
    plain tar: compressed rootfs tars are never image archives)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            members: dict[str, tarfile.TarInfo] = {}
            for i, member in enumerate(tar):
                members.setdefault(member.name.removeprefix("./"), member)
                if i >= 4096:      # a rootfs: an archive's files are far fewer
                    break
            return archive_format(tar, members)
    except (tarfile.TarError, OSError):
        return None


# ---- save ------------------------------------------------------------------------------------

def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    tar.addfile(ti, io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, store: Store, name: str, digest: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = store.blob_size(digest)
    ti.mode = 0o644
    with store.open_blob(digest) as f:
        tar.addfile(ti, f)


def save_docker_archive(store: Store, names: list[str], out: BinaryIO) -> None:
    """Write ``names`` (local images, this host's platform) as one docker-archive to ``out``."""
    images = []
    for name in names:
        _, manifest = store.image_manifest(name)
        ref = store.tag_of(name)
        images.append((manifest, [ref.familiar] if ref is not None else []))
    write_docker_archive(store, images, out)


def write_docker_archive(store: Store, images: list[tuple[Manifest, list[str]]], out: BinaryIO) -> None:
    """Write images (each an image manifest and its familiar tags) as one docker-archive to ``out``.
    Layers are written as stored (compressed); `docker load` and `podman load` accept that."""
    entries: list[dict] = []
    repositories: dict[str, dict[str, str]] = {}
    files: dict[str, str] = {}                     # archive name -> digest, each written once
    for manifest, tags in images:
        cfg_name = manifest.config.digest.split(":", 1)[1] + ".json"
        files[cfg_name] = manifest.config.digest
        layer_names = []
        for layer in manifest.layers:
            ln = layer.digest.split(":", 1)[1] + "/layer.tar"
            files[ln] = layer.digest
            layer_names.append(ln)
        for familiar in tags:
            repo, _, tag = familiar.rpartition(":")
            repositories.setdefault(repo, {})[tag] = layer_names[-1].split("/")[0] if layer_names else ""
        entries.append({"Config": cfg_name, "RepoTags": list(tags), "Layers": layer_names})
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for arc_name, digest in files.items():
            _add_blob(tar, store, arc_name, digest)
        _add_bytes(tar, "manifest.json", json.dumps(entries).encode())
        _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def save_oci_archive(store: Store, names: list[str], out: BinaryIO) -> None:
    """Write ``names`` (all their platforms: an index is kept whole) as one OCI archive: the one
    copy from the store into a LayoutTarWriter, an index.json entry per name (named by its full
    reference unless it is a digest); an index's children that the store lacks are left out (a
    pull of one platform keeps only its own)."""
    from .copier import CopyPlan, run_copy
    from .endpoints import StoreEndpoint
    from .image import RawManifest, image_blobs, walk
    from .layout import LayoutTarWriter
    src = StoreEndpoint(store)

    def read(d: Descriptor) -> RawManifest | None:
        return src.read_manifest(d) if store.has_blob(d.digest) else None

    sink = LayoutTarWriter(out, name_keys=(REF_NAME, CONTAINERD_NAME))
    try:
        for name in names:
            top = src.read_manifest(name)
            below = walk(read, top, name)
            plan = CopyPlan(top, top, below, image_blobs(m.doc for m in [*below, top]))
            ref = store.tag_of(name)
            run_copy(plan, src, sink, tag=str(ref) if ref is not None else None)
        sink.close()
    finally:
        src.close()


def _as_ref(name: str):
    try:
        return parse_reference(name)
    except RegistryError:
        return None


# ---- load ------------------------------------------------------------------------------------

def load_archive(store: Store, path: str) -> LoadResult:
    """Store the images of a docker-archive or OCI archive (a plain tar file) and set their tags."""
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"cannot read image archive {path}: {exc}") from None
    with tar, store.lease():
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        kind = archive_format(tar, members)
        if kind == "docker-archive":
            return _load_docker(store, tar, members, path)
        if kind == "oci-archive":
            return _load_oci(store, tar, members, path)
    raise ArchiveError(f"{path} is not an image archive (no manifest.json of `docker save`, no "
                       "oci-layout + index.json of an OCI archive); for a root filesystem tar use "
                       "`pybuild import`")


def _open_member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: str) -> BinaryIO:
    m = members.get(name.removeprefix("./"))
    f = tar.extractfile(m) if m is not None else None
    if f is None:
        raise ArchiveError(f"{path}: {name} is missing from the archive (or is not a file)")
    return f


def _read_json(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: str) -> tuple[bytes, object]:
    with _open_member(tar, members, name, path) as f:
        data = f.read(_JSON_LIMIT + 1)
    if len(data) > _JSON_LIMIT:
        raise ArchiveError(f"{path}: {name} is larger than {_JSON_LIMIT >> 20} MiB")
    try:
        return data, json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{path}: {name} is not JSON: {exc}") from None


def _copy_member(store: Store, f: BinaryIO, media_type: str, expected: str | None = None) -> Descriptor:
    with store.blob_writer(expected, media_type=media_type) as w:
        while chunk := f.read(_CHUNK):
            w.write(chunk)
    return w.descriptor


def _layer_media_type(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return mt.OCI_LAYER_GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return mt.OCI_LAYER_ZSTD
    return mt.OCI_LAYER


def _load_docker(store: Store, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: str) -> LoadResult:
    _, entries = _read_json(tar, members, "manifest.json", path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArchiveError(f"{path}: manifest.json is not a list of images")
    result = LoadResult("docker-archive")
    for n, entry in enumerate(entries):
        where = f"{path}: manifest.json[{n}]"
        cfg_name, layer_names = entry.get("Config"), entry.get("Layers") or []
        if not isinstance(cfg_name, str) or not isinstance(layer_names, list):
            raise ArchiveError(f"{where}: needs Config (a file name) and Layers (a list)")
        cfg_bytes, cfg = _read_json(tar, members, cfg_name, path)
        diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") or [] if isinstance(cfg, dict) else []
        if len(diff_ids) != len(layer_names):
            raise ArchiveError(f"{where}: the config lists {len(diff_ids)} layers, the archive {len(layer_names)}")
        config = store.put_blob(cfg_bytes, mt.OCI_CONFIG)
        layers = []
        for ln, diff_id in zip(layer_names, diff_ids):
            with _open_member(tar, members, str(ln), path) as f:
                head = f.read(4)
                f.seek(0)
                media_type = _layer_media_type(head)
                # An uncompressed layer's digest is its diffID: verified while it is stored.
                layers.append(_copy_member(store, f, media_type,
                                           diff_id if media_type == mt.OCI_LAYER else None))
        desc = store.put_manifest(Manifest(config=config, layers=layers))
        result.digests.append(desc.digest)
        for tag in entry.get("RepoTags") or []:
            result.tags.append(store.tag(str(tag), desc).familiar)
    return result


def _load_oci(store: Store, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: str) -> LoadResult:
    _, index = _read_json(tar, members, "index.json", path)
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError(f"{path}: index.json has no manifests list")
    for name, m in members.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs" and m.isfile():
            digest = f"{parts[1]}:{parts[2]}"
            if store.has_blob(digest):
                continue
            with tar.extractfile(m) as f:    # type: ignore[union-attr]
                try:
                    _copy_member(store, f, "application/octet-stream", digest)
                except RegistryError as exc:
                    raise ArchiveError(f"{path}: {name}: {exc}") from None
    result = LoadResult("oci-archive")
    for n, d in enumerate(index["manifests"]):
        desc = Descriptor.from_dict(d, f"{path}: index.json manifests[{n}]")
        if not store.has_blob(desc.digest):
            raise ArchiveError(f"{path}: index.json names {desc.digest}, which the archive does not hold")
        store.get_manifest(desc.digest)            # parses: a broken manifest fails here, by name
        result.digests.append(desc.digest)
        name = desc.annotations.get(CONTAINERD_NAME) or desc.annotations.get(REF_NAME, "")
        ref = _as_ref(name) if name and ("/" in name or ":" in name) else None
        if ref is not None:
            clean = Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform)
            result.tags.append(store.tag(ref, clean).familiar)
    return result


def write_archive(dest: str, writer) -> None:
    """Run ``writer(fileobj)`` into ``dest`` atomically (temp file + rename), 0644 like docker's."""
    d = os.path.abspath(dest)
    tmp = f"{d}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, d)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
