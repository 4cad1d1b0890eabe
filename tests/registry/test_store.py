"""The local OCI image-layout store: blobs, tags, concurrency, gc roots and leases, verify."""
import gzip
import json
import multiprocessing
import os
import stat
import subprocess
import sys

import pytest

from registry import mediatypes as mt
from registry.digest import digest_bytes
from registry.errors import DigestMismatchError, NotFoundError, RegistryError
from registry.manifest import Descriptor, ImageConfig, Index, Manifest
from registry.platform import Platform, host_platform
from registry.store import IMAGE_NAME, REF_NAME, Store, default_root, open_store


def make_image(store: Store, content: bytes = b"hello", arch: str | None = None) -> Descriptor:
    """A one-layer image stored (not tagged); returns the manifest descriptor."""
    layer = gzip.compress(content, mtime=0)
    ldesc = store.put_blob(layer, mt.OCI_LAYER_GZIP)
    p = host_platform()
    cfg = ImageConfig(architecture=arch or p.architecture, os="linux",
                      variant=None if arch else p.variant, diff_ids=[digest_bytes(content)])
    cdesc = store.put_config(cfg)
    return store.put_manifest(Manifest(config=cdesc, layers=[ldesc]))


def test_layout_is_created(root):
    store = Store(root)
    layout = root / "images"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    assert store.list_images() == []
    Store(root)  # opening again keeps what is there
    assert (layout / "blobs" / "sha256").is_dir()


def test_open_store_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("PYBUILD_ROOT", str(tmp_path / "env"))
    assert default_root() == tmp_path / "env"
    assert open_store(str(tmp_path / "arg")).root == tmp_path / "arg"
    assert open_store(None).root == tmp_path / "env"
    monkeypatch.delenv("PYBUILD_ROOT")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "pybuild"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".local" / "share" / "pybuild"


def test_put_and_read_blobs(root):
    store = Store(root)
    desc = store.put_blob(b"abc", "text/plain")
    assert desc == Descriptor("text/plain", digest_bytes(b"abc"), 3)
    assert store.has_blob(desc.digest) and store.read_blob(desc.digest, verify=True) == b"abc"
    assert store.blob_path(desc.digest) == root / "images" / "blobs" / "sha256" / desc.digest[7:]
    assert not stat.S_IMODE(store.blob_path(desc.digest).stat().st_mode) & 0o222   # read-only
    with store.open_blob(desc.digest) as f:
        assert f.read() == b"abc"
    assert store.put_blob(b"abc") .digest == desc.digest      # idempotent
    missing = "sha256:" + "0" * 64
    with pytest.raises(NotFoundError, match=missing):
        store.read_blob(missing)
    src = root / "f.bin"
    src.write_bytes(b"file content")
    assert store.put_file(src).digest == digest_bytes(b"file content")
    moved = store.put_file(src, move=True, expected_digest=digest_bytes(b"file content"))
    assert not src.exists() and store.read_blob(moved.digest) == b"file content"


def test_put_file_move_across_filesystems(root):
    other = "/dev/shm"
    if not os.path.isdir(other) or os.stat(other).st_dev == os.stat(root).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp dir")
    src = os.path.join(other, f"pybuild-test-{os.getpid()}")
    with open(src, "wb") as f:
        f.write(b"elsewhere")
    store = Store(root)
    desc = store.put_file(src, move=True)
    assert not os.path.exists(src) and store.read_blob(desc.digest) == b"elsewhere"


def test_mismatched_blob_stores_nothing(root):
    store = Store(root)
    wrong = digest_bytes(b"other")
    with pytest.raises(DigestMismatchError, match="nothing was stored"):
        store.put_blob(b"data", expected_digest=wrong)
    with pytest.raises(DigestMismatchError, match=wrong):
        with store.blob_writer(expected_digest=wrong) as w:
            w.write(b"da")
            w.write(b"ta")
    with pytest.raises(DigestMismatchError, match="expected 10 bytes, got 4"):
        with store.blob_writer(expected_size=10) as w:
            w.write(b"data")
    assert list(store.blobs()) == []
    assert os.listdir(root / "images" / "ingest") == []


def test_writer_streams_and_aborts_on_error(root):
    store = Store(root)
    data = os.urandom(3 << 20)
    with store.blob_writer(media_type=mt.OCI_LAYER) as w:
        for i in range(0, len(data), 65536):
            w.write(data[i:i + 65536])
    assert w.descriptor == Descriptor(mt.OCI_LAYER, digest_bytes(data), len(data))
    with pytest.raises(RuntimeError):
        with store.blob_writer() as w2:
            w2.write(b"partial")
            raise RuntimeError("connection dropped")
    assert list(store.blobs()) == [w.digest]
    assert os.listdir(root / "images" / "ingest") == []


