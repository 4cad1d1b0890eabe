"""Lint: validation errors, BuildKit build checks, check directives, and the `pybuild lint` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.conformance import CONFORMANCE_DIR

pytest.importorskip("dockerfile_grammar.parser", reason="raw parser module not present")

from builder.cli import main  # noqa: E402
from dockerfile_grammar.linter import Diagnostic, lint  # noqa: E402
from tests.fixtures.cli import run_pybuild


def findings(text: str, **kw) -> list[tuple[int, int, str, str]]:
    return [(d.line, d.column, d.rule, d.message) for d in lint(text, "Dockerfile", **kw)]


def rules(text: str, **kw) -> list[str]:
    return [d.rule for d in lint(text, "Dockerfile", **kw)]


CLEAN = """\
# syntax=docker/dockerfile:1
ARG BASE=alpine:3.20
FROM $BASE AS build
ARG VERSION=1.0
ENV APP_HOME=/app PATH=/app/bin:$PATH
WORKDIR $APP_HOME
COPY --chown=1000:1000 . .
RUN --mount=type=cache,target=/root/.cache make VERSION=$VERSION
FROM build AS final
EXPOSE 8080/tcp
HEALTHCHECK --interval=30s CMD ["wget", "-q", "localhost:8080"]
ENTRYPOINT ["/app/bin/server"]
CMD ["--serve"]
"""


def test_clean_dockerfile_has_no_findings() -> None:
    assert findings(CLEAN) == []


@pytest.mark.parametrize("text,expected", [
    ("FROM alpine AS Build\n", [(1, 16, "StageNameCasing", "Stage name 'Build' should be lowercase")]),
    ("FROM alpine as build\n", [(1, 13, "FromAsCasing", "'as' and 'FROM' keywords' casing do not match")]),
    ("from alpine AS build\n", [(1, 13, "FromAsCasing", "'AS' and 'from' keywords' casing do not match")]),
    ("FROM a\nCMD echo hi\n", [(2, 1, "JSONArgsRecommended", "JSON arguments recommended for CMD to prevent "
                                                          "unintended behavior related to OS signals")]),
    ("FROM a\nENTRYPOINT run me\n", [(2, 1, "JSONArgsRecommended", "JSON arguments recommended for ENTRYPOINT "
                                                                  "to prevent unintended behavior related to OS signals")]),
    ("FROM a\nMAINTAINER me\n", [(2, 1, "MaintainerDeprecated",
                                  "Maintainer instruction is deprecated in favor of using label")]),
    ("FROM a\nENV K V\n", [(2, 1, "LegacyKeyValueFormat",
                            '"ENV key=value" should be used instead of legacy "ENV key value" format')]),
    ("FROM a\nLABEL k some value\n", [(2, 1, "LegacyKeyValueFormat",
                                       '"LABEL key=value" should be used instead of legacy "LABEL key value" format')]),
    ("FROM a\nWORKDIR app\n", [(2, 9, "WorkdirRelativePath",
                                'Relative workdir "app" can have unexpected results if the base image changes')]),
    ("FROM a\nCOPY $SRC /x\n", [(2, 6, "UndefinedVar", "Usage of undefined variable '$SRC'")]),
    ("FROM a\nARG VERSION\nCOPY ${VERSON} /x\n",
     [(3, 6, "UndefinedVar", "Usage of undefined variable '$VERSON' (did you mean $VERSION?)")]),
    ("ARG TAG=1\nFROM a:$TAGG\n", [(2, 8, "UndefinedArgInFrom", "FROM argument 'TAGG' is not declared (did you mean TAG?)")]),
    ("FROM a\nfrom b\nRUN x\n", [(2, 1, "ConsistentInstructionCasing",
                                  "Command 'from' should match the case of the command majority (uppercase)")]),
    ("from a\nRUN x\nrun y\n", [(2, 1, "ConsistentInstructionCasing",
                                 "Command 'RUN' should match the case of the command majority (lowercase)")]),
    ("FROM a AS x\nFROM b AS x\n", [(2, 11, "DuplicateStageName", 'Duplicate stage name "x", stage names should be unique')]),
    ("FROM a AS context\n", [(1, 11, "ReservedStageName", 'Stage name should not use the same name as reserved stage "context"')]),
    ("FROM a\nEXPOSE 80/TCP\n", [(2, 8, "ExposeProtoCasing", "Defined protocol '80/TCP' in EXPOSE instruction should be lowercase")]),
    ("FROM a\nEXPOSE 0.0.0.0:80:80\n", [(2, 8, "ExposeInvalidFormat", "EXPOSE instruction should not define an "
                                                                     "IP address or host-port mapping, found '0.0.0.0:80:80'")]),
    ("FROM a\nCMD [\"a\"]\nCMD [\"b\"]\n", [(2, 1, "MultipleInstructionsDisallowed", "Multiple CMD instructions should "
                                                 "not be used in the same stage because only the last one will be used")]),
    ("FROM a\nARG GITHUB_TOKEN\nENV PUBLIC_KEY=x\n", [(2, 5, "SecretsUsedInArgOrEnv", "Do not use ARG or ENV instructions "
                                                        'for sensitive data (ARG "GITHUB_TOKEN")')]),
    ("FROM --platform=linux/arm64 a\n", [(1, 6, "FromPlatformFlagConstDisallowed",
                                          'FROM --platform flag should not use constant value "linux/arm64"')]),
    ("FROM --platform=$TARGETPLATFORM a\n", [(1, 6, "RedundantTargetPlatform", "Setting platform to predefined "
                                              "$TARGETPLATFORM in FROM is redundant as this is the default behavior")]),
    ("ARG TAG\nFROM alpine:$TAG\n", [(2, 6, "InvalidDefaultArgInFrom", "Default value for ARG alpine:$TAG results "
                                      "in empty or invalid base image name")]),
])
def test_rule(text: str, expected: list) -> None:
    assert findings(text) == expected


def test_no_false_positives_for_common_patterns() -> None:
    text = ("ARG GO=1.22\nFROM --platform=$BUILDPLATFORM golang:$GO AS build\nARG TARGETOS TARGETARCH\n"
            "RUN GOOS=$TARGETOS go build\nFROM --platform=linux/amd64 alpine AS build-amd64\n"
            "WORKDIR /src\nWORKDIR sub\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo shell form is fine after SHELL\n"
            "ENV A=1\nENV B=$A\nARG PUBLIC_KEY_FILE\n")
    assert findings(text) == []
    # all pairs of one ENV see the environment from before it, as in BuildKit
    assert rules("FROM a\nENV A=1 B=$A\n") == ["UndefinedVar"]


def test_stage_inherits_env_and_args() -> None:
    text = "FROM a AS base\nENV X=1\nARG Y\nFROM base\nCOPY $X$Y /d\nFROM a\nCOPY $X /d\n"
    assert findings(text) == [(7, 6, "UndefinedVar", "Usage of undefined variable '$X'")]
    # an absolute WORKDIR of the parent stage does not count (per-stage, as in BuildKit)
    assert rules("FROM a AS base\nWORKDIR /src\nFROM base\nWORKDIR sub\n") == ["WorkdirRelativePath"]


def test_build_args_and_image_env_count_as_defined() -> None:
    assert rules("FROM a:$TAG\n") == ["UndefinedArgInFrom"]
    assert rules("FROM a:$TAG\n", build_args={"TAG": "1"}) == ["UndefinedArgInFrom"]  # undeclared stays empty
    assert rules("ARG TAG\nFROM a:${TAG:-1}\n", build_args={"TAG": "2"}) == []
    assert rules("FROM a:$V\nARG V\n") == ["InvalidDefaultArgInFrom"]  # any ARG of the file declares it
    assert rules("FROM a\nWORKDIR $HOME/x\n") == ["UndefinedVar"]
    assert rules("FROM a\nWORKDIR $HOME/x\n", image_env={"HOME": "/root"}) == []


def test_check_directive_skip_and_error() -> None:
    text = "FROM a\nMAINTAINER me\nCMD x\n"
    assert rules(text) == ["MaintainerDeprecated", "JSONArgsRecommended"]
    assert rules("# check=skip=MaintainerDeprecated\n" + text) == ["JSONArgsRecommended"]
    assert rules("# check=skip=all\n" + text) == []
    diags = lint("# check=error=true;skip=JSONArgsRecommended\n" + text)
    assert [(d.rule, d.severity) for d in diags] == [("MaintainerDeprecated", "error")]


def test_experimental_definition_description() -> None:
    text = "# the base image\nFROM a AS base\n# version sets it\nARG version\n# x\nARG a b\n"
    assert rules(text) == []
    assert findings("# check=experimental=InvalidDefinitionDescription\n" + text) == [
        (3, 1, "InvalidDefinitionDescription", "Comment for FROM should follow the format: `# base <description>`"),
        (7, 1, "InvalidDefinitionDescription", "Comment for ARG should follow the format: `# <arg_key> <description>`"),
    ]


def test_empty_continuation_conformance() -> None:
    path = CONFORMANCE_DIR / "buildkit" / "parser" / "empty-continuation-case" / "Dockerfile"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    got = [(d.line, d.rule, d.message) for d in lint(path.read_text(encoding="utf-8"))]
    assert [g for g in got if g[1] == "NoEmptyContinuation"] == \
        [(8, "NoEmptyContinuation", "Empty continuation line"), (14, "NoEmptyContinuation", "Empty continuation line")]


def test_validation_errors_are_all_reported_with_positions() -> None:
    diags = lint("FROM a\nCOPY --chmown=1 a /b\nRUN --network=bridge x\nCOPPY a b\n")
    assert [(d.line, d.column, d.severity, d.message) for d in diags] == [
        (2, 6, "error", "unknown flag: --chmown"),
        (3, 5, "error", "unsupported network mode 'bridge'"),
        (4, 1, "error", "unknown instruction: COPPY"),
    ]
    assert diags[2].hint == "did you mean COPY?"


def test_build_time_copy_errors() -> None:
    diags = lint("FROM a AS one\nCOPY --from=two /x /y\nCOPY --from=1 /x /y\nCOPY https://x.org/f /f\n"
                 "FROM b AS two\nCOPY --from=ONE /x /y\n")
    assert [(d.line, d.column, d.severity, d.message) for d in diags] == [
        (2, 6, "error", 'cannot copy from stage "two", it needs to be defined before current stage "one"'),
        (3, 6, "error", 'cannot copy from stage "1", it needs to be defined before current stage "one"'),
        (4, 6, "error", "source can't be a URL for COPY"),
    ]


def test_bad_substitutions_are_errors_not_crashes() -> None:
    diags = lint("FROM ${BASE\nWORKDIR ${D/\nCOPY ${:x} /d\n")
    assert [(d.line, d.severity) for d in diags] == [(1, "error"), (2, "error"), (3, "error")]
    assert "missing '}'" in diags[0].message and "bad substitution" in diags[2].message


def test_parse_error_is_a_diagnostic() -> None:
    diags = lint("FROM a\nRUN <<EOF\necho never ends\n")
    assert len(diags) == 1 and diags[0].severity == "error" and diags[0].line >= 2
    assert lint("ARG A=1\n")[0].message == "dockerfile contains no stages to build"


def test_diagnostic_format_and_url() -> None:
    d = Diagnostic("Dockerfile", 3, 5, "warning", "JSONArgsRecommended", "msg")
    assert d.format() == "Dockerfile:3:5: warning: msg (JSONArgsRecommended)"
    assert d.url == "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
    assert Diagnostic("f", 1, 1, "error", "", "bad").format() == "f:1:1: error: bad"


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_text_output_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "Dockerfile").write_text("FROM a\nMAINTAINER me\n")
    assert main(["lint", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path}/Dockerfile:2:1: warning: Maintainer instruction is deprecated in favor "
                   "of using label (MaintainerDeprecated)"]
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM a\n\nRUN --mount=type=cache,target=/x,sharing=sometimes true\n")
    assert main(["lint", "-f", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{bad}:3:5: error: unsupported sharing value 'sometimes'\n")


def test_cli_json_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    df = tmp_path / "Dockerfile"
    df.write_text("FROM a AS B\n")
    assert main(["lint", "--format", "json", "-f", str(df)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == [{"filename": str(df), "line": 1, "column": 11, "severity": "warning", "rule": "StageNameCasing",
                     "message": "Stage name 'B' should be lowercase", "hint": None,
                     "url": "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/"}]


def test_cli_missing_file_and_subprocess(tmp_path: Path) -> None:
    assert main(["lint", str(tmp_path)]) == 1
    (tmp_path / "Dockerfile").write_text("FROM a\nRUN [\"a\", 1]\n")
    proc = run_pybuild("lint", "-q", tmp_path, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{tmp_path}/Dockerfile:2:")
    assert ": error: " in proc.stdout and "Traceback" not in proc.stderr


_LINES = st.sampled_from([
    "FROM a", "FROM a AS b", "from $X as Y", "ARG A=1", "ARG", "ENV K V", "ENV =x", "COPY a", "COPY --from=b a /c",
    "RUN --mount=type=cache,target=$T x", "RUN --mount=type=bad x", "CMD x", "HEALTHCHECK CMD", "ONBUILD ONBUILD x",
    "WORKDIR rel", "WORKDIR ${x", "FROM ${b", "FROM a AS ${c", "EXPOSE 80/TCP", "SHELL x", "LABEL a=${b", "USER ${u:?}", "FOO bar", "MAINTAINER", "# check=skip=all",
    "RUN <<EOF", "EOF", "\\", "", "VOLUME [\"\"]", "STOPSIGNAL 9", "ADD --chmod=9x a b",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(_LINES, max_size=12))
def test_lint_never_raises(lines: list[str]) -> None:
    diags = lint("\n".join(lines) + "\n")
    assert all(d.severity in ("error", "warning") and d.line >= 1 and d.column >= 1 for d in diags)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("FROMRUNCOPYENVARG fromas-=$'\"\\[]{},:<>#\n\t/x1")), max_size=80))
def test_lint_arbitrary_text_never_raises(text: str) -> None:
    for d in lint(text):
        assert d.severity in ("error", "warning")
