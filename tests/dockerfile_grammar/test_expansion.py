"""Variable expansion: BuildKit's shell vectors (envVarTest, wordsTest, process-with-matches) + own cases."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockerfile_grammar import DockerfileError
from dockerfile_grammar.expansion import Lexer, expand_heredoc, expand_with_matches, expand_word, expand_words
from tests.fixtures.conformance import CONFORMANCE_DIR

SHELL_DIR = CONFORMANCE_DIR / "buildkit" / "shell"
ENV_VAR_TEST_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _env_var_cases() -> list:
    path = SHELL_DIR / "envVarTest"
    if not path.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    cases = []
    for no, line in enumerate(_read(path).split("\n"), 1):
        if line.startswith("#") or not line.strip():
            continue
        platform, word, expected = (f.strip() for f in line.split("|"))
        if platform in ("A", "U"):
            cases.append(pytest.param(word, expected, id=f"line{no}"))
    return cases


@pytest.mark.parametrize("word,expected", _env_var_cases())
def test_env_var_test(word: str, expected: str) -> None:
    if expected == "error":
        with pytest.raises(DockerfileError):
            expand_word(word, ENV_VAR_TEST_ENV)
    else:
        assert expand_word(word, ENV_VAR_TEST_ENV) == expected


def _words_cases() -> list:
    path = SHELL_DIR / "wordsTest"
    if not path.is_file():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    env: dict[str, str] = {}
    cases = []
    for no, line in enumerate(_read(path).split("\n"), 1):
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("ENV "):
            key, _, value = line[4:].lstrip(" ").partition("=")
            env[key] = value
            continue
        word, expected = line.split("|")
        cases.append(pytest.param(word.strip(), dict(env), expected.lstrip(" ").split(","), id=f"line{no}"))
    return cases


@pytest.mark.parametrize("word,env,expected", _words_cases())
def test_words_test(word: str, env: dict, expected: list[str]) -> None:
    try:
        got = expand_words(word, env)
    except DockerfileError:
        got = ["error"]
    assert got == expected


def _matches_cases(section: str) -> list:
    path = SHELL_DIR / "process-with-matches.json"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    data = json.loads(_read(path))
    return [pytest.param(c, id=f"{section}{i}:{c['input']}") for i, c in enumerate(data[section])]


@pytest.mark.parametrize("case", _matches_cases("process_with_matches") + _matches_cases("mandatory")
                         + _matches_cases("platform_release_name"))
def test_process_with_matches(case: dict) -> None:
    if case["expected"] is None:
        with pytest.raises(DockerfileError) as info:
            expand_with_matches(case["input"], case["env"])
        if "error_contains" in case:
            assert case["error_contains"] in str(info.value)
        return
    res = expand_with_matches(case["input"], case["env"])
    assert res.value == case["expected"]
    if case.get("matched") is not None:
        assert res.matched == set(case["matched"])
        assert res.unmatched == set(case["unmatched"])


@pytest.mark.parametrize("word,expected", [
    ("${A:-x y}", "x y"),
    ("${A:?}", "error"),
    ("${B:-$A}", "error"),
    ("pre${HOME#/}", "preroot"),
    ("${HOME%/*}", ""),
    ("${HOME/o/0}", "/r0ot"),
    ("${HOME//o/0}", "/r00t"),
    ("${HOME//o/[$$]}", "/r[][]t"),          # $$ is a (never set) special parameter
    ("${HOME//o/<\\$0>}", "/r<\\o><\\o>t"),  # Go's ReplaceAll template sees $0 = the match
    ("${HOME/o/<\\$0>}", "/r<\\$0>ot"),       # single replacement is literal
    ("${HOME#\\x}", "error"),
    ("${A=x}", "error"),
    ("${A:=x}", "error"),
    ("${HOME:%x}", "error"),
    ("$", "$"),
    ("a\\", "a"),
])
def test_own_cases(word: str, expected: str) -> None:
    env = {"HOME": "/root", "B": ""}
    if word == "${B:-$A}":     # nested unset inside a default is fine -> empty
        assert expand_word(word, env) == ""
        return
    if expected == "error":
        with pytest.raises(DockerfileError):
            expand_word(word, env)
    else:
        assert expand_word(word, env) == expected


def test_backtick_escape() -> None:
    env = {"X": "1"}
    assert expand_word("a`$X\\b", env, escape="`") == "a$X\\b"
    assert expand_word('"`"$X"', env, escape="`") == '"1'


def test_error_message_names_word_and_variable() -> None:
    with pytest.raises(DockerfileError) as info:
        expand_word("${VAR:?must be set}", {})
    assert info.value.message.endswith("VAR: must be set")
    assert info.value.message.startswith('failed to process "${VAR:?must be set}"')


def test_skip_unset_and_raw_options() -> None:
    lex = Lexer(skip_unset=True)
    assert lex.process("$A ${B} ${C:-x} ${D/a/b} $E", {"E": "e"}).value == "$A ${B} ${C:-x} ${D/a/b} e"
    assert Lexer(raw_quotes=True).process("'a' \"b\"", {}).value == "'a' \"b\""
    assert Lexer(skip_process_quotes=True).process("'$A' \"x\"", {"A": "1"}).value == "'1' \"x\""
    assert Lexer(raw_escapes=True).process("a\\$b", {}).value == "a\\$b"


def test_split_keeps_quoted_spaces() -> None:
    assert expand_words('a "b  c" $X', {"X": " d  e "}) == ["a", "b  c", "d", "e"]
    assert expand_words('""', {}) == []
    assert expand_words("", {}) == []


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab $'\"\\{}:-+?#%/*`x1_ \t")), max_size=30),
       st.sampled_from(["\\", "`"]))
def test_arbitrary_words_only_raise_dockerfile_error(word: str, escape: str) -> None:
    env = {"a": "x y", "b": "", "x": "*"}
    for fn in (expand_word, expand_words, expand_with_matches):
        try:
            fn(word, env, escape)
        except DockerfileError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_words_without_specials_are_unchanged(word: str) -> None:
    if any(c in word for c in "$'\"\\"):
        return
    assert expand_word(word, {}) == word


def test_heredoc_body_expansion_keeps_quotes() -> None:
    body = 'name="${NAME}" \'$NAME\'\n\\$HOME stays, \\\\ is one, line \\\ncontinues\n'
    assert expand_heredoc(body, {"NAME": "x"}) == 'name="x" \'x\'\n$HOME stays, \\ is one, line \ncontinues\n'
