"""Dockerfile variable expansion, behaving like BuildKit's shell lexer (frontend/dockerfile/shell).

The lexer removes quotes, applies escapes and replaces ``$name`` / ``${name...}`` references.
Supported: ``$v ${v} ${v:-w} ${v-w} ${v:+w} ${v+w} ${v:?msg} ${v?msg} ${v#p} ${v##p} ${v%p}
${v%%p} ${v/p/r} ${v//p/r}``; everything else inside ``${}`` is an error, as in BuildKit.

It is a hand-written scanner over the string: runs of ordinary characters are copied in one
slice (found with one compiled pattern search), only the special characters are looked at one
by one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

from .errors import DockerfileError
from .goquote import GO_SPACE

_WS_RUN = re.compile("[" + re.escape(GO_SPACE) + "]+")
# The shell's special parameters, each a whole variable name on its own ($@, $?, ${#}...).
SPECIAL_PARAMS = frozenset("@*#?-$!0")


def substitution_start_error(first: str) -> str | None:
    """BuildKit's complaint about the character after ``${`` ("" at the end of the input), or
    None when a name may start there."""
    if first == "":
        return "syntax error: missing '}'"
    if first in "{}:":
        return "syntax error: bad substitution"
    return None


@dataclass
class ExpansionResult:
    """Outcome of one expansion: the single-word value, the split words and the names looked up."""

    value: str
    words: list[str] = field(default_factory=list)
    matched: set[str] = field(default_factory=set)     # referenced and set (maybe empty)
    unmatched: set[str] = field(default_factory=set)   # referenced but not set


class _ExpandError(Exception):
    """Internal: carries the lexer's message up to the public entry point."""


class _Words:
    """Word splitting of the expanded text (BuildKit's wordsStruct).

    Unquoted text and variable values are split on whitespace; quoted text and escaped
    characters are appended raw.
    """

    __slots__ = ("buf", "words")

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []

    def add_string(self, text: str) -> None:
        parts = _WS_RUN.split(text)
        if parts[0]:
            self.buf.append(parts[0])
        for part in parts[1:]:
            if self.buf:
                self.words.append("".join(self.buf))
                self.buf = []
            if part:
                self.buf.append(part)

    def add_raw(self, text: str) -> None:
        self.buf.append(text)

    def finish(self) -> list[str]:
        word = "".join(self.buf)
        if word:
            self.words.append(word)
        self.buf = []
        return self.words


@lru_cache(maxsize=64)
def _special_chars(escape: str, stop: str, quotes: bool) -> re.Pattern[str]:
    chars = "$" + escape + stop + ("'\"" if quotes else "")
    return re.compile("[" + re.escape(chars) + "]")


class Lexer:
    """BuildKit-compatible word processor.

    Options mirror BuildKit's Lex: ``raw_quotes`` keeps quote characters in the output,
    ``raw_escapes`` keeps escape characters, ``skip_process_quotes`` treats quotes as ordinary
    characters (used for heredoc bodies), ``skip_unset`` leaves references to unset variables
    as written instead of expanding them to "".
    """

    def __init__(self, escape: str = "\\", *, raw_quotes: bool = False, raw_escapes: bool = False,
                 skip_process_quotes: bool = False, skip_unset: bool = False) -> None:
        if escape not in ("\\", "`"):
            raise DockerfileError(f"invalid escape token {escape!r}: must be \\ or `")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset = skip_unset

    def process(self, word: str, env: Mapping[str, str], *, split: bool = False) -> ExpansionResult:
        """Expand ``word``; with ``split`` also compute the whitespace-split word list."""
        if not self._needs_work(word):
            return ExpansionResult(word, _split_plain(word) if split else [])
        state = _State(self, word, env, split)
        try:
            value, words = state.stop_on("", self.raw_escapes, split)
        except _ExpandError as exc:
            raise DockerfileError(f"failed to process {_go_quote(word)}: {exc}",
                                  hint="see the variable substitution rules of the Dockerfile "
                                       "reference; escape a literal $ as \\$") from None
        return ExpansionResult(value, words if split else [], state.matched, state.unmatched)

    def _needs_work(self, word: str) -> bool:
        if "$" in word or self.escape in word:
            return True
        return not self.skip_process_quotes and ("'" in word or '"' in word)


def _split_plain(word: str) -> list[str]:
    return [w for w in _WS_RUN.split(word) if w]


