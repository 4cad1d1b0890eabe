"""Dockerfile text -> raw syntax tree (BuildKit's parser layer, no validation).

``parse`` drives the pre-pass (prepass.py) line by line; each logical line's flags and
arguments are parsed by the Lark grammar in ``dockerfile.lark`` (one start rule per argument
style, chosen from the keyword as BuildKit's dispatch table does). Heredoc bodies are read
right after the line that introduces them, which is why the pre-pass and the grammar take
turns instead of running one after the other.

Lark is imported and the parser loaded (from Lark's cache) on first use, so importing this
package stays cheap.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import DockerfileError
from .goquote import GO_SPACE, go_lower
from .heredoc import HeredocSyntaxError, heredocs_from_line
from .prepass import LogicalLine, PrePass
from .syntax import Node, SyntaxTree

_GRAMMAR_DIR = Path(__file__).resolve().parent

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
HEREDOC_INSTRUCTIONS = ("run", "copy", "add")
_START_RULES = ["exec_or_shell", "list_or_exec", "ws_words", "words_bs", "words_bt", "health",
                "text"]
_ASCII_BLANKS = re.compile(r"[\t\v\f\r ]+")
# One piece of a flag word: "...", '...', a backslash escape, or plain characters.
_FLAG_PIECE = re.compile(r'"((?:[^"\\]|\\[\s\S]?)*)"?|\'((?:[^\'\\]|\\[\s\S]?)*)\'?|\\([\s\S]?)|([^"\'\\]+)')
_BACKSLASH = re.compile(r"\\([\s\S]?)")

_line_parser: Any = None
_json_parser: Any = None


class _LineError(Exception):
    """An argument error inside one logical line, at a character offset of that line."""

    def __init__(self, message: str, offset: int = 0, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint


def _lark_parser() -> Any:
    """The instruction-argument parser, built once per process (Lark caches the tables)."""
    global _line_parser
    if _line_parser is None:
        import lark

        _line_parser = lark.Lark.open(str(_GRAMMAR_DIR / "dockerfile.lark"), parser="lalr",
                                      lexer="contextual", start=_START_RULES, cache=True)
    return _line_parser


def _is_json(text: str) -> bool:
    """Whether ``text`` is one valid JSON value in Go's encoding/json syntax."""
    global _json_parser
    import lark

    if _json_parser is None:
        _json_parser = lark.Lark.open(str(_GRAMMAR_DIR / "json.lark"), parser="lalr",
                                      lexer="contextual", cache=True)
    try:
        _json_parser.parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


def _decode_json_strings(text: str) -> list[str]:
    """Decode a JSON array the grammar proved to hold only strings."""
    items = json.loads(text)
    # Go decodes an unpaired \uD800-style escape as U+FFFD; Python keeps the lone surrogate.
    return [re.sub("[\ud800-\udfff]", "\ufffd", s) if not s.isascii() else s for s in items]


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


def _split_name_values(keyword: str, words: list[str], rest: str) -> list[str]:
    """ENV/LABEL arguments as BuildKit's flat (key, value, separator) triples."""
    if not words:
        return []
    if "=" not in words[0]:
        # Legacy form "KEY value...": the value is the rest of the line verbatim.
        parts = _ASCII_BLANKS.split(rest, 1)
        if len(parts) < 2:
            raise _LineError(f"{keyword} must have two arguments", 0,
                             hint=f"write {keyword} {parts[0]}=<value>")
        return [parts[0], parts[1], ""]
    out = []
    for word in words:
        if "=" not in word:
            raise _LineError(f"Syntax error - can't find = in \"{word}\". Must be of the form: "
                             "name=value", rest.find(word),
                             hint="every word must be name=value when the first one is")
        key, _, value = word.partition("=")
        out += [key, value, "="]
    return out


def _check_not_json(text: str, offset: int) -> None:
    """Reject an argument that is valid JSON but not an array of strings."""
    if text.startswith("[") and _is_json(text):
        raise _LineError("when using JSON array syntax, arrays must be comprised of strings only",
                         offset, hint='write every element as a "double-quoted string"')


def parse_line(line: str, escape_token: str = "\\") -> Node:
    """Parse one logical line (continuations already joined) into a Node.

    Raises _LineError for BuildKit's parse-time argument errors.
    """
    s = line.strip(GO_SPACE)
    m = _ASCII_BLANKS.search(s)
    if m is None:
        cmd, rest, rest_at = s, "", len(line)
    else:
        lead = len(line) - len(line.lstrip(GO_SPACE))
        cmd, rest, rest_at = s[:m.start()], s[m.end():], lead + m.end()
    value = go_lower(cmd)
    node = Node(value=value, original=line, keyword=cmd)
    style = STYLES.get(value, "text")
    if rest:
        if style == "words":
            style = "words_bs" if escape_token == "\\" else "words_bt"
        try:
            tokens = _lark_parser().parse(rest, start=style).children
        except Exception as exc:  # noqa: BLE001 - a grammar gap must still be a DockerfileError
            raise _LineError(f"cannot parse the arguments of {cmd}: {exc}") from None
        _fill(node, value, style, tokens, rest, rest_at, escape_token)
    if value not in STYLES:
        node.args = [""]  # BuildKit keeps unknown instructions with one empty argument
    return node


