"""cosign-compatible signing keys: an ECDSA P-256 key pair, the private key encrypted under a
password the way cosign stores it, the public key as a PKIX ``PUBLIC KEY`` PEM.

cosign's private key file is a PEM block ``ENCRYPTED SIGSTORE PRIVATE KEY`` (older cosign:
``ENCRYPTED COSIGN PRIVATE KEY``) whose body is the JSON of go-securesystemslib's ``encrypted``
package: ``{"kdf":{"name":"scrypt","params":{"N":..,"r":8,"p":1},"salt":B64},"cipher":{"name":
"nacl/secretbox","nonce":B64},"ciphertext":B64}``; the plaintext is the key's PKCS#8 DER. The
password comes from ``COSIGN_PASSWORD`` (as cosign reads it); an empty one is allowed.

nacl/secretbox (XSalsa20-Poly1305) is not in ``cryptography``: XSalsa20 is written out below
(a key file is a few hundred bytes, so pure Python costs nothing that matters) and Poly1305 comes
from ``cryptography``. Heavy modules are imported inside functions.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass

from ..errors import BuildError

PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
PASSWORD_ENV = "COSIGN_PASSWORD"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 32768, 8, 1          # what cosign key files carry ("legacy" strength)
# Accepted on read: go-securesystemslib's three strengths (an attacker-chosen N must not eat memory).
SCRYPT_ACCEPTED = {(32768, 8, 1), (65536, 8, 1), (131072, 8, 1)}


# A cosign key file is under 1 KiB; anything far bigger is not one (and XSalsa20 is pure Python).
MAX_KEY_FILE = 64 << 10


class KeyFileError(BuildError):
    """A key file that cannot be read, decrypted or used (says which file and why)."""


def _read_key_file(path: str | os.PathLike) -> bytes:
    """The bytes of key file ``path``, at most MAX_KEY_FILE of them (KeyFileError otherwise)."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"{where}: cannot read the key: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{where}: larger than {MAX_KEY_FILE} bytes: not a key file")
    return data


# ---- XSalsa20-Poly1305 (NaCl secretbox) ---------------------------------------------------------

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_M = 0xFFFFFFFF


def _rounds(x: list[int]) -> list[int]:
    def rotl(v: int, c: int) -> int:
        return ((v << c) | (v >> (32 - c))) & _M

    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),
                           (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14)):
            x[b] ^= rotl((x[a] + x[d]) & _M, 7)
            x[c] ^= rotl((x[b] + x[a]) & _M, 9)
            x[d] ^= rotl((x[c] + x[b]) & _M, 13)
            x[a] ^= rotl((x[d] + x[c]) & _M, 18)
    return x


def _state(key: bytes, sixteen: bytes) -> list[int]:
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", sixteen)
    return [_SIGMA[0], *k[:4], _SIGMA[1], *n, _SIGMA[2], *k[4:], _SIGMA[3]]


