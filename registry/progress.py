"""Transfer progress: live bars with bytes and rate on a terminal, plain lines otherwise, nothing
when quiet. Thread-safe (parallel blob transfers report into one reporter); no dependencies."""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

_UNITS = ("B", "kB", "MB", "GB", "TB")


def human_size(n: float) -> str:
    """Decimal units as Docker prints them: 1.2 MB, 340 kB."""
    i = 0
    while abs(n) >= 1000 and i < len(_UNITS) - 1:
        n /= 1000
        i += 1
    return f"{n:.0f} {_UNITS[i]}" if i == 0 else f"{n:.1f} {_UNITS[i]}"


class Task:
    """One transfer (a blob, a manifest) inside a Progress."""

    def __init__(self, owner: "Progress", label: str, total: int | None) -> None:
        self.owner = owner
        self.label = label
        self.total = total
        self.done_bytes = 0
        self.started = time.monotonic()
        self.finished: str | None = None

    def advance(self, n: int) -> None:
        """Count `n` more bytes (negative after a resume that re-sends some)."""
        with self.owner.lock:
            self.done_bytes = max(0, self.done_bytes + n)
        self.owner._changed(self)

    def finish(self, status: str = "done") -> None:
        """Mark the task finished with a short status ("downloaded", "exists", "mounted"...)."""
        with self.owner.lock:
            if self.finished is not None:
                return
            self.finished = status
        self.owner._finished(self)

    def rate(self) -> float:
        """Bytes per second so far."""
        return self.done_bytes / max(time.monotonic() - self.started, 1e-6)


class Progress:
    """A silent reporter; the base of the line and bar reporters (see `make_progress`)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def task(self, label: str, total: int | None = None) -> Task:
        """Start reporting a transfer of `total` bytes (None if unknown)."""
        return Task(self, label, total)

    def message(self, text: str) -> None:
        """A status line (resolved digests, skipped platforms): not shown when quiet."""

    def close(self) -> None:
        """Finish the display (clear live bars)."""

    def _changed(self, task: Task) -> None:
        pass

    def _finished(self, task: Task) -> None:
        pass


class LineProgress(Progress):
    """One line per finished transfer and per message: for logs and CI."""

    def message(self, text: str) -> None:
        with self.lock:
            print(text, file=self.stream, flush=True)

    def _finished(self, task: Task) -> None:
        size = human_size(task.total if task.total is not None else task.done_bytes)
        elapsed = time.monotonic() - task.started
        rate = f", {human_size(task.rate())}/s" if task.done_bytes and elapsed > 0.05 else ""
        self.message(f"{task.label}: {task.finished} ({size}{rate})")


class BarProgress(Progress):
    """Live bars redrawn in place at most ten times a second, for a terminal."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._active: list[Task] = []
        self._drawn = 0
        self._last = 0.0

    def task(self, label: str, total: int | None = None) -> Task:
        t = Task(self, label, total)
        with self.lock:
            self._active.append(t)
        self._redraw(force=True)
        return t

    def message(self, text: str) -> None:
        with self.lock:
            self._erase()
            print(text, file=self.stream)
            self._draw()

    def close(self) -> None:
        with self.lock:
            self._erase()
            self._active.clear()
            self.stream.flush()

    def _changed(self, task: Task) -> None:
        self._redraw()

    def _finished(self, task: Task) -> None:
        with self.lock:
            self._erase()
            if task in self._active:
                self._active.remove(task)
            print(self._line(task), file=self.stream)
            self._draw()

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        with self.lock:
            self._last = now
            self._erase()
            self._draw()

    def _erase(self) -> None:
        if self._drawn:
            # Up to the first bar line, then clear to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        # A wrapped line would throw off the cursor-up count: keep each bar within the width.
        width = max(20, self._columns() - 1)
        for t in self._active:
            self.stream.write(self._line(t)[:width] + "\n")
        self._drawn = len(self._active)
        self.stream.flush()

    def _columns(self) -> int:
        # The terminal the bars go to (stderr), not whatever stdout is.
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            import shutil     # only for bars on a terminal
            return shutil.get_terminal_size().columns

    def _line(self, t: Task) -> str:
        if t.finished is not None:
            return f"{t.label}: {t.finished} ({human_size(t.total if t.total is not None else t.done_bytes)})"
        if t.total:
            filled = int(self.WIDTH * min(t.done_bytes, t.total) / t.total)
            bar = "=" * filled + (">" if filled < self.WIDTH else "") + " " * (self.WIDTH - filled - 1)
            amount = f"{human_size(t.done_bytes)}/{human_size(t.total)}"
        else:
            bar = " " * self.WIDTH
            amount = human_size(t.done_bytes)
        return f"{t.label}: [{bar[:self.WIDTH]}] {amount} {human_size(t.rate())}/s"


def make_progress(quiet: bool = False, stream: TextIO | None = None) -> Progress:
    """Bars on a terminal, lines otherwise, a silent reporter when `quiet`."""
    stream = stream or sys.stderr
    if quiet:
        return Progress(stream)
    isatty = getattr(stream, "isatty", None)
    return BarProgress(stream) if isatty is not None and isatty() else LineProgress(stream)