class _State:
    """One expansion in progress: the input, the cursor and the names looked up."""

    __slots__ = ("lex", "s", "i", "n", "env", "matched", "unmatched", "raw_escapes", "split")

    def __init__(self, lex: Lexer, word: str, env: Mapping[str, str], split: bool) -> None:
        self.lex = lex
        self.s = word
        self.i = 0
        self.n = len(word)
        self.env = env
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()
        self.raw_escapes = lex.raw_escapes
        self.split = split

    def peek(self) -> str:
        return self.s[self.i] if self.i < self.n else ""

    def get_env(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        if value is None:
            self.unmatched.add(name)
            return "", False
        self.matched.add(name)
        return value, True

    def stop_on(self, stop: str, raw_escapes: bool, split: bool = False) -> tuple[str, list[str]]:
        """Process up to ``stop`` (consumed) or the end when ``stop`` is ""."""
        saved_raw = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._stop_on(stop, split)
        finally:
            self.raw_escapes = saved_raw

    def _stop_on(self, stop: str, split: bool) -> tuple[str, list[str]]:
        lex = self.lex
        esc = lex.escape
        quotes = not lex.skip_process_quotes
        specials = _special_chars(esc, stop, quotes)
        s, n = self.s, self.n
        out: list[str] = []
        words = _Words() if split else None
        while self.i < n:
            m = specials.search(s, self.i)
            j = m.start() if m else n
            if j > self.i:
                chunk = s[self.i:j]
                out.append(chunk)
                if words is not None:
                    words.add_string(chunk)
                self.i = j
                if j == n:
                    break
            ch = s[j]
            if stop and ch == stop:
                self.i += 1
                return "".join(out), (words.finish() if words is not None else [])
            if ch == "$":
                tmp = self.dollar()
                out.append(tmp)
                if words is not None:
                    words.add_string(tmp)
            elif ch == "'" and quotes:
                tmp = self.single_quote()
                out.append(tmp)
                if words is not None:
                    words.add_raw(tmp)
            elif ch == '"' and quotes:
                tmp = self.double_quote()
                out.append(tmp)
                if words is not None:
                    words.add_raw(tmp)
            else:  # the escape character
                self.i += 1
                if self.raw_escapes:
                    out.append(ch)
                    if words is not None:
                        words.add_raw(ch)
                if self.i >= n:        # an escape at the very end is dropped
                    break
                nxt = s[self.i]
                self.i += 1
                out.append(nxt)
                if words is not None:
                    words.add_raw(nxt)
        if stop:
            raise _ExpandError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), (words.finish() if words is not None else [])

    def single_quote(self) -> str:
        # Everything up to the next ' is literal; a ' cannot be escaped inside.
        start = self.i
        end = self.s.find("'", start + 1)
        if end < 0:
            self.i = self.n
            raise _ExpandError("unexpected end of statement while looking for matching single-quote")
        self.i = end + 1
        if self.lex.raw_quotes:
            return self.s[start:end + 1]
        return self.s[start + 1:end]

    def double_quote(self) -> str:
        # Literal except $ expansions and the escape char before " $ or the escape char.
        esc = self.lex.escape
        raw_quotes = self.lex.raw_quotes
        out: list[str] = ['"'] if raw_quotes else []
        s, n = self.s, self.n
        self.i += 1
        while True:
            if self.i >= n:
                raise _ExpandError("unexpected end of statement while looking for matching double-quote")
            ch = s[self.i]
            if ch == '"':
                self.i += 1
                if raw_quotes:
                    out.append('"')
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.i += 1
            if ch == esc:
                if self.raw_escapes:
                    out.append(ch)
                if self.i >= n:
                    continue
                if s[self.i] in ('"', "$", esc):
                    ch = s[self.i]
                    self.i += 1
            out.append(ch)

    def name(self) -> str:
        """A variable name: digits only, one special parameter, or letters/digits/_."""
        s, n, i = self.s, self.n, self.i
        if i >= n:
            return ""
        ch = s[i]
        if ch.isdecimal():
            j = i
            while j < n and s[j].isdecimal():
                j += 1
            self.i = j
            return s[i:j]
        if ch in SPECIAL_PARAMS:
            self.i = i + 1
            return ch
        j = i
        while j < n and (s[j].isalpha() or s[j].isdecimal() or s[j] == "_"):
            j += 1
        self.i = j
        return s[i:j]

    def dollar(self) -> str:
        self.i += 1
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.get_env(name)
            if not found and self.lex.skip_unset:
                return "$" + name
            return value
        self.i += 1
        err = substitution_start_error(self.peek())
        if err:
            raise _ExpandError(err)
        name = self.name()
        ch = self.peek()
        if not ch:
            # BuildKit reports an "unsupported modifier" made of EOF here; say what is missing.
            raise _ExpandError("syntax error: missing '}'")
        self.i += 1
        mod = ch
        null_is_unset = False
        if ch == "}":
            value, found = self.get_env(name)
            if not found and self.lex.skip_unset:
                return "${" + name + "}"
            return value
        if ch == ":":
            null_is_unset = True
            ch = self.peek()
            self.i += 1
            mod += ch
        elif ch == "/":
            return self._replace(name)
        elif ch not in ("+", "-", "?", "#", "%"):
            raise _ExpandError(f"unsupported modifier ({mod}) in substitution")
        raw = ch in ("#", "%")
        if null_is_unset and raw:
            raise _ExpandError(f"unsupported modifier ({mod}) in substitution")
        word = self._word_until("}", raw, "'}'")
        value, found = self.get_env(name)
        if self.lex.skip_unset and not found:
            return "${" + name + mod + word + "}"
        empty = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else value
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if not found:
                raise _ExpandError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _ExpandError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _ExpandError(f"unsupported modifier ({mod}) in substitution")

    def _word_until(self, stop: str, raw_escapes: bool, missing: str) -> str:
        """The word up to ``stop``; running out of input names what is missing."""
        try:
            return self.stop_on(stop, raw_escapes)[0]
        except _ExpandError:
            if self.i >= self.n:
                raise _ExpandError(f"syntax error: missing {missing}") from None
            raise

    def _replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.i += 1
        pattern = self._word_until("/", True, "'/' in ${}")
        replacement = self._word_until("}", True, "'}'")
        value, found = self.get_env(name)
        if self.lex.skip_unset and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, True, False)
        if replace_all:
            # Go's ReplaceAllString expands $0 / ${0} / $$ in the replacement.
            return regex.sub(lambda m: _go_template(replacement, m.group(0)), value)
        m = regex.search(value)
        if m is None:
            return value
        return value[:m.start()] + replacement + value[m.end():]