def _hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    x = _rounds(_state(key, nonce16))
    return struct.pack("<8I", *(x[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))


def _salsa20_stream(key: bytes, nonce8: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        init = _state(key, nonce8 + struct.pack("<Q", counter))
        x = _rounds(list(init))
        out += struct.pack("<16I", *((a + b) & _M for a, b in zip(x, init)))
        counter += 1
    return bytes(out[:length])


def _poly1305(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.poly1305 import Poly1305
    return Poly1305.generate_tag(key, data)


def secretbox_seal(key: bytes, nonce: bytes, message: bytes) -> bytes:
    """NaCl crypto_secretbox: the 16-byte Poly1305 tag followed by the XSalsa20 ciphertext."""
    sub = _hsalsa20(key, nonce[:16])
    stream = _salsa20_stream(sub, nonce[16:24], 32 + len(message))
    ct = bytes(a ^ b for a, b in zip(message, stream[32:]))
    return _poly1305(stream[:32], ct) + ct


def secretbox_open(key: bytes, nonce: bytes, box: bytes) -> bytes | None:
    """The message of a crypto_secretbox, or None when it does not authenticate."""
    if len(box) < 16 or len(nonce) != 24:
        return None
    sub = _hsalsa20(key, nonce[:16])
    stream = _salsa20_stream(sub, nonce[16:24], 32 + len(box) - 16)
    tag, ct = box[:16], box[16:]
    if not hmac.compare_digest(_poly1305(stream[:32], ct), tag):
        return None
    return bytes(a ^ b for a, b in zip(ct, stream[32:]))


# ---- go-securesystemslib "encrypted" ------------------------------------------------------------

def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * r * n + (1 << 20))


def encrypt(plaintext: bytes, password: bytes) -> bytes:
    """The JSON document go-securesystemslib's ``encrypted.Encrypt`` makes."""
    salt, nonce = os.urandom(32), os.urandom(24)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    doc = {"kdf": {"name": "scrypt", "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
                   "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(secretbox_seal(key, nonce, plaintext)).decode()}
    return json.dumps(doc, separators=(",", ":")).encode()


def decrypt(data: bytes, password: bytes, where: str = "encrypted key") -> bytes:
    """The plaintext of a go-securesystemslib ``encrypted`` document; KeyFileError when the
    password is wrong or the document is not one."""
    try:
        doc = json.loads(data)
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        box = base64.b64decode(doc["ciphertext"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise KeyFileError(f"{where}: not an encrypted key document (scrypt + nacl/secretbox JSON)") from None
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise KeyFileError(f"{where}: unsupported encryption {kdf.get('name')}/{cipher.get('name')} "
                        "(cosign keys use scrypt and nacl/secretbox)")
    if (n, r, p) not in SCRYPT_ACCEPTED:
        raise KeyFileError(f"{where}: unsupported scrypt parameters N={n} r={r} p={p}")
    plain = secretbox_open(_scrypt(password, salt, n, r, p), nonce, box)
    if plain is None:
        raise KeyFileError(f"{where}: wrong password (set {PASSWORD_ENV}) or a damaged key file")
    return plain


# ---- key files ---------------------------------------------------------------------------------

def _pem(kind: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ("\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"]) + "\n").encode()


def _unpem(text: bytes, kinds: tuple[str, ...], where: str) -> tuple[str, bytes]:
    s = text.decode("ascii", "replace")
    for kind in kinds:
        begin, end = f"-----BEGIN {kind}-----", f"-----END {kind}-----"
        if begin in s and end in s:
            body = s.split(begin, 1)[1].split(end, 1)[0]
            try:
                return kind, base64.b64decode("".join(body.split()), validate=True)
            except ValueError:
                raise KeyFileError(f"{where}: the {kind} PEM block is not valid base64") from None
    raise KeyFileError(f"{where}: no {' or '.join(kinds)} PEM block")


def password_from_env() -> bytes:
    """The key password: COSIGN_PASSWORD (may be empty), as cosign reads it."""
    return os.environ.get(PASSWORD_ENV, "").encode()


def password_for_new_key() -> bytes:
    """The password of a key about to be written: COSIGN_PASSWORD when set (empty too: that is
    asking for an unencrypted-strength key on purpose), else asked twice on the terminal; with
    neither, KeyFileError (a key silently under an empty password is what an unset variable in
    CI would otherwise give)."""
    import sys
    if PASSWORD_ENV in os.environ:
        return password_from_env()
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise KeyFileError(f"no password for the new key: set {PASSWORD_ENV} (or {PASSWORD_ENV}= for an "
                           "empty one), or run on a terminal to be asked")
    import getpass
    first = getpass.getpass("Enter password for private key: ")
    if getpass.getpass("Enter password for private key again: ") != first:
        raise KeyFileError("the two passwords differ; nothing written")
    return first.encode()


def _password_to_read(where: str) -> bytes:
    """The password of an encrypted key file: COSIGN_PASSWORD when set, else asked once on a
    terminal, else empty (a key made with COSIGN_PASSWORD= still opens in CI)."""
    import sys
    if PASSWORD_ENV in os.environ or not (sys.stdin.isatty() and sys.stderr.isatty()):
        return password_from_env()
    import getpass
    return getpass.getpass(f"Enter password for private key {where}: ").encode()


@dataclass
class KeyPair:
    """The two files `generate-key-pair` writes."""
    private_pem: bytes
    public_pem: bytes


def generate_key_pair(password: bytes) -> KeyPair:
    """A new ECDSA P-256 key: (encrypted private PEM, public PEM), as cosign writes them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(_pem(PEM_TYPES[0], encrypt(der, password)), pub)


def load_private_key(path: str | os.PathLike, password: bytes | None = None):
    """The ECDSA P-256 private key of a cosign key file (or an unencrypted PKCS#8/EC PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    where = str(path)
    data = _read_key_file(path)
    if b"-----BEGIN ENCRYPTED SIGSTORE" in data or b"-----BEGIN ENCRYPTED COSIGN" in data:
        _, body = _unpem(data, PEM_TYPES, where)
        der = decrypt(body, _password_to_read(where) if password is None else password, where)
        try:
            key = serialization.load_der_private_key(der, None)
        except ValueError:
            raise KeyFileError(f"{where}: the decrypted key is not a PKCS#8 private key") from None
    else:
        try:
            key = serialization.load_pem_private_key(data, None)
        except (ValueError, TypeError):
            raise KeyFileError(f"{where}: not a cosign key (ENCRYPTED SIGSTORE PRIVATE KEY) nor an "
                            "unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{where}: only ECDSA P-256 keys are supported (cosign's default)")
    return key


def load_public_key(path: str | os.PathLike):
    """The ECDSA P-256 public key of a PKIX ``PUBLIC KEY`` PEM (cosign.pub)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    where = str(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{where}: not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{where}: only ECDSA P-256 public keys are supported")
    return key
