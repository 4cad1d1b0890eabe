"""Building one stage: every instruction of a stage applied to its StageState, with the cache.

:class:`StageBuilder` owns the per-build services (store, executor, cache, progress, context)
and :meth:`StageBuilder.build_stage` runs one planned stage: FROM (image, scratch or stage,
then ONBUILD triggers), then each instruction. Instructions that change files (RUN, COPY, ADD,
WORKDIR creating a directory) look their key up in the cache first.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import posixpath
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dockerfile_grammar import expand_heredoc, expand_word, expand_words
from dockerfile_grammar.errors import DockerfileError
from dockerfile_grammar import instructions as I
from dockerfile_grammar.instructions_mounts import MountError, parse_mount
from dockerfile_grammar.values import parse_chmod, parse_port_spec
from registry import mutate
from registry.errors import RegistryError
from registry.layer import EntryMeta
from registry.platform import Platform, host_platform, platform_matches

from . import config as cfgmod
from ..cache.records import BuildCache, CacheRecord, step_key
from ..cache.keys import layers_content_id, records_digest
from ..context.dockerignore import go_clean
from ..context.globbing import Walker, compile_segments, has_glob, parents_pivot
from .copying import CopyOptions, CopyWriter, Source, is_archive, resolve_dest
from ..errors import BuildError
from .executor import Executor, RunMount, StageState
from ..runtime.layers import LayerMaker, LayerRef
from .plan import PROXY_ARGS, ArgScope, BuildPlan, PlannedStage
from ..progress import Progress, Step

TAIL_LINES = 10


@dataclass(frozen=True)
class BuildStep:
    """What one step of a build did: its stage, the instruction line, whether the cache answered,
    how long it took (seconds) and the layer it made (digest and compressed size; "" and 0 when
    the step only changed the config)."""

    stage: str
    instruction: str
    cached: bool
    duration: float
    layer_digest: str = ""
    layer_size: int = 0

    def to_dict(self) -> dict:
        """The form of ``pybuild.steps`` in --metadata-file."""
        return {"stage": self.stage, "instruction": self.instruction, "cached": self.cached,
                "duration": self.duration, "layer_digest": self.layer_digest, "layer_size": self.layer_size}

    def __getitem__(self, key: str):
        """``step["cached"]``: the dict form steps had before they were typed."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class Services:
    """Everything a stage build needs, shared by the stages of one build."""

    plan: BuildPlan
    executor: Executor
    layers: LayerMaker
    cache: BuildCache
    progress: Progress
    context: "object"                       # builder.context.BuildContext
    platform: Platform
    no_cache: bool = False
    pull: bool = False
    network: str = "default"
    secrets: dict[str, bytes] = field(default_factory=dict)
    load_image: Callable[[str, bool], StageState] | None = None
    escape: str = "\\"
    label_platform: bool = False            # a multi-platform build: progress names the platform
    key_locks: "KeyLocks" = field(default_factory=lambda: KeyLocks())   # shared by a build's platforms
    steps: list[BuildStep] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)   # set when interrupted