def _fill(node: Node, value: str, style: str, tokens: list[Any], rest: str, rest_at: int,
          escape_token: str) -> None:
    """Turn the grammar's tokens for one line into the node's flags and arguments."""
    flags = []
    i = 0
    while i < len(tokens) and tokens[i].type in ("FLAG", "DASHDASH"):
        if tokens[i].type == "FLAG":
            flags.append(unquote_flag(tokens[i].value))
        i += 1
    node.flags = flags
    args = tokens[i:]
    if not args:
        return
    first = args[0]
    at = rest_at + first.start_pos
    kind = first.type
    if style == "health":
        node.args = [first.value]
        if len(args) == 1:
            return
        first = args[1]
        at = rest_at + first.start_pos
        kind = first.type
        args = args[1:]
    if kind == "JSON_STRINGS":
        node.args += _decode_json_strings(first.value)
        node.json_form = True
    elif kind == "TEXT":
        if style in ("exec_or_shell", "health"):
            _check_not_json(first.value, at)
            node.args.append(first.value)
        elif value == "onbuild":
            try:
                node.trigger = parse_line(first.value, escape_token)
            except _LineError as err:
                err.offset += at  # re-base the trigger's offset onto this line
                raise
        elif value in STYLES:
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
                node.args = _split_name_values(value.upper(), words, rest[first.start_pos:])
            except _LineError as err:
                err.offset += at
                raise


def _can_contain_heredoc(node: Node) -> bool:
    target = node.trigger if node.value == "onbuild" and node.trigger is not None else node
    return target.value in HEREDOC_INSTRUCTIONS and not target.json_form


def _locate(pre: PrePass, logical: LogicalLine, err: _LineError) -> DockerfileError:
    probe = Node(value="", original=logical.text, start_line=logical.start_line,
                 segments=logical.segments)
    line, column = probe.position(err.offset)
    return pre.error(err.message, line, column, end_line=logical.end_line, hint=err.hint)


def _shift_segments(node: Node, parent: Node) -> None:
    """Give an ONBUILD trigger the parent's line span and positions."""
    node.start_line, node.end_line = parent.start_line, parent.end_line
    base = parent.original.rfind(node.original) if node.original else 0
    node.segments = []
    for off, line, col in parent.segments:
        if off <= base:
            node.segments = [(0, line, col + base - off)]
        else:
            node.segments.append((off - base, line, col))
    if node.trigger is not None:
        _shift_segments(node.trigger, node)


def parse(text: str, filename: str = "Dockerfile") -> SyntaxTree:
    """Parse Dockerfile ``text`` into a raw SyntaxTree, accepting exactly what BuildKit's
    parser accepts (unknown instructions and flags included; validation comes later).

    Raises DockerfileError (with file, line, column, source line and hint) for what BuildKit's
    parser rejects: no instructions, ``ENV key`` without value, JSON arrays with non-strings,
    unterminated heredocs, repeated or invalid directives, over-long lines.
    """
    pre = PrePass(text, filename)
    children: list[Node] = []
    while True:
        logical = pre.next_line()
        if logical is None:
            break
        try:
            node = parse_line(logical.text, pre.escape_token)
        except _LineError as err:
            raise _locate(pre, logical, err) from None
        node.start_line, node.end_line = logical.start_line, logical.end_line
        node.segments = logical.segments
        node.prev_comments = logical.comments
        if node.trigger is not None:
            _shift_segments(node.trigger, node)
        if "<<" in logical.text and _can_contain_heredoc(node):
            try:
                docs = heredocs_from_line(logical.text)
            except HeredocSyntaxError as exc:
                raise _locate(pre, logical, _LineError(str(exc), logical.text.find("<<"))) from None
            if docs:
                node.end_line = pre.read_heredoc_bodies(docs, logical.start_line)
                node.heredocs = docs
                if node.trigger is not None:
                    node.trigger.heredocs = docs
                    node.trigger.end_line = node.end_line
        children.append(node)
    if not children:
        raise DockerfileError("file with no instructions", filename=filename,
                              hint="a Dockerfile needs at least one instruction, "
                                   "e.g. FROM <image>")
    return SyntaxTree(filename=filename, children=children, directives=pre.directives,
                      escape_token=pre.escape_token, warnings=pre.warnings, lines=pre.lines)
