"""Build features beyond the basics: network modes, ADD URLs, COPY --exclude/--parents, bind
mounts, contexts from tar and stdin, zstd layers, progress formats, interruption cleanup."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from builder.errors import BuildError
from registry.store import Store
from tests.fixtures.building import build_in, need, store_snapshot, unpack_image, write_context

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (runc, overlay mounts)")]


def test_run_network_modes(busybox_image, tmp_path):
    root = busybox_image
    df = """\
FROM busybox
RUN --network=none cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > /none
RUN --network=host readlink /proc/self/ns/net > /host
"""
    build_in(root, tmp_path / "ctx", df, tags=["net:latest"])
    rootfs = unpack_image(root, "net:latest", tmp_path / "u")
    assert (rootfs / "none").read_text().split() == ["lo"]
    # The namespace itself, not a count of interfaces: other containers add and remove veths.
    assert (rootfs / "host").read_text().strip() == os.readlink("/proc/self/ns/net")


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield www, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_add_url_with_checksum(busybox_image, tmp_path, http_server):
    root = busybox_image
    www, base = http_server
    (www / "tool.txt").write_text("downloaded\n")
    digest = "sha256:" + hashlib.sha256(b"downloaded\n").hexdigest()
    df = f"""\
FROM busybox
ADD --checksum={digest} {base}/tool.txt /opt/
ADD {base}/tool.txt /opt/renamed.txt
"""
    build_in(root, tmp_path / "ctx", df, tags=["url:latest"])
    rootfs = unpack_image(root, "url:latest", tmp_path / "u")
    assert (rootfs / "opt" / "tool.txt").read_text() == "downloaded\n"
    assert os.stat(rootfs / "opt" / "tool.txt").st_mode & 0o777 == 0o600
    assert (rootfs / "opt" / "renamed.txt").read_text() == "downloaded\n"
    bad = f"FROM busybox\nADD --checksum=sha256:{'0' * 64} {base}/tool.txt /opt/\n"
    with pytest.raises(BuildError, match="checksum mismatch"):
        build_in(root, tmp_path / "ctx2", bad)
    with pytest.raises(BuildError, match="git sources are not supported"):
        build_in(root, tmp_path / "ctx4", "FROM busybox\nADD https://example.com/repo.git#main /src\n")
    with pytest.raises(BuildError, match="can't be a URL for COPY"):
        build_in(root, tmp_path / "ctx3", f"FROM busybox\nCOPY {base}/tool.txt /opt/\n")


def test_copy_exclude_and_parents(busybox_image, tmp_path):
    root = busybox_image
    files = {"src/a.py": "a", "src/b.txt": "b", "src/sub/c.py": "c", "src/sub/d.log": "d",
             "app/x/one.conf": "1", "app/y/two.conf": "2"}
    df = """\