class KeyLocks:
    """One lock per cache key, shared by the platform runs of a build (see StageBuilder._run)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._mutex = threading.Lock()

    def __call__(self, key: str) -> threading.Lock:
        with self._mutex:
            return self._locks.setdefault(key, threading.Lock())


class StageBuilder:
    """Builds the stages of one plan."""

    def __init__(self, svc: Services):
        self.svc = svc
        self.states: dict[int, StageState] = {}
        self.scopes: dict[int, ArgScope] = {}
        self.platforms: dict[int, Platform] = {}   # each built stage's platform
        self._private_runs: bool | None = None

    # -- helpers -------------------------------------------------------------------------------
    def _env(self, state: StageState, scope: ArgScope) -> dict[str, str]:
        """Variables for expansion: ARGs in scope, overridden by ENV."""
        return {**scope.values, **state.config.config.env_dict()}

    def _expand(self, word: str, env: dict[str, str], inst: I.Instruction) -> str:
        try:
            return expand_word(word, env, self.svc.escape)
        except DockerfileError as exc:
            raise self._error(inst, exc.message) from None

    def _expand_heredoc(self, body: str, env: dict[str, str], inst: I.Instruction) -> str:
        # Not _expand: a heredoc body keeps its quotes, and its escape character is always `\`.
        try:
            return expand_heredoc(body, env)
        except DockerfileError as exc:
            raise self._error(inst, exc.message) from None

    def _expand_words(self, word: str, env: dict[str, str], inst: I.Instruction) -> list[str]:
        try:
            return expand_words(word, env, self.svc.escape)
        except DockerfileError as exc:
            raise self._error(inst, exc.message) from None

    def _located(self, inst: I.Instruction, exc: BuildError) -> BuildError:
        """``exc`` with the Dockerfile's file:line and the instruction in front, unless it has them
        (the same exception object, so that subclasses and their fields survive)."""
        where = f"{self.svc.plan.dockerfile.filename}:{inst.line}:"
        if not str(exc).startswith(where):
            exc.args = (f"{where} {inst.original.strip()}: {exc}",) + exc.args[1:]
        return exc

    def _error(self, inst: I.Instruction, message: str) -> BuildError:
        return BuildError(f"{self.svc.plan.dockerfile.filename}:{inst.line}: {inst.original}: {message}")

    def _run_env(self, state: StageState, scope: ArgScope) -> list[str]:
        """RUN's environment: image ENV plus ARGs in scope (ENV wins) plus given proxy args."""
        env = list(state.config.config.env or [])
        names = {e.partition("=")[0] for e in env}
        for k, v in scope.values.items():
            if k not in names:
                env.append(f"{k}={v}")
                names.add(k)
        for k in PROXY_ARGS:
            if k in self.svc.plan.build_args and k not in names:
                env.append(f"{k}={self.svc.plan.build_args[k]}")
        return env

    def _arg_prefix(self, scope: ArgScope) -> str:
        pairs = [f"{k}={scope.values[k]}" for k in scope.declared if k in scope.values and k not in PROXY_ARGS]
        return f"|{len(pairs)} {' '.join(pairs)} " if pairs else ""

    # -- stage ---------------------------------------------------------------------------------
    def build_stage(self, ps: PlannedStage) -> StageState:
        """Build one stage (its dependencies must be built already)."""
        svc = self.svc
        total = len(ps.stage.instructions) + 1
        label = self._label(ps)
        prefix = f"[{label + ' ' if label else ''}"
        digits = len(str(total))           # BuildKit pads the index: [ 2/12]
        t0 = time.monotonic()
        step = svc.progress.step(f"{prefix}{1:>{digits}}/{total}] FROM {ps.base}")
        try:
            state, scope = self._from(ps)
        except BuildError as exc:
            raise self._located(ps.stage.from_cmd, exc) from None
        step.done()
        svc.steps.append(BuildStep(ps.name, f"FROM {ps.base}", False, time.monotonic() - t0))
        state.config, triggers = cfgmod.take_onbuild(state.config)
        if triggers:
            self._onbuild(ps, state, scope, triggers)
        for n, inst in enumerate(ps.stage.instructions, start=2):
            if svc.cancelled.is_set():
                raise BuildError(f"stage {ps.name}: build interrupted")
            step = svc.progress.step(f"{prefix}{n:>{digits}}/{total}] {inst.original.strip()}")
            t0 = time.monotonic()
            try:
                cached, layer = self._instruction(ps, state, scope, inst, step)
            except BaseException as exc:
                step.error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                if isinstance(exc, BuildError):
                    raise self._located(inst, exc) from None
                raise
            if cached:
                step.cached()
            else:
                step.done()
            svc.steps.append(BuildStep(ps.name, inst.original.strip(), cached, time.monotonic() - t0,
                                       layer.descriptor.digest if layer else "",
                                       layer.descriptor.size if layer else 0))
        self.states[ps.index] = state
        self.scopes[ps.index] = scope
        return state

    def _label(self, ps: PlannedStage) -> str:
        """The stage as progress names it, as BuildKit does: its name, ``stage-N`` when
        unnamed, nothing when the Dockerfile has a single stage; after the target platform in a
        multi-platform build (``[linux/arm64 build 2/3]``; a stage of another platform, such as
        ``FROM --platform=$BUILDPLATFORM``, as ``[linux/amd64->arm64 build 2/3]``)."""
        name = "" if len(self.svc.plan.dockerfile.stages) == 1 else ps.stage.name or f"stage-{ps.index}"
        if not self.svc.label_platform:
            return name
        target = self.svc.platform
        own = ps.platform or (str(self.platforms[ps.base_stage]) if ps.base_stage in self.platforms else "")
        plat = str(target)
        if own and own != plat:
            plat = f"{own}->{target.architecture}" + (f"/{target.variant}" if target.variant else "")
        return f"{plat} {name}".rstrip()

    def _from(self, ps: PlannedStage) -> tuple[StageState, ArgScope]:
        svc = self.svc
        plat = svc.platform                       # the run's target platform
        if ps.platform:
            try:
                from registry.platform import parse_platform
                plat = parse_platform(ps.platform)
            except RegistryError as exc:
                raise BuildError(f"FROM --platform={ps.platform}: {exc}") from None
        elif ps.base_stage is not None:
            plat = self.platforms.get(ps.base_stage, plat)
        self.platforms[ps.index] = plat
        if not platform_matches(host_platform(), plat) and any(
                isinstance(i, I.RunCommand) for i in ps.stage.instructions):
            from .emulation import check_emulation
            check_emulation(plat, f"stage {ps.name} (platform {plat}) has RUN steps")
        if ps.base_stage is not None:
            parent = self.states[ps.base_stage]
            state = parent.copy()
            state.name = ps.name
            state.flags = cfgmod.StageFlags()
            return state, self.scopes[ps.base_stage].copy()
        if ps.base.lower() == "scratch":
            p = plat
            cfg = cfgmod.empty_image(p.os, p.architecture, p.variant or "")
            return StageState(ps.name, cfg, []), ArgScope()
        state = svc.load_image(ps.base, svc.pull, plat) if plat != svc.platform else svc.load_image(ps.base, svc.pull)
        state.name = ps.name
        return state, ArgScope()

    def _onbuild(self, ps: PlannedStage, state: StageState, scope: ArgScope, triggers: list[str]) -> None:
        from dockerfile_grammar.instructions import parse_dockerfile
        text = "FROM scratch\n" + "\n".join(triggers) + "\n"
        try:
            df = parse_dockerfile(text, f"ONBUILD triggers of {ps.base}")
        except DockerfileError as exc:
            raise BuildError(f"ONBUILD trigger of base image {ps.base} is invalid: {exc}") from None
        for inst in df.stages[0].instructions:
            label = self._label(ps)
            step = self.svc.progress.step(f"{'[' + label + '] ' if label else ''}ONBUILD {inst.original.strip()}")
            cached, _ = self._instruction(ps, state, scope, inst, step)
            step.cached() if cached else step.done()

    # -- instructions --------------------------------------------------------------------------
    def _instruction(self, ps: PlannedStage, state: StageState, scope: ArgScope, inst: I.Instruction,
                     step: Step) -> tuple[bool, LayerRef | None]:
        env = self._env(state, scope)
        cfg = state.config          # the config before this step; the step sets state.config
        x = lambda w: self._expand(w, env, inst)   # noqa: E731
        if isinstance(inst, I.RunCommand):
            return self._run(ps, state, scope, inst, step)
        if isinstance(inst, (I.CopyCommand, I.AddCommand)):
            return self._copy(ps, state, scope, inst, step)
        if isinstance(inst, I.WorkdirCommand):
            return self._workdir(ps, state, x(inst.path), inst)
        if isinstance(inst, I.ArgCommand):
            parts = []
            for a in inst.args:
                scope.declare(a.key, a.value, self.svc.plan, env, self.svc.escape)
                env = self._env(state, scope)
                if a.key in scope.values:
                    parts.append(f"{a.key}={scope.values[a.key]}")
                else:
                    parts.append(a.key)
            self._meta(state, "ARG " + " ".join(parts))
            return False, None
        if isinstance(inst, I.EnvCommand):
            pairs = [(x(kv.key), x(kv.value)) for kv in inst.env]
            state.config = mutate.with_env(cfg, pairs)
            self._meta(state, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))
        elif isinstance(inst, I.LabelCommand):
            pairs = [(x(kv.key), x(kv.value)) for kv in inst.labels]
            state.config = mutate.with_labels(cfg, dict(pairs))
            self._meta(state, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs))
        elif isinstance(inst, I.ExposeCommand):
            ports: list[str] = []
            for w in inst.ports:
                for word in self._expand_words(w, env, inst):
                    try:
                        ports.extend(parse_port_spec(word))
                    except ValueError as exc:
                        raise self._error(inst, str(exc)) from None
            state.config = cfgmod.expose(cfg, ports)
            self._meta(state, "EXPOSE " + " ".join(ports))
        elif isinstance(inst, I.VolumeCommand):
            vols = [x(v) for v in inst.volumes]
            state.config = cfgmod.add_volumes(cfg, vols)
            self._meta(state, "VOLUME " + json.dumps(vols))
        elif isinstance(inst, I.UserCommand):
            user = x(inst.user)
            state.config = mutate.with_user(cfg, user)
            self._meta(state, "USER " + user)
        elif isinstance(inst, I.CmdCommand):
            cmd = cfgmod.command_line(cfg, inst.cmd, not inst.prepend_shell)
            state.config = cfgmod.set_cmd(cfg, cmd, state.flags)
            self._meta(state, "CMD " + _go_list(cmd))
        elif isinstance(inst, I.EntrypointCommand):
            ep = cfgmod.command_line(cfg, inst.cmd, not inst.prepend_shell) if inst.cmd is not None else None
            state.config = cfgmod.set_entrypoint(cfg, ep, state.flags)
            self._meta(state, "ENTRYPOINT " + _go_list(ep or []))
        elif isinstance(inst, I.HealthcheckCommand):
            test = list(inst.test)
            state.config = cfgmod.set_healthcheck(cfg, test, inst.interval, inst.timeout, inst.start_period,
                                                  inst.start_interval, inst.retries)
            self._meta(state, "HEALTHCHECK " + _go_list(test))
        elif isinstance(inst, I.StopsignalCommand):
            sig = x(inst.signal)
            state.config = cfgmod.set_stopsignal(cfg, sig)
            self._meta(state, "STOPSIGNAL " + sig)
        elif isinstance(inst, I.ShellCommand):
            state.config = cfgmod.set_shell(cfg, inst.shell)
            self._meta(state, "SHELL " + _go_list(inst.shell))
        elif isinstance(inst, I.OnbuildCommand):
            state.config = mutate.with_onbuild(cfg, inst.expression)
            self._meta(state, "ONBUILD " + inst.expression)
        elif isinstance(inst, I.MaintainerCommand):
            name = inst.maintainer
            state.config = mutate.with_author(cfg, name)
            self._meta(state, "MAINTAINER " + name)
        else:
            raise self._error(inst, f"unsupported instruction {inst.name}")
        return False, None

    def _meta(self, state: StageState, created_by: str) -> None:
        """A config-only step: a history entry without a layer."""
        self.svc.executor.add_layer(state, None, created_by)

    def _cached(self, state: StageState, key: str, step: Step | None = None) -> CacheRecord | None:
        # The cache decides (local record, or remote one whose layer is fetched lazily) and
        # remembers the outcome and miss reason for progress, metadata and reports.
        rec = self.svc.cache.lookup(key, state.name, step, no_cache=self.svc.no_cache)
        if rec is None and self._runs_on_private_network():
            self.svc.executor.warm_network()     # work starts: have it ready by the first RUN
        return rec

    def _key_platform(self, ps: PlannedStage) -> str:
        """The platform in a step's cache key: its stage's (what its RUN steps execute as), so a
        FROM --platform=$BUILDPLATFORM stage has the same keys for every target platform."""
        return str(self.platforms.get(ps.index, self.svc.platform))

    def _runs_on_private_network(self) -> bool:
        if self._private_runs is None:
            self._private_runs = any(
                isinstance(inst, I.RunCommand)
                and (inst.network if inst.network != "default" else self.svc.network) == "default"
                for ps in self.svc.plan.stages for inst in ps.stage.instructions)
        return self._private_runs

    def _apply_cached(self, state: StageState, key: str, rec: CacheRecord) -> LayerRef | None:
        # A record holds the step's change only (layer + history entry), so a hit applies
        # cleanly whatever metadata steps came before it.
        layer = LayerRef.from_dict(rec.layer) if rec.layer else None
        if layer is not None:
            state.layers.append(layer)
        ex = self.svc.executor
        if ex.source_date_epoch is not None:
            created = ex.now()
        elif layer is None:
            created = None           # a config-only step: timed at commit (Executor.commit_image)
        else:
            created = rec.history.created or ex.now()
        state.config = cfgmod.add_step(state.config, layer.diff_id if layer is not None else None,
                                       cfgmod.history(rec.history.created_by or "", created))
        return layer

    def _commit(self, state: StageState, key: str, layer: LayerRef | None, created_by: str) -> None:
        self.svc.executor.add_layer(state, layer, created_by)
        self.svc.cache.record(key, layer.to_dict() if layer else None, state.config.history[-1],
                              state.name)

    # -- WORKDIR -------------------------------------------------------------------------------
    def _workdir(self, ps: PlannedStage, state: StageState, path: str,
                 inst: I.Instruction) -> tuple[bool, LayerRef | None]:
        state.config = mutate.with_workdir(state.config, path)
        wd = state.config.config.working_dir
        created_by = "WORKDIR " + wd
        user = state.config.config.user
        key = step_key(layers_content_id(state.layers), self._key_platform(ps), created_by, user=user)
        if wd == "/":
            self._meta(state, created_by)
            return False, None
        rec = self._cached(state, key)
        if rec is not None:
            return True, self._apply_cached(state, key, rec)
        self.svc.cache.ensure_local(state.layers)
        view = self.svc.layers.view(state.layers)
        layer = None
        if view.resolve(wd) is None or not view.is_dir(wd):
            owner = self.svc.executor.user(state)

            def write(em) -> None:
                cw = CopyWriter(em, view, CopyOptions())
                # Through the image's links, as Docker's mkdir inside the rootfs goes.
                parts = view.resolve(wd, keep_missing=True).strip("/").split("/")
                for i in range(1, len(parts) + 1):
                    d = "/" + "/".join(parts[:i])
                    if not view.is_dir(d):
                        cw.ensure_dir(d, EntryMeta(0o755, owner.uid, owner.gid, 0))
            layer = self.svc.layers.commit_tar(write)
        self._commit(state, key, layer, created_by)
        return False, layer

    # -- RUN -----------------------------------------------------------------------------------
    def _run(self, ps: PlannedStage, state: StageState, scope: ArgScope, inst: I.RunCommand,
             step: Step) -> tuple[bool, LayerRef | None]:
        svc = self.svc
        cfg = state.config
        env_map = self._env(state, scope)
        shell = cfgmod.shell_of(cfg)
        argv, script_files = self._run_argv(inst, shell)
        if inst.security == "insecure":
            raise self._error(inst, "--security=insecure needs the security.insecure entitlement, "
                                    "which pybuild does not grant; drop the flag")
        if inst.devices:
            raise self._error(inst, "--device (CDI devices) is not supported by pybuild; drop the flag")
        mounts = [self._mount(ps, m, env_map, inst) for m in inst.mounts]
        network = inst.network if inst.network != "default" else svc.network
        env = self._run_env(state, scope)
        keyed_env = [e for e in env if e.partition("=")[0] not in PROXY_ARGS]
        created_by = "RUN " + self._arg_prefix(scope) + " ".join(argv) + " # buildkit"
        key = step_key(layers_content_id(state.layers), self._key_platform(ps), "RUN", argv=argv, env=keyed_env,
                       user=cfg.config.user, cwd=cfg.config.working_dir or "/",
                       network=network, mounts=[_mount_key(m, svc) for m in mounts],
                       scripts={k: v for k, v in script_files.items()})
        # A RUN that two platforms share (a FROM --platform=$BUILDPLATFORM stage that uses no
        # TARGET* argument: the same key) runs once; the other platform waits, then hits.
        with svc.key_locks(key):
            return self._run_keyed(ps, state, inst, step, key, argv, env, mounts, network, script_files,
                                   created_by)

    def _run_keyed(self, ps: PlannedStage, state: StageState, inst: I.RunCommand, step: Step, key: str,
                   argv: list[str], env: list[str], mounts: list, network: str, script_files: dict[str, str],
                   created_by: str) -> tuple[bool, LayerRef | None]:
        svc = self.svc
        rec = self._cached(state, key, step)
        if rec is not None:
            return True, self._apply_cached(state, key, rec)
        for layers in [state.layers] + [m.from_state.layers for m in mounts if m.from_state is not None]:
            svc.cache.ensure_local(layers)
        for name, content in script_files.items():
            tmp = Path(tempfile.mkdtemp(prefix="heredoc-", dir=svc.executor._tmp()))
            f = tmp / "script"
            f.write_text(content)
            os.chmod(f, 0o755)
            mounts.append(RunMount("bind", f"/dev/pipes/{name}", from_context=tmp, source="script"))
        rc, layer = svc.executor.run(state, argv, env, mounts, network, step.log)
        for m in mounts:
            if m.target.startswith("/dev/pipes/") and m.from_context is not None:
                shutil.rmtree(m.from_context, ignore_errors=True)
        if rc != 0:
            tail = "\n".join("  " + l for l in step.last_lines(TAIL_LINES))
            raise BuildError(
                f"{svc.plan.dockerfile.filename}:{inst.line}: RUN failed with exit code {rc} "
                f"(stage {ps.name}): {' '.join(argv)}" + (f"\nlast output lines:\n{tail}" if tail else ""))
        self._commit(state, key, layer, created_by)
        return False, layer

    def _run_argv(self, inst: I.RunCommand, shell: list[str]) -> tuple[list[str], dict[str, str]]:
        """The command line, and heredoc scripts to mount (name -> content) for shebang heredocs."""
        if not inst.prepend_shell:
            return list(inst.cmd), {}
        cmd = inst.cmd[0] if inst.cmd else ""
        if inst.files:
            words = cmd.strip().split()
            if len(inst.files) == 1 and len(words) == 1 and words[0].lstrip("0123456789").startswith("<<"):
                f = inst.files[0]
                content = _chomp(f.data) if f.chomp else f.data
                if content.startswith("#!"):
                    return [f"/dev/pipes/{f.name}"], {f.name: content}
                return shell + [content], {}
            # Complex forms: hand the line and the bodies to the shell, which reads the heredocs.
            script = cmd + "\n" + "".join(f.data + f.name + "\n" for f in inst.files)
            return shell + [script], {}
        return shell + [cmd], {}

    def _mount(self, ps: PlannedStage, m, env: dict[str, str], inst: I.Instruction) -> RunMount:
        if "$" in m.raw:
            try:
                m = parse_mount(m.raw, lambda w: self._expand(w, env, inst))
            except MountError as exc:
                raise self._error(inst, str(exc)) from None
        target = m.effective_target()
        rm = RunMount(m.type, target, source=m.source, readonly=m.read_only,
                      cache_id=m.effective_id(), sharing=m.effective_sharing() or "shared",
                      mode=m.mode, uid=m.uid or 0, gid=m.gid or 0, size=m.size_limit, env=m.env,
                      required=m.required)
        if m.type in ("bind", "cache") and m.from_:
            dep = self.svc.plan.stage_by_ref(m.from_, ps.index)
            rm.from_state = self.states[dep.index] if dep is not None else self.svc.load_image(m.from_, False)
        elif m.type == "bind":
            rm.from_context = Path(self.svc.context.root)
            rm.context = self.svc.context
        if m.type == "cache":
            base = []
            if (m.mode, m.uid, m.gid) != (None, None, None):
                base.append("mkdir:%o:%d:%d" % (rm.mode if rm.mode is not None else 0o755, rm.uid, rm.gid))
            if rm.from_state is not None:
                base.append("from:%s:%s" % (layers_content_id(rm.from_state.layers), rm.source))
            rm.cache_base = ",".join(base)
        if m.type == "secret":
            rm.secret_data = self.svc.secrets.get(rm.cache_id)
            if rm.mode is None:
                rm.mode = 0o400
        return rm

    # -- COPY / ADD ----------------------------------------------------------------------------
    def _copy(self, ps: PlannedStage, state: StageState, scope: ArgScope, inst: I._CopyLike,
              step: Step) -> tuple[bool, LayerRef | None]:
        svc = self.svc
        env = self._env(state, scope)
        x = lambda w: self._expand(w, env, inst)   # noqa: E731
        is_add = isinstance(inst, I.AddCommand)
        what = "ADD" if is_add else "COPY"
        # As any word: current BuildKit runs COPY/ADD sources through its shell lexer (without
        # RawEscapes), which consumes the escape character, so `n\?pe` is the wildcard `n?pe`
        # (matching `nope` too); a literal `?` is `n\\?pe` or `n[?]pe` (the reference's `[[]`).
        srcs = [self._expand(s, env, inst) for s in inst.sources]
        dest_raw = x(inst.dest)
        dest, dest_is_dir = resolve_dest(dest_raw, state.config.config.working_dir or "/")
        excludes = [x(e) for e in inst.excludes]
        chown = x(inst.chown) if inst.chown else ""
        chmod = None
        if inst.chmod:
            try:
                chmod = parse_chmod(x(inst.chmod))
            except ValueError as exc:
                raise self._error(inst, str(exc)) from None
        from_ = getattr(inst, "from_", "")
        parents = bool(getattr(inst, "parents", False))
        from_state: StageState | None = None
        if from_:
            dep = svc.plan.stage_by_ref(from_, ps.index)
            from_state = self.states[dep.index] if dep is not None else svc.load_image(from_, svc.pull)
        n_sources = len(srcs) + len(inst.source_contents)
        # BuildKit checks the number of sources named, not of matches: one wildcard matching
        # several files with a file destination copies each match there in turn.
        if n_sources > 1:
            if not dest_is_dir:
                raise self._error(inst, f"When using {what} with more than one source file, the "
                                        "destination must be a directory and end with a /")
        # Sources and their checksum for the cache key.
        files = None
        if from_state is not None:
            src_key = layers_content_id(from_state.layers)
        else:
            local = [s for s in srcs if not _is_url(s)]
            files = svc.cache.context_sources(svc.context, local, excludes, parents) if local else None
            src_key = records_digest(files) if files is not None else ""
        urls = [s for s in srcs if _is_url(s)]
        for s in srcs:
            if s.startswith(("git@", "git://")) or ".git#" in s or (_is_url(s) and s.split("#")[0].endswith(".git")):
                raise self._error(inst, f"{s}: git sources are not supported by pybuild; clone in a RUN "
                                        "step or in the context instead")
        if urls and not is_add:
            raise self._error(inst, "source can't be a URL for COPY")
        downloads = {u: self._download(u, x(inst.checksum) if getattr(inst, "checksum", "") else "", inst)
                     for u in urls}
        heredocs = [(c.path, self._expand_heredoc(c.data, env, inst) if c.expand else c.data)
                    for c in inst.source_contents]
        created_by = f"{what} " + " ".join(
            ([f"--from={from_}"] if from_ else []) + ([f"--chown={chown}"] if chown else []) +
            ([f"--chmod={inst.chmod}"] if inst.chmod else []) + srcs + [c.path for c in inst.source_contents]
            + [dest_raw]) + " # buildkit"
        key = step_key(layers_content_id(state.layers), self._key_platform(ps), created_by, files=files,
                       sources=src_key, dest=dest,
                       heredocs=heredocs, urls={u: d[2] for u, d in downloads.items()},
                       excludes=excludes, parents=parents, link=inst.link,
                       user=state.config.config.user)
        rec = self._cached(state, key, step)
        if rec is not None:
            return True, self._apply_cached(state, key, rec)
        svc.cache.ensure_local(state.layers)
        if from_state is not None:
            svc.cache.ensure_local(from_state.layers)
        target_view = svc.layers.view(state.layers)
        opts = CopyOptions(chmod=chmod, link=inst.link)
        if chown:
            u = svc.executor.user(state, chown, for_chown=True)
            opts.uid, opts.gid = u.uid, u.gid
        if not dest_is_dir and target_view.is_dir(dest):
            dest_is_dir = True
        if not inst.link:
            # Docker copies into the image's tree as it is: a symlink on the way to the
            # destination is followed inside the rootfs, never replaced by a directory.
            dest = target_view.resolve(dest, keep_missing=True)

        def at(name: str) -> str:
            return posixpath.join(dest, name) if dest_is_dir else dest

        def _copies_nothing() -> bool:
            # Only wildcards that match nothing: BuildKit's copy returns before creating the
            # destination.
            if heredocs or downloads or not all(has_glob(s) for s in srcs):
                return False
            if from_state is not None:
                view = svc.layers.view(from_state.layers)
                try:
                    return not any(_view_glob(view, s, parents) for s in srcs)
                except ValueError:
                    return False
            return not any(svc.context.resolve(s, excludes, parents=parents) for s in srcs)

        def write(em) -> None:
            cw = CopyWriter(em, target_view, opts)
            if dest_is_dir and not _copies_nothing():
                cw.ensure_dir(dest)
            for name, data in heredocs:
                cw.add_bytes(at(name), data.encode(), 0o644, 0)
            for url, (data, fname, _digest, mtime) in downloads.items():
                if dest_is_dir or dest_raw.endswith("/"):
                    cw.add_bytes(posixpath.join(dest, fname), data, 0o600, mtime)
                else:
                    cw.add_bytes(dest, data, 0o600, mtime)
            exclude = svc.context.exclude_matcher(excludes)
            if from_state is not None:
                view = svc.layers.view(from_state.layers)
                for s in srcs:
                    try:
                        matches = _view_glob(view, s, parents)
                    except ValueError as exc:
                        raise self._error(inst, f"{s}: bad glob pattern: {exc}") from None
                    if not matches:
                        if has_glob(s):
                            continue        # BuildKit: a wildcard may match nothing
                        raise self._error(inst, f"{s}: not found in {from_}")
                    if not dest_is_dir:
                        matches = _last_file_wins(matches, lambda m: view.is_dir(m[0]))
                    for path, kept in matches:
                        name = kept if parents else posixpath.basename(path.rstrip("/")) or ""
                        src = Source(name, keep_owner=True, exclude=exclude)
                        st = view.stat(path)
                        is_dir = st is not None and stat.S_ISDIR(st[1].st_mode)
                        if parents:
                            cw.add_view_tree(posixpath.join(dest, kept) if kept else dest, view, path, src)
                        else:
                            cw.add_view_tree(at(name) if not is_dir else dest, view, path, src)
                return
            for s in srcs:
                if _is_url(s):
                    continue
                entries = svc.context.resolve(s, excludes, parents=parents)
                if not entries:
                    if has_glob(s):
                        continue            # BuildKit: a wildcard may match nothing
                    raise self._error(inst, f"{s}: no such file or directory in the build context "
                                            f"({svc.context.root})")
                if not dest_is_dir:
                    entries = _last_file_wins(
                        entries, lambda e: stat.S_ISDIR(svc.context.entry_stat(e).st_mode))
                for entry in entries:
                    rel = entry.rel
                    name = rel if parents else posixpath.basename(rel) if rel else ""
                    src = Source(name, exclude=svc.context.source_filter(entry, excludes))
                    # Read through the context's descriptors, never by host path (see add_context).
                    if stat.S_ISDIR(svc.context.entry_stat(entry).st_mode):
                        cw.add_context(posixpath.join(dest, name) if parents else dest, svc.context, entry, src)
                        continue
                    if is_add and inst.unpack is not False:
                        f = svc.context.open_file(entry)
                        if f is not None:
                            with f:
                                if is_archive(f.read(512)):
                                    from registry.compression import open_decompressed
                                    f.seek(0)
                                    cw.add_archive(dest, open_decompressed(f), label=rel or s)
                                    continue
                    cw.add_context(at(name), svc.context, entry, src)
        layer = svc.layers.commit_tar(write)
        self._commit(state, key, layer, created_by)
        return False, layer

    def _download(self, url: str, checksum: str, inst: I.Instruction) -> tuple[bytes, str, str, int]:
        """Fetch an ADD URL: (data, file name, sha256 digest, mtime from Last-Modified).

        The body is streamed to a temporary file and hashed on the way, up to ADD_URL_MAX bytes
        (`PYBUILD_ADD_URL_MAX_BYTES`; a server that sends more, or never stops, gets an error at
        the cap instead of filling memory); only a complete, checksum-verified download is read
        back for the layer."""
        import requests
        from email.utils import parsedate_to_datetime
        cap = _add_url_max()
        try:
            r = requests.get(url, timeout=60, stream=True)
        except requests.RequestException as exc:
            raise self._error(inst, f"cannot download {url}: {exc}") from None
        with r, tempfile.TemporaryFile(prefix="pybuild-add-") as tmp:
            if r.status_code != 200:
                raise self._error(inst, f"cannot download {url}: HTTP {r.status_code}")
            announced = r.headers.get("Content-Length", "")
            if announced.isdigit() and int(announced) > cap:
                raise self._error(inst, f"cannot download {url}: it is {int(announced)} bytes, more than "
                                        f"the {cap} allowed (set PYBUILD_ADD_URL_MAX_BYTES to allow more)")
            h = hashlib.sha256()
            size = 0
            try:
                for piece in r.iter_content(1 << 20):
                    size += len(piece)
                    if size > cap:
                        raise self._error(inst, f"cannot download {url}: more than the {cap} bytes allowed "
                                                f"(set PYBUILD_ADD_URL_MAX_BYTES to allow more)")
                    h.update(piece)
                    tmp.write(piece)
            except requests.RequestException as exc:
                raise self._error(inst, f"cannot download {url}: {exc}") from None
            except OSError as exc:
                raise self._error(inst, f"cannot download {url}: writing the temporary file: "
                                        f"{exc.strerror}") from None
            digest = "sha256:" + h.hexdigest()
            if checksum and checksum != digest:
                raise self._error(inst, f"checksum mismatch for {url}: expected {checksum}, got {digest}")
            tmp.seek(0)
            data = tmp.read()
        mtime = 0
        if r.headers.get("Last-Modified"):
            try:
                mtime = int(parsedate_to_datetime(r.headers["Last-Modified"]).timestamp())
            except (TypeError, ValueError):
                mtime = 0
        name = posixpath.basename(url.split("?", 1)[0].split("#", 1)[0].rstrip("/")) or "index.html"
        return data, name, digest, mtime