def test_resumable_writer_continues_after_failure(root):
    store = Store(root)
    data = os.urandom(200_000)
    d = digest_bytes(data)
    with pytest.raises(ConnectionError):
        with store.blob_writer(expected_digest=d, expected_size=len(data), resumable=True) as w:
            w.write(data[:120_000])
            raise ConnectionError("dropped")
    assert not store.has_blob(d)
    w = store.blob_writer(expected_digest=d, expected_size=len(data), resumable=True)
    assert w.resumable and w.offset == 120_000
    w.write(data[w.offset:])
    assert w.commit().digest == d and store.read_blob(d, verify=True) == data
    assert os.listdir(root / "images" / "ingest") == []
    # reset() starts over (a server that ignores Range sends the whole body again).
    d2 = digest_bytes(b"xyz")
    w = store.blob_writer(expected_digest=d2, resumable=True)
    w.write(b"garbage")
    w.reset()
    w.write(b"xyz")
    w.commit()
    assert store.read_blob(d2) == b"xyz"


def _fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(next(line for line in f if line.startswith("flags:")).split()[1], 8)


@pytest.mark.parametrize("resume_at", [0, 4096 * 3, 1000], ids=["fresh", "aligned-partial", "odd-partial"])
def test_aligned_writes_bypass_the_page_cache_then_fall_back(root, resume_at):
    """write_aligned puts whole pages at page-aligned offsets on disk with O_DIRECT (as the
    kernel reports for the open file); a short tail, an odd resumed offset or a plain write()
    turn it off; whatever the mix, the blob is the bytes written, in order."""
    from registry.fsutil import aligned_buffer
    store = Store(root)
    data = os.urandom(3 * (1 << 20) + 777)
    d = digest_bytes(data)
    if resume_at:
        with pytest.raises(ConnectionError):
            with store.blob_writer(expected_digest=d, expected_size=len(data), resumable=True) as w:
                w.write(data[:resume_at])
                raise ConnectionError("dropped")
    buf = aligned_buffer(1 << 20)
    w = store.blob_writer(expected_digest=d, expected_size=len(data), resumable=True)
    assert w.offset == resume_at
    seen, expected = [], []
    pos = w.offset
    while pos < len(data) - 100:
        piece = data[pos:pos + len(buf)]
        buf[:len(piece)] = piece
        w.write_aligned(buf[:len(piece)])
        seen.append(bool(_fd_flags(w._file.fileno()) & os.O_DIRECT))
        expected.append(pos % 4096 == 0 and len(piece) % 4096 == 0)
        pos += len(piece)
    if w._direct_refused and not resume_at % 4096:
        pytest.skip(f"the file system of {root} refuses O_DIRECT")
    w.write(data[pos:])
    assert not _fd_flags(w._file.fileno()) & os.O_DIRECT
    assert w.commit().digest == d and store.read_blob(d, verify=True) == data
    assert seen == expected
    assert seen.count(True) >= (0 if resume_at % 4096 else 2) and seen[-1] is False


def test_resumable_partial_with_wrong_content_is_discarded(root):
    store = Store(root)
    d = digest_bytes(b"good")
    w = store.blob_writer(expected_digest=d, resumable=True)
    w.write(b"bad!")
    with pytest.raises(DigestMismatchError):
        w.commit()
    w = store.blob_writer(expected_digest=d, resumable=True)
    assert w.offset == 0


