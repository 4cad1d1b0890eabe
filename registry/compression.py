"""Layer compression: gzip (ISA-L), zstd (multithreaded) or none, media types, and format sniffing.

Compression must be deterministic so that the same tar always gives the same blob digest:
gzip streams carry no file name and an mtime of 0; zstd frames do not depend on the thread count.
Decompression detects the format from the stream's magic bytes, because layers from the wild are
sometimes labelled with the wrong media type and ADD must auto-extract any local archive.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from registry.errors import RegistryError
from registry.mediatypes import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDIST,
    OCI_LAYER_NONDIST_GZIP,
    OCI_LAYER_NONDIST_ZSTD,
    OCI_LAYER_ZSTD,
)

GZIP = "gzip"
ZSTD = "zstd"
UNCOMPRESSED = "uncompressed"
ALGORITHMS = (GZIP, ZSTD, UNCOMPRESSED)

# Defaults: ISA-L level 1 is ~15x faster than zlib -6 at a ratio close to it; zstd 3 is zstd's own default.
DEFAULT_LEVELS = {GZIP: 1, ZSTD: 3, UNCOMPRESSED: 0}
# gzip takes zlib's familiar 0-9 (as Docker's compression-level does); ISA-L has 0-3, see _isal_level.
LEVEL_RANGES = {GZIP: (0, 9), ZSTD: (-7, 22), UNCOMPRESSED: (0, 0)}

_MEDIA_TYPE_ALGORITHM = {
    OCI_LAYER: UNCOMPRESSED,
    OCI_LAYER_GZIP: GZIP,
    OCI_LAYER_ZSTD: ZSTD,
    OCI_LAYER_NONDIST: UNCOMPRESSED,
    OCI_LAYER_NONDIST_GZIP: GZIP,
    OCI_LAYER_NONDIST_ZSTD: ZSTD,
    DOCKER_LAYER_GZIP: GZIP,
    DOCKER_LAYER: UNCOMPRESSED,
    DOCKER_LAYER_ZSTD: ZSTD,
    DOCKER_FOREIGN_LAYER: GZIP,
}
_OCI_MEDIA_TYPE = {GZIP: OCI_LAYER_GZIP, ZSTD: OCI_LAYER_ZSTD, UNCOMPRESSED: OCI_LAYER}
# Docker schema 2 has no zstd media type; Docker itself writes the OCI one for zstd layers.
_DOCKER_MEDIA_TYPE = {GZIP: DOCKER_LAYER_GZIP, ZSTD: OCI_LAYER_ZSTD, UNCOMPRESSED: DOCKER_LAYER}

MAGIC_GZIP = b"\x1f\x8b"
MAGIC_ZSTD = b"\x28\xb5\x2f\xfd"
MAGIC_BZIP2 = b"BZh"
MAGIC_XZ = b"\xfd7zXZ\x00"

_CHUNK = 1 << 20


class CompressionError(RegistryError):
    """A compression spec is invalid, or a stream could not be (de)compressed."""


@dataclass(frozen=True)
class Compression:
    """How to compress a layer: algorithm (gzip, zstd, uncompressed), level and zstd worker threads."""

    algorithm: str = GZIP
    level: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise CompressionError(
                f"unknown compression {self.algorithm!r}: use one of {', '.join(ALGORITHMS)}")
        if self.level is not None:
            lo, hi = LEVEL_RANGES[self.algorithm]
            if not lo <= self.level <= hi:
                raise CompressionError(
                    f"compression level {self.level} is out of range for {self.algorithm}: use {lo}..{hi}")

    @property
    def effective_level(self) -> int:
        """The level used: the given one or the algorithm's default."""
        return DEFAULT_LEVELS[self.algorithm] if self.level is None else self.level

    def media_type(self, docker: bool = False) -> str:
        """The layer media type: OCI by default, Docker schema 2 when `docker` is true."""
        return (_DOCKER_MEDIA_TYPE if docker else _OCI_MEDIA_TYPE)[self.algorithm]

    def compressor(self) -> "Compressor":
        """A fresh streaming compressor for one layer."""
        return make_compressor(self)


def parse_compression(spec: str) -> Compression:
    """Parse `--compression` values: `gzip`, `zstd`, `uncompressed`, each optionally `,level=N`.

    Docker's `compression=` output option spellings `estargz` are not supported and say so.
    """
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise CompressionError("empty compression spec: use gzip, zstd or uncompressed[,level=N]")
    algorithm = parts[0].lower()
    if algorithm == "none":
        algorithm = UNCOMPRESSED
    if algorithm not in ALGORITHMS:
        raise CompressionError(
            f"unknown compression {parts[0]!r} in {spec!r}: use gzip, zstd or uncompressed[,level=N]")
    level: int | None = None
    for opt in parts[1:]:
        key, sep, value = opt.partition("=")
        key = key.strip().lower()
        if key in ("level", "compression-level") and sep:
            try:
                level = int(value)
            except ValueError:
                raise CompressionError(f"compression level {value!r} in {spec!r} is not an integer") from None
        else:
            raise CompressionError(f"unknown compression option {opt!r} in {spec!r}: only level=N is supported")
    return Compression(algorithm, level)


