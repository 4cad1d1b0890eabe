"""Recognising here-document words (``<<EOF``, ``3<<-'EOF'``) the way BuildKit does.

BuildKit finds heredocs by running its shell-word lexer over the whole instruction line with
quotes and escapes kept and unset variables left as written, then testing every word against
``^(\\d*)<<(-?)\\s*([^<]*)$``. The delimiter is lexed twice more (quotes removed / kept): if the
two differ in quote count, part of the delimiter was quoted and the body is not expanded.

The lexer here is that word lexer specialised to an empty environment, which is all heredoc
recognition needs (variable expansion proper lives in ``expansion.py``). The escape character is
always ``\\`` here, whatever the ``# escape=`` directive says, as in BuildKit.
"""
from __future__ import annotations

import re

from .expansion import SPECIAL_PARAMS, substitution_start_error
from .goquote import GO_SPACE
from .syntax import Heredoc

_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_ESC = "\\"


class HeredocSyntaxError(ValueError):
    """A heredoc delimiter word that cannot be lexed (e.g. an unbalanced quote)."""


class _WordLexer:
    """BuildKit's shell-word lexer with an empty environment and unset variables kept."""

    def __init__(self, text: str, raw_quotes: bool, raw_escapes: bool) -> None:
        self.text = text
        self.pos = 0
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        # One word buffer shared by nested ${...} processing, as in BuildKit (a nested call
        # resets it; reproduced because it decides which words are seen).
        self.buf: list[str] = []

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        if self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            return ch
        return ""

    def words(self) -> list[str]:
        return self._process_stop_on("", self.raw_escapes)[1]

    # -- the lexer proper -------------------------------------------------------------------

    def _process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        self.buf.clear()
        buf = self.buf
        words: list[str] = []
        in_word = False
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes

        def flush() -> None:
            if buf:
                words.append("".join(buf))
                buf.clear()

        def add_char(c: str) -> None:
            nonlocal in_word
            if c in GO_SPACE:
                if in_word and buf:
                    words.append("".join(buf))
                    buf.clear()
                    in_word = False
            else:
                buf.append(c)
                in_word = True

        try:
            while self.pos < len(self.text):
                ch = self.peek()
                if stop and ch == stop:
                    self.next()
                    flush()
                    return "".join(result), words
                if ch == "$":
                    tmp = self._process_dollar()
                    result.append(tmp)
                    for c in tmp:
                        add_char(c)
                elif ch == "<" or ch == "'" or ch == '"':
                    tmp = self._process_possible_heredoc() if ch == "<" else self._process_quoted()
                    result.append(tmp)
                    if tmp:
                        buf.append(tmp)
                    in_word = True
                else:
                    ch = self.next()
                    if ch == _ESC:
                        if self.raw_escapes:
                            buf.append(ch)
                            in_word = True
                            result.append(ch)
                        ch = self.next()
                        if ch == "":
                            break
                        buf.append(ch)
                        in_word = True
                    else:
                        add_char(ch)
                    result.append(ch)
            if stop:
                raise HeredocSyntaxError(
                    f"unexpected end of statement while looking for matching {stop}")
            flush()
            return "".join(result), words
        finally:
            self.raw_escapes = saved

    def _process_quoted(self) -> str:
        """A quoted string, the quotes kept with raw_quotes: inside '...' everything is literal;
        inside "..." $ references are lexed and the escape character escapes only " $ and
        itself."""
        quote = self.next()
        double = quote == '"'
        out = [quote] if self.raw_quotes else []
        while True:
            nxt = self.peek()
            if nxt == "":
                raise HeredocSyntaxError("unexpected end of statement while looking for matching "
                                         + ("double-quote" if double else "single-quote"))
            if nxt == quote:
                self.next()
                if self.raw_quotes:
                    out.append(quote)
                return "".join(out)
            if double and nxt == "$":
                out.append(self._process_dollar())
                continue
            ch = self.next()
            if double and ch == _ESC:
                if self.raw_escapes:
                    out.append(ch)
                after = self.peek()
                if after == "":
                    continue
                if after in ('"', "$", _ESC):
                    ch = self.next()
            out.append(ch)

    def _process_name(self) -> str:
        name = []
        while self.pos < len(self.text):
            ch = self.peek()
            if not name and ch.isdecimal():
                while self.peek() != "" and self.peek().isdecimal():
                    name.append(self.next())
                return "".join(name)
            if not name and ch in SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            name.append(self.next())
        return "".join(name)

    def _process_dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self._process_name()
            return "$" + name if name else "$"
        self.next()
        err = substitution_start_error(self.peek())
        if err:
            raise HeredocSyntaxError(err)
        name = self._process_name()
        ch = self.next()
        mod = ch
        if ch == "}":
            return "${" + name + "}"
        if ch in ":+-?#%":
            null_is_unset = ch == ":"
            if null_is_unset:
                ch = self.next()
                mod += ch
            raw = ch in "#%"
            if null_is_unset and raw:
                raise HeredocSyntaxError(f"unsupported modifier ({mod}) in substitution")
            word = self._word_until("}", raw, "'}'")
            return "${" + name + mod + word + "}"
        if ch == "/":
            if self.peek() == "/":
                self.next()
            pattern = self._word_until("/", True, "'/' in ${}")
            repl = self._word_until("}", True, "'}'")
            return "${" + name + "/" + pattern + "/" + repl + "}"
        raise HeredocSyntaxError(f"unsupported modifier ({mod}) in substitution")

    def _word_until(self, stop: str, raw_escapes: bool, missing: str) -> str:
        """The word up to ``stop``; running out of input names what is missing."""
        try:
            return self._process_stop_on(stop, raw_escapes)[0]
        except HeredocSyntaxError:
            if self.peek() == "":
                raise HeredocSyntaxError(f"syntax error: missing {missing}") from None
            raise

    def _process_possible_heredoc(self) -> str:
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        space = []
        while self.peek() in ("\t", "\r", " "):
            space.append(self.next())
        return "<<" + "".join(space)


