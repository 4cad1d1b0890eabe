"""builder.context and builder.context.hashcache: ignore rules, source resolution, globs, checksums."""
from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from builder.context.build_context import BuildContext, checksum_sources, open_context, source_records
from builder.errors import BuildError
from builder.context.hashcache import HashCache, open_hash_cache


def write(p: Path, text: str = "x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def settle() -> None:
    """Let the files just written age past the hash cache's racy window (ctime cannot be faked)."""
    time.sleep(0.15)


@pytest.fixture
def ctxdir(tmp_path: Path) -> Path:
    d = tmp_path / "ctx"
    write(d / "a.txt", "a")
    write(d / "b.txt", "b")
    write(d / "c.md", "c")
    write(d / "src" / "app.py", "print(1)")
    write(d / "src" / "lib" / "util.py", "u")
    write(d / "src" / "lib" / "util.pyc", "compiled")
    write(d / "docs" / "README.md", "readme")
    write(d / "docs" / "guide.md", "guide")
    write(d / "star*name", "literal star")
    (d / "empty").mkdir()
    return d


def names(entries) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.rel for e in entries]


def test_resolve_literals_globs_and_roots(ctxdir: Path) -> None:
    ctx = open_context(ctxdir)
    assert names(ctx.resolve("a.txt")) == ["a.txt"]
    assert names(ctx.resolve("/a.txt")) == ["a.txt"]
    assert names(ctx.resolve("./src/../a.txt")) == ["a.txt"]
    assert names(ctx.resolve(".")) == [""]
    assert ctx.resolve("missing") == []
    assert names(ctx.resolve("*.txt")) == ["a.txt", "b.txt"]
    assert names(ctx.resolve("[ab].txt")) == ["a.txt", "b.txt"]
    assert names(ctx.resolve("?.md")) == ["c.md"]
    assert names(ctx.resolve("src/*/util.py")) == ["src/lib/util.py"]
    assert names(ctx.resolve("star\\*name")) == ["star*name"]
    assert names(ctx.resolve("*/README.md")) == ["docs/README.md"]
    # ** spans directories only with --parents; otherwise it is a plain segment pattern.
    assert names(ctx.resolve("**/*.py", parents=True)) == ["src/app.py", "src/lib/util.py"]
    assert names(ctx.resolve("**/*.py")) == ["src/app.py"]
    # `/./` marks where the parents kept by --parents start.
    assert names(ctx.resolve("./src/./lib/*.py", parents=True)) == ["lib/util.py"]
    assert names(ctx.resolve("src/./**/*.py", parents=True)) == ["app.py", "lib/util.py"]
    assert names(ctx.resolve("src/./lib", parents=True)) == ["lib"]
    with pytest.raises(BuildError, match="bad glob"):
        ctx.resolve("[")


def test_sources_outside_the_context_are_refused(ctxdir: Path, tmp_path: Path) -> None:
    write(tmp_path / "secret", "s")
    os.symlink("../secret", ctxdir / "out-rel")
    os.symlink(str(tmp_path / "secret"), ctxdir / "out-abs")
    os.symlink("..", ctxdir / "up")
    os.symlink("src/app.py", ctxdir / "in-rel")
    os.symlink(str(ctxdir / "docs"), ctxdir / "in-abs")
    os.symlink("loop2", ctxdir / "loop1")
    os.symlink("loop1", ctxdir / "loop2")
    ctx = open_context(ctxdir)
    for src in ("../secret", "src/../../secret", "out-rel", "out-abs", "up/secret"):
        with pytest.raises(BuildError, match="outside the build context") as ei:
            ctx.resolve(src)
        assert repr(src) in str(ei.value)
    with pytest.raises(BuildError, match="too many levels"):
        ctx.resolve("loop1")
    rel, host = ctx.resolve("in-rel")[0]
    assert (rel, ctx.real_rel(ctx.resolve("in-rel")[0])) == ("in-rel", "src/app.py")
    assert host == str(ctxdir / "src" / "app.py")
    assert names(ctx.resolve("in-abs/README.md")) == ["in-abs/README.md"]


def test_dockerignore_applies_to_resolve_and_walk(ctxdir: Path) -> None:
    write(ctxdir / ".dockerignore", "# build junk\n**/*.pyc\ndocs\n!docs/README.md\n*.md\n")
    ctx = open_context(ctxdir)
    assert ctx.resolve("c.md") == []
    # `*.md` matches top-level names only, so docs/README.md stays re-included by the `!` line.
    assert names(ctx.resolve("docs/README.md")) == ["docs/README.md"]
    assert ctx.is_ignored("docs/guide.md") and not ctx.is_ignored("docs/README.md")
    root = ctx.resolve(".")[0]
    walked = [inner for inner, _, _ in ctx.walk(root)]
    assert "src/lib/util.pyc" not in walked and "src/lib/util.py" in walked
    assert "docs/README.md" in walked and "docs/guide.md" not in walked and "c.md" not in walked
    # The excluded directory is still entered, and listed as the parent of its re-included file.
    assert "docs" in walked
    skip_root = ctx.source_filter(root)
    assert skip_root is not None
    assert not skip_root("docs") and not skip_root("docs/README.md") and skip_root("docs/guide.md")
    src = ctx.resolve("src")[0]
    assert [i for i, _, _ in ctx.walk(src)] == ["app.py", "lib", "lib/util.py"]
    assert [i for i, _, _ in ctx.walk(src, ["lib/*.py"])] == ["app.py", "lib"]
    skip = ctx.source_filter(src, ["app.py"])
    assert skip is not None and skip("app.py") and skip("lib/util.pyc") and not skip("lib/util.py")


