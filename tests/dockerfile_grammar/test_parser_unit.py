"""Unit tests of the raw parser: pre-pass details, argument styles, errors and their locations."""
from __future__ import annotations

import pytest

from dockerfile_grammar import DockerfileError, dump_ast, parse
from dockerfile_grammar.goquote import go_lower, go_quote, go_trim_space
from dockerfile_grammar.arguments import parse_line, unquote_flag
from dockerfile_grammar.prepass import detect_directive


def dump_lines(text: str) -> list[str]:
    return dump_ast(text).splitlines()


# --- Go string helpers ----------------------------------------------------------------------

@pytest.mark.parametrize("value,quoted", [
    ("abc", '"abc"'),
    ('a"b\\c', '"a\\"b\\\\c"'),
    ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
    ("\x00\x1b\x7f", '"\\x00\\x1b\\x7f"'),
    ("héllo ♥ 😀", '"héllo ♥ 😀"'),
    ("\xa0\u200b\u2028", '"\\u00a0\\u200b\\u2028"'),
    ("\U000e0001", '"\\U000e0001"'),
    ("\udcff", '"\\xff"'),  # a surrogate-escaped invalid byte prints as Go prints the byte
])
def test_go_quote(value: str, quoted: str) -> None:
    assert go_quote(value) == quoted


def test_go_lower_and_trim_space() -> None:
    assert go_lower("FROM") == "from"
    assert go_lower("ΣΑΣ") == "σασ"  # no final-sigma context rule in Go
    assert go_lower("\u0130X") == "ix"
    assert go_trim_space("\x85\xa0 a b\u3000\t") == "a b"
    assert go_trim_space("\x1fa\x1f") == "\x1fa\x1f"  # not whitespace for Go


# --- logical lines --------------------------------------------------------------------------

def test_crlf_bom_and_missing_final_newline() -> None:
    text = "\ufeffFROM busybox\r\nRUN echo \\\r\n  hi\r\nCMD [\"a\"]"
    tree = parse(text)
    assert dump_lines(text) == ['(from "busybox")', '(run "echo   hi")', '(cmd "a")']
    assert [(n.start_line, n.end_line) for n in tree.children] == [(1, 1), (2, 3), (4, 4)]


def test_lone_carriage_return_is_not_a_line_break() -> None:
    assert dump_lines("FROM a\rRUN b\n") == ['(from "a" "RUN" "b")']
    assert dump_lines("RUN a\rb\r\r\n") == ['(run "a\\rb")']


def test_escape_directive_changes_continuation_and_words() -> None:
    text = "# escape=`\nFROM x\nRUN a `\n  b\nENV P C:\\dir\nARG x=`\"y z`\" w\n"
    tree = parse(text)
    assert tree.escape_token == "`"
    assert [d.name for d in tree.directives] == ["escape"]
    assert dump_lines(text)[1:] == ['(run "a   b")', '(env "P" "C:\\\\dir" "")',
                                    '(arg "x=`\\"y" "z`\\"" "w")']


def test_directive_after_comment_is_a_comment() -> None:
    tree = parse("# hello\n# escape=`\nFROM x\nRUN a `\n")
    assert tree.directives == []
    assert tree.escape_token == "\\"
    assert tree.children[1].args == ["a `"]


def test_directive_names_case_insensitive_and_spaces() -> None:
    tree = parse("#  SYNTAX = docker/dockerfile:1 \n# Check=skip=all\nFROM x\n")
    assert [(d.name, d.value, d.line) for d in tree.directives] == [
        ("syntax", "docker/dockerfile:1", 1), ("check", "skip=all", 2)]
    assert tree.directive("syntax") == "docker/dockerfile:1"
    assert tree.children[0].prev_comments == []  # directives are not doc comments


def test_duplicate_directive_is_an_error_at_its_line() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("# syntax=a\n# SYNTAX=b\nFROM x\n")
    err = info.value
    assert "only one syntax parser directive can be used" in err.message
    assert (err.line, err.column) == (2, 3)
    assert err.source_line == "# SYNTAX=b"


def test_invalid_escape_directive() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("# escape=x\nFROM x\n")
    assert "invalid escape token 'x'" in info.value.message
    assert (info.value.line, info.value.column) == (1, 10)


def test_comments_and_blank_lines_inside_continuation() -> None:
    text = "FROM x\nRUN a \\\n# gone\n\n   b \\\n  # also gone\n c\nCMD d\n"
    tree = parse(text)
    run = tree.children[1]
    assert run.args == ["a    b  c"]
    assert (run.start_line, run.end_line) == (2, 7)
    assert len(tree.warnings) == 1
    w = tree.warnings[0]
    assert (w.rule, w.line) == ("NoEmptyContinuation", 4)
    assert w.short == "Empty continuation line found in: RUN a    b  c"


def test_escaped_escape_at_line_end_is_literal_and_lone_escape_continues() -> None:
    text = "FROM x\nRUN a\\\\\nRUN b \\\n\\\n  c\n"
    assert dump_lines(text)[1:] == ['(run "a\\\\\\\\")', '(run "b   c")']


