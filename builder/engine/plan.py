"""Build planning: which stages to build, in what order, with which build arguments.

ARG scoping follows Docker (BuildKit):

* ARGs before the first FROM are global; they are visible only in FROM lines (image and
  --platform) unless a stage re-declares them with ``ARG NAME`` (which then takes the global
  value, or the --build-arg value).
* The automatic platform args (TARGETPLATFORM, TARGETOS, TARGETARCH, TARGETVARIANT,
  BUILDPLATFORM, BUILDOS, BUILDARCH, BUILDVARIANT) and TARGETSTAGE are global without any
  declaration; inside a stage only after ``ARG X``.
* The proxy args (HTTP_PROXY, ...) given with --build-arg reach RUN without a declaration
  and are kept out of history and cache keys.
* A stage built FROM another stage inherits that stage's ARGs.

Only the stages the target needs are built (FROM a stage, COPY --from, RUN --mount from=...);
the plan gives them as a DAG so independent stages can build side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dockerfile_grammar import expand_word
from dockerfile_grammar.errors import DockerfileError
from dockerfile_grammar.instructions import (ArgCommand, CopyCommand, Dockerfile, RunCommand, Stage)
from registry.platform import Platform, host_platform

from ..errors import BuildError

PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


def platform_args(target: Platform, build: Platform, target_stage: str) -> dict[str, str]:
    """The automatic args BuildKit defines for every build."""
    def parts(prefix: str, p: Platform) -> dict[str, str]:
        return {f"{prefix}PLATFORM": str(p), f"{prefix}OS": p.os, f"{prefix}ARCH": p.architecture,
                f"{prefix}VARIANT": p.variant or ""}
    return {**parts("TARGET", target), **parts("BUILD", build), "TARGETSTAGE": target_stage}


@dataclass
class PlannedStage:
    """A stage of the plan, with its FROM resolved."""

    stage: Stage
    index: int
    name: str                    # the stage name, or its index as a string when unnamed
    base: str                    # FROM's image reference after expansion ("scratch" possible)
    base_stage: int | None       # index of the stage it is built on, if any
    platform: str                # FROM --platform after expansion ("" when absent)
    deps: set[int] = field(default_factory=set)


@dataclass
class BuildPlan:
    """The stages to build (``order``: dependencies first) and the argument scopes."""

    dockerfile: Dockerfile
    stages: list[PlannedStage]
    target: int
    order: list[int]
    global_args: dict[str, str]          # values of global ARGs (declared or automatic)
    build_args: dict[str, str]           # --build-arg values as given
    auto_args: dict[str, str]
    unused_build_args: list[str] = field(default_factory=list)

    def stage_by_ref(self, ref: str, before: int) -> PlannedStage | None:
        """The stage named ``ref`` (name or index) defined before stage ``before``."""
        st = self.dockerfile.stage(ref)
        if st is None or st.index >= before:
            return None
        return self.stages[st.index]


def make_plan(df: Dockerfile, build_args: dict[str, str], target: str | None = None,
              platform: Platform | None = None) -> BuildPlan:
    """Resolve global ARGs and FROM lines, pick the target stage and the stages it needs."""
    if not df.stages:
        raise BuildError(f"{df.filename}: the Dockerfile has no FROM instruction: nothing to build")
    tgt_index = len(df.stages) - 1
    if target:
        st = df.stage(target)
        if st is None:
            names = [s.name for s in df.stages if s.name]
            raise BuildError(f"target stage {target!r} could not be found in {df.filename}"
                             + (f"; stages: {', '.join(names)}" if names else ""))
        tgt_index = st.index
    tgt_stage = df.stages[tgt_index]
    host = host_platform()
    auto = platform_args(platform or host, host, tgt_stage.name or "default")
    used: set[str] = set()
    escape = df.escape_token

    # Global scope: automatic args, then each global ARG in order.
    global_env: dict[str, str] = dict(auto)
    declared_globals: dict[str, str | None] = {}
    for cmd in df.meta_args:
        for a in cmd.args:
            if a.key in build_args:
                val: str | None = build_args[a.key]
                used.add(a.key)
            elif a.value is not None:
                val = _expand(a.value, global_env, escape, df, cmd)
            else:
                val = None
            declared_globals[a.key] = val
            if val is not None:
                global_env[a.key] = val
            else:
                global_env.pop(a.key, None)

    planned: list[PlannedStage] = []
    for st in df.stages:
        base = _expand(st.base_name, global_env, escape, df, st.from_cmd)
        if not base:
            raise DockerfileError(f"base name ({st.base_name}) should not be blank",
                                  filename=df.filename, line=st.line,
                                  hint="set the ARG it uses before the first FROM or with --build-arg")
        plat = _expand(st.platform, global_env, escape, df, st.from_cmd) if st.platform else ""
        base_stage = None
        ref = df.stage(base)
        if ref is not None and ref.index < st.index and ref.name and ref.name == base.lower():
            base_stage = ref.index
        ps = PlannedStage(st, st.index, st.name or str(st.index), base, base_stage, plat)
        if base_stage is not None:
            ps.deps.add(base_stage)
        for inst in st.instructions:
            for ref_name in _stage_refs(inst):
                dep = df.stage(ref_name)
                if dep is not None and dep.index < st.index:
                    ps.deps.add(dep.index)
                elif dep is not None and dep.index >= st.index:
                    raise DockerfileError(
                        f"stage {ref_name!r} is used before it is defined (or by itself)",
                        filename=df.filename, line=inst.line,
                        hint="stages can only use stages defined above them")
        planned.append(ps)

    # The stages the target needs, dependencies first.
    order: list[int] = []
    seen: set[int] = set()

    def visit(i: int) -> None:
        if i in seen:
            return
        seen.add(i)
        for d in sorted(planned[i].deps):
            visit(d)
        order.append(i)

    visit(tgt_index)
    # Build args consumed by stage ARG declarations of the stages that will run.
    for i in order:
        for inst in planned[i].stage.instructions:
            if isinstance(inst, ArgCommand):
                used.update(a.key for a in inst.args if a.key in build_args)
    unused = sorted(k for k in build_args if k not in used and k not in PROXY_ARGS and k not in auto)
    return BuildPlan(df, planned, tgt_index, order, global_env, dict(build_args), auto, unused)


def _stage_refs(inst) -> list[str]:
    """Stage names an instruction refers to (COPY --from, RUN --mount from=)."""
    refs = []
    if isinstance(inst, CopyCommand) and inst.from_:
        refs.append(inst.from_)
    if isinstance(inst, RunCommand):
        refs.extend(m.from_ for m in inst.mounts if m.from_)
    return refs


def _expand(word: str, env: dict[str, str], escape: str, df: Dockerfile, inst) -> str:
    try:
        return expand_word(word, env, escape)
    except DockerfileError as exc:
        raise DockerfileError(exc.message if hasattr(exc, "message") else str(exc),
                              filename=df.filename, line=inst.line) from None


@dataclass
class ArgScope:
    """The ARGs visible in one stage, updated as ARG instructions are met."""

    values: dict[str, str] = field(default_factory=dict)     # declared ARGs with a value
    declared: list[str] = field(default_factory=list)        # declared names in order

    def copy(self) -> "ArgScope":
        return ArgScope(dict(self.values), list(self.declared))

    def declare(self, key: str, default: str | None, plan: BuildPlan, env: dict[str, str],
                escape: str) -> None:
        """Process one ``ARG key[=default]`` inside a stage."""
        if key in plan.build_args:
            val: str | None = plan.build_args[key]
        elif default is not None:
            val = expand_word(default, env, escape)
        elif key in plan.global_args:
            val = plan.global_args[key]
        else:
            val = None
        if key not in self.declared:
            self.declared.append(key)
        if val is None:
            self.values.pop(key, None)
        else:
            self.values[key] = val
