"""Containers: instances of images made by `pybuild run`, with their records, logs, diff and commit.

Public API (functions over ``builder.containers.lifecycle``; ``root`` is the store root, default
$PYBUILD_ROOT else $XDG_DATA_HOME/pybuild; a container is given by name, id, unique id prefix or
as the ``Container`` these return)::

    run(image, command=(), *, detach=False, remove=False, output=None, root=None, **options) -> Container
        options: name, env ["K=V"], volumes ["HOST:CTR[:ro]"], workdir, user, entrypoint,
        network ("default" | "host" | "none"), stop_timeout, pull ("missing" | "always" | "never"),
        insecure_registries. Not detached, it returns once the command exited:
        ``container.state.exit_code`` holds the exit code (Docker's 125/126/127 included) and
        ``output(stream, chunk)`` received its output ("stdout"/"stderr", bytes) as it came.
    ps(all=False, root=None) -> list[Container]     newest first; only running ones unless ``all``
    logs(container, root=None) -> Iterator[(stream, bytes)]
    stop(container, timeout=None, root=None) -> bool   False if it was not running
    rm(container, force=False, root=None)

Containers run under runc only (root, or a user with a subuid range: see docs/containers.md);
errors are ``builder.BuildError`` (and ``registry.RegistryError`` for a pull).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from .lifecycle import Container

__all__ = ["run", "ps", "logs", "stop", "rm"]


def _open(root: str | os.PathLike | None):
    from registry.store import open_store
    store = open_store(root)
    return store, store.root


def _find(container: "str | Container", root: str | os.PathLike | None) -> "Container":
    from . import lifecycle as ct
    if isinstance(container, ct.Container):
        return ct.load(container.root, container.id)      # its current state
    return ct.lookup(_open(root)[1], container)


def run(image: str, command: Iterable[str] = (), *, detach: bool = False, remove: bool = False,
        output: Callable[[str, bytes], None] | None = None, root: str | os.PathLike | None = None,
        **options: Any) -> "Container":
    """Run ``command`` (default: the image's entrypoint and cmd) in a new container of ``image``,
    like ``pybuild run``; see the package docstring for the options."""
    from . import lifecycle as ct
    if "insecure_registries" in options:
        options["insecure_registries"] = tuple(options["insecure_registries"])
    opts = ct.RunOptions(image=image, command=list(command), auto_remove=remove and not detach, **options)
    store, store_root = _open(root)
    c = ct.create(store, store_root, opts)
    if detach:
        ct.start_detached(c)
        return ct.load(store_root, c.id)
    try:
        rc = ct.start(c, output=output)
    finally:
        if c.auto_remove:
            ct.remove(c)
    if not c.auto_remove:
        c = ct.load(store_root, c.id)
    c.state.status, c.state.exit_code = "exited", rc
    return c


def ps(all: bool = False, root: str | os.PathLike | None = None) -> "list[Container]":
    """The containers of the store, newest first; only the running ones unless ``all``."""
    from . import lifecycle as ct
    return ct.list_containers(_open(root)[1], all=all)


def logs(container: "str | Container", root: str | os.PathLike | None = None) -> Iterator[tuple[str, bytes]]:
    """What the container printed so far: (stream, chunk) pairs, stream "stdout" or "stderr"."""
    from . import lifecycle as ct
    return ct.read_logs(_find(container, root))


def stop(container: "str | Container", timeout: int | None = None, root: str | os.PathLike | None = None) -> bool:
    """Stop a running container: its StopSignal, then SIGKILL after ``timeout`` seconds (default
    its stop timeout). False if it was not running."""
    from . import lifecycle as ct
    return ct.stop(_find(container, root), timeout=timeout)


def rm(container: "str | Container", force: bool = False, root: str | os.PathLike | None = None) -> None:
    """Remove a container, its writable layer and logs; ``force`` kills a running one first."""
    from . import lifecycle as ct
    ct.remove(_find(container, root), force=force)
