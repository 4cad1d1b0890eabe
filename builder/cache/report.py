"""``--cache-report FILE.md``: a Markdown summary of a build's cache use, fit for a CI job summary.

It gives the hit rate, what was downloaded from remote caches, and a table of every step that
was looked up with its status and, for misses, the reason (the nearest earlier entry and what
differs). The file is appended to when it exists (``$GITHUB_STEP_SUMMARY`` collects several
steps' summaries), written in one call otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STATUS = {"hit": "CACHED", "remote": "CACHED (remote)", "miss": "built"}


def _cell(text: str, limit: int = 120) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render_report(cache: Any, image: str = "") -> str:
    """The Markdown text for the lookups of ``cache`` (a BuildCache after a build)."""
    looks = cache.lookups
    hits = sum(1 for l in looks if l.status != "miss")
    remote = sum(1 for l in looks if l.status == "remote")
    lines = [f"### pybuild cache{': ' + image if image else ''}", ""]
    rate = f"{100 * hits / len(looks):.0f}%" if looks else "n/a"
    lines.append(f"**{hits}/{len(looks)} steps cached** ({rate})"
                 + (f", {remote} from remote caches" if remote else "")
                 + (f"; {len(cache.fetched)} layer(s) downloaded" if cache.fetched else ""))
    sources = [s.name for s in cache.remotes]
    if sources:
        lines.append("")
        lines.append("Cache sources: " + ", ".join(f"`{s}`" for s in sources))
    lines += ["", "| stage | step | cache | reason |", "|---|---|---|---|"]
    for l in looks:
        lines.append(f"| {_cell(l.stage)} | `{_cell(l.step, 80)}` | {STATUS.get(l.status, l.status)} | "
                     f"{_cell(l.reason) if l.reason else ''} |")
    return "\n".join(lines) + "\n"


def write_report(path: str, cache: Any, image: str = "") -> None:
    """Append the report to ``path`` (created if missing)."""
    text = render_report(cache, image)
    p = Path(path)
    if p.parent != Path(""):
        p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        prefix = "\n" if os.fstat(fd).st_size else ""
        os.write(fd, (prefix + text).encode())
    finally:
        os.close(fd)
