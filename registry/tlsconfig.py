"""Per-registry TLS trust, the way Docker and podman configure it: a certs.d directory per host.

For registry HOST (with its port, e.g. ``myregistry:5000``) the directory ``BASE/HOST/`` may hold
CA certificates (``*.crt``) and client certificate pairs (``NAME.cert`` + ``NAME.key``). BASE is
every directory of ``$PYBUILD_CERTS_DIR`` (``os.pathsep``-separated) when that is set, otherwise
``/etc/docker/certs.d`` and ``/etc/containers/certs.d``.

Like Docker, the host's CAs are added to the system's trusted roots rather than replacing them, so
`ca_bundle_for` returns a bundle file holding both, built once per distinct content.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")


def certs_dirs() -> list[Path]:
    """The certs.d base directories consulted, in order."""
    env = os.environ.get("PYBUILD_CERTS_DIR")
    bases = [p for p in env.split(os.pathsep) if p] if env else list(DEFAULT_CERTS_DIRS)
    return [Path(b) for b in bases]


def host_cert_dirs(host: str) -> list[Path]:
    """The existing ``BASE/HOST`` directories for HOST."""
    # Docker uses the registry name as written (host[:port]); a ":" is legal in a path on Linux.
    return [d for d in (b / host for b in certs_dirs()) if d.is_dir()]


def ca_files_for(host: str) -> list[Path]:
    """The ``*.crt`` CA files configured for HOST, sorted for a stable bundle."""
    return sorted(p for d in host_cert_dirs(host) for p in d.glob("*.crt") if p.is_file())


def ca_bundle_for(host: str) -> str | None:
    """A PEM file to pass as ``verify=`` for HOST, or None when HOST has no CA of its own.

    The file holds the default trusted roots followed by HOST's CAs; it lives in a per-user cache
    directory named by the content's hash and is written atomically, so concurrent callers agree.
    """
    files = ca_files_for(host)
    if not files:
        return None
    parts = [_default_roots()]
    for f in files:
        data = f.read_bytes()
        parts.append(data if data.endswith(b"\n") else data + b"\n")
    bundle = b"".join(parts)
    import hashlib
    digest = hashlib.sha256(bundle).hexdigest()[:32]
    import tempfile     # only with a certs.d CA: not on the start-up path of other commands
    cache = Path(tempfile.gettempdir()) / f"pybuild-ca-{os.getuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    target = cache / f"{digest}.pem"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".bundle-")
        with os.fdopen(fd, "wb") as out:
            out.write(bundle)
        os.replace(tmp, target)
    return str(target)


def client_cert_for(host: str) -> tuple[str, str] | None:
    """The first ``NAME.cert`` / ``NAME.key`` pair for HOST (mutual TLS), as ``cert=`` for requests."""
    for d in host_cert_dirs(host):
        for cert in sorted(d.glob("*.cert")):
            key = cert.with_suffix(".key")
            if key.is_file():
                return str(cert), str(key)
    return None


def _default_roots() -> bytes:
    """The roots requests trusts by default (certifi's bundle, or the system's)."""
    try:
        import certifi
        path = certifi.where()
    except ImportError:
        import ssl
        path = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    try:
        data = Path(path).read_bytes()
    except OSError:
        return b""
    return data if data.endswith(b"\n") else data + b"\n"
