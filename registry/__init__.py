"""Images as data: references, manifests, the local OCI store, auth and the registry client.

Public API (the names in ``__all__``; everything else is internal, importable from its module)::

    import registry

    store = registry.Store.open()                  # or Store.open("/path/to/root")
    registry.pull("localhost:5000/busybox:1", store, insecure_registries=["localhost:5000"])
    img = store.image("localhost:5000/busybox:1")  # an Image: .manifest, .config, .layers

    with registry.Client(insecure_registries=["localhost:5000"]) as client:
        client.push("localhost:5000/app:1", store, source="app:latest")
        client.tags("localhost:5000/app")
        client.image("localhost:5000/app:1")       # the remote Image (no layer downloaded)
        client.copy("localhost:5000/app:1", "localhost:5000/mirror:1")

- ``Store`` (``Store.open(root)``, ``store.image(ref)``), ``Client`` (context manager:
  ``pull/push/copy/tags/image/delete``), the one-shot ``pull``, ``push``, ``copy`` (a remote
  reference first, then the store: ``pull(ref, store)``, ``push(ref, store, source=...)``) and
  their ``TransferResult``; ``ClientOptions`` (retries, timeouts, parallelism).
- The image model: ``Image`` (manifest + config; ``.layers``), ``ImageIndex``, ``Layer``
  (descriptor + diff_id), and the documents ``Descriptor``, ``Manifest``, ``Index``, ``ImageConfig``.
- ``Reference``/``parse_reference``, ``Platform``/``parse_platform``.
- Errors: ``RegistryError`` is the base of all; ``NotFoundError``, ``AuthError``,
  ``DigestMismatchError`` and ``InvalidReferenceError`` are the kinds worth catching apart.

The names load on first use (PEP 562): `import registry` (and thus importing any submodule, e.g.
`registry.reference`) must not pull in the HTTP client, transfer, layer writer and their
standard-library dependencies, which every pybuild command would otherwise pay for at start-up.
"""
from __future__ import annotations

from .errors import AuthError, DigestMismatchError, InvalidReferenceError, NotFoundError, RegistryError

_LAZY = {
    "Store": "api", "Client": "api", "pull": "api", "push": "api", "copy": "api",
    "TransferResult": "copier", "ClientOptions": "client",
    "Image": "image", "ImageIndex": "image", "Layer": "image",
    "Descriptor": "manifest", "Manifest": "manifest", "Index": "manifest", "ImageConfig": "manifest",
    "Reference": "reference", "parse_reference": "reference",
    "Platform": "platform", "parse_platform": "platform",
}


def __getattr__(name: str):      # PEP 562: a public name is imported from its module on first use
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = __import__("importlib").import_module(f".{_LAZY[name] or name}", __name__)
    return globals().setdefault(name, module if _LAZY[name] is None else getattr(module, name))



__all__ = ["AuthError", "DigestMismatchError", "InvalidReferenceError", "NotFoundError", "RegistryError",
           *_LAZY]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
