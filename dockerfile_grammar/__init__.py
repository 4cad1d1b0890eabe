"""Dockerfile text -> raw syntax tree -> typed instructions; variable expansion; lint.

Public API (the names in ``__all__``; loaded on first use, PEP 562, to keep ``import`` cheap)::

    import dockerfile_grammar as dg

    tree = dg.parse(text)                        # SyntaxTree: BuildKit-compatible raw syntax
    print(dg.dump_ast(tree))                     # BuildKit's parser test-file format
    df = dg.parse_dockerfile(text, "Dockerfile") # Dockerfile: typed, validated instructions
    for stage in df.stages:
        for inst in stage.instructions:          # FromCommand, RunCommand, CopyCommand, ...
            ...
    dg.expand_word("$HOME/bin", {"HOME": "/root"})   # shell-style expansion, as BuildKit does
    for d in dg.lint(text):                      # Diagnostic: BuildKit's build checks
        print(d)

- Parsing: ``parse`` -> ``SyntaxTree`` of ``Node``s (with ``Heredoc``s and ``Directive``s),
  ``dump_ast``; ``parse_dockerfile`` -> ``Dockerfile`` (``Stage``s of ``Instruction``s).
- The instruction types (``FromCommand``, ``RunCommand``, ``CopyCommand``, ``AddCommand``,
  ``EnvCommand``, ... one per instruction) live in ``dockerfile_grammar.instructions`` (exported
  as ``instructions``); they also resolve from the package (``dockerfile_grammar.RunCommand``).
- Expansion: ``expand_word``, ``expand_words``, ``expand_heredoc``.
- ``lint`` -> ``Diagnostic``s.
- ``DockerfileError``: the one exception (file, line, column, a caret excerpt, a hint).
"""
from __future__ import annotations

from .errors import DockerfileError

_INSTRUCTION_TYPES = (
    "FromCommand", "RunCommand", "CmdCommand", "EntrypointCommand", "LabelCommand", "MaintainerCommand",
    "ExposeCommand", "EnvCommand", "AddCommand", "CopyCommand", "VolumeCommand", "UserCommand",
    "WorkdirCommand", "ArgCommand", "OnbuildCommand", "StopsignalCommand", "HealthcheckCommand",
    "ShellCommand",
)

_LAZY = {
    "parse": "parser", "dump_ast": "dump",
    "SyntaxTree": "syntax", "Node": "syntax", "Heredoc": "syntax", "Directive": "syntax",
    "expand_word": "expansion", "expand_words": "expansion", "expand_heredoc": "expansion",
    "Dockerfile": "instructions", "Stage": "instructions", "Instruction": "instructions",
    "parse_dockerfile": "instructions",
    "Diagnostic": "linter", "lint": "linter",
    **dict.fromkeys(_INSTRUCTION_TYPES, "instructions"),
    "instructions": None,   # subpackages
}


def __getattr__(name: str):      # PEP 562: a public name is imported from its module on first use
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = __import__("importlib").import_module(f".{_LAZY[name] or name}", __name__)
    return globals().setdefault(name, module if _LAZY[name] is None else getattr(module, name))



__all__ = [
    "parse", "dump_ast", "parse_dockerfile", "lint", "expand_word", "expand_words", "expand_heredoc",
    "SyntaxTree", "Node", "Heredoc", "Directive", "Dockerfile", "Stage", "Instruction", "instructions",
    "Diagnostic", "DockerfileError",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
