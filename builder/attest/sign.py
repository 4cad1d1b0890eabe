"""cosign-format image signatures in a registry: sign, verify.

A signature is cosign's "simple signing" payload about one manifest digest,
``{"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":D},
"type":"cosign container image signature"},"optional":{...}}``, signed with ECDSA P-256 over
SHA-256 (ASN.1 DER, base64 in the layer annotation ``dev.cosignproject.cosign/signature``). The
payload is a layer (``application/vnd.dev.cosign.simplesigning.v1+json``) of the manifest tagged
``sha256-<hex of D>.sig`` in the image's repository (where cosign, podman and skopeo look);
each new signature is one more layer. That manifest also names D as its OCI ``subject``, so it is
a referrer too (the registry client keeps the ``sha256-<hex>`` fallback index of registries
without the referrers API).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from registry import mediatypes as mt
from registry.manifest import Descriptor, parse_manifest
from registry.signatures import (MAX_PAYLOAD, MAX_SIGNATURES, SIGNATURE_ANNOTATION, SIGNATURE_ARTIFACT, SIMPLESIGNING, signature_layers,
                                 signature_tag)

from ..errors import BuildError

__all__ = ["MAX_SIGNATURES", "SIGNATURE_ARTIFACT", "SIGNATURE_TYPE", "Signed", "VerificationError", "Verified",
           "payload", "sign", "sign_digest", "sign_refs", "signed_identities", "verify"]

SIGNATURE_TYPE = "cosign container image signature"
MAX_REASONS = 10


class VerificationError(BuildError):
    """An image whose signature is missing or does not verify."""


def payload(repository: str, digest: str, creator: str | None = None) -> bytes:
    """The simple-signing payload for manifest ``digest`` of ``repository`` (cosign's layout:
    the repository without tag as identity)."""
    from .._version import __version__
    doc = {"critical": {"identity": {"docker-reference": repository},
                        "image": {"docker-manifest-digest": digest},
                        "type": SIGNATURE_TYPE},
           "optional": {"creator": creator or f"pybuild {__version__}"}}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Signed:
    """What `sign` did: the image digest signed and the signature manifest's tag and digest."""
    reference: str
    digest: str
    tag: str
    manifest: str


