"""The one formatter of the `pybuild` commands: sizes, ages, durations and tables, as docker prints them.

    human_size(1_234_567)      -> "1.23MB"   (decimal units, 3 significant digits: `docker images`)
    human_duration(300)        -> "5 minutes" (docker's wording: "Less than a second", "About an hour")
    ago(timestamp)             -> "5 minutes ago" ("never" for 0/None)
    ago_rfc3339("2024-...Z")   -> "5 minutes ago" ("N/A" when absent or unreadable)
    print_table(rows)          -> columns padded to the widest cell, three spaces apart

and the parsers of what users type: parse_size("500MB"), parse_duration("1h30m").
Only the standard library's `re` and `time` at import: every command loads this module.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Iterable, Sequence, TextIO

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_size(n: float) -> str:
    """Bytes in decimal units with 3 significant digits, as `docker images` shows them: 512B,
    25kB, 1.23MB, 1GB."""
    n = float(n)
    if n < 1000:
        return f"{int(n)}B"
    i = 0
    while i < len(_UNITS) - 1 and float(f"{n:.3g}") >= 1000:
        n /= 1000
        i += 1
    return f"{n:.3g}{_UNITS[i]}"


def human_duration(seconds: float) -> str:
    """A duration in docker's words: "Less than a second", "5 seconds", "About a minute",
    "12 minutes", "About an hour", "3 hours", "4 days", "2 weeks", "5 months", "2 years"."""
    s = max(0.0, float(seconds))
    if s < 1:
        return "Less than a second"
    if s < 2:
        return "1 second"
    if s < 60:
        return f"{int(s)} seconds"
    minutes = round(s / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    days = s / 86400
    if days < 14:
        return f"{int(days)} days"
    if days < 90:
        return f"{int(days // 7)} weeks"
    if days < 730:
        return f"{int(days // 30)} months"
    return f"{int(days // 365)} years"


def ago(timestamp: float | None, now: float | None = None) -> str:
    """``5 minutes ago`` from a Unix time; ``never`` when there is none (0 or None)."""
    if not timestamp:
        return "never"
    return human_duration((now if now is not None else time.time()) - timestamp) + " ago"


def ago_rfc3339(text: str | None, now: float | None = None) -> str:
    """``5 minutes ago`` from an RFC 3339 time; ``N/A`` when absent or unreadable."""
    if not text:
        return "N/A"
    from datetime import datetime       # a few ms: only the listing commands need it
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text).timestamp()
    except ValueError:
        return "N/A"
    return ago(ts, now)


# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides that reorder
# what a terminal shows: what a registry's or an image's text may hold to rewrite the screen.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: escape sequences and other control characters are
    shown as ``\\xNN`` (``\\uNNNN``) instead of acting; tabs and newlines stay."""
    if text.isprintable() or not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def print_table(rows: Iterable[Sequence[str]], out: TextIO | None = None, sep: str = "   ") -> None:
    """Print ``rows`` (the first is the header) left-aligned in columns as wide as their widest
    cell; cells are made printable (image names, labels and annotations come from anyone)."""
    rows = [[printable(str(c)) for c in r] for r in rows]
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = out or sys.stdout
    for r in rows:
        print(sep.join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- what users type -------------------------------------------------------------------------------
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``500MB``, ``2g``, ``1048576`` -> bytes (binary multiples, as docker does)."""
    from ..errors import BuildError
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise BuildError(f"size {text!r}: use a number with an optional unit, e.g. 500MB or 2GB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    """``24h``, ``90m``, ``7d``, ``1h30m`` -> seconds."""
    from ..errors import BuildError
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise BuildError(f"duration {text!r}: use e.g. 24h, 90m, 7d or 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
