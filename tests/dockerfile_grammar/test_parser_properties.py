"""Property tests of the raw parser (hypothesis): robustness and a render/parse/dump round trip."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockerfile_grammar import DockerfileError, dump_ast, parse
from dockerfile_grammar.goquote import go_quote

# Modest by default to keep the suite fast; raise PYBUILD_HYPOTHESIS_EXAMPLES for a deep run.
SETTINGS = settings(max_examples=int(os.environ.get("PYBUILD_HYPOTHESIS_EXAMPLES", "120")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Characters that steer the parser into its special cases.
TRICKY = list("\\`\"'[]{},:<-#=$ \t\r\n") + ["\x85", "\xa0", "\u2028", "\x00", "\ufeff", "é"]
KEYWORDS = ["FROM", "RUN", "CMD", "COPY", "ADD", "ENV", "LABEL", "ARG", "EXPOSE", "VOLUME",
            "USER", "WORKDIR", "ONBUILD", "HEALTHCHECK", "SHELL", "ENTRYPOINT", "STOPSIGNAL",
            "MAINTAINER", "FOO", "# escape=`", "# syntax=x", "<<EOF", "EOF", "--", "--x=\"a b\"",
            "[\"a\", 1]", "[\"a\"]", "\\", "`"]

tricky_text = st.text(alphabet=st.sampled_from(TRICKY + list("abcEOF01 ")), max_size=80)
line_text = st.lists(st.one_of(st.sampled_from(KEYWORDS), tricky_text), max_size=6).map(" ".join)
dockerfile_like = st.lists(line_text, max_size=12).map("\n".join)


def _parse_or_error(text: str) -> None:
    try:
        tree = parse(text)
    except DockerfileError as err:
        str(err)  # rendering the error must work too
        return
    assert tree.children
    dump_ast(tree)


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_dockerfile_error(text: str) -> None:
    _parse_or_error(text)


@SETTINGS
@given(dockerfile_like)
def test_dockerfile_like_text_only_raises_dockerfile_error(text: str) -> None:
    _parse_or_error(text)


# --- round trip: generated instructions -> text -> parse -> dump ---------------------------

@dataclass
class Rendered:
    text: str   # physical lines of the instruction
    dump: str   # the expected dump line


word = st.text(alphabet=st.sampled_from(list("abcxyz019._/:@$-")), min_size=1, max_size=8).filter(
    lambda w: not w.startswith("-"))
key = st.text(alphabet=st.sampled_from(list("abcXYZ_")), min_size=1, max_size=6)
json_string = st.text(st.characters(blacklist_categories=["Cs"]), max_size=10)
shell_text = st.lists(word, min_size=1, max_size=5).map(" ".join).filter(
    lambda t: not t.startswith("["))
flag = st.builds(lambda k, v: f"--{k}={v}", key, word)


def _q(args: list[str]) -> str:
    return "".join(" " + go_quote(a) for a in args)


def _flags(flags: list[str]) -> str:
    return " [" + " ".join(go_quote(f) for f in flags) + "]" if flags else ""


@st.composite
def instruction(draw) -> Rendered:
    kind = draw(st.sampled_from(["from", "run", "run_json", "copy", "env", "arg", "expose",
                                 "user", "health", "onbuild", "continued"]))
    kw = draw(st.sampled_from(["upper", "lower", "title"]))

    def k(name: str) -> str:
        return {"upper": name.upper(), "lower": name.lower(), "title": name.title()}[kw]

    if kind == "from":
        words = draw(st.lists(word, min_size=1, max_size=3))
        return Rendered(f"{k('from')} {' '.join(words)}", "(from" + _q(words) + ")")
    if kind == "run":
        flags = draw(st.lists(flag, max_size=2))
        text = draw(shell_text)
        return Rendered(f"{k('run')} {' '.join(flags + [text])}",
                        "(run" + _flags(flags) + _q([text]) + ")")
    if kind == "run_json":
        items = draw(st.lists(json_string, max_size=4))
        return Rendered(f"{k('cmd')} {json.dumps(items, ensure_ascii=draw(st.booleans()))}",
                        "(cmd" + _q(items) + ")")
    if kind == "copy":
        flags = draw(st.lists(flag, max_size=2))
        paths = draw(st.lists(word, min_size=2, max_size=4))
        return Rendered(f"{k('copy')} {' '.join(flags + paths)}",
                        "(copy" + _flags(flags) + _q(paths) + ")")
    if kind == "env":
        pairs = draw(st.lists(st.tuples(key, word), min_size=1, max_size=3))
        args = [x for kk, v in pairs for x in (kk, v, "=")]
        return Rendered(f"{k('env')} " + " ".join(f"{kk}={v}" for kk, v in pairs),
                        "(env" + _q(args) + ")")
    if kind == "arg":
        names = draw(st.lists(key, min_size=1, max_size=3))
        return Rendered(f"{k('arg')} {' '.join(names)}", "(arg" + _q(names) + ")")
    if kind == "expose":
        ports = draw(st.lists(st.integers(1, 65535).map(str), min_size=1, max_size=3))
        return Rendered(f"{k('expose')} {' '.join(ports)}", "(expose" + _q(ports) + ")")
    if kind == "user":
        user = draw(word)
        return Rendered(f"{k('user')} {user}", "(user" + _q([user]) + ")")
    if kind == "health":
        text = draw(shell_text)
        return Rendered(f"{k('healthcheck')} --interval=5s CMD {text}",
                        '(healthcheck ["--interval=5s"] "CMD"' + _q([text]) + ")")
    if kind == "onbuild":
        inner = draw(shell_text)
        return Rendered(f"{k('onbuild')} RUN {inner}", "(onbuild (run" + _q([inner]) + "))")
    pieces = draw(st.lists(shell_text, min_size=2, max_size=4))
    indent = draw(st.sampled_from(["", "  ", "\t"]))
    text = (" \\\n" + indent).join(pieces)
    return Rendered(f"{k('run')} {text}", "(run" + _q([(" " + indent).join(pieces)]) + ")")


separator = st.sampled_from(["\n", "\n\n", "\n# a comment\n", "\r\n", "\n   \n"])


@SETTINGS
@given(st.lists(st.tuples(instruction(), separator), min_size=1, max_size=8))
def test_generated_dockerfiles_round_trip(items: list) -> None:
    text = "".join(r.text + sep for r, sep in items)
    expected = "".join(r.dump + "\n" for r, _ in items)
    assert dump_ast(text) == expected
    tree = parse(text)
    assert [n.start_line for n in tree.children] == sorted(n.start_line for n in tree.children)
    assert all(n.start_line <= n.end_line for n in tree.children)


@SETTINGS
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab $'\"\t")), max_size=10), max_size=4),
       st.booleans(), st.booleans())
def test_heredoc_bodies_round_trip(body: list[str], chomp: bool, quoted: bool) -> None:
    delim = "'EOT'" if quoted else "EOT"
    text = f"FROM x\nRUN <<{'-' if chomp else ''}{delim} sh\n" + "".join(
        b + "\n" for b in body) + ("\tEOT" if chomp else "EOT") + "\nCMD done\n"
    tree = parse(text)
    run = tree.children[1]
    assert [(h.name, h.content, h.chomp, h.expand) for h in run.heredocs] == [
        ("EOT", "".join(b + "\n" for b in body), chomp, not quoted)]
    assert run.end_line == 3 + len(body)
    assert tree.children[2].value == "cmd"


# --- the fast path agrees with the grammar (the reference) ----------------------------------

ARG_ALPHABET = list("abc=-[]\",' \t\\`$:/.{}") + ["\x85", "\xa0", "é", "\u3000", "\x1c"]
line_keyword = st.sampled_from(["FROM", "run", "Cmd", "ENTRYPOINT", "SHELL", "COPY", "ADD",
                                "VOLUME", "EXPOSE", "ARG", "ENV", "LABEL", "HEALTHCHECK", "USER",
                                "WORKDIR", "STOPSIGNAL", "MAINTAINER", "ONBUILD", "FOO"])
arg_text = st.lists(st.one_of(
    st.text(alphabet=st.sampled_from(ARG_ALPHABET), max_size=12),
    st.sampled_from(["--", "--x=1", '--m="a b"', "-- ", '["a", "b"]', '["a", 1]', "[]",
                     "a=b", 'k="v w"', "CMD", "RUN x", "NONE"])), max_size=5).map(" ".join)


def _outcome(line: str, escape: str, use_grammar: bool):
    from dockerfile_grammar.arguments import LineError, parse_line
    from dockerfile_grammar.dump import dump_node
    try:
        node = parse_line(line, escape, use_grammar=use_grammar)
    except LineError as err:
        return ("error", err.message, err.offset)
    return ("ok", dump_node(node), node.json_form, node.keyword)


@SETTINGS
@given(line_keyword, arg_text, st.sampled_from(["\\", "`"]))
def test_fast_path_matches_grammar(keyword: str, text: str, escape: str) -> None:
    line = f"{keyword} {text}"
    assert _outcome(line, escape, False) == _outcome(line, escape, True)


json_like = st.one_of(
    st.lists(json_string, max_size=4).map(lambda xs: json.dumps(xs, ensure_ascii=False)),
    st.lists(json_string, max_size=4).map(json.dumps),
    st.text(alphabet=st.sampled_from(list('[]",\\ tu0aN1{}:') + ["\t", "\x01", "é"]), max_size=20)
    .map(lambda t: "[" + t))


@SETTINGS
@given(json_like)
def test_json_scanner_agrees_with_the_grammar_terminal(text: str) -> None:
    from dockerfile_grammar.arguments import _decode_json_strings, _json_strings, grammar_terminals
    (terminal,) = grammar_terminals("JSON_STRINGS")
    matched = terminal.match(text) is not None
    got = _json_strings(text)
    assert (got is not None) == matched
    if matched:
        assert got == _decode_json_strings(text)


def _tree_summary(text: str, use_grammar: bool):
    from dockerfile_grammar.dump import dump_node
    try:
        tree = parse(text, use_grammar=use_grammar)
    except DockerfileError as err:
        return ("error", err.message, err.line, err.column)
    return [(dump_node(n), n.start_line, n.end_line, n.json_form, n.prev_comments,
             [(h.name, h.content) for h in n.heredocs], tree.position(n, len(n.original) // 2))
            for n in tree.children], [(w.short, w.line) for w in tree.warnings]


continued_piece = st.tuples(
    st.sampled_from(["", "  ", "\t", "# c", "  # c \\", "RUN a", "b", "\\", "`", "x\\\\",
                     "é\xa0", "FROM y", "ENV k v", "COPY <<EOF /x", "EOF"]),
    st.sampled_from(["", " \\", "\\", "\\  \t", " `", "\r", " \\\r", "\\ \r "]),
).map("".join)
continued_file = st.tuples(st.sampled_from(["", "# escape=`\n", "# syntax=x\n"]),
                           st.lists(continued_piece, max_size=14).map("\n".join),
                           st.sampled_from(["", "\n"])).map("".join)


@SETTINGS
@given(st.one_of(dockerfile_like, continued_file))
def test_whole_file_fast_path_matches_reference(text: str) -> None:
    assert _tree_summary(text, False) == _tree_summary(text, True)
