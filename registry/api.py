"""registry's public calls: ``Store``, ``Client`` and the one-shot ``pull``/``push``/``copy``.

A facade over the parts that do the work (registry.store, registry.client, registry.transfer,
registry.endpoints): the calls take references as strings, a store as a ``Store`` or a path (or
nothing: the default root), and every call that names a remote image and a store takes them in
that order, ``(ref, store)``::

    store = Store.open("/tmp/root")
    with Client(insecure_registries=["localhost:5000"]) as client:
        client.pull("localhost:5000/busybox:1", store)
        client.push("localhost:5000/app:1", store, source="app:latest")
        client.copy("localhost:5000/app:1", "localhost:5000/mirror/app:1")
        client.tags("localhost:5000/app")              # ["1"]
        client.image("localhost:5000/app:1").layers    # the image model, remote
    store.image("localhost:5000/busybox:1").config     # ... and local

``registry.transfer.pull(client, ref, store)`` and ``push(client, store, src, dest)`` stay as they
were; the one-shot ``pull``/``push`` here accept that old argument order too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from . import store as _store
from .image import Image

__all__ = ["Client", "Store", "copy", "pull", "push"]


class Store(_store.Store):
    """The local store: content-addressed blobs and tagged images in an OCI image layout
    under ``<root>/images`` (see registry.store.Store for every method)."""

    @classmethod
    def open(cls, root: str | os.PathLike | None = None) -> "Store":
        """The store at ``root``; default $PYBUILD_ROOT, else $XDG_DATA_HOME/pybuild. Made if absent."""
        return cls(Path(root).absolute() if root else _store.default_root())

    def image(self, ref: Any, platform: Any = None) -> Image:
        """The tagged image ``ref`` (``NAME[:TAG]``, ``NAME@DIGEST`` or a digest) for ``platform``
        (default: this host's) as the image model: ``.manifest`` (descriptor, bytes, document),
        ``.config``, ``.layers`` (descriptor + diff_id each). NotFoundError if it is not stored."""
        from .image import RawManifest
        desc, manifest = self.image_manifest(ref, _platform(platform) if platform is not None else None)
        raw = RawManifest(desc, self.read_blob(desc.digest), manifest)
        return Image(raw, self.get_config(manifest.config.digest))


def _platform(platform: Any) -> Any:
    from .platform import Platform, host_platform, parse_platform
    if platform is None:
        return host_platform()
    return platform if isinstance(platform, Platform) else parse_platform(platform)


def _as_store(store: Any) -> _store.Store:
    if isinstance(store, _store.Store):
        return store
    return Store.open(store)


def _reference(ref: Any) -> Any:
    from .reference import Reference, parse_reference
    return ref if isinstance(ref, Reference) else parse_reference(str(ref))


class Client:
    """A client for any number of registries: one pooled HTTP session, credentials looked up per
    host (``pybuild login``), retries with backoff. Use it as a context manager, or call
    ``close()``.

    ``insecure_registries`` are hosts (``host[:port]``) reached over plain HTTP or with an
    unverified certificate; ``progress`` is a registry.progress.Progress (default: silent);
    further keyword arguments set fields of registry.client.ClientOptions (``retries``,
    ``max_per_host``, ``read_timeout``, ...), or pass ``options`` whole.
    """

    def __init__(self, options: Any = None, *, insecure_registries: Iterable[str] | None = None,
                 progress: Any = None, **overrides: Any) -> None:
        import dataclasses
        from .client import ClientOptions, RegistryClient
        opts = options or ClientOptions()
        if insecure_registries is not None:
            overrides["insecure_registries"] = tuple(insecure_registries)
        if overrides:
            opts = dataclasses.replace(opts, **overrides)
        self.options = opts
        self.progress = progress
        self._client = RegistryClient(opts)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __repr__(self) -> str:
        return f"Client(insecure_registries={list(self.options.insecure_registries)!r})"

    def _progress(self, progress: Any) -> Any:
        if progress is not None:
            return progress
        if self.progress is not None:
            return self.progress
        from .progress import Progress
        return Progress()

    def pull(self, ref: Any, store: Any = None, *, platform: Any = None, all_platforms: bool = False,
             tag: bool = True, progress: Any = None) -> Any:
        """Pull ``ref`` into ``store`` (a Store, a root path, or None for the default root) and tag
        it there with ``ref``. An index is kept as the index with ``platform``'s image (default
        this host's) below it, or every manifest it lists with ``all_platforms``. Returns a
        TransferResult (``images``: the image manifests pulled)."""
        from . import transfer
        return transfer.pull(self._client, ref, _as_store(store), platform=platform,
                             all_platforms=all_platforms, progress=self._progress(progress), tag=tag)

    def push(self, ref: Any, store: Any = None, *, source: str | None = None, platform: Any = None,
             progress: Any = None) -> Any:
        """Push the stored image ``source`` (default: ``ref`` itself) to ``ref``, with every manifest
        and blob it lists (``platform``: only that image of an index; an index held partly: see
        registry.transfer.push). Returns a TransferResult."""
        from . import transfer
        src = str(source) if source is not None else str(ref)
        return transfer.push(self._client, _as_store(store), src, ref, platform=platform,
                             progress=self._progress(progress))

    def copy(self, src: Any, dest: Any, *, platform: Any = None, all_platforms: bool = False,
             progress: Any = None, attachments: bool = False) -> Any:
        """Copy an image from one repository or registry to another, blobs streamed through
        (mounted within one registry); with ``attachments`` its signatures and attestations
        (referrers, cosign's .sig/.att/.sbom tags) too. Returns a TransferResult."""
        from . import transfer
        return transfer.copy(self._client, src, dest, platform=platform, all_platforms=all_platforms,
                             progress=self._progress(progress), attachments=attachments)

    def tags(self, repository: Any) -> list[str]:
        """The tags of ``repository`` (``host/name``; a tag or digest on it is ignored)."""
        r = _reference(repository)
        return self._client.repository(r.registry, r.repository).tags()

    def image(self, ref: Any, *, platform: Any = None) -> Image:
        """The remote image ``ref`` for ``platform`` (default this host's) as the image model: its
        manifest and config are read, no layer is downloaded."""
        from .endpoints import RemoteEndpoint
        from .image import select_image
        r = _reference(ref)
        src = RemoteEndpoint(self._client.repository(r.registry, r.repository))
        top = src.read_manifest(r.identifier)
        want = _platform(platform)
        config = (lambda m: src.read_config(m.config.digest)) if platform is not None else None
        raw = select_image(src.read_manifest, top, want, str(r), config=config)
        return Image(raw, src.read_config(raw.doc.config.digest))

    def delete(self, ref: Any) -> str:
        """Delete the manifest ``ref`` points to from its registry; returns its digest."""
        r = _reference(ref)
        return self._client.repository(r.registry, r.repository).delete_manifest(r.identifier)


def _old_style(args: tuple, kwargs: dict) -> bool:
    from .client import RegistryClient
    return bool(args) and isinstance(args[0], RegistryClient)


def pull(ref: Any, store: Any = None, *args: Any, insecure_registries: Iterable[str] = (), **kwargs: Any) -> Any:
    """Pull ``ref`` into ``store`` with a client of its own (see ``Client.pull``).

    The old form ``pull(client, ref, store, ...)`` (registry.transfer.pull) still works."""
    if _old_style((ref,), kwargs):
        from . import transfer
        return transfer.pull(ref, store, *args, **kwargs)
    with Client(insecure_registries=insecure_registries) as client:
        return client.pull(ref, store, *args, **kwargs)


def push(ref: Any, store: Any = None, *args: Any, insecure_registries: Iterable[str] = (), **kwargs: Any) -> Any:
    """Push the stored image ``source=`` (default ``ref``) to ``ref`` with a client of its own
    (see ``Client.push``).

    The old form ``push(client, store, src, dest=None, ...)`` (registry.transfer.push) still works."""
    if _old_style((ref,), kwargs):
        from . import transfer
        return transfer.push(ref, store, *args, **kwargs)
    with Client(insecure_registries=insecure_registries) as client:
        return client.push(ref, store, *args, **kwargs)


def copy(src: Any, dest: Any, *args: Any, insecure_registries: Iterable[str] = (), **kwargs: Any) -> Any:
    """Copy ``src`` to ``dest`` (registry to registry) with a client of its own (see ``Client.copy``).

    The old form ``copy(client, src, dest, ...)`` (registry.transfer.copy) still works."""
    if _old_style((src,), kwargs):
        from . import transfer
        return transfer.copy(src, dest, *args, **kwargs)
    with Client(insecure_registries=insecure_registries) as client:
        return client.copy(src, dest, *args, **kwargs)
