"""The one exception type of dockerfile_grammar."""
from __future__ import annotations


class DockerfileError(Exception):
    """A Dockerfile could not be parsed, validated or expanded.

    Carries where (file, 1-based line and column), the offending source line and an optional
    hint; ``str()`` renders ``file:line:col: message`` followed by the line and a caret.
    """

    def __init__(self, message: str, *, filename: str = "Dockerfile", line: int = 0,
                 column: int = 0, source_line: str | None = None, hint: str | None = None,
                 end_line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.end_line = end_line if end_line is not None else line
        self.source_line = source_line
        self.hint = hint

    def location(self) -> str:
        if not self.line:
            return self.filename
        return f"{self.filename}:{self.line}:{max(self.column, 1)}"

    def __str__(self) -> str:
        out = f"{self.location()}: {self.message}"
        if self.source_line is not None:
            out += f"\n  {self.source_line}\n  {' ' * max(self.column - 1, 0)}^"
        if self.hint:
            out += f"\n  hint: {self.hint}"
        return out
