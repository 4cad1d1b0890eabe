"""cosign's signature manifests as data: the ``sha256-<hex>.sig`` tag of a manifest digest and the
manifest it names, one ``application/vnd.dev.cosign.simplesigning.v1+json`` layer per signature
(the signature itself, base64, in the layer annotation ``dev.cosignproject.cosign/signature``),
an empty image config listing the layers, and the signed manifest as OCI ``subject``.

:func:`add_signatures` is the one writer: `pybuild sign` adds its new layer with it, and
``copy --all`` adds a source's layers to a destination that already has signatures of its own
(replacing them would let a hostile source erase the owner's signatures of the same digest).
"""
from __future__ import annotations

import json
from typing import Any

from . import mediatypes as mt
from .errors import LimitError, NotFoundError
from .manifest import Descriptor, Manifest, parse_manifest

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
# cosign's artifactType for signatures stored as OCI 1.1 referrers.
SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
# A signature manifest with more layers than this is refused by `pybuild verify` unread (each
# costs a download and a verification); writers do not go past it either.
MAX_SIGNATURES = 100
# A simple-signing payload is a few hundred bytes.
MAX_PAYLOAD = 64 << 10


def signature_tag(digest: str) -> str:
    """cosign's signature tag of an image digest: ``sha256:abc`` -> ``sha256-abc.sig``."""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}.sig"


def signature_layers(data: bytes, media_type: str | None, where: str) -> list[Descriptor]:
    """The simple-signing layers of the signature manifest ``data`` (none for an index)."""
    doc = parse_manifest(data, media_type, where=where)
    return [l for l in doc.layers if l.media_type == SIMPLESIGNING] if isinstance(doc, Manifest) else []


def _config(layer_digests: list[str]) -> bytes:
    # What cosign's signature images carry: an empty image config listing the payloads.
    cfg = {"architecture": "", "created": "0001-01-01T00:00:00Z", "history": [{"created": "0001-01-01T00:00:00Z"}],
           "os": "", "rootfs": {"type": "layers", "diff_ids": layer_digests}, "config": {}}
    return json.dumps(cfg, separators=(",", ":")).encode()


def upload_small(repo: Any, data: bytes) -> Descriptor:
    """Upload ``data`` to ``repo`` unless it is there already; its descriptor."""
    d = Descriptor.of(data, "application/octet-stream")
    if repo.blob_size(d.digest) is None:
        repo.upload_blob(d.digest, len(data), lambda offset: [data[offset:]])
    return d


def copy_signatures(src_repo: Any, dst_repo: Any, subject: Descriptor, data: bytes, media_type: str | None,
                    where: str) -> int:
    """Add the signature layers of the source signature manifest ``data`` to ``subject``'s
    signature manifest in ``dst_repo`` (fetching their payloads from ``src_repo``), keeping the
    layers the destination has; how many were added. LimitError beyond MAX_SIGNATURES."""
    layers = signature_layers(data, media_type, where)
    if len(layers) > MAX_SIGNATURES:
        raise LimitError(f"{where} holds {len(layers)} signature layers, more than {MAX_SIGNATURES}")
    for layer in layers:
        if dst_repo.blob_size(layer.digest) is None:
            upload_small(dst_repo, src_repo.fetch_blob(layer.digest, max_size=MAX_PAYLOAD))
    return add_signatures(dst_repo, subject, layers)[1]


def _key(layer: Descriptor) -> tuple[str, str]:
    return layer.digest, str(layer.annotations.get(SIGNATURE_ANNOTATION, ""))


def add_signatures(repo: Any, subject: Descriptor, new: list[Descriptor]) -> tuple[str, int]:
    """Write the signature manifest of ``subject`` in ``repo`` holding the layers it has now and
    those of ``new`` it lacks (their blobs already in ``repo``); returns (the manifest's digest,
    how many layers were added). LimitError, writing nothing, when that would make more than
    MAX_SIGNATURES."""
    tag = signature_tag(subject.digest)
    layers: list[Descriptor] = []
    old = None
    try:
        old = repo.get_manifest(tag)
        layers = signature_layers(old.data, old.media_type, f"{repo.ref}:{tag}")
    except NotFoundError:
        pass
    have = {_key(l) for l in layers}
    added = [l for l in dict((_key(l), l) for l in new).values() if _key(l) not in have]
    if not added and old is not None:
        return old.digest, 0
    if len(layers) + len(added) > MAX_SIGNATURES:
        raise LimitError(f"{repo.ref}:{tag} already holds {len(layers)} signature layers; {len(added)} more would "
                         f"pass the {MAX_SIGNATURES} `pybuild verify` checks: delete that tag or sign another digest")
    layers += added
    cd = upload_small(repo, _config([l.digest for l in layers]))
    m = Manifest(config=Descriptor(mt.OCI_CONFIG, cd.digest, cd.size), layers=layers, media_type=mt.OCI_MANIFEST,
                 subject=Descriptor(subject.media_type or mt.OCI_MANIFEST, subject.digest, subject.size),
                 artifact_type=SIGNATURE_ARTIFACT)
    got = repo.put_manifest(tag, m.to_bytes(), mt.OCI_MANIFEST)
    if old is not None and old.digest != got:
        # The replaced manifest named the same subject: it must leave the fallback index.
        repo.drop_referrer_fallback(subject.digest, old.digest)
    return got, len(added)
