"""Images as data: references, manifests, the local OCI store, auth and the registry client."""
from .digest import Digest, InvalidDigestError, digest_bytes, digest_file, digest_stream, is_digest, parse_digest
from .auth import Authenticator
from .credentials import Credential, credential_override, erase_credential, lookup_credential, save_credential
from .errors import AuthError, DigestMismatchError, InvalidReferenceError, NotFoundError, RegistryError
from .manifest import (ContainerConfig, Descriptor, History, ImageConfig, Index, InvalidManifestError, Manifest,
                       parse_manifest, select_manifest)
from .platform import InvalidPlatformError, Platform, host_platform, parse_platform, platform_matches
from .reference import Reference, parse_reference
from .store import GCResult, ImageRecord, LocalImage, Store, default_root, open_store
from .imports import ImageImportError, ImportResult, import_image
from .compression import Compression, CompressionError, open_decompressed, parse_compression
from .layer import EntryMeta, LayerResult, LayerWriter, TarEmitter, store_layer, write_overlay_upper_tar, write_tree_tar
from .client import ClientOptions, RegistryClient, Repository
from .transfer import TransferResult, copy, pull, push