# The largest ADD URL download; more is an error (a hostile or broken server may never stop).
ADD_URL_MAX = 1 << 30


def _add_url_max() -> int:
    """ADD_URL_MAX, or PYBUILD_ADD_URL_MAX_BYTES when set to a number."""
    value = os.environ.get("PYBUILD_ADD_URL_MAX_BYTES", "").strip()
    return int(value) if value.isdigit() else ADD_URL_MAX


def _mount_key(m: RunMount, svc: Services) -> list:
    """What of a RUN mount enters the key: its options, the content ID of a stage/image source,
    the checksum of a context source. Not a secret's value (Docker leaves it out too, and keys
    and their inputs travel in remote caches)."""
    if m.from_state is not None:
        source = layers_content_id(m.from_state.layers)
    elif m.type == "bind" and m.from_context is not None:
        source = records_digest(svc.cache.context_sources(svc.context, [m.source or "."]))
    else:
        source = ""
    return [m.type, m.target, m.source, m.readonly, m.cache_id, source, m.mode, m.uid, m.gid, m.env]


def _go_list(items: list[str]) -> str:
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


def _chomp(text: str) -> str:
    return "\n".join(l.lstrip("\t") for l in text.split("\n"))


def _is_url(s: str) -> bool:
    return s.startswith("http://") or s.startswith("https://")


