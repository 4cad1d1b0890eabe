"""Registry credentials: where they come from, how `pybuild login` stores them.

Lookup order for a registry host (the first source that has an entry wins; a credential given in
code with `credential_override` comes before all):

1. Environment variables, for CI. ``PYBUILD_AUTH_CONFIG``: a JSON object in the Docker config's
   format (``{"auths": {"HOST": {"auth": base64 of "user:password"}}}``), matched by exact host.
   Per host: ``PYBUILD_REGISTRY_<HOST>_USER`` and ``PYBUILD_REGISTRY_<HOST>_PASSWORD`` where <HOST>
   is the host name (with its port) upper-cased and every character other than A-Z and 0-9 replaced
   by ``_`` (``ghcr.io`` -> ``GHCR_IO``, ``127.0.0.1:5000`` -> ``127_0_0_1_5000``). That folding
   loses information (``registry-gitlab.com`` and ``registry.gitlab.com`` fold alike), so these
   variables serve only hosts it cannot confuse: letters, digits and dots, an optional ``:PORT``,
   and no all-digit last label unless the name is an IPv4 address. Another host for which such a
   variable is set is refused with an error naming PYBUILD_AUTH_CONFIG. For the one host that
   ``PYBUILD_REGISTRY_HOST`` names (required with them): ``PYBUILD_REGISTRY_USER`` and
   ``PYBUILD_REGISTRY_PASSWORD``. ``..._PASSWORD_FILE`` may replace
   ``..._PASSWORD`` (read the file, strip the trailing newline), which keeps the secret out of the
   process environment.
2. The Docker client config: ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``:
   ``credHelpers[host]`` then ``credsStore`` (both run ``docker-credential-NAME get`` with the
   server URL on stdin), then ``auths[host]`` (base64 ``auth`` = "user:password", or ``username`` /
   ``password``, and ``identitytoken``).
3. podman's auth files, same format: ``$REGISTRY_AUTH_FILE``, then
   ``$XDG_RUNTIME_DIR/containers/auth.json``, then ``~/.config/containers/auth.json``.

Docker Hub's names are aliases of one another (``docker.io``, ``index.docker.io``,
``registry-1.docker.io``, ``https://index.docker.io/v1/``); its entries are stored under
``https://index.docker.io/v1/`` as the docker CLI does. Keys in ``auths`` are matched by host, so
``https://host/v2/`` matches ``host``.

Secrets never appear in reprs, logs or error messages.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import AuthError, RegistryError

DOCKER_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
# Credential helpers answer a Username of "<token>" when the Secret is an identity token.
IDENTITY_TOKEN_USER = "<token>"
HELPER_TIMEOUT = 60   # seconds; a helper may wait for a keychain unlock


@dataclass(frozen=True)
class Credential:
    """A user name and password, or an identity (OAuth2 refresh) token. Secrets stay out of repr."""
    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"credentials of {self.username or 'an identity token'}"


def canonical_host(host: str) -> str:
    """The host part of a registry name or URL, with Docker Hub's aliases folded to docker.io.

    ``https://index.docker.io/v1/`` -> ``docker.io``; ``http://h:5000/v2/`` -> ``h:5000``.
    """
    h = host.strip()
    h = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", h)
    h = h.split("/", 1)[0].lower()
    return "docker.io" if h in DOCKER_HUB_HOSTS else h


def server_url(host: str) -> str:
    """The key a registry is stored under in config.json and given to credential helpers."""
    h = canonical_host(host)
    return DOCKER_HUB_CONFIG_KEY if h == "docker.io" else h


AUTH_CONFIG_VAR = "PYBUILD_AUTH_CONFIG"
# Hosts whose folded variable name stands for them alone: labels of letters and digits joined by
# dots, then an optional port. Among such names only the last `_DIGITS` could be read two ways
# (`a.b:5000` or `a.b.5000`); an all-digit last label is therefore allowed only in an IPv4
# address, where a port cannot follow without a colon being the only reading left.
_UNAMBIGUOUS_HOST = re.compile(r"(?P<name>[a-z0-9]+(?:\.[a-z0-9]+)*)(?::[0-9]+)?", re.ASCII)
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}", re.ASCII)


def env_var_stem(host: str) -> str:
    """``PYBUILD_REGISTRY_<HOST>`` for HOST (see the module docstring)."""
    return "PYBUILD_REGISTRY_" + re.sub(r"[^A-Z0-9]", "_", canonical_host(host).upper())


def env_var_unambiguous(host: str) -> bool:
    """True when no other registry host folds to HOST's ``PYBUILD_REGISTRY_<HOST>`` name."""
    m = _UNAMBIGUOUS_HOST.fullmatch(canonical_host(host))
    if m is None:
        return False
    name = m.group("name")
    return not name.rsplit(".", 1)[-1].isdigit() or _IPV4.fullmatch(name) is not None


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (where `login` writes)."""
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def auth_file_paths() -> list[Path]:
    """Every config file consulted, in lookup order (existing or not)."""
    paths = [docker_config_path()]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(Path.home() / ".config" / "containers" / "auth.json")
    return paths


_overrides: dict[str, Credential] = {}
_overrides_lock = threading.Lock()


@contextmanager
def credential_override(host: str, cred: Credential) -> Iterator[None]:
    """Within the block, `lookup_credential(HOST)` answers CRED before any other source.

    For callers holding a credential in memory, e.g. `pybuild login` verifying one before saving it,
    or a program that gets its secret elsewhere. Process-wide (all threads see it).
    """
    key = canonical_host(host)
    with _overrides_lock:
        previous = _overrides.get(key)
        _overrides[key] = cred
    try:
        yield
    finally:
        with _overrides_lock:
            if previous is None:
                _overrides.pop(key, None)
            else:
                _overrides[key] = previous


def lookup_credential(host: str) -> Credential | None:
    """The credential for registry HOST from the first source that has one, or None (anonymous).

    Raises AuthError when a configured credential helper is missing or fails, or a config file is
    unreadable: silently going anonymous would turn that into a confusing 401 later.
    """
    with _overrides_lock:
        cred = _overrides.get(canonical_host(host))
    if cred is not None:
        return cred
    cred = _from_env(host)
    if cred is not None:
        return cred
    seen: set[Path] = set()
    for path in auth_file_paths():
        if path in seen:
            continue
        seen.add(path)
        config = _read_config(path)
        if config is not None:
            cred = _from_config(config, host, path)
            if cred is not None:
                return cred
    return None


def save_credential(host: str, cred: Credential) -> Path:
    """Store CRED for HOST in the Docker config (through its credential helper if it names one).

    Returns the config file's path. The file is written atomically with mode 0600.
    """
    path = docker_config_path()
    config = _read_config(path) or {}
    key = server_url(host)
    helper = _helper_for(config, host)
    auths = config.setdefault("auths", {})
    for k in [k for k in auths if canonical_host(k) == canonical_host(host)]:
        del auths[k]
    if helper:
        secret = cred.identity_token or cred.password
        user = IDENTITY_TOKEN_USER if cred.identity_token else cred.username
        _run_helper(helper, "store", json.dumps({"ServerURL": key, "Username": user, "Secret": secret}),
                    host)
        auths[key] = {}      # the docker CLI leaves an empty marker entry too
    else:
        entry: dict[str, str] = {"auth": base64.b64encode(
            f"{cred.username}:{cred.password}".encode()).decode()}
        if cred.identity_token:
            entry["identitytoken"] = cred.identity_token
        auths[key] = entry
    _write_config(path, config)
    return path


def erase_credential(host: str) -> bool:
    """Remove HOST's stored credential from the Docker config (and its helper). True if one existed."""
    path = docker_config_path()
    config = _read_config(path)
    if config is None:
        return False
    removed = False
    helper = _helper_for(config, host)
    if helper:
        out = _run_helper(helper, "erase", server_url(host), host, missing_ok=True)
        removed = out is not None
    auths = config.get("auths") or {}
    for k in [k for k in auths if canonical_host(k) == canonical_host(host)]:
        del auths[k]
        removed = True
    if removed:
        _write_config(path, config)
    return removed


