"""The registry HTTP client: the OCI distribution protocol over one pooled HTTP session (http.py).

`RegistryClient` knows hosts (scheme, TLS, auth state) and speaks the protocol; `Repository`
(from `client.repository(host, name)`) is the per-repository surface: blobs, manifests, tags,
referrers. Everything retries with exponential backoff and jitter (honouring Retry-After) on
408/429/5xx and dropped connections; downloads resume with Range; uploads resume from the
registry's upload status.
"""
from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, urlencode, urljoin, urlsplit

from . import mediatypes
from .http import (ERROR_BODY_MAX, ConnectError, HTTPError, NameResolutionError, ReadError, Response, Session,
                   TLSConfig, TLSError, origin)
from .digest import digest_bytes, is_digest as _is_digest, new_hasher, parse_digest
from .errors import AuthError, DigestMismatchError, LimitError, NotFoundError, RegistryError
from .reference import DEFAULT_REGISTRY, DOCKER_HUB_API_HOST, LEGACY_DEFAULT_REGISTRY
from .manifest import MAX_MANIFEST_SIZE, loads_limited
from .tlsconfig import ca_bundle_for, client_cert_for

READ_CHUNK = 1 << 20
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
# Link pagination (tags, catalog) stops here: a server whose Link never ends, or loops through
# ever-new URLs, gets an error instead of unbounded requests and memory.
MAX_PAGES = 1000
MAX_LIST_BYTES = 64 << 20        # all pages of one listing together
# Referrers of one manifest that a listing may hold: each is fetched by whoever reads them
# (discovery, copy --all), so a hostile registry's padded list must end here.
MAX_REFERRERS = 256

# (offset) -> a readable binary stream (has .read) or an iterable of bytes, positioned at offset.
BlobSource = Callable[[int], Any]


@dataclass
class ClientOptions:
    """Tunables of a RegistryClient; the defaults suit Docker Hub and local registries alike."""
    insecure_registries: tuple[str, ...] = ()   # hosts where TLS is not verified / plain HTTP is allowed
    retries: int = 5                  # further attempts after the first one
    backoff_initial: float = 0.5      # seconds; doubles per attempt, with jitter
    backoff_max: float = 20.0
    retry_after_max: float = 120.0    # a longer Retry-After fails at once, naming the wait
    connect_timeout: float = 15.0
    read_timeout: float = 120.0
    max_per_host: int = 4             # concurrent blob transfers per registry host
    monolithic_max: int = 32 << 20    # larger uploads go POST + PATCH + PUT (resumable)
    chunk_size: int | None = None     # split PATCH uploads into chunks of this size (None: one PATCH)
    user_agent: str = "pybuild/0.1"
    use_credentials: bool = True      # look up stored credentials per host (auth.py)


@dataclass(frozen=True)
class ManifestInfo:
    """What a manifest HEAD tells: its media type, digest and size."""
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class RemoteManifest:
    """A manifest fetched from a registry: the exact bytes, as digested."""
    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict:
        """The manifest parsed as JSON (its depth was checked when it was fetched)."""
        return json.loads(self.data)


@dataclass
class _Host:
    """Connection facts and auth state of one registry host."""
    name: str                     # as written in references ("docker.io", "127.0.0.1:5000")
    netloc: str                   # what we connect to ("registry-1.docker.io")
    scheme: str | None = None     # decided by the first request
    guess: str = "http"           # a loopback host's scheme until its first answer decides it
    tls_tried: bool = False       # https was tried after plain http was refused or hung up on
    hung_up: bool = False         # ... after a hang-up (which a plain-HTTP server may do too)
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    auth: Any = None              # registry.auth.Authenticator, or None for anonymous access
    lock: threading.Lock = field(default_factory=threading.Lock)
    slots: threading.Semaphore | None = None


class _BadManifest(Exception):
    """A manifest body that arrived damaged (not JSON, wrong digest); internal, retried."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


class _Transport(Exception):
    """A connection-level failure (refused, dropped, timed out); internal, retried."""


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1 hosts (with or without a port)."""
    name = _strip_port(host)
    if name == "localhost" or name == "::1" or name.startswith("127."):
        return name == "localhost" or name == "::1" or _is_ipv4(name)
    if not (":" in name or name[-1:].isdigit()):
        return False            # a host name: no need to load ipaddress
    import ipaddress
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ipv4(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)


def _safe(url: str) -> str:
    """URL without its query, for messages (a signed redirect may carry a secret there)."""
    return url.split("?", 1)[0]


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1:host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _registry_error_text(resp: Response) -> str:
    """`CODE: message` pairs from a registry's JSON error body, or a short text excerpt."""
    # Only the start of an error body is read (a hostile one may never end).
    resp.max_body = min(resp.max_body, ERROR_BODY_MAX)
    try:
        body = resp.json()
        errs = body.get("errors") or []
        parts = []
        for e in errs:
            part = f"{e.get('code', '?')}: {e.get('message', '')}".strip()
            if e.get("detail"):
                part += f" ({json.dumps(e['detail'])[:200]})"
            parts.append(part)
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError, TypeError, RegistryError):
        pass
    text = (resp.text or "").strip().replace("\n", " ")
    return text[:200] or resp.reason or ""


def _retry_after(resp: Response) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or HTTP date), if any."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils      # only for the rare HTTP-date form; costs start-up time otherwise
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _rate_limit_text(resp: Response) -> str:
    """Docker Hub's rate-limit headers, if present, as a sentence fragment."""
    parts = []
    for name in ("ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source"):
        value = resp.headers.get(name)
        if value:
            parts.append(f"{name}: {value}")
    return f" [{', '.join(parts)}]" if parts else ""


