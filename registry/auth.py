"""Registry authentication: HTTP Basic and the Bearer token flow of the distribution spec.

One `Authenticator` per registry host is shared by every request (and thread) talking to it. The
client asks `headers(scopes)` before each request and calls `challenge(response, scopes)` when the
registry answers 401; the authenticator learns the scheme from ``WWW-Authenticate``:

- ``Basic realm=...``: the credential is sent as HTTP Basic from then on.
- ``Bearer realm=R,service=S,scope=...``: a token for the scopes is fetched from R (``GET
  R?service=S&scope=...`` with the credential as Basic, or an OAuth2 ``POST`` with the refresh
  token when the credential is an identity token) and cached per scope set until shortly before it
  expires. A cached token also serves any request whose scopes it was fetched for (a push token
  serves pulls of the same repository). Once the realm is known, tokens for new scope sets are
  fetched before the request is sent, saving a 401 round trip, and expired ones are replaced.
- A 401 carrying a token the registry no longer accepts (expired early, revoked) drops the token and
  fetches a new one, so a long transfer continues; when a token fetched for exactly these scopes is
  refused with ``insufficient_scope`` the credential lacks the permission and AuthError says so.

Scopes are strings ``repository:NAME:ACTIONS`` (``pull``, ``pull,push``, ``*``) or
``registry:catalog:*``; `repository_scopes` builds them, including the extra
``repository:SRC:pull`` a cross-repository mount needs. Secrets never appear in messages.
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable
from urllib.parse import urljoin, urlsplit

from .errors import AuthError
from .http import origin
from .tlsconfig import ca_bundle_for

if TYPE_CHECKING:
    import requests

    from .credentials import Credential

DEFAULT_EXPIRES_IN = 60        # seconds, when the token server does not say (the spec's default)
TOKEN_TIMEOUT = (10, 60)       # connect, read seconds for a token request
TOKEN_ATTEMPTS = 4             # tries for a token request failing with 429/5xx/connection errors
CLIENT_ID = "pybuild"
# A token answer is a small JSON object (a JWT is a few KiB); a longer one is refused unread.
MAX_TOKEN_RESPONSE = 1 << 20
TOKEN_REDIRECTS = 5


def repository_scopes(repository: str, push: bool = False, mount_from: str | None = None) -> list[str]:
    """The scopes a request on REPOSITORY needs: pull, or pull+push; plus pull on a mount source."""
    scopes = [f"repository:{repository}:{'pull,push' if push else 'pull'}"]
    if mount_from and mount_from != repository:
        scopes.append(f"repository:{mount_from}:pull")
    return scopes


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """Parse a WWW-Authenticate value into [(scheme lower-cased, {param: value})].

    Handles several challenges in one header (``Basic realm="a", Bearer realm="b"``), quoted
    strings containing commas and backslash escapes, and unquoted tokens.
    """
    out: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(header)
    token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        m = token.match(header, i)
        if not m:
            break
        scheme, i = m.group(0).lower(), m.end()
        params: dict[str, str] = {}
        out.append((scheme, params))
        while i < n:
            j = i
            while j < n and header[j] in " \t,":
                j += 1
            m = token.match(header, j)
            if not m:
                i = j
                break
            k = m.end()
            while k < n and header[k] in " \t":
                k += 1
            if k >= n or header[k] != "=":
                i = j              # a bare token: the next challenge's scheme
                break
            k += 1
            while k < n and header[k] in " \t":
                k += 1
            if k < n and header[k] == '"':
                k += 1
                value = []
                while k < n and header[k] != '"':
                    if header[k] == "\\" and k + 1 < n:
                        k += 1
                    value.append(header[k])
                    k += 1
                params[m.group(0).lower()] = "".join(value)
                i = k + 1
            else:
                v = re.compile(r"[^\s,]*").match(header, k)
                params[m.group(0).lower()] = v.group(0)
                i = v.end()
    return out


def _parse_scope(scope: str) -> tuple[tuple[str, str], frozenset[str]] | None:
    parts = scope.split(":")
    if len(parts) < 3:
        return None
    # Repository names never contain ':' but a registry host in them could (host:port/name).
    return (parts[0], ":".join(parts[1:-1])), frozenset(a for a in parts[-1].split(",") if a)


def _normalize(scopes: list[str]) -> frozenset[str]:
    """Merge duplicate resources and sort actions so equal needs give equal keys."""
    merged: dict[tuple[str, str], set[str]] = {}
    other: set[str] = set()
    for s in scopes:
        p = _parse_scope(s)
        if p is None:
            other.add(s)
        else:
            merged.setdefault(p[0], set()).update(p[1])
    return frozenset(other | {f"{t}:{n}:{','.join(sorted(a))}" for (t, n), a in merged.items()})


def _covers(have: frozenset[str], need: frozenset[str]) -> bool:
    """True when a token fetched for HAVE was asked for everything NEED asks."""
    have_map: dict[tuple[str, str], frozenset[str]] = {}
    for s in have:
        p = _parse_scope(s)
        if p:
            have_map[p[0]] = p[1]
    for s in need:
        p = _parse_scope(s)
        if p is None:
            if s not in have:
                return False
        else:
            got = have_map.get(p[0], frozenset())
            if not (p[1] <= got or "*" in got):
                return False
    return True


def _granted(token: str) -> dict[tuple[str, str], set[str]] | None:
    """The `access` claim of a JWT token (unverified; for error messages only), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return {(a["type"], a["name"]): set(a.get("actions") or []) for a in claims.get("access") or []}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class _Token:
    value: str
    scopes: frozenset[str]
    expires_at: float            # time.monotonic()
    fetched_at: float
    uses: int = 0                # requests it was handed to

    def fresh(self, now: float) -> bool:
        lifetime = self.expires_at - self.fetched_at
        return now < self.expires_at - min(10.0, lifetime / 10)


