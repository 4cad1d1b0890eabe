"""Build progress output: plain lines like BuildKit's, the tty status line, rawjson events."""
from __future__ import annotations

import io
import json
import re
import time

from builder.progress import Progress


def test_plain_numbered_steps_output_and_status():
    out = io.StringIO()
    p = Progress("plain", out)
    a = p.step("[build 2/3] RUN make")
    a.log("stdout", b"compiling\npartial")
    a.log("stderr", b"warning: x\n")
    a.done()
    b = p.step("[build 3/3] COPY . /src")
    b.cached()
    c = p.step("[2/2] RUN false")
    c.error("exit code 1")
    text = out.getvalue()
    assert "#1 [build 2/3] RUN make\n" in text
    lines = text.splitlines()
    assert any(l.startswith("#1 ") and l.endswith(" compiling") for l in lines)
    assert any(l.startswith("#1 ") and l.endswith(" partial") for l in lines)   # flushed at the end
    assert any(l.startswith("#1 DONE ") for l in lines)
    assert "#2 CACHED" in lines and "#3 ERROR: exit code 1" in lines
    assert a.last_lines(2) == ["warning: x", "partial"]


def test_tty_status_line_is_drawn_and_cleared():
    out = io.StringIO()
    p = Progress("tty", out)
    s = p.step("[1/1] RUN sleep")
    time.sleep(0.5)
    s.log("stdout", b"tick\n")
    s.done()
    p.close()
    text = out.getvalue()
    assert "[1/1] RUN sleep 0." in text            # the live timer was shown
    assert "\r\033[K" in text                       # and cleared before other output
    assert re.search(r"=> DONE \d+\.\ds \[1/1\] RUN sleep$", text.rstrip("\n").split("\n")[-1])
    assert "\033[2m#1 tick\033[0m\n" in text         # output lines above the status line, dimmed


def test_rawjson_events():
    out = io.StringIO()
    p = Progress("rawjson", out)
    s = p.step("[1/1] RUN echo")
    s.log("stdout", b"hello\n")
    s.done()
    events = [json.loads(l) for l in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "log", "done"]
    assert events[1]["line"] == "hello" and events[1]["stream"] == "stdout"
