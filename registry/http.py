"""A small HTTP/1.1 client for the registry client (the wire format is in http1.py).

Why not requests: importing it costs more CPU than a whole small pull, and every `pybuild`
command pays it at start-up. This module keeps what the registry protocol needs: keep-alive
connections pooled per origin and shared by threads, TLS verified per host (`ssl` is imported only
for https), client certificates, the environment's proxies, streamed bodies both ways, and
exceptions in three kinds (connect, TLS, read). Redirects and retries are the caller's business.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from .errors import RegistryError, ResponseTooLargeError

READ_BLOCK = 1 << 20
# The most of a body `content` (and so `text` and `json()`) keeps in memory. Protocol answers read
# whole are small (errors, token answers, tag pages); blobs are streamed. A hostile server may
# send an endless body: what is past the cap is never read.
MAX_BODY = 8 << 20
ERROR_BODY_MAX = 64 << 10   # of an error answer (status >= 400) only this much: enough for its message
# One DEBUG line per request on the "pybuild.http" logger: method, URL without its query (upload
# state), status. `logging` is not imported for it (start-up): a program that configured logging
# has imported it, and only then is the logger asked.


def _debug_log() -> Any:
    logging = sys.modules.get("logging")
    # Another thread may be importing it right now: a half-initialised module has no loggers yet.
    if logging is None or getattr(getattr(logging, "__spec__", None), "_initializing", False) \
            or not hasattr(logging, "getLogger"):
        return None
    log = logging.getLogger("pybuild.http")
    return log if log.isEnabledFor(logging.DEBUG) else None



def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of URL: credentials are scoped to exactly this."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:
        port = None
    return scheme, (u.hostname or "").lower(), port or (443 if scheme == "https" else 80)

class HTTPError(RegistryError):
    """A request could not be completed at the transport level (the client retries these and
    reports them in its own words; the base class keeps any that escape printable by the CLI)."""


class ConnectError(HTTPError):
    """No connection: refused, unreachable, timed out while connecting."""


class NameResolutionError(ConnectError):
    """The host name does not resolve."""


class TLSError(HTTPError):
    """The TLS handshake failed (certificate not trusted, wrong host name, not TLS at all)."""


class ReadError(HTTPError):
    """The connection broke while sending the request or reading the answer (reset, timeout,
    a body shorter than announced)."""


@dataclass
class Request:
    """What was sent (the auth challenge looks at the Authorization header it carried)."""
    method: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class TLSConfig:
    """How to verify a host: `verify` True (default roots), False (no check) or a CA bundle path;
    `cert` a (certificate, key) pair for mutual TLS."""
    verify: bool | str = True
    cert: tuple[str, str] | None = None


class Response:
    """An answer: status, headers (case-insensitive `get`), and a body read whole or streamed.

    Give it back with `close()` (or read it to the end): the connection then returns to the pool
    when it can be reused.
    """

    def __init__(self, raw: Any, conn: Any, pool: "_Pool", request: Request,
                 max_body: int = MAX_BODY) -> None:
        self._raw = raw
        self._conn = conn
        self._pool = pool
        self.request = request
        self.url = request.url
        self.status_code: int = raw.status
        self.reason: str = raw.reason
        self.headers = raw.msg           # http1.Headers: case-insensitive get/in
        self._content: bytes | None = None   # the whole body, once read by `content`
        self._served = 0                      # how much of _content read() has handed out
        self.max_body = max_body
        self.truncated = False                # `content` stopped at max_body; more was offered

    def _done(self, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Only a connection whose answer is read to its end can carry the next request.
        if reusable and not self._raw.will_close and self._raw.isclosed():
            self._pool.put(conn)
        else:
            conn.close()

    def read(self, amt: int | None = None) -> bytes:
        """Up to `amt` bytes of the body (all of it when None); b"" at the end."""
        if self._content is not None:
            end = len(self._content) if amt is None else self._served + amt
            data = self._content[self._served:end]
            self._served += len(data)
            return data
        data = self._raw_call(self._raw.read, amt) if amt is not None else self._raw_call(self._raw.read)
        if (not data and amt != 0) or amt is None:
            self._ended()
        return data

    def readinto(self, buf: memoryview) -> int:
        """Read the next bytes of the body into `buf` (up to its length, no bytes object made);
        how many, 0 at the end."""
        if self._content is not None:
            data = self.read(len(buf))
            buf[:len(data)] = data
            return len(data)
        n = self._raw_call(self._raw.readinto, buf)
        if not n and len(buf):
            self._ended()
        return n

    def _raw_call(self, fn: Any, *args: Any) -> Any:
        """A read of the raw answer; a broken connection drops it and raises ReadError."""
        try:
            return fn(*args)
        except (OSError, ValueError) as exc:
            self._done(False)
            raise ReadError(f"reading the answer from {self.url}: {exc}") from None
        except Exception as exc:           # http1.ProtocolError and friends
            self._done(False)
            raise ReadError(f"reading the answer from {self.url}: {type(exc).__name__}: {exc}") from None

    def _ended(self) -> None:
        """The body ended: shorter than announced is a ReadError, else the connection is reusable."""
        left = self._raw.length
        if left:
            self._done(False)
            raise ReadError(f"the answer from {self.url} ended {left} bytes early")
        self._done(True)

    def iter_bytes(self, amt: int = READ_BLOCK) -> Iterator[bytes]:
        """The body in pieces of at most `amt` bytes."""
        while True:
            data = self.read(amt)
            if not data:
                return
            yield data

    @property
    def content(self) -> bytes:
        """The body (read once, kept), at most `max_body` bytes of it: a longer body is cut there,
        `truncated` is set and the connection dropped (enough for an error message; `json()`
        refuses a cut body)."""
        if self._content is None:
            buf = bytearray()
            if self._conn is not None:
                limit = self.max_body
                while not self.truncated:
                    piece = self.read(min(READ_BLOCK, limit + 1 - len(buf)))
                    if not piece:
                        break
                    buf += piece
                    if len(buf) > limit:
                        self.truncated = True
                if self.truncated:
                    del buf[limit:]
                    if self._conn is not None:
                        self._raw.close()
                        self._done(False)
            self._content = bytes(buf)
            self._served = 0
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON (ValueError if it is not; ResponseTooLargeError when it is
        longer than `max_body`)."""
        data = self.content
        if self.truncated:
            raise ResponseTooLargeError(f"the answer from {_no_query(self.url)} is larger than the "
                                        f"{self.max_body} bytes pybuild reads; refusing it")
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError(f"JSON nested too deeply in the answer from {_no_query(self.url)}") from None

    def close(self) -> None:
        """Release the connection: pooled when the body was fully read, closed otherwise."""
        if self._conn is None:
            return
        # A short unread rest is cheaper to read than a new connection is to open.
        left = self._raw.length
        if left is not None and left <= 64 * 1024 and not self._raw.chunked:
            try:
                self._raw.read()
                self._done(True)
                return
            except Exception:   # noqa: BLE001 - any failure just means: do not reuse it
                pass
        self._raw.close()
        self._done(False)