@dataclass
class _Bearer:
    realm: str
    service: str | None


@dataclass(eq=False)
class Authenticator:
    """Per-registry-host auth state, thread-safe, shared by every request to that host."""
    host: str
    credential: "Credential | None" = field(repr=False)
    session: "requests.Session" = field(repr=False)
    # host -> the `verify=` value for requests to a token realm; default: certs.d CA or True.
    tls_verify: Callable[[str], "bool | str"] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._scheme: str | None = None           # "basic" or "bearer" once challenged
        self._bearer: _Bearer | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._fetch_locks: dict[frozenset[str], threading.Lock] = {}
        self._refresh_token: str | None = self.credential.identity_token if self.credential else None

    # -- the interface the client uses ------------------------------------------------------------
    def headers(self, scopes: list[str]) -> dict[str, str]:
        """The Authorization header for a request needing SCOPES ({} while no challenge was seen).

        With a known token realm, a missing or expiring token is fetched here (may raise AuthError).
        """
        with self._lock:
            scheme = self._scheme
        if scheme == "basic":
            return self._basic_header() if self.credential else {}
        if scheme != "bearer":
            return {}
        need = _normalize(scopes)
        tok = self._cached(need)
        if tok is None:
            tok = self._fetch(need, refused=None)
        with self._lock:
            tok.uses += 1
        return {"Authorization": f"Bearer {tok.value}"}

    def challenge(self, response: "requests.Response", scopes: list[str]) -> bool:
        """React to RESPONSE (a 401): True when retrying the request makes sense.

        Returns False for a response that is not a 401. Raises AuthError when the registry wants
        credentials that are missing, refuses the ones given, or lacks permission for SCOPES.
        """
        if response.status_code != 401:
            return False
        header = response.headers.get("WWW-Authenticate", "")
        challenges = dict(parse_challenges(header))
        sent = (response.request.headers.get("Authorization") if response.request is not None else None) or ""
        if "bearer" in challenges and challenges["bearer"].get("realm"):
            self._check_realm(challenges["bearer"]["realm"], getattr(response, "url", "") or "")
            return self._bearer_challenge(challenges["bearer"], scopes, sent)
        if "basic" in challenges:
            return self._basic_challenge(sent)
        if not challenges:
            raise AuthError(f"registry {self.host} answered 401 Unauthorized without a WWW-Authenticate "
                            f"challenge for {response.request.method if response.request else 'a request'} "
                            f"{_safe_url(response.url)}; it cannot be authenticated to")
        raise AuthError(f"registry {self.host} asks for authentication scheme(s) "
                        f"{', '.join(sorted(challenges))}, which pybuild does not support "
                        f"(supported: Basic, Bearer)")

    def _check_realm(self, realm: str, registry_url: str) -> None:
        """The realm gets this registry's credentials: it must be an http(s) URL, and https when
        the registry itself is reached over https (no downgrade to clear text)."""
        scheme = urlsplit(realm).scheme.lower()
        if scheme not in ("http", "https") or not urlsplit(realm).hostname:
            raise AuthError(f"registry {self.host} names token realm {_safe_url(realm)!r}, which is not "
                            f"an http(s) URL; cannot authenticate")
        if scheme == "http" and urlsplit(registry_url).scheme.lower() == "https":
            raise AuthError(f"registry {self.host} is reached over https but names a plain-http token "
                            f"realm {_safe_url(realm)}; pybuild does not send credentials in clear text")

    # -- basic --------------------------------------------------------------------------------------
    def _basic_header(self) -> dict[str, str]:
        assert self.credential is not None
        raw = f"{self.credential.username}:{self.credential.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    def _basic_challenge(self, sent: str) -> bool:
        if self.credential is None or (not self.credential.username and not self.credential.password):
            raise AuthError(f"registry {self.host} requires a user name and password; run "
                            f"`pybuild login {self.host}` (or set PYBUILD_REGISTRY_USER and "
                            f"PYBUILD_REGISTRY_PASSWORD)")
        if sent.startswith("Basic ") and sent == self._basic_header()["Authorization"]:
            raise AuthError(f"registry {self.host} rejected the password of user "
                            f"{self.credential.username!r}; check it and run `pybuild login {self.host}`")
        with self._lock:
            self._scheme = "basic"
        return True

    # -- bearer -------------------------------------------------------------------------------------
    def _bearer_challenge(self, params: dict[str, str], scopes: list[str], sent: str) -> bool:
        realm = params["realm"]
        with self._lock:
            if self._bearer is None or self._bearer.realm != realm:
                self._bearer = _Bearer(realm=realm, service=params.get("service"))
                self._tokens.clear()
            self._scheme = "bearer"
        asked = [s for s in params.get("scope", "").split(" ") if s]
        need = _normalize(list(scopes) + asked)
        sent_token = sent[7:] if sent.startswith("Bearer ") else None
        refused: _Token | None = None
        with self._lock:
            if sent_token:
                for key, tok in list(self._tokens.items()):
                    if tok.value == sent_token:
                        refused = tok
                        del self._tokens[key]
            current = self._cached_locked(need)
        if sent_token and refused is None and current is not None and current.value != sent_token:
            return True          # another request already replaced the refused token
        if refused is not None:
            if params.get("error") == "insufficient_scope" and _covers(refused.scopes, need):
                raise self._denied(need, refused.value)
            # A token refused on its very first use, well before it expires, did not expire: the
            # registry does not trust the token server (retrying would only hide that).
            if refused.uses <= 1 and refused.fresh(time.monotonic()):
                raise AuthError(f"registry {self.host} refused a token that {_safe_url(realm)} had just "
                                f"issued ({params.get('error') or 'no reason given'}); the token server "
                                f"and the registry disagree (service, issuer or signing certificate)")
        elif current is not None and sent_token is None:
            return True          # the token appeared while this request was in flight
        self._fetch(need, refused=refused)
        return True

    def _denied(self, need: frozenset[str], token: str) -> AuthError:
        who = (f"user {self.credential.username!r}" if self.credential and self.credential.username
               else "the identity token" if self.credential else "anonymous access")
        granted = _granted(token)
        wanted = []
        for s in sorted(need):
            p = _parse_scope(s)
            if p is None:
                continue
            missing = set(p[1]) - (granted.get(p[0], set()) if granted is not None else set())
            if granted is None or missing:
                wanted.append(f"{'/'.join(sorted(missing or p[1]))} on {p[0][0]} {p[0][1]}")
        what = "; ".join(wanted) or ", ".join(sorted(need))
        hint = (f"log in with a user that has this access (`pybuild login {self.host}`)"
                if self.credential else
                f"the repository may not exist, or it needs credentials: run `pybuild login {self.host}`")
        return AuthError(f"registry {self.host} denied {who} {what}; {hint}")

    def _cached(self, need: frozenset[str]) -> _Token | None:
        with self._lock:
            return self._cached_locked(need)

    def _cached_locked(self, need: frozenset[str]) -> _Token | None:
        now = time.monotonic()
        tok = self._tokens.get(need)
        if tok is not None and tok.fresh(now):
            return tok
        for tok in self._tokens.values():
            if tok.fresh(now) and _covers(tok.scopes, need):
                return tok
        return None

    def _fetch(self, need: frozenset[str], refused: _Token | None) -> _Token:
        """Fetch (once, however many threads ask at the same time) a token for NEED."""
        with self._lock:
            lock = self._fetch_locks.setdefault(need, threading.Lock())
        with lock:
            with self._lock:
                tok = self._cached_locked(need)
                bearer = self._bearer
            if tok is not None and (refused is None or tok.value != refused.value):
                return tok
            assert bearer is not None
            value, expires_in = self._request_token(bearer, sorted(need))
            now = time.monotonic()
            tok = _Token(value=value, scopes=need, expires_at=now + expires_in, fetched_at=now)
            with self._lock:
                if self._bearer is bearer:
                    self._tokens[need] = tok
            return tok

    def _token_call(self, bearer: _Bearer, refresh: str | None, scopes: list[str],
                    verify: "bool | str") -> tuple["requests.Response", bytes]:
        """One token request with its redirects followed by hand: credentials (Basic or the
        refresh token) go only to the realm's own scheme, host and port; each body is read up to
        MAX_TOKEN_RESPONSE. Returns the final response and its body."""
        import requests
        cred = self.credential
        url = bearer.realm
        home = origin(url)
        method = "POST" if refresh else "GET"
        for _ in range(TOKEN_REDIRECTS + 1):
            at_home = origin(url) == home
            kw: dict = {"timeout": TOKEN_TIMEOUT, "verify": verify if at_home else True,
                        "allow_redirects": False, "stream": True}
            if method == "POST":
                form = {"grant_type": "refresh_token", "refresh_token": refresh or "",
                        "client_id": CLIENT_ID, "scope": " ".join(scopes)}
                if bearer.service:
                    form["service"] = bearer.service
                resp = self.session.post(url, data=form, **kw)
            else:
                params: list[tuple[str, str]] = []
                if url == bearer.realm:
                    if bearer.service:
                        params.append(("service", bearer.service))
                    params += [("scope", s) for s in scopes]
                auth = None
                if cred is not None and (cred.username or cred.password):
                    if url == bearer.realm:
                        params.append(("account", cred.username))
                    if at_home:
                        auth = (cred.username, cred.password)
                    else:
                        # No netrc or other stored login for a host the registry did not name.
                        auth = _NoAuth()
                resp = self.session.get(url, params=params or None, auth=auth, **kw)
            if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                resp.close()
                url = urljoin(url, resp.headers["Location"])
                if method == "POST" and origin(url) != home:
                    raise AuthError(f"token server {_safe_url(bearer.realm)} for registry {self.host} "
                                    f"redirects to {_safe_url(url)}, another host; pybuild does not send "
                                    f"the identity token there")
                continue
            return resp, _read_capped(resp, MAX_TOKEN_RESPONSE, bearer.realm, self.host)
        raise requests.TooManyRedirects(f"more than {TOKEN_REDIRECTS} redirects")

    def _request_token(self, bearer: _Bearer, scopes: list[str]) -> tuple[str, float]:
        """Ask the realm for a token: (token, expires_in seconds)."""
        import requests

        realm_host = urlsplit(bearer.realm).netloc
        verify = self.tls_verify(realm_host) if self.tls_verify else (ca_bundle_for(realm_host) or True)
        with self._lock:
            refresh = self._refresh_token
        attempt = 0
        while True:
            attempt += 1
            try:
                resp, content = self._token_call(bearer, refresh, scopes, verify)
            except requests.exceptions.SSLError as exc:
                raise AuthError(f"TLS verification of token server {_safe_url(bearer.realm)} (for "
                                f"registry {self.host}) failed: {_reason(exc)}; add its CA as "
                                f"certs.d/{realm_host}/ca.crt") from None
            except requests.RequestException as exc:
                if attempt < TOKEN_ATTEMPTS:
                    time.sleep(_backoff(attempt, None))
                    continue
                raise AuthError(f"cannot reach token server {_safe_url(bearer.realm)} for registry "
                                f"{self.host} after {attempt} attempts: {_reason(exc)}") from None
            status = resp.status_code
            if status in (408, 429) or status >= 500:
                if attempt < TOKEN_ATTEMPTS:
                    time.sleep(_backoff(attempt, resp.headers.get("Retry-After")))
                    continue
                raise AuthError(f"token server {_safe_url(bearer.realm)} for registry {self.host} "
                                f"answered HTTP {status} {attempt} times; try again later")
            if status in (400, 401, 403):
                raise self._rejected(bearer, status, resp, bool(refresh))
            if status != 200:
                raise AuthError(f"token server {_safe_url(bearer.realm)} for registry {self.host} "
                                f"answered HTTP {status}")
            try:
                body = json.loads(content)
                token = body.get("token") or body.get("access_token")
                expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
            except (ValueError, AttributeError, TypeError, RecursionError):
                token = None
            if not isinstance(token, str) or not token:
                raise AuthError(f"token server {_safe_url(bearer.realm)} for registry {self.host} "
                                f"answered without a token")
            new_refresh = body.get("refresh_token")
            if refresh and isinstance(new_refresh, str) and new_refresh:
                with self._lock:
                    self._refresh_token = new_refresh
            return token, max(expires_in, 1.0)

    def _rejected(self, bearer: _Bearer, status: int, resp: "requests.Response", oauth: bool) -> AuthError:
        where = f"token server {_safe_url(bearer.realm)} for registry {self.host}"
        if self.credential is None:
            return AuthError(f"{where} refused anonymous access (HTTP {status}); run "
                             f"`pybuild login {self.host}`")
        if oauth:
            return AuthError(f"{where} refused the stored identity token (HTTP {status}); it may have "
                             f"expired: run `pybuild login {self.host}` again")
        return AuthError(f"{where} rejected the credentials of user {self.credential.username!r} "
                         f"(HTTP {status}); check them and run `pybuild login {self.host}`")


class _NoAuth:
    """A requests auth hook that adds nothing (and so keeps requests from using ~/.netrc)."""

    def __call__(self, r: "requests.PreparedRequest") -> "requests.PreparedRequest":
        r.headers.pop("Authorization", None)
        return r


def _read_capped(resp: "requests.Response", cap: int, realm: str, host: str) -> bytes:
    """Up to CAP bytes of a streamed requests response; AuthError when it is longer."""
    buf = bytearray()
    try:
        for piece in resp.iter_content(64 * 1024):
            buf += piece
            if len(buf) > cap:
                raise AuthError(f"token server {_safe_url(realm)} for registry {host} answered more than "
                                f"{cap} bytes; refusing it")
    finally:
        resp.close()
    return bytes(buf)


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(float(retry_after), 30.0)
        except ValueError:
            pass
    import random      # only when retrying a token request
    return min(0.25 * 2 ** (attempt - 1), 4.0) * (0.5 + random.random())


def _safe_url(url: str) -> str:
    """URL without query string or user info (either could carry a secret)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{':' + str(u.port) if u.port else ''}{u.path}"


def _reason(exc: Exception) -> str:
    """A requests exception's message without query strings, capped."""
    return re.sub(r"\?\S*", "", str(exc))[:300]
