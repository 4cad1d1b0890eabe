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

    def position(self, node: Node, offset: int) -> tuple[int, int]:
        """(line, column), 1-based, in the source of character ``offset`` of
        ``node.original`` (also for an ONBUILD trigger, whose text is inside its parent's)."""
        from .prepass import source_position

        for top in self.children:
            base, current = 0, top
            while current is not None and current is not node:
                if current.trigger is not None:
                    base += current.original.rfind(current.trigger.original)
                current = current.trigger
            if current is node:
                return source_position(self.lines, self.escape_token, top.start_line,
                                       base + offset)
        raise ValueError("node is not part of this tree")

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d.name == name:
                return d.value
        return None