def test_dockerignore_integration_case_from_buildkit(tmp_path: Path) -> None:
    """patterns ba*, Dockerfile, !bay, .dockerignore over foo bar baz bay: only foo and bay remain."""
    d = tmp_path / "c"
    for n in ("foo", "bar", "baz", "bay", "Dockerfile"):
        write(d / n, n)
    write(d / ".dockerignore", "ba*\nDockerfile\n!bay\n.dockerignore\n")
    ctx = open_context(d, dockerfile=d / "Dockerfile")
    assert [i for i, _, _ in ctx.walk(ctx.resolve(".")[0])] == ["bay", "foo"]


def test_dockerfile_specific_ignore_file_wins(ctxdir: Path, tmp_path: Path) -> None:
    write(ctxdir / ".dockerignore", "a.txt\n")
    df = write(tmp_path / "build" / "app.Dockerfile", "FROM scratch\n")
    write(tmp_path / "build" / "app.Dockerfile.dockerignore", "b.txt\n")
    ctx = open_context(ctxdir, dockerfile=df)
    assert ctx.ignore_file == tmp_path / "build" / "app.Dockerfile.dockerignore"
    assert names(ctx.resolve("*.txt")) == ["a.txt"]
    ctx2 = open_context(ctxdir, dockerfile=ctxdir / "Dockerfile")
    assert names(ctx2.resolve("*.txt")) == ["b.txt"]


def test_bad_dockerignore_is_a_clear_error(ctxdir: Path) -> None:
    write(ctxdir / ".dockerignore", "ok\n!\n")
    with pytest.raises(BuildError, match=r"\.dockerignore.*illegal exclusion"):
        open_context(ctxdir)


def _tar_of(d: Path) -> bytes:
    return subprocess.run(["tar", "-C", str(d), "-cf", "-", "."], capture_output=True, check=True).stdout


def test_tar_contexts_file_gzip_and_stdin(ctxdir: Path, tmp_path: Path) -> None:
    write(ctxdir / ".dockerignore", "*.md\n")
    raw = _tar_of(ctxdir)
    (tmp_path / "ctx.tar").write_bytes(raw)
    (tmp_path / "ctx.tar.gz").write_bytes(gzip.compress(raw))
    for ctx in (open_context(tmp_path / "ctx.tar"), open_context(tmp_path / "ctx.tar.gz"),
                open_context("-", stdin=io.BytesIO(raw))):
        with ctx:
            assert names(ctx.resolve("*.txt")) == ["a.txt", "b.txt"]
            assert ctx.resolve("c.md") == []
            root = ctx.root
            assert root.is_dir()
        assert not root.exists()


def test_stdin_dockerfile_means_empty_context() -> None:
    with open_context("-", stdin=io.BytesIO(b"FROM scratch\nCOPY x /\n")) as ctx:
        assert ctx.dockerfile_text == "FROM scratch\nCOPY x /\n"
        assert ctx.resolve("x") == []


def test_hostile_tar_context_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("../escape")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    with pytest.raises(BuildError, match="climbs out"):
        open_context("-", stdin=io.BytesIO(buf.getvalue()))
    assert not (tmp_path / "escape").exists()


def test_missing_context() -> None:
    with pytest.raises(BuildError, match="not found"):
        open_context("/nonexistent/context")


# -- checksums -----------------------------------------------------------------------------
def key(ctx: BuildContext, srcs: list[str], **kw) -> str:  # type: ignore[no-untyped-def]
    return checksum_sources(ctx, srcs, **kw)


def test_checksum_reacts_to_content_mode_owner_links_not_mtime(ctxdir: Path) -> None:
    write(ctxdir / ".dockerignore", "**/*.pyc\n")
    os.symlink("app.py", ctxdir / "src" / "link")
    ctx = open_context(ctxdir)
    base = key(ctx, ["src", "a.txt"])
    assert key(ctx, ["src", "a.txt"]) == base
    os.utime(ctxdir / "src" / "app.py", (1, 1))
    assert key(ctx, ["src", "a.txt"]) == base, "mtime-only change must not change the key"
    write(ctxdir / "src" / "lib" / "util.pyc", "ignored change")
    assert key(ctx, ["src", "a.txt"]) == base, "an ignored file must not change the key"
    assert key(ctx, ["src", "a.txt"], uid=1000, gid=1000) != base
    assert key(ctx, ["src", "a.txt"], chmod=lambda m, d: 0o755) != base
    assert key(ctx, ["a.txt", "src"]) != base, "order of sources matters"
    os.chmod(ctxdir / "a.txt", 0o600)
    chmodded = key(ctx, ["src", "a.txt"])
    assert chmodded != base
    write(ctxdir / "src" / "app.py", "print(2)")
    changed = key(ctx, ["src", "a.txt"])
    assert changed != chmodded
    os.unlink(ctxdir / "src" / "link")
    os.symlink("lib", ctxdir / "src" / "link")
    assert key(ctx, ["src", "a.txt"]) != changed
    assert key(ctx, ["src"], excludes=["lib"]) != key(ctx, ["src"])
    with pytest.raises(BuildError, match="no such file"):
        key(ctx, ["nope"])


