"""The raw syntax tree: what the parser produces before any validation or expansion.

It mirrors BuildKit's parser node so that ``dump_ast`` can reproduce BuildKit's dump byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Heredoc:
    """One here-document attached to a RUN/COPY/ADD line."""

    name: str                 # the delimiter word, quotes removed
    content: str              # the raw body, ending with "\n" unless empty
    expand: bool = True       # False when the delimiter was (partly) quoted
    chomp: bool = False       # True for <<- (leading tabs stripped)
    file_descriptor: int = 0  # 3<<EOF -> 3; default 0 (stdin)


@dataclass
class ParseWarning:
    """A non-fatal finding of the parser (e.g. an empty continuation line)."""

    short: str
    detail: str
    line: int
    rule: str = ""            # build-check rule name, e.g. "NoEmptyContinuation"


@dataclass
class Directive:
    """A parser directive at the top of the file (`# syntax=...`, `# escape=...`, `# check=...`)."""

    name: str                 # lower-case
    value: str
    line: int


@dataclass(slots=True)  # slots: parsing creates one per instruction, keep them cheap
class Node:
    """One instruction (one logical line), BuildKit-compatible.

    ``args`` follow BuildKit's per-instruction splitting (see the conformance README, 2.2).
    ``original`` is the logical line as written, after continuation joining.
    """

    value: str                          # instruction name, lower-case ("from", "run", ...)
    original: str
    args: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    json_form: bool = False
    start_line: int = 0
    end_line: int = 0
    heredocs: list[Heredoc] = field(default_factory=list)
    trigger: "Node | None" = None        # the nested instruction of ONBUILD
    keyword: str = ""                   # the instruction word exactly as written ("From")
    prev_comments: list[str] = field(default_factory=list)  # comment lines directly above
    # Where ``original`` came from: (offset in original, physical line, 1-based column) per
    # joined piece, so a character offset can be mapped back to a line and column. Empty for
    # an instruction written on one line starting in column 1.
    segments: list[tuple[int, int, int]] = field(default_factory=list, repr=False)

    def position(self, offset: int) -> tuple[int, int]:
        """(line, column) in the source file of character ``offset`` of ``original``."""
        if not self.segments:
            return self.start_line, 1 + offset
        best = self.segments[0]
        for seg in self.segments:
            if seg[0] <= offset:
                best = seg
            else:
                break
        return best[1], best[2] + offset - best[0]


@dataclass
class SyntaxTree:
    """A parsed Dockerfile: directives, instructions in order, warnings."""

    filename: str
    children: list[Node]
    directives: list[Directive] = field(default_factory=list)
    escape_token: str = "\\"
    warnings: list[ParseWarning] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)   # physical source lines, for error excerpts

    @property
    def start_line(self) -> int:
        """First line of the first instruction (0 when there are none)."""
        return self.children[0].start_line if self.children else 0

    @property
    def end_line(self) -> int:
        """Last line consumed by the last instruction (0 when there are none)."""
        return self.children[-1].end_line if self.children else 0

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d.name == name:
                return d.value
        return None
