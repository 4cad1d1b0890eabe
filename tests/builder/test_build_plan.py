"""Build planning and config semantics without running anything: ARG scoping, stage selection,
and the image-config rules of each metadata instruction."""
from __future__ import annotations

import pytest

from builder.engine import config as cfgmod
from builder.errors import BuildError
from builder.engine.plan import ArgScope, make_plan
from dockerfile_grammar.errors import DockerfileError
from dockerfile_grammar.instructions import parse_dockerfile
from registry import mutate
from registry.manifest import ImageConfig
from registry.platform import host_platform

DF = """\
ARG BASE=busybox
ARG TAG
FROM ${BASE}:${TAG:-latest} AS base
ARG BASE
FROM base AS tools
FROM busybox AS docs
FROM scratch AS other
COPY --from=tools /a /a
RUN --mount=type=bind,from=docs,target=/d true
FROM other
"""


def _plan(text: str = DF, **kw):
    return make_plan(parse_dockerfile(text, "Dockerfile"), **{"build_args": {}, **kw})


def test_global_args_reach_from_and_only_needed_stages_are_planned():
    plan = _plan()
    assert plan.stages[0].base == "busybox:latest"
    assert plan.stages[1].base_stage == 0
    assert plan.order == [0, 1, 2, 3, 4]
    assert plan.stages[3].deps == {1, 2}
    plan = _plan(build_args={"TAG": "1.36", "BASE": "alpine"}, target="tools")
    assert plan.stages[0].base == "alpine:1.36"
    assert plan.order == [0, 1]                     # docs/other are not needed for "tools"
    assert plan.auto_args["TARGETSTAGE"] == "tools"


def test_platform_args_and_unused_build_args():
    plan = _plan(build_args={"NOPE": "1", "HTTP_PROXY": "http://p"})
    host = host_platform()
    assert plan.global_args["TARGETPLATFORM"] == str(host)
    assert plan.global_args["BUILDARCH"] == host.architecture
    assert plan.unused_build_args == ["NOPE"]       # proxies never count as unused


def test_stage_arg_declaration_takes_global_then_cli_value():
    plan = _plan(build_args={"BASE": "from-cli"})
    scope = ArgScope()
    scope.declare("BASE", None, plan, {}, "\\")
    assert scope.values["BASE"] == "from-cli"
    plan = _plan()
    scope = ArgScope()
    scope.declare("BASE", None, plan, {}, "\\")
    scope.declare("LOCAL", "x-$BASE", plan, {"BASE": "busybox"}, "\\")
    scope.declare("UNSET", None, plan, {}, "\\")
    assert scope.values == {"BASE": "busybox", "LOCAL": "x-busybox"}
    assert scope.declared == ["BASE", "LOCAL", "UNSET"]


def test_plan_errors():
    with pytest.raises(BuildError, match="target stage 'x' could not be found"):
        _plan(target="x")
    with pytest.raises(DockerfileError, match="should not be blank"):
        _plan("ARG B\nFROM $B\n")
    with pytest.raises(DockerfileError, match="used before it is defined"):
        _plan("FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\n")


def test_cmd_entrypoint_rules():
    base = ImageConfig.from_dict({"config": {"Cmd": ["sh"], "Env": ["A=1"]}})
    cfg = cfgmod.from_base(base)
    assert cfg.config.env[0].startswith("PATH=")                # a base without PATH gets one
    assert base.config.env == ["A=1"]                          # ...in a new config
    flags = cfgmod.StageFlags()
    cfg = cfgmod.set_entrypoint(cfg, ["/bin/app"], flags)
    assert cfg.config.cmd is None                              # inherited CMD reset
    cfg = cfgmod.set_cmd(cfg, ["--help"], flags)
    assert cfg.config.args_escaped is True                     # CMD sets ArgsEscaped (dispatchCmd)
    cfg = cfgmod.set_entrypoint(cfg, ["/bin/other"], flags)
    assert cfg.config.cmd == ["--help"]                        # this stage's CMD is kept
    cfg = cfgmod.set_entrypoint(cfg, [], flags)
    assert cfg.config.entrypoint is None                       # ENTRYPOINT [] clears it
    assert cfgmod.command_line(cfg, ["echo hi"], json_form=False) == ["/bin/sh", "-c", "echo hi"]
    cfg = cfgmod.set_shell(cfg, ["/bin/bash", "-eo", "pipefail", "-c"])
    assert cfgmod.command_line(cfg, ["echo hi"], json_form=False)[-1] == "echo hi"
    assert cfgmod.command_line(cfg, ["a", "b"], json_form=True) == ["a", "b"]


def test_env_workdir_expose_volume_stopsignal():
    cfg = cfgmod.empty_image("linux", "amd64")
    cfg = mutate.with_env(cfg, [("A", "1"), ("B", "2")])
    cfg = mutate.with_env(cfg, [("A", "3")])
    assert cfg.config.env[1:] == ["A=3", "B=2"]                # replaced in place
    cfg = mutate.with_workdir(cfg, "app")
    assert cfg.config.working_dir == "/app"
    assert mutate.with_workdir(cfg, "../srv/./x").config.working_dir == "/srv/x"
    assert mutate.with_workdir(cfg, "/tmp/").config.working_dir == "/tmp/"   # absolute: as given
    cfg = cfgmod.expose(cfg, ["80", "53/udp", "8000-8001/tcp"])
    assert set(cfg.config.exposed_ports) == {"80/tcp", "53/udp", "8000/tcp", "8001/tcp"}
    with pytest.raises(BuildError, match="invalid protocol"):
        cfgmod.expose(cfg, ["80/icmp"])
    with pytest.raises(BuildError, match="empty"):
        cfgmod.add_volumes(cfg, [""])
    cfg = cfgmod.set_stopsignal(cfg, "SIGRTMIN+3")
    with pytest.raises(BuildError, match="invalid signal"):
        cfgmod.set_stopsignal(cfg, "SIGNOPE")
    cfg = cfgmod.add_step(cfg, None, cfgmod.history("ENV A=3", "2024-01-01T00:00:00Z"))
    out = cfgmod.finalize(cfg, "2024-01-01T00:00:00Z").to_dict()
    assert out["history"][-1]["empty_layer"] is True and "Labels" not in out["config"]


def test_fill_history_times():
    h = lambda t: cfgmod.history("X", t)   # noqa: E731
    base = [h("2020-01-01T00:00:00Z"), h(None), h("2024-01-01T00:00:00Z"), h(None)]
    out, created = cfgmod.fill_history_times(base)
    # untimed before the first new timed entry take its time; after it, the last one before
    assert [e.created for e in out] == ["2020-01-01T00:00:00Z", "2024-01-01T00:00:00Z",
                                        "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"]
    assert created == "2024-01-01T00:00:00Z" and base[1].created is None   # the input is unchanged
    out, created = cfgmod.fill_history_times([h(None)])
    assert created is None and "created" not in out[0].to_dict()
