"""Build progress like BuildKit's: numbered steps, CACHED / DONE with durations, streamed output.

Modes:

- ``plain``: ``#N [stage k/n] INSTR``, then ``#N 0.123 output line``, ``#N DONE 0.3s`` /
  ``#N CACHED`` / ``#N ERROR: ...``; cache notes (miss reasons) as ``#N cache miss: ...``.
- ``tty``: one live region redrawn in place: the header ``[+] Building 8.1s (12/12)``, one line
  per step with its time at the right edge, the last output lines of running steps. Finished
  steps fold to their line; a failed one keeps its output. Every line is cut to the terminal
  width (asked of the output's fd, again on SIGWINCH), so redrawing never leaves copies behind.
  Colour unless ``NO_COLOR`` is set. Messages (warnings, the result) follow the final display.
- ``rawjson``: BuildKit's SolveStatus, one JSON object per line (``vertexes``, ``statuses``,
  ``logs`` with base64 data, ``warnings``), keys left out when empty as BuildKit's encoder does.
- ``quiet``: nothing; ``auto``: tty on a terminal, else plain.

Thread-safe: stages built concurrently interleave whole lines. Only tty mode starts a thread.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

MODES = ("auto", "plain", "tty", "quiet", "rawjson")
TAIL_LINES = 20          # kept per step for error messages and a failed step's display
LIVE_LINES = 6           # output lines shown under a running step (tty)
TICK = 0.1               # seconds between redraws of the live region

# Escape sequences a RUN may print (colours, cursor moves, titles): dropped from tty lines,
# which must stay exactly as wide as we count them.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


@dataclass
class Step:
    """One vertex of the build as shown to the user."""

    progress: "Progress"
    number: int
    name: str
    started: float = field(default_factory=time.monotonic)
    wall_started: float = field(default_factory=time.time)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    _partial: dict = field(default_factory=dict)
    duration: float = 0.0
    finished: bool = False
    status: str = "running"          # running | done | cached | error
    message: str = ""                # the error, for a failed step
    notes: list[str] = field(default_factory=list)
    _digest: str = ""

    @property
    def digest(self) -> str:
        """A vertex digest stable across runs of the same build (position and name)."""
        if not self._digest:
            import hashlib
            self._digest = "sha256:" + hashlib.sha256(f"pybuild-step {self.number} {self.name}".encode()).hexdigest()
        return self._digest

    def log(self, stream: str, chunk: bytes) -> None:
        """Feed output bytes; complete lines are shown (and the last ones kept for errors)."""
        self.progress._emit_chunk(self, stream, chunk)
        text = self._partial.pop(stream, b"") + chunk
        *lines, rest = text.split(b"\n")
        if rest:
            self._partial[stream] = rest
        for line in lines:
            self._line(stream, line.decode("utf-8", "replace"))

    def note(self, text: str) -> None:
        """A remark about the step that is not its output (a cache miss reason): shown apart,
        never in :meth:`last_lines`."""
        self.notes.append(text)
        self.progress._emit_note(self, text)

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
        self.duration = time.monotonic() - self.started
        self.message = message
        self.status = status
        self.finished = True
        self.progress._emit_end(self, status, message)

    def last_lines(self, n: int = 10) -> list[str]:
        """The last ``n`` output lines (for error messages)."""
        self._flush()
        return list(self.tail)[-n:]


def _is_terminal(out: Any) -> bool:
    try:
        return bool(out.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _timestamp(t: float) -> str:
    """RFC 3339 with fractional seconds, trailing zeros trimmed (Go's RFC3339Nano, in UTC)."""
    whole = int(t)
    frac = f"{t - whole:.9f}"[2:].rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + (f".{frac}" if frac else "") + "Z"


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode("ascii")


def _clean(line: str) -> str:
    """What a terminal would show of one output line, on one row: the text after the last
    carriage return, without escape sequences or control characters, tabs expanded."""
    line = line.rstrip("\r")
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    if "\x1b" in line:
        line = _ESCAPES.sub("", line)
    return _CONTROLS.sub("", line.expandtabs(8))


def _width(text: str) -> int:
    if text.isascii():
        return len(text)
    import unicodedata
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def _cut(text: str, width: int, ellipsis: str) -> str:
    """``text`` cut to ``width`` columns, ending in ``ellipsis`` when something was cut."""
    if _width(text) <= width:
        return text
    room = max(0, width - len(ellipsis))
    if text.isascii():
        return text[:room] + ellipsis[:width]
    out, used = [], 0
    for c in text:
        w = _width(c)
        if used + w > room:
            break
        out.append(c)
        used += w
    return "".join(out) + ellipsis[:width]


class Progress:
    """Prints build progress to ``out`` (stderr by default) in one of MODES."""

    def __init__(self, mode: str = "auto", out: TextIO | None = None):
        self.out = out or sys.stderr
        if mode == "auto":
            mode = "tty" if _is_terminal(self.out) else "plain"
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self._lock = threading.Lock()
        self._count = 0
        self._t0 = time.monotonic()
        self.steps: list[Step] = []
        self._closed = False
        # tty state
        self._color = mode == "tty" and not os.environ.get("NO_COLOR")
        self._deferred: list[str] = []
        self._drawn = 0
        self._size = (80, 24)
        self._resized = True
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._old_winch: Any = None
        self._ellipsis = "..."
        if mode == "tty":
            enc = (getattr(self.out, "encoding", "") or "").lower().replace("-", "")
            self._ellipsis = "…" if enc == "utf8" else "..."
            self._watch_size()

    # -- the steps' side ---------------------------------------------------------------------
    def step(self, name: str) -> Step:
        """Start a new numbered step named ``name`` (e.g. ``[stage-1 2/4] RUN make``)."""
        with self._lock:
            self._count += 1
            st = Step(self, self._count, name)
            self.steps.append(st)
            if self.mode == "plain":
                self._write(f"\n#{st.number} {name}\n")
            elif self.mode == "tty" and self._ticker is None and not self._closed:
                self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
                self._ticker.start()
            elif self.mode == "rawjson":
                self._solve(vertexes=[self._vertex(st)])
            return st

    def message(self, text: str) -> None:
        """A line outside any step (warnings, the final result)."""
        with self._lock:
            if self.mode == "rawjson":
                if text.startswith("[warning]"):
                    short = text.removeprefix("[warning]").strip().encode()
                    self._solve(warnings=[{"level": 1, "short": _b64(short)}])
                else:
                    self._solve(statuses=[self._status(self.steps[-1] if self.steps else None, text)])
            elif self.mode == "tty" and not self._closed:
                # After the display, as BuildKit prints warnings: lines between redraws would
                # be overwritten or push the region apart.
                self._deferred.append(text)
            elif self.mode != "quiet":
                self._write(text + "\n")

    def _emit_chunk(self, st: Step, stream: str, chunk: bytes) -> None:
        if self.mode == "rawjson" and chunk:
            # The bytes as they came, not re-split lines: a consumer decodes the exact output.
            with self._lock:
                self._solve(logs=[{"vertex": st.digest, "stream": 2 if stream == "stderr" else 1,
                                   "data": _b64(chunk), "timestamp": _timestamp(time.time())}])

    def _emit_log(self, st: Step, stream: str, line: str) -> None:
        if self.mode == "plain":
            with self._lock:
                self._write(f"#{st.number} {time.monotonic() - st.started:.3f} {line}\n")

    def _emit_note(self, st: Step, text: str) -> None:
        with self._lock:
            if self.mode == "plain":
                self._write(f"#{st.number} {text}\n")
            elif self.mode == "rawjson":
                self._solve(statuses=[self._status(st, text)])

    def _emit_end(self, st: Step, status: str, message: str) -> None:
        with self._lock:
            if self.mode == "plain":
                if status == "cached":
                    self._write(f"#{st.number} CACHED\n")
                elif status == "done":
                    self._write(f"#{st.number} DONE {st.duration:.1f}s\n")
                else:
                    self._write(f"#{st.number} ERROR: {message}\n")
            elif self.mode == "rawjson":
                self._solve(vertexes=[self._vertex(st)])

    def close(self) -> None:
        """Finish the display (tty: the final frame, then the messages); safe to call again."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.mode == "tty":
                if self.steps or self._drawn:
                    self._render(final=True)
                for text in self._deferred:
                    self.out.write(text + "\n")
                self._deferred.clear()
                self.out.flush()
                self._unwatch_size()

    # -- rawjson -----------------------------------------------------------------------------
    def _vertex(self, st: Step) -> dict:
        v: dict[str, Any] = {"digest": st.digest, "name": st.name, "started": _timestamp(st.wall_started)}
        if st.finished:
            v["completed"] = _timestamp(st.wall_started + st.duration)
            if st.status == "cached":
                v["cached"] = True
            if st.status == "error":
                v["error"] = st.message or "failed"
        return v

    def _status(self, st: Step | None, text: str) -> dict:
        now = _timestamp(time.time())
        s: dict[str, Any] = {"id": text}
        if st is not None:
            s["vertex"] = st.digest
        s.update({"current": 0, "timestamp": now, "started": now, "completed": now})
        return s

    def _solve(self, **parts: list) -> None:
        obj = {k: parts[k] for k in ("vertexes", "statuses", "logs", "warnings") if parts.get(k)}
        self._write(json.dumps(obj, separators=(",", ":")) + "\n")

    # -- tty ---------------------------------------------------------------------------------
    def _watch_size(self) -> None:
        # Signal handlers can only be set from the main thread; elsewhere the size is asked
        # once (a library caller building from a worker thread rarely resizes mid-build).
        try:
            import signal
            if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGWINCH"):
                self._old_winch = signal.signal(signal.SIGWINCH, self._on_winch)
        except (ValueError, OSError):
            self._old_winch = None

    def _unwatch_size(self) -> None:
        if self._old_winch is None:
            return
        import signal
        try:
            if signal.getsignal(signal.SIGWINCH) == self._on_winch:
                signal.signal(signal.SIGWINCH, self._old_winch)
        except (ValueError, OSError):
            pass
        self._old_winch = None

    def _on_winch(self, signum: int, frame: Any) -> None:
        self._resized = True
        if callable(self._old_winch):
            self._old_winch(signum, frame)

    def _query_size(self) -> None:
        self._resized = False
        try:
            cols, rows = os.get_terminal_size(self.out.fileno())
        except (AttributeError, OSError, ValueError):
            # Not a real terminal (a test's buffer): the environment's idea, else 80x24.
            try:
                cols, rows = int(os.environ.get("COLUMNS", 80)), int(os.environ.get("LINES", 24))
            except ValueError:
                cols, rows = 80, 24
        self._size = (cols if cols > 0 else 80, rows if rows > 0 else 24)

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                if not self._closed:
                    self._render()

    def _paint(self, text: str, sgr: str) -> str:
        return f"\x1b[{sgr}m{text}\x1b[0m" if self._color and sgr else text

    def _step_line(self, st: Step, now: float, width: int) -> str:
        prefix = "=> " + ("CACHED " if st.status == "cached" else "ERROR " if st.status == "error" else "")
        secs = st.duration if st.finished else now - st.started
        clock = f"{secs:.1f}s"
        name = _SPACES.sub(" ", _clean(st.name)).strip()
        room = width - len(prefix) - len(clock) - 1
        if room < 4:
            # A very narrow terminal: the time still shows, the name gives way first.
            return _cut(f"{prefix}{clock}", width, "")
        name = _cut(name, room, self._ellipsis)
        line = prefix + name + " " * (width - len(prefix) - _width(name) - len(clock)) + clock
        sgr = {"running": "34", "error": "31"}.get(st.status, "")
        return self._paint(line, sgr)

    def _frame(self, final: bool) -> list[str]:
        cols, rows = self._size
        width = max(1, cols - 1)          # not the last column: no pending wrap at the edge
        now = time.monotonic()
        done = sum(1 for s in self.steps if s.finished)
        header = f"[+] Building {now - self._t0:.1f}s ({done}/{len(self.steps)})" + (" FINISHED" if final else "")
        lines = [self._paint(_cut(header, width, self._ellipsis), "34" if not final else "")]
        for st in self.steps:
            lines.append(self._step_line(st, now, width))
            if st.status == "error" or (st.status == "running" and not final):
                keep = TAIL_LINES if st.status == "error" else LIVE_LINES
                for out in list(st.tail)[-keep:]:
                    text = _cut("=> => # " + _clean(out), width, self._ellipsis)
                    lines.append(self._paint(text, "31" if st.status == "error" else "2"))
        if not final and len(lines) > rows - 1:
            # Only what fits can be redrawn (cursor-up stops at the top row): the header and
            # the newest lines. The final frame prints everything once.
            lines = [lines[0]] + lines[len(lines) - (rows - 2):] if rows > 2 else lines[:1]
        return lines

    def _render(self, final: bool = False) -> None:
        if self._resized:
            self._query_size()
        lines = self._frame(final)
        buf = [f"\r\x1b[{self._drawn}A" if self._drawn else "\r"]
        buf += [line + "\x1b[K\n" for line in lines]
        buf.append("\x1b[J")                 # a frame shorter than the last one: clear the rest
        self.out.write("".join(buf))
        self.out.flush()
        self._drawn = 0 if final else len(lines)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
