"""Typed instructions: BuildKit's instruction-level vectors (unit-cases.json, git-ref-cases.json) + own cases."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockerfile_grammar import DockerfileError
from dockerfile_grammar.gitref import parse_git_ref
from dockerfile_grammar.instructions import (AddCommand, CopyCommand, EntrypointCommand, FromCommand,
                                             HealthcheckCommand, RunCommand, ShellCommand,
                                             instruction_from_node, parse_dockerfile)
from dockerfile_grammar.instructions_mounts import MountError, parse_device, parse_mount
from dockerfile_grammar.syntax import Node
from dockerfile_grammar.values import format_go_duration, parse_chmod, parse_go_duration, parse_port_spec
from tests.fixtures.conformance import CONFORMANCE_DIR

BUILDKIT = CONFORMANCE_DIR / "buildkit"


def _load(name: str) -> dict | None:
    path = BUILDKIT / name
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


UNIT = _load("unit-cases.json")
GIT = _load("git-ref-cases.json")


def _cases(data: dict | None, *keys: str) -> list:
    if data is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"conformance data missing in {BUILDKIT}"))]
    for k in keys:
        data = data[k]
    return [pytest.param(c, id=str(i)) for i, c in enumerate(data)]


def parse_text(text: str):
    """Typed parse of a Dockerfile text (needs the raw parser)."""
    pytest.importorskip("dockerfile_grammar.parser", reason="raw parser module not present")
    return parse_dockerfile(text, filename="Dockerfile")


def instructions_of(text: str) -> list:
    df = parse_text(text)
    out = [a for a in df.meta_args]
    for st in df.stages:
        out.append(st.from_cmd)
        out.extend(st.instructions)
    return out


# --------------------------------------------------------------------------------------------
# unit-cases.json


@pytest.mark.parametrize("case", _cases(UNIT, "instructions_errors", "cases"))
def test_instruction_errors(case: dict) -> None:
    with pytest.raises(DockerfileError) as info:
        parse_text(case["dockerfile"])
    if "error" in case:
        assert info.value.message == case["error"]
    else:
        assert case["error_contains"] in info.value.message
    assert info.value.line == 1


def test_env_triples_must_be_complete() -> None:
    with pytest.raises(DockerfileError, match="Bad input to ENV, too many arguments"):
        instruction_from_node(Node("env", "ENV a b", args=["a", "b"], start_line=1, end_line=1))
    with pytest.raises(DockerfileError, match="ENV names can not be blank"):
        instruction_from_node(Node("env", "ENV =arg2", args=["", "arg2", "="], start_line=1, end_line=1))
    with pytest.raises(DockerfileError, match="LABEL names can not be blank"):
        instruction_from_node(Node("label", "LABEL =x", args=["", "x", "="], start_line=1, end_line=1))


@pytest.mark.parametrize("case", _cases(UNIT, "copy_heredoc", "cases"))
def test_copy_heredoc(case: dict) -> None:
    cmd = instructions_of("FROM scratch\n" + case["dockerfile"])[1]
    assert isinstance(cmd, CopyCommand)
    assert cmd.dest == case["dest"]
    assert cmd.sources == case["source_paths"]
    assert [(c.path, c.data, c.expand) for c in cmd.source_contents] == \
        [(c["path"], c["data"], c["expand"]) for c in case["source_contents"]]


@pytest.mark.parametrize("case", _cases(UNIT, "run_heredoc", "cases"))
def test_run_heredoc(case: dict) -> None:
    cmd = instructions_of("FROM scratch\n" + case["dockerfile"])[1]
    assert isinstance(cmd, RunCommand)
    assert cmd.prepend_shell == case["shell"]
    assert cmd.cmd == case["cmdline"]
    assert [(f.name, f.data, f.chomp) for f in cmd.files] == \
        [(f["name"], f["data"], f["chomp"]) for f in case["files"]]


@pytest.mark.parametrize("case", _cases(UNIT, "healthcheck", "cases"))
def test_healthcheck_cmd(case: dict) -> None:
    node = Node("healthcheck", "HEALTHCHECK " + " ".join(case["args"]), args=case["args"],
                json_form=case["json"], start_line=1, end_line=1)
    cmd = instruction_from_node(node)
    assert isinstance(cmd, HealthcheckCommand)
    assert cmd.test == case["test"]


@pytest.mark.parametrize("case", _cases(UNIT, "healthcheck", "durations"))
def test_healthcheck_durations(case: dict) -> None:
    text = f"FROM scratch\nHEALTHCHECK --interval={case['value']} CMD true\n"
    if case.get("ok"):
        cmd = instructions_of(text)[1]
        assert cmd.interval == parse_go_duration(case["value"])
    else:
        with pytest.raises(DockerfileError) as info:
            parse_text(text)
        assert case["error_contains"] in info.value.message
        assert (info.value.line, info.value.column) == (2, 13)


def test_doc_comments() -> None:
    if UNIT is None:
        pytest.skip("conformance data missing")
    case = UNIT["doc_comments"]
    df = parse_text(case["dockerfile"])
    exp = case["expect"]
    assert df.stages[0].comment == exp["stage0_doc"]
    assert df.meta_args[0].args[0].comment == exp["meta_arg_foo_doc"]
    stage_args = [i for i in df.stages[0].instructions]
    assert stage_args[0].args[0].comment == exp["stage_arg_foo_doc"]
    assert stage_args[1].args[0].comment == exp["arg_bar_doc"]
    assert stage_args[1].args[1].comment == exp["arg_baz_doc"]


@pytest.mark.parametrize("case", _cases(UNIT, "run_device", "cases"))
def test_run_device(case: dict) -> None:
    if "error" in case:
        with pytest.raises(MountError, match=case["error"]):
            parse_device(case["input"])
        return
    dev = parse_device(case["input"])
    assert (dev.name, dev.required) == (case["name"], case["required"])


@pytest.mark.parametrize("case", _cases(UNIT, "expose_ports", "cases"))
def test_expose_ports(case: dict) -> None:
    specs = case["specs"] if "specs" in case else [case["spec"]]
    if "error" in case:
        with pytest.raises(ValueError) as info:
            for s in specs:
                parse_port_spec(s)
        if not case["error"].startswith("("):
            assert str(info.value) == case["error"]
        return
    assert [p for s in specs for p in parse_port_spec(s)] == case["ports"]


# --------------------------------------------------------------------------------------------
# git-ref-cases.json

_GIT_FIELDS = {"Remote": "remote", "ShortName": "short_name", "Ref": "ref", "SubDir": "subdir",
               "UnencryptedTCP": "unencrypted_tcp", "IndistinguishableFromLocal": "indistinguishable_from_local",
               "MTime": "mtime", "Checksum": "checksum", "FetchByCommit": "fetch_by_commit"}


@pytest.mark.parametrize("case", _cases(GIT, "parse"))
def test_git_ref_parse(case: dict) -> None:
    if not case["valid"]:
        if "error_contains" in case:
            with pytest.raises(DockerfileError) as info:
                parse_git_ref(case["ref"])
            assert case["error_contains"] in info.value.message
        else:
            assert parse_git_ref(case["ref"]) is None
        return
    ref = parse_git_ref(case["ref"])
    assert ref is not None
    for go_name, attr in _GIT_FIELDS.items():
        default = False if isinstance(getattr(ref, attr), bool) else ""
        assert getattr(ref, attr) == case["expected"].get(go_name, default), go_name


@pytest.mark.parametrize("case", _cases(GIT, "fragment_format") + _cases(GIT, "fragment_format_with_subdir"))
def test_git_ref_fragment_format(case: dict) -> None:
    with_subdir = case in (GIT or {}).get("fragment_format_with_subdir", [])
    try:
        ref = parse_git_ref(case["ref"])
    except DockerfileError:
        ref = None
    if not case["ok"]:
        assert ref is None
        return
    assert ref is not None and ref.fragment_format(with_subdir=with_subdir) == case["expected"]


# --------------------------------------------------------------------------------------------
# own cases


def test_from_stage_names_and_platform() -> None:
    df = parse_text("FROM --platform=$BUILDPLATFORM golang:1.22 aS Build\nFROM build\n")
    assert [s.name for s in df.stages] == ["build", ""]
    assert df.stages[0].platform == "$BUILDPLATFORM"
    assert df.stages[0].from_cmd.as_keyword == "aS"
    assert df.stage("BUILD") is df.stages[0] and df.stage("1") is df.stages[1]
    for bad, msg in [("FROM a AS 1x", "invalid name for build stage"), ("FROM a b", "one or three"),
                     ("FROM a AS b c", "one or three"), ("FROM a IS b", "one or three"),
                     ("FROM", "one or three"), ("FROM a AS b$c", "invalid name")]:
        with pytest.raises(DockerfileError, match=msg):
            parse_text(bad + "\n")


@pytest.mark.parametrize("flag,ok", [("--link", True), ("--link=TRUE", True), ("--link=false", True),
                                     ("--link=", False), ("--link=yes", False), ("--from", False),
                                     ("--from=", True), ("--exclude=a --exclude=b", True),
                                     ("--from=a --from=b", False)])
def test_flag_rules(flag: str, ok: bool) -> None:
    text = f"FROM scratch\nCOPY {flag} src /dst\n"
    if ok:
        cmd = instructions_of(text)[1]
        assert isinstance(cmd, CopyCommand)
        if "exclude" in flag:
            assert cmd.excludes == ["a", "b"]
        if flag.startswith("--link"):
            assert cmd.link == (flag in ("--link", "--link=TRUE"))
    else:
        with pytest.raises(DockerfileError):
            parse_text(text)


def test_unknown_flag_lists_valid_ones_and_points_at_it() -> None:
    with pytest.raises(DockerfileError) as info:
        parse_text("FROM scratch\n\nCOPY --chmown=1 a /b\n")
    err = info.value
    assert err.message == "unknown flag: --chmown"
    assert "did you mean --chown?" in err.hint and "--from" in err.hint
    assert (err.line, err.column) == (3, 6)
    assert "COPY --chmown=1 a /b\n       ^" in str(err)


def test_unknown_instruction_suggests_closest() -> None:
    with pytest.raises(DockerfileError) as info:
        parse_text("FROM scratch\nCOPPY a /b\n")
    assert info.value.message == "unknown instruction: COPPY"
    assert info.value.hint == "did you mean COPY?"
    assert (info.value.line, info.value.column) == (2, 1)


def test_add_flags() -> None:
    cmd = instructions_of("FROM scratch\nADD --keep-git-dir --checksum=sha256:abc --unpack=false "
                          "--chown=1:2 --chmod=u+x,g-w --link --exclude=*.md https://x/y.git /d\n")[1]
    assert isinstance(cmd, AddCommand)
    assert (cmd.keep_git_dir, cmd.checksum, cmd.unpack, cmd.chown, cmd.chmod, cmd.link, cmd.excludes) == \
        (True, "sha256:abc", False, "1:2", "u+x,g-w", True, ["*.md"])
    assert instructions_of("FROM scratch\nADD a b\n")[1].unpack is None
    with pytest.raises(DockerfileError, match="unknown flag: --from"):
        parse_text("FROM scratch\nADD --from=x a b\n")
    with pytest.raises(DockerfileError, match="invalid chmod"):
        parse_text("FROM scratch\nCOPY --chmod=999 a b\n")


def test_run_flags() -> None:
    cmd = instructions_of("FROM scratch\nRUN --mount=type=secret,id=tok,env=TOKEN --network=host "
                          "--security=insecure --device=vendor.com/gpu=all,required echo hi\n")[1]
    assert isinstance(cmd, RunCommand)
    assert cmd.network == "host" and cmd.security == "insecure"
    assert [(d.name, d.required) for d in cmd.devices] == [("vendor.com/gpu=all", True)]
    assert cmd.mounts[0].type == "secret" and cmd.mounts[0].env == "TOKEN"
    assert cmd.flags_used == ["mount", "network", "security", "device"]
    for bad in ("--network=bridge", "--security=x", "--mount=type=nope,target=/x", "--frob=1"):
        with pytest.raises(DockerfileError):
            parse_text(f"FROM scratch\nRUN {bad} true\n")


@pytest.mark.parametrize("value,expect", [
    ("target=/src", dict(type="bind", target="/src", read_only=True)),
    ("type=bind,src=.,dst=/src,rw", dict(source=".", target="/src", read_only=False)),
    ("type=bind,target=/x,readonly=false", dict(read_only=False)),
    ("type=cache,target=/root/.cache,sharing=LOCKED,mode=0700,uid=1000",
     dict(type="cache", read_only=False, cache_sharing="locked", mode=0o700, uid=1000)),
    ("type=tmpfs,target=/tmp,size=64m", dict(type="tmpfs", read_only=False, size_limit=64 << 20)),
    ("type=secret,id=aws,target=/root/.aws/credentials,required", dict(type="secret", required=True, cache_id="aws")),
    ("type=ssh", dict(type="ssh", read_only=True)),
    ("type=cache,target=$HOME/.cache", dict(type="cache", target="$HOME/.cache")),
    ('"type=bind,target=/a,b"', "error"),
    ("type=bind,target=/x,mode=0700", "error"),
    ("type=bind,target=/x,sharing=shared", "error"),
    ("type=tmpfs,target=/x,required", "error"),
    ("type=cache,target=/x,size=1", "error"),
    ("type=secret", "error"),
    ("type=secret,id=a,source=b", "error"),
    ("type=secret,id=a,from=x", "error"),
    ("type=bind,from=$STAGE,target=/x", "error"),
    ("type=cache,target=/x,mode=abc", "error"),
    ("type=cache,target=/x,uid=-1", "error"),
    ("type=bind,target=/x,ro=maybe", "error"),
    ("type=bind,target=/x,colour=red", "error"),
    ("", "error"),
    ("type=cache", "error"),               # no target: refused when parsed (and by lint), not in runc
    ("type=tmpfs,size=1m", "error"),
    ("type=bind,source=.", "error"),
])
def test_mounts(value: str, expect) -> None:
    if expect == "error":
        with pytest.raises(MountError):
            parse_mount(value)
        return
    m = parse_mount(value)
    for k, v in expect.items():
        assert getattr(m, k) == v, k


def test_mount_defaults_and_expander() -> None:
    secret = parse_mount("type=secret,target=/run/token")
    assert (secret.effective_id(), secret.effective_target(), secret.effective_mode()) == \
        ("token", "/run/token", 0o400)
    assert parse_mount("type=secret,id=npmrc").effective_target() == "/run/secrets/npmrc"
    ssh = parse_mount("type=ssh")
    assert (ssh.effective_id(), ssh.effective_target(2), ssh.effective_mode()) == \
        ("default", "/run/buildkit/ssh_agent.2", 0o600)
    cache = parse_mount("type=cache,target=/c")
    assert (cache.effective_id(), cache.effective_mode(), cache.effective_sharing()) == ("/c", 0o755, "shared")
    expanded = parse_mount("type=$T,target=$D", expand=lambda v: {"$T": "cache", "$D": "/d"}.get(v, v))
    assert (expanded.type, expanded.target, expanded.read_only) == ("cache", "/d", False)


def test_shell_json_only_and_entrypoint_reset() -> None:
    with pytest.raises(DockerfileError, match="SHELL requires the arguments to be in JSON form"):
        parse_text("FROM scratch\nSHELL /bin/bash -c\n")
    cmds = instructions_of('FROM scratch\nSHELL ["/bin/bash", "-c"]\nENTRYPOINT []\nENTRYPOINT ["a"]\n')
    assert isinstance(cmds[1], ShellCommand) and cmds[1].shell == ["/bin/bash", "-c"]
    assert isinstance(cmds[2], EntrypointCommand) and cmds[2].cmd is None
    assert cmds[3].cmd == ["a"] and cmds[3].prepend_shell is False


def test_onbuild() -> None:
    cmd = instructions_of("FROM scratch\nONBUILD COPY --from=x a b\n")[1]
    assert cmd.expression == "COPY --from=x a b"
    assert cmd.trigger.value == "copy"
    with pytest.raises(DockerfileError, match="MAINTAINER isn't allowed as an ONBUILD trigger"):
        parse_text("FROM scratch\nONBUILD MAINTAINER me\n")


def test_healthcheck_options_and_errors() -> None:
    cmd = instructions_of('FROM scratch\nHEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s '
                          '--start-interval=1.5s --retries=5 CMD ["curl", "-f", "x"]\n')[1]
    assert cmd.test == ["CMD", "curl", "-f", "x"]
    assert (cmd.interval, cmd.timeout, cmd.start_period, cmd.start_interval, cmd.retries) == \
        (90 * 10**9, 5 * 10**8, 2 * 10**9, 15 * 10**8, 5)
    assert instructions_of("FROM scratch\nHEALTHCHECK NONE\n")[1].test == ["NONE"]
    for bad, msg in [("HEALTHCHECK NONE x", "takes no arguments"), ("HEALTHCHECK CONNECT TCP 7000", "Unknown type"),
                     ("HEALTHCHECK CMD", "Missing command"), ("HEALTHCHECK --retries=-1 CMD x", "negative"),
                     ("HEALTHCHECK --timeout=5 CMD x", "missing unit"), ("HEALTHCHECK --retries=x CMD x", "invalid")]:
        with pytest.raises(DockerfileError, match=msg):
            parse_text("FROM scratch\n" + bad + "\n")


@pytest.mark.parametrize("text,ns", [("0", 0), ("1h2m3.5s", 3723_500_000_000), ("1.5us", 1500), ("-2ms", -2_000_000),
                                     (".5s", 500_000_000), ("1µs", 1000)])
def test_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


def test_go_duration_errors_and_format() -> None:
    for bad in ("", "5", "1x", "s", "1.s.", "."):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    assert [format_go_duration(n) for n in (0, 90 * 10**9, 500_000_000, 3_600 * 10**9, 1500)] == \
        ["0s", "1m30s", "500ms", "1h0m0s", "1.5µs"]


def test_chmod_values() -> None:
    assert parse_chmod("0755") == 0o755 and parse_chmod("u+x,go-w") == "u+x,go-w"
    for bad in ("", "8", "u+q", "99999"):
        with pytest.raises(ValueError):
            parse_chmod(bad)


def test_volume_and_arity() -> None:
    assert instructions_of('FROM scratch\nVOLUME ["/a", "/b"]\n')[1].volumes == ["/a", "/b"]
    with pytest.raises(DockerfileError, match="VOLUME specified can not be an empty string"):
        parse_text('FROM scratch\nVOLUME [""]\n')
    with pytest.raises(DockerfileError, match="USER requires exactly one argument"):
        instruction_from_node(Node("user", "USER", args=[], start_line=1, end_line=1))


def test_instruction_before_from_is_rejected_but_arg_is_global() -> None:
    df = parse_text("ARG A=1 B\nFROM scratch\n")
    assert [(a.key, a.value) for a in df.meta_args[0].args] == [("A", "1"), ("B", None)]
    with pytest.raises(DockerfileError, match="ARG names can not be blank"):
        parse_text("ARG =1\nFROM scratch\n")
    with pytest.raises(DockerfileError, match="no build stage"):
        parse_text("RUN true\nFROM scratch\n")


def test_expandable_words() -> None:
    cmds = instructions_of("FROM $IMG AS a\nCOPY --chown=$U src $D\nENV K=$V\n")
    assert isinstance(cmds[0], FromCommand) and cmds[0].expandable_words() == ["$IMG"]
    assert cmds[1].expandable_words() == ["src", "$D", "$U"]
    assert cmds[2].expandable_words() == ["K", "$V"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("type=bindcachesecretsshtmpfs,target/src$\"'0123456789:-.@#?&rowu")),
               max_size=40))
def test_value_parsers_fail_only_with_their_errors(text: str) -> None:
    for fn, errors in ((parse_mount, MountError), (parse_device, MountError), (parse_port_spec, ValueError),
                       (parse_go_duration, ValueError), (parse_chmod, ValueError), (parse_git_ref, DockerfileError)):
        try:
            fn(text)
        except errors:
            pass


def test_suggestions_follow_buildkit() -> None:
    from dockerfile_grammar.suggest import suggest
    assert suggest("VERSON", ["VERSION", "VERSIONS"]) == "VERSION"
    assert suggest("X", ["Y"]) == "Y"                      # distance 1 is close enough
    assert suggest("TAG", ["TAGS_LIST"]) == ""            # distance 6 is not
    assert suggest("TAG", ["TAG", "TAGS"]) == ""          # an exact match means no suggestion
    assert suggest("coppy", ["COPY", "ADD"], case_sensitive=False) == "copy"
    with pytest.raises(DockerfileError) as info:
        parse_text("FROM scratch\nworkdri /x\n")
    assert info.value.hint == "did you mean workdir?"
    with pytest.raises(DockerfileError) as info:
        parse_text("FROM scratch\nFOO bar\n")
    assert info.value.hint == "did you mean FROM?"        # as BuildKit: distance 2
    with pytest.raises(DockerfileError) as info:
        parse_text("FROM scratch\nBLAHBLAH bar\n")
    assert info.value.hint.startswith("valid instructions: ADD, ARG")
