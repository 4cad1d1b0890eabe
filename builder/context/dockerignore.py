r""".dockerignore: reading the file and matching paths exactly as Docker (moby/patternmatcher) does.

Rules, in short (the long form is in ../shared/conformance/dockerignore-cases.md):
- Lines starting with `#` are comments; lines are trimmed; `!` marks an exception (re-include).
- Patterns are cleaned like Go's filepath.Clean and lose one leading `/`.
- `*` and `?` never cross `/`; `**` crosses any number of segments; `[...]` classes and `\`
  escapes follow Go's filepath.Match, whose syntax errors are errors here too.
- A pattern matches a path or any of its parent directories; patterns are evaluated in order and
  the last one that matches decides (an exception only acts on an already excluded path).

Patterns are compiled to regular expressions once; `match_child` evaluates a path from its
parent's per-pattern results, so walking a tree costs one check per pattern and entry.
The same matcher serves `COPY --exclude`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from builder.errors import BuildError

EXACT, PREFIX, SUFFIX, REGEXP = "exact", "prefix", "suffix", "regexp"


class DockerignoreError(BuildError):
    """A .dockerignore or --exclude pattern is malformed."""


def go_clean(path: str) -> str:
    """Go's path/filepath.Clean for slash-separated paths (not os.path.normpath: `//x` -> `/x`)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def read_ignore_lines(text: str) -> list[str]:
    """The patterns of a .dockerignore file's text, as Docker's ignorefile.ReadAll returns them."""
    patterns: list[str] = []
    for i, line in enumerate(text.splitlines()):
        if i == 0 and line.startswith("\ufeff"):
            line = line[1:]
        # A comment only when `#` is the very first character: "  #x" is a pattern.
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = go_clean(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append("!" + line if invert else line)
    return patterns


def _parse_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the Go class starting at pattern[i] == '[' to a Python class; return (regex, next i).

    Raises ValueError for the syntax Go's filepath.Match rejects.
    """
    n = len(pattern)
    i += 1
    negated = i < n and pattern[i] == "^"
    if negated:
        i += 1
    items: list[str] = []
    while True:
        if i < n and pattern[i] == "]" and items:
            return "[" + ("^" if negated else "") + "".join(items) + "]", i + 1
        lo, i = _class_char(pattern, i)
        hi = lo
        if i < n and pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
        if lo > hi:
            raise ValueError(f"invalid character class range {lo}-{hi}")
        items.append(re.escape(lo) if lo == hi else re.escape(lo) + "-" + re.escape(hi))


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise ValueError("malformed character class")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise ValueError("trailing backslash in character class")
    return pattern[i], i + 1


def go_match_regex(pattern: str) -> str:
    """A regular expression equivalent to Go's filepath.Match for one pattern (no `**`).

    Raises ValueError for patterns filepath.Match calls malformed.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "[":
            cls, i = _parse_class(pattern, i)
            out.append(cls)
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@dataclass
class Pattern:
    """One compiled pattern: its cleaned text, exception flag, match kind and regex."""

    text: str
    exclusion: bool
    kind: str
    regex: re.Pattern[str] | None
    dirs: tuple[str, ...]

    def match(self, path: str) -> bool:
        """Whether this pattern matches `path` itself (no parent-directory logic)."""
        if self.kind == EXACT:
            return path == self.text
        if self.kind == PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind == SUFFIX:
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regex is not None
        return self.regex.match(path) is not None

    def matcher(self) -> Callable[[str], object]:
        """A fast single-argument predicate equivalent to match() (truthy when it matches)."""
        if self.kind == EXACT:
            return self.text.__eq__
        if self.kind == PREFIX:
            head = self.text[:-2]
            return lambda path: path.startswith(head)
        if self.kind == SUFFIX:
            return self.match
        assert self.regex is not None
        return self.regex.match


def compile_pattern(raw: str) -> Pattern | None:
    """Compile one pattern line (after trimming); None for an empty one. Errors name the pattern."""
    p = raw.strip()
    if not p:
        return None
    p = go_clean(p)
    exclusion = p.startswith("!")
    if exclusion:
        if len(p) == 1:
            raise DockerignoreError('illegal exclusion pattern: "!" (a "!" must be followed by a pattern)')
        p = p[1:]
    try:
        kind, regex = _classify(p)
    except (ValueError, re.error) as e:
        raise DockerignoreError(f"syntax error in pattern {raw.strip()!r}: {e}") from None
    return Pattern(p, exclusion, kind, regex, tuple(p.split("/")))


def _classify(p: str) -> tuple[str, re.Pattern[str] | None]:
    """The match kind of a cleaned pattern, and its regex when it needs one (patternmatcher rules)."""
    # Validate the whole pattern with Go's filepath.Match syntax first.
    go_match_regex(p.replace("**", "*"))
    kind = EXACT
    out = ["^"]
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "*":
            if i + 1 < n and p[i + 1] == "*":
                first = i == 0
                i += 2
                if i < n and p[i] == "/":
                    i += 1
                if i >= n:
                    if kind == EXACT:
                        kind = PREFIX
                    else:
                        out.append(".*")
                        kind = REGEXP
                else:
                    out.append("(.*/)?")
                    kind = REGEXP
                if first:
                    kind = SUFFIX
                continue
            out.append("[^/]*")
            kind = REGEXP
        elif c == "?":
            out.append("[^/]")
            kind = REGEXP
        elif c == "\\":
            if i + 1 < n:
                out.append(re.escape(p[i + 1]))
                kind = REGEXP
                i += 1
            else:
                out.append(re.escape("\\"))
        elif c == "[":
            cls, i = _parse_class(p, i)
            out.append(cls)
            kind = REGEXP
            continue
        else:
            out.append(re.escape(c))
        i += 1
    if kind != REGEXP:
        return kind, None
    return kind, re.compile("".join(out) + "$", re.DOTALL)


MatchState = tuple[bool, ...]


class Matcher:
    """An ordered list of compiled patterns with Docker's exclusion semantics."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: list[Pattern] = [cp for cp in (compile_pattern(p) for p in patterns) if cp is not None]
        self.has_exceptions = any(p.exclusion for p in self.patterns)
        self._fast = [(p.matcher(), p.exclusion) for p in self.patterns]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, path: str) -> bool:
        """Whether `path` (slash-separated, relative to the root) is excluded: Docker's
        MatchesOrParentMatches. The root itself (`.` or empty) is never excluded."""
        if path in ("", "."):
            return False
        matched = False
        parent = go_dir(path)
        parent_dirs = parent.split("/") if parent != "." else []
        for pat in self.patterns:
            if pat.exclusion != matched:
                continue
            hit = pat.match(path)
            if not hit:
                for i in range(len(parent_dirs)):
                    if pat.match("/".join(parent_dirs[:i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pat.exclusion
        return matched

    def match_child(self, path: str, parent: MatchState | None) -> tuple[bool, MatchState]:
        """Docker's MatchesUsingParentResults: whether `path` is excluded, from the state of its
        parent directory (None for an entry at the root). Returns the state to pass to children."""
        matched = False
        state: list[bool] = []
        append = state.append
        if parent:
            for (fn, exclusion), hit in zip(self._fast, parent):
                if not hit:
                    if exclusion != matched:
                        append(False)
                        continue
                    hit = bool(fn(path))
                append(hit)
                if hit:
                    matched = not exclusion
            return matched, tuple(state)
        d = go_dir(path)
        parts = d.split("/") if d != "." else []
        for fn, exclusion in self._fast:
            if exclusion != matched:
                append(False)
                continue
            hit = bool(fn(path)) or any(fn("/".join(parts[:j + 1])) for j in range(len(parts)))
            append(hit)
            if hit:
                matched = not exclusion
        return matched, tuple(state)

    def child_excluded(self, path: str, parent: MatchState) -> bool:
        """match_child(path, parent)[0] without building the state (for files: no children)."""
        matched = False
        for (fn, exclusion), hit in zip(self._fast, parent):
            if not hit:
                if exclusion != matched:
                    continue
                hit = fn(path)
            if hit:
                matched = not exclusion
        return matched

    def may_include_under(self, dirpath: str) -> bool:
        """Whether some exception pattern could re-include an entry under the excluded `dirpath`
        (if not, a walker can skip the whole directory)."""
        parts = dirpath.split("/")
        for pat in self.patterns:
            if not pat.exclusion:
                continue
            if pat.text.startswith("**") or _prefix_may_match(pat.dirs, parts):
                return True
        return False


def _prefix_may_match(pdirs: Sequence[str], parts: Sequence[str]) -> bool:
    for i, part in enumerate(parts):
        if i >= len(pdirs):
            # The pattern is shorter than the directory: it matches the dir or a parent, which is
            # handled by ordinary matching; nothing deeper can differ.
            return True
        seg = pdirs[i]
        if "**" in seg:
            return True
        try:
            if not re.fullmatch(go_match_regex(seg), part, re.DOTALL):
                return False
        except ValueError:
            return True
    return True


def go_dir(path: str) -> str:
    """Go's filepath.Dir: everything before the last slash, cleaned ('.' when there is none)."""
    i = path.rfind("/")
    return go_clean(path[: i + 1]) if i >= 0 else "."


def parse_dockerignore(text: str) -> Matcher:
    """A Matcher for the text of a .dockerignore file."""
    return Matcher(read_ignore_lines(text))
