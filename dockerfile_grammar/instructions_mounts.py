"""RUN ``--mount``, ``--device``, ``--network`` and ``--security`` values, with BuildKit's rules.

A mount value is a CSV list of ``key=value`` fields. Values may contain variables that the
builder expands at build time: :func:`parse_mount` without an expander validates every field
whose value is literal and keeps the others raw; the builder calls it again with its expander.
"""
from __future__ import annotations

import csv
import posixpath
from dataclasses import dataclass
from typing import Callable

from .suggest import suggest

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
CACHE_SHARING = ("shared", "private", "locked")
NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")
_MOUNT_KEYS = ("type", "from", "source", "src", "target", "dst", "destination", "readonly", "ro",
               "readwrite", "rw", "id", "sharing", "required", "size", "mode", "uid", "gid", "env")


class MountError(ValueError):
    """A bad --mount/--device value; ``hint`` says what would be valid."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class Mount:
    """One ``RUN --mount``. Fields left empty get their per-type defaults from the methods."""

    type: str = "bind"
    source: str = ""
    target: str = ""
    from_: str = ""
    read_only: bool = True
    cache_id: str = ""
    cache_sharing: str = ""
    required: bool = False
    size_limit: int = 0            # tmpfs size in bytes, 0 = unlimited
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None         # secret exposed as this environment variable
    raw: str = ""                  # the flag value as written

    def effective_id(self) -> str:
        """The cache/secret/ssh id after BuildKit's defaulting."""
        if self.type == "cache":
            return self.cache_id or self.target
        if self.type == "secret":
            if self.cache_id:
                return self.cache_id
            return self.source or posixpath.basename(self.target)
        if self.type == "ssh":
            return self.cache_id or "default"
        return self.cache_id

    def effective_target(self, ssh_index: int = 0) -> str:
        """Mount point after defaulting (secret: /run/secrets/<id>; ssh: the agent socket)."""
        if self.target:
            return self.target
        if self.type == "secret" and self.env is None:
            return "/run/secrets/" + posixpath.basename(self.effective_id())
        if self.type == "ssh":
            return f"/run/buildkit/ssh_agent.{ssh_index}"
        return ""

    def effective_mode(self) -> int:
        """File mode after defaulting: cache 0755, secret 0400, ssh 0600."""
        if self.mode is not None:
            return self.mode
        return {"cache": 0o755, "secret": 0o400, "ssh": 0o600}.get(self.type, 0o644)

    def effective_sharing(self) -> str:
        """Cache sharing mode, ``shared`` by default."""
        return self.cache_sharing or ("shared" if self.type == "cache" else "")


@dataclass
class Device:
    """One ``RUN --device`` (a CDI device name)."""

    name: str
    required: bool = False


def _parse_bool(key: str, value: str) -> bool:
    # Go's strconv.ParseBool spellings.
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise MountError(f"invalid value for {key}: {value}", "use true or false")


def _csv_fields(value: str, what: str) -> list[str]:
    try:
        rows = list(csv.reader([value], strict=True))
    except csv.Error as exc:
        raise MountError(f"failed to parse csv {what}: {exc}") from None
    if not rows or not rows[0]:
        raise MountError(f"failed to parse csv {what}: EOF", f"write --{what[:-1]}=type=...,target=...")
    return rows[0]


def _ram_in_bytes(value: str) -> int:
    """docker/go-units RAMInBytes: ``64m``, ``1.5g``, ``100k``, ``512`` (binary multiples)."""
    text = value.strip().lower()
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
             "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40,
             "tib": 1 << 40, "p": 1 << 50, "pb": 1 << 50, "pib": 1 << 50}
    i = 0
    while i < len(text) and (text[i].isdigit() or text[i] == "."):
        i += 1
    number, suffix = text[:i], text[i:].strip()
    if not number or suffix not in units:
        raise ValueError(value)
    try:
        return int(float(number) * units[suffix])
    except ValueError:
        raise ValueError(value) from None


def parse_mount(value: str, expand: Callable[[str], str] | None = None) -> Mount:
    """Parse one ``--mount`` value.

    Without ``expand``, values containing ``$`` are kept raw and not validated (the builder
    re-parses with its expander); ``from`` never allows variables.
    """
    m = Mount(raw=value)
    ro_auto = True
    for fld in _csv_fields(value, "mounts"):
        key, eq, val = fld.partition("=")
        key = key.lower()
        if not eq:
            if key in ("readonly", "ro"):
                m.read_only, ro_auto = True, False
                continue
            if key in ("readwrite", "rw"):
                m.read_only, ro_auto = False, False
                continue
            if key == "required":
                if m.type not in ("secret", "ssh"):
                    raise MountError(f"unexpected key '{key}' for mount type '{m.type}'",
                                     "required applies to secret and ssh mounts")
                m.required = True
                continue
        if key == "from" and any(c in val for c in "${}"):
            raise MountError(f"'{key}' doesn't support variable expansion, define alias stage instead")
        if expand is not None:
            val = expand(val)
        elif "$" in val:
            _set_raw(m, key, val)
            continue
        ro_auto = _apply(m, key, val, fld, ro_auto)
    return _finish(m, ro_auto)


