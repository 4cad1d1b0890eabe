"""The one glob every COPY/ADD source uses, from the build context or from another stage/image
(`COPY --from`), as current BuildKit resolves wildcards:

- each path segment is matched with Go's filepath.Match syntax: `*`, `?`, `[...]`, `[^...]`
  (Go spells negation `^`; `[!x]` is a class holding `!` and `x`), and `\\` escapes, so the
  pattern `n\\?pe` names `n?pe` literally. The pattern is the source after the Dockerfile's
  word expansion, which consumes one escape level as BuildKit's lexer does: `COPY n\\?pe` is
  the wildcard `n?pe`, `COPY n\\\\?pe` (or `n[?]pe`) the literal;
- with `--parents`, a segment that is exactly `**` matches any number of directories (zero
  included): BuildKit turns such a source into an include pattern (patternmatcher, which has
  `**`); without it BuildKit resolves the wildcard with Go's filepath.Match over the path
  (fsutil's copy.ResolveWildcards), where `**` is just `*` twice, i.e. one segment;
- `*` and `?` never cross a `/`; a leading `.` is matched like any other character.

The walk itself is generic: the caller says how to list a directory and how to step into a
name (the build context does it through descriptors inside its root, a rootfs view through
its own resolution), so both sides match exactly the same paths.
"""
from __future__ import annotations

import re
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from builder.context.dockerignore import go_match_regex

GLOB_CHARS = frozenset("*?[\\")
ANY_DEPTH = None          # the compiled form of a `**` segment

S = TypeVar("S")


def parents_pivot(pattern: str) -> str | None:
    """For COPY --parents: what stands before the source's `/./` (where the kept parents
    start), not yet cleaned; None when there is no `/./`."""
    body = pattern.lstrip("/")
    while body.startswith("./"):
        body = body[2:]
    head, sep, _ = body.partition("/./")
    return head if sep else None


def has_glob(pattern: str) -> bool:
    """Whether a source contains glob syntax (an escape counts: it is resolved by matching)."""
    return any(c in GLOB_CHARS for c in pattern)


def compile_segments(segments: Iterable[str], *, any_depth: bool = False) -> list[re.Pattern[str] | None]:
    """One compiled matcher per segment (ANY_DEPTH for `**` when `any_depth`, i.e. --parents).
    Raises ValueError for the syntax Go's filepath.Match rejects."""
    out: list[re.Pattern[str] | None] = []
    for seg in segments:
        if seg == "**" and any_depth:
            out.append(ANY_DEPTH)
        elif not has_glob(seg):
            out.append(re.compile(re.escape(seg), re.DOTALL))
        else:
            out.append(re.compile(go_match_regex(seg), re.DOTALL))
    return out


class Walker(Generic[S]):
    """Match compiled segments against a tree.

    `names(state)` lists a directory's entry names (sorted; [] when it is not a directory);
    `step(state, name, named)` resolves one entry to (child state, is directory), or None
    when it does not exist or must not be seen (ignored); `named` is the matched path so far."""

    def __init__(self, names: Callable[[S], list[str]],
                 step: Callable[[S, str, str], "tuple[S, bool] | None"]) -> None:
        self.names = names
        self.step = step

    def matches(self, compiled: list[re.Pattern[str] | None], root: S) -> Iterator[tuple[str, S]]:
        """(matched path, state) for every path the segments match, each path once."""
        seen: set[str] = set()

        def walk(i: int, named: str, state: S) -> Iterator[tuple[str, S]]:
            if i == len(compiled):
                if named not in seen:
                    seen.add(named)
                    yield named, state
                return
            pat = compiled[i]
            if pat is ANY_DEPTH:
                yield from walk(i + 1, named, state)
                for name in self.names(state):
                    crel = f"{named}/{name}" if named else name
                    got = self.step(state, name, crel)
                    if got is not None and got[1]:
                        yield from walk(i, crel, got[0])
                return
            for name in self.names(state):
                if not pat.fullmatch(name):
                    continue
                crel = f"{named}/{name}" if named else name
                got = self.step(state, name, crel)
                if got is None:
                    continue
                if i + 1 < len(compiled) and not got[1]:
                    continue
                yield from walk(i + 1, crel, got[0])

        yield from walk(0, "", root)
