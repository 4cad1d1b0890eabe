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


@dataclass
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

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d.name == name:
                return d.value
        return None