def test_records_name_every_file(ctxdir: Path) -> None:
    ctx = open_context(ctxdir)
    recs = source_records(ctx, ["src"])
    assert [(r.path, r.kind) for r in recs] == [
        ("src", "dir"), ("src/app.py", "file"), ("src/lib", "dir"), ("src/lib/util.py", "file"),
        ("src/lib/util.pyc", "file")]
    assert recs[1].uid == 0 and recs[1].content.startswith("sha256:")


def test_fifo_in_context_is_not_read(ctxdir: Path) -> None:
    os.mkfifo(ctxdir / "src" / "pipe")
    ctx = open_context(ctxdir)
    recs = source_records(ctx, ["src"])
    assert ("src/pipe", "fifo") in [(r.path, r.kind) for r in recs]


def test_only_referenced_files_are_read(ctxdir: Path) -> None:
    big = ctxdir / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    cache = HashCache(None)
    ctx = open_context(ctxdir, hash_cache=cache)
    key(ctx, ["a.txt", "src/app.py"])
    assert cache.bytes_hashed == len("a") + len("print(1)")


def test_hash_cache_persists_and_skips_unchanged_files(ctxdir: Path, root: Path) -> None:
    settle()
    with open_hash_cache(root) as cache:
        ctx = open_context(ctxdir, hash_cache=cache)
        first = key(ctx, ["."])
        assert cache.misses > 0 and cache.hits == 0
    assert (root / "cache" / "hashes.v1").is_file()
    cache2 = open_hash_cache(root)
    ctx2 = open_context(ctxdir, hash_cache=cache2)
    assert key(ctx2, ["."]) == first
    assert cache2.misses == 0 and cache2.bytes_hashed == 0 and cache2.hits > 0
    # Same size, same mtime, new content: ctime and inode tell.
    p = ctxdir / "a.txt"
    st = os.stat(p)
    p.write_text("z")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert key(ctx2, ["."]) != first
    cache2.save()


def test_hash_cache_does_not_store_racy_entries(tmp_path: Path) -> None:
    f = write(tmp_path / "fresh", "1")
    cache = HashCache(tmp_path / "h")
    cache.digest(f)
    assert len(cache) == 0, "a file modified just now must not be cached"
    settle()
    cache.digest(f)
    assert len(cache) == 1
    cache.save()
    assert len(HashCache(tmp_path / "h")) == 1


def test_hash_cache_survives_garbage_and_merges_writers(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "hashes.v1"
    path.parent.mkdir()
    path.write_bytes(b"garbage")
    a_file, b_file = write(tmp_path / "a", "a"), write(tmp_path / "b", "b")
    settle()
    one, two = HashCache(path), HashCache(path)
    one.digest(a_file)
    two.digest(b_file)
    one.save()
    two.save()
    assert len(HashCache(path)) == 2


def test_checksum_is_the_hash_of_the_records(ctxdir: Path) -> None:
    import hashlib

    ctx = open_context(ctxdir)
    recs = source_records(ctx, ["src", "*.txt"], uid=5, gid=6)
    want = "sha256:" + hashlib.sha256("".join(r.line() for r in recs).encode()).hexdigest()
    assert checksum_sources(ctx, ["src", "*.txt"], uid=5, gid=6) == want
    assert {(r.uid, r.gid) for r in recs} == {(5, 6)}


def test_diff_source_records_names_the_change(ctxdir: Path) -> None:
    from builder.context.build_context import diff_source_records

    ctx = open_context(ctxdir)
    before = source_records(ctx, ["src"])
    write(ctxdir / "src" / "app.py", "print(2)")
    os.chmod(ctxdir / "src" / "lib" / "util.py", 0o600)
    write(ctxdir / "src" / "new.py", "n")
    os.unlink(ctxdir / "src" / "lib" / "util.pyc")
    d = diff_source_records(before, source_records(ctx, ["src"]))
    assert d == {"added": ["src/new.py"], "removed": ["src/lib/util.pyc"],
                 "changed": ["src/app.py (content)", "src/lib/util.py (mode)"]}


def test_bad_ignore_file_in_tar_context_leaves_no_temp_dir(tmp_path: Path) -> None:
    d = tmp_path / "c"
    write(d / ".dockerignore", "!\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with pytest.raises(BuildError, match="illegal exclusion"):
        open_context("-", stdin=io.BytesIO(_tar_of(d)), tmp_dir=tmp)
    assert list(tmp.iterdir()) == []
