"""Instruction semantics on the image config, field by field as Docker's builder (BuildKit) does.

The config is the OCI/Docker image config JSON as a dict::

    {"architecture", "os", "created", "author", "config": {Env, Cmd, Entrypoint, ...},
     "rootfs": {"type": "layers", "diff_ids": [...]}, "history": [...]}

Every function mutates that dict in place; the executor calls them with already-expanded values.
"""
from __future__ import annotations

import copy
import posixpath
import re
from dataclasses import dataclass

from ..errors import BuildError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HISTORY_COMMENT = "buildkit.dockerfile.v0"
DEFAULT_SHELL = ["/bin/sh", "-c"]


def empty_image(os_name: str, arch: str, variant: str = "") -> dict:
    """The config of ``FROM scratch``: PATH set, WorkingDir "/" (what BuildKit starts from)."""
    cfg: dict = {
        "architecture": arch,
        "os": os_name,
        "config": {"Env": ["PATH=" + DEFAULT_PATH], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    if variant:
        cfg["variant"] = variant
    return cfg


def from_base(base: dict) -> dict:
    """A stage's starting config: a deep copy of the base image's config.

    A base without PATH gets the default one first in Env, as Docker's builders do.
    """
    cfg = copy.deepcopy(base)
    cfg.setdefault("config", {})
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    cfg.setdefault("history", [])
    env = cfg["config"].get("Env") or []
    if not any(e.startswith("PATH=") for e in env):
        cfg["config"]["Env"] = ["PATH=" + DEFAULT_PATH] + list(env)
    return cfg


def env_list_to_dict(env: list[str]) -> dict[str, str]:
    """``["A=1", "B"]`` -> ``{"A": "1", "B": ""}`` (later entries win)."""
    out: dict[str, str] = {}
    for e in env:
        k, _, v = e.partition("=")
        out[k] = v
    return out


def get_env(cfg: dict) -> dict[str, str]:
    """The image's environment as a dict, in order."""
    return env_list_to_dict(cfg["config"].get("Env") or [])


def set_env(cfg: dict, pairs: list[tuple[str, str]]) -> None:
    """ENV: replace an existing variable in place, else append (Docker keeps the order)."""
    env = cfg["config"].setdefault("Env", [])
    for key, value in pairs:
        entry = f"{key}={value}"
        for i, e in enumerate(env):
            if e.partition("=")[0] == key:
                env[i] = entry
                break
        else:
            env.append(entry)


def add_labels(cfg: dict, pairs: list[tuple[str, str]]) -> None:
    """LABEL: add or replace labels."""
    labels = cfg["config"].get("Labels") or {}
    for k, v in pairs:
        labels[k] = v
    cfg["config"]["Labels"] = labels


_PORT = re.compile(r"^(\d+)(?:-(\d+))?$")


def expose(cfg: dict, ports: list[str]) -> None:
    """EXPOSE: ``80``, ``80/udp``, ``8000-8002/tcp``, ``[ip:][host:]container[/proto]``."""
    exposed = cfg["config"].get("ExposedPorts") or {}
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
        for p in range(lo, hi + 1):
            exposed[f"{p}/{proto}"] = {}
    cfg["config"]["ExposedPorts"] = exposed


def add_volumes(cfg: dict, paths: list[str]) -> None:
    """VOLUME: add mount points (an empty path is an error)."""
    vols = cfg["config"].get("Volumes") or {}
    for p in paths:
        if not p.strip():
            raise BuildError("VOLUME specified can not be an empty string")
        vols[p] = {}
    cfg["config"]["Volumes"] = vols


def set_user(cfg: dict, user: str) -> None:
    """USER."""
    cfg["config"]["User"] = user


def set_workdir(cfg: dict, path: str) -> str:
    """WORKDIR: relative paths resolve against the current one (joined and cleaned, Go's
    path.Join); an absolute path is stored as given (`/tmp/` stays `/tmp/`), as BuildKit's
    NormalizeWorkdir does. Returns the new path."""
    cur = cfg["config"].get("WorkingDir") or "/"
    if path.startswith("/"):
        new = path
    else:
        new = posixpath.normpath(posixpath.join(cur, path))
        if new.startswith("//"):
            new = new[1:]
    cfg["config"]["WorkingDir"] = new
    return new


def shell_of(cfg: dict) -> list[str]:
    """The current SHELL (default ``/bin/sh -c``)."""
    return list(cfg["config"].get("Shell") or DEFAULT_SHELL)


def command_line(cfg: dict, args: list[str], json_form: bool) -> list[str]:
    """Shell form -> SHELL + [command]; exec form unchanged."""
    return list(args) if json_form else shell_of(cfg) + [" ".join(args)]


@dataclass
class StageFlags:
    """Per-stage state some instructions depend on."""

    cmd_set: bool = False


def set_cmd(cfg: dict, cmd: list[str], flags: StageFlags) -> None:
    """CMD: only the last one counts; ``CMD []`` gives an empty list. BuildKit's dispatchCmd
    sets ArgsEscaped for both forms (Docker-image compatibility; ENTRYPOINT does not)."""
    cfg["config"]["Cmd"] = list(cmd)
    cfg["config"]["ArgsEscaped"] = True
    flags.cmd_set = True


def set_entrypoint(cfg: dict, entrypoint: list[str] | None, flags: StageFlags) -> None:
    """ENTRYPOINT: ``ENTRYPOINT []`` clears it; resets an inherited CMD unless this stage set CMD."""
    cfg["config"]["Entrypoint"] = list(entrypoint) if entrypoint else None
    if not flags.cmd_set:
        cfg["config"]["Cmd"] = None


def set_healthcheck(cfg: dict, test: list[str], interval: int = 0, timeout: int = 0,
                    start_period: int = 0, start_interval: int = 0, retries: int = 0) -> None:
    """HEALTHCHECK: ``test`` is ``["NONE"]``, ``["CMD", ...]`` or ``["CMD-SHELL", cmd]``.

    Durations are nanoseconds; zero values are left out, as Docker's JSON does.
    """
    hc: dict = {"Test": list(test)}
    for key, val in (("Interval", interval), ("Timeout", timeout), ("StartPeriod", start_period),
                     ("StartInterval", start_interval), ("Retries", retries)):
        if val:
            hc[key] = val
    cfg["config"]["Healthcheck"] = hc


_SIGNALS = {"HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
            "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
            "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS"}


def set_stopsignal(cfg: dict, signal: str) -> None:
    """STOPSIGNAL: a name (``SIGTERM``/``TERM``), ``RTMIN+n`` or a number; stored as written."""
    s = signal.upper()
    name = s[3:] if s.startswith("SIG") else s
    if not (signal.isdigit() or name in _SIGNALS or re.fullmatch(r"RTM(IN|AX)([+-]\d+)?", name)):
        raise BuildError(f"STOPSIGNAL {signal}: invalid signal name or number")
    cfg["config"]["StopSignal"] = signal


def set_shell(cfg: dict, shell: list[str]) -> None:
    """SHELL (JSON form only, non-empty)."""
    if not shell:
        raise BuildError("SHELL requires at least one argument")
    cfg["config"]["Shell"] = list(shell)


def add_onbuild(cfg: dict, expression: str) -> None:
    """ONBUILD: record the trigger's text (the instruction after ONBUILD)."""
    cfg["config"]["OnBuild"] = (cfg["config"].get("OnBuild") or []) + [expression]


def set_maintainer(cfg: dict, name: str) -> None:
    """MAINTAINER: the image's author."""
    cfg["author"] = name


def add_history(cfg: dict, created_by: str, created: str | None, empty_layer: bool) -> None:
    """Append one history entry (``empty_layer`` for steps that add no layer)."""
    h: dict = {"created": created, "created_by": created_by, "comment": HISTORY_COMMENT}
    if empty_layer:
        h["empty_layer"] = True
    cfg.setdefault("history", []).append(h)


def add_layer(cfg: dict, diff_id: str) -> None:
    """Record a new layer's diffID."""
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []}).setdefault("diff_ids", []).append(diff_id)


