"""registry.http1 (the wire format under registry.http.Session) against scripted servers on
loopback sockets: framing by Content-Length, chunks and the connection's end, interim answers,
keep-alive reuse, a CONNECT tunnel, and answers that are not HTTP."""
from __future__ import annotations

import socket
import threading

import pytest

from registry.http import ReadError, Session


class Scripted:
    """A TCP server on 127.0.0.1 that answers each request on a connection with the next of
    `answers` (raw bytes; None: close without answering; after an HTTP/1.0 answer it closes)
    and records what it received."""

    def __init__(self, answers: list[bytes | None], tunnel_to: "Scripted | None" = None,
                 greet: bytes = b"") -> None:
        self.answers = list(answers)
        self.greet = greet              # sent as soon as a connection is accepted
        self.requests: list[bytes] = []
        self.connections = 0
        self.tunnel_to = tunnel_to
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        with conn:
            if self.greet:
                conn.sendall(self.greet)
            while self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = f.readline()
                    if not line:
                        return
                    head += line
                length = [int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                          if k.lower() == b"content-length"]
                body = f.read(length[0]) if length else b""
                self.requests.append(head + body)
                if head.startswith(b"CONNECT") and self.tunnel_to is not None:
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self._relay(conn, f)
                    return
                answer = self.answers.pop(0)
                if answer is None:
                    return
                conn.sendall(answer)
                if answer.startswith(b"HTTP/1.0"):
                    return              # an HTTP/1.0 answer's body ends with the connection

    def _relay(self, conn: socket.socket, f) -> None:
        assert self.tunnel_to is not None
        up = socket.create_connection(("127.0.0.1", self.tunnel_to.port))

        def pump(src, dst) -> None:
            while data := (src.read1(65536) if hasattr(src, "read1") else src.recv(65536)):
                dst.sendall(data)

        t = threading.Thread(target=pump, args=(up, conn), daemon=True)
        t.start()
        try:
            pump(f, up)
        except OSError:
            pass
        t.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def session():
    s = Session(connect_timeout=5, read_timeout=5)
    yield s
    s.close()


def test_chunked_body_with_extensions_and_trailers(session):
    srv = Scripted([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                    b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"])
    resp = session.request("GET", srv.url + "/c", {})
    assert resp.status_code == 200 and resp.content == b"hello world" and resp.headers["x-a"] == "1"
    srv.close()


def test_chunked_body_streamed_into_a_buffer(session):
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"abc", b"defgh", b"i")) + b"0\r\n\r\n"
    srv = Scripted([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body])
    resp = session.request("GET", srv.url + "/c", {}, stream=True)
    buf = bytearray(4)
    got = b""
    while n := resp.readinto(memoryview(buf)):
        got += bytes(buf[:n])
    assert got == b"abcdefghi"
    srv.close()


def test_keep_alive_reuses_one_connection_and_http10_body_ends_with_it(session):
    srv = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none",
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo",
                    b"HTTP/1.0 200 OK\r\nX-Folded: a\r\n  b\r\n\r\nuntil the end"])
    assert session.request("GET", srv.url + "/1", {}).content == b"one"
    r2 = session.request("PUT", srv.url + "/2", {}, body=b"data")
    assert (r2.status_code, r2.content) == (201, b"two")
    r3 = session.request("GET", srv.url + "/3", {})
    assert r3.content == b"until the end" and r3.headers.get("X-Folded") == "a b"
    assert srv.connections == 1
    assert srv.requests[1].startswith(b"PUT /2 HTTP/1.1\r\n") and b"Content-Length: 4\r\n" in srv.requests[1]
    assert srv.requests[1].endswith(b"\r\n\r\ndata") and b"Host: 127.0.0.1:%d\r\n" % srv.port in srv.requests[0]
    srv.close()


@pytest.mark.parametrize("answer, words", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "ended 5 bytes early"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "longer than 64 KiB"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: nine\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + b"T: x\r\n" * 200 + b"\r\n",
     "more than 100 trailer lines"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", "more than 100 header lines"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 101, "more than 100 interim"),
    (None, "closed the connection without answering"),
])
def test_answers_that_are_not_http_are_read_errors(session, answer, words):
    srv = Scripted([answer])
    with pytest.raises(ReadError, match=words):
        session.request("GET", srv.url + "/x", {}).content
    srv.close()


def test_https_proxy_tunnel_carries_the_request(session, monkeypatch):
    """HTTPS_PROXY: a CONNECT tunnel to the origin; here the origin speaks plain text, so the
    TLS handshake through the tunnel fails, after the proxy saw CONNECT with its credentials."""
    origin = Scripted([None], greet=b"HTTP/1.1 400 Bad Request\r\n\r\n")
    proxy = Scripted([b"unused"], tunnel_to=origin)
    monkeypatch.setenv("HTTPS_PROXY", f"http://al:pw@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    from registry.http import TLSError
    with pytest.raises(TLSError, match=f"TLS handshake with registry.test:{origin.port} failed"):
        session.request("GET", f"https://registry.test:{origin.port}/v2/", {})
    connect = proxy.requests[0]
    assert connect.startswith(f"CONNECT registry.test:{origin.port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic YWw6cHc=\r\n" in connect
    proxy.close()
    origin.close()