def sign_digest(repo: Any, digest: str, size: int, media_type: str, key: Any) -> Signed:
    """Add a signature by ``key`` of manifest ``digest`` (of ``size`` bytes) to ``repo``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from registry.signatures import add_signatures, upload_small
    body = payload(f"{repo.host}/{repo.name}", digest)
    sig = base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
    pd = upload_small(repo, body)
    new = Descriptor(SIMPLESIGNING, pd.digest, pd.size, annotations={SIGNATURE_ANNOTATION: sig})
    got, _ = add_signatures(repo, Descriptor(media_type or mt.OCI_MANIFEST, digest, size), [new])
    return Signed(f"{repo.ref}@{digest}", digest, signature_tag(digest), got)


def sign(client: Any, ref: str, key: Any, recursive: bool = False) -> list[Signed]:
    """Sign what ``ref`` names in its registry (the digest a tag resolves to now). With
    ``recursive`` (cosign's --recursive) an index's platform images are signed too: podman and
    skopeo look for the signature of the instance they pick, not of the index."""
    from registry.manifest import Index, is_attestation
    from registry.reference import parse_reference
    r = parse_reference(ref)
    repo = client.repository(r.registry, r.repository)
    m = repo.get_manifest(r.identifier)
    done = [sign_digest(repo, m.digest, len(m.data), m.media_type, key)]
    doc = parse_manifest(m.data, m.media_type, where=str(r))
    if recursive and isinstance(doc, Index):
        for d in doc.manifests:
            if not is_attestation(d) and d.media_type in mt.IMAGE_MANIFEST_TYPES:
                done.append(sign_digest(repo, d.digest, d.size, d.media_type, key))
    return done


def sign_refs(refs: list[str], key: Any, insecure_registries: tuple[str, ...] = ()) -> list[Signed]:
    """Sign each pushed ``REPO[:TAG]@DIGEST`` and the platform images of an index (what
    `build --push --sign` calls)."""
    from registry.client import ClientOptions, RegistryClient
    with RegistryClient(ClientOptions(insecure_registries=tuple(insecure_registries))) as client:
        return [s for ref in refs for s in sign(client, ref, key, recursive=True)]


@dataclass
class Verified:
    """A signature that verified: the image digest and the payload it signs."""
    digest: str
    payload: dict


def _check_payload(raw: bytes, digest: str, repository: str | None) -> dict:
    """Strict reading of a simple-signing payload (containers-signature(5) rules: exactly the
    known members in ``critical``, ``optional`` an object or null); the payload, or ValueError."""
    try:
        doc = json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("the payload is nested too deeply") from None
    if not isinstance(doc, dict) or set(doc) != {"critical", "optional"}:
        raise ValueError("the payload must have exactly 'critical' and 'optional'")
    crit = doc["critical"]
    if not isinstance(crit, dict) or set(crit) != {"identity", "image", "type"}:
        raise ValueError("'critical' must have exactly identity, image and type")
    if crit["type"] != SIGNATURE_TYPE:
        raise ValueError(f"critical.type is {crit['type']!r}, not {SIGNATURE_TYPE!r}")
    image, ident = crit["image"], crit["identity"]
    if not isinstance(image, dict) or set(image) != {"docker-manifest-digest"}:
        raise ValueError("critical.image must have exactly docker-manifest-digest")
    if not isinstance(ident, dict) or set(ident) != {"docker-reference"}:
        raise ValueError("critical.identity must have exactly docker-reference")
    if doc["optional"] is not None and not isinstance(doc["optional"], dict):
        raise ValueError("'optional' must be an object")
    if image["docker-manifest-digest"] != digest:
        raise ValueError(f"it signs {image['docker-manifest-digest']}, not this image ({digest})")
    signed_repo = _repository_of(str(ident["docker-reference"]))
    if repository is not None and signed_repo != _repository_of(repository):
        raise ValueError(f"it was made for {signed_repo}, not {repository}")
    return doc


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("a member appears twice")
    return dict(pairs)


def _repository_of(reference: str) -> str:
    from registry.reference import parse_reference
    try:
        r = parse_reference(reference, default_tag=None)
    except Exception:
        raise ValueError(f"docker-reference {reference!r} is not a reference") from None
    return f"{r.registry}/{r.repository}"


def verify(client: Any, ref: str, public_key: Any, identity: str | None = None) -> list[Verified]:
    """The signatures by ``public_key`` of what ``ref`` names now; VerificationError saying why
    when there is none (unsigned, signed for another digest, another key, a payload that does not
    match its signature). As cosign, the signed digest is what binds; with ``identity``
    (a repository) the payload's docker-reference must name it too (a mirror's copy of a
    signature names the repository it was made in).

    A tag is resolved once: every later lookup is by the digest it named then (a tag re-pushed
    meanwhile cannot swap the image), and that digest is what the result and every error name."""
    from registry.errors import RegistryError
    from registry.reference import parse_reference
    if identity is not None:
        try:
            _repository_of(identity)
        except ValueError:
            raise VerificationError(f"identity {identity!r} is not a repository reference") from None
    r = parse_reference(ref)
    repo = client.repository(r.registry, r.repository)
    digest = repo.get_manifest(r.identifier).digest
    try:
        return _verify_digest(repo, ref, digest, public_key, identity)
    except RegistryError as exc:
        # A registry that misbehaves while we read the signature: say which image was checked.
        raise VerificationError(f"{ref} ({digest}): cannot read its signature: {exc}") from None


def _verify_digest(repo: Any, ref: str, digest: str, public_key: Any, identity: str | None) -> list[Verified]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from registry.errors import NotFoundError
    tag = signature_tag(digest)
    try:
        sm = repo.get_manifest(tag)
    except NotFoundError:
        raise VerificationError(f"{ref} ({digest}) is not signed: no {tag} signature in {repo.ref}") from None
    layers = signature_layers(sm.data, sm.media_type, f"{repo.ref}:{tag}")
    if not layers:
        raise VerificationError(f"{ref} ({digest}): {repo.ref}:{tag} holds no simple-signing signature")
    if len(layers) > MAX_SIGNATURES:
        # Each layer costs a download and a verification: a padded manifest must not buy hours.
        raise VerificationError(f"{ref} ({digest}): {repo.ref}:{tag} holds {len(layers)} signature layers, more "
                                f"than the {MAX_SIGNATURES} verify checks; refusing it")
    good, reasons = [], []
    for layer in layers:
        sig_b64 = layer.annotations.get(SIGNATURE_ANNOTATION, "")
        try:
            sig = base64.b64decode(sig_b64, validate=True) if isinstance(sig_b64, str) else None
        except ValueError:
            sig = None
        if not sig:
            reasons.append(f"{layer.digest[:19]}: the signature annotation is missing or not base64")
            continue
        raw = repo.fetch_blob(layer.digest, max_size=MAX_PAYLOAD)      # verified against the layer digest
        try:
            public_key.verify(sig, raw, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            reasons.append(f"{layer.digest[:19]}: not signed by this key (or the payload was altered)")
            continue
        try:
            good.append(Verified(digest, _check_payload(raw, digest, identity)))
        except ValueError as exc:
            reasons.append(f"{layer.digest[:19]}: signed by this key, but {exc}")
    if not good:
        shown = reasons[:MAX_REASONS] + ([f"and {len(reasons) - MAX_REASONS} more"] if len(reasons) > MAX_REASONS else [])
        raise VerificationError(f"{ref} ({digest}): no valid signature by this key among {len(layers)} in "
                                f"{repo.ref}:{tag}: " + "; ".join(shown))
    return good


def signed_identities(verified: list[Verified]) -> list[str]:
    """The repositories the verified payloads name (their docker-reference, normalized), each once."""
    return sorted({_repository_of(str(v.payload["critical"]["identity"]["docker-reference"])) for v in verified})
