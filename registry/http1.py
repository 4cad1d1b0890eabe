"""HTTP/1.1 on one socket: a request written, its answer read (status line, headers, and a body
framed by Content-Length, chunked transfer coding or the end of the connection).

This is what registry.http needs of the standard library's http.client, without importing it:
http.client loads the email package to parse headers, and ssl, which is ~10 ms of every
`pybuild` command's start-up on the project's machines (python -X importtime). TLS is the
caller's: it passes an ssl context (made only for https) and the socket is wrapped with it.
"""
from __future__ import annotations

import socket
from typing import Any

MAX_LINE = 65536        # a status, header or chunk-size line (http.client's limit)
MAX_HEADERS = 100       # header lines in one answer (http.client's limit)
BLOCK = 1 << 20         # how much of a file-like request body is read per send


class ProtocolError(Exception):
    """The answer is not HTTP/1.x: a bad status line, header or chunk, or a body cut short."""


class Headers:
    """An answer's headers: case-insensitive `get`, `in` and `[]` (the first of a repeated name,
    as http.client's message gives), `get_all` and `items` in the order received."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._first: dict[str, str] = {}
        for name, value in pairs:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __getitem__(self, name: str) -> str:
        value = self._first.get(name.lower())
        if value is None:
            raise KeyError(name)
        return value

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._pairs if n.lower() == key]

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)


class Connection:
    """One connection to `host:port`, optionally TLS (`context`) and through an HTTP proxy's
    CONNECT tunnel (`tunnel`: target host, port and extra headers), carrying one request at a
    time (keep-alive: the next request waits until the answer was read or closed). Through a
    plain-HTTP proxy, `target` is the origin the requests are for."""

    def __init__(self, host: str, port: int, timeout: float, context: Any = None,
                 tunnel: tuple[str, int, dict[str, str]] | None = None,
                 target: tuple[str, int] | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.context = context
        self.tunnel = tunnel
        self.sock: Any = None
        self._rfile: Any = None
        # What the Host header says: the tunnel's target, or `target` (the origin a plain-HTTP
        # proxy forwards to), else the peer; the port when it is not the scheme's default.
        name, port_ = (tunnel[0], tunnel[1]) if tunnel else (target or (host, port))
        shown = f"[{name}]" if ":" in name else name
        self.host_header = shown if port_ == (443 if context is not None else 80) else f"{shown}:{port_}"

    def connect(self) -> None:
        """Open the TCP connection (and the tunnel, and TLS). Raises socket.gaierror, OSError or
        ssl.SSLError (an OSError) as socket and ssl do."""
        # An ASCII name given as bytes spares getaddrinfo the idna codec (and its import).
        host = self.host.encode("ascii") if self.host.isascii() else self.host
        sock = socket.create_connection((host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tunnel:
                self._open_tunnel(sock)
            if self.context is not None:
                server = self.tunnel[0] if self.tunnel else self.host
                sock = self.context.wrap_socket(sock, server_hostname=server)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._rfile = sock.makefile("rb")

    def _open_tunnel(self, sock: socket.socket) -> None:
        target = f"{self.tunnel[0]}:{self.tunnel[1]}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        lines += [f"{k}: {v}" for k, v in self.tunnel[2].items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        rfile = sock.makefile("rb")
        try:
            status, reason, _, _ = _read_head(rfile)
        finally:
            rfile.close()
        if status != 200:
            raise OSError(f"Tunnel connection failed: {status} {reason}")

    def request(self, method: str, target: str, body: Any = None,
                headers: dict[str, str] | None = None) -> None:
        """Send a request. `body` is bytes, None, or a file-like object read to its end (its
        length must be in the Content-Length header)."""
        if self.sock is None:
            self.connect()
        hdrs = dict(headers or {})
        names = {k.lower() for k in hdrs}
        lines = [f"{method} {target} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {self.host_header}")
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")
        if isinstance(body, (bytes, bytearray, memoryview)) and "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        for k, v in hdrs.items():
            if "\r" in k or "\n" in k or "\r" in str(v) or "\n" in str(v):
                raise ValueError(f"invalid header {k!r}: line breaks are not allowed")
            lines.append(f"{k}: {v}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body is None:
            self.sock.sendall(head)
        elif isinstance(body, (bytes, bytearray, memoryview)):
            if len(body) <= 64 * 1024:
                self.sock.sendall(head + bytes(body))     # one segment for a small request
            else:
                self.sock.sendall(head)
                self.sock.sendall(body)
        else:
            self.sock.sendall(head)
            while block := body.read(BLOCK):
                self.sock.sendall(block)
        self._method = method

    def getresponse(self) -> "RawResponse":
        """Read the status line and headers of the answer to the request just sent."""
        status, reason, version, headers = _read_head(self._rfile)
        return RawResponse(self._rfile, self._method, status, reason, version, headers)

    def close(self) -> None:
        rfile, sock, self._rfile, self.sock = self._rfile, self.sock, None, None
        if rfile is not None:
            rfile.close()
        if sock is not None:
            sock.close()


def _readline(rfile: Any) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("an answer line is longer than 64 KiB")
    return line


def _read_head(rfile: Any) -> tuple[int, str, int, Headers]:
    """Status, reason, version (10 or 11) and headers of the next final (non-1xx) answer."""
    for _ in range(MAX_HEADERS):       # interim answers before it, bounded too
        line = _readline(rfile)
        if not line:
            raise ConnectionResetError("the server closed the connection without answering")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
        version = 10 if parts[0] == "HTTP/1.0" else 11
        status, reason = int(parts[1]), (parts[2] if len(parts) > 2 else "")
        pairs: list[tuple[str, str]] = []
        while True:
            hline = _readline(rfile)
            if hline in (b"\r\n", b"\n", b""):
                break
            if len(pairs) >= MAX_HEADERS:
                raise ProtocolError(f"more than {MAX_HEADERS} header lines in the answer")
            text = hline.decode("latin-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and pairs:         # an obsolete folded continuation line
                pairs[-1] = (pairs[-1][0], pairs[-1][1] + " " + text.strip())
                continue
            name, sep, value = text.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"malformed header line in the answer: {hline[:80]!r}")
            pairs.append((name, value.strip()))
        if 100 <= status < 200 and status != 101:
            continue                                       # an interim answer (100 Continue)
        return status, reason, version, Headers(pairs)
    raise ProtocolError(f"more than {MAX_HEADERS} interim (1xx) answers")


class RawResponse:
    """The body of one answer, as http.client's response gives it: `read(n)`, `readinto(b)`,
    `length` (bytes still to come when known), `chunked`, `will_close`, `isclosed()`."""

    def __init__(self, rfile: Any, method: str, status: int, reason: str, version: int,
                 headers: Headers) -> None:
        self.fp: Any = rfile
        self.status, self.reason, self.version, self.msg = status, reason, version, headers
        conn = headers.get("Connection", "").lower()
        self.will_close = "close" in conn or (version == 10 and "keep-alive" not in conn)
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.length: int | None = None
        self._chunk_left = 0
        if method == "HEAD" or status in (204, 304):
            self.length = 0
        elif not self.chunked:
            text = headers.get("Content-Length")
            if text is not None:
                if not text.strip().isdigit():
                    raise ProtocolError(f"bad Content-Length {text!r} in the answer")
                self.length = int(text)
            else:
                self.will_close = True                    # the body ends with the connection
        if self.length == 0:
            self.fp = None

    def isclosed(self) -> bool:
        """True once the body was read to its end (or closed)."""
        return self.fp is None

    def close(self) -> None:
        self.fp = None

    def read(self, amt: int | None = None) -> bytes:
        """Up to `amt` bytes of the body (all of it when None); b"" at its end or when the
        connection ended early (then `length` says how much is missing)."""
        if self.fp is None:
            return b""
        if self.chunked:
            return self._read_chunked(amt)
        if self.length is not None:
            amt = self.length if amt is None else min(amt, self.length)
        data = self.fp.read() if amt is None else self.fp.read(amt)
        self._got(len(data), amt)
        return data

    def readinto(self, buf: Any) -> int:
        """Read the next bytes of the body into `buf`; how many (0 at the end)."""
        if self.fp is None:
            return 0
        if self.chunked:
            data = self._read_chunked(len(buf))
            buf[:len(data)] = data
            return len(data)
        view = memoryview(buf)
        if self.length is not None and len(view) > self.length:
            view = view[:self.length]
        n = self.fp.readinto(view)
        self._got(n, len(view))
        return n

    def _got(self, n: int, asked: int | None) -> None:
        if self.length is not None:
            self.length -= n
            if self.length == 0 or (not n and asked):
                self.fp = None          # complete, or cut short (length stays > 0)
        elif not n and asked != 0:
            self.fp = None              # read-until-close body: the connection ended

    def _read_chunked(self, amt: int | None) -> bytes:
        out = bytearray()
        while amt is None or len(out) < amt:
            if not self._chunk_left:
                line = _readline(self.fp)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r} in the answer") from None
                if size == 0:
                    for _ in range(MAX_HEADERS + 1):       # trailer fields, bounded as headers are
                        if _readline(self.fp) in (b"\r\n", b"\n", b""):
                            break
                    else:
                        raise ProtocolError(f"more than {MAX_HEADERS} trailer lines in the answer")
                    self.fp = None
                    break
                self._chunk_left = size
            n = self._chunk_left if amt is None else min(self._chunk_left, amt - len(out))
            data = self.fp.read(n)
            if len(data) < n:
                raise ProtocolError("the answer ended inside a chunk")
            out += data
            self._chunk_left -= n
            if not self._chunk_left:
                self.fp.read(2)                            # the CRLF after the chunk
        return bytes(out)
