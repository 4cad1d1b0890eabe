"""Dockerfile text -> raw syntax tree (BuildKit's parser layer, no validation).

``parse`` walks the physical lines with the pre-pass (prepass.py: directives, escape
character, continuations, comments, heredoc bodies) and turns each logical line into a Node
with arguments.py (the grammar in dockerfile.lark). Heredoc bodies are read right after the
line that introduces them, so the two take turns line by line, as in BuildKit.

Plain one-line instructions (most lines of most Dockerfiles) are recognised in the main loop
and go straight to the fast path, without the general pre-pass bookkeeping.
"""
from __future__ import annotations

from .arguments import (ASCII_BLANKS, KEYWORDS, STYLES, LineError, fast_node, node_from_parts,
                        parse_line)
from .errors import DockerfileError
from .heredoc import HeredocSyntaxError, heredocs_from_line
from .prepass import LEADING_BLANKS, MAYBE_TOO_LONG, LogicalLine, PrePass
from .syntax import Node, SyntaxTree

__all__ = ["parse", "parse_line", "STYLES"]

HEREDOC_INSTRUCTIONS = ("run", "copy", "add")
# Argument styles whose text is the argument itself (ONBUILD excepted: it nests a node).
_TEXT_STYLE = STYLES["user"]
_EXEC_STYLE = STYLES["run"]
# First characters of the argument text that need the full line parser: none (no argument),
# blanks (more than one separator), a possible flag.
_NOT_PLAIN_TEXT = frozenset(["", "\t", "\v", "\f", "\r", " ", "-"])
# Last characters after which a line needs the general pre-pass: a possible continuation
# (either escape character) or trailing blanks.
_NOT_SIMPLE_END = frozenset(" \t\r\v\f\\`")


def _can_contain_heredoc(node: Node) -> bool:
    target = node.trigger if node.value == "onbuild" and node.trigger is not None else node
    return target.value in HEREDOC_INSTRUCTIONS and not target.json_form


def _locate(pre: PrePass, logical: LogicalLine, err: LineError) -> DockerfileError:
    line, column = pre.position(logical.start_line, err.offset)
    return pre.error(err.message, line, column, end_line=logical.end_line, hint=err.hint)


def _span_triggers(node: Node) -> None:
    """Give ONBUILD triggers (nested) the line span of the instruction that holds them."""
    trigger = node.trigger
    while trigger is not None:
        trigger.start_line, trigger.end_line = node.start_line, node.end_line
        trigger = trigger.trigger


def _node_from_logical(pre: PrePass, logical: LogicalLine, use_grammar: bool) -> Node:
    """Parse one logical line from the general pre-pass and attach its heredoc bodies."""
    try:
        node = parse_line(logical.text, pre.escape_token, use_grammar=use_grammar)
    except LineError as err:
        raise _locate(pre, logical, err) from None
    node.start_line, node.end_line = logical.start_line, logical.end_line
    node.prev_comments = logical.comments
    if node.trigger is not None:
        _span_triggers(node)
    if "<<" in logical.text and _can_contain_heredoc(node):
        try:
            docs = heredocs_from_line(logical.text)
        except HeredocSyntaxError as exc:
            raise _locate(pre, logical, LineError(str(exc), logical.text.find("<<"))) from None
        if docs:
            node.end_line = pre.read_heredoc_bodies(docs, logical.start_line)
            node.heredocs = docs
            if node.trigger is not None:
                node.trigger.heredocs = docs
                node.trigger.end_line = node.end_line
    return node


def parse(text: str, filename: str = "Dockerfile", *, use_grammar: bool = False) -> SyntaxTree:
    """Parse Dockerfile ``text`` into a raw SyntaxTree, accepting exactly what BuildKit's
    parser accepts (unknown instructions and flags included; validation comes later).

    ``use_grammar=True`` takes the reference route everywhere: every line goes through the
    general pre-pass and the Lark grammar, no fast paths. The result is the same, only slower;
    tests compare the two.

    Raises DockerfileError (with file, line, column, source line and hint) for what BuildKit's
    parser rejects: no instructions, ``ENV key`` without value, JSON arrays with non-strings,
    unterminated heredocs, repeated or invalid directives, over-long lines.
    """
    pre = PrePass(text, filename)
    lines = pre.lines
    n = len(lines)
    children: list[Node] = []
    append = children.append
    while pre.pos < n:
        if pre.directives_done and not use_grammar:
            # Blank lines, comment lines and plain one-line instructions (no leading blank, no
            # continuation, no heredoc) skip the general pre-pass. State lives in locals here
            # and is written back before the general path runs.
            pos = pre.pos
            esc = pre.escape_token
            comments = pre.comments
            while pos < n:
                raw = lines[pos]
                if not raw:
                    pos += 1
                    continue
                first = raw[0]
                if first == "#":
                    pos += 1
                    pre.comments = comments
                    pre.note_comment(raw)
                    comments = pre.comments
                    continue
                if (first in LEADING_BLANKS or raw[-1] in _NOT_SIMPLE_END or "<<" in raw
                        or len(raw) > MAYBE_TOO_LONG):
                    break
                cmd, _, text = raw.partition(" ")
                known = KEYWORDS.get(cmd)
                if known is not None and text[:1] not in _NOT_PLAIN_TEXT and (
                        raw.isascii() or raw.isprintable()):
                    # The usual "KEYWORD args" line without flags: straight to the arguments.
                    # (ASCII rules out blanks a split would miss; printable rules out all but
                    # " ", so str.split is BuildKit's split.)
                    value, style = known
                    if (style is _EXEC_STYLE and text[0] != "["
                            or style is _TEXT_STYLE and value != "onbuild"):
                        node = Node(value, raw, [text], [], False, pos + 1, pos + 1, [], None,
                                    cmd, comments)
                    else:
                        try:
                            node = node_from_parts(
                                value, style, cmd, text, len(cmd) + 1, [],
                                str.split if raw.isprintable() else ASCII_BLANKS.split, esc,
                                raw, pos + 1, pos + 1, comments)
                        except LineError:
                            node = None  # the general path reports it, with its location
                else:
                    try:
                        node = fast_node(raw, esc, raw, pos + 1, pos + 1, comments)
                    except LineError:
                        node = None
                if node is None:
                    break
                pos += 1
                comments = []  # the node owns the previous list now
                if node.trigger is not None:
                    _span_triggers(node)
                append(node)
            pre.pos = pos
            pre.comments = comments
            if pos >= n:
                break
        logical = pre.next_line()
        if logical is not None:
            append(_node_from_logical(pre, logical, use_grammar))
    if not children:
        raise DockerfileError("file with no instructions", filename=filename,
                              hint="a Dockerfile needs at least one instruction, "
                                   "e.g. FROM <image>")
    return SyntaxTree(filename=filename, children=children, directives=pre.directives,
                      escape_token=pre.escape_token, warnings=pre.warnings, lines=pre.lines)
