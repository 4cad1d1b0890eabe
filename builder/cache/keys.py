"""Cache keys of build steps: what decides a step's result, hashed, and kept for explanations.

A key is the sha256 of canonical JSON over ``[KEY_VERSION, parent, platform, instruction,
inputs]``:

* ``parent`` is the *content* the step starts from: the chain ID of its layers' diffIDs
  (:func:`content_id`), not the key of the previous step. A step that missed but produced the
  same layer again (or a changed LABEL, which adds no layer) leaves the next step's parent
  unchanged, so later steps still hit. Config fields a step can observe (environment, user,
  working directory, shell) are part of that step's own ``inputs``.
* ``instruction`` is the instruction after variable expansion (for RUN: the word ``RUN``, the
  command line is ``inputs["argv"]``).
* ``inputs`` is per instruction (see docs/cache.md): RUN's effective environment (ARG and ENV
  values it sees, never the proxy args), mounts, network, user, working directory, heredoc
  scripts; COPY/ADD's digest over every source file (path, type, mode, owner, content sha256 or
  symlink target, after .dockerignore and --exclude), destination, flags, a ``--from``
  source's content ID.

:class:`StepKey` is the key string itself (a ``str``), carrying its parent and inputs so that
cache records can store them for ``pybuild cache explain`` (plus the per-file records of a
COPY/ADD, which are not hashed again: their digest is already in the inputs).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Sequence

KEY_VERSION = "pybuild-cache-v2"
EMPTY_CONTENT = "sha256:" + hashlib.sha256(b"pybuild-empty-rootfs").hexdigest()


class StepKey(str):
    """A cache key (``sha256:<hex>``) with the parent content ID and inputs it was made from."""

    parent: str
    platform: str
    instruction: str
    inputs: dict
    files: list | None

    def __new__(cls, key: str, parent: str = "", platform: str = "", instruction: str = "",
                inputs: dict | None = None, files: list | None = None) -> "StepKey":
        self = super().__new__(cls, key)
        self.parent = parent
        self.platform = platform
        self.instruction = instruction
        self.inputs = inputs or {}
        self.files = files
        return self


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str,
                      ensure_ascii=False).encode("utf-8", "surrogateescape")


def step_key(parent: str, platform: str, instruction: str, *, files: list | None = None,
             **inputs: Any) -> StepKey:
    """The cache key of a step; ``files`` (SourceRecords of a COPY/ADD) ride along unhashed."""
    inputs = json.loads(_canonical(inputs))    # plain JSON types, as they will be stored
    digest = hashlib.sha256(_canonical([KEY_VERSION, parent, platform, instruction, inputs])).hexdigest()
    return StepKey("sha256:" + digest, parent, platform, instruction, inputs, files)


def content_id(diff_ids: Iterable[str]) -> str:
    """The chain ID of a layer stack (bottom first): what a step's parent is keyed on."""
    cur = EMPTY_CONTENT
    for d in diff_ids:
        cur = "sha256:" + hashlib.sha256(f"{cur} {d}".encode()).hexdigest()
    return cur


def layers_content_id(layers: Sequence[Any]) -> str:
    """:func:`content_id` of LayerRefs (anything with a ``diff_id``)."""
    return content_id(l.diff_id for l in layers)


def records_digest(records: Sequence[Any]) -> str:
    """The digest of COPY/ADD source records, equal to builder.context.build_context.checksum_sources."""
    h = hashlib.sha256()
    h.update("".join(r.line() for r in records).encode("utf-8", "surrogateescape"))
    return "sha256:" + h.hexdigest()


def describe(key: StepKey | dict) -> str:
    """A one-line human form of a step from its key (or a stored key document)."""
    instruction = key.instruction if isinstance(key, StepKey) else key.get("instruction", "")
    inputs = key.inputs if isinstance(key, StepKey) else key.get("inputs", {})
    if instruction == "RUN":
        argv = inputs.get("argv") or []
        return "RUN " + (argv[-1] if len(argv) >= 3 and argv[-2] == "-c" else " ".join(argv))
    return instruction.removesuffix(" # buildkit")


def key_document(key: StepKey) -> dict:
    """What a cache record stores about its key (JSON-able)."""
    return {"parent": key.parent, "platform": key.platform, "instruction": key.instruction,
            "inputs": key.inputs}


def diff_inputs(old: dict, new: dict) -> list[str]:
    """Human reasons why two key documents differ (empty when they agree on everything).

    Environment lists are compared by variable so the reason names the build arg or ENV that
    changed; other inputs are named by field.
    """
    reasons: list[str] = []
    if old.get("platform") != new.get("platform"):
        reasons.append(f"platform changed: {old.get('platform')} -> {new.get('platform')}")
    if old.get("instruction") != new.get("instruction"):
        reasons.append(f"instruction changed: {old.get('instruction')!r} -> {new.get('instruction')!r}")
    a, b = old.get("inputs", {}), new.get("inputs", {})
    for field in sorted(set(a) | set(b)):
        x, y = a.get(field), b.get(field)
        if x == y:
            continue
        if field == "env":
            reasons.extend(_env_diff(x or [], y or []))
        elif field == "argv":
            reasons.append(f"command changed: {_short(x)} -> {_short(y)}")
        elif field == "sources" and "--from=" in str(new.get("instruction", "")):
            reasons.append("the --from stage or image has other content")
        elif field == "sources":
            reasons.append("source files changed")
        else:
            reasons.append(f"{field} changed: {_short(x)} -> {_short(y)}")
    if not reasons and old.get("parent") != new.get("parent"):
        reasons.append("parent changed (the previous step's result differs)")
    return reasons


def _env_diff(old: list[str], new: list[str]) -> list[str]:
    a = dict(e.partition("=")[::2] for e in old)
    b = dict(e.partition("=")[::2] for e in new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            out.append(f"variable {k} added (={b[k]!r})")
        elif k not in b:
            out.append(f"variable {k} removed (was {a[k]!r})")
        elif a[k] != b[k]:
            out.append(f"variable {k} changed: {a[k]!r} -> {b[k]!r}")
    return out


def _short(v: Any, limit: int = 80) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."