FROM busybox
COPY --exclude=*.txt --exclude=**/*.log src/ /dst/
COPY --parents app/x/one.conf app/y/two.conf /p/
"""
    build_in(root, tmp_path / "ctx", df, files, tags=["ex:latest"])
    rootfs = unpack_image(root, "ex:latest", tmp_path / "u")
    assert sorted(p.relative_to(rootfs / "dst").as_posix() for p in (rootfs / "dst").rglob("*")) == \
        ["a.py", "sub", "sub/c.py"]
    assert (rootfs / "p" / "app" / "x" / "one.conf").read_text() == "1"
    assert (rootfs / "p" / "app" / "y" / "two.conf").read_text() == "2"


def test_run_bind_mounts(busybox_image, tmp_path):
    root = busybox_image
    files = {"data/in.txt": "from context\n"}
    df = """\
FROM busybox AS src
RUN echo "from stage" > /made.txt
FROM busybox
RUN --mount=type=bind,source=data,target=/ctx cat /ctx/in.txt > /got-ctx
RUN --mount=type=bind,from=src,source=/made.txt,target=/m.txt cat /m.txt > /got-stage
RUN --mount=type=bind,target=/w,rw echo scratch > /w/new && cat /w/data/in.txt > /got-rw
"""
    build_in(root, tmp_path / "ctx", df, files, tags=["bind:latest"])
    rootfs = unpack_image(root, "bind:latest", tmp_path / "u")
    assert (rootfs / "got-ctx").read_text() == "from context\n"
    assert (rootfs / "got-stage").read_text() == "from stage\n"
    assert (rootfs / "got-rw").read_text() == "from context\n"
    assert not (tmp_path / "ctx" / "new").exists()          # rw bind writes are discarded
    assert not (rootfs / "ctx").exists() and not (rootfs / "w").exists()


def test_context_from_tar_file_and_stdin_dockerfile(busybox_image, tmp_path):
    root = busybox_image
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nCOPY f /f\n", {"f": "from tar\n"})
    tar_path = tmp_path / "ctx.tar.gz"
    with tarfile.open(tar_path, "w:gz") as t:
        for p in sorted(ctx.iterdir()):
            t.add(p, arcname=p.name)
    from builder.engine.build import BuildOptions, build
    build(BuildOptions(context=str(tar_path), root=str(root), tags=["tarctx:latest"], progress="quiet"))
    rootfs = unpack_image(root, "tarctx:latest", tmp_path / "u")
    assert (rootfs / "f").read_text() == "from tar\n"
    # `pybuild build -f - CONTEXT` reads the Dockerfile from stdin
    r = subprocess.run([sys.executable, "-m", "builder.cli", "--root", str(root), "build", "-q", "-f", "-",
                        "-t", "stdin:latest", str(ctx)], input="FROM busybox\nCOPY f /g\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == Store(root).image_manifest("stdin:latest")[1].config.digest
    rootfs = unpack_image(root, "stdin:latest", tmp_path / "u2")
    assert (rootfs / "g").read_text() == "from tar\n"


def test_zstd_and_uncompressed_layers(busybox_image, tmp_path):
    root = busybox_image
    for comp, media in (("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
                        ("uncompressed", "application/vnd.oci.image.layer.v1.tar")):
        res = build_in(root, tmp_path / f"ctx-{comp}", f"FROM busybox\nRUN echo {comp} > /c\n",
                       tags=[f"comp:{comp}"], compression=comp, no_cache=True)
        assert res.layers[-1].descriptor.media_type == media
        skopeo = need("skopeo")
        out = tmp_path / f"copy-{comp}"
        subprocess.run([skopeo, "copy", "-q", f"oci:{root}/images:comp:{comp}", f"dir:{out}"], check=True,
                       capture_output=True, timeout=120)


def test_progress_plain_and_rawjson(busybox_image, tmp_path):
    root = busybox_image
    df = "FROM busybox AS one\nRUN echo line-one && echo line-two\nFROM one\nCMD [\"sh\"]\n"
    out = io.StringIO()
    build_in(root, tmp_path / "ctx", df, progress="plain", progress_out=out)
    text = out.getvalue()
    assert "[one 2/2] RUN echo line-one && echo line-two" in text
    assert "[stage-1 2/2] CMD [\"sh\"]" in text
    lines = text.splitlines()
    run_no = next(l.split()[0] for l in lines if "RUN echo line-one" in l)
    assert any(l.startswith(run_no + " ") and l.endswith(" line-two") for l in lines)
    assert f"{run_no} DONE" in text
    out = io.StringIO()
    build_in(root, tmp_path / "ctx", df, progress="rawjson", progress_out=out)
    # BuildKit's SolveStatus objects (see tests/builder/test_build_progress.py for the details).
    vertexes = [v for l in out.getvalue().splitlines() for v in json.loads(l).get("vertexes", [])]
    assert any(v.get("cached") for v in vertexes)
    assert any(v.get("completed") and not v.get("cached") for v in vertexes)


def test_interrupt_cleans_up(busybox_image, tmp_path):
    """Ctrl-C during a RUN: the container, the overlay mount and partial blobs are all gone."""
    root = busybox_image
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo started && sleep 60\n")
    before = store_snapshot(root)
    # SIGINT as a terminal's Ctrl-C delivers it (the test runner may run with SIGINT ignored,
    # which children would inherit).
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "--root", str(root), "build", "--progress",
                             "plain", "-t", "intr:latest", str(ctx)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.monotonic() + 60
    while not seen.rstrip().endswith(" started") and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert seen.rstrip().endswith(" started"), seen
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)      # well before the 60 s sleep ends
    assert proc.returncode == 130, seen + rest
    assert store_snapshot(root) == before
    with open("/proc/self/mounts") as f:
        assert str(root) not in f.read()
    # no container of this build is left (others may run concurrently: match our bundles)
    listing = json.loads(subprocess.run(["runc", "list", "-f", "json"], capture_output=True,
                                        text=True).stdout or "[]") or []
    assert not [c for c in listing if str(root) in (c.get("bundle") or "")]
    assert not list((root / "snapshots").iterdir())
