"""`pybuild [build] [-f FILE|-] [-t NAME[:TAG]]... CONTEXT`: docker-build compatible builds."""
from __future__ import annotations

import argparse


def register(add_command) -> None:
    """Add the `build` command."""
    p = add_command("build", "build an image from a Dockerfile (like `docker build`)")
    p.add_argument("context", metavar="CONTEXT", help="build context: a directory, a tar file, or - (tar on stdin)")
    p.add_argument("-f", "--file", dest="file", metavar="FILE", help="the Dockerfile (default CONTEXT/Dockerfile; - for stdin)")
    p.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="NAME[:TAG]",
                   help="name the image (repeatable)")
    p.add_argument("--build-arg", dest="build_args", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set a build argument (KEY alone takes the value from the environment)")
    p.add_argument("--target", help="build this stage (and what it needs) instead of the last one")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT][,...]",
                   help="target platform(s): several (linux/amd64,linux/arm64) build an image index; "
                        "a foreign platform's RUN steps need binfmt_misc emulation (qemu-user-static)")
    p.add_argument("--format", default="oci", choices=["oci", "docker"],
                   help="media types: oci (default; an OCI index for several platforms) or docker "
                        "(v2 schema 2 manifests, a manifest list)")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="KEY=VALUE",
                   help="add a label to the image (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--no-cache-filter", dest="no_cache_filter", action="append", default=[], metavar="STAGE",
                   help="do not use the cache for the named stage (repeatable)")
    p.add_argument("--cache-from", dest="cache_from", action="append", default=[],
                   metavar="type=registry,ref=REPO:TAG|type=local,src=DIR", help="also look steps up in this cache (repeatable)")
    p.add_argument("--cache-to", dest="cache_to", action="append", default=[],
                   metavar="type=registry,ref=REPO:TAG[,mode=min|max]|type=local,dest=DIR",
                   help="export the build's cache there after the build (repeatable)")
    p.add_argument("--cache-report", dest="cache_report", metavar="FILE.md",
                   help="write a Markdown summary of cache hits and misses (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--pull", action="store_true", help="always pull base images again")
    p.add_argument("--progress", default="auto", choices=["auto", "plain", "tty", "quiet", "rawjson"],
                   help="progress output (default auto: tty on a terminal, plain otherwise)")
    p.add_argument("--iidfile", metavar="FILE", help="write the image ID (config digest) to FILE")
    p.add_argument("--metadata-file", metavar="FILE",
                   help="write image digest, config digest and per-step details as JSON to FILE")
    p.add_argument("--push", action="store_true", help="push the tagged image after the build")
    p.add_argument("-o", "--output", dest="outputs", action="append", default=[], metavar="type=TYPE[,dest=PATH]",
                   help="export: type=image|registry|oci|docker|tar|local with dest=PATH")
    p.add_argument("--secret", dest="secrets", action="append", default=[], metavar="id=ID,src=PATH|env=VAR",
                   help="a secret for RUN --mount=type=secret")
    # One value each (`--ssh default .` leaves `.` as the context), as docker's flag takes.
    p.add_argument("--ssh", action="append", default=[], metavar="default|ID[=SOCKET|KEY[,KEY]]",
                   help="an SSH agent or keys for RUN --mount=type=ssh (not forwarded yet: such a RUN "
                        "fails with a clear error)")
    p.add_argument("--insecure-registry", dest="insecure_registries", action="append", default=[],
                   metavar="HOST", help="allow plain HTTP or an unverified certificate for HOST when "
                                        "pulling base images and pushing (repeatable)")
    p.add_argument("--network", default="default", choices=["default", "host", "none"],
                   help="network for RUN: default, a private network with outbound access (through "
                        "pasta); host, the host's network shared (without CAP_NET_RAW); none, loopback only")
    p.add_argument("--compression", default="gzip", metavar="ALGO[,level=N]",
                   help="layer compression: gzip (ISA-L), zstd, uncompressed")
    # chroot stays a choice so that it gets the message saying why it was removed.
    p.add_argument("--isolation", default=None, choices=["oci", "default", "none", "chroot"],
                   help="RUN sandbox: oci (runc; `default` is the same, and picks none with a notice "
                        "where no user namespace can be made); none, a chroot without namespaces "
                        "(weaker: SECURITY.md 4d); chroot was removed (it could not confine a RUN)")
    # Attestations (issue 17), as docker buildx takes them.
    p.add_argument("--sbom", metavar="true|false|format=spdx|cyclonedx",
                   help="attach an SBOM (SPDX 2.3 JSON; format=cyclonedx for CycloneDX 1.5) made by pybuild from "
                        "the image's packages (dpkg, apk, Python, npm)")
    p.add_argument("--provenance", metavar="true|false|mode=min|max",
                   help="attach SLSA provenance (default mode=min when pushing or exporting an OCI layout; "
                        "off for a plain build into the store)")
    p.add_argument("--attest", dest="attest", action="append", default=[],
                   metavar="type=sbom[,format=F]|type=provenance[,mode=M]", help="attach an attestation (repeatable)")
    p.add_argument("--sign", dest="sign_key", metavar="KEY",
                   help="sign what --push pushes with this cosign key (password: COSIGN_PASSWORD)")
    p.set_defaults(func=run)


def _build_args(values: list[str]) -> dict[str, str]:
    import os
    out: dict[str, str] = {}
    for v in values:
        k, eq, val = v.partition("=")
        if eq:
            out[k] = val
        elif k in os.environ:
            out[k] = os.environ[k]
    return out


def _labels(values: list[str]) -> dict[str, str]:
    from ..errors import BuildError
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise BuildError(f"--label {v!r}: expected KEY=VALUE")
        out[k] = val
    return out


def run(args: argparse.Namespace) -> int:
    """Handler of `pybuild build`."""
    if args.isolation != "oci":
        # Before the no-op fast path, which would otherwise answer for a removed isolation
        # (None: oci, or none where no user namespace can be made).
        if args.isolation in (None, "default", "none"):
            from ..runtime.chroot import resolve_isolation      # light: not the sandbox module
            args.isolation = resolve_isolation(args.isolation)
        else:
            from ..runtime.sandbox import check_isolation
            args.isolation = check_isolation(args.isolation)
    from ..cache.fast import try_fast_build      # a no-op rebuild needs no engine (start-up)
    # The fast path knows single-platform OCI builds only (it remembers no index).
    fast = args.format == "oci" and "," not in (args.platform or "")
    image_id = try_fast_build(args, _build_args(args.build_args), _labels(args.labels)) if fast else None
    if image_id is not None:
        if args.quiet:
            print(image_id)
        return 0
    from ..engine.build import BuildOptions, build
    progress = "quiet" if args.quiet else args.progress
    opts = BuildOptions(
        context=args.context, dockerfile=args.file, tags=args.tags, build_args=_build_args(args.build_args),
        target=args.target, platform=args.platform, labels=_labels(args.labels), no_cache=args.no_cache,
        no_cache_filter=args.no_cache_filter, cache_from=args.cache_from, cache_to=args.cache_to,
        cache_report=args.cache_report,
        pull=args.pull, progress=progress, iidfile=args.iidfile, metadata_file=args.metadata_file,
        push=args.push, outputs=args.outputs, secrets=args.secrets, ssh=args.ssh,
        insecure_registries=tuple(args.insecure_registries), network=args.network,
        compression=args.compression, isolation=args.isolation, format=args.format, root=args.root,
        sbom=args.sbom, provenance=args.provenance, attest=args.attest, sign_key=args.sign_key)
    result = build(opts)
    if args.quiet:
        print(result.image_id)
    return 0
