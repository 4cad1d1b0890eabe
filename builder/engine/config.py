"""What a Dockerfile instruction does to the image config, beyond the generic change.

The stage's config is a typed ImageConfig (registry.manifest) and every change to it is one of
registry.mutate's pure functions (shared with `import --change` and `commit --change`): each
call here returns a new config and leaves its argument alone. What stays here is what only a
Dockerfile means: FROM's starting config, shell form against the stage's SHELL, ENTRYPOINT
resetting an inherited CMD, the checks and error texts of EXPOSE/VOLUME/STOPSIGNAL/SHELL,
HEALTHCHECK's flags, BuildKit's history entries, and the last touches at commit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from registry import mutate
from registry.manifest import ContainerConfig, History, ImageConfig

from ..errors import BuildError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HISTORY_COMMENT = "buildkit.dockerfile.v0"
DEFAULT_SHELL = ["/bin/sh", "-c"]


def empty_image(os_name: str, arch: str, variant: str = "") -> ImageConfig:
    """The config of ``FROM scratch``: PATH set, WorkingDir "/" (what BuildKit starts from)."""
    return ImageConfig(architecture=arch, os=os_name, variant=variant or None,
                       config=ContainerConfig(env=["PATH=" + DEFAULT_PATH], working_dir="/"))


def from_base(base: ImageConfig) -> ImageConfig:
    """A stage's starting config: the base image's (a new object; `base` is not changed).

    A base without PATH gets the default one first in Env, as Docker's builders do.
    """
    env = base.config.env or []
    if any(e.startswith("PATH=") for e in env):
        return mutate.with_container_config(base, base.config)
    return mutate.with_container_config(base, replace(base.config, env=["PATH=" + DEFAULT_PATH, *env]))


def take_onbuild(cfg: ImageConfig) -> tuple[ImageConfig, list[str]]:
    """The base's ONBUILD triggers, and the config without them (a stage runs them, its image
    does not inherit them)."""
    triggers = list(cfg.config.on_build or [])
    if cfg.config.on_build is None:
        return cfg, triggers
    return mutate.with_container_config(cfg, replace(cfg.config, on_build=None)), triggers


_PORT = re.compile(r"^(\d+)(?:-(\d+))?$")


def expose(cfg: ImageConfig, ports: list[str]) -> ImageConfig:
    """EXPOSE: ``80``, ``80/udp``, ``8000-8002/tcp``, ``[ip:][host:]container[/proto]``."""
    exposed: list[str] = []
    for spec in ports:
        port, _, proto = spec.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise BuildError(f"EXPOSE {spec}: invalid protocol {proto!r} (use tcp, udp or sctp)")
        port = port.rsplit(":", 1)[-1]          # docker-run style: the container part counts
        m = _PORT.match(port)
        if not m:
            raise BuildError(f"EXPOSE {spec}: invalid port, expected NUMBER[-NUMBER][/PROTO]")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if hi < lo or hi > 65535:
            raise BuildError(f"EXPOSE {spec}: invalid port range")
        exposed.extend(f"{p}/{proto}" for p in range(lo, hi + 1))
    return mutate.with_exposed_ports(cfg, exposed)


def add_volumes(cfg: ImageConfig, paths: list[str]) -> ImageConfig:
    """VOLUME: add mount points (an empty path is an error)."""
    for p in paths:
        if not p.strip():
            raise BuildError("VOLUME specified can not be an empty string")
    return mutate.with_volumes(cfg, paths)


def shell_of(cfg: ImageConfig) -> list[str]:
    """The current SHELL (default ``/bin/sh -c``)."""
    return list(cfg.config.shell or DEFAULT_SHELL)


def command_line(cfg: ImageConfig, args: list[str], json_form: bool) -> list[str]:
    """Shell form -> SHELL + [command]; exec form unchanged."""
    return list(args) if json_form else shell_of(cfg) + [" ".join(args)]


@dataclass
class StageFlags:
    """Per-stage state some instructions depend on."""

    cmd_set: bool = False


def set_cmd(cfg: ImageConfig, cmd: list[str], flags: StageFlags) -> ImageConfig:
    """CMD: only the last one counts; ``CMD []`` gives an empty list. BuildKit's dispatchCmd
    sets ArgsEscaped for both forms (Docker-image compatibility; ENTRYPOINT does not)."""
    flags.cmd_set = True
    new = mutate.with_cmd(cfg, cmd)
    return mutate.with_container_config(new, replace(new.config, args_escaped=True))


def set_entrypoint(cfg: ImageConfig, entrypoint: list[str] | None, flags: StageFlags) -> ImageConfig:
    """ENTRYPOINT: ``ENTRYPOINT []`` clears it; resets an inherited CMD unless this stage set CMD."""
    return mutate.with_entrypoint(cfg, list(entrypoint) if entrypoint else None, reset_cmd=not flags.cmd_set)


def set_healthcheck(cfg: ImageConfig, test: list[str], interval: int = 0, timeout: int = 0,
                    start_period: int = 0, start_interval: int = 0, retries: int = 0) -> ImageConfig:
    """HEALTHCHECK: ``test`` is ``["NONE"]``, ``["CMD", ...]`` or ``["CMD-SHELL", cmd]``.

    Durations are nanoseconds; zero values are left out, as Docker's JSON does.
    """
    hc: dict = {"Test": list(test)}
    for key, val in (("Interval", interval), ("Timeout", timeout), ("StartPeriod", start_period),
                     ("StartInterval", start_interval), ("Retries", retries)):
        if val:
            hc[key] = val
    return mutate.with_healthcheck(cfg, hc)


_SIGNALS = {"HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
            "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
            "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS"}


def set_stopsignal(cfg: ImageConfig, signal: str) -> ImageConfig:
    """STOPSIGNAL: a name (``SIGTERM``/``TERM``), ``RTMIN+n`` or a number; stored as written."""
    s = signal.upper()
    name = s[3:] if s.startswith("SIG") else s
    if not (signal.isdigit() or name in _SIGNALS or re.fullmatch(r"RTM(IN|AX)([+-]\d+)?", name)):
        raise BuildError(f"STOPSIGNAL {signal}: invalid signal name or number")
    return mutate.with_stop_signal(cfg, signal)


def set_shell(cfg: ImageConfig, shell: list[str]) -> ImageConfig:
    """SHELL (JSON form only, non-empty)."""
    if not shell:
        raise BuildError("SHELL requires at least one argument")
    return mutate.with_shell(cfg, shell)


def history(created_by: str, created: str | None) -> History:
    """BuildKit's history entry for a step (mutate.append_layer/append_history set empty_layer);
    ``created`` None for a config-only step, timed at commit (fill_history_times)."""
    return History(created=created, created_by=created_by, comment=HISTORY_COMMENT)


def add_step(cfg: ImageConfig, diff_id: str | None, entry: History) -> ImageConfig:
    """Record a step: its layer's diffID (None for a step that made none) and its history entry."""
    if diff_id is None:
        return mutate.append_history(cfg, entry)
    return mutate.append_layer(cfg, diff_id, entry)