def test_tag_resolve_untag(root):
    store = Store(root)
    desc = make_image(store)
    ref = store.tag("busybox", desc)
    assert str(ref) == "docker.io/library/busybox:latest"
    entry = store.read_index().manifests[0]
    assert entry.annotations == {REF_NAME: "busybox:latest", IMAGE_NAME: "docker.io/library/busybox:latest"}
    for name in ("busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox:latest",
                 "index.docker.io/busybox", f"busybox@{desc.digest}", desc.digest, desc.digest[7:19]):
        assert store.resolve(name).digest == desc.digest, name
    store.tag("localhost:5000/team/app:v1", desc)
    assert store.resolve("localhost:5000/team/app:v1").digest == desc.digest
    with pytest.raises(NotFoundError, match="'busybox:other' not found"):
        store.resolve("busybox:other")
    with pytest.raises(NotFoundError):
        store.resolve("localhost:5000/team/app")        # tag latest does not exist
    # Re-tagging moves the tag instead of duplicating it.
    desc2 = make_image(store, b"second")
    store.tag("busybox:latest", desc2)
    names = [r.name for r in store.list_images()]
    assert names == ["localhost:5000/team/app:v1", "busybox:latest"]
    assert store.resolve("busybox").digest == desc2.digest
    removed = store.untag("docker.io/library/busybox")
    assert removed.digest == desc2.digest
    with pytest.raises(NotFoundError):
        store.untag("busybox")
    with pytest.raises(NotFoundError, match="not in the store"):
        store.tag("x", Descriptor(mt.OCI_MANIFEST, "sha256:" + "5" * 64, 3))


def test_names_written_by_other_tools_resolve_literally(root):
    store = Store(root)
    desc = make_image(store)
    # skopeo copy ... oci:DIR:latest writes a bare tag as the ref.name.
    index = store.read_index()
    index.manifests.append(Descriptor(desc.media_type, desc.digest, desc.size, {REF_NAME: "latest"}))
    (root / "images" / "index.json").write_bytes(index.to_bytes())
    assert store.resolve("latest").digest == desc.digest
    assert store.list_images()[0].reference is not None
    assert store.gc().removed_blobs == 0


def _tag_many(args):
    root, worker, count = args
    store = Store(root)
    desc = store.resolve("base")
    for i in range(count):
        store.tag(f"w{worker}:t{i}", desc)
    return count


def test_concurrent_processes_never_lose_a_tag(root):
    store = Store(root)
    store.tag("base", make_image(store))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        done = sum(pool.map(_tag_many, [(str(root), w, 25) for w in range(4)]))
    names = {r.name for r in Store(root).list_images()}
    assert done == 100 and len(names) == 101
    assert all(f"w{w}:t{i}" in names for w in range(4) for i in range(25))


def test_gc_keeps_referenced_and_rooted_blobs(root):
    store = Store(root)
    kept = make_image(store, b"kept")
    gone = make_image(store, b"gone")
    store.tag("kept", kept)
    gone_manifest = store.get_manifest(gone.digest)
    unreferenced = {gone.digest, gone_manifest.config.digest, gone_manifest.layers[0].digest,
                    store.put_blob(b"loose").digest}
    rooted = store.put_blob(b"rooted by the cache")
    store.add_root("cache", [rooted.digest])
    before = set(store.blobs())
    result = store.gc()
    assert result.removed_blobs == 4 and result.kept_blobs == len(before) - 4
    assert set(store.blobs()) == before - unreferenced
    assert rooted.digest in set(store.blobs()) and store.verify() == []
    store.remove_root("cache")
    store.remove("kept")
    assert list(store.blobs()) == []


