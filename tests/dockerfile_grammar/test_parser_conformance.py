"""BuildKit's parser conformance data, one test per case (raw layer: parse + dump).

Data: $PYBUILD_CONFORMANCE_DIR (default ../shared/conformance), see its README sections 2 and 4.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockerfile_grammar import DockerfileError, dump_ast, parse
from dockerfile_grammar.heredoc import (HeredocSyntaxError, chomp_heredoc_content,
                                        heredocs_from_line, parse_heredoc_word)
from dockerfile_grammar.arguments import parse_line, split_name_values
from dockerfile_grammar.prepass import detect_directive
from tests.fixtures.conformance import CONFORMANCE_DIR, require_conformance

PARSER = CONFORMANCE_DIR / "buildkit" / "parser"


def _names(sub: str) -> list[str]:
    d = PARSER / sub
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _unit(section: str) -> dict:
    path = CONFORMANCE_DIR / "buildkit" / "unit-cases.json"
    return json.loads(path.read_text())[section] if path.is_file() else {}


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("name", _names("testfiles") or ["<missing>"])
def test_testfile_dump_is_byte_exact(name: str) -> None:
    require_conformance()
    case = PARSER / "testfiles" / name
    assert dump_ast(_read(case / "Dockerfile")) == _read(case / "result")


@pytest.mark.parametrize("name", _names("testfiles") or ["<missing>"])
def test_testfile_dump_through_the_grammar_only(name: str) -> None:
    # The Lark grammar alone (no fast path) must give the same byte-exact dump.
    require_conformance()
    case = PARSER / "testfiles" / name
    tree = parse(_read(case / "Dockerfile"), use_grammar=True)
    assert dump_ast(tree) == _read(case / "result")


@pytest.mark.parametrize("name", _names("testfiles-negative") or ["<missing>"])
def test_negative_testfile_is_rejected(name: str) -> None:
    require_conformance()
    expected = {
        "empty_dockerfile": "file with no instructions",
        "only_comments": "file with no instructions",
        "env_no_value": "ENV must have two arguments",
        "shykes-nested-json": "arrays must be comprised of strings only",
    }
    with pytest.raises(DockerfileError) as info:
        parse(_read(PARSER / "testfiles-negative" / name / "Dockerfile"))
    assert expected[name] in info.value.message


def test_testfile_line_spans() -> None:
    require_conformance()
    expected = json.loads((PARSER / "testfile-line" / "expected-lines.json").read_text())
    tree = parse(_read(PARSER / "testfile-line" / "Dockerfile"))
    assert (tree.start_line, tree.end_line) == (expected["root"]["start"], expected["root"]["end"])
    assert len(tree.children) == expected["children_count"]
    assert [[n.start_line, n.end_line] for n in tree.children] == expected["children"]


def _heredoc_children() -> list:
    path = PARSER / "heredoc-case" / "expected.json"
    return json.loads(path.read_text())["children"] if path.is_file() else [None]


@pytest.mark.parametrize("index", range(len(_heredoc_children())))
def test_heredoc_case_child(index: int) -> None:
    require_conformance()
    tree = parse(_read(PARSER / "heredoc-case" / "Dockerfile"))
    expected = _heredoc_children()
    assert len(tree.children) == len(expected)
    got = [{"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp,
            "fd": h.file_descriptor} for h in tree.children[index].heredocs]
    assert got == (expected[index]["heredocs"] or [])


def test_empty_continuation_warnings() -> None:
    require_conformance()
    expected = json.loads((PARSER / "empty-continuation-case" / "expected.json").read_text())
    tree = parse(_read(PARSER / "empty-continuation-case" / "Dockerfile"))
    assert len(tree.warnings) == expected["warnings_count"]
    for warning, needles in zip(tree.warnings, expected["warnings_short_contains"]):
        assert warning.rule == "NoEmptyContinuation"
        for needle in needles:
            assert needle in warning.short
        assert expected["warning_detail_contains"] in warning.detail


# --- unit-cases.json: the sections that exercise the raw parser -----------------------------

@pytest.mark.parametrize("case", _unit("parse_words").get("cases", [None]))
def test_unit_parse_words(case: dict) -> None:
    require_conformance()
    # ARG keeps BuildKit's raw words (quotes and escapes kept), so it exposes the splitter.
    assert parse_line("ARG " + case["input"]).args == case["expect"]


@pytest.mark.parametrize("case", _unit("json_arrays").get("valid", [None]))
def test_unit_json_array_valid(case: dict) -> None:
    require_conformance()
    node = parse_line("CMD " + case["input"])
    assert node.json_form
    assert node.args == case["expect"]


@pytest.mark.parametrize("text", _unit("json_arrays").get("invalid_non_string", [None]))
def test_unit_json_array_with_non_string_is_an_error(text: str) -> None:
    require_conformance()
    with pytest.raises(DockerfileError, match="arrays must be comprised of strings only"):
        parse("CMD " + text)


@pytest.mark.parametrize("case", _unit("name_val").get("cases", [None]))
def test_unit_name_val(case: dict) -> None:
    require_conformance()
    text = f"{case['instruction']} {case['rest']}"
    if "error_contains" in case:
        with pytest.raises(DockerfileError, match=case["error_contains"]):
            parse(text)
    else:
        assert parse(text).children[0].args == case["nodes"]


@pytest.mark.parametrize("case", _unit("directives").get("parse_all", [None]))
def test_unit_directives_parse_all(case: dict) -> None:
    require_conformance()
    # The sample has no instruction; add one so the parse succeeds and report the directives.
    tree = parse(case["input"] + "FROM scratch\n")
    assert [[d.name, d.value] for d in tree.directives] == case["expect"]


def _detect_cases() -> list:
    d = _unit("directives")
    cases = [("syntax", c) for c in d.get("detect_syntax", [])]
    cases += [("check", c) for c in d.get("parse_check_directive", [])]
    return cases or [("", None)]


@pytest.mark.parametrize("key,case", _detect_cases())
def test_unit_directive_detection(key: str, case: dict) -> None:
    require_conformance()
    found = detect_directive(case["input"], key, any_format=key == "syntax")
    if not case["found"]:
        assert found is None
        return
    assert found is not None
    value, cmdline, line = found
    assert value == case.get("value", case.get("ref"))
    if "cmdline" in case:
        assert cmdline == case["cmdline"]
    if "line" in case:
        assert line == case["line"]


@pytest.mark.parametrize("word", _unit("heredoc_word").get("valid_name_EOF", [None]))
def test_unit_heredoc_word_valid(word: str) -> None:
    require_conformance()
    doc = parse_heredoc_word(word)
    assert doc is not None and doc.name == "EOF"


@pytest.mark.parametrize("word", _unit("heredoc_word").get("invalid_error", [None]))
def test_unit_heredoc_word_invalid(word: str) -> None:
    require_conformance()
    with pytest.raises(HeredocSyntaxError):
        parse_heredoc_word(word)


@pytest.mark.parametrize("word", _unit("heredoc_word").get("not_heredoc", [None]))
def test_unit_heredoc_word_not_heredoc(word: str) -> None:
    require_conformance()
    assert parse_heredoc_word(word) is None


@pytest.mark.parametrize("case", _unit("heredoc_word").get("from_line", [None]))
def test_unit_heredocs_from_line(case: dict) -> None:
    require_conformance()
    names = [h.name for h in heredocs_from_line(case["line"])]
    if case["line"] == "RUN <<- EOF":
        # BuildKit's lexer splits this line into "<<-" and "EOF", so no heredoc is found; the
        # upstream Go test passes only because it loops over the (empty) result. We follow
        # BuildKit's behaviour, not the transcribed expectation.
        assert names == []
    else:
        assert names == case["names"]


@pytest.mark.parametrize("line", _unit("heredoc_word").get("json_form_never_heredoc", [None]))
def test_unit_json_form_never_heredoc(line: str) -> None:
    require_conformance()
    tree = parse("FROM scratch\n" + line + "\nEOF\n")
    assert tree.children[1].heredocs == []
    assert len(tree.children) == 3  # the would-be terminator is an (unknown) instruction


def test_unit_heredoc_chomp() -> None:
    require_conformance()
    case = _unit("heredoc_word")["chomp"]
    assert chomp_heredoc_content(case["input"]) == case["expect"]


def test_unit_name_val_helper_old_and_new_forms() -> None:
    assert split_name_values("LABEL", ["foo", "bar"], "foo bar") == ["foo", "bar", ""]


def test_unit_doc_comments_raw_prev_comments() -> None:
    # The typed layer derives doc comments from prev_comments; the raw layer must attach the
    # comment lines directly above each instruction.
    require_conformance()
    case = _unit("doc_comments")
    tree = parse(case["dockerfile"])
    assert [n.prev_comments for n in tree.children] == [
        ["foo sets foo"], ["base defines first stage"], ["this is irrelevant"],
        ["bar defines bar", "baz is something else"]]