def fill_history_times(history: list[History]) -> tuple[list[History], str | None]:
    """Give the config-only entries (``created`` None) a time, as BuildKit's exporter does: the
    new entries, and the image's creation time (the last entry's).

    An untimed entry takes the time of the last timed entry before it, except the untimed
    entries before the build's first timed entry after them (the first new layer): they take
    that one's time rather than a base image layer's. Nothing is stamped with the current time,
    so a fully cached rebuild (whose layers keep the times they were made) writes the same
    config, hence the same image ID, as Docker does.
    """
    created = None
    seen_untimed = False
    for h in history:
        if h.created is not None:
            created = h.created
            if seen_untimed:
                break
        else:
            seen_untimed = True
    out: list[History] = []
    seen_untimed = False
    for h in history:
        if h.created is not None:
            if seen_untimed:
                created = h.created
            out.append(h)
        else:
            seen_untimed = True
            out.append(replace(h, created=created))
    last = None
    for h in out:
        if h.created is not None:
            last = h.created
    return out, last


def finalize(cfg: ImageConfig, created: str | None) -> ImageConfig:
    """Stamp the creation time (None: none); an empty ONBUILD list is left out, as Docker serializes it."""
    if cfg.config.on_build == []:
        cfg = mutate.with_container_config(cfg, replace(cfg.config, on_build=None))
    return mutate.with_created(cfg, created)
