"""The library entry point of builds: ``build(BuildOptions) -> BuildResult``.

Reads the Dockerfile and context, plans the stages, builds the needed ones (independent stages
side by side), writes the image to the store, then tags, exports and pushes it. Nothing is
tagged unless every step succeeded; blobs written on the way are protected by a store lease
and, once cached, by the cache's gc root.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from registry import mutate
from registry.compression import parse_compression
from registry.errors import NotFoundError, RegistryError
from registry.manifest import Descriptor, ImageConfig
from registry.platform import Platform, host_platform, parse_platform, platform_matches
from registry.store import Store, open_store

from . import config as cfgmod
from ..cache.records import sync_gc_root
from ..errors import BuildError
from .executor import Executor, StageState
from ..runtime.layers import LayerMaker, LayerRef
from .outputs import (OutputSpec, export_docker, export_oci, export_rootfs, parse_output, push_tags,
                      write_text_atomic)
from .plan import make_plan
from ..progress import Progress
from ..root import Root
from .stage import BuildStep, KeyLocks, Services, StageBuilder


@dataclass
class BuildOptions:
    """Everything ``pybuild build`` accepts, as a library call."""

    context: str = "."                      # directory, tar file, or "-" (tar on stdin)
    dockerfile: str | None = None           # path, "-" for stdin; default CONTEXT/Dockerfile
    dockerfile_text: str | None = None      # the Dockerfile itself (overrides `dockerfile`)
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    no_cache_filter: list[str] = field(default_factory=list)   # stages built without the cache
    cache_from: list[str] = field(default_factory=list)        # type=registry,ref=R | type=local,src=D
    cache_to: list[str] = field(default_factory=list)          # type=registry,ref=R[,mode=] | type=local,dest=D
    cache_report: str | None = None                            # Markdown cache summary file
    pull: bool = False
    progress: str = "auto"
    progress_out: TextIO | None = None
    iidfile: str | None = None
    metadata_file: str | None = None
    push: bool = False
    outputs: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)       # id=ID,src=PATH | id=ID,env=VAR
    ssh: list[str] = field(default_factory=list)           # --ssh default|ID[=SOCKET|KEY]: not forwarded yet
    insecure_registries: tuple[str, ...] = ()              # plain HTTP / unverified TLS for pulls and pushes
    network: str = "default"
    compression: str = "gzip"
    isolation: str = "oci"
    format: str = "oci"                                     # media types: oci, or docker (v2s2 + manifest list)
    root: str | None = None
    source_date_epoch: int | None = None
    # Attestations (issue 17, builder/attest): --sbom, --provenance, --attest as docker buildx takes them.
    sbom: str | None = None                 # true|false|generator=G,format=spdx|cyclonedx
    provenance: str | None = None           # true|false|mode=min|max; None: buildx's default
    attest: list[str] = field(default_factory=list)   # type=sbom[,...] | type=provenance[,mode=]
    sign_key: str | None = None             # --sign KEY: cosign-sign what --push pushes (COSIGN_PASSWORD)


@dataclass
class BuildResult:
    """What a build produced."""

    image_id: str                # the config digest (what `docker images` shows as IMAGE ID)
    manifest: Descriptor
    config_digest: str
    config: dict
    tags: list[str]
    steps: list[BuildStep]
    layers: list[LayerRef]
    # A multi-platform build: one result per platform (``manifest`` is then the index, and
    # ``image_id`` its digest; config and layers are the children's).
    platforms: list["BuildResult"] = field(default_factory=list)
    index: Descriptor | None = None  # the index holding the image and its attestations (what is tagged and pushed)

    @property
    def digest(self) -> str:
        """The digest of what was tagged and pushed (what a registry and ``NAME@DIGEST`` refer to):
        the image manifest's, or the index's when attestations were attached."""
        return (self.index or self.manifest).digest


def parse_secret(spec: str) -> tuple[str, bytes]:
    """``id=ID,src=PATH`` / ``id=ID,env=VAR`` (``type=file|env`` accepted) -> (id, value)."""
    attrs = {}
    for part in spec.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            raise BuildError(f"--secret {spec}: {part!r} is not key=value (use id=ID,src=PATH or id=ID,env=VAR)")
        attrs[k.strip().lower()] = v
    sid = attrs.get("id")
    src = attrs.get("src") or attrs.get("source")
    env = attrs.get("env")
    if attrs.get("type") == "env" and not env:
        env = src
        src = None
    if not sid:
        sid = os.path.basename(src) if src else env
    if not sid:
        raise BuildError(f"--secret {spec}: give id=ID and src=PATH or env=VAR")
    if src:
        try:
            return sid, Path(src).expanduser().read_bytes()
        except OSError as exc:
            raise BuildError(f"--secret {spec}: cannot read {src}: {exc.strerror}") from None
    var = env or sid
    if var not in os.environ:
        raise BuildError(f"--secret {spec}: environment variable {var} is not set")
    return sid, os.environ[var].encode()


def _source_date_epoch(opts: BuildOptions) -> int | None:
    if opts.source_date_epoch is not None:
        return opts.source_date_epoch
    v = opts.build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
    if v:
        try:
            return int(v)
        except ValueError:
            raise BuildError(f"SOURCE_DATE_EPOCH={v!r} is not an integer (seconds since 1970)") from None
    return None


def _read_dockerfile(opts: BuildOptions, context) -> tuple[str, str]:
    """The Dockerfile text and its name: -f FILE (relative to the current directory, or to the
    archive root of a tar context), -f - (stdin), or CONTEXT/Dockerfile."""
    if opts.dockerfile_text is not None:
        return opts.dockerfile_text, opts.dockerfile or "Dockerfile"
    if context.dockerfile_text is not None:          # `pybuild build - < Dockerfile`
        return context.dockerfile_text, "Dockerfile"
    if opts.dockerfile == "-":
        return sys.stdin.read(), "Dockerfile"
    in_context: str | None = None
    if opts.dockerfile:
        path = Path(opts.dockerfile)
        if context.temporary and not path.is_absolute():
            in_context = str(path)
            path = context.root / path
    else:
        in_context = "Dockerfile"
        path = context.root / "Dockerfile"
    if in_context is not None:
        # A file of the context: resolved inside it (a link to a host file is not followed out).
        from ..context.build_context import read_in_context
        text = read_in_context(context.root, in_context, "Dockerfile")
        if text is None:
            raise BuildError(f"Dockerfile not found: {path} (use -f PATH)")
        return text, str(path)
    try:
        return path.read_text(), str(path)
    except FileNotFoundError:
        raise BuildError(f"Dockerfile not found: {path} (use -f PATH)") from None
    except OSError as exc:
        raise BuildError(f"cannot read Dockerfile {path}: {exc.strerror}") from None


class _ImageLoader:
    """Loads base images (and COPY --from images) from the store, pulling what is missing."""

    def __init__(self, store: Store, platform: Platform, progress: Progress,
                 insecure_registries: tuple[str, ...] = ()):
        self.store = store
        self.insecure_registries = tuple(insecure_registries)
        self.platform = platform
        self.progress = progress
        self._lock = threading.Lock()
        self._pulled: set[str] = set()
        # Provenance materials, per platform being built: (base ref, platform it was resolved
        # for) -> manifest digest (a FROM --platform=$BUILDPLATFORM stage resolves for the host).
        self.resolved: dict[str, dict[tuple[str, str], str]] = {}

    def __call__(self, ref: str, pull: bool, platform: Platform | None = None,
                 building: Platform | None = None) -> StageState:
        """The stage state of base image ``ref`` for ``platform``, for the image of platform
        ``building`` (default: ``platform``)."""
        platform = platform or self.platform
        with self._lock:
            key = (ref, str(platform))
            need = pull and key not in self._pulled
            if not need:
                try:
                    top = self.store.resolve(ref)
                except NotFoundError:
                    need = True
                else:
                    # An index kept without this platform's image (a one-platform pull): pull
                    # the platform, once per build.
                    from registry.mediatypes import is_index
                    if is_index(top.media_type):
                        try:
                            self.store.image_manifest(ref, platform)
                        except NotFoundError:
                            need = key not in self._pulled
            if need:
                self._pull(ref, platform)
                self._pulled.add(key)
            try:
                desc, manifest = self.store.image_manifest(ref, platform)
            except NotFoundError as exc:
                raise BuildError(f"base image {ref}: {exc}") from None
            cfg = self.store.get_config(manifest.config.digest)
            self.resolved.setdefault(str(building or platform), {})[(ref, str(platform))] = desc.digest
        plat = cfg.os + "/" + cfg.architecture
        if cfg.variant:
            plat += "/" + cfg.variant
        if cfg.architecture and not platform_matches(platform, parse_platform(plat)):
            raise BuildError(f"base image {ref} is for {plat}, not {platform}: give FROM --platform={plat}, "
                             f"build --platform {plat}, or use a base image (or index) that has {platform}")
        diff_ids = cfg.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise BuildError(f"base image {ref}: its config lists {len(diff_ids)} layers but its manifest "
                             f"{len(manifest.layers)}; the image is corrupt (pull it again)")
        layers = [LayerRef(d, l) for d, l in zip(diff_ids, manifest.layers)]
        return StageState("", cfgmod.from_base(cfg), layers, base_ref=ref)

    def _pull(self, ref: str, platform: Platform) -> None:
        from registry.client import ClientOptions, RegistryClient
        from registry.progress import Progress as TransferProgress
        from registry.transfer import pull
        step = self.progress.step(f"[internal] pull {ref}")
        try:
            with RegistryClient(ClientOptions(insecure_registries=self.insecure_registries)) as client:
                pull(client, ref, self.store, platform=platform, progress=TransferProgress())
        except RegistryError as exc:
            step.error(str(exc))
            raise BuildError(f"cannot pull base image {ref}: {exc}{_pull_hint(ref, exc)}") from None
        step.done()


def _pull_hint(ref: str, exc: RegistryError) -> str:
    """What to do about a base image that could not be pulled, when there is something to say
    beyond the registry's own message (which already says how to log in, or which TLS flag)."""
    from registry.errors import AuthError
    text = str(exc)
    if isinstance(exc, NotFoundError):
        return " (check the name and tag; `pybuild images` lists what is in the store)"
    if isinstance(exc, AuthError):
        return ""
    # No registry answered at all (the client's words for refused, unreachable, unresolvable):
    # then the image can only come from this machine.
    if "connection failed" in text or "cannot resolve host" in text:
        return (f"; the image is not in the local store and no registry is reachable: make it "
                f"offline with `pybuild import ROOTFS_DIR {ref}` or `pybuild load -i ARCHIVE`")
    return ""