def parse_heredoc_word(word: str, *, strict: bool = True) -> Heredoc | None:
    """The heredoc a single word introduces (``<<EOF``, ``3<<-"EOF"``...), or None.

    Raises HeredocSyntaxError for a delimiter with unbalanced quotes (``<<'EOF``); with
    ``strict=False`` such a word is no heredoc (BuildKit's MustParseHeredoc, which COPY and
    ADD use on their arguments).
    """
    try:
        return _parse_heredoc_word(word)
    except HeredocSyntaxError:
        if strict:
            raise
        return None


def _parse_heredoc_word(word: str) -> Heredoc | None:
    m = _HEREDOC_WORD.match(word)
    if m is None or not m.group(3):
        return None
    rest = m.group(3)
    words = _WordLexer(rest, raw_quotes=False, raw_escapes=False).words()
    if len(words) != 1:
        return None
    raw = _WordLexer(rest, raw_quotes=True, raw_escapes=False).words()
    if len(raw) != 1:
        raise HeredocSyntaxError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    name = words[0]
    quotes = name.count("'") + name.count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(name=name, content="", expand=quotes == raw_quotes, chomp=m.group(2) == "-",
                   file_descriptor=int(m.group(1)) if m.group(1) else 0)


def heredocs_from_line(line: str) -> list[Heredoc]:
    """Every heredoc introduced on one logical instruction line, in order (bodies empty)."""
    try:
        words = _WordLexer(line, raw_quotes=True, raw_escapes=True).words()
    except HeredocSyntaxError:
        return []  # BuildKit ignores lexing errors of the whole line here
    docs = []
    for word in words:
        doc = parse_heredoc_word(word)
        if doc is not None:
            docs.append(doc)
    return docs


def chomp_heredoc_content(content: str) -> str:
    """Remove leading tabs from every line (what ``<<-`` means), as BuildKit does."""
    return re.sub(r"(?m)^\t+", "", content)