def test_continuation_at_eof_and_empty_instruction_name() -> None:
    assert dump_lines("FROM x\nRUN a \\") == ['(from "x")', '(run "a")']
    # A lone escape followed by nothing makes an instruction with an empty name, like BuildKit.
    assert dump_lines("FROM x\n\\\n") == ['(from "x")', '("")']


def test_prev_comments() -> None:
    tree = parse("# syntax=x\n# stage one\n#\n# base image\n  # indented\nFROM a AS b\nRUN c\n")
    assert tree.children[0].prev_comments == ["base image", "# indented"]
    assert tree.children[1].prev_comments == []


def test_line_too_long() -> None:
    with pytest.raises(DockerfileError, match="greater than max allowed size of 65535") as info:
        parse("FROM x\nRUN " + "a" * 70000 + "\n")
    assert info.value.line == 2


def test_no_instructions_error() -> None:
    for text in ["", "\n\n", "# only\n# comments\n", "\ufeff"]:
        with pytest.raises(DockerfileError, match="file with no instructions"):
            parse(text, filename="x/Dockerfile")


# --- argument styles ------------------------------------------------------------------------

@pytest.mark.parametrize("line,dump", [
    ("FROM --platform=$P a AS b", '(from ["--platform=$P"] "a" "AS" "b")'),
    ("FROM a\u00a0b \u00a0c", '(from "a\\u00a0b" "\\u00a0c")'),
    ("COPY --chown=\"a b\" 'x y' z", '(copy ["--chown=a b"] "\'x" "y\'" "z")'),
    ("COPY -- --weird /dst", '(copy "--weird" "/dst")'),
    ("COPY --a --\"\" b c", '(copy ["--a"] "b" "c")'),
    ("COPY [\"a b\", \"c\"]", '(copy "a b" "c")'),
    ("COPY [\"a\" b", '(copy "[\\"a\\"" "b")'),
    ("VOLUME /a /b", '(volume "/a" "/b")'),
    ("RUN [\"a\"] trailing", '(run "[\\"a\\"] trailing")'),
    ("RUN ['a']", '(run "[\'a\']")'),
    # Go's JSON reader rejects NaN and numbers too big for a float64: shell form, not an error.
    ("CMD [\"a\", NaN]", '(cmd "[\\"a\\", NaN]")'),
    ("CMD [\"a\", 1e999]", '(cmd "[\\"a\\", 1e999]")'),
    ("RUN [\"\\u0041\\/\", \"\\ud800\"]", '(run "A/" "�")'),
    ("RUN --mount=type=cache,target=/x --network=none echo  hi", '(run ["--mount=type=cache,target=/x" "--network=none"] "echo  hi")'),
    ("CMD", "(cmd)"),
    ("CMD []", "(cmd)"),
    ("SHELL [\"sh\", \"-c\"]", '(shell "sh" "-c")'),
    ("HEALTHCHECK NONE", '(healthcheck "NONE")'),
    ("HEALTHCHECK --interval=1s CMD [\"a\", \"b\"]", '(healthcheck ["--interval=1s"] "CMD" "a" "b")'),
    ("ENV a=1 b=\"x y\" c=", '(env "a" "1" "=" "b" "\\"x y\\"" "=" "c" "" "=")'),
    ("ENV a  b c", '(env "a" "b c" "")'),
    ("LABEL \"k=v\"", '(label "\\"k" "v\\"" "=")'),
    ("ARG a b=c d=\"e f\"", '(arg "a" "b=c" "d=\\"e f\\"")'),
    ("USER  me:grp ", '(user "me:grp")'),
    ("WORKDIR --x /a b", '(workdir ["--x"] "/a b")'),
    ("ONBUILD --f RUN --g [\"a\"]", '(onbuild ["--f"] (run ["--g"] "a"))'),
    ("ONBUILD ONBUILD ADD a b", '(onbuild (onbuild (add "a" "b")))'),
    ("ONBUILD", "(onbuild)"),
    ("FOO bar baz", '(foo "")'),
    ("Bar --flag x", '(bar ["--flag"] "")'),
    ("FROM\tx", '(from "x")'),
    ("MAINTAINER me <me@x>", '(maintainer "me <me@x>")'),
    ("STOPSIGNAL SIGKILL", '(stopsignal "SIGKILL")'),
    ("EXPOSE 80/tcp  443", '(expose "80/tcp" "443")'),
    ("RUN --x=\"unterminated rest", '(run ["--x=unterminated rest"])'),
    ("RUN --a\\ b c", '(run ["--a b"] "c")'),
])
def test_argument_styles(line: str, dump: str) -> None:
    assert dump_lines(line) == [dump]


def test_keyword_case_is_kept_separately() -> None:
    node = parse("fRoM alpine\n").children[0]
    assert (node.value, node.keyword) == ("from", "fRoM")


