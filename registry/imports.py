"""`pybuild import`: make a one-layer image from a root filesystem directory or a tar archive.

Like `docker import`: the directory (or the tar, decompressed whatever its compression) becomes
one gzip layer; the config gets os linux, the host's (or the given) architecture, the layer's
diffID, one history entry and the settings of `--change` instructions (CMD, ENTRYPOINT, ENV,
EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR); an OCI manifest is stored and tagged.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterable

from .compression import Compression, open_decompressed
from .errors import RegistryError
from .layer import LayerWriter, write_tree_tar
from .manifest import ContainerConfig, Descriptor, History, ImageConfig, Manifest
from .platform import Platform, host_platform
from .reference import Reference, parse_reference
from .store import Store

_CHUNK = 1 << 20
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER",
                       "VOLUME", "WORKDIR")


class ImageImportError(RegistryError):
    """An import source or a --change instruction is unusable."""


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
                 changes: Iterable[str] = (), platform: Platform | None = None, message: str | None = None,
                 compression: Compression | None = None, created: str | None = None) -> ImportResult:
    """Import a rootfs directory, a (possibly compressed) tar file or `-` (stdin) as image `name`.

    `created` (RFC 3339) defaults to created_now().
    Returns the ImportResult; raises ImageImportError for a missing or non-tar source or a bad
    --change, InvalidReferenceError for a bad name.
    """
    ref = name if isinstance(name, Reference) else parse_reference(name)
    platform = platform or host_platform()
    container = ContainerConfig()
    for change in changes:
        apply_change(container, change)
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


def apply_change(cfg: ContainerConfig, change: str) -> None:
    """Apply one Dockerfile-style instruction (`CMD ["sh"]`, `ENV A=1`...) to a config, like
    `docker import --change`."""
    text = change.strip()
    word, _, rest = text.partition(" ")
    if not rest.strip() and "\t" in word:
        word, _, rest = text.partition("\t")
    keyword = word.upper()
    rest = rest.strip()
    if keyword not in CHANGE_INSTRUCTIONS:
        raise ImageImportError(f"--change {change!r}: {word!r} is not supported; use one of "
                               + ", ".join(CHANGE_INSTRUCTIONS))
    if not rest and keyword not in ("CMD", "ENTRYPOINT"):
        raise ImageImportError(f"--change {change!r}: {keyword} needs an argument")
    from . import mutate
    from .manifest import ImageConfig
    image = ImageConfig(config=cfg)
    if keyword == "CMD":
        image = mutate.with_cmd(image, _exec_or_shell(rest, change))
    elif keyword == "ENTRYPOINT":
        image = mutate.with_entrypoint(image, _exec_or_shell(rest, change))
    elif keyword == "ENV":
        image = mutate.with_env(image, _pairs(rest, change, legacy=True))
    elif keyword == "LABEL":
        image = mutate.with_labels(image, dict(_pairs(rest, change, legacy=False)))
    elif keyword == "EXPOSE":
        image = mutate.with_exposed_ports(image, [p for port in rest.split() for p in _ports(port, change)])
    elif keyword == "VOLUME":
        paths = _json_list(rest) if rest.startswith("[") else rest.split()
        if paths is None:
            raise ImageImportError(f"--change {change!r}: VOLUME takes a JSON list or paths separated by spaces")
        image = mutate.with_volumes(image, paths)
    elif keyword == "WORKDIR":
        image = mutate.with_workdir(image, rest)
    elif keyword == "USER":
        image = mutate.with_user(image, rest)
    elif keyword == "STOPSIGNAL":
        image = mutate.with_stop_signal(image, rest)
    elif keyword == "ONBUILD":
        image = mutate.with_onbuild(image, rest)
    # Callers hand in the config to change (import and commit build it up change by change).
    cfg.__dict__.update(image.config.__dict__)


def _json_list(text: str) -> list[str] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    return None


def _exec_or_shell(rest: str, change: str) -> list[str]:
    if rest.startswith("["):
        value = _json_list(rest)
        if value is not None:
            return value
    if not rest:
        return []
    return ["/bin/sh", "-c", rest]


def _pairs(rest: str, change: str, legacy: bool) -> list[tuple[str, str]]:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise ImageImportError(f"--change {change!r}: {exc}") from None
    if legacy and words and "=" not in words[0]:
        key, _, value = rest.partition(" ")   # `ENV KEY value with spaces`
        return [(key, value.strip())]
    pairs = []
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise ImageImportError(f"--change {change!r}: expected KEY=VALUE, got {w!r}")
        pairs.append((key, value))
    return pairs


def _ports(spec: str, change: str) -> list[str]:
    port, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ImageImportError(f"--change {change!r}: unknown protocol {proto!r} (tcp, udp or sctp)")
    lo, dash, hi = port.partition("-")
    try:
        start, end = int(lo), int(hi) if dash else int(lo)
    except ValueError:
        raise ImageImportError(f"--change {change!r}: invalid port {spec!r}") from None
    if not (0 < start <= end <= 65535):
        raise ImageImportError(f"--change {change!r}: invalid port range {spec!r}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]
