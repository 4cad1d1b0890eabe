"""Supply-chain attestations of builds: an SBOM made by pybuild itself (``sbom``), SLSA provenance
(``provenance``), and attaching them to an image as BuildKit does (``attach``).

The engine calls :func:`options_for_build` before a build and, once the image manifests are
committed, :func:`attest_platform` per platform image: the engine's index lists the images, then
their attestation manifests, as BuildKit's (one image: an index of the two); everything else
stays here.
"""
from __future__ import annotations

_LAZY = {
    **dict.fromkeys(("ATTESTATION_ARTIFACT", "ATTESTATION_MANIFEST", "IN_TOTO", "PREDICATE_ANNOTATION", "REF_DIGEST", "REF_TYPE",
                     "AttestOptions", "attach", "attestation_for", "attestation_manifest", "image_index", "parse_attest_options"),
                    "attach"),
    **dict.fromkeys(("BuildFacts", "provenance_predicate", "statement"), "provenance"),
    **dict.fromkeys(("Limits", "Package", "ScanResult", "make_sbom", "scan_view", "to_cyclonedx", "to_spdx"), "sbom"),
}


def __getattr__(name: str):      # PEP 562: every build asks for its options; only some scan or attach
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = __import__("importlib").import_module(f".{_LAZY[name]}", __name__)
    return globals().setdefault(name, getattr(module, name))


__all__ = [*_LAZY, "attest_platform", "options_for_build"]


def options_for_build(opts, specs) -> "AttestOptions":
    """The attestations of a build with BuildOptions ``opts`` and parsed --output ``specs``.

    Provenance is on by default (mode=min, as buildx) only for outputs that carry an index: a
    push (--push, type=registry, type=image,push=true) or an OCI layout (type=oci). A plain
    build into the store (`pybuild build -t x`) stays a bare image manifest unless --sbom,
    --provenance or --attest ask for more."""
    index_capable = bool(opts.push) or any(
        s.type in ("registry", "oci") or (s.type == "image" and s.attrs.get("push") == "true") for s in specs)
    from .attach import parse_attest_options
    return parse_attest_options(opts.sbom, opts.provenance, list(opts.attest), default_provenance=index_capable)


def attest_platform(store, layers, final, manifest, config, attest: "AttestOptions", opts, *,
                    dockerfile_name: str, dockerfile_text: str, bases: dict[tuple[str, str], str], secret_ids,
                    steps, builder_platform: str, started: float, source_date_epoch: int | None):
    """The attestation manifest (SBOM and/or provenance, as ``attest`` asks) about one committed
    platform image ``manifest`` (``config``: the ImageConfig Executor.commit_image returned;
    ``final``: its stage state, whose layers the SBOM reads). ``bases``: (ref, platform it was
    resolved for) -> manifest digest, the provenance's resolved dependencies."""
    import time

    from .attach import attestation_for
    from .provenance import BuildFacts
    platform = config.platform
    facts = BuildFacts(dockerfile_name=dockerfile_name,
                       dockerfile_bytes=dockerfile_text.encode("utf-8", "surrogateescape"),
                       build_args=dict(opts.build_args), target=opts.target, labels=dict(opts.labels),
                       platform=str(platform) if opts.platform else "", builder_platform=builder_platform,
                       # A base resolved for the build's own platform is named without one unless
                       # --platform was given (as before); one of a FROM --platform stage with it.
                       bases={(ref, p if opts.platform or p != builder_platform else ""): d
                              for (ref, p), d in bases.items()},
                       secret_ids=sorted(secret_ids),
                       steps=[s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in steps],
                       no_cache=opts.no_cache, network=opts.network, started=started, finished=time.time())
    view = layers.view(final.layers) if attest.sbom else None
    name = opts.tags[0] if opts.tags else "_"
    return attestation_for(store, view, manifest, platform, attest, name=name, facts=facts,
                           source_date_epoch=source_date_epoch)