def fill_history_times(history: list[dict]) -> str | None:
    """Give the config-only entries (``created`` None) a time, as BuildKit's exporter does, and
    return the image's creation time (the last entry's).

    An untimed entry takes the time of the last timed entry before it, except the untimed
    entries before the build's first timed entry after them (the first new layer): they take
    that one's time rather than a base image layer's. Nothing is stamped with the current time,
    so a fully cached rebuild (whose layers keep the times they were made) writes the same
    config, hence the same image ID, as Docker does.
    """
    created = None
    seen_untimed = False
    for h in history:
        if h.get("created") is not None:
            created = h["created"]
            if seen_untimed:
                break
        else:
            seen_untimed = True
    seen_untimed = False
    for h in history:
        if h.get("created") is not None:
            if seen_untimed:
                created = h["created"]
        else:
            seen_untimed = True
            if created is None:
                h.pop("created", None)
            else:
                h["created"] = created
    last = None
    for h in history:
        if h.get("created") is not None:
            last = h["created"]
    return last


def finalize(cfg: dict, created: str) -> dict:
    """Stamp the creation time and drop empty optional fields the way Docker serializes them."""
    cfg["created"] = created
    c = cfg["config"]
    for key in ("Labels", "ExposedPorts", "Volumes", "OnBuild"):
        if key in c and not c[key]:
            del c[key]
    for key in ("Entrypoint", "Cmd", "Shell", "Healthcheck"):
        if key in c and c[key] is None:
            del c[key]
    for key in ("User", "StopSignal"):
        if key in c and c[key] == "":
            del c[key]
    return cfg