def _local_archive(path: str) -> bool:
    try:
        # Only a regular file can be an archive: opening a FIFO would block the build forever.
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return is_archive(f.read(512))
    except OSError:
        return False


def _view_glob(view, pattern: str, parents: bool = False) -> list[tuple[str, str]]:
    """What a `COPY --from` source names in a rootfs view: (absolute path, the path kept under
    the destination with --parents), sorted. The same glob as the build context's
    (builder/context/globbing.py); a relative source is relative to the root; with --parents a
    `/./` marks where the kept parents start (`./x/./z/` keeps `z`). Raises ValueError for a
    malformed pattern."""
    head = parents_pivot(pattern) if parents else None
    pivot = go_clean(head) if head is not None else ""
    pivot = "" if pivot == "." else pivot
    rel = go_clean(pattern.lstrip("/") or ".")
    rel = "" if rel == "." else rel
    if not has_glob(rel):
        found = [rel] if view.exists("/" + rel) else []
    else:
        def step(cur: str, name: str, named: str):
            p = "/" + named
            return (named, view.is_dir(p)) if view.exists(p) else None
        walker = Walker(lambda cur: sorted(view.listdir("/" + cur)), step)
        found = [m for m, _ in walker.matches(compile_segments(rel.split("/"), any_depth=parents), "")]
    out = []
    for m in sorted(found):
        kept = m
        if pivot:
            if m == pivot:
                kept = ""
            elif m.startswith(pivot + "/"):
                kept = m[len(pivot) + 1:]
            else:
                continue
        out.append(("/" + m, kept))
    return out


def _last_file_wins(matches: list, is_dir) -> list:
    """Several matches copied in turn to one file destination: each file replaces the one
    before (BuildKit), so only the last is written; directories are merged as they come."""
    if len(matches) < 2 or any(is_dir(m) for m in matches):
        return matches
    return matches[-1:]