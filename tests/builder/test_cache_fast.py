"""No-op rebuilds (builder.cache.fast): taken only when every input is unchanged."""
from __future__ import annotations

from pathlib import Path

from builder.cli import main
from registry.store import Store
from tests.fixtures.building import write_context

DOCKERFILE = "FROM busybox\nARG V=1\nCOPY app/ /app/\nRUN --mount=type=bind,source=m,target=/m cat /m/x > /x\n"
FILES = {"app/a.txt": "a\n", "app/ignored.txt": "i\n", ".dockerignore": "app/ignored.txt\n", "m/x": "1\n"}
NOOP = "no-op rebuild"


def _build(capsys, root: Path, ctx: Path, *extra: str) -> tuple[str, bool]:
    """(image ID, whether the no-op path answered)."""
    capsys.readouterr()
    assert main(["--root", str(root), "build", "--progress", "plain", "--iidfile", str(ctx.parent / "iid"),
                 *extra, str(ctx)]) == 0
    err = capsys.readouterr().err
    return (ctx.parent / "iid").read_text(), NOOP in err


def test_noop_rebuild_only_when_nothing_changed(busybox_image, tmp_path, capsys):
    root = busybox_image
    ctx = write_context(tmp_path / "ctx", DOCKERFILE, FILES)
    first, fast = _build(capsys, root, ctx, "-t", "app:1")
    assert not fast
    again, fast = _build(capsys, root, ctx, "-t", "app:1")
    assert fast and again == first
    # An ignored file and an mtime change are no change.
    (ctx / "app" / "ignored.txt").write_text("other\n")
    (ctx / "app" / "a.txt").touch()
    assert _build(capsys, root, ctx, "-t", "app:1") == (first, True)

    # A changed source file, a changed bind-mounted file: the engine runs.
    (ctx / "app" / "a.txt").write_text("a2\n")
    second, fast = _build(capsys, root, ctx, "-t", "app:1")
    assert not fast and second != first
    assert _build(capsys, root, ctx, "-t", "app:1") == (second, True)
    (ctx / "m" / "x").write_text("2\n")
    third, fast = _build(capsys, root, ctx, "-t", "app:1")
    assert not fast and third != second

    # Other build args, another tag, options the summary does not cover: the engine runs.
    assert not _build(capsys, root, ctx, "-t", "app:1", "--build-arg", "V=2")[1]
    assert not _build(capsys, root, ctx, "-t", "app:2")[1]
    assert not _build(capsys, root, ctx, "-t", "app:1", "--metadata-file", str(tmp_path / "m.json"))[1]

    # The base image name now points at another image: the engine runs.
    assert _build(capsys, root, ctx, "-t", "app:1")[1]
    store = Store(root)
    store.tag("busybox:latest", store.resolve("app:2"))
    assert not _build(capsys, root, ctx, "-t", "app:1")[1]


def test_noop_rebuild_needs_the_image(busybox_image, tmp_path, capsys):
    root = busybox_image
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\n")
    _build(capsys, root, ctx, "-t", "gone:1")
    Store(root).untag("gone:1")
    assert not _build(capsys, root, ctx, "-t", "gone:1")[1]
