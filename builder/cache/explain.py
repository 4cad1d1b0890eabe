"""``pybuild cache explain``: which steps of a build would hit the cache, and why the others miss.

It runs the real stage builder (the same key code as a build) over the Dockerfile and context
with a cache that never lets a step execute: a hit applies the cached result, a miss records
the earlier build of the same line (same stage and instruction; see ``BuildCache.nearest``) and
what differs (command, build arg or ENV, files added, removed or changed, or the parent), or
says there is none, then stands in for the step's result with a placeholder
layer so that the steps after it are looked up too (they miss with "parent changed", since
their parent's content is not known until the step runs).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import BuildCache, CacheRecord
from .keys import StepKey, describe, diff_inputs, key_document


@dataclass
class Explained:
    """One step of an explanation."""

    stage: str
    step: str
    key: str
    status: str                                  # hit | remote | miss
    reasons: list[str] = field(default_factory=list)
    nearest: dict | None = None                  # key, step, stage, created of the nearest entry

    def to_dict(self) -> dict:
        """JSON form."""
        return {"stage": self.stage, "step": self.step, "key": self.key, "cache": self.status,
                "reasons": self.reasons, "nearest": self.nearest}


class ExplainCache(BuildCache):
    """A BuildCache that answers every lookup, explaining misses instead of letting steps run."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.explained: list[Explained] = []
        self._placeholders: set[str] = set()

    def touch(self, key: str) -> None:
        """Explaining is not using: hits are not counted."""

    def put(self, record: CacheRecord, files: list | None = None) -> None:
        """Explaining writes nothing."""

    def lookup(self, key: StepKey | str, stage: str = "", step: Any = None,
               no_cache: bool = False) -> CacheRecord | None:
        """Hit, or a placeholder result for a miss (see the module docstring)."""
        rec = super().lookup(key, stage, None, no_cache)
        label = describe(key) if isinstance(key, StepKey) else str(key)
        if rec is not None:
            self.explained.append(Explained(stage, label, key, self.lookups[-1].status))
            return rec
        reasons = [self.lookups[-1].reason]
        near = None
        if isinstance(key, StepKey) and not (no_cache or self.no_cache or stage in self.no_cache_filter):
            if key.parent in self._placeholders:
                reasons = ["parent changed: an earlier step of this stage misses, so this step runs on new content"]
                near_rec = self.nearest(key, stage)[0]
                if near_rec is not None:
                    reasons += diff_inputs({**near_rec.key_doc, "parent": key.parent}, key_document(key))
            else:
                near_rec, reasons = self.explain_miss(key, stage)
            if near_rec is not None:
                near = {"key": near_rec.key, "step": near_rec.step, "stage": near_rec.stage,
                        "created": near_rec.created}
        self.explained.append(Explained(stage, label, key, "miss", reasons, near))
        # A stand-in result: a layer nobody has, so the chain moves to unknown content.
        fake = "sha256:" + hashlib.sha256(f"pybuild-explain {key}".encode()).hexdigest()
        if isinstance(key, StepKey):
            # The next step's parent: this step's parent content plus the stand-in layer.
            self._placeholders.add("sha256:" + hashlib.sha256(f"{key.parent} {fake}".encode()).hexdigest())
        return CacheRecord(key, {"diff_id": fake, "mediaType": "application/vnd.oci.image.layer.v1.tar",
                                 "digest": fake, "size": 0},
                           {"history": {"created_by": label, "created": "1970-01-01T00:00:00Z"}})


def explain(context: str, dockerfile: str | None = None, *, root: str | None = None,
            build_args: dict[str, str] | None = None, target: str | None = None,
            cache_from: list[str] | None = None) -> list[Explained]:
    """Explain the cache outcome of every step of the build ``docker build`` would do."""
    from dockerfile_grammar.instructions import parse_dockerfile
    from registry.compression import parse_compression
    from registry.platform import host_platform
    from registry.store import open_store

    from ..engine.build import BuildOptions, _build_stages, _ImageLoader, _read_dockerfile
    from .remote import RegistryCache, LocalCache, load_remotes, parse_cache_spec
    from ..context.build_context import open_context
    from ..engine.executor import Executor
    from ..context.hashcache import open_hash_cache
    from ..runtime.layers import LayerMaker
    from ..engine.plan import make_plan
    from ..progress import Progress
    from ..engine.stage import Services, StageBuilder
    from ..root import Root

    store = open_store(root)
    rootp = Path(store.root)
    progress = Progress("quiet")
    platform = host_platform()
    opts = BuildOptions(context=context, dockerfile=dockerfile, build_args=dict(build_args or {}),
                        target=target, root=root)
    tmp = Root(rootp).tmp
    tmp.mkdir(parents=True, exist_ok=True)
    ctx = open_context(context, dockerfile=dockerfile, hash_cache=open_hash_cache(rootp), tmp_dir=tmp)
    try:
        text, filename = _read_dockerfile(opts, ctx)
        df = parse_dockerfile(text, filename)
        plan = make_plan(df, opts.build_args, target, platform)
        remotes = []
        for spec in cache_from or []:
            cs = parse_cache_spec(spec, export=False)
            remotes.append(RegistryCache(cs.ref) if cs.type == "registry" else LocalCache(cs.path))
        cache = ExplainCache(rootp, store, remotes=remotes)
        load_remotes(cache)
        layers = LayerMaker(store, rootp, parse_compression("gzip"))
        executor = Executor(store, rootp, layers)
        svc = Services(plan=plan, executor=executor, layers=layers, cache=cache, progress=progress,
                       context=ctx, platform=platform, load_image=_ImageLoader(store, platform, progress),
                       escape=df.escape_token)
        _build_stages(StageBuilder(svc), plan)
        return cache.explained
    finally:
        ctx.close()


def render(explained: list[Explained]) -> str:
    """The human form: one line per step, reasons indented below misses."""
    lines = []
    hits = sum(1 for e in explained if e.status != "miss")
    for i, e in enumerate(explained, 1):
        status = {"hit": "CACHED", "remote": "CACHED (remote)", "miss": "MISS"}[e.status]
        step = e.step.removesuffix(" # buildkit")
        lines.append(f"#{i} [{e.stage}] {step}: {status} {e.key[7:19]}")
        if e.status == "miss":
            if e.nearest:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(e.nearest["created"]))
                lines.append(f"    nearest entry {e.nearest['key'][7:19]} ({e.nearest['step'].removesuffix(' # buildkit')}, "
                             f"stage {e.nearest['stage']}, {when})")
            for r in e.reasons:
                lines.append(f"    - {r}")
    lines.append(f"{hits} of {len(explained)} steps would come from the cache")
    return "\n".join(lines) + "\n"
