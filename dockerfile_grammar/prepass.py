"""The hand-written pre-pass: physical lines -> directives, logical lines and heredoc bodies.

What a context-free grammar cannot do lives here, following BuildKit's line scanner:
parser directives at the top of the file (``syntax``, ``escape``, ``check``), the escape
character, line continuations (with comment lines dropped and blank lines warned about inside
them), the UTF-8 BOM, CRLF line ends, and reading heredoc bodies after their instruction line.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from .errors import DockerfileError
from .goquote import GO_SPACE
from .syntax import Directive, Heredoc, ParseWarning

MAX_LINE_BYTES = 65535  # BuildKit's scanner limit (bufio.MaxScanTokenSize - 1)
MAYBE_TOO_LONG = MAX_LINE_BYTES // 4  # UTF-8 needs at most 4 bytes per character
LEADING_BLANKS = frozenset(GO_SPACE) | {""}  # first characters that call for a left strip
VALID_DIRECTIVES = ("syntax", "escape", "check")
# After "#" and optional blanks: name, "=", value (Go's \s is [\t\n\f\r ]).
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
EMPTY_CONTINUATION_DETAIL = "Empty continuation lines will become errors in a future release"


class LogicalLine(NamedTuple):
    """One instruction's text after continuation joining."""

    text: str
    start_line: int
    end_line: int
    comments: list[str]


class PrePass:
    """Walks the physical lines of one Dockerfile, BuildKit style.

    Call ``next_line()`` until it returns None; after each line the caller may call
    ``read_heredoc_bodies()`` to consume the bodies of the heredocs that line introduced.
    """

    def __init__(self, text: str, filename: str = "Dockerfile") -> None:
        self.filename = filename
        if text.startswith("\ufeff"):
            text = text[1:]  # a UTF-8 byte-order mark
        lines = text.split("\n")
        # A final "\n" ends the last line; it does not start an empty one.
        self.ends_with_newline = len(lines) > 1 and lines[-1] == ""
        if lines[-1] == "":
            lines.pop()
        self.lines = lines
        self.pos = 0                      # index of the next physical line to read
        self.escape_token = "\\"
        self.directives: list[Directive] = []
        self.warnings: list[ParseWarning] = []
        # Directives can only come first: a first line that is not a comment ends the block
        # before it starts (BuildKit's directive parser stops at the first non-"#" line).
        self.directives_done = not (lines and lines[0].lstrip(GO_SPACE).startswith("#"))
        self.comments: list[str] = []

    # -- errors -----------------------------------------------------------------------------

    def error(self, message: str, line: int, column: int = 1, *, end_line: int | None = None,
              hint: str | None = None) -> DockerfileError:
        """A DockerfileError pointing at a physical line (1-based) of this file."""
        source = self.lines[line - 1].rstrip("\r") if 0 < line <= len(self.lines) else None
        return DockerfileError(message, filename=self.filename, line=line, column=column,
                               source_line=source, hint=hint, end_line=end_line)

    def position(self, start_line: int, offset: int) -> tuple[int, int]:
        """(line, column) of character ``offset`` of the logical line starting at
        ``start_line``."""
        return source_position(self.lines, self.escape_token, start_line, offset)

    # -- physical lines -----------------------------------------------------------------------

    def _take(self) -> str:
        raw = self.lines[self.pos]
        self.pos += 1
        if len(raw) > MAYBE_TOO_LONG:
            self._check_length(raw)
        return raw

    def _directive(self, token: str, line: int, lead: int) -> bool:
        """Record ``token`` as a parser directive if it is one; True when it was.

        ``lead`` is the number of blanks stripped before ``token`` (for error columns).
        """
        if self.directives_done:
            return False
        if not token.startswith("#"):
            self.directives_done = True
            return False
        m = _DIRECTIVE.match(token[1:].lstrip(GO_SPACE))
        if m is None or m.group(1).lower() not in VALID_DIRECTIVES:
            self.directives_done = True
            return False
        name, value = m.group(1).lower(), m.group(2)
        column = lead + token.index(m.group(1)) + 1
        if any(d.name == name for d in self.directives):
            raise self.error(f"only one {name} parser directive can be used", line, column,
                             hint=f"remove the repeated '# {name}=' line")
        if name == "escape":
            if value not in ("\\", "`"):
                raise self.error(f"invalid escape token '{value}' does not match ` or \\", line,
                                 lead + token.index(value, column - lead) + 1,
                                 hint="use '# escape=\\' or '# escape=`'")
            self.escape_token = value
        self.directives.append(Directive(name=name, value=value, line=line))
        return True

    def _check_length(self, raw: str) -> None:
        if len(raw.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
            raise self.error(f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}",
                             self.pos, hint="split the line with a line continuation")

    def note_comment(self, raw: str) -> None:
        """Remember a comment line for the next instruction's ``prev_comments``."""
        # BuildKit drops the first byte and trims: "  # x" is remembered as "# x".
        comment = raw[1:].strip(GO_SPACE)
        if comment:
            self.comments.append(comment)
        else:
            self.comments = []

    # -- logical lines ------------------------------------------------------------------------

    def next_line(self) -> LogicalLine | None:
        """The next instruction's logical line, or None at the end of the file."""
        while self.pos < len(self.lines):
            raw = self._take()
            line_no = self.pos
            stripped = raw.lstrip(GO_SPACE)
            is_comment = stripped.startswith("#")
            if is_comment:
                self.note_comment(raw)
            token = stripped.rstrip("\r\n")
            if (not self.directives_done
                    and self._directive(token, line_no, len(raw) - len(stripped))
                    and self.comments):
                self.comments.pop()  # a directive is not a doc comment
            if is_comment:
                continue
            text, end_of_line = trim_continuation(token, self.escape_token)
            if end_of_line and not text:
                continue
            if not end_of_line:
                rest, first_empty = self._continue()
                text += rest
                if first_empty:
                    self.warnings.append(ParseWarning(
                        short="Empty continuation line found in: " + text,
                        detail=EMPTY_CONTINUATION_DETAIL, line=first_empty,
                        rule="NoEmptyContinuation"))
            comments, self.comments = self.comments, []
            return LogicalLine(text, line_no, self.pos, comments)
        return None

    def _continue(self) -> tuple[str, int]:
        """The rest of a continued logical line and the first blank line inside it (0 when
        none): comment lines vanish, blank lines are skipped, pieces join with nothing between.
        """
        lines = self.lines
        esc = self.escape_token
        parts = []
        first_empty = 0
        pos = self.pos
        n = len(lines)
        while pos < n:
            raw = lines[pos]
            pos += 1
            if len(raw) > MAYBE_TOO_LONG:
                self.pos = pos
                self._check_length(raw)
            token = raw.rstrip("\r") if raw[-1:] == "\r" else raw
            stripped = token.lstrip(GO_SPACE) if token[:1] in LEADING_BLANKS else token
            if not stripped:
                first_empty = first_empty or pos
                continue
            if stripped[0] == "#":
                continue  # comment lines inside a continuation vanish
            # trim_continuation, inlined: this loop runs for most lines of most Dockerfiles.
            t = token.rstrip(" \t") if token[-1] in " \t" else token
            if t[-1] == esc and (len(t) == 1 or t[-2] != esc):
                parts.append(t[:-1])
            else:
                parts.append(token)
                break
        self.pos = pos
        return "".join(parts), first_empty

    def read_heredoc_bodies(self, heredocs: list[Heredoc], start_line: int) -> int:
        """Fill in each heredoc's content from the following lines; returns the last line used.

        The body is raw: line ends are kept as written (CRLF too). The terminator line must
        equal the delimiter (after removing leading tabs for ``<<-``).
        """
        lines = self.lines
        for doc in heredocs:
            body = []
            while True:
                if self.pos >= len(lines):
                    raise self.error("unterminated heredoc", start_line, end_line=self.pos,
                                     hint=f"add a line containing only '{doc.name}' after the "
                                          "heredoc body")
                raw = self._take()
                candidate = raw.rstrip("\r\n")
                if doc.chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == doc.name:
                    break
                has_newline = self.pos < len(lines) or self.ends_with_newline
                body.append(raw + "\n" if has_newline else raw)
            doc.content = "".join(body)
        return self.pos


