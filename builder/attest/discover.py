"""Finding what is attached to an image: BuildKit attestation manifests in its index, OCI
referrers (the referrers API, or its ``sha256-<hex>`` tag-schema fallback on registries without
it, such as distribution 2.8) and cosign's ``sha256-<hex>.sig`` signature tag.

    found = discover_remote(client, "localhost:5000/app:1")    # or discover_local(store, "app:1")
    for a in found: print(a.kind, a.manifest, a.found_by)

Everything read is bounded by the registry client's manifest and blob limits.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from registry import mediatypes as mt
from registry.manifest import Descriptor, Index, Manifest, parse_manifest
from registry.signatures import SIGNATURE_ANNOTATION, SIMPLESIGNING, signature_tag

from .attach import IN_TOTO, PREDICATE_ANNOTATION, REF_DIGEST, REF_TYPE, ATTESTATION_MANIFEST

# Layers bigger than this are listed but not read (an SBOM of a big image is a few MB).
MAX_ATTACHMENT_BLOB = 64 << 20
# All the layers one discovery reads together (a registry can list many referrers).
MAX_ATTACHMENT_TOTAL = 256 << 20


@dataclass
class Entry:
    """One layer of an attached manifest: an in-toto statement, a signature payload, or other."""

    media_type: str
    digest: str
    size: int
    predicate_type: str = ""
    content: Any = None                  # parsed JSON (statement or simple-signing payload)
    raw: bytes | None = None             # the exact bytes (a signature covers these)
    signature: str = ""                  # base64 signature annotation of a simple-signing layer
    problem: str = ""                    # why the content was set aside (not JSON, about another image)

    def to_dict(self) -> dict:
        d: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.predicate_type:
            d["predicateType"] = self.predicate_type
        if self.problem:
            d["problem"] = self.problem
        if self.signature:
            d["signature"] = self.signature
        if self.content is not None:
            d["content"] = self.content
        return d


@dataclass
class Attachment:
    """A manifest attached to ``subject`` (an image manifest digest)."""

    kind: str                            # "attestation", "signature" or "artifact"
    subject: str
    manifest: str
    artifact_type: str = ""
    found_by: list[str] = field(default_factory=list)   # "index", "referrers", "tag <name>"
    entries: list[Entry] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "manifest": self.manifest,
                "artifactType": self.artifact_type, "foundBy": list(self.found_by),
                "entries": [e.to_dict() for e in self.entries]}


def _kind(doc: Manifest, artifact_type: str) -> str:
    types = {l.media_type for l in doc.layers}
    if SIMPLESIGNING in types:
        return "signature"
    if IN_TOTO in types:
        return "attestation"
    return "artifact"


def _names(statement: Any, subject: str) -> bool:
    """Whether an in-toto statement's ``subject`` list names the manifest digest ``subject``."""
    algo, _, hexpart = subject.partition(":")
    subjects = statement.get("subject") if isinstance(statement, dict) else None
    return isinstance(subjects, list) and any(
        isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"].get(algo) == hexpart
        for s in subjects)


def read_attachment(get_manifest: Callable[[str], bytes], get_blob: Callable[[str], bytes], digest: str,
                    subject: str, found_by: str, where: str, require_subject: bool = False) -> Attachment | None:
    """Read the manifest ``digest`` and its small layers into an Attachment (None when it is an
    index, something that is not a manifest, or a manifest whose OCI ``subject`` is another
    image: a registry's referrers list is not trusted to say what belongs to what). With
    ``require_subject`` (a referrer) the manifest must name ``subject``. An in-toto statement
    about another image, or a layer that is not JSON, is listed with its ``problem`` and no
    content."""
    from registry.errors import RegistryError
    from registry.manifest import loads_limited
    data = get_manifest(digest)
    doc = parse_manifest(data, None, where=f"{where}@{digest}")
    if not isinstance(doc, Manifest):
        return None
    if (doc.subject.digest if doc.subject else None) != subject and (doc.subject or require_subject):
        return None
    artifact_type = doc.artifact_type or (doc.config.media_type if doc.config else "")
    att = Attachment(_kind(doc, artifact_type), subject, digest, artifact_type or "", [found_by])
    for layer in doc.layers:
        e = Entry(layer.media_type, layer.digest, layer.size,
                  predicate_type=layer.annotations.get(PREDICATE_ANNOTATION, ""),
                  signature=layer.annotations.get(SIGNATURE_ANNOTATION, ""))
        if layer.media_type in (IN_TOTO, SIMPLESIGNING) and layer.size <= MAX_ATTACHMENT_BLOB:
            e.raw = get_blob(layer.digest)
            try:
                e.content = loads_limited(e.raw, f"{where}@{layer.digest}")
            except (ValueError, RegistryError):
                e.content, e.problem = None, "not valid JSON (or nested too deeply)"
            if isinstance(e.content, dict) and not e.predicate_type:
                e.predicate_type = str(e.content.get("predicateType", ""))
            if layer.media_type == IN_TOTO and e.content is not None and not _names(e.content, subject):
                e.content, e.problem = None, f"its statement is about another image, not {subject}"
        att.entries.append(e)
    return att


