"""The transfer progress reporter: bars on a terminal, lines otherwise, silence when quiet."""
from __future__ import annotations

import io
import threading

from registry.progress import BarProgress, LineProgress, Progress, human_size, make_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_human_size():
    assert human_size(999) == "999 B"
    assert human_size(1500) == "1.5 kB"
    assert human_size(52_400_000) == "52.4 MB"


def test_choice_of_reporter():
    assert type(make_progress(quiet=True, stream=_Terminal())) is Progress
    assert isinstance(make_progress(stream=_Terminal()), BarProgress)
    assert isinstance(make_progress(stream=io.StringIO()), LineProgress)


def test_lines_when_not_a_terminal():
    out = io.StringIO()
    p = make_progress(stream=out)
    t = p.task("abc123", 2_000_000)
    t.advance(1_000_000)
    assert out.getvalue() == ""             # no partial updates in logs
    t.advance(1_000_000)
    t.finish("downloaded")
    t.finish("downloaded")                  # idempotent
    p.message("done")
    assert out.getvalue().splitlines()[0].startswith("abc123: downloaded (2.0 MB")
    assert out.getvalue().splitlines()[1] == "done"


def test_bars_redraw_in_place_and_leave_finished_lines():
    out = _Terminal()
    p = make_progress(stream=out)
    tasks = [p.task(f"layer{i}", 1000) for i in range(3)]
    threads = [threading.Thread(target=lambda t=t: [t.advance(100) for _ in range(10)]) for t in tasks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in tasks:
        t.finish("downloaded")
    p.close()
    text = out.getvalue()
    assert "\x1b[" in text                  # cursor movement: bars are redrawn in place
    assert "[" in text and "/s" in text     # bar with rate
    # Each finished task is printed once, as a permanent line.
    for i in range(3):
        assert text.count(f"layer{i}: downloaded (1.0 kB)") == 1
    assert text.endswith("\n")


def test_quiet_prints_nothing():
    out = _Terminal()
    p = make_progress(quiet=True, stream=out)
    t = p.task("x", 10)
    t.advance(10)
    t.finish()
    p.message("hello")
    p.close()
    assert out.getvalue() == ""
