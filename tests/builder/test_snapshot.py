"""Snapshots on real overlayfs: extraction in overlay format, upper dir as the change, fallback."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from builder.runtime.snapshot import LayerDirs, OPAQUE_XATTR, mount_snapshot

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")]


def _tar(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """entries: (name, kind 'f'|'d'|'l'|'h', content or link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "d":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                t.addfile(ti)
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
                t.addfile(ti)
            else:
                raw = data.encode() if isinstance(data, str) else data
                ti.size, ti.mode, ti.uid, ti.gid = len(raw), 0o4755 if name.endswith("suid") else 0o644, 7, 8
                t.addfile(ti, io.BytesIO(raw))
    return buf.getvalue()


def _ensure(dirs: LayerDirs, diff_id: str, data: bytes) -> Path:
    return dirs.ensure(diff_id, lambda: io.BytesIO(data))


BASE_TAR = _tar([("etc", "d", ""), ("etc/passwd", "f", "root:x:0:0::/:/bin/sh\n"),
                 ("etc/keep", "f", "k"), ("etc/link", "l", "passwd"),
                 ("etc/hard", "h", "etc/passwd"), ("bin", "d", ""), ("bin/suid", "f", "s"),
                 ("data", "d", ""), ("data/old", "f", "old")])
TOP_TAR = _tar([("etc", "d", ""), ("etc/.wh.keep", "f", ""), ("data", "d", ""),
                ("data/.wh..wh..opq", "f", ""), ("data/new", "f", "new")])
# Extraction checks the content against the diffID, so the ids are the tars' real digests.
BASE = "sha256:" + hashlib.sha256(BASE_TAR).hexdigest()
TOP = "sha256:" + hashlib.sha256(TOP_TAR).hexdigest()


@pytest.fixture
def layers(root: Path) -> LayerDirs:
    dirs = LayerDirs(root)
    _ensure(dirs, BASE, BASE_TAR)
    _ensure(dirs, TOP, TOP_TAR)
    return dirs


def test_extraction_keeps_metadata_and_converts_whiteouts(layers):
    base, top = layers.path(BASE), layers.path(TOP)
    st = os.lstat(base / "bin" / "suid")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (7, 8)
    assert os.readlink(base / "etc" / "link") == "passwd"
    assert os.lstat(base / "etc" / "hard").st_ino == os.lstat(base / "etc" / "passwd").st_ino
    wh = os.lstat(top / "etc" / "keep")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(top / "data", OPAQUE_XATTR) == b"y"
    assert not (top / "data" / ".wh..wh..opq").exists()


@pytest.mark.parametrize("use_overlay", [True, False])
def test_stacked_view_and_changes(root, layers, use_overlay):
    snap = mount_snapshot(root, [BASE, TOP], use_overlay=use_overlay)
    try:
        assert snap.kind == ("overlay" if use_overlay else "copy")
        m = snap.merged
        assert (m / "etc" / "passwd").read_text().startswith("root")
        assert not (m / "etc" / "keep").exists()              # whited out by TOP
        assert sorted(os.listdir(m / "data")) == ["new"]      # opaque dir hides "old"
        (m / "written").write_text("w")
        os.unlink(m / "etc" / "passwd")
        (m / "data" / "new").write_text("changed")
        upper = snap.changes()
        assert (upper / "written").read_text() == "w"
        wh = os.lstat(upper / "etc" / "passwd")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
        assert (upper / "data" / "new").read_text() == "changed"
        assert not (upper / "bin").exists()                   # untouched dirs are not in the change
        # lower layers are untouched
        assert not (layers.path(BASE) / "written").exists()
        assert (layers.path(BASE) / "etc" / "passwd").is_file()
        assert (layers.path(TOP) / "data" / "new").read_text() == "new"
    finally:
        snap.cleanup()
    assert not snap.base.exists()


def test_many_layers_exceed_one_page_of_options(root):
    dirs = LayerDirs(root)
    ids = []
    for i in range(120):       # 120 full paths would be ~9 KB of mount options
        t = _tar([(f"f{i}", "f", str(i))])
        d = "sha256:" + hashlib.sha256(t).hexdigest()
        _ensure(dirs, d, t)
        ids.append(d)
    snap = mount_snapshot(root, ids)
    try:
        assert snap.kind == "overlay"
        assert (snap.merged / "f0").read_text() == "0" and (snap.merged / "f119").read_text() == "119"
    finally:
        snap.cleanup()
    with open("/proc/self/mounts") as f:
        assert str(snap.merged) not in f.read()


def test_adopt_upper_as_layer(root, layers):
    snap = mount_snapshot(root, [BASE])
    (snap.merged / "x").write_text("x")
    upper = snap.changes()
    new_id = "sha256:" + "3" * 64
    layers.adopt(new_id, upper)
    snap.cleanup()
    assert (layers.path(new_id) / "x").read_text() == "x"
    with mount_snapshot(root, [BASE, new_id], writable=False) as ro:
        assert (ro.merged / "x").read_text() == "x" and (ro.merged / "etc" / "passwd").exists()
