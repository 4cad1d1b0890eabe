"""Command lines of the plainest shapes, read without argparse.

`pybuild [--root DIR] [-q] pull [--platform P] [--all-platforms] [--insecure-registry H]... REF`
and `push [--platform P] NAME [DEST]` are what scripts and CI run, most often for an image that is already
there, where start-up is most of the time: importing argparse, its gettext look-ups and
building the parsers are ~10 ms of a cached pull. A line of another shape (help, an unknown,
abbreviated or repeated option, a value that looks like an option, a missing or extra argument)
gets None here and goes to argparse, which knows every command and words the errors.
tests/packaging/test_cli_startup.py checks that both read every shape alike.
"""
from __future__ import annotations

from types import SimpleNamespace


class Shape:
    """A command's options as its argparse parser declares them (builder.cli.remote). A plain
    class: this module is imported by every command, also where nothing loads dataclasses."""

    def __init__(self, positionals: tuple[str, ...], *, values: dict[str, str] | None = None,
                 flags: dict[str, str] | None = None, lists: dict[str, str] | None = None,
                 func: str = "") -> None:
        self.positionals = positionals      # names; a trailing "?" marks an optional one
        self.values = values or {}          # --option VALUE -> attribute
        self.flags = flags or {}            # --flag -> attribute (store_true)
        self.lists = lists or {}            # --option VALUE, repeatable (append) -> attribute
        self.func = func                    # "module:function" that argparse sets as `func`


SHAPES = {
    "pull": Shape(("ref",), values={"--platform": "platform"}, flags={"--all-platforms": "all_platforms"},
                  lists={"--insecure-registry": "insecure_registry"}, func="builder.cli.remote:_pull"),
    "push": Shape(("name", "dest?"), values={"--platform": "platform"},
                  lists={"--insecure-registry": "insecure_registry"},
                  func="builder.cli.remote:_push"),
}
GLOBAL_VALUES = {"--root": "root"}
GLOBAL_FLAGS = {"-q": "quiet", "--quiet": "quiet"}


def parse(argv: list[str]) -> SimpleNamespace | None:
    """The namespace argparse would make of `argv`, or None when `argv` is not of a plain shape."""
    out: dict = {}
    i = 0
    # Global options before the command.
    while i < len(argv) and argv[i].startswith("-"):
        i = _option(argv, i, GLOBAL_VALUES, GLOBAL_FLAGS, {}, out)
        if i < 0:
            return None
    if i >= len(argv) or argv[i] not in SHAPES:
        return None
    command = argv[i]
    shape = SHAPES[command]
    ns: dict = {"command": command}
    for name in shape.positionals:
        ns[name.rstrip("?")] = None
    ns.update({a: None for a in shape.values.values()})
    ns.update({a: False for a in shape.flags.values()})
    ns.update({a: [] for a in shape.lists.values()})
    values = {**shape.values, **GLOBAL_VALUES}
    flags = {**shape.flags, **GLOBAL_FLAGS}
    given: list[str] = []
    option_after_positional = False
    i += 1
    while i < len(argv):
        if argv[i].startswith("-") and argv[i] != "-":
            i = _option(argv, i, values, flags, shape.lists, out)
            if i < 0:
                return None
            option_after_positional = bool(given)
        else:
            if option_after_positional:
                return None             # positionals split by an option: argparse matches them its own way
            given.append(argv[i])
            i += 1
    required = [p for p in shape.positionals if not p.endswith("?")]
    if not len(required) <= len(given) <= len(shape.positionals):
        return None
    for name, value in zip(shape.positionals, given):
        ns[name.rstrip("?")] = value
    for key, value in out.items():
        ns[key] = value
    module, _, func = shape.func.partition(":")
    import importlib
    ns["func"] = getattr(importlib.import_module(module), func)
    return SimpleNamespace(**ns)


def _option(argv: list[str], i: int, values: dict[str, str], flags: dict[str, str],
            lists: dict[str, str], out: dict) -> int:
    """Read the option at argv[i] into `out`; the index after it, or -1 when it is not plain."""
    word = argv[i]
    name, eq, inline = word.partition("=")
    if name in flags and not eq:
        dest = flags[name]
        if dest in out:
            return -1                   # repeated: argparse's business
        out[dest] = True
        return i + 1
    if name not in values and name not in lists:
        return -1
    if eq:
        value, nxt = inline, i + 1
    elif i + 1 < len(argv):
        value, nxt = argv[i + 1], i + 2
    else:
        return -1
    if not value or value.startswith("-"):
        return -1
    if name in lists:
        out.setdefault(lists[name], []).append(value)
        return nxt
    dest = values[name]
    if dest in out:
        return -1
    out[dest] = value
    return nxt
