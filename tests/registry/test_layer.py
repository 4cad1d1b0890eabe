"""registry.layer / registry.tarwriter: one-pass layer hashing, deterministic tars, overlay uppers."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from registry.compression import Compression, decompress_bytes
from registry.layer import (
    EntryMeta,
    LayerWriter,
    TarEmitter,
    store_layer,
    write_overlay_upper_tar,
    write_tree_tar,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, chown, overlayfs)")


def make_tree(root: Path) -> None:
    """A small tree with every kind of entry write_tree_tar handles."""
    (root / "b" / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "b" / "sub" / "data.bin").write_bytes(os.urandom(70000))
    (root / "b" / "exec").write_text("#!/bin/sh\n")
    os.chmod(root / "b" / "exec", 0o4755)
    os.symlink("../a.txt", root / "b" / "link")
    os.link(root / "a.txt", root / "b" / "hard")
    os.mkfifo(root / "fifo")
    long_dir = root / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / "long-name-file").write_text("x")
    (root / "ünïcode").write_text("u")
    os.utime(root / "a.txt", (2_000_000_000, 2_000_000_000))


def tar_of(root: Path, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    write_tree_tar(root, buf, **kw)
    return buf.getvalue()


def test_layer_writer_hashes_in_one_pass(tmp_path: Path) -> None:
    make_tree(tmp_path)
    tar = tar_of(tmp_path)
    for algorithm in ("gzip", "zstd", "uncompressed"):
        for threaded in (True, False):
            sink = io.BytesIO()
            with LayerWriter(sink, Compression(algorithm), threaded=threaded) as lw:
                # Odd write sizes exercise the chunk buffering.
                for i in range(0, len(tar), 7777):
                    lw.write(tar[i:i + 7777])
            r = lw.result
            assert r is not None
            blob = sink.getvalue()
            assert r.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
            assert r.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
            assert r.size == len(blob)
            assert r.uncompressed_size == len(tar)
            assert decompress_bytes(blob) == tar
            assert r.media_type == Compression(algorithm).media_type()


def test_layer_writer_callable_sink_and_large_writes() -> None:
    parts: list[bytes] = []
    data = os.urandom(3 << 20)
    lw = LayerWriter(parts.append, Compression("gzip"), docker_media_types=True)
    lw.write(data)
    r = lw.close()
    assert lw.close() is r
    assert r.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert decompress_bytes(b"".join(parts)) == data
    with pytest.raises(ValueError):
        lw.write(b"x")


def test_tree_tar_is_deterministic_and_complete(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    one = tar_of(src)
    # A copy made in another order, at another time, has the same tar except for mtimes,
    # so compare with SOURCE_DATE_EPOCH clamping all times to the past.
    assert one == tar_of(src)
    with tarfile.open(fileobj=io.BytesIO(one)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        names = [m.name for m in tf.getmembers()]
    assert names == sorted(names, key=lambda n: [os.fsencode(p) for p in n.split("/")])
    assert members["a.txt"].isreg() and members["a.txt"].mtime == 2_000_000_000
    assert members["b/hard"].islnk() and members["b/hard"].linkname == "a.txt"
    assert members["b/link"].issym() and members["b/link"].linkname == "../a.txt"
    assert members["b/exec"].mode == 0o4755
    assert members["fifo"].isfifo()
    assert members["ünïcode"].isreg()
    long_name = "d" * 90 + "/" + "e" * 90 + "/long-name-file"
    assert members[long_name].size == 1
    assert all(m.uname == "" and m.gname == "" for m in members.values())
    with tarfile.open(fileobj=io.BytesIO(one)) as tf:
        assert tf.extractfile("b/sub/data.bin").read() == (src / "b/sub/data.bin").read_bytes()  # type: ignore[union-attr]
    # GNU tar lists the archive and sees the directories with their trailing slash.
    listing = subprocess.run(["tar", "-tf", "-"], input=one, capture_output=True, check=True).stdout.decode()
    assert "b/sub/\n" in listing and long_name in listing


def test_source_date_epoch_clamps_times(tmp_path: Path) -> None:
    make_tree(tmp_path)
    tar = tar_of(tmp_path, source_date_epoch=1_000_000)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert {m.mtime for m in tf.getmembers()} == {1_000_000}
    os.utime(tmp_path / "b" / "exec", (5, 5))
    with tarfile.open(fileobj=io.BytesIO(tar_of(tmp_path, source_date_epoch=1_000_000))) as tf:
        assert tf.getmember("b/exec").mtime == 5


def test_prefix_exclude_and_owner_override(tmp_path: Path) -> None:
    make_tree(tmp_path)
    tar = tar_of(tmp_path, prefix="/app/", exclude=lambda rel: rel.startswith("b/sub"), uid=1000, gid=1001)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = tf.getnames()
        assert "app/a.txt" in names and "app/b/exec" in names
        assert not any(n.startswith("app/b/sub") for n in names)
        assert {(m.uid, m.gid) for m in tf.getmembers()} == {(1000, 1001)}


@needs_root
def test_devices_owners_and_capabilities(tmp_path: Path) -> None:
    os.mknod(tmp_path / "null", 0o666 | 0o020000, os.makedev(1, 3))
    f = tmp_path / "ping"
    f.write_bytes(b"\x7fELF")
    os.chown(f, 123, 456)
    # cap_net_raw+ep in the VFS v2 format, set with setcap's on-disk encoding.
    cap = bytes.fromhex("0000000202000000000000000000000000000000")
    os.setxattr(f, "security.capability", cap)
    tar = tar_of(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        dev = tf.getmember("null")
        assert dev.ischr() and (dev.devmajor, dev.devminor) == (1, 3)
        ping = tf.getmember("ping")
        assert (ping.uid, ping.gid) == (123, 456)
        assert ping.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == cap


def test_emitter_entries_and_parents() -> None:
    buf = io.BytesIO()
    em = TarEmitter(buf, source_date_epoch=100)
    em.ensure_parents("usr/local/bin/tool", EntryMeta(0o755, 0, 0, 50))
    em.add_bytes("usr/local/bin/tool", b"#!/bin/sh\necho hi\n", EntryMeta(0o755, 1, 2, 500))
    em.ensure_parents("usr/local/bin/other", EntryMeta(0o700))
    em.add_symlink("usr/bin/tool", "/usr/local/bin/tool", EntryMeta(0o777))
    em.add_whiteout("etc/old.conf")
    em.add_opaque("var/cache")
    em.close()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        got = [(m.name, m.type, m.mtime) for m in tf.getmembers()]
    assert got == [
        ("usr", tarfile.DIRTYPE, 50), ("usr/local", tarfile.DIRTYPE, 50), ("usr/local/bin", tarfile.DIRTYPE, 50),
        ("usr/local/bin/tool", tarfile.REGTYPE, 100), ("usr/bin/tool", tarfile.SYMTYPE, 0),
        ("etc/.wh.old.conf", tarfile.REGTYPE, 0), ("var/cache/.wh..wh..opq", tarfile.REGTYPE, 0),
    ]


def test_emitter_detects_shrinking_file() -> None:
    em = TarEmitter(io.BytesIO())
    with pytest.raises(Exception, match="shrank"):
        em.add_stream("f", io.BytesIO(b"abc"), 10, EntryMeta(0o644), source="/ctx/f")


def test_emitter_rejects_dotdot_names() -> None:
    em = TarEmitter(io.BytesIO())
    with pytest.raises(Exception, match=r"'\.\.'"):
        em.add_bytes("../etc/passwd", b"", EntryMeta(0o644))


def _tree(top: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            extra = Path(p).read_bytes() if os.path.isfile(p) and not os.path.islink(p) else (
                os.readlink(p) if os.path.islink(p) else None)
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, extra)
    return out


@pytest.fixture
def overlay(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A mounted kernel overlayfs over a small lower tree: yields (lower, upper, merged)."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "etc").mkdir()
    (lower / "etc" / "keep.conf").write_text("keep")
    (lower / "etc" / "delete.conf").write_text("delete")
    (lower / "replace" / "sub").mkdir(parents=True)
    (lower / "replace" / "old").write_text("old")
    (lower / "replace" / "sub" / "deep").write_text("deep")
    (lower / "modify").write_text("v1")
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off",
                        str(merged)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount overlayfs here: {r.stderr.strip()}")
    try:
        yield lower, upper, merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


@needs_root
def test_overlay_upper_becomes_oci_layer(overlay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from registry.tarsafe import apply_layer

    lower, upper, merged = overlay
    os.unlink(merged / "etc" / "delete.conf")
    subprocess.run(["rm", "-rf", str(merged / "replace")], check=True)
    (merged / "replace").mkdir()
    (merged / "replace" / "new").write_text("new")
    (merged / "modify").write_text("v2")
    (merged / "added").mkdir()
    os.symlink("/etc/keep.conf", merged / "added" / "link")
    expected = _tree(merged)
    subprocess.run(["umount", str(merged)], check=True)

    blob = io.BytesIO()
    with LayerWriter(blob, Compression("gzip")) as lw:
        write_overlay_upper_tar(upper, lw, source_date_epoch=1_700_000_000)
    tar = decompress_bytes(blob.getvalue())
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = tf.getnames()
        assert all(not k.startswith("SCHILY.xattr.trusted.") for m in tf.getmembers() for k in m.pax_headers)
    assert "etc/.wh.delete.conf" in names
    assert names.index("replace") < names.index("replace/.wh..wh..opq") < names.index("replace/new")
    assert "replace/old" not in names and "etc/keep.conf" not in names
    assert {"modify", "added", "added/link"} <= set(names)

    # Applying the layer on a copy of the lower tree gives what the merged mount showed.
    applied = tmp_path / "applied"
    subprocess.run(["cp", "-a", str(lower), str(applied)], check=True)
    assert lw.result is not None
    apply_layer(io.BytesIO(blob.getvalue()), applied, lw.result.media_type)
    assert _tree(applied) == expected

    # The same layer extracted in overlay form and stacked on the lower tree mounts to that view too.
    ovl_layer, work2, merged2 = tmp_path / "ovl-layer", tmp_path / "work2", tmp_path / "merged2"
    for d in (work2, merged2):
        d.mkdir()
    apply_layer(io.BytesIO(blob.getvalue()), ovl_layer, whiteouts="overlay")
    assert stat.S_ISCHR(os.lstat(ovl_layer / "etc" / "delete.conf").st_mode)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={ovl_layer}:{lower}", str(merged2)],
                   check=True)
    try:
        assert _tree(merged2) == expected
    finally:
        subprocess.run(["umount", str(merged2)], check=True)


def test_store_layer_commits_into_the_store(root: Path, tmp_path: Path) -> None:
    from registry.store import Store

    (tmp_path / "t").mkdir()
    make_tree(tmp_path / "t")
    store = Store(root)
    res = store_layer(store, lambda lw: write_tree_tar(tmp_path / "t", lw), Compression("zstd"))
    assert store.has_blob(res.digest)
    assert res.descriptor().media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    with store.open_blob(res.digest) as f:
        assert hashlib.sha256(decompress_bytes(f.read())).hexdigest() == res.diff_id.split(":")[1]
    # A failing producer stores nothing.
    before = set(store.blobs())

    def failing(lw: LayerWriter) -> None:
        lw.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store_layer(store, failing)
    assert set(store.blobs()) == before


def test_sink_errors_reach_the_producer() -> None:
    calls = 0

    def full_disk(b: bytes) -> None:
        nonlocal calls
        calls += 1
        raise OSError(28, "No space left on device")

    lw = LayerWriter(full_disk, Compression("uncompressed"))
    with pytest.raises(OSError, match="No space"):
        for _ in range(20):
            lw.write(os.urandom(1 << 20))
        lw.close()
    assert calls == 1


def _oci_layout(layout: Path, layers: list) -> None:  # type: ignore[type-arg]
    """Write an OCI image layout (tag `t`) whose layers are the given LayerWriter results+blobs."""
    import json

    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return "sha256:" + d

    for _, blob in layers:
        put(blob)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [r.diff_id for r, _ in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config),
                   "size": len(config)},
        "layers": [{"mediaType": r.media_type, "digest": r.digest, "size": r.size} for r, _ in layers]}).encode()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))


def _layer(write, compression: str):  # type: ignore[no-untyped-def]
    sink = io.BytesIO()
    with LayerWriter(sink, Compression(compression)) as lw:
        write(lw)
    return lw.result, sink.getvalue()


@needs_root
def test_umoci_and_skopeo_accept_our_layers(tmp_path: Path) -> None:
    """umoci unpack verifies every diffID and applies our whiteouts; skopeo decodes zstd layers."""
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "gone").write_text("x")
    (base / "etc" / "kept").write_text("k")
    (base / "opq").mkdir()
    (base / "opq" / "old").write_text("o")
    os.symlink("etc/kept", base / "link")

    def top(lw: LayerWriter) -> None:
        em = TarEmitter(lw)
        em.add_whiteout("etc/gone")
        em.add_dir("opq", EntryMeta(0o700))
        em.add_opaque("opq")
        em.add_bytes("opq/new", b"n", EntryMeta(0o600, 1000, 1000, 1))
        em.close()

    layers = [_layer(lambda lw: write_tree_tar(base, lw), "gzip"), _layer(top, "gzip")]
    layout = tmp_path / "layout"
    _oci_layout(layout, layers)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:t", str(bundle)], check=True,
                   capture_output=True)
    rootfs = bundle / "rootfs"
    assert sorted(os.listdir(rootfs / "etc")) == ["kept"]
    assert sorted(os.listdir(rootfs / "opq")) == ["new"]
    assert os.stat(rootfs / "opq" / "new").st_uid == 1000
    assert os.readlink(rootfs / "link") == "etc/kept"

    zlayout = tmp_path / "zlayout"
    _oci_layout(zlayout, [_layer(lambda lw: write_tree_tar(base, lw), "zstd")])
    out = tmp_path / "out"
    subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", "gzip", "--dest-compress",
                    f"oci:{zlayout}:t", f"oci:{out}:t"], check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--image", f"{out}:t", str(tmp_path / "bundle2")], check=True,
                   capture_output=True)
    assert (tmp_path / "bundle2" / "rootfs" / "etc" / "gone").read_text() == "x"


def test_header_fields_beyond_ustar_go_to_pax() -> None:
    from registry.tarwriter import encode_header

    buf = io.BytesIO()
    em = TarEmitter(buf)
    em.add_bytes("big-ids", b"x", EntryMeta(0o644, 3_000_000, 4_000_000, 2 ** 34))
    em.add_symlink("sym", "t" * 300 + "/ünï", EntryMeta(0o777))
    em.add_hardlink("x" * 120 + "/hl", "big-ids", EntryMeta(0o644))
    em.close()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        a, b, c = tf.getmembers()
    assert (a.uid, a.gid, a.mtime) == (3_000_000, 4_000_000, 2 ** 34)
    assert b.linkname == "t" * 300 + "/ünï"
    assert c.name == "x" * 120 + "/hl" and c.linkname == "big-ids"
    # A size past the 8 GiB ustar limit is carried by PAX (header only: no data follows here).
    hdr = encode_header(b"huge", b"0", size=9 << 30)
    assert b" size=9663676416\n" in hdr and len(hdr) == 3 * 512


def test_file_swapped_after_lstat_is_refused(tmp_path: Path) -> None:
    from registry.tarwriter import TarWriteError

    secret = tmp_path / "secret"
    secret.write_text("host secret")
    f = tmp_path / "f"
    f.write_text("context file")
    st = os.lstat(f)
    f.unlink()
    os.symlink(secret, f)
    with pytest.raises(TarWriteError, match="cannot read"):
        TarEmitter(io.BytesIO()).add_path("f", str(f), st=st)
    f.unlink()
    os.mkfifo(f)  # would block a plain open() forever
    with pytest.raises(TarWriteError, match="replaced"):
        TarEmitter(io.BytesIO()).add_path("f", str(f), st=st)


@needs_root
def test_overlay_renames_chmods_and_hardlinks(overlay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With redirect_dir=off a renamed lower dir is copied up whole; chmod and hard links copy up too."""
    from registry.tarsafe import apply_layer

    lower, upper, merged = overlay
    subprocess.run(["mv", str(merged / "replace"), str(merged / "moved")], check=True)
    os.chmod(merged / "etc" / "keep.conf", 0o600)
    os.chown(merged / "modify", 1234, 5678)
    os.link(merged / "etc" / "keep.conf", merged / "keep-link")
    expected = _tree(merged)
    subprocess.run(["umount", str(merged)], check=True)
    blob = io.BytesIO()
    with LayerWriter(blob, Compression("zstd")) as lw:
        write_overlay_upper_tar(upper, lw)
    applied = tmp_path / "applied"
    subprocess.run(["cp", "-a", str(lower), str(applied)], check=True)
    assert lw.result is not None
    apply_layer(io.BytesIO(blob.getvalue()), applied, lw.result.media_type)
    assert _tree(applied) == expected
    assert os.stat(applied / "keep-link").st_ino == os.stat(applied / "etc" / "keep.conf").st_ino


def test_same_tree_elsewhere_gives_the_same_layer_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(src), str(copy)], check=True)
    results = []
    for tree in (src, copy):
        with LayerWriter(io.BytesIO(), Compression("gzip")) as lw:
            write_tree_tar(tree, lw, source_date_epoch=1_700_000_000)
        results.append(lw.result)
    assert results[0] == results[1]