def test_json_form_flag() -> None:
    tree = parse("FROM a\nCMD [\"x\"]\nCMD x\nCOPY [\"a\", \"b\"]\nHEALTHCHECK CMD [\"c\"]\n")
    assert [n.json_form for n in tree.children] == [False, True, False, True, True]


def test_trailing_escape_in_words() -> None:
    # A trailing escape would continue the line in a file, so call the line parser directly.
    assert parse_line("ARG a\\").args == ["a"]
    assert parse_line('ARG "a\\').args == ['"a']
    assert parse_line("ARG 'a\\").args == ["'a\\"]
    assert parse_line("ARG a\\", escape_token="`").args == ["a\\"]
    assert parse_line("ARG a`", escape_token="`").args == ["a"]


def test_unquote_flag() -> None:
    assert unquote_flag('--a="b c"') == "--a=b c"
    assert unquote_flag("--a='it\"s'") == '--a=it"s'
    assert unquote_flag('--a="x\\"y"') == '--a=x"y'
    assert unquote_flag("--a\\") == "--a"


def test_parse_line_direct() -> None:
    node = parse_line("  COPY --from=b a  b  ")
    assert (node.value, node.flags, node.args) == ("copy", ["--from=b"], ["a", "b"])
    assert node.original == "  COPY --from=b a  b  "


# --- heredocs -------------------------------------------------------------------------------

def test_heredoc_body_keeps_crlf_and_spans_lines() -> None:
    text = "FROM x\r\nRUN <<EOF\r\necho hi\r\nEOF\r\nCMD y\r\n"
    tree = parse(text)
    run = tree.children[1]
    assert run.heredocs[0].content == "echo hi\r\n"
    assert (run.start_line, run.end_line) == (2, 4)
    assert tree.children[2].value == "cmd"


def test_onbuild_trigger_heredoc() -> None:
    tree = parse("FROM x\nONBUILD RUN <<-EOT bash\n\techo a\n\tEOT\nRUN b\n")
    onbuild = tree.children[1]
    assert onbuild.trigger is not None and onbuild.trigger.value == "run"
    assert [(h.name, h.content, h.chomp) for h in onbuild.heredocs] == [("EOT", "\techo a\n", True)]
    assert onbuild.trigger.heredocs == onbuild.heredocs
    assert onbuild.end_line == 4
    assert tree.children[2].args == ["b"]


def test_heredoc_only_for_run_copy_add_shell_form() -> None:
    tree = parse("FROM x\nCMD <<EOF\nEOF\nRUN [\"<<EOF\"]\n")
    assert [n.value for n in tree.children] == ["from", "cmd", "eof", "run"]


def test_unterminated_heredoc() -> None:
    with pytest.raises(DockerfileError, match="unterminated heredoc") as info:
        parse("FROM x\nRUN <<EOF\necho\n")
    assert info.value.line == 2
    assert info.value.end_line == 3
    assert "EOF" in (info.value.hint or "")


def test_heredoc_in_continued_line_and_fd() -> None:
    tree = parse("FROM x\nCOPY --chmod=644 \\\n  <<A 3<<'B' /dst\na\nA\nb $x\nB\n")
    copy = tree.children[1]
    assert [(h.name, h.content, h.expand, h.file_descriptor) for h in copy.heredocs] == [
        ("A", "a\n", True, 0), ("B", "b $x\n", False, 3)]
    assert (copy.start_line, copy.end_line) == (2, 7)


# --- error locations ------------------------------------------------------------------------

def test_error_location_in_continuation_line() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM x\nCMD \\\n  [\"a\", \\\n  1]\n", filename="ctx/Dockerfile")
    err = info.value
    assert (err.filename, err.line, err.column, err.end_line) == ("ctx/Dockerfile", 3, 3, 4)
    assert err.source_line == '  ["a", \\'
    assert str(err).startswith("ctx/Dockerfile:3:3: when using JSON array syntax")


def test_tree_position_maps_offsets_back() -> None:
    tree = parse("FROM x\n  RUN a \\\n# note\n\n    b\nONBUILD  RUN  c\n")
    run = tree.children[1]
    assert run.original == "RUN a     b"
    assert tree.position(run, 0) == (2, 3)
    assert tree.position(run, run.original.index("b")) == (5, 5)
    trigger = tree.children[2].trigger
    assert trigger is not None and trigger.original == "RUN  c"
    assert tree.position(trigger, trigger.original.index("c")) == (6, 15)


# --- directive detection (frontend selection helper) ---------------------------------------

def test_detect_directive() -> None:
    assert detect_directive("# syntax=docker/dockerfile:1.7 // x\nFROM a\n") == (
        "docker/dockerfile:1.7", "docker/dockerfile:1.7 // x", 1)
    assert detect_directive("#!/bin/sh\n//syntax=x\n") == ("x", "x", 2)
    assert detect_directive('{"syntax": "y"}') == ("y", "y", 0)
    assert detect_directive("FROM a\n# syntax=x\n") is None
    assert detect_directive("//check=a\n", "check", any_format=False) is None
