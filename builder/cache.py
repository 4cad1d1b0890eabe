"""The local build cache: one record per step key -> the step's layer (if any) and resulting config.

A key is the sha256 of the parent step's key, the platform, the expanded instruction and what
else decides the result (RUN: effective environment, mounts, network, user, shell; COPY/ADD: the
checksum of the sources). Records live in ``<root>/cache/<hex>.json``, written atomically. The
blobs they name are kept alive by :func:`gc_roots`, which the store's garbage collector calls.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_VERSION = "pybuild-cache-v1"


def step_key(parent: str, platform: str, instruction: str, **extra: Any) -> str:
    """The cache key of a step (a ``sha256:`` digest string)."""
    payload = json.dumps([CACHE_VERSION, parent, platform, instruction, extra], sort_keys=True,
                         separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CacheRecord:
    """What a step produced: its layer descriptor (with ``diff_id``) or None, and the config after it."""

    key: str
    layer: dict | None
    config: dict
    created: float = 0.0


class BuildCache:
    """Reads and writes cache records under ``<root>/cache``."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "cache"

    def _path(self, key: str) -> Path:
        return self.dir / (key.split(":", 1)[-1] + ".json")

    def get(self, key: str) -> CacheRecord | None:
        """The record for ``key``, or None (also for unreadable records)."""
        try:
            d = json.loads(self._path(key).read_text())
            return CacheRecord(key=key, layer=d.get("layer"), config=d["config"],
                               created=d.get("created", 0.0))
        except (OSError, ValueError, KeyError):
            return None

    def put(self, record: CacheRecord) -> None:
        """Store ``record`` atomically (temp file + rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"layer": record.layer, "config": record.config,
                           "created": record.created or time.time()}).encode()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(record.key))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def records(self) -> list[CacheRecord]:
        """All readable records."""
        out = []
        if not self.dir.is_dir():
            return out
        for p in self.dir.glob("*.json"):
            rec = self.get("sha256:" + p.stem)
            if rec is not None:
                out.append(rec)
        return out

    def clear(self) -> int:
        """Remove every record; returns how many were removed."""
        n = 0
        if self.dir.is_dir():
            for p in self.dir.glob("*.json"):
                p.unlink(missing_ok=True)
                n += 1
        return n


def gc_roots(root: Path) -> set[str]:
    """Blob digests the cache still needs (layers of cached steps): extra roots for store gc."""
    digests: set[str] = set()
    for rec in BuildCache(root).records():
        if rec.layer and rec.layer.get("digest"):
            digests.add(rec.layer["digest"])
    return digests
