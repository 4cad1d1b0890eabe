"""The local image store: an OCI image layout under `<root>/images`.

Layout (the standard OCI image layout, plus a few private entries other tools ignore):

    <root>/images/oci-layout          {"imageLayoutVersion": "1.0.0"}
    <root>/images/index.json          tagged images (descriptors with ref.name annotations)
    <root>/images/blobs/sha256/<hex>  content-addressed blobs, read-only, written atomically
    <root>/images/ingest/             blobs being written (temp files; partial downloads)
    <root>/images/roots/<name>        digests other components keep alive (one per line)
    <root>/images/leases/<id>         digests written by a live process (flock-held)
    <root>/images/.lock               flock serializing index.json updates and gc
    <root>/images/.gc.lock            flock: blob publishing (shared) against gc (exclusive)

Tags: every entry of index.json carries `org.opencontainers.image.ref.name` = the familiar
reference (`busybox:latest`, `localhost:5000/app:v1`, `busybox@sha256:...`) and
`io.containerd.image.name` = the fully qualified one (`docker.io/library/busybox:latest`).
The familiar form is what skopeo and umoci match exactly, so
`skopeo inspect oci:<root>/images:busybox:latest` and
`umoci unpack --image <root>/images:busybox:latest BUNDLE` find pybuild's images.

Other parts of pybuild keep blobs alive across `gc` with `add_root(name, digests)` (files under
roots/), or for the duration of work with `with store.lease():` (blobs written meanwhile by this
Store are protected from a concurrent gc in any process).
"""
from __future__ import annotations

import errno
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from . import mediatypes as mt
from .digest import CHUNK, InvalidDigestError, digest_bytes, is_digest, new_hasher, parse_digest
from .errors import DigestMismatchError, NotFoundError, RegistryError
from .fsutil import PAGE, FileLock, atomic_write, create_if_absent, fsync_dir, private_dir, set_direct, tighten_dir
from .manifest import (Descriptor, ImageConfig, Index, InvalidManifestError, Manifest, dump_json,
                       parse_manifest)
from .platform import Platform, host_platform, platform_matches
from .reference import Reference, parse_reference

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
IMAGES_DIR = "images"
OCTET_STREAM = "application/octet-stream"
# Ingest files untouched this long belong to a dead process and gc removes them.
STALE_INGEST_SECONDS = 24 * 3600
# Directories directly under a root that pybuild creates; opening a store tightens them to
# 0700 along with the root itself (stores made before that rule were 0755).
ROOT_SUBDIRS = ("images", "layers", "l", "snapshots", "tmp", "containers", "cache", "cachemounts")
_MAX_SNIFF = 8 << 20


def _unique_name() -> str:
    """32 random hex digits for a temporary file name (the `uuid` module would import `platform`,
    a noticeable part of every command's start-up)."""
    return os.urandom(16).hex()


def default_root() -> Path:
    """$PYBUILD_ROOT, else $XDG_DATA_HOME/pybuild, else ~/.local/share/pybuild."""
    env = os.environ.get("PYBUILD_ROOT")
    if env:
        return Path(env).absolute()    # runc and overlay mount options need absolute paths
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "pybuild"


def open_store(root_arg: str | os.PathLike | None = None) -> "Store":
    """The store at --root if given, else at default_root()."""
    return Store(Path(root_arg).absolute() if root_arg else default_root())


@dataclass
class ImageRecord:
    """One tagged image: its ref.name annotation, the parsed reference (None if it does not
    parse, e.g. a bare `latest` written by another tool) and the descriptor it points to."""

    name: str
    reference: Reference | None
    descriptor: Descriptor


@dataclass
class LocalImage:
    """An image resolved for one platform: the tagged descriptor (maybe an index), the
    platform manifest's descriptor, the manifest and the config."""

    name: str
    tagged: Descriptor
    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig


@dataclass
class GCResult:
    """What a garbage collection did."""

    removed_blobs: int = 0
    freed_bytes: int = 0
    kept_blobs: int = 0
    removed_ingest: int = 0


