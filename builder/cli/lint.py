"""`pybuild lint`: parse + validate a Dockerfile and run BuildKit's cheap build checks."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import BuildError


def register(add_command) -> None:
    p = add_command("lint", "check a Dockerfile: syntax, validation and BuildKit's build checks")
    p.add_argument("-f", "--file", default=None,
                   help="Dockerfile to check (default: CONTEXT/Dockerfile; '-' reads stdin)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: file:line:col: severity: message (Rule); json: a list of objects")
    p.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="value for a declared ARG, as `pybuild build` would get it (used to resolve "
                        "FROM references and paths; undeclared names stay undefined, as in BuildKit)")
    p.add_argument("context", nargs="?", default=".", help="build context directory (default: .)")
    p.set_defaults(func=run)


def _read(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    except FileNotFoundError:
        raise BuildError(f"{path}: no such file; pass the Dockerfile with -f or a context that "
                         "contains one") from None
    except OSError as exc:
        raise BuildError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BuildError(f"{path}: not UTF-8 text (byte {exc.start}); save the Dockerfile as UTF-8") from None


def run(args: argparse.Namespace) -> int:
    """Lint one Dockerfile; exit status 1 when there is at least one error."""
    from dockerfile_grammar.linter import lint
    path = args.file or os.path.join(args.context, "Dockerfile")
    build_args = {}
    for item in args.build_arg:
        key, eq, value = item.partition("=")
        build_args[key] = value if eq else os.environ.get(key, "")
    name = "<stdin>" if path == "-" else path
    diagnostics = lint(_read(path), filename=name, build_args=build_args)
    errors = sum(1 for d in diagnostics if d.severity == "error")
    if args.format == "json":
        print(json.dumps([d.to_dict() for d in diagnostics], indent=2, ensure_ascii=False))
    else:
        for d in diagnostics:
            print(d.format())
            if d.hint:
                print(f"  hint: {d.hint}")
        if not args.quiet:
            warnings = len(diagnostics) - errors
            print(f"{name}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if errors else 0
