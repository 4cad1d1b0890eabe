"""One logical line -> Node: the keyword, flags and arguments of an instruction.

The syntax is defined by ``dockerfile.lark`` (one start rule per argument style, chosen from
the keyword like BuildKit's dispatch table). Two ways of applying it:

* the Lark parser built from that grammar: the reference, able to parse every line;
* a fast path for the common shapes, because a Lark call costs more per line than a whole
  line may cost here. It splits with the grammar's own terminals where it needs more than
  blank-splitting (the quote-aware ``QWORD_*`` regexes are read from the .lark file) and
  detects exec form with Python's C JSON scanner (property-tested against the grammar's
  ``JSON_STRINGS`` terminal). It declines (returns None) what needs more: flags with quotes or
  escapes, non-ASCII blanks, JSON nested too deep for Python's reader. Tests check that both
  ways give the same nodes (``parse_line(..., use_grammar=True)`` forces the grammar).

Lark is imported and its parser loaded (from Lark's cache) only when a line needs it.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .goquote import GO_SPACE, go_lower
from .syntax import Node

_GRAMMAR = Path(__file__).resolve().parent / "dockerfile.lark"

# BuildKit's dispatch table: keyword -> argument style (a start rule of dockerfile.lark).
STYLES = {
    "add": "list_or_exec", "copy": "list_or_exec", "volume": "list_or_exec",
    "run": "exec_or_shell", "cmd": "exec_or_shell", "entrypoint": "exec_or_shell",
    "shell": "exec_or_shell",
    "from": "ws_words", "expose": "ws_words",
    "arg": "words", "env": "words", "label": "words",
    "healthcheck": "health",
    "maintainer": "text", "user": "text", "workdir": "text", "stopsignal": "text",
    "onbuild": "text",
}
_START_RULES = ["exec_or_shell", "list_or_exec", "ws_words", "words_bs", "words_bt", "health",
                "text"]

ASCII_BLANKS = re.compile(r"[\t\v\f\r ]+")
_OTHER_BLANK = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
# One piece of a flag word: "...", '...', a backslash escape, or plain characters.
_FLAG_PIECE = re.compile(r'"((?:[^"\\]|\\[\s\S]?)*)"?|\'((?:[^\'\\]|\\[\s\S]?)*)\'?'
                         r'|\\([\s\S]?)|([^"\'\\]+)')
_BACKSLASH = re.compile(r"\\([\s\S]?)")
# Fast path: the keyword, the blanks after it, then any run of flags without quotes, escapes
# or control characters, each followed by blanks or the end.
_HEAD = re.compile(r"([^\t\v\f\r ]*)[\t\v\f\r ]*"
                   r"((?:--[^\x00-\x20\x7f\"'\\]*(?:[\t\v\f\r ]+|\Z))*)")
_JSON_ITEM = re.compile(r'"([^"]*)"')
# Keywords as usually written -> (lower-case name, argument style).
KEYWORDS = {k: (v, st) for v, st in STYLES.items() for k in (v, v.upper(), v.title())}
# A first argument character after which the line needs the full head regex: blanks (more
# than one separator) or "-" (possible flags).
_HEAD_NEEDED = frozenset("\t\v\f\r -")
_SURROGATE = re.compile("[\ud800-\udfff]")

_lark: Any = None
_json_lark: Any = None


class LineError(Exception):
    """An argument error inside one logical line, at a character offset of that line."""

    def __init__(self, message: str, offset: int = 0, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint


def grammar_terminals(*names: str) -> list[re.Pattern[str]]:
    """Compile terminals' regex literals straight from dockerfile.lark (no Lark import)."""
    text = _GRAMMAR.read_text(encoding="utf-8")
    out = []
    for name in names:
        m = re.search(rf"^{name}(?:\.\d+)?:\s*/(.*)/[a-z]*\s*$", text, re.MULTILINE)
        if m is None:
            raise LookupError(f"terminal {name} not found in {_GRAMMAR.name}")
        out.append(re.compile(m.group(1).replace("\\/", "/")))
    return out


# Quote-aware word terminals by escape character, compiled on first use (big Unicode classes
# are slow to compile, and most lines never need them).
_QWORDS: dict[str, re.Pattern[str]] = {}
_QWORD_TERMINAL = {"\\": "QWORD_BS", "`": "QWORD_BT"}


# --- shared helpers -------------------------------------------------------------------------