class _IterReader:
    """`read(n)` over an iterable of byte chunks (a streamed download feeding an upload)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._iter = iter(chunks)
        self._pending = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._iter))
            except StopIteration:
                return b""
        if n is None or n < 0:
            n = len(self._pending)
        data, self._pending = self._pending[:n], self._pending[n:]
        return bytes(data)


def as_reader(source: Any) -> Any:
    """A blob source value (binary stream or iterable of bytes) as an object with read(n)."""
    return source if hasattr(source, "read") else _IterReader(source)


class _SizedReader:
    """A file-like view of the next `length` bytes of a reader, sent as a body with a
    Content-Length. It counts what was read (for progress and resume) and can hash it."""

    def __init__(self, reader: Any, length: int, hasher: Any = None,
                 on_read: Callable[[int], None] | None = None) -> None:
        self._read = reader.read
        self._left = length
        self.hasher = hasher
        self._on_read = on_read
        self.sent = 0

    def __len__(self) -> int:
        return self._left

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._read(self._left if n is None or n < 0 else min(n, self._left))
        if not data:
            raise RegistryError(f"blob source ended {self._left} bytes early")
        self._left -= len(data)
        self.sent += len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data


class _LazyRequestsSession:
    """The requests session the Authenticator fetches tokens with, made on first use: most
    commands talk to registries that need no token, and importing requests is costly."""

    def __init__(self) -> None:
        self._session: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            if self._session is None:
                import requests
                self._session = requests.Session()
        return getattr(self._session, name)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class RegistryClient:
    """A client for any number of registries, sharing one pooled, thread-safe HTTP session."""

    def __init__(self, options: ClientOptions | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options or ClientOptions()
        self._session = Session(connect_timeout=self.options.connect_timeout,
                                read_timeout=self.options.read_timeout,
                                pool_size=max(8, self.options.max_per_host * 2 + 2))
        self._token_session = _LazyRequestsSession()
        self._hosts: dict[str, _Host] = {}
        self._hosts_lock = threading.Lock()
        self._sleep = sleep

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()
        self._token_session.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def repository(self, host: str, name: str) -> "Repository":
        """The handle for repository `name` (e.g. "library/busybox") on registry `host`."""
        return Repository(self, host, name)

    # ---- hosts, scheme, TLS ------------------------------------------------------------------

    def is_insecure(self, host: str) -> bool:
        """True when `host` is listed in insecure_registries (TLS unverified, HTTP allowed)."""
        name = _strip_port(host)
        return any(h == host or h == name for h in self.options.insecure_registries)

    def _host(self, host: str) -> _Host:
        with self._hosts_lock:
            h = self._hosts.get(host)
            if h is None:
                hub = host in (DEFAULT_REGISTRY, LEGACY_DEFAULT_REGISTRY)
                h = _Host(name=host, netloc=DOCKER_HUB_API_HOST if hub else host,
                          slots=threading.BoundedSemaphore(self.options.max_per_host))
                # Per-host CAs from certs.d are added to the default roots (tlsconfig).
                h.verify = False if self.is_insecure(host) else (ca_bundle_for(host) or True)
                h.cert = client_cert_for(host)
                self._hosts[host] = h
            return h

    def _auth(self, h: _Host) -> Any:
        """The host's Authenticator, made at its first 401: until a registry asks, no request
        carries credentials, and an anonymous pull needs neither auth.py nor the credential
        stores (start-up)."""
        with self._hosts_lock:
            if h.auth is None:
                h.auth = self._authenticator(h.name)
            return h.auth

    def _authenticator(self, host: str) -> Any:
        from .auth import Authenticator
        credential = None
        if self.options.use_credentials:
            from .credentials import lookup_credential
            credential = lookup_credential(host)
        # The token server is reached with the registry's TLS settings, as Docker does: an
        # --insecure-registry whose realm has a self-signed certificate must still log in.
        insecure = self.is_insecure(host)
        return Authenticator(host, credential, self._token_session, tls_verify=lambda realm: (
            False if insecure or self.is_insecure(realm) else (ca_bundle_for(realm) or True)))

    @contextmanager
    def host_slot(self, *hosts: str) -> Iterator[None]:
        """Hold one of the max_per_host transfer slots of each host (bounds parallel blob
        transfers). Several hosts are taken in sorted order, so concurrent holders never deadlock."""
        sems = [self._host(h).slots for h in sorted(set(hosts))]
        for sem in sems:
            assert sem is not None
            sem.acquire()
        try:
            yield
        finally:
            for sem in reversed(sems):
                assert sem is not None
                sem.release()

    def _scheme(self, h: _Host) -> str:
        """Decide https vs http for a host once. Remote hosts: https. Loopback hosts (Docker's
        rule) may speak plain http: the first request goes over http (no probe, no TLS set-up)
        and its answer decides; a server that wants TLS (Go's 400 "Client sent an HTTP request
        to an HTTPS server", or a hang-up) gets the request again over https (see request).
        Hosts in insecure_registries: https first, unverified, then http, so that nothing goes
        in clear text where TLS works."""
        if h.scheme is not None:
            return h.scheme
        if is_loopback(h.name):
            return h.guess
        with h.lock:
            if h.scheme is not None:
                return h.scheme
            scheme = self._probe_https_first(h) if self.is_insecure(h.name) else "https"
            if scheme is None:
                # Unreachable for now: decide nothing, so that a retry probes again; the request
                # this call serves reports the failure, naming the scheme it would first speak
                # (plain http for insecure hosts, whose probe ends with http).
                return "http"
            h.scheme = scheme
            return scheme

    def _learn_scheme(self, h: _Host, base: str, resp: Response | None) -> bool:
        """After the first answer (or hang-up: `resp` None) from a loopback host whose scheme is
        undecided: True when the request should be sent again over https."""
        if h.scheme is not None or not is_loopback(h.name):
            return False
        if base.startswith("http:"):
            if resp is None:
                if h.tls_tried:
                    return False            # hung up again: retried as any dropped request
                h.guess, h.tls_tried, h.hung_up = "https", True, True
                return True
            if resp.status_code == 400 and "HTTPS" in resp.text:
                resp.close()
                h.guess, h.tls_tried, h.hung_up = "https", True, False
                return True
        h.scheme = "https" if base.startswith("https:") else "http"
        return False

    def _probe(self, url: str, h: _Host) -> Response:
        resp = self._session.request("GET", url, {"User-Agent": self.options.user_agent},
                                     tls=TLSConfig(h.verify, h.cert), max_body=ERROR_BODY_MAX)
        resp.close()
        return resp

    def _probe_https_first(self, h: _Host) -> str | None:
        try:
            self._probe(f"https://{h.netloc}/v2/", h)
            return "https"
        except HTTPError:
            pass
        try:
            self._probe(f"http://{h.netloc}/v2/", h)
            return "http"
        except HTTPError:
            return None

    def base_url(self, host: str) -> str:
        """`scheme://netloc` of a registry host (deciding the scheme on first use)."""
        h = self._host(host)
        return f"{self._scheme(h)}://{h.netloc}"

    def ping(self, host: str) -> bool:
        """GET /v2/: True when the registry answers as an OCI distribution API (200 or 401)."""
        resp = self.request(host, "GET", "/v2/", scopes=[], ok=(200, 401), authenticate=False)
        resp.close()
        return True

    # ---- the request loop -------------------------------------------------------------------

    def request(self, host: str, method: str, path_or_url: str, *, scopes: list[str],
                headers: dict[str, str] | None = None, body: Callable[[], Any] | bytes | None = None,
                stream: bool = False, ok: Iterable[int] = (200,), not_found_ok: bool = False,
                retry_transport: bool = True, authenticate: bool = True,
                what: str = "") -> Response:
        """Send one protocol request with auth, redirects and retries; return the final response.

        `body` is bytes or a zero-argument callable making a fresh body for each attempt.
        Statuses in `ok` are returned; 404 too when `not_found_ok`; 404 otherwise raises
        NotFoundError, 401/403 AuthError, anything else RegistryError. With
        `retry_transport=False`, a dropped connection raises _Transport at once (for callers
        that resume uploads themselves).
        """
        h = self._host(host)
        ok_set = set(ok)
        attempt = 0
        auth_tries = 0
        while True:
            base = self.base_url(host)
            url = path_or_url if "://" in path_or_url else f"{base}{path_or_url}"
            # Credentials belong to the registry's exact scheme, host and port: an upload Location
            # or a Link that points elsewhere (or to http on an https registry) gets none.
            home = origin(url) == origin(base)
            hdrs = {"User-Agent": self.options.user_agent}
            if headers:
                hdrs.update(headers)
            if authenticate and h.auth is not None and home:
                hdrs.update(h.auth.headers(scopes))
            data = body() if callable(body) else body
            try:
                resp = self._send(h, method, url, hdrs, data, stream)
            except TLSError as exc:
                if h.scheme is None and h.hung_up and base.startswith("https:"):
                    h.guess, h.hung_up = "http", False      # not TLS either: the hang-up was a fault
                    continue
                # A certificate problem does not heal by retrying.
                raise RegistryError(
                    f"{method} {url}: TLS failed: {_short_exc(exc)}; put the registry's CA certificate "
                    f"in /etc/docker/certs.d/{host}/ca.crt or pass --insecure-registry {host}") from None
            except (HTTPError, _Transport) as exc:
                if isinstance(exc, ReadError) and self._learn_scheme(h, base, None):
                    continue        # a TLS server hung up on plain http
                if not retry_transport:
                    raise _Transport(f"{method} {url}: {_short_exc(exc)}") from None
                if isinstance(exc, NameResolutionError):
                    raise RegistryError(f"{method} {url}: cannot resolve host {urlsplit(url).hostname!r}; "
                                        f"check the registry name in the reference") from None
                # No connection at all (refused, unreachable) rarely heals within seconds: one quick
                # retry covers a registry that is just starting; a broken connection mid-request
                # (ReadError) gets the whole backoff schedule.
                no_connection = isinstance(exc, ConnectError)
                limit = min(1, self.options.retries) if no_connection else self.options.retries
                if attempt >= limit:
                    raise RegistryError(
                        f"{method} {url}: connection failed after {attempt + 1} attempt(s): "
                        f"{_short_exc(exc)}; check that the registry is reachable") from None
                if no_connection:
                    self._sleep(min(0.25, self.options.backoff_initial))
                else:
                    self._backoff(attempt, None)
                attempt += 1
                continue
            if self._learn_scheme(h, base, resp):
                continue
            status = resp.status_code
            if status in ok_set or (not_found_ok and status == 404):
                return resp
            if status == 401 and origin(resp.url) != origin(base):
                # A 401 from another host (a redirect target, a foreign Location) must not teach
                # this registry's authenticator a realm, nor be answered with its credentials.
                resp.close()
                raise AuthError(f"{what + ': ' if what else ''}{method} {_safe(resp.url)} asks for "
                                f"authentication, but it is not registry {host} ({base}); pybuild sends "
                                f"{host}'s credentials only to {base}")
            if status == 401 and authenticate and auth_tries < 2:
                auth_tries += 1
                if self._auth(h).challenge(resp, scopes):
                    resp.close()
                    continue
            if status == 429 and resp.headers.get("ratelimit-remaining", "").split(";")[0].strip() == "0":
                # Docker Hub's pull quota is spent: it refills over hours, retrying now is futile.
                raise self._error(method, url, resp, what, attempt)
            if status in _RETRY_STATUSES and attempt < self.options.retries:
                wait = _retry_after(resp)
                if wait is not None and wait > self.options.retry_after_max:
                    resp.close()
                    raise RegistryError(
                        f"{method} {url}: {status} {_registry_error_text(resp)}{_rate_limit_text(resp)}; "
                        f"the registry asks to wait {wait:.0f}s (Retry-After), try again later")
                resp.close()
                self._backoff(attempt, wait)
                attempt += 1
                continue
            raise self._error(method, url, resp, what, attempt)

    def _send(self, h: _Host, method: str, url: str, hdrs: dict[str, str], data: Any,
              stream: bool) -> Response:
        """One request, following redirects by hand so that credentials never leave the host:
        a redirect to another scheme, host or port loses the Authorization header for good."""
        first = origin(url)
        for _ in range(10):
            same = origin(url) == first
            resp = self._session.request(method, url, hdrs, data,
                                         tls=TLSConfig(h.verify, h.cert) if same else TLSConfig(),
                                         stream=stream)
            if resp.status_code not in _REDIRECTS or "Location" not in resp.headers:
                return resp
            resp.close()
            url = urljoin(url, resp.headers["Location"])
            if origin(url) != first:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, data = "GET", None
        raise _Transport(f"too many redirects from {url}")

    def _backoff(self, attempt: int, retry_after: float | None) -> None:
        delay = min(self.options.backoff_max, self.options.backoff_initial * (2 ** attempt))
        import random      # only when retrying: not on every command's start-up path
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self._sleep(delay)

    def _error(self, method: str, url: str, resp: Response, what: str,
               attempt: int) -> RegistryError:
        status = resp.status_code
        text = _registry_error_text(resp)
        resp.close()
        subject = f"{what}: " if what else ""
        where = f"{method} {url}"
        if status == 404:
            return NotFoundError(f"{subject}not found ({where}: {text})")
        if status in (401, 403):
            return AuthError(f"{subject}access denied ({where}: {status} {text}); "
                             f"run `pybuild login {urlsplit(url).netloc}` or check your permissions")
        if status == 429:
            return RegistryError(f"{subject}rate limited ({where}: 429 {text}){_rate_limit_text(resp)} "
                                 f"after {attempt + 1} attempt(s); wait and retry, or log in")
        tries = f" after {attempt + 1} attempt(s)" if status in _RETRY_STATUSES else ""
        return RegistryError(f"{subject}{where} failed: {status} {text}{tries}")

    def _paginate(self, host: str, path: str, key: str, scopes: list[str], page_size: int | None,
                  what: str) -> list[str]:
        url = path + (f"?{urlencode({'n': page_size})}" if page_size else "")
        out: list[str] = []
        seen: set[str] = set()
        pages = total = 0
        while url and url not in seen:
            if pages >= MAX_PAGES:
                raise LimitError(f"{what}: the registry's Link pagination goes on past {MAX_PAGES} pages "
                                 f"(next: {_safe(url)}); refusing to read more")
            seen.add(url)
            pages += 1
            resp = self.request(host, "GET", url, scopes=scopes, what=what)
            seen.add(resp.url)          # absolute: a Link back to the first page is seen as a loop
            try:
                body = resp.json()
                total += len(resp.content)
                names = body.get(key) if isinstance(body, dict) else None
            except ValueError:
                raise RegistryError(f"{what}: invalid JSON from {_safe(resp.url)}") from None
            finally:
                resp.close()
            if names is None:
                names = []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise RegistryError(f"{what}: {_safe(resp.url)} answered a {key!r} that is not a list of "
                                    f"strings")
            if total > MAX_LIST_BYTES:
                raise LimitError(f"{what}: the pages add up to more than {MAX_LIST_BYTES} bytes "
                                 f"(at {_safe(resp.url)}); refusing to read more")
            out.extend(names)
            m = _LINK_NEXT.search(resp.headers.get("Link", ""))
            url = urljoin(resp.url, m.group(1)) if m else ""
        return out

    def catalog(self, host: str, page_size: int | None = None) -> list[str]:
        """All repository names of a registry (GET /v2/_catalog, following Link pagination)."""
        return self._paginate(host, "/v2/_catalog", "repositories", ["registry:catalog:*"],
                              page_size, f"catalog of {host}")


def _entries(index: dict) -> list[dict]:
    """The descriptor objects of a referrers fallback index (anything else a registry put in its
    list is dropped when the index is rewritten)."""
    manifests = index.get("manifests")
    return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []


def _once(value: Any) -> Callable[[], Any]:
    """A body factory for a body that cannot be replayed: a second call (after a 401 retry)
    raises _Transport so that the upload resumes from the registry's status instead."""
    used = [False]

    def make() -> Any:
        if used[0]:
            raise _Transport("request body already partly sent")
        used[0] = True
        return value
    return make


def _short_exc(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


class BlobReader:
    """A blob's bytes from an offset, resuming with Range after dropped connections: `read(n)`
    gives bytes, `readinto(buffer)` fills a caller's buffer (a download loop that reuses one
    buffer makes no garbage and touches no fresh memory). `close()` when done.

    Raises RegistryError when the body is longer than `size` or the retries are spent; the
    caller verifies the digest.
    """

    def __init__(self, repo: "Repository", digest: str, size: int | None, offset: int = 0) -> None:
        self.repo = repo
        self.digest = digest
        self.size = size
        self.pos = offset
        self.what = f"blob {digest} of {repo.ref}"
        self._resp: Response | None = None
        self._skip = 0              # bytes the server re-sends that we already have (Range ignored)
        self._progressed = False    # this response gave bytes
        self._failures = 0          # in a row without progress
        self._interruptions = 0     # in all: a server that cuts every response short must not loop forever
        # Nothing left to ask for (a partial download may already hold every byte).
        self._complete = size is not None and offset >= size

    def close(self) -> None:
        """Release the connection."""
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    __del__ = close     # as a generator's finally: a reader dropped half-read gives its connection back

    def read(self, n: int) -> bytearray:
        """The next `n` bytes (fewer only at the end of the blob; empty there)."""
        buf = bytearray(n)
        del buf[self.readinto(memoryview(buf)):]
        return buf

    def readinto(self, buf: memoryview) -> int:
        """Fill `buf` with the next bytes: all of it unless the blob ends first; 0 at the end."""
        filled = 0
        while filled < len(buf):
            resp = self._response()
            if resp is None:
                break
            view = buf[filled:]
            try:
                n = resp.readinto(view)
            except HTTPError as exc:
                self._dropped(exc)
                continue
            if not n:
                self._ended()
                continue
            if self._skip:
                cut = min(self._skip, n)
                view[:n - cut] = view[cut:n]
                n, self._skip = n - cut, self._skip - cut
                if not n:
                    continue
            self._advance(n)
            filled += n
        return filled

    def _advance(self, n: int) -> None:
        self.pos += n
        if self.size is not None and self.pos > self.size:
            raise DigestMismatchError(f"{self.what}: more data than the announced {self.size} bytes")
        self._progressed = True

    def _response(self) -> Response | None:
        """The open answer (asking from `pos`); None once the blob is complete."""
        if self._resp is not None or self._complete:
            return self._resp
        repo = self.repo
        # identity: a transparently compressed body would not hash to the digest.
        headers = {"Accept-Encoding": "identity"}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
        resp = repo.client.request(repo.host, "GET", repo._path("blobs", self.digest), scopes=repo.pull_scope,
                                   headers=headers, stream=True, ok=(200, 206), what=self.what)
        self._skip = 0
        if self.pos and resp.status_code == 200:
            self._skip = self.pos       # the server ignored Range: drop what we already have
        elif resp.status_code == 206:
            got = resp.headers.get("Content-Range", "")
            m = re.match(r"bytes (\d+)-", got)
            if not m or int(m.group(1)) != self.pos:
                resp.close()
                raise RegistryError(f"{self.what}: asked for bytes from {self.pos}, got range {got!r}")
        self._progressed = False
        self._resp = resp
        return resp

    def _ended(self) -> None:
        """The answer's body ended: the blob is complete, or the connection was cut short."""
        self.close()
        if self.size is None or self.pos == self.size:
            self._complete = True
            return
        self._dropped(_Transport(f"body ended at byte {self.pos} of {self.size}"))

    def _dropped(self, exc: BaseException) -> None:
        """The answer broke off: count it, give up when the retries are spent, else wait before
        the next request (made by `_response`, from `pos`)."""
        self.close()
        options = self.repo.client.options
        self._failures = 0 if self._progressed else self._failures + 1
        self._interruptions += 1
        if self._failures > options.retries or self._interruptions > 4 * options.retries:
            raise RegistryError(f"{self.what}: download failed {self._interruptions} times, last at byte "
                                f"{self.pos} of {self.size if self.size is not None else '?'}: {_short_exc(exc)}")
        self.repo.client._backoff(self._failures, None)


class Repository:
    """One repository on one registry: blobs, manifests, tags and referrers."""

    def __init__(self, client: RegistryClient, host: str, name: str) -> None:
        self.client = client
        self.host = host
        self.name = name
        self.pull_scope = [f"repository:{name}:pull"]
        self.push_scope = [f"repository:{name}:pull,push"]

    def __repr__(self) -> str:
        return f"Repository({self.host}/{self.name})"

    @property
    def ref(self) -> str:
        """`host/name`, for messages."""
        return f"{self.host}/{self.name}"

    def _path(self, *parts: str) -> str:
        return f"/v2/{self.name}/" + "/".join(quote(p, safe=":@") for p in parts)

    # ---- blobs ------------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        """HEAD a blob: its size if the repository has it, else None."""
        resp = self.client.request(self.host, "HEAD", self._path("blobs", digest), scopes=self.pull_scope,
                                   not_found_ok=True, what=f"blob {digest} in {self.ref}")
        resp.close()
        if resp.status_code == 404:
            return None
        return int(resp.headers.get("Content-Length", "0") or 0)

    def has_blob(self, digest: str) -> bool:
        """True if the repository holds the blob (HEAD)."""
        return self.blob_size(digest) is not None

    def iter_blob(self, digest: str, size: int | None = None, offset: int = 0,
                  chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """Stream a blob's bytes from `offset`, resuming with Range after dropped connections.

        The caller verifies the digest (the store's blob writer does). Raises RegistryError when
        the body is longer than `size` or the retries are spent.
        """
        reader = self.blob_reader(digest, size, offset)
        try:
            while chunk := reader.read(chunk_size):
                yield chunk
        finally:
            reader.close()

    def blob_reader(self, digest: str, size: int | None = None, offset: int = 0) -> "BlobReader":
        """A BlobReader of the blob from `offset` (as iter_blob, but `readinto` a caller's buffer)."""
        return BlobReader(self, digest, size, offset)

    def fetch_blob(self, digest: str, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """A small blob (a config) in memory, verified against its digest."""
        buf = bytearray()
        for chunk in self.iter_blob(digest):
            buf += chunk
            if len(buf) > max_size:
                raise RegistryError(f"blob {digest} of {self.ref} is larger than {max_size} bytes")
        data = bytes(buf)
        got = digest_bytes(data, parse_digest(digest).algorithm)
        if got != digest:
            raise DigestMismatchError(f"blob {digest} of {self.ref}: content hashes to {got}")
        return data

    def mount_blob(self, digest: str, from_repo: str) -> str | None:
        """Try a cross-repository mount of `digest` from `from_repo` on the same registry.

        Returns None when mounted (201), else the Location of the upload session the registry
        opened instead (202), which the caller can upload into.
        """
        q = urlencode({"mount": digest, "from": from_repo})
        scopes = self.push_scope + [f"repository:{from_repo}:pull"]
        resp = self.client.request(self.host, "POST", self._path("blobs", "uploads") + "/?" + q,
                                   scopes=scopes, ok=(201, 202), what=f"mount of {digest} into {self.ref}")
        resp.close()
        if resp.status_code == 201:
            return None
        return urljoin(resp.url, resp.headers["Location"])

    def upload_blob(self, digest: str, size: int, source: BlobSource, *,
                    mount_from: Iterable[str] = (), chunk_size: int | None = None,
                    monolithic: bool | None = None, verify: bool = True,
                    on_progress: Callable[[int], None] | None = None) -> str:
        """Upload a blob unless a mount succeeds; returns "mounted", "exists" or "uploaded".

        `source(offset)` gives the bytes from offset on (a file positioned there or an iterable);
        it is called again after a failure to resume. `monolithic` forces POST+PUT (default: up
        to options.monolithic_max); otherwise POST, PATCH (in chunks of `chunk_size` or at least
        the registry's OCI-Chunk-Min-Length) and PUT. With `verify`, what was sent is hashed and
        a mismatch aborts before the final PUT (chunked) so nothing is committed.
        """
        opts = self.client.options
        what = f"upload of {digest} to {self.ref}"
        location: str | None = None
        for repo in mount_from:
            if repo == self.name:
                continue
            location = self.mount_blob(digest, repo)
            if location is None:
                return "mounted"
            break
        if monolithic is None:
            monolithic = size <= opts.monolithic_max and chunk_size is None and opts.chunk_size is None
        chunk = chunk_size or opts.chunk_size
        attempt = 0
        while True:
            try:
                if location is None:
                    location, min_chunk = self._start_upload()
                else:
                    min_chunk = 0
                if monolithic:
                    self._put_monolithic(location, digest, size, source, on_progress, verify)
                else:
                    self._upload_chunked(location, digest, size, source, chunk, min_chunk,
                                         on_progress, verify)
                return "uploaded"
            except _Transport as exc:
                location = None
                if attempt >= opts.retries:
                    raise RegistryError(f"{what} failed after {attempt + 1} attempt(s): {exc}") from None
                if self.blob_size(digest) == size:
                    return "exists"
                self.client._backoff(attempt, None)
                attempt += 1

    def _start_upload(self) -> tuple[str, int]:
        resp = self.client.request(self.host, "POST", self._path("blobs", "uploads") + "/",
                                   scopes=self.push_scope, ok=(202,), what=f"upload to {self.ref}")
        resp.close()
        try:
            min_chunk = int(resp.headers.get("OCI-Chunk-Min-Length", "0") or 0)
        except ValueError:
            min_chunk = 0
        return urljoin(resp.url, resp.headers["Location"]), min_chunk

    @staticmethod
    def _with_query(location: str, **params: str) -> str:
        sep = "&" if "?" in location else "?"
        return location + sep + urlencode(params)

    def _put_monolithic(self, location: str, digest: str, size: int, source: BlobSource,
                        on_progress: Callable[[int], None] | None, verify: bool) -> None:
        readers: list[_SizedReader] = []

        def body() -> _SizedReader:
            r = _SizedReader(as_reader(source(0)), size, new_hasher(parse_digest(digest).algorithm) if verify else None,
                             on_progress)
            readers.append(r)
            return r

        self._send_data("PUT", self._with_query(location, digest=digest), body, size, (201,),
                        f"upload of {digest} to {self.ref}")
        if verify and readers and readers[-1].hasher is not None:
            got = f"{parse_digest(digest).algorithm}:{readers[-1].hasher.hexdigest()}"
            if got != digest:
                raise DigestMismatchError(f"upload of {digest} to {self.ref}: the source hashed to {got}")

    def _send_data(self, method: str, url: str, body: Callable[[], Any], length: int,
                   ok: tuple[int, ...], what: str, extra: dict[str, str] | None = None) -> Response:
        """A request whose body cannot be replayed on a half-used connection: transport errors
        and retryable statuses surface as _Transport so that the caller resumes or restarts."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if extra:
            headers.update(extra)
        resp = self.client.request(self.host, method, url, scopes=self.push_scope, headers=headers,
                                   body=body, ok=ok + tuple(_RETRY_STATUSES) + (416,), retry_transport=False,
                                   what=what)
        if resp.status_code not in ok:
            status = resp.status_code
            text = _registry_error_text(resp)
            resp.close()
            raise _Transport(f"{method} answered {status} {text}")
        resp.close()
        return resp

    def _upload_status(self, location: str) -> int | None:
        """Bytes the registry holds for an upload session (from GET's Range), None if unknown."""
        try:
            resp = self.client.request(self.host, "GET", location, scopes=self.push_scope,
                                       ok=(204, 200), not_found_ok=True, what=f"upload status on {self.ref}")
        except RegistryError:
            return None
        resp.close()
        if resp.status_code == 404:
            return None
        m = re.match(r"(?:bytes=)?0-(\d+)", resp.headers.get("Range", ""))
        return int(m.group(1)) + 1 if m and m.group(1) != "0" else 0   # distribution says 0-0 when empty

    def _upload_chunked(self, location: str, digest: str, size: int, source: BlobSource,
                        chunk: int | None, min_chunk: int, on_progress: Callable[[int], None] | None,
                        verify: bool) -> None:
        what = f"upload of {digest} to {self.ref}"
        step = max(chunk or size, min_chunk, 1)
        algorithm = parse_digest(digest).algorithm
        hasher = new_hasher(algorithm) if verify else None
        offset = 0
        stream = as_reader(source(0))
        failures = 0
        while offset < size:
            n = min(step, size - offset)
            reader = _SizedReader(stream, n, hasher, on_progress)
            try:
                resp = self._send_data(
                    "PATCH", location, _once(reader), n, (202,), what,
                    {"Content-Range": f"{offset}-{offset + n - 1}"})
                location = urljoin(resp.url, resp.headers.get("Location", location))
                offset += n
                failures = 0
            except _Transport:
                # Ask the registry how much arrived, and go on from there with a fresh source.
                have = self._upload_status(location)
                failures += 1
                if have is None or failures > self.client.options.retries:
                    raise
                self.client._backoff(failures - 1, None)
                if on_progress is not None:
                    on_progress(have - offset - reader.sent)
                hasher = None if have else (new_hasher(algorithm) if verify else None)
                offset = have
                stream = as_reader(source(offset))
        if hasher is not None:
            got = f"{algorithm}:{hasher.hexdigest()}"
            if got != digest:
                self.client.request(self.host, "DELETE", location, scopes=self.push_scope,
                                    ok=(204, 200, 404), what=what).close()
                raise DigestMismatchError(f"{what}: the source hashed to {got}; upload cancelled")
        self._send_data("PUT", self._with_query(location, digest=digest), lambda: b"", 0, (201,), what)

    # ---- manifests --------------------------------------------------------------------------

    def get_manifest(self, reference: str, accept: Iterable[str] = mediatypes.MANIFEST_TYPES) -> RemoteManifest:
        """GET a manifest by tag or digest, verified when fetched by digest (or against the
        registry's Docker-Content-Digest). A body that breaks off, is not JSON or does not match
        its digest is asked for again; after the retries the last problem is raised."""
        what = f"manifest {self.ref}{'@' if ':' in reference else ':'}{reference}"
        for attempt in range(self.client.options.retries + 1):
            try:
                return self._get_manifest_once(reference, accept, what)
            except (HTTPError, _BadManifest) as exc:
                if attempt >= self.client.options.retries:
                    if isinstance(exc, _BadManifest):
                        raise exc.error from None
                    raise RegistryError(f"{what}: {exc}") from None
                self.client._backoff(attempt, None)
        raise AssertionError("unreachable")

    def _get_manifest_once(self, reference: str, accept: Iterable[str], what: str) -> RemoteManifest:
        resp = self.client.request(self.host, "GET", self._path("manifests", reference),
                                   scopes=self.pull_scope, headers={"Accept": ", ".join(accept)},
                                   stream=True, what=what)
        try:
            length = int(resp.headers.get("Content-Length", "0") or 0)
            if length > MAX_MANIFEST_SIZE:
                raise RegistryError(f"{what}: {length} bytes is larger than the {MAX_MANIFEST_SIZE} allowed")
            buf = bytearray()
            while len(buf) <= MAX_MANIFEST_SIZE:
                piece = resp.read(MAX_MANIFEST_SIZE + 1 - len(buf))
                if not piece:
                    break
                buf += piece
        finally:
            resp.close()
        data = bytes(buf)
        if len(data) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"{what}: larger than the {MAX_MANIFEST_SIZE} bytes allowed")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc = loads_limited(data, what)
        except ValueError:
            raise _BadManifest(RegistryError(f"{what}: the registry returned invalid JSON")) from None
        if isinstance(doc, dict) and doc.get("mediaType"):
            media_type = doc["mediaType"]
        if isinstance(doc, dict) and doc.get("schemaVersion") == 1:
            raise RegistryError(f"{what}: Docker schema 1 manifests are not supported; "
                                f"re-push the image with a current tool")
        if ":" in reference:
            got = digest_bytes(data, parse_digest(reference).algorithm)
            if got != reference:
                raise _BadManifest(DigestMismatchError(f"{what}: content hashes to {got}"))
            digest = reference
        else:
            digest = digest_bytes(data)
            announced = resp.headers.get("Docker-Content-Digest")
            if announced and announced.startswith("sha256:") and announced != digest:
                raise _BadManifest(DigestMismatchError(
                    f"{what}: registry says {announced}, content hashes to {digest}"))
        return RemoteManifest(data=data, media_type=media_type, digest=digest)

    def head_manifest(self, reference: str, accept: Iterable[str] = mediatypes.MANIFEST_TYPES) -> ManifestInfo | None:
        """HEAD a manifest: its media type, digest and size, or None if it does not exist."""
        resp = self.client.request(self.host, "HEAD", self._path("manifests", reference), scopes=self.pull_scope,
                                   headers={"Accept": ", ".join(accept)}, not_found_ok=True,
                                   what=f"manifest {self.ref} {reference}")
        resp.close()
        if resp.status_code == 404:
            return None
        digest = resp.headers.get("Docker-Content-Digest") or (reference if ":" in reference else "")
        if not digest:
            # No digest header: only a GET can tell.
            m = self.get_manifest(reference, accept)
            return ManifestInfo(m.media_type, m.digest, len(m.data))
        return ManifestInfo(resp.headers.get("Content-Type", "").split(";")[0].strip(), digest,
                            int(resp.headers.get("Content-Length", "0") or 0))

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or its digest; returns its digest.

        A manifest with a `subject` is also added to the referrers tag-schema index
        (`sha256-<hex>`) when the registry does not announce referrers support (OCI-Subject).
        """
        digest = digest_bytes(data)
        resp = self.client.request(self.host, "PUT", self._path("manifests", reference), scopes=self.push_scope,
                                   headers={"Content-Type": media_type}, body=data, ok=(201, 200),
                                   what=f"manifest {self.ref}:{reference}")
        resp.close()
        announced = resp.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatchError(f"manifest {self.ref}:{reference}: registry stored {announced}, "
                                      f"we sent {digest}")
        doc = json.loads(data)
        subject = doc.get("subject") if isinstance(doc, dict) else None
        if subject and not resp.headers.get("OCI-Subject"):
            descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
            artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
            if artifact_type:
                descriptor["artifactType"] = artifact_type
            if doc.get("annotations"):
                descriptor["annotations"] = doc["annotations"]
            self._add_referrer_fallback(subject["digest"], descriptor)
        return digest

    def delete_manifest(self, reference: str) -> str:
        """Delete a manifest (a tag is resolved to its digest first); returns the digest deleted."""
        digest = reference
        if ":" not in reference:
            info = self.head_manifest(reference)
            if info is None:
                raise NotFoundError(f"manifest {self.ref}:{reference} not found")
            digest = info.digest
        scopes = [f"repository:{self.name}:delete"] + self.push_scope
        self.client.request(self.host, "DELETE", self._path("manifests", digest), scopes=scopes,
                            ok=(202, 200, 204), what=f"delete of {self.ref}@{digest}").close()
        return digest

    # ---- tags, referrers --------------------------------------------------------------------

    def tags(self, page_size: int | None = None) -> list[str]:
        """All tags (GET /v2/NAME/tags/list, following Link pagination)."""
        return self.client._paginate(self.host, self._path("tags", "list"), "tags", self.pull_scope,
                                     page_size, f"tags of {self.ref}")

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[dict]:
        """Descriptors of manifests whose subject is `digest`.

        Uses the referrers API; when the registry does not have it (404), reads the tag-schema
        fallback index `sha256-<hex>` instead.
        """
        path = self._path("referrers", digest)
        if artifact_type:
            path += "?" + urlencode({"artifactType": artifact_type})
        resp = self.client.request(self.host, "GET", path, scopes=self.pull_scope, not_found_ok=True,
                                   headers={"Accept": mediatypes.OCI_INDEX}, what=f"referrers of {digest}")
        if resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith(mediatypes.OCI_INDEX):
            try:
                body = loads_limited(resp.content, f"referrers of {digest} in {self.ref}")
            except ValueError:
                body = None
            if resp.truncated or not isinstance(body, dict) or not isinstance(body.get("manifests") or [], list):
                resp.close()
                raise RegistryError(f"referrers of {digest} in {self.ref}: {_safe(resp.url)} answered an "
                                    f"index that is not valid JSON or larger than {resp.max_body} bytes")
            manifests = body.get("manifests") or []
            filtered = bool(resp.headers.get("OCI-Filters-Applied"))
            resp.close()
        else:
            resp.close()
            manifests = self._referrer_fallback(digest).get("manifests") or []
            filtered = False
        if not isinstance(manifests, list):
            raise RegistryError(f"referrers of {digest} in {self.ref}: 'manifests' is not a list")
        if len(manifests) > MAX_REFERRERS:
            raise LimitError(f"referrers of {digest} in {self.ref}: the registry lists {len(manifests)}, more than "
                             f"the {MAX_REFERRERS} pybuild reads; refusing the listing")
        # Entries that are not descriptors with a valid digest name nothing to fetch.
        manifests = [m for m in manifests if isinstance(m, dict) and _is_digest(m.get("digest"))]
        if artifact_type and not filtered:
            manifests = [m for m in manifests if m.get("artifactType") == artifact_type]
        return manifests

    @staticmethod
    def referrers_tag(digest: str) -> str:
        """The fallback tag of a subject digest: `sha256:abc` -> `sha256-abc`."""
        d = parse_digest(digest)
        return f"{d.algorithm}-{d.hex}"

    def _referrer_fallback(self, subject: str) -> dict:
        tag = self.referrers_tag(subject)
        try:
            doc = self.get_manifest(tag, accept=(mediatypes.OCI_INDEX,)).json()
        except NotFoundError:
            return {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
        if not isinstance(doc, dict):
            raise RegistryError(f"manifest {self.ref}:{tag}: the referrers fallback index is not a JSON object")
        return doc

    def _add_referrer_fallback(self, subject: str, descriptor: dict) -> None:
        index = self._referrer_fallback(subject)
        manifests = [m for m in _entries(index) if m.get("digest") != descriptor["digest"]]
        manifests.append(descriptor)
        index["manifests"] = manifests
        data = json.dumps(index, separators=(",", ":")).encode()
        self.put_manifest(self.referrers_tag(subject), data, mediatypes.OCI_INDEX)

    def drop_referrer_fallback(self, subject: str, digest: str) -> None:
        """Remove `digest` from the tag-schema referrers index of `subject` (a manifest that a
        newer one replaced, e.g. a signature manifest that gained a layer). Nothing to do on a
        registry with the referrers API, or when the index does not list it."""
        index = self._referrer_fallback(subject)
        manifests = _entries(index)
        kept = [m for m in manifests if m.get("digest") != digest]
        if len(kept) == len(manifests):
            return
        index["manifests"] = kept
        data = json.dumps(index, separators=(",", ":")).encode()
        self.put_manifest(self.referrers_tag(subject), data, mediatypes.OCI_INDEX)
