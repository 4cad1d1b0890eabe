"""The build cache: step keys, records and lookup, remote import/export, explain, reports, the no-op fast path.

Public API (functions over ``builder.cache.records``; each opens the store at ``root``, default
$PYBUILD_ROOT else $XDG_DATA_HOME/pybuild)::

    entries(root=None) -> list[Entry]           every record with hits, last use, whether an image
                                                uses its layer; least recently used first
    disk_usage(root=None) -> Usage              entries, total and reclaimable bytes
    prune(root=None, *, all=False, keep_storage=None, older_than=None) -> PruneResult
                                                keep_storage: bytes or "2GB"; older_than: seconds or "24h"

``builder.explain(...)`` says which steps of a build would hit it. The modules beside this one
(keys, records, remote, explain, report, fast) are internal. Nothing is imported until a
function is called: the warm build's fast path loads this package.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import Entry, PruneResult, Usage

__all__ = ["entries", "disk_usage", "prune"]


def _store(root: str | os.PathLike | None):
    from registry.store import open_store
    return open_store(root)


def entries(root: str | os.PathLike | None = None) -> "list[Entry]":
    """Every cache record with its hits, last use and whether a stored image uses its layer,
    least recently used first (``pybuild cache ls``)."""
    from .records import entries as _entries
    store = _store(root)
    return _entries(store.root, store)


def disk_usage(root: str | os.PathLike | None = None) -> "Usage":
    """How many entries the cache holds, the bytes of their layers and how many of those only the
    cache keeps (``pybuild cache du``)."""
    from .records import disk_usage as _usage, entries as _entries
    store = _store(root)
    return _usage(_entries(store.root, store))


def prune(root: str | os.PathLike | None = None, *, all: bool = False, keep_storage: int | str | None = None,
          older_than: float | str | None = None) -> "PruneResult":
    """Remove cache entries, least recently used first (``pybuild cache prune``).

    Without options: the entries whose layer no stored image uses. ``all``: every entry.
    ``keep_storage`` (bytes, or a size like "2GB"): stop once the reclaimable size is at most that.
    ``older_than`` (seconds, or a duration like "24h"): only entries last used longer ago.
    """
    from .records import prune as _prune
    if isinstance(keep_storage, str):
        from ..cli.format import parse_size
        keep_storage = parse_size(keep_storage)
    if isinstance(older_than, str):
        from ..cli.format import parse_duration
        older_than = parse_duration(older_than)
    store = _store(root)
    return _prune(store.root, store, all=all, keep_storage=keep_storage, older_than=older_than)
