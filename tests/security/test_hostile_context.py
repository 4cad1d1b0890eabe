"""Hostile build contexts: every case ends with a clear error or a correct build, never a hang.

Each case is a real `pybuild build` (FROM scratch, so no RUN sandbox is needed) whose result is
exported with `--output type=local`; pytest-timeout marks turn a hang into a failure.

"Unreadable files": the tests run as root, for whom permission bits do not stop a read, and
FUSE is not available, so unreadability is produced the ways root meets it too: a dangling
symlink named as a source, a file that is deleted after the context was opened (the copy then
cannot open it), a FIFO (opening it would block forever) and a socket (cannot be opened).
"""
from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path
from typing import Callable

import pytest

from builder.storecheck import check_root

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds mount overlayfs: needs root")
pytestmark = [needs_root, pytest.mark.timeout(120)]


def _build(root: Path, ctx: Path, dockerfile: str, dest: Path, capsys) -> tuple[int, str]:
    from builder.cli import main
    (ctx / "Dockerfile").write_text(dockerfile)
    code = main(["--root", str(root), "build", "--progress", "plain", "--output", f"type=local,dest={dest}", str(ctx)])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "Traceback" not in text
    assert [p for p in check_root(root) if p.kind == "broken"] == []
    return code, text


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    c = tmp_path / "ctx"
    c.mkdir()
    (c / "ok").write_text("ok")
    return c


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    (o / "secret").write_text("host secret")
    return o


def _loop(c: Path, o: Path) -> None:
    os.symlink("b", c / "a")
    os.symlink("a", c / "b")


def _selfloop(c: Path, o: Path) -> None:
    os.symlink("self", c / "self")


def _escape(c: Path, o: Path) -> None:
    os.symlink(str(o), c / "esc")
    os.symlink("../outside/secret", c / "esc2")


def _fifo(c: Path, o: Path) -> None:
    os.mkfifo(c / "fifo")


def _dangling(c: Path, o: Path) -> None:
    os.symlink("nowhere", c / "dangling")


def _kind(p: Path) -> str:
    import stat
    m = os.lstat(p).st_mode
    return "l" if stat.S_ISLNK(m) else "p" if stat.S_ISFIFO(m) else "d" if stat.S_ISDIR(m) else "f"


