"""Instruction flags (``--name[=value]``) with BuildKit's rules.

Bool flags accept ``--f`` and ``--f=true|false`` (any case); string flags need ``=value``;
repeatable flags collect every occurrence; any other repeated flag is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FlagKind = Literal["bool", "string", "strings"]


class FlagError(Exception):
    """A flag problem; ``flag`` is the offending flag text, ``hint`` says what is valid."""

    def __init__(self, message: str, flag: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag
        self.hint = hint


@dataclass
class ParsedFlags:
    """Values of the flags of one instruction; ``used`` lists the flag names given, in order."""

    values: dict[str, object] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)

    def bool(self, name: str, default: bool = False) -> bool:
        v = self.values.get(name)
        return default if v is None else bool(v)

    def opt_bool(self, name: str) -> bool | None:
        v = self.values.get(name)
        return None if v is None else bool(v)

    def string(self, name: str, default: str = "") -> str:
        v = self.values.get(name)
        return default if v is None else str(v)

    def strings(self, name: str) -> list[str]:
        v = self.values.get(name)
        return list(v) if isinstance(v, list) else []


def parse_flags(instruction: str, flags: list[str], spec: dict[str, FlagKind]) -> ParsedFlags:
    """Check ``flags`` (as stored in the raw node, e.g. ``["--from=build"]``) against ``spec``."""
    out = ParsedFlags()
    for raw in flags:
        if raw == "--":
            break
        if not raw.startswith("--"):
            raise FlagError(f"Arg {raw!r} must start with '--'", raw)
        name, eq, value = raw[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            raise FlagError(f"unknown flag: --{name}", raw, _valid_flags_hint(instruction, name, spec))
        if name in out.values and kind != "strings":
            raise FlagError(f"duplicate flag specified: --{name}", raw)
        if kind == "bool":
            if not eq:
                out.values[name] = True
            elif not value:
                raise FlagError(f"missing a value on flag: --{name}", raw,
                                f"write --{name}, --{name}=true or --{name}=false")
            elif value.lower() in ("true", "false"):
                out.values[name] = value.lower() == "true"
            else:
                raise FlagError(f"expecting boolean value for flag --{name}, not: {value}", raw,
                                f"write --{name}, --{name}=true or --{name}=false")
        elif kind == "string":
            if not eq:
                raise FlagError(f"missing a value on flag: --{name}", raw, f"write --{name}=<value>")
            out.values[name] = value
        else:
            if not eq:
                raise FlagError(f"missing a value on flag: --{name}", raw, f"write --{name}=<value>")
            out.values.setdefault(name, []).append(value)  # type: ignore[union-attr]
        if name not in out.used:
            out.used.append(name)
    return out


def _valid_flags_hint(instruction: str, name: str, spec: dict[str, FlagKind]) -> str:
    if not spec:
        return f"{instruction} takes no flags"
    from .suggest import suggest
    close = suggest(name, spec)
    valid = ", ".join("--" + k for k in spec)
    if close:
        return f"did you mean --{close}? valid flags for {instruction}: {valid}"
    return f"valid flags for {instruction}: {valid}"
