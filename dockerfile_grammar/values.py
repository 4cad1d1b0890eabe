"""Small value syntaxes used inside instructions: Go durations, EXPOSE port specs, ``--chmod``
modes.

Every parser here raises ValueError with a BuildKit-like message; the instruction layer turns
it into a DockerfileError carrying the location.
"""
from __future__ import annotations

import re

_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_MAX_DURATION = (1 << 63) - 1
MINIMUM_DURATION_NS = 1_000_000   # 1ms: Docker's lower bound for healthcheck intervals


def parse_go_duration(text: str) -> int:
    """Parse a Go ``time.Duration`` string (``1h30m``, ``1.5s``, ``300ms``) into nanoseconds."""
    orig = text
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"time: invalid duration {_q(orig)}")
    total = 0
    while s:
        i = 0
        while i < len(s) and s[i].isdigit() and s[i].isascii():
            i += 1
        int_part = s[:i]
        frac = ""
        if i < len(s) and s[i] == ".":
            j = i + 1
            while j < len(s) and s[j].isdigit() and s[j].isascii():
                j += 1
            frac = s[i + 1:j]
            i = j
        if not int_part and not frac:
            raise ValueError(f"time: invalid duration {_q(orig)}")
        j = i
        while j < len(s) and s[j] != "." and not (s[j].isdigit() and s[j].isascii()):
            j += 1
        unit_name = s[i:j]
        if not unit_name:
            raise ValueError(f"time: missing unit in duration {_q(orig)}")
        unit = _DURATION_UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"time: unknown unit {_q(unit_name)} in duration {_q(orig)}")
        value = int(int_part or "0") * unit
        if frac:
            value += int(frac) * unit // (10 ** len(frac))
        total += value
        if total > _MAX_DURATION:
            raise ValueError(f"time: invalid duration {_q(orig)}")
        s = s[j:]
    return -total if neg else total


def format_go_duration(ns: int) -> str:
    """Format nanoseconds the way Go prints a Duration (``1m30s``, ``500ms``, ``0s``)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("\u00b5s", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim_fraction(ns, size) + unit
    out = []
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    if hours:
        out.append(f"{hours}h")
    if hours or minutes:
        out.append(f"{minutes}m")
    out.append(_trim_fraction(rest, 1_000_000_000) + "s")
    return sign + "".join(out)


def _trim_fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}." + f"{frac:0{digits}d}".rstrip("0")


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------
# EXPOSE

_PROTOCOLS = ("tcp", "udp", "sctp")


def parse_port_spec(spec: str) -> list[str]:
    """One EXPOSE word (already expanded) -> container ports as ``"80/tcp"``, ranges expanded.

    Accepts docker-run style ``[ip:][hostPort:]containerPort[-end][/proto]`` and keeps only the
    container side, like BuildKit.
    """
    parts = spec.split(":")
    container = parts[-1]
    if len(parts) == 1:
        ip, host = "", ""
    elif len(parts) == 2:
        ip, host = "", parts[0]
    else:
        ip, host = ":".join(parts[:-2]), parts[-2]
    proto, container = _split_proto(container)
    if ip.startswith("["):
        if not ip.endswith("]"):
            raise ValueError(f"invalid port: {_q(spec)}: invalid IP address {ip}")
        ip = ip[1:-1]
    if ip:
        import ipaddress
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"invalid port: {_q(spec)}: invalid IP address: {ip}") from None
        if "%" in ip:
            raise ValueError(f"invalid port: {_q(spec)}: invalid IP address: {ip}")
    if not container:
        raise ValueError(f"invalid port: {_q(spec)}: no port specified")
    try:
        start, end = _port_range(container)
    except ValueError:
        raise ValueError(f"invalid port: {_q(spec)}: invalid containerPort: {container}") from None
    if host:
        try:
            hstart, hend = _port_range(host)
        except ValueError:
            raise ValueError(f"invalid port: {_q(spec)}: invalid hostPort: {host}") from None
        if end - start != hend - hstart and end != start:
            raise ValueError(f"invalid port: {_q(spec)}: invalid ranges specified for container "
                             f"and host Ports: {container} and {host}")
    if proto.lower() not in _PROTOCOLS:
        raise ValueError(f"invalid port: {_q(spec)}: invalid proto: {proto}")
    proto = proto.lower()
    return [f"{p}/{proto}" for p in range(start, end + 1)]


def _split_proto(raw: str) -> tuple[str, str]:
    parts = raw.split("/")
    if not raw or not parts[0]:
        return "", ""
    if len(parts) == 1:
        return "tcp", raw
    if not parts[1]:
        return "tcp", parts[0]
    return parts[1], parts[0]


def _port_range(text: str) -> tuple[int, int]:
    if not text:
        raise ValueError("empty string specified for ports")
    if "-" not in text:
        p = _port(text)
        return p, p
    first, _, rest = text.partition("-")
    start = _port(first)
    end = _port(rest.split("-")[0])
    if end < start:
        raise ValueError(f"invalid range specified for port: {text}")
    return start, end


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid port {text}")
    value = int(text)
    if value > 65535:
        raise ValueError(f"invalid port {text}")
    return value


# ---------------------------------------------------------------------------------------------
# --chmod

_SYMBOLIC_MODE = re.compile(r"^[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+$")


def parse_chmod(value: str) -> int | str:
    """Validate a ``--chmod`` value: an octal number (returned as int) or a symbolic mode
    like ``u+x,g-w`` (returned unchanged, applied per file by the builder)."""
    if value and value.isascii() and value.isdigit():
        if any(c in "89" for c in value):
            raise ValueError(f"invalid chmod parameter: {value!r}: not an octal number")
        mode = int(value, 8)
        if mode > 0o7777:
            raise ValueError(f"invalid chmod parameter: {value!r}: mode out of range")
        return mode
    if value and all(_SYMBOLIC_MODE.match(clause) for clause in value.split(",")):
        return value
    raise ValueError(f"invalid chmod parameter: {value!r}: use an octal mode (0755) "
                     "or a symbolic mode (u+x,g-w)")
