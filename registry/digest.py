"""Content digests (`algorithm:hex`): validation, hashing of bytes, files and streams."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import BinaryIO

from .errors import RegistryError

# Algorithms whose hex length we know; the OCI spec registers sha256 and sha512.
_HEX_LEN = {"sha256": 64, "sha512": 128}
# OCI grammar: algorithm-component([+._-]algorithm-component)* ":" encoded
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
CHUNK = 1 << 20


class InvalidDigestError(RegistryError):
    """A string is not a well-formed digest of a supported algorithm."""


@dataclass(frozen=True)
class Digest:
    """A parsed digest; `str(d)` gives back `algorithm:hex`."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """The first 12 hex digits, as Docker prints image IDs."""
        return self.hex[:12]


def parse_digest(value: str) -> Digest:
    """Validate `value` as `sha256:<64 hex>` (or sha512) and return it parsed.

    Raises InvalidDigestError naming the value and what is wrong with it.
    """
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise InvalidDigestError(f"invalid digest {value!r}: expected 'sha256:' followed by 64 hex digits")
    algorithm, hexpart = value.split(":", 1)
    want = _HEX_LEN.get(algorithm)
    if want is None:
        raise InvalidDigestError(f"unsupported digest algorithm {algorithm!r} in {value!r} (use sha256 or sha512)")
    if len(hexpart) != want or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise InvalidDigestError(
            f"invalid digest {value!r}: {algorithm} needs {want} lower-case hex digits, got {len(hexpart)} characters")
    return Digest(algorithm, hexpart)


def is_digest(value: str) -> bool:
    """True if `value` is a valid digest string (see parse_digest)."""
    try:
        parse_digest(value)
    except InvalidDigestError:
        return False
    return True


# Below this size data is hashed by the interpreter's own sha256 (a builtin module): hashlib
# loads OpenSSL (~2 ms of start-up), which only pays off on more data than a manifest.
_SMALL = 64 << 10


def new_hasher(algorithm: str = "sha256"):
    """A hashlib object for a digest algorithm name."""
    if algorithm not in _HEX_LEN:
        raise InvalidDigestError(f"unsupported digest algorithm {algorithm!r} (use sha256 or sha512)")
    import hashlib
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """The digest string of `data`."""
    if algorithm == "sha256" and len(data) < _SMALL:
        return f"sha256:{_builtin_sha256()(data).hexdigest()}"
    h = new_hasher(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"


def _builtin_sha256():
    try:
        if sys.version_info >= (3, 12):
            from _sha2 import sha256
        else:
            from _sha256 import sha256
    except ImportError:                     # an interpreter built without it
        from hashlib import sha256
    return sha256


def digest_stream(stream: BinaryIO, algorithm: str = "sha256") -> tuple[str, int]:
    """Digest and size of everything left in a binary stream, read in 1 MiB chunks."""
    h = new_hasher(algorithm)
    size = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        h.update(chunk)
        size += len(chunk)
    return f"{algorithm}:{h.hexdigest()}", size


def digest_file(path, algorithm: str = "sha256") -> tuple[str, int]:
    """Digest and size of a file's contents."""
    with open(path, "rb") as f:
        return digest_stream(f, algorithm)