def trim_continuation(s: str, esc: str) -> tuple[str, bool]:
    """Strip a trailing escape character (plus blanks); True in [1] when none was there.

    An escape character preceded by another escape character is literal, as in BuildKit.
    """
    t = s.rstrip(" \t")
    if t.endswith(esc) and (len(t) == 1 or t[-2] != esc):
        return t[:-1], False
    return s, True


def source_position(lines: list[str], esc: str, start_line: int, offset: int
                    ) -> tuple[int, int]:
    """(line, column), both 1-based, of character ``offset`` of the logical line that starts
    on physical line ``start_line``, re-reading the lines as the pre-pass joined them."""
    raw = lines[start_line - 1]
    stripped = raw.lstrip(GO_SPACE)
    piece, end_of_line = trim_continuation(stripped.rstrip("\r\n"), esc)
    line, col, base = start_line, len(raw) - len(stripped) + 1, 0
    pos = start_line
    while offset >= base + len(piece) and not end_of_line and pos < len(lines):
        raw = lines[pos]
        pos += 1
        token = raw.rstrip("\r\n")
        stripped = token.lstrip(GO_SPACE)
        if not stripped or stripped[0] == "#":
            continue
        base += len(piece)
        piece, end_of_line = trim_continuation(token, esc)
        line, col = pos, 1
    return line, col + offset - base


def _directive_scan(lines: list[str], prefix: str, key: str, first_line: int
                    ) -> tuple[str, str, int] | None:
    seen: set[str] = set()
    for number, line in enumerate(lines, start=first_line + 1):
        if not line.startswith(prefix):
            return None
        m = _DIRECTIVE.match(line[len(prefix):].lstrip(GO_SPACE))
        if m is None or m.group(1).lower() not in VALID_DIRECTIVES:
            return None
        name = m.group(1).lower()
        if name in seen:
            return None
        seen.add(name)
        if name == key:
            value = m.group(2)
            return value.split(" ", 1)[0], value, number
    return None


def detect_directive(text: str, key: str = "syntax", any_format: bool = True
                     ) -> tuple[str, str, int] | None:
    """Find a parser directive the way BuildKit selects a frontend, without parsing the file.

    Returns (value up to the first space, full value, 1-based line) or None. A ``#!`` first
    line is skipped. With ``any_format`` (BuildKit does this for ``syntax`` only) the
    ``//key=value`` comment style and a JSON document ``{"key": "..."}`` are accepted too.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    first_line = 0
    if text.startswith("#!"):
        text = text.partition("\n")[2]
        first_line = 1
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    found = _directive_scan(lines, "#", key, first_line)
    if found is not None or not any_format:
        return found
    found = _directive_scan(lines, "//", key, first_line)
    if found is not None:
        return found
    import json

    def _reject(name: str) -> None:
        raise ValueError(name)  # Go's JSON has no NaN/Infinity

    try:
        doc = json.loads(text, parse_constant=_reject)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get(key), str):
        return doc[key], doc[key], first_line
    return None