class _Pool:
    """Idle keep-alive connections to one origin (scheme, host, port, proxy, TLS settings)."""

    def __init__(self, maxsize: int) -> None:
        self.idle: list[Any] = []
        self.lock = threading.Lock()
        self.maxsize = maxsize

    def get(self) -> Any | None:
        with self.lock:
            while self.idle:
                conn = self.idle.pop()
                if _alive(conn):
                    return conn
                conn.close()
        return None

    def put(self, conn: Any) -> None:
        with self.lock:
            if len(self.idle) < self.maxsize:
                self.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            conns, self.idle = self.idle, []
        for c in conns:
            c.close()


def _alive(conn: Any) -> bool:
    """An idle connection is usable when the server has not closed it: nothing readable yet."""
    import select
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


@dataclass
class Session:
    """Pooled connections for any number of origins; thread-safe."""
    connect_timeout: float = 15.0
    read_timeout: float = 120.0
    pool_size: int = 10
    _pools: dict[tuple, _Pool] = field(default_factory=dict)
    _contexts: dict[TLSConfig, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for p in pools:
            p.close()

    def request(self, method: str, url: str, headers: dict[str, str], body: Any = None,
                tls: TLSConfig = TLSConfig(), stream: bool = False,
                max_body: int = MAX_BODY) -> Response:
        """Send one request (no redirects followed). `body` is bytes, None, or a file-like object
        whose length is in the Content-Length header. Unless `stream`, the body is read before
        returning (at most `max_body` bytes, see Response.content) and the connection released."""
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https"):
            raise HTTPError(f"unsupported URL scheme in {url!r}")
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        proxy = _proxy_for(scheme, host)
        key = (scheme, host, port, proxy, tls if scheme == "https" else None)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool(self.pool_size)
        conn = pool.get()
        if conn is None:
            conn = self._connect(scheme, host, port, proxy, tls, url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if proxy and scheme == "http":
            target = url                      # absolute form through a plain-HTTP proxy
        hdrs = dict(headers)
        if proxy and scheme == "http" and proxy[2]:
            hdrs["Proxy-Authorization"] = proxy[2]
        if body is None and method in ("POST", "PUT", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        try:
            conn.request(method, target, body=body, headers=hdrs)
            raw = conn.getresponse()
        except (OSError, ValueError) as exc:
            conn.close()
            raise ReadError(f"{method} {url}: the connection broke: {exc}") from None
        except Exception as exc:            # http1.ProtocolError (not an HTTP answer)
            conn.close()
            raise ReadError(f"{method} {url}: the connection broke: {type(exc).__name__}: {exc}") from None
        resp = Response(raw, conn, pool, Request(method, url, hdrs),
                        max_body=min(max_body, ERROR_BODY_MAX) if raw.status >= 400 else max_body)
        log = _debug_log()
        if log is not None:
            log.debug("%s %s://%s:%s%s -> %s", method, scheme, host, port, parts.path, raw.status)
        if method == "HEAD":
            raw.read()                        # no body; marks the answer complete
            resp._done(True)
        elif not stream:
            resp.content
        return resp

    def _connect(self, scheme: str, host: str, port: int, proxy: tuple | None, tls: TLSConfig,
                 url: str) -> Any:
        from .http1 import Connection
        ctx = self._context(tls) if scheme == "https" else None
        if proxy and scheme == "https":
            conn = Connection(proxy[0], proxy[1], self.connect_timeout, ctx,
                              tunnel=(host, port, {"Proxy-Authorization": proxy[2]} if proxy[2] else {}))
        elif proxy:
            conn = Connection(proxy[0], proxy[1], self.connect_timeout, target=(host, port))
        else:
            conn = Connection(host, port, self.connect_timeout, ctx)
        try:
            conn.connect()
        except socket.gaierror as exc:
            conn.close()
            raise NameResolutionError(f"cannot resolve host {host!r}: {exc}") from None
        except OSError as exc:
            conn.close()
            if scheme == "https":
                import ssl
                if isinstance(exc, ssl.SSLError):
                    raise TLSError(f"TLS handshake with {host}:{port} failed: {exc}") from None
            raise ConnectError(f"cannot connect to {host}:{port} for {url}: {exc}") from None
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _context(self, tls: TLSConfig) -> Any:
        with self._lock:
            ctx = self._contexts.get(tls)
            if ctx is None:
                ctx = self._contexts[tls] = _make_context(tls)
            return ctx


def _no_query(url: str) -> str:
    """URL without its query (upload state, signed-URL secrets), for messages."""
    return url.split("?", 1)[0]


def _make_context(tls: TLSConfig) -> Any:
    import ssl
    if tls.verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(tls.verify, str):
        ctx = ssl.create_default_context(cafile=tls.verify)
    else:
        try:
            import certifi   # the roots requests would use, when installed
            ctx = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            ctx = ssl.create_default_context()
    if tls.cert:
        ctx.load_cert_chain(tls.cert[0], tls.cert[1])
    return ctx


def _proxy_for(scheme: str, host: str) -> tuple[str, int, str] | None:
    """(proxy host, port, Proxy-Authorization value or "") from the environment, if any applies."""
    if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in os.environ):
        return None
    from urllib.request import getproxies_environment, proxy_bypass_environment
    proxies = getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or proxy_bypass_environment(host, proxies):
        return None
    p = urlsplit(url if "://" in url else "http://" + url)
    auth = ""
    if p.username:
        import base64
        token = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        auth = "Basic " + base64.b64encode(token).decode()
    return (p.hostname or "", p.port or 80, auth)