@lru_cache(maxsize=256)
def _pattern_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """Shell glob (``*``, ``?``, ``\\`` escapes) -> compiled regex, like BuildKit."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            nxt = pattern[i] if i < n else ""
            if nxt in ("}", "/") and nxt:
                continue        # \} and \/ only protect the ${} syntax
            if nxt not in ("*", "?", "\\"):
                raise _ExpandError(f"invalid pattern ({pattern}) in substitution: "
                                   f"invalid escape '\\{nxt}'")
            out.append("\\" + nxt)
            i += 1
        elif ch in "[]{}.+()|^$":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _pattern_regex(pattern, greedy, True).match(value)
    return value[m.end():] if m else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a glob keeping each ``\\x`` escape pair in order."""
    tokens: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "\\" and i != n - 1:
            tokens.append(pattern[i:i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # Regexes find leftmost matches; reversing both sides turns "shortest suffix" into that.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _go_template(template: str, whole: str) -> str:
    """Go regexp.Expand for a pattern without groups: $0/${0} is the match, $$ is $."""
    if "$" not in template:
        return template
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        if template[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        brace = template[i + 1] == "{"
        j = i + 2 if brace else i + 1
        k = j
        while k < n and (template[k].isalnum() or template[k] == "_"):
            k += 1
        name = template[j:k]
        if not name or (brace and (k >= n or template[k] != "}")):
            out.append("$")
            i += 1
            continue
        if name.isdigit() and int(name) == 0:
            out.append(whole)
        i = k + 1 if brace else k
    return "".join(out)


def _go_quote(text: str) -> str:
    """Go's %q for error messages (close enough for messages: escapes quotes and controls)."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_DEFAULT_LEXERS: dict[str, Lexer] = {}


def _lexer(escape: str) -> Lexer:
    lex = _DEFAULT_LEXERS.get(escape)
    if lex is None:
        lex = _DEFAULT_LEXERS[escape] = Lexer(escape)
    return lex


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand ``word`` to one string (quotes removed, escapes applied, unset variables -> "").

    Raises DockerfileError for unsupported or malformed substitutions and for ``${v?msg}``.
    """
    return _lexer(escape).process(word, env).value


def expand_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand ``word`` and split it into words: unquoted text and values split on whitespace."""
    return _lexer(escape).process(word, env, split=True).words


def expand_with_matches(word: str, env: Mapping[str, str], escape: str = "\\") -> ExpansionResult:
    """Expand ``word`` and report which variable names were found set and which were unset."""
    return _lexer(escape).process(word, env, split=True)


_HEREDOC_LEXER = Lexer("\\", skip_process_quotes=True)


def expand_heredoc(body: str, env: Mapping[str, str]) -> str:
    """Expand the body of a COPY/ADD heredoc whose delimiter was not quoted, like BuildKit:
    variables are replaced and ``\\`` escapes applied, but quotes are kept as text and the
    escape character is always ``\\`` (whatever the ``# escape=`` directive says)."""
    return _HEREDOC_LEXER.process(body, env).value
