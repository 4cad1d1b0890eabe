"""Pure transformations of an image config: each takes an ImageConfig and returns a new one
(the argument is never changed), so a build step, `import --change` and `commit --change` can
share them and a cache can hold configs without copying them first.

    cfg = with_env(cfg, [("PATH", "/usr/bin")])
    cfg = with_cmd(cfg, ["sh"])
    cfg = append_layer(cfg, diff_id, History(created_by="RUN make"))

Parsing Dockerfile text is not done here (registry does not import dockerfile_grammar): the
builder parses a `--change` line with the real parser and calls these.
"""
from __future__ import annotations

import copy as _copy
import posixpath
from dataclasses import replace
from typing import Iterable, Mapping

from .manifest import ContainerConfig, History, ImageConfig


def _with(cfg: ImageConfig, **changes) -> ImageConfig:
    """A deep copy of `cfg` whose container config has `changes`."""
    new = _copy.deepcopy(cfg)
    new.config = replace(new.config, **changes)
    return new


def with_env(cfg: ImageConfig, pairs: Iterable[tuple[str, str]]) -> ImageConfig:
    """Set variables in order: an existing one is replaced in place, a new one appended (Docker's order)."""
    container = _copy.deepcopy(cfg.config)
    for key, value in pairs:
        container.set_env(key, value)
    return replace(_copy.deepcopy(cfg), config=container)


def with_labels(cfg: ImageConfig, labels: Mapping[str, str]) -> ImageConfig:
    """Add or replace labels."""
    return _with(cfg, labels={**cfg.config.labels, **labels})


def with_cmd(cfg: ImageConfig, cmd: list[str] | None) -> ImageConfig:
    """Set Cmd (None removes it)."""
    return _with(cfg, cmd=None if cmd is None else list(cmd))


def with_entrypoint(cfg: ImageConfig, entrypoint: list[str] | None, *, reset_cmd: bool = False) -> ImageConfig:
    """Set Entrypoint; with `reset_cmd`, drop Cmd too (a Dockerfile ENTRYPOINT does when its stage
    set no CMD of its own)."""
    new = _with(cfg, entrypoint=None if entrypoint is None else list(entrypoint))
    if reset_cmd:
        new.config.cmd = None
    return new


def workdir_of(current: str, path: str) -> str:
    """The working directory `path` names from `current`: a relative path is joined to it and
    cleaned (Go's path.Join); an absolute one is kept as given (`/tmp/` stays `/tmp/`), as
    Docker's and BuildKit's NormalizeWorkdir do."""
    if path.startswith("/"):
        return path
    new = posixpath.normpath(posixpath.join(current or "/", path))
    return new[1:] if new.startswith("//") else new


def with_workdir(cfg: ImageConfig, path: str) -> ImageConfig:
    """Set WorkingDir; a relative path is taken from the current one (default `/`), see workdir_of."""
    return _with(cfg, working_dir=workdir_of(cfg.config.working_dir, path))


def with_user(cfg: ImageConfig, user: str) -> ImageConfig:
    """Set User."""
    return _with(cfg, user=user)


def with_exposed_ports(cfg: ImageConfig, ports: Iterable[str]) -> ImageConfig:
    """Add exposed ports (`80/tcp` form)."""
    return _with(cfg, exposed_ports={**cfg.config.exposed_ports, **{p: {} for p in ports}})


def with_volumes(cfg: ImageConfig, paths: Iterable[str]) -> ImageConfig:
    """Add volumes."""
    return _with(cfg, volumes={**cfg.config.volumes, **{p: {} for p in paths}})


def with_stop_signal(cfg: ImageConfig, signal: str) -> ImageConfig:
    """Set StopSignal."""
    return _with(cfg, stop_signal=signal)


def with_shell(cfg: ImageConfig, shell: list[str]) -> ImageConfig:
    """Set Shell (the default shell of RUN/CMD/ENTRYPOINT in shell form)."""
    return _with(cfg, shell=list(shell))


def with_healthcheck(cfg: ImageConfig, healthcheck: dict | None) -> ImageConfig:
    """Set Healthcheck (its JSON object; {"Test": ["NONE"]} disables an inherited one)."""
    return _with(cfg, healthcheck=None if healthcheck is None else dict(healthcheck))


def with_onbuild(cfg: ImageConfig, trigger: str) -> ImageConfig:
    """Append an ONBUILD trigger."""
    return _with(cfg, on_build=[*(cfg.config.on_build or []), trigger])


def with_container_config(cfg: ImageConfig, container: ContainerConfig) -> ImageConfig:
    """Replace the whole container config."""
    return replace(_copy.deepcopy(cfg), config=_copy.deepcopy(container))


def with_author(cfg: ImageConfig, author: str | None) -> ImageConfig:
    """Set the image's author (a Dockerfile's MAINTAINER; None removes it)."""
    return replace(_copy.deepcopy(cfg), author=author)


def with_created(cfg: ImageConfig, created: str | None) -> ImageConfig:
    """Set the creation time (RFC 3339, kept as given; None removes it)."""
    return replace(_copy.deepcopy(cfg), created=created)


def append_history(cfg: ImageConfig, entry: History) -> ImageConfig:
    """Append a history entry for a step that added no layer (marked empty_layer)."""
    new = _copy.deepcopy(cfg)
    new.history.append(replace(entry, empty_layer=True))
    return new


def append_layer(cfg: ImageConfig, diff_id: str, entry: History | None = None) -> ImageConfig:
    """Append a layer's diff_id, with its history entry (a plain one if none is given)."""
    new = _copy.deepcopy(cfg)
    new.diff_ids.append(diff_id)
    new.history.append(replace(entry or History(), empty_layer=False))
    return new