class BlobWriter:
    """Writes one blob into the store while hashing it; commit() verifies and publishes it.

    Use as `with store.blob_writer(expected_digest=d) as w: w.write(chunk)`: leaving the block
    normally commits, an exception aborts (nothing stored). A resumable writer (needs
    expected_digest) keeps its partial file across attempts and processes: `offset` says how
    many bytes are already there (continue with an HTTP Range from it) and `reset()` starts over.
    """

    def __init__(self, store: "Store", expected_digest: str | None, expected_size: int | None,
                 media_type: str, resumable: bool, defer_sync: bool = False):
        self.store = store
        self.defer_sync = defer_sync
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self.media_type = media_type
        algorithm = parse_digest(expected_digest).algorithm if expected_digest else "sha256"
        self._hasher = new_hasher(algorithm)
        self._algorithm = algorithm
        self._lock: FileLock | None = None
        self.descriptor: Descriptor | None = None
        self._size = 0
        self._direct = False            # O_DIRECT is on for the file (write_aligned)
        self._direct_refused = False    # the file system refused it: never ask again
        ingest = store.layout / "ingest"
        self.resumable = False
        if resumable and expected_digest:
            d = parse_digest(expected_digest)
            path = ingest / f"{d.algorithm}-{d.hex}.partial"
            lock = FileLock(ingest / f"{d.algorithm}-{d.hex}.lock")
            # If another writer holds this digest's partial file, fall back to a private temp file.
            if lock.acquire(blocking=False):
                self._lock = lock
                self.resumable = True
                self.path = path
                self._file = open(path, "a+b")
                self._file.seek(0)
                while True:
                    chunk = self._file.read(CHUNK)
                    if not chunk:
                        break
                    self._hasher.update(chunk)
                    self._size += len(chunk)
                if expected_size is not None and self._size > expected_size:
                    self.reset()
        if not self.resumable:
            self.path = ingest / f"{_unique_name()}.tmp"
            self._file = open(self.path, "xb")

    @property
    def offset(self) -> int:
        """Bytes written so far (including those of an earlier attempt when resuming)."""
        return self._size

    @property
    def digest(self) -> str | None:
        """The committed blob's digest (None before commit)."""
        return self.descriptor.digest if self.descriptor else None

    def write(self, data: bytes) -> int:
        """Append `data`, hashing it."""
        if self._direct:
            self._set_direct(False)
        try:
            self._file.write(data)
        except OSError as exc:
            self._write_failed(exc)
        self._hasher.update(data)
        self._size += len(data)
        return len(data)

    def write_aligned(self, view: memoryview) -> int:
        """Append `view`, which must start at a page-aligned address (fsutil.aligned_buffer),
        hashing it. Whole pages at a page-aligned offset are written with O_DIRECT: the bytes of
        a download then take no page-cache pages, whose allocation is most of what a buffered
        write of fresh data costs here (see benchmarks/registry); a tail, a resumed offset or a
        file system without O_DIRECT go through the page cache. Committing fsyncs either way."""
        n = len(view)
        direct = not self._direct_refused and n % PAGE == 0 and self._size % PAGE == 0
        if direct != self._direct:
            self._set_direct(direct)
        fd = self._file.fileno()
        done = 0
        try:
            while done < n:
                try:
                    done += os.write(fd, view[done:])
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self._direct:
                        raise
                    # Alignment stricter than a page (or no O_DIRECT after all): the page cache.
                    self._direct_refused = True
                    self._set_direct(False)
        except OSError as exc:
            self._write_failed(exc)
        self._hasher.update(view)
        self._size += n
        return n

    def _set_direct(self, on: bool) -> None:
        self._file.flush()              # nothing buffered may land after a direct write
        if set_direct(self._file.fileno(), on):
            self._direct = on
        else:
            self._direct_refused = True
            self._direct = False

    def _write_failed(self, exc: OSError) -> None:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        # A full disk: even a resumable partial blob goes, or the disk would stay full.
        self._discard()
        blob = f"blob {self.expected_digest}" if self.expected_digest else "a blob"
        raise RegistryError(f"no space left on device writing {blob} into "
                            f"{self.store.layout} after {self._size} bytes: free some space (e.g. "
                            "`pybuild store gc`) or use another --root; the partial blob was removed") from None

    def reset(self) -> None:
        """Discard what was written and start from byte 0 (e.g. the server ignored a Range)."""
        self._file.seek(0)
        self._file.truncate()
        self._hasher = new_hasher(self._algorithm)
        self._size = 0

    def commit(self) -> Descriptor:
        """Verify size and digest, then move the blob into place atomically.

        On a mismatch the data is deleted and DigestMismatchError raised: nothing is stored.
        """
        if self.descriptor is not None:
            return self.descriptor
        digest = f"{self._algorithm}:{self._hasher.hexdigest()}"
        try:
            if self.expected_size is not None and self._size != self.expected_size:
                raise DigestMismatchError(
                    f"blob {self.expected_digest or digest}: expected {self.expected_size} bytes, got {self._size}; "
                    "nothing was stored")
            if self.expected_digest is not None and digest != self.expected_digest:
                raise DigestMismatchError(
                    f"blob content does not match its digest: expected {self.expected_digest}, got {digest} "
                    f"({self._size} bytes); nothing was stored")
            self._file.flush()
            os.fsync(self._file.fileno())
        except BaseException:
            self._discard()
            raise
        self._file.close()
        self.store._publish(self.path, digest, defer_sync=self.defer_sync)
        if self._lock is not None:
            try:
                os.unlink(self._lock.path)
            except FileNotFoundError:
                pass
        self._release()
        self.descriptor = Descriptor(self.media_type, digest, self._size)
        return self.descriptor

    def abort(self) -> None:
        """Stop without storing; a resumable writer keeps its partial file for a later attempt."""
        if self.descriptor is not None:
            return
        if self.resumable:
            self._file.close()
            self._release()
        else:
            self._discard()

    def _discard(self) -> None:
        self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class _Lease:
    """A flock-held file listing digests a live process still needs."""

    def __init__(self, leases_dir: Path):
        self.path = leases_dir / f"{os.getpid()}-{_unique_name()}"
        self._lock = FileLock(self.path)
        self._lock.acquire()
        self._mutex = threading.Lock()

    def add(self, digest: str) -> None:
        with self._mutex:
            os.write(self._lock.fd, (digest + "\n").encode())

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._lock.release()


