"""COPY/ADD semantics that follow Docker (BuildKit) where the hardening work found deviations:

- a symlink on the way to a COPY/ADD destination (or WORKDIR) in the image is followed inside
  the rootfs, never replaced by a directory, and never leads out of the rootfs;
- ``ADD local.tar`` refuses an archive whose entry names (or hard link targets) climb above
  the destination with ``..``, naming the archive and the entry.

Builds run FROM the test store's busybox with real runc; the symlinked-destination case is
also built by ``buildah bud`` and the two filesystems compared.
"""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from builder.errors import BuildError
from tests.fixtures.building import build_in, need, unpack_image
from tests.fixtures.trees import tree_manifest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (runc, overlay mounts)")]

# The links are made by RUN so they are part of the image the COPY/ADD steps see.
LINKS_DOCKERFILE = """\
FROM busybox
RUN mkdir -p /opt/app /data/real && ln -s /opt/app /app && ln -s ../opt/app /rel \\
 && ln -s ../../../../../data /esc && ln -s /nowhere/made /dangling && ln -s /data/real /data/link
COPY f /app/
COPY f /app/sub/deep/g
COPY f /rel/r
COPY f /esc/e
COPY f /dangling/
COPY f /data/link
ADD t.tar /app/unpacked/
WORKDIR /app
COPY f wd/
WORKDIR /app/made/by/workdir
COPY f here/
"""


def _tar(entries: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, file data or None, hard link target or "") entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o644
            if link:
                ti.type = tarfile.LNKTYPE
                ti.linkname = link
                tar.addfile(ti)
            else:
                ti.size = len(data or b"")
                tar.addfile(ti, io.BytesIO(data or b""))
    return buf.getvalue()


def _links_files() -> dict[str, str | bytes]:
    return {"f": "hello\n", "t.tar": _tar([("x/in-tar", b"tarred\n", ""), ("a/../b", b"b\n", "")])}


def _check_links(rootfs: Path) -> None:
    # The links of the base survive every step.
    for link, target in [("app", "/opt/app"), ("rel", "../opt/app"), ("esc", "../../../../../data"),
                         ("dangling", "/nowhere/made"), ("data/link", "/data/real")]:
        assert os.readlink(rootfs / link) == target, link
    app = rootfs / "opt/app"
    assert (app / "f").read_text() == "hello\n"
    assert (app / "sub/deep/g").read_text() == "hello\n"
    assert (app / "r").read_text() == "hello\n"
    assert (rootfs / "data/e").read_text() == "hello\n"           # re-rooted: never left the rootfs
    assert (rootfs / "nowhere/made/f").read_text() == "hello\n"   # a dangling link is followed
    assert (rootfs / "data/real/f").read_text() == "hello\n"      # file dest naming a link to a dir
    assert (app / "unpacked/x/in-tar").read_text() == "tarred\n"
    assert (app / "unpacked/b").read_text() == "b\n"              # 'a/../b' stays inside: fine
    assert (app / "wd/f").read_text() == "hello\n"                # WORKDIR-relative destination
    assert (app / "made/by/workdir/here/f").read_text() == "hello\n"


def test_copy_add_workdir_follow_symlinked_destinations(busybox_image, tmp_path):
    root = busybox_image
    build_in(root, tmp_path / "ctx", LINKS_DOCKERFILE, _links_files(), tags=["links:1"])
    rootfs = unpack_image(root, "links:1", tmp_path / "out")
    _check_links(rootfs)
    assert not (rootfs / "outside").exists()


def test_file_destination_that_is_a_link_is_written_through(busybox_image, tmp_path):
    """As BuildKit resolves the whole destination in the rootfs, a link to a file (or a dangling
    one) at the last component is written through and kept. (buildah replaces the link with
    the file instead, so this case is not in the parity build.)"""
    root = busybox_image
    build_in(root, tmp_path / "ctx", "FROM busybox\nRUN echo old > /target && ln -s /target /lnk "
             "&& ln -s /made/here /dl\nCOPY f /lnk\nCOPY f /dl\n", {"f": "new\n"}, tags=["filelink:1"])
    rootfs = unpack_image(root, "filelink:1", tmp_path / "out")
    assert os.readlink(rootfs / "lnk") == "/target"
    assert (rootfs / "target").read_text() == "new\n"
    assert os.readlink(rootfs / "dl") == "/made/here"
    assert (rootfs / "made/here").read_text() == "new\n"


@pytest.mark.parametrize("entries, entry", [
    ([("ok", b"fine\n", ""), ("../../escape", b"x", "")], "../../escape"),
    ([("/../up", b"x", "")], "/../up"),
    ([("sub/../../up", b"x", "")], "sub/../../up"),
    ([("ok", b"fine\n", ""), ("hl", None, "../ok")], "../ok"),
])
def test_add_refuses_archive_climbing_with_dotdot(busybox_image, tmp_path, entries, entry):
    ctx = tmp_path / "ctx"
    with pytest.raises(BuildError) as exc:
        build_in(busybox_image, ctx, "FROM busybox\nADD evil.tar /dst/\n", {"evil.tar": _tar(entries)},
                 tags=["evil:1"])
    msg = str(exc.value)
    assert "evil.tar" in msg and repr(entry) in msg and "outside the extraction root" in msg, msg


def test_symlinked_destinations_match_buildah(busybox_image, tmp_path):
    """The same Dockerfile built by buildah gives the same files under the linked paths."""
    buildah = need("buildah")
    skopeo = need("skopeo")
    umoci = need("umoci")
    root = busybox_image
    subprocess.run([skopeo, "copy", "-q", f"oci:{root}/images:busybox:latest",
                    "containers-storage:docker.io/library/busybox:latest"], check=True, capture_output=True,
                   timeout=120)
    ctx = tmp_path / "ctx"
    build_in(root, ctx, LINKS_DOCKERFILE, _links_files(), tags=["links:2"])
    ours = tree_manifest(unpack_image(root, "links:2", tmp_path / "ours"))
    tag = f"localhost/pybuild-copy-semantics-{uuid.uuid4().hex[:8]}:latest"
    try:
        r = subprocess.run([buildah, "bud", "--layers", "--pull-never", "--format", "docker", "-t", tag,
                            str(ctx)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        subprocess.run([buildah, "push", "-q", tag, f"oci:{tmp_path / 'b-oci'}:latest"], check=True,
                       capture_output=True, timeout=120)
    finally:
        subprocess.run([buildah, "rmi", "-f", tag], capture_output=True, timeout=120)
    r = subprocess.run([umoci, "unpack", "--image", f"{tmp_path / 'b-oci'}:latest", str(tmp_path / "theirs")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    theirs = tree_manifest(tmp_path / "theirs" / "rootfs")
    _check_links(tmp_path / "theirs" / "rootfs")
    watched = ("/app", "/rel", "/esc", "/dangling", "/opt", "/data", "/nowhere")
    pick = lambda m: {p: v for p, v in m.items() if p.startswith(watched)}   # noqa: E731
    assert pick(ours) == pick(theirs)