@dataclass
class _PlatformRun:
    """One engine run of a (possibly multi-platform) build: its plan, services and result."""

    platform: Platform
    plan: "object"
    svc: Services
    sb: StageBuilder
    final: StageState | None = None
    manifest: Descriptor | None = None
    config: Descriptor | None = None
    image_config: ImageConfig | None = None      # the committed config (Executor.commit_image)


def build(opts: BuildOptions) -> BuildResult:
    """Build the image ``opts`` describes; see the module docstring."""
    from dockerfile_grammar.instructions import parse_dockerfile
    from ..context.build_context import open_context
    from ..context.hashcache import open_hash_cache
    from . import multiplatform as mp

    store = open_store(opts.root)
    root = Path(store.root)
    progress = Progress(opts.progress, opts.progress_out)
    platforms = mp.parse_platforms(opts.platform)
    multi = len(platforms) > 1
    compression = parse_compression(opts.compression)
    if opts.network not in ("default", "none", "host"):
        raise BuildError(f"--network {opts.network}: use default, none or host")
    from ..runtime.sandbox import check_isolation
    isolation = check_isolation(opts.isolation)
    for t in opts.tags:
        from registry.reference import parse_reference
        parse_reference(t)
    output_specs = [parse_output(o) for o in opts.outputs]
    docker_types = mp.wants_docker(opts.format, output_specs)
    if multi and any(s.type == "docker" for s in output_specs):
        mp.refuse_docker_output(platforms)
    secrets = dict(parse_secret(s) for s in opts.secrets)
    sde = _source_date_epoch(opts)
    from ..attest import options_for_build
    attest = options_for_build(opts, output_specs)
    signer = None
    if opts.sign_key:
        # Read (and decrypt) the key before building: a wrong password fails in a second, not after.
        if not opts.push and not any(s.type == "registry" for s in output_specs):
            raise BuildError("--sign KEY signs what is pushed: add --push (or --output type=registry)")
        from ..attest.keys import load_private_key
        signer = load_private_key(opts.sign_key)

    if opts.context == "-" and opts.dockerfile == "-":
        raise BuildError("the Dockerfile and the context cannot both come from standard input")
    context = open_context(opts.context, dockerfile=opts.dockerfile if opts.dockerfile != "-" else None,
                           hash_cache=open_hash_cache(root), tmp_dir=_mkdir(Root(root).tmp))
    executor: Executor | None = None
    try:
        text, filename = _read_dockerfile(opts, context)
        step = progress.step(f"[internal] load build definition from {Path(filename).name}")
        df = parse_dockerfile(text, filename)
        step.done()
        plans = [make_plan(df, opts.build_args, opts.target, p) for p in platforms]
        plan = plans[0]
        if plan.unused_build_args:
            progress.message(f"[warning] build-args not consumed by the build: {', '.join(plan.unused_build_args)}")

        layers = LayerMaker(store, root, compression, sde)
        executor = Executor(store, root, layers, isolation=isolation, source_date_epoch=sde)
        from ..cache.remote import finish_build, load_remotes, open_build_cache
        cache = open_build_cache(root, store, no_cache=opts.no_cache, no_cache_filter=opts.no_cache_filter,
                                 cache_from=opts.cache_from)
        load_remotes(cache, progress)
        loader = _ImageLoader(store, platforms[0], progress, opts.insecure_registries)
        runs: list[_PlatformRun] = []
        key_locks = KeyLocks()
        for p, pl in zip(platforms, plans):
            svc = Services(plan=pl, executor=executor, layers=layers, cache=cache,
                           progress=progress, context=context, platform=p, no_cache=opts.no_cache,
                           pull=opts.pull, network=opts.network, secrets=secrets,
                           load_image=lambda ref, pull, plat=None, p=p: loader(ref, pull, plat or p, p),
                           escape=df.escape_token, label_platform=multi, key_locks=key_locks)
            runs.append(_PlatformRun(p, pl, svc, StageBuilder(svc)))
        t_start = time.monotonic()
        t_wall = time.time()
        with store.lease(), cache.in_use():
            if multi:
                _build_platforms(runs)
            else:
                _build_stages(runs[0].sb, plan)
            for r in runs:
                r.final = r.sb.states[r.plan.target]
                cache.ensure_local(r.final.layers)     # lazy remote hits: the image needs its layers
                if opts.labels:
                    r.final.config = mutate.with_labels(r.final.config, opts.labels)
                r.manifest, r.config, r.image_config = executor.commit_image(r.final)
                if docker_types:
                    r.manifest = mp.as_docker(store, r.manifest)
            # Attestations (issue 17): per platform image an attestation manifest, listed after the
            # images in the index (a single-platform build gets an index of the two). A Docker manifest
            # list cannot hold the OCI attestation manifest (registries refuse it).
            atts = None
            if attest.any and not docker_types:
                from ..attest import attest_platform
                atts = [attest_platform(store, layers, r.final, r.manifest, r.image_config, attest, opts,
                                        dockerfile_name=Path(filename).name, dockerfile_text=text,
                                        bases=loader.resolved.get(str(r.platform), {}), secret_ids=secrets.keys(),
                                        steps=[{"stage": st.stage, "instruction": st.instruction,
                                                "cached": st.cached, "layer": st.layer_digest} for st in r.svc.steps],
                                        builder_platform=str(host_platform()), started=t_wall,
                                        source_date_epoch=sde)
                        for r in runs]
            if multi or atts:
                top = mp.write_index(store, [(r.manifest, r.image_config.to_dict()) for r in runs],
                                     docker=docker_types, attestations=atts)
            else:
                top = runs[0].manifest
            sync_gc_root(store, root)
            pushed = _outputs(store, root, layers, runs, top, opts, output_specs, sde,
                              image=None if multi else runs[0].manifest, signer=signer)
            finish_build(cache, store, plan, opts.cache_to, opts.cache_report, progress, ",".join(opts.tags))
        image_id = top.digest if multi else runs[0].config.digest
        step = progress.step("[internal] exporting to image")
        step.done()
        progress.message(f"writing image {image_id} done" + (f", naming to {', '.join(opts.tags)}" if opts.tags else "")
                         + f" ({time.monotonic() - t_start:.1f}s)")
        results = []
        for r in runs:
            steps = [replace(s, duration=round(s.duration, 3)) for s in r.svc.steps]
            results.append(BuildResult(r.config.digest, r.manifest, r.config.digest, r.image_config.to_dict(),
                                       list(opts.tags), steps, list(r.final.layers)))
        if multi:
            result = BuildResult(image_id, top, "", {}, list(opts.tags),
                                 [st for res in results for st in res.steps], [], platforms=results)
        else:
            result = results[0]
            if top is not runs[0].manifest:
                result.index = top
        if opts.iidfile:
            write_text_atomic(opts.iidfile, image_id)
        if opts.metadata_file:
            meta = {
                "containerimage.digest": top.digest,
                "containerimage.descriptor": top.to_dict(),
                "image.name": ",".join(pushed or opts.tags),
                "pybuild.steps": [st.to_dict() for st in result.steps],
                "pybuild.cache": cache.report(),
            }
            if not multi:
                meta["containerimage.config.digest"] = runs[0].config.digest
            else:
                meta["pybuild.platforms"] = {str(r.platform): r.manifest.digest for r in runs}
            write_text_atomic(opts.metadata_file, json.dumps(meta, indent=2) + "\n")
        if not multi and not docker_types and top is runs[0].manifest:
            from ..cache.fast import remember
            remember(root, opts, text.encode("utf-8", "surrogateescape"), plan, cache, store, top.digest,
                     runs[0].config.digest)
        return result
    finally:
        if executor is not None:
            executor.close()
        context.close()
        progress.close()


