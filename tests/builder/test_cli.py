"""The `pybuild` dispatcher: implicit `build`, relative roots, closed pipes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pybuild


def _pybuild(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", None)
    return run_pybuild(*args, cwd=cwd, **kw)


@pytest.mark.integration
def test_implicit_build_with_a_relative_root_runs_steps(busybox_image: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("RUN needs root for runc and overlay mounts")
    work = busybox_image.parent
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo made > /made\nCMD [\"cat\", \"/made\"]\n")
    rel_root = os.path.relpath(busybox_image, work)
    r = _pybuild("--root", rel_root, "-t", "rel:1", "--progress", "plain", str(ctx), cwd=work)
    assert r.returncode == 0, r.stderr
    r = _pybuild("--root", rel_root, "run", "--rm", "rel:1", cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "made"


def test_closed_stdout_pipe_exits_quietly(tmp_path: Path) -> None:
    # One MaintainerDeprecated warning per line: far more output than a pipe buffer holds.
    (tmp_path / "Dockerfile").write_text("FROM busybox\n" + "MAINTAINER me\n" * 5000)
    p = subprocess.Popen(f"{sys.executable} -m builder lint -f Dockerfile | head -c 10",
                         shell=True, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    assert len(out) == 10
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_unknown_first_word_means_build(tmp_path: Path) -> None:
    r = _pybuild("-f", "missing.Dockerfile", str(tmp_path), cwd=tmp_path)
    assert r.returncode != 0
    assert "missing.Dockerfile" in r.stderr and "Traceback" not in r.stderr


def test_unknown_option_of_run_is_a_usage_error(tmp_path: Path) -> None:
    # `run` keeps the container's argv in args.command, the name the dispatcher's own dest has.
    r = run_pybuild("run", "--rm", "--bogus", "x", "busybox", "true", root=tmp_path / "r")
    assert r.returncode == 2 and "pybuild run: error: unrecognized arguments: --bogus" in r.stderr
    assert "Traceback" not in r.stderr
