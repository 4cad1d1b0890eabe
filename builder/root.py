"""The store root: every directory pybuild keeps under it, named in one place.

::

    images/        the OCI image layout of the local store (registry.Store): blobs/, index.json
    layers/        each layer extracted once, in overlay format (builder.runtime.snapshot)
    l/             short links to layers/ entries, to keep overlay mount options short
    snapshots/     a build step's or a container's overlay (upper/, work/, merged/)
    tmp/           temporary files and directories of running processes
    containers/    one directory per container, and names/ (builder.containers)
    cache/         build cache records, inputs/, builds/ (no-op rebuilds), hashes.v1, usage.log
    cachemounts/   the directories of RUN --mount=type=cache
    volumes/       anonymous volumes of containers (VOLUME), <id>/_data (builder.containers)
    blob-sources/  where pulled blobs came from, for cross-repository mounts (registry.transfer)
    mode           "rootful" or "rootless": the mode the store was made in (builder.runtime.userns)
    runc/          runc's state rootless when $XDG_RUNTIME_DIR is not set

Kept import-light: the no-op rebuild path uses it before anything heavy is loaded.
"""
from __future__ import annotations

import os
from pathlib import Path


def resolve(root_arg: str | os.PathLike | None = None) -> Path:
    """The store root: ``root_arg`` (--root), else $PYBUILD_ROOT, else $XDG_DATA_HOME/pybuild,
    else ~/.local/share/pybuild (registry.store.default_root's rule, kept import-free here)."""
    if root_arg:
        return Path(root_arg)
    env = os.environ.get("PYBUILD_ROOT")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "pybuild"


class _Dir:
    """A directory under the root, read as an attribute: ``Root(p).tmp`` is ``p/tmp``."""

    __slots__ = ("parts",)

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, root: "Root | None", owner: type | None = None):
        return self if root is None else root.path.joinpath(*self.parts)


class Root:
    """The directories under one store root (``Root(path).tmp`` is ``path/tmp``); nothing is
    created here."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Root({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Root) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    images = _Dir("images")
    blobs = _Dir("images", "blobs")          # one directory per digest algorithm
    layers = _Dir("layers")
    links = _Dir("l")
    snapshots = _Dir("snapshots")
    tmp = _Dir("tmp")
    containers = _Dir("containers")
    cache = _Dir("cache")
    cachemounts = _Dir("cachemounts")
    volumes = _Dir("volumes")
    blob_sources = _Dir("blob-sources")
    mode = _Dir("mode")                      # rootful|rootless (builder.runtime.userns)
    runc = _Dir("runc")                      # runc's state, rootless without $XDG_RUNTIME_DIR
