"""Fidelity to current BuildKit on what buildah's conformance suite found (issue 14).

Each test builds for real FROM the test store's busybox (or scratch) and checks the image:
- a .dockerignore'd directory exists as the parent of what a `!` rule re-includes (named as a
  COPY source, matched by a wildcard), and not at all when nothing under it is re-included;
- a wildcard that matches nothing is a no-op; a literal source that is missing is an error;
- one wildcard matching several files with a file destination copies each in turn (the last
  wins); `\\?` is the wildcard `?` (BuildKit's lexer consumes the escape), `\\\\?` a literal `?`;
- `COPY --from` uses the same Go glob as the context (`[^x]` negates, `[!x]` does not);
- `COPY --from --parents` keeps parents and honours the `/./` pivot;
- cache mounts with the same id but different uid are different directories;
- `WORKDIR /tmp/` is stored as given;
- `**` is one segment without --parents and any depth with it, from the context and a stage alike;
- a RUN on scratch keeps the /proc, /dev and /sys directories runc made, not its mount points.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import BuildError
from registry.store import Store
from tests.fixtures.building import build_in, unpack_image

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (runc, overlay mounts)")]


def _files(rootfs: Path, under: str = "") -> list[str]:
    top = rootfs / under if under else rootfs
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), top))
    return sorted(out)


def _build(root: Path, tmp: Path, name: str, dockerfile: str, files: dict) -> Path:
    build_in(root, tmp / f"ctx-{name}", dockerfile, files, tags=[f"{name}:1"])
    return unpack_image(root, f"{name}:1", tmp / f"out-{name}")


REINCLUDE = {".dockerignore": "d\n!d/keep\nnone\n", "d/keep": "k\n", "d/drop": "x\n",
             "none/x": "x\n", "top": "t\n"}


def test_reincluded_dir_named_as_source_and_matched_by_wildcard(busybox_image, tmp_path):
    rootfs = _build(busybox_image, tmp_path, "reinc",
                    "FROM scratch\nCOPY d /named/\nCOPY * /y/\n", REINCLUDE)
    assert _files(rootfs, "named") == ["keep"]
    # `*` matches `d` (re-included parent) and `top`, not `none` (nothing re-included).
    assert _files(rootfs, "y") == [".dockerignore", "Dockerfile", "keep", "top"]


def test_excluded_dir_with_nothing_reincluded_does_not_exist(busybox_image, tmp_path):
    files = {".dockerignore": "**\n!folder1/file\n", "folder1/file1": "1", "folder1/file2": "2"}
    with pytest.raises(BuildError, match="folder1"):
        build_in(busybox_image, tmp_path / "ctx", "FROM scratch\nADD folder1 /f1\n", files, tags=["nofile:1"])


def test_alternating_allowlist_builds(busybox_image, tmp_path):
    ignore = ("**\n!subdir\nsubdir/subdir1\n!subdir/subdir1/subdir2\nsubdir/subdir1/subdir2/subdir3\n"
              "!subdir/subdir1/subdir2/subdir3/subdir4\n")
    files = {".dockerignore": ignore, "subdir/subdir1/subdir2/subdir3/subdir4/f": "f", "subdir/top": "t",
             "subdir/subdir1/gone": "g"}
    rootfs = _build(busybox_image, tmp_path, "alt", "FROM scratch\nADD subdir/subdir1 /a/\n", files)
    assert _files(rootfs, "a") == ["subdir2", "subdir2/subdir3", "subdir2/subdir3/subdir4",
                                   "subdir2/subdir3/subdir4/f"]


def test_wildcard_matching_nothing_is_a_noop(busybox_image, tmp_path):
    files = {"file-a.txt": "a", "file-b.txt": "b", "subdir-a/x": "x"}
    rootfs = _build(busybox_image, tmp_path, "nomatch",
                    "FROM scratch\nCOPY file-a.txt subdir-* file-?.txt missing* subdir/\n"
                    "COPY missing* /none/\n", files)
    assert _files(rootfs) == ["subdir", "subdir/file-a.txt", "subdir/file-b.txt", "subdir/x"]
    with pytest.raises(BuildError, match="file-z.txt"):
        build_in(busybox_image, tmp_path / "ctx2", "FROM scratch\nCOPY file-z.txt subdir-* subdir/\n",
                 files, tags=["missing:1"])


def test_wildcard_to_file_destination_and_escaped_wildcards(busybox_image, tmp_path):
    files = {"app/nope/file.txt": "nope", "app/n?pe/file.txt": "literal?", "app/st*uv/file.txt": "literal*",
             "app/strauv/file.txt": "strauv", "m/a.txt": "a", "m/b.txt": "b"}
    # Current BuildKit expands every COPY source with its shell lexer, which consumes the
    # escape character: `n\?pe` is the wildcard `n?pe`, matching `n?pe` then `nope` (the last
    # wins, as Docker 20.10 gives too); `n\\?pe` reaches the glob as `n\?pe`, a literal `?`.
    rootfs = _build(busybox_image, tmp_path, "esc",
                    "FROM scratch\nCOPY ./app/n\\?pe/file.txt /app4/file.txt\n"
                    "COPY ./app/st\\*uv/file.txt /app5/file.txt\nCOPY m/*.txt /one.txt\n"
                    "COPY ./app/n\\\\?pe/file.txt /lit4/file.txt\n"
                    "COPY ./app/st\\\\*uv/file.txt ./app/st[*]uv/file.txt /lit5/\n", files)
    assert (rootfs / "app4/file.txt").read_text() == "nope"
    assert (rootfs / "app5/file.txt").read_text() == "strauv"
    assert (rootfs / "one.txt").read_text() == "b"
    assert (rootfs / "lit4/file.txt").read_text() == "literal?"
    assert (rootfs / "lit5/file.txt").read_text() == "literal*"


def test_copy_from_uses_the_go_glob_and_keeps_parents(busybox_image, tmp_path):
    df = ("FROM busybox AS base\n"
          "RUN mkdir -p /x/y /x/z /g && echo a > /x/y/a.txt && echo b > /x/z/b.txt "
          "&& touch /g/a /g/b '/g/!'\n"
          "FROM scratch\n"
          "COPY --from=base /g/[^a] /neg/\n"
          "COPY --from=base /g/[!a] /bang/\n"
          "COPY --from=base --parents ./x/ /parents\n"
          "COPY --from=base --parents ./x/./z/ /pivot/\n"
          "COPY --from=base /nothing* /none/\n")
    rootfs = _build(busybox_image, tmp_path, "fromglob", df, {})
    assert _files(rootfs, "neg") == ["!", "b"]          # Go: ^ negates
    assert _files(rootfs, "bang") == ["!", "a"]         # Go: [!a] is the class {!, a}
    assert _files(rootfs, "parents") == ["x", "x/y", "x/y/a.txt", "x/z", "x/z/b.txt"]
    assert _files(rootfs, "pivot") == ["z", "z/b.txt"]
    assert not (rootfs / "none").exists()


def test_cache_mounts_are_keyed_by_id_and_owner(busybox_image, tmp_path):
    tag = os.urandom(4).hex()
    df = (f"FROM busybox\n"
          f"RUN --mount=type=cache,id=c{tag},uid=10,target=/cache touch /cache/10.txt\n"
          f"RUN --mount=type=cache,id=c{tag},target=/cache touch /cache/0.txt\n"
          f"RUN --mount=type=cache,id=c{tag},target=/cache ls /cache > /plain\n"
          f"RUN --mount=type=cache,id=c{tag},uid=10,target=/cache ls /cache > /uid10 && stat -c %u /cache > /owner\n")
    rootfs = _build(busybox_image, tmp_path, "cachekey", df, {})
    assert (rootfs / "plain").read_text().split() == ["0.txt"]
    assert (rootfs / "uid10").read_text().split() == ["10.txt"]
    assert (rootfs / "owner").read_text().strip() == "10"


def test_workdir_is_stored_as_given(busybox_image, tmp_path):
    build_in(busybox_image, tmp_path / "ctx", "FROM busybox\nWORKDIR /tmp/\n", {}, tags=["wd:1"])
    assert Store(busybox_image).image_config("wd:1").to_dict()["config"]["WorkingDir"] == "/tmp/"
    build_in(busybox_image, tmp_path / "ctx2", "FROM busybox\nWORKDIR /a\nWORKDIR b/../c/\n", {}, tags=["wd:2"])
    assert Store(busybox_image).image_config("wd:2").to_dict()["config"]["WorkingDir"] == "/a/c"


def test_parents_pivot_on_the_source_itself(busybox_image, tmp_path):
    files = {"x/y/a.txt": "a", "x/z/b.txt": "b"}
    rootfs = _build(busybox_image, tmp_path, "pivot", "FROM scratch\nCOPY --parents ./x/./ /parents/\n", files)
    assert _files(rootfs, "parents") == ["y", "y/a.txt", "z", "z/b.txt"]



def _last_layer_names(root: Path, result) -> list[str] | None:
    import tarfile
    step = result.steps[-1]
    if not step.layer_digest:
        return None
    with Store(root).open_blob(step.layer_digest) as f, tarfile.open(fileobj=f, mode="r:*") as t:
        return [m.name.rstrip("/") for m in t.getmembers()]


def test_run_that_only_touches_a_directory_makes_a_layer(busybox_image, tmp_path):
    # `touch /etc` changes /etc's mtime only: BuildKit makes a layer with /etc. The sandbox's
    # mount-point stubs in /etc (resolv.conf, hosts, hostname) and / (proc, dev, sys) alone
    # are no change: their parents get their times back.
    touched = build_in(busybox_image, tmp_path / "c1", "FROM busybox\nRUN touch /etc\n", {}, tags=["touch:1"])
    assert _last_layer_names(busybox_image, touched) == ["etc"]
    untouched = build_in(busybox_image, tmp_path / "c2", "FROM busybox\nRUN true\n", {}, tags=["touch:2"])
    assert not _last_layer_names(busybox_image, untouched)
    # a file the command writes beside the stubs: /etc is in the layer with it, once
    wrote = build_in(busybox_image, tmp_path / "c3", "FROM busybox\nRUN echo x > /etc/x\n", {}, tags=["touch:3"])
    assert sorted(_last_layer_names(busybox_image, wrote)) == ["etc", "etc/x"]


def test_add_tar_follows_its_own_links_inside_the_extraction_root(busybox_image, tmp_path):
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        link = tarfile.TarInfo("symldir1")
        link.type, link.linkname = tarfile.SYMTYPE, ".."
        t.addfile(link)
        f = tarfile.TarInfo("symldir1/etc/myfile")
        f.size = 3
        t.addfile(f, io.BytesIO(b"hi\n"))
        up = tarfile.TarInfo("sub/up")                     # climbs through two links, clamped
        up.type, up.linkname = tarfile.SYMTYPE, "../symldir1/.."
        t.addfile(up)
        g = tarfile.TarInfo("sub/up/g")
        g.size = 1
        t.addfile(g, io.BytesIO(b"g"))
    rootfs = _build(busybox_image, tmp_path, "tarlink", "FROM scratch\nADD foobar.tar /testsubdir\n",
                    {"foobar.tar": buf.getvalue()})
    top = rootfs / "testsubdir"
    assert os.readlink(top / "symldir1") == ".."
    assert (top / "etc" / "myfile").read_bytes() == b"hi\n"
    assert (top / "g").read_bytes() == b"g" and os.path.islink(top / "sub" / "up")
    assert not (rootfs / "etc").exists()


def test_cmd_sets_args_escaped_and_created_parents_are_reproducible(busybox_image, tmp_path):
    res = build_in(busybox_image, tmp_path / "ctx", "FROM scratch\nCMD echo hi\nCOPY f /new/deep/f\n",
                   {"f": "f\n"}, tags=["argsesc:1"])
    assert res.config["config"]["ArgsEscaped"] is True            # BuildKit's dispatchCmd, both forms
    exec_form = build_in(busybox_image, tmp_path / "ctx2", 'FROM scratch\nENTRYPOINT ["/x"]\n', {},
                         tags=["argsesc:2"])
    assert "ArgsEscaped" not in exec_form.config["config"]        # ENTRYPOINT does not set it
    rootfs = unpack_image(busybox_image, "argsesc:1", tmp_path / "out")
    for d in ("new", "new/deep"):
        # The epoch, not the build time (a deliberate difference from BuildKit): the same COPY
        # gives the same layer on every build.
        assert os.stat(rootfs / d).st_mtime == 0, d


def test_double_star_and_escapes_match_alike_from_context_and_stage(busybox_image, tmp_path):
    # Current BuildKit: without --parents a source wildcard goes through fsutil's
    # copy.ResolveWildcards (Go's filepath.Match: `**` is `*` twice, one segment); with
    # --parents it becomes an include pattern (patternmatcher: `**` spans any depth, zero too).
    files = {"top.txt": "t", "a/x.txt": "x", "a/b/y.txt": "y", "q?/l.txt": "literal", "qz/l.txt": "z"}
    df = ("FROM busybox AS s\nCOPY . /src/\nFROM scratch\n"
          "COPY **/*.txt /ctx1/\nCOPY --parents **/*.txt /ctx2/\nCOPY q\\\\?/l.txt /ctx3/\n"
          "COPY q\\?/l.txt /ctx4/\n"
          "COPY --from=s /src/**/*.txt /from1/\nCOPY --from=s --parents /src/./**/*.txt /from2/\n"
          "COPY --from=s /src/q\\\\?/l.txt /from3/\nCOPY --from=s /src/q\\?/l.txt /from4/\n")
    rootfs = _build(busybox_image, tmp_path, "dstar", df, files)
    one_level = ["l.txt", "x.txt"]                   # a/x.txt, q?/l.txt then qz/l.txt (last wins)
    any_depth = ["a", "a/b", "a/b/y.txt", "a/x.txt", "q?", "q?/l.txt", "qz", "qz/l.txt", "top.txt"]
    assert _files(rootfs, "ctx1") == _files(rootfs, "from1") == one_level
    assert (rootfs / "ctx1/l.txt").read_text() == (rootfs / "from1/l.txt").read_text() == "z"
    assert _files(rootfs, "ctx2") == _files(rootfs, "from2") == any_depth
    assert (rootfs / "ctx3/l.txt").read_text() == (rootfs / "from3/l.txt").read_text() == "literal"
    assert (rootfs / "ctx4/l.txt").read_text() == (rootfs / "from4/l.txt").read_text() == "z"   # `q?`, then `qz`


def test_run_on_scratch_keeps_the_runtime_dirs_not_its_mount_points(busybox_image, tmp_path):
    # BuildKit's runc executor removes the step's own mount points and the /etc/hosts and
    # /etc/resolv.conf stubs (with their parents), but /proc, /dev and /sys, which runc makes
    # when the image lacks them, stay in the layer (moby/buildkit#6686; Docker 20.10 too).
    df = ("FROM scratch\nCOPY busybox /\n"
          "RUN --mount=type=tmpfs,destination=/tmp --mount=type=cache,destination=/sub/other [\"/busybox\", \"true\"]\n")
    from tests.fixtures.building import write_context
    ctx = write_context(tmp_path / "ctx", df, {"busybox": Path("/bin/busybox").read_bytes()})
    (ctx / "busybox").chmod(0o755)
    res = build_in(busybox_image, ctx, df, {}, tags=["stubs:1"])
    assert sorted(_last_layer_names(busybox_image, res)) == ["dev", "proc", "sys"]
    rootfs = unpack_image(busybox_image, "stubs:1", tmp_path / "out")
    assert _files(rootfs) == ["busybox", "dev", "proc", "sys"]
    assert all((rootfs / d).stat().st_mode & 0o7777 == 0o755 for d in ("dev", "proc", "sys"))