def _set_raw(m: Mount, key: str, val: str) -> None:
    """Keep an unexpanded value in its field so the builder can see what was written."""
    if key in ("source", "src"):
        m.source = val
    elif key in ("target", "dst", "destination"):
        m.target = val
    elif key == "id":
        m.cache_id = val
    elif key == "env":
        m.env = val
    elif key not in _MOUNT_KEYS:
        _unknown_key(key, key + "=" + val)


def _unknown_key(key: str, fld: str) -> None:
    close = suggest(key, _MOUNT_KEYS)
    hint = f"did you mean {close}? " if close else ""
    raise MountError(f"unexpected key '{key}' in '{fld}'", hint + "valid keys: " + ", ".join(_MOUNT_KEYS))


def _apply(m: Mount, key: str, val: str, fld: str, ro_auto: bool) -> bool:
    if key == "type":
        if val.lower() not in MOUNT_TYPES:
            close = suggest(val.lower(), MOUNT_TYPES)
            hint = (f"did you mean {close}? " if close else "") + "types: " + ", ".join(MOUNT_TYPES)
            raise MountError(f"unsupported mount type {val!r}", hint)
        m.type = val.lower()
    elif key == "from":
        m.from_ = val
    elif key in ("source", "src"):
        m.source = val
    elif key in ("target", "dst", "destination"):
        m.target = val
    elif key in ("readonly", "ro"):
        m.read_only, ro_auto = _parse_bool(key, val), False
    elif key in ("readwrite", "rw"):
        m.read_only, ro_auto = not _parse_bool(key, val), False
    elif key == "required":
        if m.type not in ("secret", "ssh"):
            raise MountError(f"unexpected key '{key}' for mount type '{m.type}'",
                             "required applies to secret and ssh mounts")
        m.required = _parse_bool(key, val)
    elif key == "size":
        if m.type != "tmpfs":
            raise MountError(f"unexpected key '{key}' for mount type '{m.type}'",
                             "size applies to tmpfs mounts")
        try:
            m.size_limit = _ram_in_bytes(val)
        except ValueError:
            raise MountError(f"invalid value for {key}: {val}", "e.g. size=64m") from None
    elif key == "id":
        m.cache_id = val
    elif key == "sharing":
        if m.type != "cache":
            raise MountError(f"invalid cache sharing set for {m.type} mount")
        if val.lower() not in CACHE_SHARING:
            raise MountError(f"unsupported sharing value {val!r}", "use shared, private or locked")
        m.cache_sharing = val.lower()
    elif key == "mode":
        try:
            m.mode = int(val, 8)
        except ValueError:
            raise MountError(f"invalid value {val} for mode", "use an octal mode such as 0755") from None
    elif key in ("uid", "gid"):
        if not (val.isascii() and val.isdigit()) or int(val) >= 1 << 32:
            raise MountError(f"invalid value {val} for {key}", "use a numeric id")
        setattr(m, key, int(val))
    elif key == "env":
        m.env = val
    else:
        _unknown_key(key, fld)
    return ro_auto


def _finish(m: Mount, ro_auto: bool) -> Mount:
    if m.type not in ("secret", "ssh", "cache"):
        for attr in ("mode", "uid", "gid"):
            if getattr(m, attr) is not None:
                raise MountError(f"{attr} not allowed for {m.type!r} type mounts",
                                 "mode/uid/gid apply to cache, secret and ssh mounts")
    if ro_auto:
        m.read_only = m.type not in ("cache", "tmpfs")
    if m.cache_sharing and m.type != "cache":
        raise MountError(f"invalid cache sharing set for {m.type} mount")
    if m.type in ("bind", "cache", "tmpfs") and not m.target:
        raise MountError(f"{m.type} mount needs a target (where it appears in the container)",
                         f"e.g. --mount=type={m.type},target=/path")
    if m.type == "secret":
        if m.from_:
            raise MountError("secret mount should not have a from")
        if not m.source and not m.target and not m.cache_id and m.env is None:
            raise MountError("invalid secret mount. one of source, target required",
                             "e.g. --mount=type=secret,id=mytoken")
        if m.source and m.cache_id:
            raise MountError("both source and id can't be set")
    return m


def parse_device(value: str) -> Device:
    """Parse one ``--device`` value: ``vendor/class=name[,required[=bool]]`` or ``name=...``."""
    d = Device(name="")
    for fld in _csv_fields(value, "devices"):
        key, eq, val = fld.partition("=")
        key = key.lower()
        if key == "required":
            d.required = _parse_bool(key, val) if eq else True
            continue
        if d.name:
            raise MountError(f"device name already set to {d.name}")
        d.name = val if key == "name" else fld
    if not d.name:
        raise MountError(f"invalid device {value!r}: no device name", "e.g. --device=vendor.com/gpu=all")
    return d


def parse_network(value: str) -> str:
    """Validate ``RUN --network``."""
    if value not in NETWORK_MODES:
        raise MountError(f"unsupported network mode {value!r}", "use default, none or host")
    return value


def parse_security(value: str) -> str:
    """Validate ``RUN --security``."""
    if value not in SECURITY_MODES:
        raise MountError(f"unsupported security mode {value!r}", "use sandbox or insecure")
    return value