# case -> (setup, Dockerfile body after FROM scratch, expected: ("error", text) or ("ok", check))
CASES: dict[str, tuple[Callable, str, tuple[str, object]]] = {
    # Symlinks in the context are copied as symlinks, never followed, by `COPY . /c/`.
    "symlink-loop-copied-as-links": (_loop, "COPY . /c/", ("ok", lambda d: (
        os.readlink(d / "c" / "a") == "b" and os.readlink(d / "c" / "b") == "a"))),
    "symlink-loop-as-source": (_loop, "COPY a /x", ("error", "too many levels of symbolic links at 'a'")),
    "symlink-loop-in-source-path": (_loop, "COPY a/f /x", ("error", "too many levels of symbolic links")),
    "self-loop-in-glob": (_selfloop, "COPY */f /x/", ("error", "too many levels of symbolic links at 'self'")),
    "symlinks-to-outside-copied-as-links": (_escape, "COPY . /c/", ("ok", lambda d: (
        _kind(d / "c" / "esc") == "l" and _kind(d / "c" / "esc2") == "l"))),
    "absolute-symlink-to-outside-as-source-dir": (_escape, "COPY esc/secret /x",
                                                  ("error", "leads outside the build context")),
    "relative-symlink-to-outside-as-source": (_escape, "COPY esc2 /x", ("error", "leads outside the build context")),
    "fifo-copied-as-fifo": (_fifo, "COPY . /c/", ("ok", lambda d: _kind(d / "c" / "fifo") == "p")),
    "fifo-as-copy-source": (_fifo, "COPY fifo /x", ("ok", lambda d: _kind(d / "x") == "p")),
    "fifo-as-add-source": (_fifo, "ADD fifo /x", ("ok", lambda d: _kind(d / "x") == "p")),
    "dangling-symlink-copied-as-link": (_dangling, "COPY . /c/", ("ok", lambda d: (
        os.readlink(d / "c" / "dangling") == "nowhere"))),
    "dangling-symlink-as-source": (_dangling, "COPY dangling /x",
                                   ("error", "'dangling': no such file or directory in the build context")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_context(case: str, root: Path, ctx: Path, outside: Path, tmp_path: Path, capsys) -> None:
    setup, body, (kind, what) = CASES[case]
    setup(ctx, outside)
    dest = tmp_path / "export"
    code, text = _build(root, ctx, f"FROM scratch\n{body}\n", dest, capsys)
    if kind == "error":
        assert code == 1 and "error: " in text and what in text, text
    else:
        assert code == 0, text
        assert what(dest), os.listdir(dest)
    assert (outside / "secret").read_text() == "host secret" and os.listdir(outside) == ["secret"]


def test_socket_in_context_is_skipped(root: Path, ctx: Path, tmp_path: Path, capsys) -> None:
    """A unix socket cannot go into a layer: `COPY . /c/` leaves it out and copies the rest."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(ctx / "sock"))
    try:
        code, text = _build(root, ctx, "FROM scratch\nCOPY . /c/\n", tmp_path / "export", capsys)
    finally:
        s.close()
    assert code == 0, text
    assert sorted(os.listdir(tmp_path / "export" / "c")) == ["Dockerfile", "ok"]


@pytest.mark.parametrize("stage", ["before-checksum", "after-checksum"])
def test_file_deleted_during_build(stage: str, root: Path, ctx: Path, tmp_path: Path) -> None:
    """A source that vanishes while the build runs - after the context resolved it but before
    its checksum was taken, or after the checksum but before the copy reads it - gives a clear
    BuildError naming it, not an OSError traceback."""
    from builder.engine.build import BuildOptions, build
    from builder.errors import BuildError
    import builder.context.build_context as context_mod
    victim = ctx / "victim"
    victim.write_bytes(b"v" * 100_000)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY victim /x\n")
    name = "resolve" if stage == "before-checksum" else "source_records"
    owner = context_mod.BuildContext if stage == "before-checksum" else context_mod
    real = getattr(owner, name)

    def then_delete(*a, **kw):  # type: ignore[no-untyped-def]
        out = real(*a, **kw)
        if victim.exists():
            victim.unlink()     # the file is gone by the time anything opens it
        return out
    setattr(owner, name, then_delete)
    try:
        with pytest.raises(BuildError) as info:
            build(BuildOptions(context=str(ctx), root=str(root), progress="quiet", progress_out=io.StringIO(),
                               outputs=[f"type=local,dest={tmp_path / 'export'}"]))
    finally:
        setattr(owner, name, real)
    assert "victim" in str(info.value)
    assert [p for p in check_root(root) if p.kind == "broken"] == []


def test_file_changing_while_read(root: Path, ctx: Path, tmp_path: Path, capsys) -> None:
    """A 16 MB file rewritten with a different length over and over while the build copies it:
    the build either succeeds with one consistent version or fails with a clear error."""
    big = ctx / "big"
    big.write_bytes(b"a" * (16 << 20))
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            size = (8 << 20) + (n % 7) * (1 << 20)
            with open(big, "r+b") as f:
                f.truncate(size)
                f.seek(0)
                f.write(bytes([97 + n % 26]) * size)
    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        results = []
        for i in range(3):
            code, text = _build(root, ctx, f"FROM scratch\nCOPY big /x{i}\n", tmp_path / f"export{i}", capsys)
            results.append((code, text))
    finally:
        stop.set()
        t.join()
    for i, (code, text) in enumerate(results):
        if code == 0:
            data = (tmp_path / f"export{i}" / f"x{i}").read_bytes()
            assert len(data) % (1 << 20) == 0 and len(data) >= 8 << 20
        else:
            assert "error: " in text and "big" in text, text


def test_ignored_10gb_sparse_file_is_never_read(root: Path, ctx: Path, tmp_path: Path, capsys) -> None:
    """A 10 GiB sparse file excluded by .dockerignore does not slow the build (not read)."""
    with open(ctx / "huge.img", "wb") as f:
        f.truncate(10 << 30)
    (ctx / ".dockerignore").write_text("*.img\n")
    code, text = _build(root, ctx, "FROM scratch\nCOPY . /c/\n", tmp_path / "export", capsys)
    assert code == 0, text
    assert sorted(os.listdir(tmp_path / "export" / "c")) == [".dockerignore", "Dockerfile", "ok"]
