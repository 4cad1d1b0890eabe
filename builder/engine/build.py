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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from registry.compression import parse_compression
from registry.errors import NotFoundError, RegistryError
from registry.manifest import Descriptor
from registry.platform import Platform, host_platform, parse_platform, platform_matches
from registry.store import Store, open_store

from . import config as cfgmod
from ..cache.records import step_key, sync_gc_root
from ..errors import BuildError
from .executor import Executor, StageState
from ..runtime.layers import LayerMaker, LayerRef
from .outputs import (OutputSpec, export_docker, export_oci, export_rootfs, parse_output, push_tags,
                      write_text_atomic)
from .plan import make_plan
from ..progress import Progress
from ..root import Root
from .stage import Services, StageBuilder


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
    root: str | None = None
    source_date_epoch: int | None = None
    # Attestations (issue 17, builder/attest): --sbom, --provenance, --attest as docker buildx takes them.
    sbom: str | None = None                 # true|false|generator=G,format=spdx|cyclonedx
    provenance: str | None = None           # true|false|mode=min|max; None: buildx's default
    attest: list[str] = field(default_factory=list)   # type=sbom[,...] | type=provenance[,mode=]


@dataclass(frozen=True)
class BuildStep:
    """What one step of a build did: its stage, the instruction line, whether the cache answered,
    how long it took (seconds) and the layer it made (digest and compressed size; "" and 0 when
    the step only changed the config)."""

    stage: str
    instruction: str
    cached: bool
    duration: float
    layer_digest: str = ""
    layer_size: int = 0

    def to_dict(self) -> dict:
        """The form of ``pybuild.steps`` in --metadata-file."""
        return {"stage": self.stage, "instruction": self.instruction, "cached": self.cached,
                "duration": self.duration, "layer_digest": self.layer_digest, "layer_size": self.layer_size}

    def __getitem__(self, key: str):
        """``step["cached"]``: the dict form steps had before they were typed."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


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
    index: Descriptor | None = None  # the index holding the image and its attestations (what is tagged and pushed)

    @property
    def digest(self) -> str:
        """The manifest digest (what a registry and ``NAME@DIGEST`` refer to)."""
        return self.manifest.digest


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
        self.resolved: dict[str, str] = {}      # base ref -> manifest digest (provenance materials)

    def __call__(self, ref: str, pull: bool) -> StageState:
        with self._lock:
            need = pull and ref not in self._pulled
            if not need:
                try:
                    self.store.resolve(ref)
                except NotFoundError:
                    need = True
            if need:
                self._pull(ref)
                self._pulled.add(ref)
            try:
                desc, manifest = self.store.image_manifest(ref, self.platform)
            except NotFoundError as exc:
                raise BuildError(f"base image {ref}: {exc}") from None
            cfg = self.store.get_config(manifest.config.digest).to_dict()
            self.resolved[ref] = desc.digest
        plat = cfg.get("os", "linux") + "/" + cfg.get("architecture", "")
        if cfg.get("architecture") and not platform_matches(self.platform, parse_platform(plat)):
            raise BuildError(f"base image {ref} is for {plat}, not {self.platform}: only this host's "
                             "platform can be built")
        diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(manifest.layers):
            raise BuildError(f"base image {ref}: its config lists {len(diff_ids)} layers but its manifest "
                             f"{len(manifest.layers)}; the image is corrupt (pull it again)")
        layers = [LayerRef(d, l) for d, l in zip(diff_ids, manifest.layers)]
        state = StageState("", cfgmod.from_base(cfg), layers,
                           step_key("", str(self.platform), "FROM", image=desc.digest), base_ref=ref)
        return state

    def _pull(self, ref: str) -> None:
        from registry.client import ClientOptions, RegistryClient
        from registry.progress import Progress as TransferProgress
        from registry.transfer import pull
        step = self.progress.step(f"[internal] pull {ref}")
        try:
            with RegistryClient(ClientOptions(insecure_registries=self.insecure_registries)) as client:
                pull(client, ref, self.store, platform=self.platform, progress=TransferProgress())
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


def build(opts: BuildOptions) -> BuildResult:
    """Build the image ``opts`` describes; see the module docstring."""
    from dockerfile_grammar.instructions import parse_dockerfile
    from ..context.build_context import open_context
    from ..context.hashcache import open_hash_cache

    store = open_store(opts.root)
    root = Path(store.root)
    progress = Progress(opts.progress, opts.progress_out)
    host = host_platform()
    platform = host
    if opts.platform:
        try:
            want = parse_platform(opts.platform)
        except RegistryError as exc:
            raise BuildError(f"--platform {opts.platform}: {exc}") from None
        if not platform_matches(host, want):
            raise BuildError(f"--platform {opts.platform}: only this host's platform {host} can be built "
                             "(no emulation for foreign platforms is registered)")
    compression = parse_compression(opts.compression)
    if opts.network not in ("default", "none", "host"):
        raise BuildError(f"--network {opts.network}: use default, none or host")
    from ..runtime.sandbox import check_isolation
    isolation = check_isolation(opts.isolation)
    for t in opts.tags:
        from registry.reference import parse_reference
        parse_reference(t)
    output_specs = [parse_output(o) for o in opts.outputs]
    secrets = dict(parse_secret(s) for s in opts.secrets)
    sde = _source_date_epoch(opts)
    from ..attest import options_for_build
    attest = options_for_build(opts, output_specs)

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
        plan = make_plan(df, opts.build_args, opts.target, platform)
        if plan.unused_build_args:
            progress.message(f"[warning] build-args not consumed by the build: {', '.join(plan.unused_build_args)}")

        layers = LayerMaker(store, root, compression, sde)
        executor = Executor(store, root, layers, isolation=isolation, source_date_epoch=sde)
        from ..cache.remote import finish_build, load_remotes, open_build_cache
        cache = open_build_cache(root, store, no_cache=opts.no_cache, no_cache_filter=opts.no_cache_filter,
                                 cache_from=opts.cache_from)
        load_remotes(cache, progress)
        svc = Services(plan=plan, executor=executor, layers=layers, cache=cache,
                       progress=progress, context=context, platform=platform, no_cache=opts.no_cache,
                       pull=opts.pull, network=opts.network, secrets=secrets,
                       load_image=_ImageLoader(store, platform, progress, opts.insecure_registries),
                       escape=df.escape_token)
        sb = StageBuilder(svc)
        t_start = time.monotonic()
        t_wall = time.time()
        with store.lease(), cache.in_use():
            _build_stages(sb, plan)
            final = sb.states[plan.target]
            cache.ensure_local(final.layers)     # lazy remote hits: the image needs its layers
            if opts.labels:
                cfgmod.add_labels(final.config, list(opts.labels.items()))
            manifest_desc, config_desc, config_bytes = executor.commit_image(final)
            top = manifest_desc
            if attest.any:          # attestations (issue 17): an index of the image and its attestation manifest
                from ..attest import attach_build
                top = attach_build(store, layers, final, manifest_desc, config_bytes, attest, opts,
                                   dockerfile_name=Path(filename).name, dockerfile_text=text,
                                   bases=svc.load_image.resolved, secret_ids=secrets.keys(),
                                   steps=[{"stage": s.stage, "instruction": s.instruction, "cached": s.cached,
                                           "layer": s.layer_digest} for s in svc.steps],
                                   builder_platform=str(host), started=t_wall, source_date_epoch=sde)
            sync_gc_root(store, root)
            _outputs(store, root, layers, final, top, config_desc, opts, output_specs, sde, image=manifest_desc)
            finish_build(cache, store, plan, opts.cache_to, opts.cache_report, progress, ",".join(opts.tags))
        image_id = config_desc.digest
        step = progress.step("[internal] exporting to image")
        step.done()
        progress.message(f"writing image {image_id} done" + (f", naming to {', '.join(opts.tags)}" if opts.tags else "")
                         + f" ({time.monotonic() - t_start:.1f}s)")
        steps = [BuildStep(s.stage, s.instruction, s.cached, round(s.duration, 3), s.layer_digest, s.layer_size)
                 for s in svc.steps]
        result = BuildResult(image_id, manifest_desc, config_desc.digest, json.loads(config_bytes),
                             list(opts.tags), steps, list(final.layers), top if top is not manifest_desc else None)
        if opts.iidfile:
            write_text_atomic(opts.iidfile, image_id)
        if opts.metadata_file:
            write_text_atomic(opts.metadata_file, json.dumps({
                "containerimage.digest": top.digest,
                "containerimage.config.digest": config_desc.digest,
                "containerimage.descriptor": top.to_dict(),
                "image.name": ",".join(opts.tags),
                "pybuild.steps": [st.to_dict() for st in steps],
                "pybuild.cache": cache.report(),
            }, indent=2) + "\n")
        from ..cache.fast import remember
        remember(root, opts, text.encode("utf-8", "surrogateescape"), plan, cache, store, manifest_desc.digest,
                 config_desc.digest)
        return result
    finally:
        if executor is not None:
            executor.close()
        context.close()
        progress.close()


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


def _outputs(store: Store, root: Path, layers: LayerMaker, final: StageState, manifest: Descriptor,
             config: Descriptor, opts: BuildOptions, specs: list[OutputSpec], sde: int | None,
             image: Descriptor | None = None) -> None:
    """Tag, export and push ``manifest`` (the image, or the index holding it and its
    attestations; ``image`` is then the image manifest, for outputs that hold no index)."""
    push = opts.push
    for spec in specs:
        if spec.type == "registry" or (spec.type == "image" and spec.attrs.get("push") == "true"):
            push = True
    for t in opts.tags:
        store.tag(t, manifest)
    for spec in specs:
        if spec.type == "oci":
            export_oci(store, manifest, spec.dest, opts.tags, spec.attrs.get("tar", "true") != "false")
        elif spec.type == "docker":
            export_docker(store, image or manifest, spec.dest, opts.tags)
        elif spec.type in ("tar", "local"):
            export_rootfs(root, layers, final.layers, spec.dest, spec.type == "tar", sde)
    if push:
        push_tags(store, opts.tags, opts.insecure_registries)