def algorithm_for_media_type(media_type: str) -> str:
    """The compression of a layer media type (gzip, zstd, uncompressed); unknown ones raise."""
    try:
        return _MEDIA_TYPE_ALGORITHM[media_type]
    except KeyError:
        raise CompressionError(f"unsupported layer media type {media_type!r}") from None


class Compressor(Protocol):
    """A streaming compressor: feed bytes with compress(), end the stream with flush()."""

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def flush(self) -> bytes:
        return b""


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _isal_level(level: int) -> int:
    """zlib's 0-9 onto ISA-L's 0-3: 0 stays 0 (fastest ISA-L mode), 1 is ISA-L's fast default,
    2-4 its middle level, 5-9 its best."""
    if level <= 1:
        return level
    return 2 if level <= 4 else 3


def make_compressor(compression: Compression) -> Compressor:
    """A streaming compressor for `compression`: deterministic output for the same input."""
    if compression.algorithm == GZIP:
        from isal import isal_zlib

        # wbits 31 = gzip wrapper; ISA-L writes mtime 0, no name, OS 255: the bytes depend on the input only.
        return isal_zlib.compressobj(_isal_level(compression.effective_level), isal_zlib.DEFLATED, 31)
    if compression.algorithm == ZSTD:
        import zstandard

        threads = compression.threads if compression.threads is not None else _cpu_count()
        params = zstandard.ZstdCompressionParameters.from_level(
            compression.effective_level, threads=max(threads, 1), write_checksum=True)
        return zstandard.ZstdCompressor(compression_params=params).compressobj()
    return _Identity()


def compress_bytes(data: bytes, compression: Compression) -> bytes:
    """Compress a whole buffer (small blobs, tests)."""
    c = make_compressor(compression)
    return c.compress(data) + c.flush()


def sniff(head: bytes) -> str:
    """The format of a stream from its first bytes: gzip, zstd, bzip2, xz or uncompressed."""
    if head.startswith(MAGIC_GZIP):
        return GZIP
    if head.startswith(MAGIC_ZSTD):
        return ZSTD
    if head.startswith(MAGIC_BZIP2):
        return "bzip2"
    if head.startswith(MAGIC_XZ):
        return "xz"
    return UNCOMPRESSED


class _Prefixed(io.RawIOBase):
    """A raw reader that returns `head` and then the rest of `stream` (un-reading sniffed bytes)."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(b))
        if not data:
            return 0
        n = len(data)
        b[:n] = data
        return n


class _Guarded(io.RawIOBase):
    """Reads a decompressor and turns its assorted exceptions into one CompressionError."""

    def __init__(self, inner: BinaryIO, fmt: str) -> None:
        self._inner = inner
        self._fmt = fmt

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        try:
            return self._inner.readinto(b)  # type: ignore[attr-defined]
        except (OSError, EOFError, ValueError) as e:
            raise CompressionError(f"corrupt or truncated {self._fmt} stream: {e}") from e
        except Exception as e:
            # zstandard, ISA-L and lzma errors derive straight from Exception; match them by name
            # rather than importing every backend just to name its exception type.
            if type(e).__name__ in ("ZstdError", "IsalError", "LZMAError"):
                raise CompressionError(f"corrupt or truncated {self._fmt} stream: {e}") from e
            raise


def _read_head(stream: BinaryIO, n: int) -> bytes:
    head = b""
    while len(head) < n:
        chunk = stream.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


def open_decompressed(stream: BinaryIO) -> BinaryIO:
    """A buffered reader of the decompressed bytes of `stream`, whose format is detected by magic.

    The magic bytes decide, not a media type, so a layer whose media type lies still applies.
    gzip goes through ISA-L; multi-member gzip and multi-frame zstd
    are read to the end.
    """
    head = _read_head(stream, 6)
    fmt = sniff(head)
    raw: BinaryIO = io.BufferedReader(_Prefixed(head, stream), _CHUNK)  # type: ignore[arg-type]
    inner: BinaryIO
    if fmt == GZIP:
        from isal import igzip

        inner = igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    elif fmt == ZSTD:
        import zstandard

        inner = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    elif fmt == "bzip2":
        import bz2

        inner = bz2.BZ2File(raw, "rb")  # type: ignore[assignment]
    elif fmt == "xz":
        import lzma

        inner = lzma.LZMAFile(raw, "rb")  # type: ignore[assignment]
    else:
        return raw
    return io.BufferedReader(_Guarded(inner, fmt), _CHUNK)  # type: ignore[return-value]


def with_head(head: bytes, stream: BinaryIO) -> BinaryIO:
    """A buffered reader giving `head` and then the rest of `stream` (puts back bytes already read)."""
    return io.BufferedReader(_Prefixed(head, stream), _CHUNK)  # type: ignore[arg-type]


def decompress_bytes(data: bytes) -> bytes:
    """Decompress a whole buffer of any supported format (small blobs, tests)."""
    return open_decompressed(io.BytesIO(data)).read()