def _merge(found: list[Attachment], new: Attachment | None) -> None:
    if new is None:
        return
    for a in found:
        if a.manifest == new.manifest:
            a.found_by += [f for f in new.found_by if f not in a.found_by]
            return
    found.append(new)


def _from_index(found: list[Attachment], get_manifest, get_blob, index: Index, where: str) -> list[str]:
    """Add the BuildKit attestation entries of ``index`` (those about one of its images); the
    digests of its image entries."""
    images = [d.digest for d in index.manifests if d.annotations.get(REF_TYPE) != ATTESTATION_MANIFEST
              and (d.media_type in (mt.OCI_MANIFEST, mt.DOCKER_MANIFEST) or not d.media_type)]
    for d in index.manifests:
        if d.annotations.get(REF_TYPE) == ATTESTATION_MANIFEST and d.annotations.get(REF_DIGEST) in images:
            _merge(found, read_attachment(get_manifest, get_blob, d.digest, d.annotations[REF_DIGEST],
                                          "index", where))
    return images


def discover_local(store: Any, ref: str) -> tuple[str, list[Attachment]]:
    """The attachments of the image ``ref`` in the local store (BuildKit attestation entries of
    its index); returns (the digest ``ref`` resolves to, attachments)."""
    top = store.resolve(ref)
    found: list[Attachment] = []
    doc = store.get_manifest(top.digest)
    if isinstance(doc, Index):
        def get_manifest(d: str) -> bytes:
            return store.read_blob(d)
        _from_index(found, get_manifest, store.read_blob, doc, ref)
    return top.digest, found


def discover_remote(client: Any, ref: str) -> tuple[str, list[Attachment]]:
    """The attachments of the image ``ref`` in its registry: attestation entries of its index,
    referrers of the index and of each image manifest (API or tag fallback), and cosign's
    ``sha256-<hex>.sig`` tag; returns (the digest ``ref`` resolves to, attachments)."""
    from registry.errors import NotFoundError
    from registry.reference import parse_reference
    r = parse_reference(ref)
    repo = client.repository(r.registry, r.repository)
    top = repo.get_manifest(r.identifier)
    where = f"{r.registry}/{r.repository}"

    def get_manifest(d: str) -> bytes:
        return repo.get_manifest(d).data

    budget = [MAX_ATTACHMENT_TOTAL]

    def get_blob(d: str) -> bytes:
        # What is left of the budget caps each read: a registry listing many big layers runs out.
        data = repo.fetch_blob(d, max_size=min(MAX_ATTACHMENT_BLOB, budget[0]))
        budget[0] -= len(data)
        return data

    found: list[Attachment] = []
    doc = parse_manifest(top.data, top.media_type, where=str(r))
    subjects = [top.digest]
    if isinstance(doc, Index):
        subjects += _from_index(found, get_manifest, get_blob, doc, where)
    for subject in subjects:
        for d in repo.referrers(subject):
            how = "referrers"
            try:
                _merge(found, read_attachment(get_manifest, get_blob, d["digest"], subject, how, where,
                                              require_subject=True))
            except NotFoundError:
                continue        # a fallback index may name a manifest deleted since
        tag = signature_tag(subject)
        info = repo.head_manifest(tag)
        if info is not None:
            _merge(found, read_attachment(get_manifest, get_blob, info.digest, subject, f"tag {tag}", where))
    return top.digest, found


def subject_descriptor(digest: str, size: int, media_type: str = mt.OCI_MANIFEST) -> Descriptor:
    """The ``subject`` descriptor of an image manifest."""
    return Descriptor(media_type, digest, size)