def _decode_json_strings(text: str) -> list[str]:
    """The strings of a JSON array that JSON_STRINGS matched."""
    if "\\" not in text:
        return _JSON_ITEM.findall(text)  # no escapes: the strings are the quoted runs
    # Go decodes an unpaired \uD800-style escape as U+FFFD; Python keeps the lone surrogate.
    return [s if s.isascii() else _SURROGATE.sub("\ufffd", s) for s in json.loads(text)]


_scan_json = json.JSONDecoder().scan_once  # the C scanner, strict about control characters


def _json_strings(text: str) -> list[str] | None:
    """The strings of ``text`` when it is exactly a JSON array of strings (what the grammar's
    JSON_STRINGS terminal matches), else None.

    Uses Python's C JSON scanner, which is much faster than the terminal's regex; tests check
    the two agree. Non-string elements (NaN included) give None: the caller decides then.
    """
    try:
        items, end = _scan_json(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    if end != len(text) or type(items) is not list:
        return None
    for item in items:
        if type(item) is not str:
            return None
        if not item.isascii() and _SURROGATE.search(item):
            # Go decodes an unpaired \uD800-style escape as U+FFFD.
            return [_SURROGATE.sub("\ufffd", x) for x in items]
    return items


def unquote_flag(raw: str) -> str:
    """A flag word as BuildKit stores it: quotes removed, backslash escapes applied."""
    if '"' not in raw and "'" not in raw and "\\" not in raw:
        return raw
    out = []
    for dq, sq, esc, plain in _FLAG_PIECE.findall(raw):
        if plain:
            out.append(plain)
        elif dq or sq:
            out.append(_BACKSLASH.sub(r"\1", dq or sq))
        else:
            out.append(esc)
    return "".join(out)


def split_name_values(keyword: str, words: list[str], text: str) -> list[str]:
    """ENV/LABEL arguments as BuildKit's flat (key, value, separator) triples.

    ``words`` are the quote-aware words of ``text``; offsets in errors are into ``text``.
    """
    if not words:
        return []
    if "=" not in words[0]:
        # Legacy form "KEY value...": the value is the rest of the line verbatim.
        parts = ASCII_BLANKS.split(text, 1)
        if len(parts) < 2:
            raise LineError(f"{keyword} must have two arguments", 0,
                            hint=f"write {keyword} {parts[0]}=<value>")
        return [parts[0], parts[1], ""]
    out = []
    for word in words:
        if "=" not in word:
            raise LineError(f"Syntax error - can't find = in \"{word}\". Must be of the form: "
                            "name=value", text.find(word),
                            hint="every word must be name=value when the first one is")
        key, _, value = word.partition("=")
        out += [key, value, "="]
    return out


def _is_json(text: str) -> bool:
    """Whether ``text`` is one JSON value Go's encoding/json accepts (json.lark syntax, and no
    number too large for a float64, which Go reports as an error)."""
    global _json_lark
    import lark

    if _json_lark is None:
        _json_lark = lark.Lark.open(str(_GRAMMAR.with_name("json.lark")), parser="lalr",
                                    lexer="contextual", cache=True)
    try:
        tree = _json_lark.parse(text)
    except lark.exceptions.LarkError:
        return False
    return all(math.isfinite(float(tok)) for tok in tree.scan_values(
        lambda v: isinstance(v, lark.Token) and v.type == "NUMBER"))


def _check_not_json(text: str, offset: int) -> None:
    """Reject an argument that is valid JSON but not an array of strings."""
    if text.startswith("[") and _is_json(text):
        raise LineError("when using JSON array syntax, arrays must be comprised of strings only",
                        offset, hint='write every element as a "double-quoted string"')


# --- fast path ------------------------------------------------------------------------------

def _json_error_or(text: str, offset: int, fallback: list[str]) -> list[str] | None:
    """For text starting with "[" that is not an array of strings: BuildKit's error when it is
    valid JSON, else ``fallback``; None when Python's JSON reader cannot tell (deep nesting)."""
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        return fallback  # not JSON at all: shell form / blank-separated list
    except RecursionError:
        return None
    # Python also reads NaN and Infinity, and turns numbers too large for a float into inf;
    # Go rejects both, which makes the text shell form.
    if end != len(text) or not _all_finite(value):
        return fallback
    raise LineError("when using JSON array syntax, arrays must be comprised of strings only",
                    offset, hint='write every element as a "double-quoted string"')


def _all_finite(value: Any) -> bool:
    """No NaN or infinite float anywhere inside a decoded JSON value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            if not math.isfinite(item):
                return False
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())
    return True


def _words(text: str, escape_token: str, split: Any) -> list[str]:
    """The grammar's quote-aware words (QWORD tokens) of an argument text."""
    if escape_token not in text and "'" not in text:
        words = split(text)
        if '"' not in text:
            return words  # nothing quoted: the words are the blank-split
        # Only "..." quotes: when every blank-split word holds an even number of them, no
        # quoted part spans a blank, so the split is already the word list.
        for w in words:
            if w.count('"') & 1:
                break
        else:
            return words
    pattern = _QWORDS.get(escape_token)
    if pattern is None:
        # findall over an argument text yields exactly the grammar's word tokens: what no
        # QWORD can start with are blanks and a trailing escape character, which the grammar
        # drops too.
        (pattern,) = grammar_terminals(_QWORD_TERMINAL[escape_token])
        _QWORDS[escape_token] = pattern
    return pattern.findall(text)


def fast_node(s: str, escape_token: str, original: str, start_line: int, end_line: int,
              comments: list[str]) -> Node | None:
    """The Node of a stripped logical line ``s``, or None when the grammar must decide.

    LineError offsets are into ``s``.
    """
    if s.isprintable():
        # No tabs or other blanks but " ": str.split() is exactly BuildKit's blank split.
        split = str.split
    elif not s.isascii() and _OTHER_BLANK.search(s):
        return None
    else:
        split = ASCII_BLANKS.split
    cmd, _, text = s.partition(" ")
    known = KEYWORDS.get(cmd)
    if known is not None and text[:1] not in _HEAD_NEEDED:
        pos = len(cmd) + 1 if text else len(cmd)  # the usual "KEYWORD args" shape
        flags: list[str] = []
        value, style = known
    else:
        m = _HEAD.match(s)
        cmd, flag_text = m.groups()
        pos = m.end()
        if s.startswith("--", pos):
            return None  # a flag with quotes or escapes
        text = s[pos:]
        flags = flag_text.split() if flag_text else []
        if flags and "--" in flags:
            # "--" ends the flags; what follows it is arguments even if it looks like flags.
            cut = flags.index("--")
            after = flags[cut + 1:]
            flags = flags[:cut]
            if after:
                text = " ".join(after) + (" " + text if text else "")
                if text != s[len(s) - len(text):]:
                    return None  # blanks between those words were not single spaces
            pos = len(s) - len(text)
        value = cmd.lower() if cmd.isascii() else go_lower(cmd)
        style = STYLES.get(value)
    return node_from_parts(value, style, cmd, text, pos, flags, split, escape_token, original,
                           start_line, end_line, comments)


def node_from_parts(value: str, style: str | None, cmd: str, text: str, pos: int,
                    flags: list[str], split: Any, escape_token: str, original: str,
                    start_line: int, end_line: int, comments: list[str]) -> Node | None:
    """fast_node after the keyword and flags are known: the arguments per style.

    ``text`` is the argument text (starting at offset ``pos`` of the stripped line) and
    ``split`` BuildKit's blank split for it. None when the grammar must decide.
    """
    json_form = False
    trigger = None
    if style is None:
        args: list[str] | None = [""]  # BuildKit keeps unknown instructions, args dropped
    elif not text:
        args = []
    elif style == "exec_or_shell":
        if text[0] != "[":
            args = [text]
        else:
            args = _json_strings(text)
            if args is not None:
                json_form = True
            else:
                args = _json_error_or(text, pos, [text])
    elif style == "ws_words":
        args = split(text)
    elif style == "words":
        if value != "arg" and "=" not in text:
            # ENV/LABEL legacy "KEY value...": the first word has no "=" (nor any other).
            parts = ASCII_BLANKS.split(text, 1)
            if len(parts) < 2:
                raise LineError(f"{value.upper()} must have two arguments", pos,
                                hint=f"write {value.upper()} {parts[0]}=<value>")
            args = [parts[0], parts[1], ""]
        else:
            args = _words(text, escape_token, split)
            if value != "arg":
                triples: list[str] = []
                for word in args:
                    key, eq, val = word.partition("=")
                    if not eq:
                        break
                    triples += (key, val, "=")
                else:
                    args = triples
                if args is not triples:  # legacy form or a word without "=": full rules
                    try:
                        args = split_name_values(value.upper(), args, text)
                    except LineError as err:
                        err.offset += pos
                        raise
    elif style == "list_or_exec":
        if text[0] != "[":
            args = split(text)
        else:
            args = _json_strings(text)
            if args is not None:
                json_form = True
            else:
                args = _json_error_or(text, pos, split(text))
    elif value == "onbuild":
        args = []
        trigger = parse_trigger(text, escape_token, pos)
    elif style == "text":
        args = [text]
    else:  # health: the type word, then RUN-style arguments
        parts = ASCII_BLANKS.split(text, 1)
        args = parts[:1]
        if len(parts) > 1:
            rest = parts[1]
            if rest[0] != "[":
                args.append(rest)
            elif (items := _json_strings(rest)) is not None:
                args += items
                json_form = True
            else:
                more = _json_error_or(rest, pos + len(text) - len(rest), [rest])
                if more is None:
                    return None
                args += more
    if args is None:
        return None
    return Node(value, original, args, flags, json_form, start_line, end_line, [], trigger, cmd,
                comments)


# --- grammar path ---------------------------------------------------------------------------

def _lark_parser() -> Any:
    """The Lark parser of dockerfile.lark, built once per process (tables cached by Lark)."""
    global _lark
    if _lark is None:
        import lark

        _lark = lark.Lark.open(str(_GRAMMAR), parser="lalr", lexer="contextual",
                               start=_START_RULES, cache=True)
    return _lark


def grammar_node(s: str, escape_token: str, original: str) -> Node:
    """The Node of a stripped logical line ``s`` parsed by the Lark grammar.

    LineError offsets are into ``s``.
    """
    m = ASCII_BLANKS.search(s)
    cmd, rest, rest_at = (s, "", len(s)) if m is None else (s[:m.start()], s[m.end():], m.end())
    value = go_lower(cmd)
    style = STYLES.get(value)
    node = Node(value, original, [""] if style is None else [], [], False, 0, 0, [], None, cmd, [])
    if not rest:
        return node
    start = style or "text"
    if start == "words":
        start = "words_bs" if escape_token == "\\" else "words_bt"
    try:
        tokens = _lark_parser().parse(rest, start=start).children
    except Exception as exc:  # noqa: BLE001 - a grammar gap must still be a DockerfileError
        raise LineError(f"cannot parse the arguments of {cmd}: {exc}") from None
    i = 0
    while i < len(tokens) and tokens[i].type in ("FLAG", "DASHDASH"):
        if tokens[i].type == "FLAG":
            node.flags.append(unquote_flag(tokens[i].value))
        i += 1
    args = tokens[i:]
    if not args or style is None:
        return node
    if style == "health":
        node.args = [args[0].value]
        args = args[1:]
        if not args:
            return node
    first = args[0]
    at = rest_at + first.start_pos
    kind = first.type
    if kind == "JSON_STRINGS":
        node.args += _decode_json_strings(first.value)
        node.json_form = True
    elif kind == "TEXT":
        if style in ("exec_or_shell", "health"):
            _check_not_json(first.value, at)
            node.args.append(first.value)
        elif value == "onbuild":
            node.trigger = parse_trigger(first.value, escape_token, at, use_grammar=True)
        else:
            node.args = [first.value]
    elif kind == "WORD_FIRST":
        if style == "list_or_exec":
            _check_not_json(rest[first.start_pos:], at)
        node.args = [t.value for t in args]
    else:  # quote-aware words: ARG keeps them, ENV/LABEL make key/value/separator triples
        words = [t.value for t in args]
        if value == "arg":
            node.args = words
        else:
            try:
                node.args = split_name_values(value.upper(), words, rest[first.start_pos:])
            except LineError as err:
                err.offset += at
                raise
    return node


# --- entry points ---------------------------------------------------------------------------

def parse_line(line: str, escape_token: str = "\\", *, use_grammar: bool = False) -> Node:
    """Parse one logical line (continuations already joined) into a Node.

    With ``use_grammar`` every line goes through the Lark grammar (the reference); otherwise
    simple lines take the fast path. Raises LineError (offsets into ``line``) for BuildKit's
    parse-time argument errors.
    """
    s = line.strip(GO_SPACE)
    lead = len(line) - len(line.lstrip(GO_SPACE))
    try:
        node = None
        if not use_grammar:
            node = fast_node(s, escape_token, line, 0, 0, [])
        if node is None:
            node = grammar_node(s, escape_token, line)
    except LineError as err:
        err.offset += lead
        raise
    return node


def parse_trigger(text: str, escape_token: str, at: int, use_grammar: bool = False) -> Node:
    """Parse ONBUILD's nested instruction; error offsets are moved by ``at``."""
    try:
        return parse_line(text, escape_token, use_grammar=use_grammar)
    except LineError as err:
        err.offset += at
        raise