def _build_platforms(runs: list[_PlatformRun]) -> None:
    """Run each platform's stages, side by side when the machine has more than one core; the
    first failure stops the others."""
    workers = len(runs) if (os.cpu_count() or 1) > 1 else 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pybuild-platform") as pool:
        futs = [pool.submit(_build_stages, r.sb, r.plan) for r in runs]
        try:
            while True:
                finished, pending = wait(futs, timeout=0.2, return_when=FIRST_COMPLETED)
                for f in finished:
                    if f.exception() is not None:
                        raise f.exception()
                if not pending:
                    return
        except BaseException:
            for r in runs:
                r.svc.cancelled.set()
            runs[0].svc.executor.cancel.set()
            from ..runtime.sandbox import cancel_all
            cancel_all()
            wait(futs)
            raise


def _mkdir(p: Path) -> Path:
    from registry.fsutil import private_dir
    return private_dir(p)


def _build_stages(sb: StageBuilder, plan) -> None:
    """Build the planned stages; a stage starts once the stages it needs are done."""
    pending = list(plan.order)
    done: set[int] = set()
    running: dict[Future, int] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(pending)))) as pool:
        try:
            while pending or running:
                for i in list(pending):
                    if plan.stages[i].deps <= done:
                        pending.remove(i)
                        running[pool.submit(sb.build_stage, plan.stages[i])] = i
                # A timeout keeps the main thread responsive to Ctrl-C (an untimed lock wait
                # is not interrupted by signals).
                finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = running.pop(fut)
                    fut.result()
                    done.add(i)
        except BaseException:
            # Stop the other stages: no new steps, and kill what runs in the sandbox now, so
            # that their threads unwind (cleaning up their mounts) before we re-raise.
            sb.svc.cancelled.set()
            sb.svc.executor.cancel.set()
            for fut in running:
                fut.cancel()
            from ..runtime.sandbox import cancel_all
            cancel_all()
            raise


