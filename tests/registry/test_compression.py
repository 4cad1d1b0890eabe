"""registry.compression: specs, media types, deterministic compressors, magic-sniffing readers."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess

import pytest

from registry.compression import (
    GZIP,
    UNCOMPRESSED,
    ZSTD,
    Compression,
    CompressionError,
    algorithm_for_media_type,
    compress_bytes,
    decompress_bytes,
    open_decompressed,
    parse_compression,
    sniff,
)

DATA = b"".join(b"line %d of a layer that compresses well\n" % i for i in range(50000)) + os.urandom(4096)


@pytest.mark.parametrize("spec,algorithm,level", [
    ("gzip", GZIP, None), ("zstd", ZSTD, None), ("uncompressed", UNCOMPRESSED, None),
    ("gzip,level=3", GZIP, 3), ("gzip,level=9", GZIP, 9), ("zstd,level=19", ZSTD, 19), ("ZSTD, level=1", ZSTD, 1),
    ("none", UNCOMPRESSED, None),
])
def test_parse_compression(spec: str, algorithm: str, level: int | None) -> None:
    c = parse_compression(spec)
    assert (c.algorithm, c.level) == (algorithm, level)


@pytest.mark.parametrize("spec", ["", "brotli", "gzip,level=x", "gzip,level=10", "zstd,level=23", "zstd,speed=3",
                                  "estargz"])
def test_parse_compression_rejects(spec: str) -> None:
    with pytest.raises(CompressionError):
        parse_compression(spec)


def test_media_types() -> None:
    assert Compression(GZIP).media_type() == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert Compression(ZSTD).media_type() == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert Compression(UNCOMPRESSED).media_type() == "application/vnd.oci.image.layer.v1.tar"
    assert Compression(GZIP).media_type(docker=True) == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert algorithm_for_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip") == GZIP
    assert algorithm_for_media_type("application/vnd.oci.image.layer.v1.tar+zstd") == ZSTD
    with pytest.raises(CompressionError):
        algorithm_for_media_type("application/json")


@pytest.mark.parametrize("algorithm", [GZIP, ZSTD, UNCOMPRESSED])
def test_round_trip_and_determinism(algorithm: str) -> None:
    a = compress_bytes(DATA, Compression(algorithm))
    b = compress_bytes(DATA, Compression(algorithm))
    assert a == b
    assert decompress_bytes(a) == DATA
    if algorithm != UNCOMPRESSED:
        assert len(a) < len(DATA) // 3


def test_gzip_levels_map_onto_isal() -> None:
    import tarfile as _t  # a real text file: ISA-L's levels differ on it as on layers
    text = open(_t.__file__, "rb").read() * 4
    fast, best = compress_bytes(text, Compression(GZIP, 1)), compress_bytes(text, Compression(GZIP, 9))
    assert len(best) < len(fast)
    assert best == compress_bytes(text, Compression(GZIP, 6))  # 5-9 all use ISA-L's best level
    assert gzip.decompress(best) == text


def test_gzip_header_has_no_name_and_zero_mtime() -> None:
    blob = compress_bytes(DATA, Compression(GZIP))
    assert blob[:3] == b"\x1f\x8b\x08"
    assert blob[3] & 0x08 == 0  # FNAME flag clear
    assert blob[4:8] == b"\0\0\0\0"  # MTIME
    # Standard gzip reads it: the format is plain gzip, not an ISA-L dialect.
    assert gzip.decompress(blob) == DATA


def test_zstd_output_independent_of_threads() -> None:
    one = compress_bytes(DATA, Compression(ZSTD, threads=1))
    two = compress_bytes(DATA, Compression(ZSTD, threads=2))
    assert one == two
    # The zstd CLI decodes it.
    out = subprocess.run(["zstd", "-dc"], input=one, capture_output=True, check=True).stdout
    assert out == DATA


@pytest.mark.parametrize("make,fmt", [
    (lambda d: gzip.compress(d, mtime=0), GZIP),
    (lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:]), GZIP),  # multi-member
    (lambda d: compress_bytes(d, Compression(ZSTD)), ZSTD),
    (lambda d: bz2.compress(d), "bzip2"),
    (lambda d: lzma.compress(d), "xz"),
    (lambda d: d, UNCOMPRESSED),
])
def test_open_decompressed_sniffs_magic(make, fmt: str) -> None:  # type: ignore[no-untyped-def]
    blob = make(DATA)
    assert sniff(blob[:6]) == fmt
    assert open_decompressed(io.BytesIO(blob)).read() == DATA


def test_zstd_multi_frame() -> None:
    blob = compress_bytes(DATA[:5000], Compression(ZSTD)) + compress_bytes(DATA[5000:], Compression(ZSTD))
    assert decompress_bytes(blob) == DATA


def test_short_and_empty_streams() -> None:
    assert open_decompressed(io.BytesIO(b"")).read() == b""
    assert open_decompressed(io.BytesIO(b"ab")).read() == b"ab"


def test_corrupt_streams_raise() -> None:
    blob = compress_bytes(DATA, Compression(ZSTD))
    with pytest.raises(CompressionError):
        decompress_bytes(blob[:100] + bytes(200) + blob[300:])
    gz = compress_bytes(DATA, Compression(GZIP))
    with pytest.raises(CompressionError):
        decompress_bytes(gz[: len(gz) // 2])
    with pytest.raises(CompressionError):
        decompress_bytes(gz[:20] + bytes(500) + gz[520:])
    with pytest.raises(CompressionError):
        decompress_bytes(lzma.compress(DATA)[:-50])
