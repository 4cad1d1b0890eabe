"""Dockerfile lint: parse + validation errors and BuildKit's cheap build checks.

(Module named `linter` so that the package attribute `lint` stays the function.)

Rules (BuildKit names and messages): ConsistentInstructionCasing, DuplicateStageName,
ExposeInvalidFormat, ExposeProtoCasing, FromAsCasing, FromPlatformFlagConstDisallowed,
InvalidDefaultArgInFrom, JSONArgsRecommended, LegacyKeyValueFormat, MaintainerDeprecated,
MultipleInstructionsDisallowed, NoEmptyContinuation, RedundantTargetPlatform, ReservedStageName,
SecretsUsedInArgOrEnv, StageNameCasing, UndefinedArgInFrom, UndefinedVar, WorkdirRelativePath, and
the experimental InvalidDefinitionDescription (on with ``# check=experimental=...``).

``# check=skip=Rule1,Rule2`` (or ``skip=all``) turns rules off; ``# check=error=true`` makes
the remaining findings errors. The checks need no base image: variables a base image defines
are unknown here unless passed in ``image_env`` (PATH is assumed, as every image gets one).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

from .errors import DockerfileError
from .expansion import expand_with_matches
from .instructions import (ArgCommand, CmdCommand, CopyCommand, EntrypointCommand, EnvCommand, ExposeCommand,
                           FromCommand, HealthcheckCommand, Instruction, LabelCommand, MaintainerCommand,
                           RunCommand, ShellCommand, WorkdirCommand, instruction_from_node)
from .suggest import suggest
from .syntax import Node, SyntaxTree

RULES = (
    "ConsistentInstructionCasing", "DuplicateStageName", "ExposeInvalidFormat", "ExposeProtoCasing",
    "FromAsCasing", "FromPlatformFlagConstDisallowed", "InvalidDefaultArgInFrom", "JSONArgsRecommended",
    "LegacyKeyValueFormat", "MaintainerDeprecated", "MultipleInstructionsDisallowed",
    "NoEmptyContinuation", "RedundantTargetPlatform", "ReservedStageName", "SecretsUsedInArgOrEnv",
    "StageNameCasing", "UndefinedArgInFrom", "UndefinedVar", "WorkdirRelativePath",
    "InvalidDefinitionDescription",
)
# Off unless named in `# check=experimental=...` (as in BuildKit).
EXPERIMENTAL_RULES = ("InvalidDefinitionDescription",)
AUTOMATIC_PLATFORM_ARGS = ("TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT", "TARGETOSVERSION",
                           "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT", "BUILDOSVERSION",
                           "TARGETSTAGE")
_RESERVED_STAGE_NAMES = ("context", "scratch")
_SECRET_KEY = re.compile(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pass|pword|"
                         r"passwd|secret|token)(?:_|$)")
_SECRET_ALLOW = re.compile(r"(?i)(?:_|^)(?:public|file|version)(?:_|$)")
_NON_ENV_ARGS = ("BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE")
# Expansion errors that are real syntax problems (others, like ${X:?msg}, depend on build args).
_SYNTAX_ERRORS = ("syntax error", "unsupported modifier", "unexpected end of statement", "invalid pattern")


@dataclass
class Diagnostic:
    """One finding: where, how bad, which rule, what."""

    filename: str
    line: int
    column: int
    severity: str                 # "error" | "warning"
    rule: str                     # BuildKit rule name; "" for parse/validation errors
    message: str
    hint: str | None = None

    @property
    def url(self) -> str:
        """Documentation page of the rule (Docker's build-check reference)."""
        if not self.rule:
            return ""
        kebab = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", self.rule).lower()
        return f"https://docs.docker.com/go/dockerfile/rule/{kebab}/"

    def format(self) -> str:
        """``file:line:col: severity: message (Rule)``."""
        out = f"{self.filename}:{self.line}:{max(self.column, 1)}: {self.severity}: {self.message}"
        return out + (f" ({self.rule})" if self.rule else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["url"] = self.url
        return d


@dataclass
class _CheckConfig:
    skip: set[str] = field(default_factory=set)
    skip_all: bool = False
    error: bool = False
    experimental: set[str] = field(default_factory=set)   # experimental rules switched on


def _check_config(tree: SyntaxTree) -> _CheckConfig:
    cfg = _CheckConfig()
    value = tree.directive("check")
    if not value:
        return cfg
    for part in value.split(";"):
        key, _, val = part.strip().partition("=")
        key = key.strip().lower()
        if key == "skip":
            names = {v.strip() for v in val.split(",") if v.strip()}
            cfg.skip_all = any(n.lower() == "all" for n in names)
            cfg.skip |= names
        elif key == "error":
            cfg.error = val.strip().lower() == "true"
        elif key == "experimental":
            names = {v.strip() for v in val.split(",") if v.strip()}
            cfg.experimental |= set(EXPERIMENTAL_RULES) if "all" in {n.lower() for n in names} else names
    return cfg


@dataclass
class _StageState:
    """What the checks track along a stage (inherited by stages built FROM it)."""

    env: dict[str, str]
    declared: set[str]
    shell_set: bool = False
    workdir_set: bool = False


class _Linter:
    def __init__(self, tree: SyntaxTree, build_args: Mapping[str, str], image_env: Mapping[str, str]) -> None:
        self.tree = tree
        self.build_args = dict(build_args)
        self.image_env = dict(image_env)
        self.cfg = _check_config(tree)
        self.out: list[Diagnostic] = []
        self.all_args: set[str] = set()

    # -- reporting ------------------------------------------------------------------------

    def error(self, err: DockerfileError) -> None:
        self.out.append(Diagnostic(self.tree.filename, err.line or 1, err.column or 1, "error", "",
                                   err.message, err.hint))

    def warn(self, rule: str, node: Node | int, message: str, needle: str | None = None) -> None:
        if self.cfg.skip_all or rule in self.cfg.skip:
            return
        if rule in EXPERIMENTAL_RULES and rule not in self.cfg.experimental:
            return
        line, column = self._locate(node, needle)
        self.out.append(Diagnostic(self.tree.filename, line, column, "error" if self.cfg.error else "warning",
                                   rule, message))

    def _locate(self, node: Node | int, needle: str | None) -> tuple[int, int]:
        lines = self.tree.lines
        if isinstance(node, int):
            return node, 1
        start = max(node.start_line, 1)
        end = max(node.end_line, start)
        if needle:
            for no in range(start, min(end, len(lines)) + 1):
                idx = lines[no - 1].find(needle)
                if idx >= 0:
                    return no, idx + 1
        if 0 < start <= len(lines):
            text = lines[start - 1]
            return start, len(text) - len(text.lstrip()) + 1
        return start, 1

    # -- driver -----------------------------------------------------------------------------

    def run(self) -> list[Diagnostic]:
        for w in self.tree.warnings:
            if w.rule == "NoEmptyContinuation" or w.short.startswith("Empty continuation line"):
                self.warn("NoEmptyContinuation", w.line, "Empty continuation line")
        meta_args: list[ArgCommand] = []
        stages: list[tuple[FromCommand, list[Instruction]]] = []
        for node in self.tree.children:
            try:
                cmd = instruction_from_node(node, filename=self.tree.filename, lines=self.tree.lines)
            except DockerfileError as err:
                self.error(err)
                continue
            if isinstance(cmd, FromCommand):
                stages.append((cmd, []))
            elif not stages:
                if isinstance(cmd, ArgCommand):
                    meta_args.append(cmd)
                else:
                    line, col = self._locate(node, None)
                    self.out.append(Diagnostic(self.tree.filename, line, col, "error", "",
                                               f"{cmd.name} is not allowed before the first FROM: no "
                                               "build stage in current context",
                                               "only ARG may come before FROM"))
            else:
                stages[-1][1].append(cmd)
        if not stages and not any(d.severity == "error" for d in self.out):
            self.out.append(Diagnostic(self.tree.filename, 1, 1, "error", "",
                                       "dockerfile contains no stages to build", "add a FROM instruction"))
        self.check_secrets(a for a in meta_args)
        self.check_casing(stages)
        self.check_stages(meta_args, stages)
        self.out.sort(key=lambda d: (d.line, d.column))
        return self.out

    # -- rules ------------------------------------------------------------------------------

    def check_casing(self, stages: list[tuple[FromCommand, list[Instruction]]]) -> None:
        words = [(cmd.node, _keyword(cmd.node)) for f, body in stages for cmd in [f, *body]]
        lower = sum(1 for _, w in words if _self_consistent(w) and w == w.lower())
        upper = sum(1 for _, w in words if _self_consistent(w) and w != w.lower())
        majority_lower = lower > upper
        for node, word in words:
            if majority_lower and word.lower() != word:
                casing = "lowercase"
            elif not majority_lower and word.upper() != word:
                casing = "uppercase"
            else:
                continue
            self.warn("ConsistentInstructionCasing", node,
                      f"Command '{word}' should match the case of the command majority ({casing})", word)

    def check_secrets(self, cmds: Iterable[Instruction]) -> None:
        for cmd in cmds:
            if isinstance(cmd, ArgCommand):
                keys = [a.key for a in cmd.args]
                self.check_description(cmd, keys)
            elif isinstance(cmd, EnvCommand):
                keys = [kv.key for kv in cmd.env]
            else:
                continue
            for key in keys:
                if _SECRET_KEY.search(key) and not _SECRET_ALLOW.search(key):
                    self.warn("SecretsUsedInArgOrEnv", cmd.node,
                              f"Do not use ARG or ENV instructions for sensitive data ({cmd.name} {_q(key)})",
                              key)

    def check_stages(self, meta_args: list[ArgCommand],
                     stages: list[tuple[FromCommand, list[Instruction]]]) -> None:
        global_env: dict[str, str] = {}
        declared_globals: set[str] = set(AUTOMATIC_PLATFORM_ARGS)
        defaults_env: dict[str, str] = {}
        for cmd in meta_args:
            for a in cmd.args:
                value = self._expand_value(a.value, global_env, declared_globals, None) if a.value else None
                declared_globals.add(a.key)
                if a.key in self.build_args:
                    global_env[a.key] = self.build_args[a.key]
                elif value is not None:
                    global_env[a.key] = value
                if value is not None:
                    defaults_env[a.key] = value
        for name in AUTOMATIC_PLATFORM_ARGS:
            global_env.setdefault(name, "")
        self.all_args = {a.key for _, body in stages for cmd in body if isinstance(cmd, ArgCommand)
                         for a in cmd.args}
        states: dict[str, _StageState] = {}
        seen_names: dict[str, FromCommand] = {}
        for index, (frm, body) in enumerate(stages):
            self.check_from(frm, global_env, declared_globals, defaults_env, seen_names)
            base = (_expand_quiet(frm.base_name, global_env, self.tree.escape_token) or "").lower()
            parent = states.get(base)
            if parent is not None:
                # workdir_set is per stage in BuildKit: only WORKDIRs of this stage count
                state = _StageState(dict(parent.env), set(parent.declared), parent.shell_set)
            else:
                env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
                env.update(self.image_env)
                state = _StageState(env, set())
            self.check_body(body, state, global_env)
            self.check_sources(frm, body, index, stages)
            states[frm.stage_name or str(index)] = state
            states.setdefault(str(index), state)

    def check_description(self, cmd: Instruction, keys: list[str]) -> None:
        """InvalidDefinitionDescription: a comment right above FROM/ARG should start with the name."""
        comments = [c.strip().lstrip("#").strip() for c in cmd.node.prev_comments]
        if not comments or not keys:
            return
        if comments[-1].split(" ")[0] in keys:
            return
        example = keys[0] if len(keys) == 1 else "<arg_key>"
        self.warn("InvalidDefinitionDescription", cmd.node,
                  f"Comment for {cmd.name} should follow the format: `# {example} <description>`")

    def check_from(self, frm: FromCommand, global_env: dict[str, str], declared: set[str],
                   defaults_env: dict[str, str], seen: dict[str, FromCommand]) -> None:
        node = frm.node
        name = frm.stage_name
        if name:
            self.check_description(frm, [name])
            written = node.args[2] if len(node.args) == 3 else name
            if written != written.lower():
                self.warn("StageNameCasing", node, f"Stage name '{written}' should be lowercase", written)
            keyword = _keyword(node)
            as_kw = frm.as_keyword
            if (keyword == keyword.lower() and as_kw != as_kw.lower()) or \
                    (keyword == keyword.upper() and as_kw != as_kw.upper()):
                self.warn("FromAsCasing", node, f"'{as_kw}' and '{keyword}' keywords' casing do not match",
                          as_kw)
            if name in _RESERVED_STAGE_NAMES:
                self.warn("ReservedStageName", node,
                          f"Stage name should not use the same name as reserved stage {_q(name)}", written)
            if name in seen:
                self.warn("DuplicateStageName", node,
                          f"Duplicate stage name {_q(name)}, stage names should be unique", written)
            seen.setdefault(name, frm)
        undeclared = False
        for word in [frm.base_name] + ([frm.platform] if frm.platform else []):
            try:
                res = expand_with_matches(word, global_env, self.tree.escape_token)
            except DockerfileError as err:
                self._expansion_error(err, node)
                continue
            for var in sorted(res.unmatched):
                # BuildKit counts every ARG of the file as declared here; an undeclared name
                # stays empty in FROM even when given as a build argument.
                if var in declared or var in self.all_args:
                    continue
                undeclared = True
                msg = f"FROM argument '{var}' is not declared"
                guess = suggest(var, sorted(declared - set(AUTOMATIC_PLATFORM_ARGS)))
                if guess:
                    msg += f" (did you mean {guess}?)"
                self.warn("UndefinedArgInFrom", node, msg, "$")
        if "$" in frm.base_name and not undeclared:
            default = _expand_quiet(frm.base_name, defaults_env, self.tree.escape_token)
            if default is not None and not _plausible_image(default):
                self.warn("InvalidDefaultArgInFrom", node, f"Default value for ARG {frm.base_name} results in "
                                                           "empty or invalid base image name", frm.base_name)
        if frm.platform:
            if "$" not in frm.platform:
                os_arch = [p for p in frm.platform.lower().split("/")[:2] if p]
                if not (name and any(p in name for p in os_arch)):
                    self.warn("FromPlatformFlagConstDisallowed", node,
                              f"FROM --platform flag should not use constant value {_q(frm.platform)}",
                              "--platform")
            elif frm.platform in ("$TARGETPLATFORM", "${TARGETPLATFORM}"):
                self.warn("RedundantTargetPlatform", node, "Setting platform to predefined "
                          f"{frm.platform} in FROM is redundant as this is the default behavior", "--platform")

    def check_sources(self, frm: FromCommand, body: list[Instruction], index: int,
                      stages: list[tuple[FromCommand, list[Instruction]]]) -> None:
        """Build-time errors BuildKit raises for COPY that are visible without building."""
        later = {f.stage_name: i for i, (f, _) in enumerate(stages) if f.stage_name and i >= index}
        current = frm.stage_name or str(index)
        for cmd in body:
            if not isinstance(cmd, CopyCommand):
                continue
            for src in cmd.sources:
                if src.startswith(("http://", "https://")):
                    self._build_error(cmd.node, "source can't be a URL for COPY", src,
                                      "use ADD to download files, or COPY a local file")
            ref = cmd.from_.lower()
            if ref in later or (ref.isdigit() and int(ref) >= index):
                self._build_error(cmd.node, f'cannot copy from stage "{cmd.from_}", it needs to be defined '
                                  f'before current stage "{current}"', "--from=" + cmd.from_,
                                  "move that stage above this one")

    def _build_error(self, node: Node, message: str, needle: str, hint: str) -> None:
        line, col = self._locate(node, needle)
        self.out.append(Diagnostic(self.tree.filename, line, col, "error", "", message, hint))

    def check_body(self, body: list[Instruction], state: _StageState, global_env: dict[str, str]) -> None:
        once: dict[str, Instruction] = {}
        self.check_secrets(body)
        for cmd in body:
            node = cmd.node
            if isinstance(cmd, (CmdCommand, EntrypointCommand, HealthcheckCommand)):
                previous = once.get(cmd.name)
                if previous is not None:
                    self.warn("MultipleInstructionsDisallowed", previous.node,
                              f"Multiple {cmd.name} instructions should not be used in the same stage "
                              "because only the last one will be used")
                once[cmd.name] = cmd
            if isinstance(cmd, (CmdCommand, EntrypointCommand)) and cmd.prepend_shell and not state.shell_set:
                self.warn("JSONArgsRecommended", node, f"JSON arguments recommended for {cmd.name} to prevent "
                                                       "unintended behavior related to OS signals")
            if isinstance(cmd, MaintainerCommand):
                self.warn("MaintainerDeprecated", node,
                          "Maintainer instruction is deprecated in favor of using label")
            if isinstance(cmd, (EnvCommand, LabelCommand)):
                pairs = cmd.env if isinstance(cmd, EnvCommand) else cmd.labels
                if any(kv.no_delim for kv in pairs):
                    self.warn("LegacyKeyValueFormat", node, f'"{cmd.name} key=value" should be used instead '
                                                            f'of legacy "{cmd.name} key value" format')
            if isinstance(cmd, ExposeCommand):
                for port in cmd.ports:
                    if ":" in port:
                        self.warn("ExposeInvalidFormat", node, "EXPOSE instruction should not define an IP "
                                                               f"address or host-port mapping, found '{port}'", port)
                    proto = port.rpartition("/")[2] if "/" in port else ""
                    if proto and proto != proto.lower():
                        self.warn("ExposeProtoCasing", node, f"Defined protocol '{port}' in EXPOSE instruction "
                                                             "should be lowercase", port)
            if isinstance(cmd, ShellCommand):
                state.shell_set = True
            self.check_variables(cmd, state, global_env)
            if isinstance(cmd, WorkdirCommand):
                path = _expand_quiet(cmd.path, state.env, self.tree.escape_token)
                if path is not None and not path.startswith("/") and not state.workdir_set:
                    self.warn("WorkdirRelativePath", node, f"Relative workdir {_q(path)} can have unexpected "
                                                           "results if the base image changes", cmd.path)
                state.workdir_set = True

    def check_variables(self, cmd: Instruction, state: _StageState, global_env: dict[str, str]) -> None:
        """UndefinedVar, and the environment updates of ARG/ENV."""
        node = cmd.node
        if isinstance(cmd, ArgCommand):
            for a in cmd.args:
                value = None
                if a.value is not None:
                    value = self._expand_value(a.value, state.env, state.declared, node)
                state.declared.add(a.key)
                if a.key in self.build_args:
                    state.env[a.key] = self.build_args[a.key]
                elif value is not None:
                    state.env[a.key] = value
                elif a.key in global_env:
                    state.env[a.key] = global_env[a.key]
            return
        if isinstance(cmd, EnvCommand):
            before = dict(state.env)
            for kv in cmd.env:
                key = self._expand_value(kv.key, before, state.declared, node)
                value = self._expand_value(kv.value, before, state.declared, node)
                state.env[key if key is not None else kv.key] = value or ""
            return
        words = cmd.expandable_words()
        if isinstance(cmd, RunCommand):
            words = [m.raw for m in cmd.mounts]
        for word in words:
            self._expand_value(word, state.env, state.declared, node)

    def _expand_value(self, word: str, env: Mapping[str, str], declared: set[str], node: Node | None) -> str | None:
        try:
            res = expand_with_matches(word, env, self.tree.escape_token)
        except DockerfileError as err:
            if node is not None:
                self._expansion_error(err, node)
            return None
        if node is not None:
            for var in sorted(res.unmatched):
                if var in declared or var in _NON_ENV_ARGS:
                    continue
                msg = f"Usage of undefined variable '${var}'"
                guess = suggest(var, list(env) + sorted(declared - set(env)))
                if guess:
                    msg += f" (did you mean ${guess}?)"
                self.warn("UndefinedVar", node, msg, "$" + var if ("$" + var) in node.original else "${" + var)
        return res.value

    def _expansion_error(self, err: DockerfileError, node: Node) -> None:
        if any(s in err.message for s in _SYNTAX_ERRORS):
            line, col = self._locate(node, None)
            self.out.append(Diagnostic(self.tree.filename, line, col, "error", "", err.message, err.hint))


def _keyword(node: Node) -> str:
    if node.keyword:
        return node.keyword
    words = node.original.split(None, 1)
    return words[0] if words else node.value


def _self_consistent(word: str) -> bool:
    return word == word.lower() or word == word.upper()


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _expand_quiet(word: str, env: Mapping[str, str], escape: str) -> str | None:
    try:
        return expand_with_matches(word, env, escape).value
    except DockerfileError:
        return None


_IMAGE_REF = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?::[0-9]+)?"
                        r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
                        r"(?::[\w][\w.-]{0,127})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?$")