def test_lease_protects_untagged_blobs_from_a_concurrent_gc(root):
    store = Store(root)
    with store.lease():
        d = store.put_blob(b"in progress")
        # gc from another process must keep it while this process holds the lease
        out = subprocess.run([sys.executable, "-c",
                              "import sys; from registry.store import Store; print(Store(sys.argv[1]).gc().removed_blobs)",
                              str(root)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "0" and store.has_blob(d.digest)
    assert store.gc().removed_blobs == 1
    assert os.listdir(root / "images" / "leases") == []


def test_lease_covers_blobs_found_existing(root):
    store = Store(root)
    d = store.put_blob(b"already here, not tagged")
    with store.lease():
        assert store.has_blob(d.digest)         # a pull skipping an existing blob
        assert store.put_blob(b"already here, not tagged").digest == d.digest
        out = subprocess.run([sys.executable, "-c",
                              "import sys; from registry.store import Store; print(Store(sys.argv[1]).gc().removed_blobs)",
                              str(root)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "0"
    assert store.gc().removed_blobs == 1


def test_dead_lease_is_ignored(root):
    store = Store(root)
    d = store.put_blob(b"orphan")
    (root / "images" / "leases" / "12345-dead").write_text(d.digest + "\n")   # nobody holds its flock
    assert store.gc().removed_blobs == 1
    assert os.listdir(root / "images" / "leases") == []


def test_verify_reports_corruption_and_missing_blobs(root):
    store = Store(root)
    desc = make_image(store)
    store.tag("img", desc)
    assert store.verify() == []
    manifest = store.get_manifest(desc.digest)
    layer_path = store.blob_path(manifest.layers[0].digest)
    os.chmod(layer_path, 0o644)
    layer_path.write_bytes(b"corrupted")
    cfg_path = store.blob_path(manifest.config.digest)
    os.unlink(cfg_path)
    problems = store.verify()
    assert any("corrupt" in p and manifest.layers[0].digest in p for p in problems)
    assert any("is 9 bytes" in p for p in problems)
    assert any("missing" in p and manifest.config.digest in p for p in problems)
    with pytest.raises(DigestMismatchError, match="corrupt"):
        store.read_blob(manifest.layers[0].digest, verify=True)


def test_multi_platform_index(root):
    store = Store(root)
    host = host_platform()
    other = "s390x" if host.architecture != "s390x" else "amd64"
    mine = make_image(store, b"mine")
    theirs = make_image(store, b"theirs", arch=other)
    index = Index(manifests=[
        Descriptor(theirs.media_type, theirs.digest, theirs.size, platform=Platform("linux", other)),
        Descriptor(mine.media_type, mine.digest, mine.size, platform=Platform(host.os, host.architecture, host.variant)),
    ])
    store.tag("multi", store.put_manifest(index))
    desc, manifest = store.image_manifest("multi")
    assert desc.digest == mine.digest and isinstance(manifest, Manifest)
    desc, _ = store.image_manifest("multi", Platform("linux", other))
    assert desc.digest == theirs.digest
    assert store.image_config("multi", Platform("linux", other)).architecture == other
    img = store.image("multi")
    assert img.tagged.media_type == mt.OCI_INDEX and img.descriptor.digest == mine.digest
    assert img.config.diff_ids == [digest_bytes(b"mine")]
    with pytest.raises(NotFoundError, match="no image for platform linux/mips64le"):
        store.image_manifest("multi", Platform("linux", "mips64le"))
    store.tag("single", theirs)
    with pytest.raises(NotFoundError, match=f"is for linux/{other}"):
        store.image_manifest("single", host)
    assert store.image_manifest("single")[0].digest == theirs.digest   # no platform asked: as is
    assert store.verify() == []
    # One platform removed from the index: its manifest stays while "single" still names it...
    assert store.remove_platform("multi", Platform("linux", other)).digest == theirs.digest
    assert store.has_blob(theirs.digest)
    # ... and goes, with its config and layer at the next gc, once nothing else does.
    store.untag("single")
    store.remove_platform("multi", Platform("linux", other))
    assert not store.has_blob(theirs.digest)
    store.gc()
    assert store.image_manifest("multi")[0].digest == mine.digest and store.verify() == []
    assert store.image_manifest("multi", any_present=True)[0].digest == mine.digest
    with pytest.raises(NotFoundError, match=f"holds no linux/{other} image of it"):
        store.remove_platform("multi", Platform("linux", other))
    with pytest.raises(RegistryError, match="not a multi-platform image"):
        store.remove_platform(mine.digest, host)
    # Removing the index keeps nothing else alive.
    store.remove("multi")
    assert list(store.blobs()) == []


def test_bad_inputs_have_clear_errors(root):
    store = Store(root)
    with pytest.raises(RegistryError, match="unsupported digest algorithm .md5."):
        store.blob_writer(expected_digest="md5:abc")
    with pytest.raises(RegistryError, match="invalid gc root name"):
        store.add_root("../x", [])


def test_two_resumable_writers_of_one_blob_do_not_collide(root):
    store = Store(root)
    data = b"same blob from two downloads"
    d = digest_bytes(data)
    first = store.blob_writer(expected_digest=d, resumable=True)
    second = store.blob_writer(expected_digest=d, resumable=True)   # partial file is taken: private temp
    assert first.resumable and not second.resumable
    first.write(data[:10])
    second.write(data)
    assert second.commit().digest == d
    first.write(data[10:])
    assert first.commit().digest == d and store.read_blob(d, verify=True) == data
    assert os.listdir(root / "images" / "ingest") == []


def test_killed_writer_leaves_no_blob_and_no_index_damage(root):
    store = Store(root)
    store.tag("kept", make_image(store))
    code = ("import sys, os, time; from registry.store import Store\n"
            "s = Store(sys.argv[1]); w = s.blob_writer()\n"
            "w.write(b'x' * 100000); w._file.flush(); print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait()
    assert len(list(store.blobs())) == 3 and store.verify() == []
    leftovers = os.listdir(root / "images" / "ingest")
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")
    assert store.resolve("kept")
