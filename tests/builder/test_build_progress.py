"""Build progress output: plain lines like BuildKit's, the tty display (checked on a screen
model), BuildKit's SolveStatus JSON, and cache notes kept out of a step's output."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import time

import pytest

from builder.progress import Progress
from tests.fixtures.cli import pybuild_argv, run_on_pty


class Screen:
    """A tiny VT100 model: enough of a terminal to see what a redrawn display leaves.

    Printable text overwrites at the cursor (no auto-wrap: a line wider than the terminal stays
    visible as such); \\r, \\n, \\b; CSI n A (up, stopped at the top of the visible rows),
    K (erase to end of line), J (erase to end of screen), m (colours, recorded).
    """

    def __init__(self, cols: int = 80, rows: int = 24):
        self.cols, self.rows = cols, rows
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        self.sgr: list[str] = []

    def feed(self, text: str) -> "Screen":
        i = 0
        while i < len(text):
            c = text[i]
            if c == "\x1b":
                m = re.match(r"\x1b\[([0-9;?]*)([@-~])", text[i:])
                if m:
                    self._csi(m.group(1), m.group(2))
                    i += m.end()
                else:
                    i += 2
                continue
            if c == "\r":
                self.col = 0
            elif c == "\n":
                self.row += 1
                self.col = 0
                if self.row == len(self.lines):
                    self.lines.append([])
            elif c == "\b":
                self.col = max(0, self.col - 1)
            elif c >= " ":
                line = self.lines[self.row]
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = c
                self.col += 1
            i += 1
        return self

    def _csi(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else None
        line = self.lines[self.row]
        if final == "A":
            top = max(0, len(self.lines) - self.rows)
            self.row = max(top, self.row - (n or 1))
        elif final == "K":
            del line[self.col:]
        elif final == "J":
            del line[self.col:]
            del self.lines[self.row + 1:]
        elif final == "m":
            self.sgr.append(params)

    def text(self) -> list[str]:
        """Every row, scrollback included, trailing blanks removed."""
        return ["".join(l).rstrip() for l in self.lines]


# -- units -------------------------------------------------------------------------------------
def test_plain_numbered_steps_output_and_status():
    out = io.StringIO()
    p = Progress("plain", out)
    a = p.step("[build 2/3] RUN make")
    a.note("cache miss: no earlier build of this step")
    a.log("stdout", b"compiling\npartial")
    a.log("stderr", b"warning: x\n")
    a.done()
    b = p.step("[build 3/3] COPY . /src")
    b.cached()
    c = p.step("[stage-1 2/2] RUN false")
    c.error("exit code 1")
    text = out.getvalue()
    assert "#1 [build 2/3] RUN make\n" in text
    lines = text.splitlines()
    assert "#1 cache miss: no earlier build of this step" in lines
    assert any(l.startswith("#1 ") and l.endswith(" compiling") for l in lines)
    assert any(l.startswith("#1 ") and l.endswith(" partial") for l in lines)   # flushed at the end
    assert any(l.startswith("#1 DONE ") for l in lines)
    assert "#2 CACHED" in lines and "#3 ERROR: exit code 1" in lines
    assert a.last_lines(2) == ["warning: x", "partial"]
    assert a.last_lines(10) == ["compiling", "warning: x", "partial"]     # the note is no output


def _tty(monkeypatch, color: bool = True) -> tuple[io.StringIO, Progress]:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    if color:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    return out, Progress("tty", out)


def test_tty_display_is_width_aware_and_redrawn_in_place(monkeypatch):
    out, p = _tty(monkeypatch)
    long_name = "[stage-1 2/3] RUN " + "echo " + "y" * 140
    a = p.step("[stage-1 1/3] FROM busybox")
    a.done()
    s = p.step(long_name)
    s.log("stdout", b"\x1b[32mgreen\x1b[0m and a " + b"z" * 200 + b"\nstep two\tcolumn\rover\n")
    time.sleep(0.45)                            # a few redraws with the step running
    live = Screen().feed(out.getvalue()).text()
    assert any(l.startswith("=> => # ") and "green and a zzz" in l for l in live)   # live output
    assert any(l.startswith("=> => # over") for l in live)                           # after \r
    s.done()
    p.message("writing image sha256:abc done")
    p.close()
    raw = out.getvalue()
    screen = Screen().feed(raw).text()
    assert all(len(l) <= 80 for l in screen), [l for l in screen if len(l) > 80]
    header = [l for l in screen if l.startswith("[+] Building")]
    assert len(header) == 1 and re.fullmatch(r"\[\+\] Building \d+\.\ds \(2/2\) FINISHED", header[0])
    mine = [l for l in screen if "[stage-1 2/3] RUN echo yyy" in l]
    assert len(mine) == 1, screen                          # one status line, not one per redraw
    assert re.search(r"(…|\.\.\.) +\d+\.\ds$", mine[0])                 # cut with an ellipsis, time kept
    assert not [l for l in screen if l.startswith("=> => #")]    # finished: output folded
    assert [l for l in screen if l][-1] == "writing image sha256:abc done"        # messages after the display
    assert "\x1b[34m" in raw                                     # running steps in blue
    assert raw.count("[+] Building") >= 3                        # it was redrawn, in place


def test_tty_failed_step_keeps_its_output_and_no_color(monkeypatch):
    out, p = _tty(monkeypatch, color=False)
    s = p.step("[2/2] RUN false")
    s.note("cache miss: no earlier build of this step")
    s.log("stderr", b"it broke\n")
    s.error("exit code 1")
    p.close()
    p.close()                                    # idempotent
    raw = out.getvalue()
    assert not re.search(r"\x1b\[[0-9;]*m", raw)     # NO_COLOR: no colour codes at all
    screen = Screen().feed(raw).text()
    assert re.fullmatch(r"=> ERROR \[2/2\] RUN false +\d+\.\ds", screen[1])
    assert screen[2] == "=> => # it broke"
    assert "cache miss" not in raw                   # notes are not output


def test_tty_narrow_terminal_keeps_times(monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    out = io.StringIO()
    p = Progress("tty", out)
    p.step("[stage-3 12/12] RUN " + "a" * 50).done()
    p.close()
    screen = Screen(cols=20).feed(out.getvalue()).text()
    assert all(len(l) <= 20 for l in screen)
    assert re.search(r"\d\.\ds$", screen[1])


def test_rawjson_is_buildkit_solve_status():
    out = io.StringIO()
    p = Progress("rawjson", out)
    s = p.step("[1/2] RUN echo")
    s.note("cache miss: no earlier build of this step")
    s.log("stdout", b"hel")
    s.log("stdout", b"lo\n")
    s.log("stderr", b"err\n")
    s.done()
    c = p.step("[2/2] COPY a b")
    c.cached()
    f = p.step("[3/3] RUN false")
    f.error("exit code 1")
    p.message("[warning] something odd")
    objs = [json.loads(l) for l in out.getvalue().splitlines()]
    assert all(set(o) <= {"vertexes", "statuses", "logs", "warnings"} and o for o in objs)
    vertexes = [v for o in objs for v in o.get("vertexes", [])]
    first = [v for v in vertexes if v["name"] == "[1/2] RUN echo"]
    assert len(first) == 2 and "completed" not in first[0] and "completed" in first[1]
    assert first[0]["digest"] == first[1]["digest"] and first[0]["digest"].startswith("sha256:")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", first[1]["completed"])
    assert any(v.get("cached") is True for v in vertexes if v["name"] == "[2/2] COPY a b")
    assert any(v.get("error") == "exit code 1" for v in vertexes if v["name"] == "[3/3] RUN false")
    logs = [l for o in objs for l in o.get("logs", [])]
    assert all(l["vertex"] == s.digest for l in logs)
    assert b"".join(base64.b64decode(l["data"]) for l in logs if l["stream"] == 1) == b"hello\n"
    assert [base64.b64decode(l["data"]) for l in logs if l["stream"] == 2] == [b"err\n"]
    statuses = [x for o in objs for x in o.get("statuses", [])]
    assert statuses[0]["id"].startswith("cache miss") and statuses[0]["vertex"] == s.digest
    warnings = [w for o in objs for w in o.get("warnings", [])]
    assert base64.b64decode(warnings[0]["short"]) == b"something odd"


def test_quiet_prints_nothing():
    out = io.StringIO()
    p = Progress("quiet", out)
    s = p.step("[1/1] RUN x")
    s.note("cache miss: x")
    s.log("stdout", b"y\n")
    s.done()
    p.message("z")
    p.close()
    assert out.getvalue() == ""


# -- real builds -------------------------------------------------------------------------------
LONG_RUN = "RUN echo start-" + "x" * 88 + " && sleep 1 && echo end-of-the-step-output-line"
assert len(LONG_RUN) == 150
DOCKERFILE = ("FROM busybox AS build\nRUN echo built > /b\n"
              "FROM busybox\nCOPY --from=build /b /b\n" + LONG_RUN + "\n")


def _build_on_pty(root, ctx, *, env: dict[str, str] | None = None, cols: int = 80, rows: int = 24) -> str:
    """Run `pybuild build` with a terminal of ``cols`` x ``rows`` as its stdio; its output."""
    full_env = {**os.environ, "TERM": "xterm", **(env or {})}
    full_env.pop("COLUMNS", None)
    full_env.pop("LINES", None)
    rc, out = run_on_pty(pybuild_argv("build", "--no-cache", "-t", "progress:tty", ctx, root=root), env=full_env,
                         rows=rows, cols=cols, timeout=120)
    assert rc == 0, out.decode(errors="replace")
    return out.decode("utf-8", "replace")


def test_tty_build_at_80_columns(busybox_image, tmp_path):
    from tests.fixtures.building import write_context
    ctx = write_context(tmp_path / "ctx", DOCKERFILE)
    raw = _build_on_pty(busybox_image, ctx)
    screen = Screen(80, 24).feed(raw).text()
    display = [l for l in screen if not l.startswith("writing image")]
    assert all(len(l) <= 80 for l in display), [l for l in display if len(l) > 80]
    header = [l for l in screen if l.startswith("[+] Building")]
    assert len(header) == 1 and header[0].endswith("FINISHED"), screen
    runs = [l for l in screen if "[stage-1 3/3] RUN echo start-xxx" in l]
    assert len(runs) == 1, screen                                # no repeated status lines
    assert re.search(r"… +\d+\.\ds$", runs[0])                    # cut, time kept
    assert any(re.match(r"=> \[build 2/2\] RUN echo built > /b +\d+\.\ds$", l) for l in screen), screen
    assert any(l.startswith("=> [stage-1 2/3] COPY --from=build /b /b") for l in screen), screen
    assert not [l for l in screen if l.startswith("=> => #")]    # finished steps folded
    assert "=> => # start-xxx" in raw                            # ...after showing the live output
    assert "\x1b[34m" in raw


def test_tty_build_no_color(busybox_image, tmp_path):
    from tests.fixtures.building import write_context
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo plain-colourless\n")
    raw = _build_on_pty(busybox_image, ctx, env={"NO_COLOR": "1"})
    assert not re.search(r"\x1b\[[0-9;]*m", raw)
    screen = Screen(80, 24).feed(raw).text()
    assert any(re.match(r"=> \[2/2\] RUN echo plain-colourless +\d+\.\ds$", l) for l in screen), screen


def test_plain_and_rawjson_builds(busybox_image, tmp_path):
    from tests.fixtures.building import build_in
    df = "FROM busybox AS one\nRUN echo line-one && echo line-two >&2\nFROM one\nCMD [\"sh\"]\n"
    out = io.StringIO()
    build_in(busybox_image, tmp_path / "ctx", df, progress="plain", progress_out=out)
    text = out.getvalue()
    assert "[one 2/2] RUN echo line-one && echo line-two >&2" in text
    assert "[stage-1 2/2] CMD [\"sh\"]" in text
    out = io.StringIO()
    build_in(busybox_image, tmp_path / "ctx2", df.replace("line-one", "line-1"), progress="rawjson",
             progress_out=out)
    objs = [json.loads(l) for l in out.getvalue().splitlines()]
    vertexes = {v["digest"]: v for o in objs for v in o.get("vertexes", [])}
    run = next(d for d, v in vertexes.items() if "RUN echo line-1" in v["name"])
    logs = [l for o in objs for l in o.get("logs", []) if l["vertex"] == run]
    assert b"".join(base64.b64decode(l["data"]) for l in logs if l["stream"] == 1) == b"line-1\n"
    assert b"".join(base64.b64decode(l["data"]) for l in logs if l["stream"] == 2) == b"line-two\n"
    assert vertexes[run]["completed"] and not vertexes[run].get("error")


def test_miss_reasons_concise_and_out_of_the_output(busybox_image, tmp_path):
    from builder.engine.build import BuildError
    from tests.fixtures.building import build_in
    root = busybox_image
    build_in(root, tmp_path / "ctx", "FROM busybox\nCOPY f /ctx\nRUN echo a\n", {"f": "f\n"})
    # A new RUN where a COPY used to follow the same parent: not a diff against the COPY.
    out = io.StringIO()
    build_in(root, tmp_path / "ctx", "FROM busybox\nRUN echo new-step\nCOPY f /ctx\n", {"f": "f\n"},
             progress_out=out)
    lines = out.getvalue().splitlines()
    n = next(l.split()[0] for l in lines if l.endswith("RUN echo new-step"))
    assert f"{n} cache miss: no earlier build of this step" in lines
    assert not [l for l in lines if "instruction changed" in l or "excludes changed" in l]
    # A failing new step: its error ends with its own output, not with the miss reason.
    out = io.StringIO()
    with pytest.raises(BuildError) as err:
        build_in(root, tmp_path / "ctx", "FROM busybox\nRUN echo out1 && exit 3\n", progress_out=out)
    assert "cache miss" not in str(err.value)
    assert str(err.value).endswith("last output lines:\n  out1")


def test_noop_rebuild_names_steps_as_the_build_did(busybox_image, tmp_path, capsys):
    from builder.cli import main
    from tests.fixtures.building import write_context
    ctx = write_context(tmp_path / "ctx", "FROM busybox AS base\nRUN echo base > /b\nFROM base\nRUN echo top > /t\n")
    argv = ["--root", str(busybox_image), "build", "--progress", "plain", "-t", "names:1", str(ctx)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "no-op rebuild" in err                   # the fast path answered
    assert "[base 2/2] RUN echo base > /b" in err and "[stage-1 2/2] RUN echo top > /t" in err
