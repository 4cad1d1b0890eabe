"""Go string semantics that BuildKit's parser output depends on.

BuildKit is written in Go; its dump uses ``strconv.Quote`` and its splitting uses
``unicode.IsSpace`` and ``strings.TrimSpace``. Python's ``repr``/``str.isspace``/``str.strip``
differ in small ways (e.g. Python treats U+001C..U+001F as whitespace, Go does not), so the
parser uses these helpers wherever a byte-exact match with BuildKit matters.
"""
from __future__ import annotations

import re

# unicode.IsSpace: the Latin-1 spaces plus every code point with the White_Space property.
GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
            "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")

_SIMPLE_ESCAPES = {
    "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
    '"': '\\"', "\\": "\\\\",
}
# Characters that may need escaping: quotes, backslash, anything outside printable ASCII.
_NEEDS_WORK = re.compile(r'["\\]|[^\x20-\x7e]')


def go_trim_space(s: str) -> str:
    """Go's ``strings.TrimSpace``."""
    return s.strip(GO_SPACE)


def go_lower(s: str) -> str:
    """Go's ``strings.ToLower`` (simple per-code-point case mapping, no context rules)."""
    if s.isascii():
        return s.lower()
    out = []
    for ch in s:
        low = ch.lower()
        # Python applies full (multi-character) mappings; Go uses the simple one-to-one mapping.
        out.append(low if len(low) == 1 else ("i" if ch == "\u0130" else ch))
    return "".join(out)


def _quote_char(ch: str) -> str:
    esc = _SIMPLE_ESCAPES.get(ch)
    if esc is not None:
        return esc
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:
        # A byte that was not valid UTF-8, smuggled in by the surrogateescape codec: Go
        # prints invalid bytes as \xHH.
        return f"\\x{cp - 0xDC00:02x}"
    if ch.isprintable():  # same categories as Go's unicode.IsPrint (L, M, N, P, S, ASCII space)
        return ch
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if 0xD800 <= cp <= 0xDFFF:
        return "\ufffd"  # Go strings cannot hold surrogates; they decode as U+FFFD
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote``: a double-quoted literal, escaping only what Go escapes."""
    if _NEEDS_WORK.search(s) is None:
        return f'"{s}"'
    return '"' + _NEEDS_WORK.sub(lambda m: _quote_char(m.group()), s) + '"'
