"""Build progress like BuildKit's: numbered steps, CACHED / DONE with durations, streamed output.

Modes: ``plain`` (``#N [stage k/n] INSTR`` then ``#N 0.123 output line`` and ``#N DONE 0.3s``),
``tty`` (the same steps, output dimmed, and a live status line at the bottom showing the running
steps with their elapsed time, redrawn a few times a second),
``quiet`` (nothing), ``rawjson`` (one JSON object per event), ``auto`` (tty on a terminal, else
plain). Thread-safe: stages built concurrently interleave whole lines.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

MODES = ("auto", "plain", "tty", "quiet", "rawjson")
TAIL_LINES = 20


@dataclass
class Step:
    """One vertex of the build as shown to the user."""

    progress: "Progress"
    number: int
    name: str
    started: float = field(default_factory=time.monotonic)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    _partial: dict = field(default_factory=dict)
    duration: float = 0.0
    finished: bool = False

    def log(self, stream: str, chunk: bytes) -> None:
        """Feed output bytes; complete lines are shown (and the last ones kept for errors)."""
        text = self._partial.pop(stream, b"") + chunk
        *lines, rest = text.split(b"\n")
        if rest:
            self._partial[stream] = rest
        for line in lines:
            self._line(stream, line.decode("utf-8", "replace"))

    def _line(self, stream: str, line: str) -> None:
        self.tail.append(line)
        self.progress._emit_log(self, stream, line)

    def _flush(self) -> None:
        for stream, rest in list(self._partial.items()):
            self._line(stream, rest.decode("utf-8", "replace"))
        self._partial.clear()

    def done(self) -> None:
        """The step finished successfully."""
        self._finish("done")

    def cached(self) -> None:
        """The step's result came from the cache."""
        self._finish("cached")

    def error(self, message: str) -> None:
        """The step failed."""
        self._finish("error", message)

    def _finish(self, status: str, message: str = "") -> None:
        if self.finished:
            return
        self._flush()
        self.finished = True
        self.duration = time.monotonic() - self.started
        self.progress._emit_end(self, status, message)

    def last_lines(self, n: int = 10) -> list[str]:
        """The last ``n`` output lines (for error messages)."""
        self._flush()
        return list(self.tail)[-n:]


class Progress:
    """Prints build progress to ``out`` (stderr by default) in one of MODES."""

    def __init__(self, mode: str = "auto", out: TextIO | None = None):
        self.out = out or sys.stderr
        if mode == "auto":
            mode = "tty" if hasattr(self.out, "isatty") and self.out.isatty() else "plain"
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self._lock = threading.Lock()
        self._count = 0
        self._t0 = time.monotonic()
        self.steps: list[Step] = []
        self._running: dict[int, Step] = {}
        self._status_shown = False
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def step(self, name: str) -> Step:
        """Start a new numbered step named ``name`` (e.g. ``[stage-1 2/4] RUN make``)."""
        with self._lock:
            self._count += 1
            st = Step(self, self._count, name)
            self.steps.append(st)
            self._running[st.number] = st
            if self.mode == "tty" and self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
                self._ticker.start()
            if self.mode == "plain":
                self._write(f"\n#{st.number} {name}\n")
            elif self.mode == "tty":
                self._write(f"\033[1m=> {name}\033[0m\n")
            elif self.mode == "rawjson":
                self._json({"event": "start", "step": st.number, "name": name})
            return st

    def message(self, text: str) -> None:
        """A line outside any step (warnings, the final result)."""
        with self._lock:
            if self.mode == "rawjson":
                self._json({"event": "message", "text": text})
            elif self.mode != "quiet":
                self._write(text + "\n")

    def _emit_log(self, st: Step, stream: str, line: str) -> None:
        with self._lock:
            if self.mode == "plain":
                self._write(f"#{st.number} {time.monotonic() - st.started:.3f} {line}\n")
            elif self.mode == "tty":
                self._write(f"\033[2m#{st.number} {line}\033[0m\n")
            elif self.mode == "rawjson":
                self._json({"event": "log", "step": st.number, "stream": stream, "line": line})

    def _emit_end(self, st: Step, status: str, message: str) -> None:
        with self._lock:
            self._running.pop(st.number, None)
            if self.mode == "plain":
                if status == "cached":
                    self._write(f"#{st.number} CACHED\n")
                elif status == "done":
                    self._write(f"#{st.number} DONE {st.duration:.1f}s\n")
                else:
                    self._write(f"#{st.number} ERROR: {message}\n")
            elif self.mode == "tty":
                if status == "cached":
                    self._write(f"=> CACHED {st.name}\n")
                elif status == "done":
                    self._write(f"=> DONE {st.duration:.1f}s {st.name}\n")
                else:
                    self._write(f"\033[31m=> ERROR {st.name}: {message}\033[0m\n")
            elif self.mode == "rawjson":
                self._json({"event": status, "step": st.number, "duration": round(st.duration, 3),
                            **({"error": message} if message else {})})

    def close(self) -> None:
        """Stop the live status line (tty mode); safe to call more than once."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self._clear_status()

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                self._clear_status()
                self._draw_status()

    def _status_text(self) -> str:
        now = time.monotonic()
        parts = [f"{st.name} {now - st.started:.1f}s" for st in self._running.values()]
        return ("=> " + " | ".join(parts))[:200] if parts else ""

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False

    def _draw_status(self) -> None:
        text = self._status_text()
        if text:
            self.out.write(f"\033[36m{text}\033[0m")
            self._status_shown = True
        self.out.flush()

    def _json(self, obj: dict) -> None:
        self._write(json.dumps(obj) + "\n")

    def _write(self, text: str) -> None:
        if self.mode == "tty":
            # Lines go above the status line: clear it, write, draw it again.
            self._clear_status()
            self.out.write(text)
            self._draw_status()
            return
        self.out.write(text)
        self.out.flush()
