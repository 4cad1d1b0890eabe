"""SLSA provenance v1 of a build, as an in-toto statement v1 (BuildKit's field names where they
apply, so tools that read buildx's provenance read pybuild's).

``mode=min``: the frontend and its arguments (build args, target, labels, platform), the
Dockerfile's digest, the base images as resolvedDependencies, the builder and timestamps.
``mode=max`` adds each step (instruction, cache hit, layer digest) and the Dockerfile's text.
Secret values are never in it: only the ids of the secrets the build was given (their values
are not an input of this function at all).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from urllib.parse import quote

PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
BUILD_TYPE = "https://mobyproject.org/buildkit@v1"
MODES = ("min", "max")


@dataclass
class BuildFacts:
    """What the provenance says about a build (gathered by the engine)."""

    dockerfile_name: str
    dockerfile_bytes: bytes
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    platform: str = ""
    builder_platform: str = ""
    # (ref, platform it was resolved for, "" for the build's own) -> manifest digest
    bases: dict[tuple[str, str], str] = field(default_factory=dict)
    secret_ids: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)           # mode=max
    no_cache: bool = False
    network: str = "default"
    started: float = 0.0
    finished: float = 0.0


def docker_purl(ref: str, platform: str = "") -> str:
    """``pkg:docker/NAME@TAG?platform=...`` for a reference (BuildKit's way of naming images)."""
    from registry.reference import parse_reference
    try:
        r = parse_reference(ref)
        name, tag = r.familiar_name, r.tag
    except Exception:   # noqa: BLE001 - a name that is not a reference is quoted as given
        name, tag = ref, None
    out = "pkg:docker/" + quote(name, safe="/.-_")
    if tag:
        out += "@" + quote(tag, safe=".-_")
    if platform:
        out += "?platform=" + quote(platform, safe="")
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def provenance_predicate(facts: BuildFacts, mode: str = "min", source_date_epoch: int | None = None) -> dict:
    """The SLSA provenance v1 predicate of a build."""
    from .._version import __version__
    args: dict[str, str] = {}
    for k, v in sorted(facts.build_args.items()):
        args[f"build-arg:{k}"] = v
    for k, v in sorted(facts.labels.items()):
        args[f"label:{k}"] = v
    if facts.target:
        args["target"] = facts.target
    if facts.no_cache:
        args["no-cache"] = ""
    if facts.network != "default":
        args["force-network-mode"] = facts.network
    if facts.platform:
        args["platform"] = facts.platform
    df_digest = hashlib.sha256(facts.dockerfile_bytes).hexdigest()
    request: dict = {"frontend": "dockerfile.v0", "args": args,
                     "locals": [{"name": "context"}, {"name": "dockerfile"}]}
    if facts.secret_ids:
        request["secrets"] = [{"id": s} for s in sorted(facts.secret_ids)]
    external = {"configSource": {"path": facts.dockerfile_name, "digest": {"sha256": df_digest}},
                "request": request}
    deps = [{"uri": docker_purl(ref, plat or facts.platform), "digest": {"sha256": d.split(":", 1)[1]}}
            for (ref, plat), d in sorted(facts.bases.items())]
    if source_date_epoch is not None:
        started = finished = float(source_date_epoch)
    else:
        started, finished = facts.started or time.time(), facts.finished or time.time()
    internal: dict = {"builderPlatform": facts.builder_platform}
    if source_date_epoch is not None:
        internal["buildArgs"] = {"SOURCE_DATE_EPOCH": str(source_date_epoch)}
    metadata: dict = {"startedOn": _iso(started), "finishedOn": _iso(finished),
                      "buildkit_completeness": {"request": mode == "max", "resolvedDependencies": True},
                      "buildkit_hermetic": False, "buildkit_reproducible": source_date_epoch is not None}
    if mode == "max":
        metadata["buildkit_metadata"] = {
            "source": {"infos": [{"filename": facts.dockerfile_name, "language": "Dockerfile",
                                  "data": facts.dockerfile_bytes.decode(errors="replace")}]},
            "pybuild_steps": facts.steps}
    return {"buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                                "internalParameters": internal, "resolvedDependencies": deps},
            "runDetails": {"builder": {"id": f"pybuild/{__version__}", "version": {"pybuild": __version__}},
                           "metadata": metadata}}


def statement(predicate_type: str, predicate: dict, subjects: list[tuple[str, str]]) -> dict:
    """An in-toto statement v1 about ``subjects`` ``(name, sha256 digest)``."""
    return {"_type": STATEMENT_TYPE, "predicateType": predicate_type,
            "subject": [{"name": n, "digest": {"sha256": d.split(":", 1)[-1]}} for n, d in subjects],
            "predicate": predicate}
