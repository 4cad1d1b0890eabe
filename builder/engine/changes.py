"""`--change` for `pybuild import` and `pybuild commit`: Dockerfile instructions applied to a config.

Each change is parsed as one Dockerfile instruction by the real parser (dockerfile_grammar), and
the typed instruction becomes a registry.mutate call, so `CMD`, `ENV` and the rest mean what they
mean in a Dockerfile (quotes, escapes, the legacy `ENV KEY value` form, variables expanded from
the image's environment, as Docker's `--change` does). Only the instructions Docker accepts there
are allowed.

    cfg = apply_changes(cfg, ['CMD ["sh"]', "ENV A=1"])
"""
from __future__ import annotations

from typing import Iterable

from registry import mutate
from registry.manifest import ImageConfig

from ..errors import BuildError

CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER",
                       "VOLUME", "WORKDIR")
_SHELL = ["/bin/sh", "-c"]


def apply_changes(cfg: ImageConfig, changes: Iterable[str]) -> ImageConfig:
    """`cfg` with each change applied in order (a new config; `cfg` is not changed)."""
    for change in changes:
        cfg = apply_change(cfg, change)
    return cfg


def apply_change(cfg: ImageConfig, change: str) -> ImageConfig:
    """`cfg` with one Dockerfile instruction (`CMD ["sh"]`, `ENV A=1`...) applied, like
    `docker import --change`. Raises BuildError naming the change."""
    from dockerfile_grammar import expand_word, expand_words, parse
    from dockerfile_grammar import instructions as I
    from dockerfile_grammar.errors import DockerfileError
    from dockerfile_grammar.values import parse_port_spec

    def fail(why: str) -> BuildError:
        return BuildError(f"--change {change!r}: {why}")

    word = change.strip().split(None, 1)[0].upper() if change.strip() else ""
    if word not in CHANGE_INSTRUCTIONS:
        raise fail(f"{word or 'an empty line'!r} is not supported; use one of " + ", ".join(CHANGE_INSTRUCTIONS))
    try:
        tree = parse(change.strip() + "\n", filename="--change")
        if len(tree.children) != 1:
            raise fail("give one instruction per --change")
        inst = I.instruction_from_node(tree.children[0], filename="--change", lines=tree.lines)
        env = dict(e.partition("=")[::2] for e in cfg.config.env or [])
        x = lambda w: expand_word(w, env)   # noqa: E731
        if isinstance(inst, I.CmdCommand):
            return mutate.with_cmd(cfg, _command(inst.cmd, inst.prepend_shell))
        if isinstance(inst, I.EntrypointCommand):
            return mutate.with_entrypoint(cfg, _command(inst.cmd or [], inst.prepend_shell))
        if isinstance(inst, I.EnvCommand):
            return mutate.with_env(cfg, [(x(kv.key), x(kv.value)) for kv in inst.env])
        if isinstance(inst, I.LabelCommand):
            return mutate.with_labels(cfg, {x(kv.key): x(kv.value) for kv in inst.labels})
        if isinstance(inst, I.ExposeCommand):
            ports: list[str] = []
            for w in inst.ports:
                for spec in expand_words(w, env):
                    try:
                        ports.extend(parse_port_spec(spec))
                    except ValueError as exc:
                        raise fail(str(exc)) from None
            return mutate.with_exposed_ports(cfg, ports)
        if isinstance(inst, I.VolumeCommand):
            return mutate.with_volumes(cfg, [x(v) for v in inst.volumes])
        if isinstance(inst, I.WorkdirCommand):
            return mutate.with_workdir(cfg, x(inst.path))
        if isinstance(inst, I.UserCommand):
            return mutate.with_user(cfg, x(inst.user))
        if isinstance(inst, I.StopsignalCommand):
            return mutate.with_stop_signal(cfg, x(inst.signal))
        if isinstance(inst, I.OnbuildCommand):
            return mutate.with_onbuild(cfg, inst.expression)
    except DockerfileError as exc:
        raise fail(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
    raise fail(f"{word} is not supported")


def _command(words: list[str], shell_form: bool) -> list[str]:
    """Shell form -> /bin/sh -c TEXT (Docker's --change does not read the image's SHELL); exec
    form as written; no words -> []."""
    if not words:
        return []
    return _SHELL + [" ".join(words)] if shell_form else list(words)