# -- sources -------------------------------------------------------------------------------------

def _from_auth_config_env(host: str) -> Credential | None:
    text = os.environ.get(AUTH_CONFIG_VAR)
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise AuthError(f"{AUTH_CONFIG_VAR} is not valid JSON{where}; it holds "
                        f'{{"auths": {{"HOST": {{"auth": "BASE64(user:password)"}}}}}}') from None
    if not isinstance(config, dict) or not isinstance(config.get("auths", {}), dict):
        raise AuthError(f'{AUTH_CONFIG_VAR} must hold a JSON object with an "auths" object, as in '
                        f"Docker's config.json")
    # Helpers named there would run programs chosen by whoever set the variable: only auths count.
    return _from_config({"auths": config.get("auths") or {}}, host, Path(f"${AUTH_CONFIG_VAR}"))


def _from_env(host: str) -> Credential | None:
    cred = _from_auth_config_env(host)
    if cred is not None:
        return cred
    stem = env_var_stem(host)
    if not env_var_unambiguous(host) and any(
            f"{stem}_{k}" in os.environ for k in ("USER", "PASSWORD", "PASSWORD_FILE")):
        raise AuthError(f"{stem}_USER/_PASSWORD is set, but that name does not tell registry "
                        f"{canonical_host(host)} from other hosts that fold to it (e.g. with '.' and "
                        f"'-' swapped), so it is not used for {canonical_host(host)}; give this "
                        f'registry\'s credential in {AUTH_CONFIG_VAR}=\'{{"auths": {{"'
                        f'{canonical_host(host)}": {{"auth": "BASE64(user:password)"}}}}}}\'')
    for stem in (stem, "PYBUILD_REGISTRY"):
        user = os.environ.get(f"{stem}_USER")
        if user is None:
            continue
        if stem == "PYBUILD_REGISTRY" and not _is_the_named_registry(host):
            continue
        password = os.environ.get(f"{stem}_PASSWORD")
        pw_file = os.environ.get(f"{stem}_PASSWORD_FILE")
        if password is None and pw_file:
            try:
                password = Path(pw_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise AuthError(f"cannot read {stem}_PASSWORD_FILE {pw_file}: {exc.strerror}") from None
        if password is None:
            raise AuthError(f"{stem}_USER is set but neither {stem}_PASSWORD nor {stem}_PASSWORD_FILE is; "
                            f"set one of them or unset {stem}_USER")
        return Credential(user, password)
    return None


def _is_the_named_registry(host: str) -> bool:
    """Whether the host-less PYBUILD_REGISTRY_USER/_PASSWORD belong to ``host``: only the one
    registry PYBUILD_REGISTRY_HOST names. Offered to any registry that asks, a hostile `FROM
    attacker.example/x` would receive them."""
    named = os.environ.get("PYBUILD_REGISTRY_HOST", "").strip()
    if not named:
        raise AuthError("PYBUILD_REGISTRY_USER is set without PYBUILD_REGISTRY_HOST: name the registry "
                        "it is for (credentials go only to their own registry), e.g. "
                        "PYBUILD_REGISTRY_HOST=registry.example.com, or give per-registry credentials "
                        f"in {AUTH_CONFIG_VAR}")
    return canonical_host(named) == canonical_host(host)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise AuthError(f"cannot read registry credentials file {path}: {exc.strerror}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # The position only: the message of JSONDecodeError quotes no content, but keep it that way.
        raise AuthError(f"registry credentials file {path} is not valid JSON (line {exc.lineno}, "
                        f"column {exc.colno}); fix or remove it") from None
    if not isinstance(data, dict):
        raise AuthError(f"registry credentials file {path} does not hold a JSON object; fix or remove it")
    return data


def _helper_for(config: dict[str, Any], host: str) -> str | None:
    helpers = config.get("credHelpers") or {}
    for k, name in helpers.items():
        if canonical_host(k) == canonical_host(host) and name:
            return str(name)
    store = config.get("credsStore")
    return str(store) if store else None


def _from_config(config: dict[str, Any], host: str, path: Path) -> Credential | None:
    want = canonical_host(host)
    helper = _helper_for(config, host)
    if helper:
        out = _run_helper(helper, "get", server_url(host), host, missing_ok=True)
        if out is not None:
            try:
                data = json.loads(out)
                user, secret = str(data.get("Username", "")), str(data["Secret"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise AuthError(f"credential helper docker-credential-{helper} answered something other "
                                f"than {{\"Username\", \"Secret\"}} JSON for {want}") from None
            if user == IDENTITY_TOKEN_USER:
                return Credential("", "", identity_token=secret)
            return Credential(user, secret)
    for key, entry in (config.get("auths") or {}).items():
        if canonical_host(key) != want or not isinstance(entry, dict):
            continue
        user, password = entry.get("username") or "", entry.get("password") or ""
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=False).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise AuthError(f"the 'auth' value for {key} in {path} is not base64 of user:password; "
                                f"run `pybuild login {want}` again") from None
            if not sep:
                raise AuthError(f"the 'auth' value for {key} in {path} lacks the ':' between user and "
                                f"password; run `pybuild login {want}` again")
        token = entry.get("identitytoken") or None
        if user or password or token:
            return Credential(user, password, identity_token=token)
    return None


def _run_helper(name: str, action: str, stdin: str, host: str, missing_ok: bool = False) -> str | None:
    """Run ``docker-credential-NAME ACTION`` with STDIN; its stdout, or None when it has no entry.

    The helper protocol: `get` and `erase` take the server URL, `store` a JSON object; a helper that
    does not know the server says "credentials not found" and exits non-zero.
    """
    import shutil
    import subprocess

    program = f"docker-credential-{name}"
    exe = shutil.which(program)
    if exe is None:
        raise AuthError(f"credential helper {program} (configured for {canonical_host(host)} in "
                        f"{docker_config_path()}) was not found on PATH; install it, or remove "
                        f"'credsStore'/'credHelpers' from the config to use stored or environment credentials")
    try:
        proc = subprocess.run([exe, action], input=stdin, capture_output=True, text=True,
                              timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} {action} did not answer within "
                        f"{HELPER_TIMEOUT}s for {canonical_host(host)}") from None
    except OSError as exc:
        raise AuthError(f"cannot run credential helper {exe}: {exc.strerror}") from None
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip()
        if missing_ok and "credentials not found" in said.lower():
            return None
        # Helpers print a short error, never the secret; cap it anyway.
        raise AuthError(f"credential helper {program} {action} failed for {canonical_host(host)} "
                        f"(exit {proc.returncode}): {said[:200]}")
    return proc.stdout


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """Write CONFIG to PATH atomically (temp file + rename), readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink()
        raise RegistryError(f"cannot write registry credentials file {path}: {exc.strerror}; "
                            f"set DOCKER_CONFIG to a writable directory") from None
