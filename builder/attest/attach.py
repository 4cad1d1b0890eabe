"""Attestations attached as BuildKit attaches them: an image index holding the image manifest
and, per image, an attestation manifest (platform ``unknown/unknown``, annotations
``vnd.docker.reference.type=attestation-manifest`` and ``vnd.docker.reference.digest=<image
manifest digest>``) whose layers are in-toto statements (``application/vnd.in-toto+json``,
annotation ``in-toto.io/predicate-type``).

Options, as docker buildx takes them: ``--sbom=true|false|generator=G,format=F``,
``--provenance=true|false|mode=min|max``, ``--attest type=sbom[,generator=G][,format=F]``,
``--attest type=provenance[,mode=min|max]`` (``disabled=true`` turns one off). The SBOM is made by
pybuild itself (``generator`` may be omitted or ``builtin``: a scanner image is not run).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from registry import mediatypes as mt
from registry.manifest import Descriptor, Index, Manifest
from registry.platform import Platform

from ..errors import BuildError

IN_TOTO = "application/vnd.in-toto+json"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
REF_TYPE = "vnd.docker.reference.type"
REF_DIGEST = "vnd.docker.reference.digest"
ATTESTATION_MANIFEST = "attestation-manifest"
# The artifactType BuildKit gives attestation manifests when it stores them as OCI artifacts.
ATTESTATION_ARTIFACT = "application/vnd.docker.attestation.manifest.v1+json"
BUILTIN_GENERATORS = ("", "builtin", "pybuild")


@dataclass
class AttestOptions:
    """What to attach; ``explicit`` is True when the user asked (so the default never changes a
    plain `pybuild build -t x`)."""

    sbom: bool = False
    sbom_format: str = "spdx"
    provenance: str | None = None          # None (off), "min", "max"
    explicit: bool = False

    @property
    def any(self) -> bool:
        return self.sbom or self.provenance is not None


def _kv(flag: str, spec: str) -> dict[str, str]:
    out = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        k, eq, v = part.partition("=")
        if not eq:
            raise BuildError(f"{flag} {spec}: {part!r} is not key=value")
        out[k.strip().lower()] = v.strip()
    return out


def _bool(flag: str, v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise BuildError(f"{flag}: {v!r} is not true or false")


def _sbom_attrs(flag: str, attrs: dict[str, str], opts: AttestOptions) -> None:
    if _bool(flag, attrs.pop("disabled", "false")):
        opts.sbom = False
        return
    gen = attrs.pop("generator", "")
    if gen not in BUILTIN_GENERATORS:
        raise BuildError(f"{flag}: generator={gen}: pybuild makes the SBOM itself and runs no scanner "
                         "image; leave generator out (or generator=builtin)")
    fmt = attrs.pop("format", "spdx").lower()
    if fmt in ("spdx", "spdx-json"):
        fmt = "spdx"
    elif fmt in ("cyclonedx", "cyclonedx-json", "cdx"):
        fmt = "cyclonedx"
    else:
        raise BuildError(f"{flag}: format={fmt}: use spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.5 JSON)")
    attrs.pop("scan-context", None)
    attrs.pop("scan-stage", None)
    if attrs:
        raise BuildError(f"{flag}: unknown option {sorted(attrs)[0]!r} (use generator=, format=, disabled=)")
    opts.sbom, opts.sbom_format = True, fmt


def _prov_attrs(flag: str, attrs: dict[str, str], opts: AttestOptions) -> None:
    if _bool(flag, attrs.pop("disabled", "false")):
        opts.provenance = None
        return
    mode = attrs.pop("mode", "min")
    if mode not in ("min", "max"):
        raise BuildError(f"{flag}: mode={mode}: use min or max")
    for k in ("builder-id", "reproducible", "inline-only", "version"):
        attrs.pop(k, None)
    if attrs:
        raise BuildError(f"{flag}: unknown option {sorted(attrs)[0]!r} (use mode=min|max, disabled=)")
    opts.provenance = mode


def parse_attest_options(sbom: str | None, provenance: str | None, attest: list[str],
                         default_provenance: bool) -> AttestOptions:
    """The attestations a build attaches. ``default_provenance``: whether provenance mode=min is
    on when nothing says otherwise (buildx's default, for index-capable outputs only; off with
    BUILDX_NO_DEFAULT_ATTESTATIONS set)."""
    opts = AttestOptions()
    explicit = False
    for spec in attest:
        attrs = _kv("--attest", spec)
        typ = attrs.pop("type", "")
        if typ == "sbom":
            _sbom_attrs(f"--attest {spec}", attrs, opts)
        elif typ == "provenance":
            _prov_attrs(f"--attest {spec}", attrs, opts)
        else:
            raise BuildError(f"--attest {spec}: type must be sbom or provenance")
        explicit = True
    prov_said = any("type=provenance" in a for a in attest)
    if sbom is not None:
        explicit = True
        if "=" in sbom:
            _sbom_attrs(f"--sbom={sbom}", _kv("--sbom", sbom), opts)
        elif _bool(f"--sbom={sbom}", sbom):
            _sbom_attrs("--sbom", {}, opts)
        else:
            opts.sbom = False
    if provenance is not None:
        explicit = prov_said = True
        if "=" in provenance:
            _prov_attrs(f"--provenance={provenance}", _kv("--provenance", provenance), opts)
        elif _bool(f"--provenance={provenance}", provenance):
            opts.provenance = "min"
        else:
            opts.provenance = None
    if not prov_said and default_provenance and not os.environ.get("BUILDX_NO_DEFAULT_ATTESTATIONS"):
        opts.provenance = "min"
    opts.explicit = explicit
    return opts


def _layer(store, stmt: dict) -> Descriptor:
    data = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    d = store.put_blob(data, IN_TOTO)
    return Descriptor(IN_TOTO, d.digest, d.size, annotations={PREDICATE_ANNOTATION: stmt["predicateType"]})


def attestation_manifest(store, statements: list[dict], subject: Descriptor | None = None) -> Descriptor:
    """Store the attestation manifest whose layers are ``statements``; its descriptor.

    With a ``subject`` (the image manifest the statements are about) the manifest also names it
    as its OCI 1.1 ``subject``, so that the referrers API (or its ``sha256-<hex>`` tag fallback,
    which a push keeps up to date) finds it without reading the index."""
    import hashlib
    layers = [_layer(store, s) for s in statements]
    cfg = {"architecture": "unknown", "os": "unknown", "config": {},
           "rootfs": {"type": "layers", "diff_ids": [l.digest for l in layers]}}
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    c = store.put_blob(cfg_bytes, mt.OCI_CONFIG)
    assert c.digest == "sha256:" + hashlib.sha256(cfg_bytes).hexdigest()
    m = Manifest(config=Descriptor(mt.OCI_CONFIG, c.digest, c.size), layers=layers, media_type=mt.OCI_MANIFEST,
                 subject=subject, artifact_type=ATTESTATION_ARTIFACT if subject is not None else None)
    return store.put_manifest(m)


def image_index(store, images: list[tuple[Descriptor, Platform, Descriptor | None]]) -> Descriptor:
    """Store an OCI index of ``images`` ``(manifest, platform, attestation manifest or None)``:
    the images, then their attestation entries (BuildKit's attestation storage puts them "after
    all the original runnable manifests"); the index's descriptor."""
    entries = [Descriptor(mt.OCI_MANIFEST, man.digest, man.size, platform=plat) for man, plat, _ in images]
    for man, _plat, att in images:
        if att is not None:
            entries.append(Descriptor(mt.OCI_MANIFEST, att.digest, att.size,
                                      annotations={REF_TYPE: ATTESTATION_MANIFEST, REF_DIGEST: man.digest},
                                      platform=Platform("unknown", "unknown")))
    return store.put_manifest(Index(manifests=entries, media_type=mt.OCI_INDEX))


def attestation_for(store, view, image: Descriptor, platform: Platform, opts: AttestOptions, *, name: str,
                    facts=None, source_date_epoch: int | None = None) -> Descriptor:
    """Make the attestations ``opts`` asks for about the platform image ``image`` (whose
    filesystem ``view`` shows) and store them as one attestation manifest; its descriptor."""
    from .provenance import PREDICATE_TYPE, docker_purl, provenance_predicate, statement
    from .sbom import PREDICATE_TYPES, make_sbom
    subject = [(docker_purl(name, str(platform)), image.digest)]
    statements = []
    if opts.sbom:
        doc = make_sbom(view, name, opts.sbom_format, source_date_epoch)
        statements.append(statement(PREDICATE_TYPES[opts.sbom_format], doc, subject))
    if opts.provenance is not None:
        statements.append(statement(PREDICATE_TYPE, provenance_predicate(facts, opts.provenance, source_date_epoch),
                                    subject))
    return attestation_manifest(store, statements,
                                subject=Descriptor(image.media_type or mt.OCI_MANIFEST, image.digest, image.size))


def attach(store, view, image: Descriptor, platform: Platform, opts: AttestOptions, *, name: str,
           facts=None, source_date_epoch: int | None = None) -> tuple[Descriptor, Descriptor]:
    """attestation_for ``image`` and an index holding both; returns (index descriptor,
    attestation manifest descriptor)."""
    att = attestation_for(store, view, image, platform, opts, name=name, facts=facts,
                          source_date_epoch=source_date_epoch)
    return image_index(store, [(image, platform, att)]), att