def _outputs(store: Store, root: Path, layers: LayerMaker, runs: list[_PlatformRun], top: Descriptor,
             opts: BuildOptions, specs: list[OutputSpec], sde: int | None,
             image: Descriptor | None = None, signer=None) -> list[str]:
    """Tag, export and push ``top`` (the image, the index of a multi-platform build, or the index
    holding the image and its attestations: ``image`` is then the image manifest, for outputs
    that hold no index); returns the ``REPO@DIGEST`` pushed by digest."""
    from . import multiplatform as mp
    multi = len(runs) > 1
    push = opts.push
    by_digest: list[str] = []
    for spec in specs:
        if spec.type == "registry" or (spec.type == "image" and spec.attrs.get("push") == "true"):
            if spec.attrs.get("push-by-digest") == "true":
                by_digest += [n.strip() for n in spec.attrs.get("name", "").split(";") if n.strip()]
                if not by_digest:
                    raise BuildError("--output push-by-digest=true needs name=REPO (where to push)")
            else:
                push = True
    for t in opts.tags:
        store.tag(t, top)
    if not opts.tags:
        store.add_untagged(top)               # listed as <none>, named by its image ID
    for spec in specs:
        if spec.type == "oci":
            export_oci(store, top, spec.dest, opts.tags, spec.attrs.get("tar", "true") != "false")
        elif spec.type == "docker":
            export_docker(store, image or top, spec.dest, opts.tags)
        elif spec.type in ("tar", "local"):
            if multi:
                mp.export_rootfs_multi(root, layers, runs, spec.dest, spec.type == "tar", sde)
            else:
                export_rootfs(root, layers, runs[0].final.layers, spec.dest, spec.type == "tar", sde)
    pushed: list[str] = []
    if push:
        pushed = [f"{t}@{d}" for t, d in zip(opts.tags, push_tags(store, opts.tags, opts.insecure_registries))]
    if by_digest:
        by_digest = mp.push_by_digest(store, top, by_digest, opts.insecure_registries)
    if signer is not None:
        from ..attest.sign import sign_refs
        sign_refs([*pushed, *by_digest], signer, opts.insecure_registries)
    return by_digest
