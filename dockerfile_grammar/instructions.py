"""Typed, validated Dockerfile instructions built from the raw syntax tree.

This layer rejects what BuildKit's ``instructions`` package rejects (arity, unknown instructions
and flags, bad flag values, ONBUILD restrictions, SHELL not in JSON form, bad stage names,
HEALTHCHECK durations, RUN --mount/--device values...). It does NOT expand variables: words
are kept as written and the builder expands them at build time with the right environment
(``expand_word``/``expand_words``); see ``Instruction.expandable_words`` for which ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import DockerfileError
from .instructions_flags import FlagError, FlagKind, ParsedFlags, parse_flags
from .instructions_mounts import (Device, Mount, MountError, parse_device, parse_mount, parse_network,
                                  parse_security)
from .heredoc import chomp_heredoc_content, parse_heredoc_word
from .suggest import suggest
from .syntax import Node, SyntaxTree
from .values import MINIMUM_DURATION_NS, parse_chmod, parse_go_duration

INSTRUCTION_NAMES = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
                     "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
                     "WORKDIR")
VALID_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
DEFAULT_SHELL = ("/bin/sh", "-c")


@dataclass
class KeyValuePair:
    """One ENV/LABEL pair, raw (quotes and variables still in place)."""

    key: str
    value: str
    no_delim: bool = False        # legacy `ENV key value` form (no "=")


@dataclass
class ArgDef:
    """One ARG name with its optional raw default and doc comment."""

    key: str
    value: str | None = None
    comment: str = ""


@dataclass
class SourceContent:
    """An inline file of COPY/ADD made from a heredoc."""

    path: str                     # the delimiter name, used as the file name
    data: str                     # body, already chomped for <<-
    expand: bool                  # False when the delimiter was quoted


@dataclass
class ShellInlineFile:
    """A heredoc attached to RUN/CMD/ENTRYPOINT (body raw, not chomped)."""

    name: str
    data: str
    chomp: bool = False


@dataclass
class Instruction:
    """Base of all typed instructions. ``node`` is the raw node (lines, original text)."""

    node: Node = field(repr=False, compare=False)

    name = ""                     # upper-case instruction name, set per subclass

    @property
    def line(self) -> int:
        return self.node.start_line

    @property
    def end_line(self) -> int:
        return self.node.end_line

    @property
    def original(self) -> str:
        return self.node.original

    def expandable_words(self) -> list[str]:
        """The raw words the builder expands for this instruction (empty when none)."""
        return []


@dataclass
class FromCommand(Instruction):
    base_name: str = ""           # raw image or stage reference (may hold global ARGs)
    stage_name: str = ""          # lower-cased `AS` name, "" when unnamed
    platform: str = ""            # raw --platform value
    comment: str = ""             # doc comment starting with the stage name
    as_keyword: str = ""          # the `AS` word as written (lint FromAsCasing)
    name = "FROM"

    def expandable_words(self) -> list[str]:
        return [self.base_name] + ([self.platform] if self.platform else [])


@dataclass
class RunCommand(Instruction):
    cmd: list[str] = field(default_factory=list)   # shell form: one string; exec form: argv
    prepend_shell: bool = True    # shell form: run as SHELL + [cmd]
    files: list[ShellInlineFile] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    network: str = "default"
    security: str = "sandbox"
    devices: list[Device] = field(default_factory=list)
    flags_used: list[str] = field(default_factory=list)
    name = "RUN"


@dataclass
class CmdCommand(Instruction):
    cmd: list[str] = field(default_factory=list)
    prepend_shell: bool = True
    files: list[ShellInlineFile] = field(default_factory=list)
    name = "CMD"


@dataclass
class EntrypointCommand(Instruction):
    cmd: list[str] | None = None  # None for `ENTRYPOINT []` (resets it)
    prepend_shell: bool = True
    files: list[ShellInlineFile] = field(default_factory=list)
    name = "ENTRYPOINT"


@dataclass
class LabelCommand(Instruction):
    labels: list[KeyValuePair] = field(default_factory=list)
    name = "LABEL"

    def expandable_words(self) -> list[str]:
        return [w for kv in self.labels for w in (kv.key, kv.value)]


@dataclass
class MaintainerCommand(Instruction):
    maintainer: str = ""
    name = "MAINTAINER"


@dataclass
class ExposeCommand(Instruction):
    ports: list[str] = field(default_factory=list)  # raw words; expand then values.parse_port_spec
    name = "EXPOSE"

    def expandable_words(self) -> list[str]:
        return list(self.ports)


@dataclass
class EnvCommand(Instruction):
    env: list[KeyValuePair] = field(default_factory=list)
    name = "ENV"

    def expandable_words(self) -> list[str]:
        return [w for kv in self.env for w in (kv.key, kv.value)]


@dataclass
class _CopyLike(Instruction):
    sources: list[str] = field(default_factory=list)   # raw source words (not heredocs)
    dest: str = ""
    source_contents: list[SourceContent] = field(default_factory=list)
    chown: str = ""
    chmod: str = ""
    link: bool = False
    excludes: list[str] = field(default_factory=list)

    def expandable_words(self) -> list[str]:
        return self.sources + [self.dest] + [w for w in (self.chown, self.chmod) if w] + self.excludes


@dataclass
class AddCommand(_CopyLike):
    keep_git_dir: bool = False
    checksum: str = ""
    unpack: bool | None = None    # None: default (unpack local archives, not URLs)
    name = "ADD"

    def expandable_words(self) -> list[str]:
        return super().expandable_words() + ([self.checksum] if self.checksum else [])


@dataclass
class CopyCommand(_CopyLike):
    from_: str = ""               # stage name/index, image or named context; never expanded
    parents: bool = False
    name = "COPY"


@dataclass
class VolumeCommand(Instruction):
    volumes: list[str] = field(default_factory=list)
    name = "VOLUME"

    def expandable_words(self) -> list[str]:
        return list(self.volumes)


@dataclass
class UserCommand(Instruction):
    user: str = ""
    name = "USER"

    def expandable_words(self) -> list[str]:
        return [self.user]


@dataclass
class WorkdirCommand(Instruction):
    path: str = ""
    name = "WORKDIR"

    def expandable_words(self) -> list[str]:
        return [self.path]


@dataclass
class ArgCommand(Instruction):
    args: list[ArgDef] = field(default_factory=list)
    name = "ARG"

    def expandable_words(self) -> list[str]:
        return [w for a in self.args for w in (a.key, a.value) if w is not None]


@dataclass
class OnbuildCommand(Instruction):
    expression: str = ""          # the trigger text (plus heredoc bodies) stored in the image
    trigger: Node | None = field(default=None, repr=False)
    name = "ONBUILD"


@dataclass
class StopsignalCommand(Instruction):
    signal: str = ""
    name = "STOPSIGNAL"

    def expandable_words(self) -> list[str]:
        return [self.signal]


@dataclass
class HealthcheckCommand(Instruction):
    test: list[str] = field(default_factory=list)   # ["NONE"], ["CMD", ...] or ["CMD-SHELL", cmd]
    interval: int = 0             # nanoseconds; 0 = Docker's default
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0
    name = "HEALTHCHECK"


@dataclass
class ShellCommand(Instruction):
    shell: list[str] = field(default_factory=list)
    name = "SHELL"


@dataclass
class Stage:
    """One build stage: its FROM and the instructions after it."""

    index: int
    name: str                     # lower-cased stage name, "" when unnamed
    base_name: str                # raw image/stage reference of FROM
    platform: str                 # raw --platform value, "" when absent
    from_cmd: FromCommand
    instructions: list[Instruction] = field(default_factory=list)
    comment: str = ""

    @property
    def line(self) -> int:
        return self.from_cmd.line


@dataclass
class Dockerfile:
    """A typed Dockerfile: global ARGs (before the first FROM), stages and the raw tree."""

    filename: str
    meta_args: list[ArgCommand]
    stages: list[Stage]
    tree: SyntaxTree = field(repr=False)

    @property
    def escape_token(self) -> str:
        return self.tree.escape_token

    def stage(self, ref: str) -> Stage | None:
        """A stage by (case-insensitive) name or numeric index, None if there is none."""
        low = ref.lower()
        for s in self.stages:
            if s.name and s.name == low:
                return s
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


# ---------------------------------------------------------------------------------------------
# node -> instruction


class _Invalid(Exception):
    """Internal: a validation failure with an optional hint and the text to point at."""

    def __init__(self, message: str, hint: str | None = None, needle: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.needle = needle


def _flags(node: Node, spec: dict[str, FlagKind]) -> ParsedFlags:
    try:
        return parse_flags(node.value.upper(), node.flags, spec)
    except FlagError as exc:
        raise _Invalid(str(exc), exc.hint, exc.flag) from None


def _exactly_one(node: Node) -> str:
    if len(node.args) != 1:
        raise _Invalid(f"{node.value.upper()} requires exactly one argument")
    _flags(node, {})
    return node.args[0]


def _at_least_one(node: Node) -> None:
    if not node.args:
        raise _Invalid(f"{node.value.upper()} requires at least one argument")


def _comment(node: Node, name: str) -> str:
    """BuildKit doc comments: a comment line above starting with ``name + " "``."""
    if not name:
        return ""
    prefix = name + " "
    for line in node.prev_comments:
        text = line.strip()
        if text.startswith("#"):
            text = text[1:].strip()
        if text.startswith(prefix):
            return text[len(prefix):]
    return ""


def _shell_dependent(node: Node) -> tuple[list[str], list[ShellInlineFile]]:
    files = [ShellInlineFile(h.name, h.content, h.chomp) for h in node.heredocs]
    if node.json_form:
        return list(node.args), files
    return [" ".join(node.args)] if node.args else [], files


def _key_values(node: Node) -> list[KeyValuePair]:
    what = node.value.upper()
    _at_least_one(node)
    if len(node.args) % 3:
        raise _Invalid(f"Bad input to {what}, too many arguments")
    pairs = []
    for i in range(0, len(node.args), 3):
        key, value, sep = node.args[i:i + 3]
        if not key:
            raise _Invalid(f"{what} names can not be blank", f"write {what} key=value")
        pairs.append(KeyValuePair(key, value, sep == ""))
    return pairs


def _from(node: Node) -> FromCommand:
    flags = _flags(node, {"platform": "string"})
    args = node.args
    stage = ""
    as_kw = ""
    if len(args) == 3 and args[1].lower() == "as":
        as_kw = args[1]
        stage = args[2].lower()
        if not VALID_STAGE_NAME.match(stage):
            raise _Invalid(f"invalid name for build stage: {args[2]!r}, name can't start with a number "
                           "or contain symbols", "stage names match ^[a-z][a-z0-9-_.]*$", args[2])
    elif len(args) != 1:
        hint = "write FROM <image> [AS <name>]"
        if len(args) == 3:
            hint = f"the second word must be AS, not {args[1]!r}"
        raise _Invalid("FROM requires either one or three arguments", hint)
    return FromCommand(node, base_name=args[0], stage_name=stage, platform=flags.string("platform"),
                       comment=_comment(node, stage), as_keyword=as_kw)


def _run(node: Node) -> RunCommand:
    flags = _flags(node, {"mount": "strings", "network": "string", "security": "string",
                          "device": "strings"})
    mounts = []
    for value in flags.strings("mount"):
        try:
            mounts.append(parse_mount(value))
        except MountError as exc:
            raise _Invalid(str(exc), exc.hint, "--mount=" + value) from None
    devices = []
    seen = set()
    for value in flags.strings("device"):
        try:
            dev = parse_device(value)
        except MountError as exc:
            raise _Invalid(str(exc), exc.hint, "--device=" + value) from None
        if dev.name in seen:
            raise _Invalid(f"device {dev.name} specified more than once", needle="--device=" + value)
        seen.add(dev.name)
        devices.append(dev)
    try:
        network = parse_network(flags.string("network", "default"))
    except MountError as exc:
        raise _Invalid(str(exc), exc.hint, "--network") from None
    try:
        security = parse_security(flags.string("security", "sandbox"))
    except MountError as exc:
        raise _Invalid(str(exc), exc.hint, "--security") from None
    cmd, files = _shell_dependent(node)
    return RunCommand(node, cmd=cmd, prepend_shell=not node.json_form, files=files, mounts=mounts,
                      network=network, security=security, devices=devices, flags_used=flags.used)


def _cmd(node: Node) -> CmdCommand:
    _flags(node, {})
    cmd, files = _shell_dependent(node)
    return CmdCommand(node, cmd=cmd, prepend_shell=not node.json_form, files=files)


def _entrypoint(node: Node) -> EntrypointCommand:
    _flags(node, {})
    cmd, files = _shell_dependent(node)
    return EntrypointCommand(node, cmd=cmd or None, prepend_shell=not node.json_form, files=files)


def _sources_and_dest(node: Node) -> tuple[list[str], str, list[SourceContent]]:
    what = node.value.upper()
    if len(node.args) < 2:
        raise _Invalid(f"{what} requires at least two arguments, but only one was provided. "
                       "Destination could not be determined", f"write {what} <src>... <dest>")
    *srcs, dest = node.args
    # BuildKit looks for heredoc words in the JSON form too (and rejects one as destination).
    if parse_heredoc_word(dest, strict=False) is not None:
        raise _Invalid(f"{what} cannot accept a heredoc as a destination", needle=dest)
    bodies = {h.name: h for h in node.heredocs}
    paths: list[str] = []
    contents: list[SourceContent] = []
    for src in srcs:
        word = parse_heredoc_word(src, strict=False)
        if word is None:
            paths.append(src)
            continue
        body = bodies.get(word.name)
        data = body.content if body is not None else ""
        if word.chomp:
            data = chomp_heredoc_content(data)
        contents.append(SourceContent(word.name, data, word.expand))
    return paths, dest, contents


def _check_chmod(value: str) -> None:
    if value and "$" not in value:
        try:
            parse_chmod(value)
        except ValueError as exc:
            raise _Invalid(str(exc), needle="--chmod=" + value) from None


def _copy(node: Node) -> CopyCommand:
    if len(node.args) < 2:
        _sources_and_dest(node)
    flags = _flags(node, {"chown": "string", "from": "string", "chmod": "string", "link": "bool",
                          "parents": "bool", "exclude": "strings"})
    paths, dest, contents = _sources_and_dest(node)
    _check_chmod(flags.string("chmod"))
    return CopyCommand(node, sources=paths, dest=dest, source_contents=contents,
                       chown=flags.string("chown"), chmod=flags.string("chmod"), link=flags.bool("link"),
                       excludes=flags.strings("exclude"), from_=flags.string("from"),
                       parents=flags.bool("parents"))


def _add(node: Node) -> AddCommand:
    if len(node.args) < 2:
        _sources_and_dest(node)
    flags = _flags(node, {"chown": "string", "chmod": "string", "link": "bool", "keep-git-dir": "bool",
                          "checksum": "string", "exclude": "strings", "unpack": "bool"})
    paths, dest, contents = _sources_and_dest(node)
    _check_chmod(flags.string("chmod"))
    return AddCommand(node, sources=paths, dest=dest, source_contents=contents,
                      chown=flags.string("chown"), chmod=flags.string("chmod"), link=flags.bool("link"),
                      excludes=flags.strings("exclude"), keep_git_dir=flags.bool("keep-git-dir"),
                      checksum=flags.string("checksum"), unpack=flags.opt_bool("unpack"))


def _duration(flags: ParsedFlags, name: str) -> int:
    text = flags.string(name)
    if not text:
        return 0
    try:
        ns = parse_go_duration(text)
    except ValueError as exc:
        raise _Invalid(str(exc), "durations look like 30s, 1m30s, 500ms", f"--{name}") from None
    if ns == 0:
        return 0
    if ns < MINIMUM_DURATION_NS:
        raise _Invalid(f"Interval {name!r} cannot be less than 1ms", needle=f"--{name}")
    return ns


def _healthcheck(node: Node) -> HealthcheckCommand:
    _at_least_one(node)
    typ = node.args[0].upper()
    rest = node.args[1:]
    if typ == "NONE":
        if rest:
            raise _Invalid("HEALTHCHECK NONE takes no arguments")
        return HealthcheckCommand(node, test=["NONE"])
    flags = _flags(node, {"interval": "string", "timeout": "string", "start-period": "string",
                          "start-interval": "string", "retries": "string"})
    if typ != "CMD":
        raise _Invalid(f"Unknown type {typ!r} in HEALTHCHECK (try CMD)", "write HEALTHCHECK CMD <command> "
                       "or HEALTHCHECK NONE", node.args[0])
    cmd = list(rest) if node.json_form else ([" ".join(rest)] if rest else [])
    if not cmd:
        raise _Invalid("Missing command after HEALTHCHECK CMD")
    test = (["CMD"] if node.json_form else ["CMD-SHELL"]) + cmd
    retries = 0
    text = flags.string("retries")
    if text:
        try:
            retries = int(text, 10)
        except ValueError:
            raise _Invalid(f"strconv.ParseInt: parsing {text!r}: invalid syntax", needle="--retries") from None
        if retries < 0:
            raise _Invalid(f"--retries cannot be negative ({retries})", needle="--retries")
    return HealthcheckCommand(node, test=test, interval=_duration(flags, "interval"),
                              timeout=_duration(flags, "timeout"),
                              start_period=_duration(flags, "start-period"),
                              start_interval=_duration(flags, "start-interval"), retries=retries)


def _onbuild(node: Node) -> OnbuildCommand:
    trigger = node.trigger
    if trigger is None or not trigger.value:
        raise _Invalid("ONBUILD requires at least one argument")
    _flags(node, {})
    what = trigger.value.upper()
    if what == "ONBUILD":
        raise _Invalid("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if what in ("MAINTAINER", "FROM"):
        raise _Invalid(f"{what} isn't allowed as an ONBUILD trigger")
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original, count=1)
    for h in node.heredocs or trigger.heredocs:
        expression += "\n" + h.content + h.name
    return OnbuildCommand(node, expression=expression, trigger=trigger)


def _arg(node: Node) -> ArgCommand:
    _at_least_one(node)
    _flags(node, {})
    defs = []
    for word in node.args:
        key, eq, value = word.partition("=")
        if eq and not key:
            raise _Invalid("ARG names can not be blank", "write ARG name[=default]", word)
        defs.append(ArgDef(key, value if eq else None, _comment(node, key)))
    return ArgCommand(node, args=defs)


def _shell(node: Node) -> ShellCommand:
    _flags(node, {})
    if not node.args:
        raise _Invalid("SHELL requires at least one argument")
    if not node.json_form:
        raise _Invalid("SHELL requires the arguments to be in JSON form",
                       'write SHELL ["/bin/bash", "-c"]')
    return ShellCommand(node, shell=list(node.args))


def _volume(node: Node) -> VolumeCommand:
    _flags(node, {})
    _at_least_one(node)
    for v in node.args:
        if not v.strip():
            raise _Invalid("VOLUME specified can not be an empty string")
    return VolumeCommand(node, volumes=list(node.args))


def _expose(node: Node) -> ExposeCommand:
    _at_least_one(node)
    _flags(node, {})
    return ExposeCommand(node, ports=list(node.args))


def _env(node: Node) -> EnvCommand:
    _flags(node, {})
    return EnvCommand(node, env=_key_values(node))


def _label(node: Node) -> LabelCommand:
    _flags(node, {})
    return LabelCommand(node, labels=_key_values(node))


_BUILDERS = {
    "from": _from, "run": _run, "cmd": _cmd, "entrypoint": _entrypoint, "copy": _copy, "add": _add,
    "healthcheck": _healthcheck, "onbuild": _onbuild, "arg": _arg, "shell": _shell, "volume": _volume,
    "expose": _expose, "env": _env, "label": _label,
    "maintainer": lambda n: MaintainerCommand(n, maintainer=_exactly_one(n)),
    "user": lambda n: UserCommand(n, user=_exactly_one(n)),
    "workdir": lambda n: WorkdirCommand(n, path=_exactly_one(n)),
    "stopsignal": lambda n: StopsignalCommand(n, signal=_exactly_one(n)),
}


def closest_instruction(word: str) -> str | None:
    """The valid instruction name closest to ``word`` (for "did you mean" hints), in its case style."""
    return suggest(word, INSTRUCTION_NAMES, case_sensitive=False) or None


def _keyword(node: Node) -> str:
    if node.keyword:
        return node.keyword
    words = node.original.split(None, 1)
    return words[0] if words else node.value


def instruction_from_node(node: Node, *, filename: str = "Dockerfile",
                          lines: list[str] | None = None) -> Instruction:
    """Turn one raw node into its typed instruction, validating it like BuildKit.

    Raises DockerfileError pointing at the node's line (and the offending word when known).
    """
    build = _BUILDERS.get(node.value.lower())
    try:
        if build is None:
            word = _keyword(node)
            guess = closest_instruction(word)
            raise _Invalid(f"unknown instruction: {word}", f"did you mean {guess}?" if guess else
                           "valid instructions: " + ", ".join(INSTRUCTION_NAMES), word)
        return build(node)
    except _Invalid as exc:
        raise _error(node, str(exc), exc.hint, exc.needle, filename, lines) from None


def _error(node: Node, message: str, hint: str | None, needle: str | None, filename: str,
           lines: list[str] | None) -> DockerfileError:
    line_no = node.start_line
    source = None
    column = 1
    if lines and 0 < line_no <= len(lines):
        # look for the offending word on the physical lines of the instruction
        for no in range(line_no, min(max(node.end_line, line_no), len(lines)) + 1):
            text = lines[no - 1]
            idx = text.find(needle) if needle else -1
            if idx >= 0:
                line_no, column, source = no, idx + 1, text
                break
        else:
            source = lines[line_no - 1]
            column = len(source) - len(source.lstrip()) + 1
    return DockerfileError(message, filename=filename, line=line_no, column=column, source_line=source,
                           hint=hint, end_line=max(node.end_line, line_no))


def dockerfile_from_tree(tree: SyntaxTree) -> Dockerfile:
    """Build the typed Dockerfile (global ARGs + stages) from a raw syntax tree."""
    meta_args: list[ArgCommand] = []
    stages: list[Stage] = []
    for node in tree.children:
        cmd = instruction_from_node(node, filename=tree.filename, lines=tree.lines)
        if isinstance(cmd, FromCommand):
            stages.append(Stage(index=len(stages), name=cmd.stage_name, base_name=cmd.base_name,
                                platform=cmd.platform, from_cmd=cmd, comment=cmd.comment))
        elif not stages:
            if isinstance(cmd, ArgCommand):
                meta_args.append(cmd)
            else:
                raise _error(node, f"{cmd.name} is not allowed before the first FROM: no build stage "
                             "in current context", "only ARG may come before FROM", None,
                             tree.filename, tree.lines)
        else:
            stages[-1].instructions.append(cmd)
    return Dockerfile(filename=tree.filename, meta_args=meta_args, stages=stages, tree=tree)


def parse_dockerfile(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse and validate a whole Dockerfile into global ARGs and typed stages."""
    from .parser import parse
    return dockerfile_from_tree(parse(text, filename=filename))
