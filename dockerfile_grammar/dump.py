"""BuildKit's AST dump: one ``(instruction ["flags"] "arg"...)`` line per instruction.

``dump_ast(text)`` is byte-identical to BuildKit's ``Node.Dump()`` plus one ``"\\n"``, which is
what the ``result`` files of BuildKit's parser test data contain.
"""
from __future__ import annotations

from .goquote import GO_SPACE, go_lower, go_quote
from .syntax import Node, SyntaxTree


def dump_node(node: Node) -> str:
    """One instruction in BuildKit's s-expression form (without the outer parentheses)."""
    out = go_lower(node.value)
    if node.flags:
        out += " [" + " ".join(go_quote(f) for f in node.flags) + "]"
    for arg in node.args:
        out += " " + go_quote(arg)
    if node.trigger is not None:
        out += " (" + dump_node(node.trigger) + ")"
    return out.strip(GO_SPACE)


def dump_tree(tree: SyntaxTree) -> str:
    """A parsed tree in BuildKit's dump format, with the trailing newline of the test data."""
    return "\n".join("(" + dump_node(n) + ")" for n in tree.children) + "\n"


def dump_ast(source: str | SyntaxTree) -> str:
    """Parse Dockerfile text (or take a parsed SyntaxTree) and return BuildKit's dump + "\\n"."""
    if isinstance(source, SyntaxTree):
        return dump_tree(source)
    from .parser import parse

    return dump_tree(parse(source))
