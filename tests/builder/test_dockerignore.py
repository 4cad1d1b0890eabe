"""builder.context.dockerignore against every case of ../shared/conformance/dockerignore-cases.json."""
from __future__ import annotations

import json
import random

import pytest

from builder.context.dockerignore import (
    DockerignoreError,
    Matcher,
    compile_pattern,
    go_clean,
    parse_dockerignore,
    read_ignore_lines,
)
from tests.fixtures.conformance import CONFORMANCE_DIR, require_conformance


def _cases(section: str) -> list:
    path = CONFORMANCE_DIR / "dockerignore-cases.json"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    data = json.loads(path.read_text())[section]
    return [pytest.param(c, id=f"{i}:{c.get('pattern') or c.get('patterns')}->{c.get('path')}")
            for i, c in enumerate(data)]


def test_readall() -> None:
    data = json.loads((require_conformance() / "dockerignore-cases.json").read_text())["readall"]
    assert read_ignore_lines(data["input"]) == data["expected"]
    assert read_ignore_lines("") == []


@pytest.mark.parametrize("case", _cases("single_matches_or_parent") + _cases("single_matches_or_parent_unix_only"))
def test_single_pattern(case: dict) -> None:
    assert Matcher([case["pattern"]]).matches(case["path"]) is case["excluded"]


@pytest.mark.parametrize("case", _cases("multi_matches_or_parent"))
def test_multi_patterns(case: dict) -> None:
    assert Matcher(case["patterns"]).matches(case["path"]) is case["excluded"]


@pytest.mark.parametrize("case", _cases("named"))
def test_named(case: dict) -> None:
    if case.get("error"):
        for _ in range(2):  # the same error again on a second attempt, never a crash
            with pytest.raises(DockerignoreError):
                Matcher(case["patterns"]).matches(case["path"])
    else:
        assert Matcher(case["patterns"]).matches(case["path"]) is case["excluded"]


@pytest.mark.parametrize("case", _cases("filepath_match_table"))
def test_filepath_match_table(case: dict) -> None:
    if case["error"]:
        with pytest.raises(DockerignoreError):
            Matcher([case["pattern"]]).matches(case["path"])
    else:
        assert Matcher([case["pattern"]]).matches(case["path"]) is case["match"]


@pytest.mark.parametrize("case", _cases("compile"))
def test_compile_kind_and_regex(case: dict) -> None:
    p = compile_pattern(case["pattern"])
    assert p is not None
    assert p.kind == case["kind"]
    if case["kind"] == "regexp":
        # Our regexes escape literals with Python's re.escape; compare on behaviour-equivalent text.
        assert p.regex is not None
        assert p.regex.pattern.replace("\\", "") == case["regexp"].replace("\\", "")


def test_pattern_list_hygiene() -> None:
    assert len(Matcher(["docs", "config", ""]).patterns) == 2
    assert Matcher(["  !docs/README.md"]).patterns[0].exclusion
    assert Matcher(["!docs/README.md  "]).patterns[0].exclusion


def test_go_clean() -> None:
    assert go_clean("//a/./b/../c/") == "/a/c"
    assert go_clean("../../a") == "../../a"
    assert go_clean("/../a") == "/a"
    assert go_clean("") == "."


def _tree_paths() -> list[str]:
    rnd = random.Random(7)
    names = ["a", "b", "docs", "x.go", ".git", "node_modules", "README.md", "web", "util"]
    paths = set()
    for _ in range(400):
        depth = rnd.randint(1, 4)
        paths.add("/".join(rnd.choice(names) for _ in range(depth)))
    return sorted(paths)


@pytest.mark.parametrize("patterns", [
    ["*.go", "!x.go"], ["docs", "!docs/README.md"], ["**/node_modules", "!a/node_modules/web"],
    ["a/**", "!a/b/*", "a/b/x.go"], ["**", "!util/docker/web"], [".git", "*/*/a"],
])
def test_incremental_matching_equals_full_matching(patterns: list[str]) -> None:
    """match_child (what the context walker uses) agrees with matches() on every path of a tree."""
    m = Matcher(patterns)
    state: dict[str, tuple] = {}
    for path in sorted(_tree_paths(), key=lambda p: p.count("/")):
        parts = path.split("/")
        # states of all parents, computed top-down as a walker does
        parent_state = None
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix not in state:
                state[prefix] = m.match_child(prefix, state.get("/".join(parts[:i - 1])) if i > 1 else None)[1]
            parent_state = state[prefix]
        excluded, st = m.match_child(path, parent_state)
        state[path] = st
        assert excluded == m.matches(path), path
        if parent_state is not None:
            assert m.child_excluded(path, parent_state) == excluded


def test_may_include_under() -> None:
    m = Matcher(["docs", "!docs/README.md", "!**/keep"])
    assert m.may_include_under("docs")
    m2 = Matcher(["build", "!docs/README.md"])
    assert not m2.may_include_under("build")
    assert m2.may_include_under("docs")


def test_parse_file_with_comments() -> None:
    m = parse_dockerignore("# comment\n*.pyc\n\n!keep.pyc\n/build/\n")
    assert m.matches("a.pyc") and not m.matches("keep.pyc") and m.matches("build/out.o")
    assert not m.matches("src/a.pyc")
    with pytest.raises(DockerignoreError, match="illegal exclusion"):
        parse_dockerignore("a\n!\n")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PATTERN_ALPHABET = st.sampled_from(list("ab/.*?[]^-\\!# {}()+$|\u263a\n"))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(_PATTERN_ALPHABET, max_size=12), max_size=4),
       st.text(st.sampled_from(list("ab/.*[]\\\u263a")), max_size=12))
def test_fuzz_only_dockerignore_errors_escape(patterns: list[str], path: str) -> None:
    try:
        m = Matcher(patterns)
    except DockerignoreError:
        return
    full = m.matches(path)
    parts = path.split("/")
    # The walker only ever asks about clean relative paths.
    if path and all(p not in ("", ".", "..") for p in parts):
        state = None
        for i in range(1, len(parts)):
            _, state = m.match_child("/".join(parts[:i]), state)
        assert m.match_child(path, state)[0] == full


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_ignore_file_reader(text: str) -> None:
    try:
        parse_dockerignore(text)
    except DockerignoreError:
        pass
