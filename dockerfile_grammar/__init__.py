"""Dockerfile text -> raw syntax tree -> typed instructions; variable expansion.

Public API: parse, dump_ast, expand_word, expand_words, parse_instructions, lint, DockerfileError.
"""
from __future__ import annotations

from .errors import DockerfileError
from .syntax import Directive, Heredoc, Node, ParseWarning, SyntaxTree
from .expansion import ExpansionResult, Lexer, expand_with_matches, expand_word, expand_words

__all__ = [
    "DockerfileError", "Directive", "Heredoc", "Node", "ParseWarning", "SyntaxTree",
    "ExpansionResult", "Lexer", "expand_with_matches", "expand_word", "expand_words",
]