def _plausible_image(ref: str) -> bool:
    """A loose check of an image reference (lint only; the registry package validates fully)."""
    if not ref:
        return False
    host, sep, rest = ref.partition("/")
    if sep and ("." in host or ":" in host or host == "localhost"):
        # registry host may contain upper case and a port
        return bool(re.match(r"^[A-Za-z0-9.-]+(?::[0-9]+)?$", host)) and _plausible_image(rest)
    return bool(_IMAGE_REF.match(ref))


def lint_tree(tree: SyntaxTree, *, build_args: Mapping[str, str] | None = None,
              image_env: Mapping[str, str] | None = None) -> list[Diagnostic]:
    """Run validation and the build checks on an already parsed tree."""
    return _Linter(tree, build_args or {}, image_env or {}).run()


def lint(text: str, filename: str = "Dockerfile", *, build_args: Mapping[str, str] | None = None,
         image_env: Mapping[str, str] | None = None) -> list[Diagnostic]:
    """Lint Dockerfile text: a parse error gives one error diagnostic at its line and column;
    otherwise every validation error and every build-check finding, sorted by position."""
    from .parser import parse
    try:
        tree = parse(text, filename=filename)
    except DockerfileError as err:
        return [Diagnostic(filename, err.line or 1, err.column or 1, "error", "", err.message, err.hint)]
    return lint_tree(tree, build_args=build_args, image_env=image_env)
