"""`pybuild import`: make a one-layer image from a root filesystem directory or a tar archive.

Like `docker import`: the directory (or the tar, decompressed whatever its compression) becomes
one gzip layer; the config gets os linux, the host's (or the given) architecture, the layer's
diffID, one history entry and the container config given (the builder applies `--change`
instructions to it with the Dockerfile parser: registry does not parse Dockerfiles); an OCI
manifest is stored and tagged.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from .compression import Compression, open_decompressed
from .errors import RegistryError
from .layer import LayerWriter, write_tree_tar
from .manifest import ContainerConfig, Descriptor, History, ImageConfig, Manifest
from .platform import Platform, host_platform
from .reference import Reference, parse_reference
from .store import Store

_CHUNK = 1 << 20


class ImageImportError(RegistryError):
    """An import source is unusable."""


@dataclass
class ImportResult:
    """What import_image stored: the tag, the manifest descriptor, the config and the layer."""

    reference: Reference
    descriptor: Descriptor
    config: ImageConfig
    layer: Descriptor
    diff_id: str


def created_now() -> str:
    """RFC 3339 UTC time for `created` fields; $SOURCE_DATE_EPOCH wins for reproducible images."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromtimestamp(time.time(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def import_image(store: Store, source: str | os.PathLike, name: str | Reference, *,
                 container: ContainerConfig | None = None, platform: Platform | None = None,
                 message: str | None = None,
                 compression: Compression | None = None, created: str | None = None) -> ImportResult:
    """Import a rootfs directory, a (possibly compressed) tar file or `-` (stdin) as image `name`.

    `container` (Cmd, Env...: see builder.engine.changes for `--change`) goes into the config as
    given; `created` (RFC 3339) defaults to created_now().
    Returns the ImportResult; raises ImageImportError for a missing or non-tar source,
    InvalidReferenceError for a bad name.
    """
    ref = name if isinstance(name, Reference) else parse_reference(name)
    platform = platform or host_platform()
    container = container if container is not None else ContainerConfig()
    src = os.fspath(source)
    with store.lease():
        with store.blob_writer() as blob:
            with LayerWriter(blob, compression or Compression("gzip")) as lw:
                if src == "-":
                    _copy_tar(sys.stdin.buffer, lw, "standard input")
                elif os.path.isdir(src):
                    write_tree_tar(src, lw, exclude=_store_excluder(store, src))
                elif os.path.isfile(src):
                    from .archive import sniff_archive
                    kind = sniff_archive(src)
                    if kind is not None:
                        # `docker save` output taken as a rootfs would make an image of its files.
                        raise ImageImportError(
                            f"cannot import {src!r}: it is an image archive ({kind}), not a root "
                            f"filesystem; load it with `pybuild load -i {src}`")
                    with open(src, "rb") as f:
                        _copy_tar(f, lw, src)
                else:
                    raise ImageImportError(f"cannot import {src!r}: no such directory or tar file")
            result = lw.result
        layer = Descriptor(result.media_type, blob.digest, result.size)
        created = created or created_now()
        config = ImageConfig(
            architecture=platform.architecture, os=platform.os, variant=platform.variant, created=created,
            config=container, diff_ids=[result.diff_id],
            history=[History(created=created, created_by="pybuild import",
                             comment=message or f"Imported from {'-' if src == '-' else Path(src).name}")])
        config_desc = store.put_config(config)
        manifest_desc = store.put_manifest(Manifest(config=config_desc, layers=[layer]))
        ref = store.tag(ref, manifest_desc)
    return ImportResult(ref, manifest_desc, config, layer, result.diff_id)


def _store_excluder(store: Store, src: str):
    """An exclude function leaving the store itself out when it lies inside the imported tree
    (otherwise the layer would contain the blob being written)."""
    try:
        inside = Path(store.root).resolve().relative_to(Path(src).resolve()).as_posix()
    except ValueError:
        return None
    if inside == ".":
        raise ImageImportError(f"cannot import {src!r}: it is the store root itself")
    return lambda rel: rel.strip("/") == inside


def _copy_tar(stream: BinaryIO, out: LayerWriter, where: str) -> None:
    """Decompress `stream` (gzip, zstd, bzip2, xz or plain) into `out`, checking it is a tar."""
    reader = open_decompressed(stream)
    first = reader.read(512)
    if len(first) < 512 or (first[257:262] != b"ustar" and first.strip(b"\0") != b""):
        raise ImageImportError(f"cannot import {where}: it is not a tar archive (plain or gzip/zstd/bzip2/xz "
                               "compressed) nor a directory")
    out.write(first)
    while chunk := reader.read(_CHUNK):
        out.write(chunk)
