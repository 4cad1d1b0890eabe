"""Images as data: references, manifests, the local OCI store, auth and the registry client.

Public API: the names in ``__all__``. They load on first use (PEP 562): `import registry` (and
thus importing any submodule, e.g. `registry.reference`) must not pull in the HTTP client,
transfer, layer writer and their standard-library dependencies, which every pybuild command
would otherwise pay for at start-up.
"""
from __future__ import annotations

from .errors import AuthError, DigestMismatchError, InvalidReferenceError, NotFoundError, RegistryError

_LAZY = {
    "Digest": "digest", "InvalidDigestError": "digest", "digest_bytes": "digest", "digest_file": "digest",
    "digest_stream": "digest", "is_digest": "digest", "parse_digest": "digest",
    "Authenticator": "auth",
    "Credential": "credentials", "credential_override": "credentials", "erase_credential": "credentials",
    "lookup_credential": "credentials", "save_credential": "credentials",
    "ContainerConfig": "manifest", "Descriptor": "manifest", "History": "manifest", "ImageConfig": "manifest",
    "Index": "manifest", "InvalidManifestError": "manifest", "Manifest": "manifest",
    "parse_manifest": "manifest", "select_manifest": "manifest",
    "InvalidPlatformError": "platform", "Platform": "platform", "host_platform": "platform",
    "parse_platform": "platform", "platform_matches": "platform",
    "Reference": "reference", "parse_reference": "reference",
    "GCResult": "store", "ImageRecord": "store", "LocalImage": "store", "Store": "store",
    "default_root": "store", "open_store": "store",
    "ImageImportError": "imports", "ImportResult": "imports", "import_image": "imports",
    "Compression": "compression", "CompressionError": "compression", "open_decompressed": "compression",
    "parse_compression": "compression",
    "EntryMeta": "layer", "LayerResult": "layer", "LayerWriter": "layer", "TarEmitter": "layer",
    "store_layer": "layer", "write_overlay_upper_tar": "layer", "write_tree_tar": "layer",
    "ClientOptions": "client", "RegistryClient": "client", "Repository": "client",
    "TransferResult": "transfer", "copy": "transfer", "pull": "transfer", "push": "transfer",
    "Image": "image", "ImageIndex": "image", "ImageSink": "image", "ImageSource": "image", "Layer": "image",
    "RawManifest": "image", "copy_image": "copier", "LayoutDir": "layout",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["AuthError", "DigestMismatchError", "InvalidReferenceError", "NotFoundError", "RegistryError",
           *_LAZY]