class Store:
    """Content-addressed blobs and tagged images in an OCI image layout under `<root>/images`.

    Safe for several threads and processes at once: blobs are published by atomic rename,
    index.json is rewritten atomically under an flock on `images/.lock`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.layout = self.root / IMAGES_DIR
        self._leases: list[_Lease] = []
        self._leases_mutex = threading.Lock()
        self._unsynced: set[Path] = set()     # blob directories with entries not yet fsynced
        # The root is pybuild's alone (as Docker's and podman's are): 0700, also when the user
        # named an existing directory with --root, so nothing extracted under it (setuid-root
        # files, device nodes) is reachable by another user.
        if not os.path.isdir(self.root):
            private_dir(self.root)
        tighten_dir(self.root)
        for sub in ROOT_SUBDIRS:
            tighten_dir(self.root / sub)
        for sub in ("", "blobs", "blobs/sha256", "ingest", "roots", "leases"):
            if not os.path.isdir(self.layout / sub):     # a stat is cheaper than a failing mkdir
                private_dir(self.layout / sub)
        # Each file is fsynced; their directory once for both.
        made = create_if_absent(self.layout / "oci-layout", dump_json({"imageLayoutVersion": "1.0.0"}),
                                sync_dir=False)
        made = create_if_absent(self.layout / "index.json", Index().to_bytes(), sync_dir=False) or made
        if made:
            fsync_dir(self.layout)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- blobs ---------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """Where the blob with `digest` lives (whether or not it exists)."""
        d = parse_digest(digest)
        return self.layout / "blobs" / d.algorithm / d.hex

    def has_blob(self, digest: str) -> bool:
        """True if the blob is in the store.

        Inside `lease()` a blob found here is also added to the lease, so skipping a download
        because the blob exists is safe against a concurrent gc.
        """
        path = self.blob_path(digest)
        if not self._leases:
            return path.is_file()
        with FileLock(self.layout / ".gc.lock", shared=True):
            if not path.is_file():
                return False
            self._note(digest)
            return True

    def blob_size(self, digest: str) -> int:
        """Size in bytes of a stored blob (NotFoundError if absent)."""
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise self._missing(digest) from None

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a stored blob for reading (NotFoundError if absent)."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise self._missing(digest) from None

    def read_blob(self, digest: str, verify: bool = False) -> bytes:
        """A stored blob's bytes; with verify=True check them against the digest."""
        with self.open_blob(digest) as f:
            data = f.read()
        if verify and digest_bytes(data, parse_digest(digest).algorithm) != digest:
            raise DigestMismatchError(f"stored blob {digest} is corrupt (its content hashes differently); "
                                      f"delete {self.blob_path(digest)} and pull the image again")
        return data

    def blob_writer(self, expected_digest: str | None = None, expected_size: int | None = None,
                    media_type: str = OCTET_STREAM, resumable: bool = False,
                    defer_sync: bool = False) -> BlobWriter:
        """A writer that hashes while writing and publishes the blob on commit (see BlobWriter).

        The blob's file is fsynced before it is published; its directory entry too, unless
        `defer_sync`: then the directory is fsynced once for a whole batch of blobs, by `sync()`,
        which every index.json or gc-root write runs first (so nothing durable names a blob
        whose entry is not), and which the caller runs when its batch ends."""
        if expected_digest is not None:
            try:
                parse_digest(expected_digest)
            except InvalidDigestError as exc:
                raise RegistryError(f"cannot store blob: {exc}") from None
        return BlobWriter(self, expected_digest, expected_size, media_type, resumable, defer_sync)

    def put_blob(self, data: bytes, media_type: str = OCTET_STREAM, expected_digest: str | None = None,
                 defer_sync: bool = False) -> Descriptor:
        """Store bytes (verified against expected_digest if given) and return their descriptor."""
        algorithm = parse_digest(expected_digest).algorithm if expected_digest else "sha256"
        digest = digest_bytes(data, algorithm)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatchError(f"blob content does not match its digest: expected {expected_digest}, "
                                      f"got {digest} ({len(data)} bytes); nothing was stored")
        if self.has_blob(digest):
            return Descriptor(media_type, digest, len(data))
        with self.blob_writer(expected_digest=digest, media_type=media_type, defer_sync=defer_sync) as w:
            w.write(data)
        return w.descriptor

    def put_file(self, path: str | os.PathLike, media_type: str = OCTET_STREAM,
                 expected_digest: str | None = None, move: bool = False) -> Descriptor:
        """Store a file's content; with move=True the file itself is renamed into the store
        (it must be on the same filesystem) instead of copied."""
        path = Path(path)
        if move:
            algorithm = parse_digest(expected_digest).algorithm if expected_digest else "sha256"
            h = new_hasher(algorithm)
            size = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                os.fsync(f.fileno())
            digest = f"{algorithm}:{h.hexdigest()}"
            if expected_digest is not None and digest != expected_digest:
                raise DigestMismatchError(f"{path}: expected {expected_digest}, got {digest}; nothing was stored")
            try:
                self._publish(path, digest)
                return Descriptor(media_type, digest, size)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            # Another filesystem: copy, then drop the original as a move would have.
            desc = self.put_file(path, media_type, digest)
            os.unlink(path)
            return desc
        with open(path, "rb") as f, self.blob_writer(expected_digest, media_type=media_type) as w:
            while chunk := f.read(CHUNK):
                w.write(chunk)
        return w.descriptor

    def blobs(self) -> Iterator[str]:
        """Digests of all stored blobs."""
        base = self.layout / "blobs"
        for algdir in sorted(base.iterdir()) if base.is_dir() else ():
            if algdir.is_dir():
                for f in algdir.iterdir():
                    if not f.name.startswith("."):
                        yield f"{algdir.name}:{f.name}"

    def sync(self) -> None:
        """Fsync the blob directories that blobs published with `defer_sync` were renamed into."""
        with self._leases_mutex:
            dirs, self._unsynced = self._unsynced, set()
        for d in dirs:
            fsync_dir(d)

    def _sync_blob_dirs(self) -> None:
        """Before index.json or a gc root names blobs: make every blob entry durable, also those
        another process published with `defer_sync` and has not synced yet (one fsync)."""
        with self._leases_mutex:
            self._unsynced.add(self.layout / "blobs" / "sha256")
        self.sync()

    def _publish(self, tmp: Path, digest: str, defer_sync: bool = False) -> None:
        """Rename a verified temp file to its content address (keeping an existing copy)."""
        target = self.blob_path(digest)
        if not target.parent.is_dir():
            private_dir(target.parent)       # another algorithm's directory (sha512)
        # Shared against gc's exclusive hold: a blob appears (and lands in a lease) either
        # before a gc reads the leases or after it has finished sweeping, never in between.
        with FileLock(self.layout / ".gc.lock", shared=True):
            self._note(digest)
            if target.exists():
                os.unlink(tmp)
                return
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        if defer_sync:
            with self._leases_mutex:
                self._unsynced.add(target.parent)
        else:
            fsync_dir(target.parent)

    def _missing(self, digest: str) -> NotFoundError:
        return NotFoundError(f"blob {digest} is not in the store at {self.layout}")

    # -- documents -----------------------------------------------------------------------------
    def put_manifest(self, doc: Manifest | Index | bytes, media_type: str | None = None) -> Descriptor:
        """Store a manifest or index (exact bytes if given bytes) and return its descriptor."""
        if isinstance(doc, bytes):
            data = doc
            if media_type is None:
                media_type = parse_manifest(data).media_type
        else:
            data = doc.to_bytes()
            media_type = media_type or doc.media_type
        return self.put_blob(data, media_type)

    def get_manifest(self, digest: str) -> Manifest | Index:
        """Read a stored manifest or index."""
        return parse_manifest(self.read_blob(digest), where=f"manifest {digest}")

    def put_config(self, config: ImageConfig, media_type: str = mt.OCI_CONFIG) -> Descriptor:
        """Store an image config and return its descriptor."""
        return self.put_blob(config.to_bytes(), media_type)

    def get_config(self, digest: str) -> ImageConfig:
        """Read a stored image config."""
        return ImageConfig.from_bytes(self.read_blob(digest), where=f"image config {digest}")

    def descriptor_of(self, digest: str) -> Descriptor:
        """A descriptor for a stored blob, with the media type read from a manifest's JSON."""
        size = self.blob_size(digest)
        media_type = OCTET_STREAM
        if size <= _MAX_SNIFF:
            try:
                media_type = self.get_manifest(digest).media_type
            except InvalidManifestError:
                pass
        return Descriptor(media_type, digest, size)

    # -- index.json and tags -------------------------------------------------------------------
    def _index_path(self) -> Path:
        return self.layout / "index.json"

    def read_index(self) -> Index:
        """The current index.json (readers need no lock: writers replace it atomically)."""
        return Index.from_bytes(self._index_path().read_bytes(), where=str(self._index_path()))

    @contextmanager
    def _index_update(self) -> Iterator[Index]:
        with FileLock(self.layout / ".lock"):
            index = self.read_index()
            yield index
            self._sync_blob_dirs()
            atomic_write(self._index_path(), index.to_bytes())

    def tag(self, name: str | Reference, descriptor: Descriptor) -> Reference:
        """Point `name` (normalized; default tag latest) at a stored manifest or index.

        Replaces an existing tag of the same name. Returns the normalized reference.
        """
        ref = name if isinstance(name, Reference) else parse_reference(name)
        if not self.has_blob(descriptor.digest):
            raise NotFoundError(f"cannot tag {ref.familiar}: {descriptor.digest} is not in the store")
        annotations = {k: v for k, v in descriptor.annotations.items() if k not in (REF_NAME, IMAGE_NAME)}
        annotations[REF_NAME] = ref.familiar
        annotations[IMAGE_NAME] = str(ref)
        entry = Descriptor(descriptor.media_type or self.descriptor_of(descriptor.digest).media_type,
                           descriptor.digest, descriptor.size, annotations, descriptor.platform,
                           list(descriptor.urls), descriptor.artifact_type)
        with self._index_update() as index:
            # The image's untagged (<none>) entry goes once it has a name, as in Docker.
            index.manifests = [d for d in index.manifests if not self._entry_is(d, ref)
                               and not (d.digest == descriptor.digest and _untagged(d))]
            index.manifests.append(entry)
        return ref

    def untag(self, name: str | Reference) -> Descriptor:
        """Remove a tag (the blobs stay until gc). NotFoundError if there is no such tag."""
        with self._index_update() as index:
            try:
                entry = self._find(index, name)
            except NotFoundError:
                # An image ID, digest or prefix: like `docker rmi ID`, it removes the image when
                # one name (or none) holds it.
                entry = self.resolve(name)
                holders = [d for d in index.manifests if d.digest == entry.digest]
                if sum(not _untagged(d) for d in holders) > 1:
                    raise RegistryError(f"image {name} is tagged {len(holders)} times "
                                        f"({', '.join(d.annotations.get(REF_NAME, '') for d in holders)}): "
                                        "remove it by name")
                index.manifests = [d for d in index.manifests if d.digest != entry.digest]
                return entry
            index.manifests = [d for d in index.manifests if d is not entry]
        return entry

    def remove(self, name: str | Reference) -> GCResult:
        """Untag an image and collect the blobs nothing else uses (like `docker rmi`)."""
        self.untag(name)
        return self.gc()

    def remove_platform(self, name: str | Reference, platform: Platform) -> Descriptor:
        """Drop the `platform` image from the multi-platform image (index) `name`, as `docker rmi
        --platform`: the index stays tagged, listing it as absent; the image's manifest goes unless
        another tag, index or gc root still uses it, and its config and layers with the next gc.
        Returns the image manifest's descriptor."""
        from .image import RawManifest, select_path
        desc = self.resolve(name)
        top = RawManifest(desc, b"", self.get_manifest(desc.digest))
        if not isinstance(top.doc, Index):
            raise RegistryError(f"image {name} is not a multi-platform image (index): remove it without --platform")

        def read(child: Descriptor) -> RawManifest:
            if not self.has_blob(child.digest):
                raise NotFoundError(f"image {name}: the store holds no {platform} image of it ({child.digest}); "
                                    "nothing to remove")
            return RawManifest(child, b"", self.get_manifest(child.digest))
        image = select_path(read, top, platform, f"image {name}")[-1]
        with FileLock(self.layout / ".lock"), FileLock(self.layout / ".gc.lock"):
            if image.digest not in self.reachable(skip=[desc.digest]):
                try:
                    os.unlink(self.blob_path(image.digest))
                except FileNotFoundError:
                    pass
        return image.descriptor

    def resolve(self, name: str | Reference) -> Descriptor:
        """The descriptor a name points to.

        Accepts familiar and full names (`busybox`, `docker.io/library/busybox:latest`), names
        written by other tools (matched exactly), `name@digest` and `digest` of a stored
        manifest, and a hex prefix (>= 4 digits) of a tagged manifest's digest.
        """
        index = self.read_index()
        try:
            return self._find(index, name)
        except NotFoundError:
            pass
        text = str(name)
        ref = name if isinstance(name, Reference) else _try_parse(text)
        digest = ref.digest if ref is not None else None
        if digest is None and is_digest(text):
            digest = text
        if digest is not None:
            # An image ID (the config digest, what `docker images` shows) names the stored image
            # whose config it is; else a stored manifest or index is named by its own digest.
            by_id = [d for d in index.manifests if self.image_id(d) == digest]
            if by_id:
                return by_id[-1]
            if self.has_blob(digest):
                return self.descriptor_of(digest)
        if isinstance(name, str) and len(text) >= 4 and all(c in "0123456789abcdef" for c in text.removeprefix("sha256:")):
            prefix = text if text.startswith("sha256:") else "sha256:" + text
            hits = {d.digest: d for d in index.manifests
                    if d.digest.startswith(prefix) or (self.image_id(d) or "").startswith(prefix)}
            if len(hits) == 1:
                return next(iter(hits.values()))
            if len(hits) > 1:
                def shown(d: Descriptor) -> str:
                    iid = (self.image_id(d) or d.digest).removeprefix("sha256:")[:12]
                    names = sorted(e.annotations.get(REF_NAME) or "<none>" for e in index.manifests
                                   if e.digest == d.digest)
                    return f"{iid} ({', '.join(names)})"
                raise RegistryError(f"image ID prefix {text!r} is ambiguous: it matches "
                                    f"{'; '.join(sorted(map(shown, hits.values())))}; give more digits")
        raise NotFoundError(f"image {text!r} not found in the store at {self.root} "
                            "(see `pybuild images`; pull, build or import it first)")

    def lookup(self, name: str | Reference) -> Descriptor | None:
        """The descriptor tagged `name` (as resolve, but names only, and None when untagged)."""
        try:
            return self._find(self.read_index(), name)
        except NotFoundError:
            return None

    def tag_of(self, name: str | Reference) -> Reference | None:
        """The reference ``name`` is when it names a tag in the index; None for an image ID, a
        digest or an ID prefix (what `docker save ID` writes without RepoTags)."""
        try:
            self._find(self.read_index(), name)
        except NotFoundError:
            return None
        ref = name if isinstance(name, Reference) else _try_parse(name)
        return ref if ref is not None and ref.digest is None else None

    def image_id(self, desc: Descriptor) -> str | None:
        """The image ID of an index entry: the digest of its config (for an index, the config of
        this host's platform, else of the one platform the store holds: what `images` shows), as
        Docker's IMAGE ID. None when it cannot be read."""
        try:
            return self._image_of(desc, f"image {desc.digest}", None, True).doc.config.digest  # type: ignore[union-attr]
        except (RegistryError, OSError, AttributeError):
            return None

    def add_untagged(self, descriptor: Descriptor) -> None:
        """Keep an image without a name (an untagged build, listed as ``<none>``), unless an
        entry already holds it."""
        entry = Descriptor(descriptor.media_type or self.descriptor_of(descriptor.digest).media_type,
                           descriptor.digest, descriptor.size, {}, descriptor.platform)
        with self._index_update() as index:
            if not any(d.digest == descriptor.digest for d in index.manifests):
                index.manifests.append(entry)

    def list_images(self) -> list[ImageRecord]:
        """Every stored image (tagged, or untagged with an empty name), in index.json order."""
        out = []
        for d in self.read_index().manifests:
            name = d.annotations.get(REF_NAME, "")
            full = d.annotations.get(IMAGE_NAME)
            out.append(ImageRecord(name, _try_parse(full) if full else _try_parse(name), d))
        return out

    def _find(self, index: Index, name: str | Reference) -> Descriptor:
        if isinstance(name, str):
            for d in index.manifests:      # names written by other tools, taken literally
                if d.annotations.get(REF_NAME) == name:
                    return d
            ref = _try_parse(name)
        else:
            ref = name
        if ref is not None:
            for d in reversed(index.manifests):
                if self._entry_is(d, ref):
                    return d
        raise NotFoundError(f"image {str(name)!r} not found in the store at {self.root} "
                            "(see `pybuild images`; pull, build or import it first)")

    @staticmethod
    def _entry_is(d: Descriptor, ref: Reference) -> bool:
        full = d.annotations.get(IMAGE_NAME)
        have = _try_parse(full) if full else None
        if have is None:
            name = d.annotations.get(REF_NAME)
            have = _try_parse(name) if name else None
        return have == ref

    # -- reading images ------------------------------------------------------------------------
    def image_manifest(self, name: str | Reference, platform: Platform | None = None, *,
                       any_present: bool = False) -> tuple[Descriptor, Manifest]:
        """The image manifest for `platform` (default: this host) and its descriptor.

        An index is resolved to the platform's entry; a single manifest is returned as is
        unless a platform was asked for explicitly and its config says otherwise. An index kept
        without that platform's image (a one-platform pull) raises NotFoundError naming the
        platforms it has here; with `any_present` and no `platform`, the one image it has is
        taken instead of this host's (what `images`, `inspect` and `history` describe).
        """
        raw = self._image_of(self.resolve(name), name, platform, any_present)
        return raw.descriptor, raw.doc     # type: ignore[return-value]

    def _image_of(self, desc: Descriptor, name: str | Reference, platform: Platform | None,
                  any_present: bool):
        """image_manifest's selection below the stored manifest or index `desc` (a RawManifest
        without its bytes)."""
        from .image import RawManifest, select_image
        want = platform or host_platform()

        def read(child: Descriptor) -> RawManifest:
            if not self.has_blob(child.digest):
                have = [str(d.platform or "?") for d, present in self.index_entries(desc.digest) if present]
                raise NotFoundError(f"image {name}: the store holds its index without the {want} image "
                                    f"({child.digest}); it has {', '.join(have) or 'no platform'} here: pull "
                                    f"it with --platform {want}, or choose one it has with --platform")
            return RawManifest(child, b"", self.get_manifest(child.digest))

        top = RawManifest(desc, b"", self.get_manifest(desc.digest))
        config = (lambda m: self.get_config(m.config.digest)) if platform is not None else None
        try:
            return select_image(read, top, want, f"image {name}", config=config)
        except NotFoundError:
            present = [d for d, here in self.index_entries(desc.digest) if here] if isinstance(top.doc, Index) else []
            if not (any_present and platform is None and len(present) == 1):
                raise
            return select_image(read, read(present[0]), want, f"image {name}")

    def index_entries(self, digest: str) -> list[tuple[Descriptor, bool]]:
        """The image entries of the stored index `digest` (attestation manifests left out), each
        with whether the store holds its manifest: a one-platform pull keeps only its own."""
        from .manifest import is_attestation
        try:
            doc = self.get_manifest(digest)
        except RegistryError:
            return []
        if not isinstance(doc, Index):
            return []
        return [(d, self.has_blob(d.digest)) for d in doc.manifests if not is_attestation(d)]

    def image_config(self, name: str | Reference, platform: Platform | None = None) -> ImageConfig:
        """The config of the image for `platform` (default: this host)."""
        _, manifest = self.image_manifest(name, platform)
        return self.get_config(manifest.config.digest)

    def image(self, name: str | Reference, platform: Platform | None = None) -> LocalImage:
        """Tagged descriptor, platform manifest, its descriptor and config in one call."""
        tagged = self.resolve(name)
        desc, manifest = self.image_manifest(name, platform)
        return LocalImage(str(name), tagged, desc, manifest, self.get_config(manifest.config.digest))

    # -- keeping blobs alive and collecting the rest -------------------------------------------
    def add_root(self, name: str, digests: Iterable[str]) -> None:
        """Keep `digests` (and all they reference) alive across gc, under a root `name`."""
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"invalid gc root name {name!r}: use a plain file name")
        self._sync_blob_dirs()
        atomic_write(self.layout / "roots" / name, "".join(f"{d}\n" for d in digests).encode())

    def remove_root(self, name: str) -> None:
        """Drop a gc root written by add_root (no error if absent)."""
        try:
            os.unlink(self.layout / "roots" / name)
        except FileNotFoundError:
            pass

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Protect every blob this Store writes inside the block from gc in any process.

        Use it around work that writes blobs before tagging them (pull, build).
        """
        lease = _Lease(self.layout / "leases")
        with self._leases_mutex:
            self._leases.append(lease)
        try:
            yield
        finally:
            with self._leases_mutex:
                self._leases.remove(lease)
            lease.close()

    def _note(self, digest: str) -> None:
        with self._leases_mutex:
            leases = list(self._leases)
        for lease in leases:
            lease.add(digest)

    def _root_digests(self) -> set[str]:
        roots: set[str] = set()
        for f in (self.layout / "roots").iterdir():
            if not f.name.startswith("."):
                roots.update(_digest_lines(f))
        for f in (self.layout / "leases").iterdir():
            lock = FileLock(f)
            try:
                if lock.acquire(blocking=False):   # nobody holds it: its process is gone
                    try:
                        os.unlink(f)
                    finally:
                        lock.release()
                    continue
            except FileNotFoundError:
                continue
            roots.update(_digest_lines(f))
        return roots

    def reachable(self, extra_roots: Iterable[str] = (), skip: Iterable[str] = ()) -> set[str]:
        """Digests reachable from tags (but those of the digests in `skip`), gc roots, live leases
        and `extra_roots`."""
        from .image import references
        skipped = set(skip)
        todo: list[tuple[str, str | None]] = [(d.digest, d.media_type) for d in self.read_index().manifests
                                              if d.digest not in skipped]
        todo += [(d, None) for d in self._root_digests()]
        todo += [(d, None) for d in extra_roots]
        seen: set[str] = set()
        while todo:
            digest, media_type = todo.pop()
            if digest in seen:
                continue
            seen.add(digest)
            if media_type is not None and not mt.is_manifest(media_type):
                continue
            path = self.blob_path(digest)
            try:
                if media_type is None and not _may_be_json(path):
                    continue
                doc = parse_manifest(path.read_bytes())
            except (FileNotFoundError, InvalidManifestError, InvalidDigestError):
                continue
            todo += [(c.digest, c.media_type or None) for c in references(doc)]
        return seen

    def gc(self, extra_roots: Iterable[str] = ()) -> GCResult:
        """Delete blobs nothing references (see reachable) and stale ingest files."""
        result = GCResult()
        with FileLock(self.layout / ".lock"), FileLock(self.layout / ".gc.lock"):
            keep = self.reachable(extra_roots)
            for digest in list(self.blobs()):
                if digest in keep:
                    result.kept_blobs += 1
                    continue
                path = self.blob_path(digest)
                try:
                    size = path.stat().st_size
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                result.removed_blobs += 1
                result.freed_bytes += size
            now = time.time()
            for f in (self.layout / "ingest").iterdir():
                try:
                    if now - f.stat().st_mtime > STALE_INGEST_SECONDS:
                        os.unlink(f)
                        result.removed_ingest += 1
                except FileNotFoundError:
                    pass
        return result

    def verify(self) -> list[str]:
        """Check the layout: blob contents against their names, that every tagged image's
        manifests, configs and layers exist with the announced sizes, and that configs list
        one diff_id per layer. Returns a list of problems (empty when all is well)."""
        problems: list[str] = []
        for name in ("oci-layout", "index.json"):
            if not (self.layout / name).is_file():
                problems.append(f"{self.layout / name} is missing")
        try:
            index = self.read_index()
        except RegistryError as exc:
            return problems + [str(exc)]
        for digest in self.blobs():
            try:
                parse_digest(digest)
            except InvalidDigestError:
                problems.append(f"unexpected file in blobs/: {digest}")
                continue
            with open(self.blob_path(digest), "rb") as f:
                h = new_hasher(parse_digest(digest).algorithm)
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            if f"{parse_digest(digest).algorithm}:{h.hexdigest()}" != digest:
                problems.append(f"blob {digest} is corrupt: its content hashes to a different digest")
        for entry in index.manifests:
            label = entry.annotations.get(REF_NAME) or entry.digest
            self._verify_tree(entry, label, problems, depth=0)
        return problems

    def _verify_tree(self, desc: Descriptor, label: str, problems: list[str], depth: int) -> None:
        if not self.has_blob(desc.digest):
            problems.append(f"{label}: {desc.media_type or 'blob'} {desc.digest} is missing")
            return
        size = self.blob_size(desc.digest)
        if size != desc.size:
            problems.append(f"{label}: {desc.digest} is {size} bytes, its descriptor says {desc.size}")
        if not mt.is_manifest(desc.media_type) or depth > 8:
            return
        try:
            doc = self.get_manifest(desc.digest)
        except RegistryError as exc:
            problems.append(f"{label}: {exc}")
            return
        if isinstance(doc, Index):
            for child in doc.manifests:
                # A single-platform pull legitimately lacks the other platforms' manifests.
                if self.has_blob(child.digest):
                    self._verify_tree(child, label, problems, depth + 1)
            return
        self._verify_tree(doc.config, label, problems, depth + 1)
        for layer in doc.layers:
            if not mt.is_nondistributable(layer.media_type):
                self._verify_tree(layer, label, problems, depth + 1)
        if doc.config.media_type in mt.CONFIG_TYPES and self.has_blob(doc.config.digest):
            try:
                cfg = self.get_config(doc.config.digest)
            except RegistryError as exc:
                problems.append(f"{label}: {exc}")
                return
            if len(cfg.diff_ids) != len(doc.layers):
                problems.append(f"{label}: config lists {len(cfg.diff_ids)} diff_ids for {len(doc.layers)} layers")


def _untagged(d: Descriptor) -> bool:
    return not d.annotations.get(REF_NAME) and not d.annotations.get(IMAGE_NAME)


def _try_parse(text: str) -> Reference | None:
    try:
        return parse_reference(text)
    except RegistryError:
        return None


def _may_be_json(path: Path) -> bool:
    """Cheap test before parsing a root of unknown type: small and starting with `{`."""
    if path.stat().st_size > _MAX_SNIFF:
        return False
    with open(path, "rb") as f:
        return f.read(1) == b"{"


def _digest_lines(path: Path) -> list[str]:
    try:
        lines = path.read_text().split()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    return [x for x in lines if is_digest(x)]
