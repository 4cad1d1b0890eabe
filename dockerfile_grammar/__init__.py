"""Dockerfile text -> raw syntax tree -> typed instructions; variable expansion.

Public API: parse, dump_ast, expand_word, expand_words, parse_dockerfile, lint, DockerfileError.
"""
from __future__ import annotations

from .errors import DockerfileError
from .syntax import Directive, Heredoc, Node, ParseWarning, SyntaxTree

# Typed instructions, expansion and lint load on first use (PEP 562) to keep `import` cheap.
_LAZY = {
    "parse": "parser", "dump_ast": "dump",
    "ExpansionResult": "expansion", "Lexer": "expansion", "expand_with_matches": "expansion",
    "expand_word": "expansion", "expand_words": "expansion", "expand_heredoc": "expansion",
    "GitRef": "gitref", "parse_git_ref": "gitref",
    "Dockerfile": "instructions", "Instruction": "instructions", "Stage": "instructions",
    "instruction_from_node": "instructions", "parse_dockerfile": "instructions",
    "Diagnostic": "linter", "lint": "linter",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dockerfile_grammar' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "parse", "dump_ast",
    "DockerfileError", "Directive", "Heredoc", "Node", "ParseWarning", "SyntaxTree",
    "ExpansionResult", "Lexer", "expand_with_matches", "expand_word", "expand_words",
    "expand_heredoc", "GitRef", "parse_git_ref", "Dockerfile", "Instruction", "Stage", "instruction_from_node",
    "parse_dockerfile", "Diagnostic", "lint",
]
