"""Media types of OCI and Docker image documents and layers, and small predicates over them."""
from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# Every manifest kind pybuild reads, in the order sent in an Accept header (most preferred first).
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

_NONDISTRIBUTABLE = frozenset({OCI_LAYER_NONDIST, OCI_LAYER_NONDIST_GZIP, OCI_LAYER_NONDIST_ZSTD,
                               DOCKER_FOREIGN_LAYER})


def is_index(media_type: str | None) -> bool:
    """True for an OCI image index or a Docker manifest list."""
    return media_type in INDEX_TYPES


def is_image_manifest(media_type: str | None) -> bool:
    """True for an OCI image manifest or a Docker schema2 manifest."""
    return media_type in IMAGE_MANIFEST_TYPES


def is_manifest(media_type: str | None) -> bool:
    """True for any of the four manifest kinds pybuild reads."""
    return media_type in INDEX_TYPES or media_type in IMAGE_MANIFEST_TYPES


def is_nondistributable(media_type: str | None) -> bool:
    """True for foreign/non-distributable layers, which registries may not hold."""
    return media_type in _NONDISTRIBUTABLE


def layer_type(compression: str, docker: bool = False) -> str:
    """The layer media type for a compression ('gzip', 'zstd', 'none'), OCI or Docker flavour."""
    table = {
        ("gzip", False): OCI_LAYER_GZIP, ("zstd", False): OCI_LAYER_ZSTD, ("none", False): OCI_LAYER,
        ("gzip", True): DOCKER_LAYER_GZIP, ("zstd", True): DOCKER_LAYER_ZSTD, ("none", True): DOCKER_LAYER,
    }
    try:
        return table[(compression, docker)]
    except KeyError:
        raise ValueError(f"unknown layer compression {compression!r} (expected gzip, zstd or none)") from None
