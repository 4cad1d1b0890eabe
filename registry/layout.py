"""OCI image layouts as image sources and sinks: a directory (`LayoutDir`) or a tar of one
(`LayoutTarReader`, `LayoutTarWriter`).

A layout holds `oci-layout`, `index.json` and `blobs/<alg>/<hex>`; images are named by the
`org.opencontainers.image.ref.name` annotation of their index.json entry (what `skopeo
oci:DIR:NAME` and `umoci --image DIR:NAME` match). Blobs are written to a temporary name and
renamed into place, hashed on the way when the source did not verify them, and index.json is
written last, atomically: a reader never sees an entry whose blobs are missing.
"""
from __future__ import annotations

import errno
import io
import json
import os
import stat
import tarfile
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any, BinaryIO

from .digest import InvalidDigestError, new_hasher, parse_digest
from .endpoints import iter_chunks, label
from .errors import DigestMismatchError, NotFoundError, RegistryError
from .image import RawManifest
from .manifest import Descriptor, ImageConfig, Index

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
_JSON_LIMIT = 16 << 20


class _LayoutReading:
    """What the directory and the tar reader share: naming images through index.json."""

    verified = False
    host: str | None = None
    repository: str | None = None
    name: str

    def _read(self, path: str, limit: int | None = None) -> bytes:
        raise NotImplementedError

    def index(self) -> Index:
        try:
            return Index.from_bytes(self._read("index.json", _JSON_LIMIT), where=f"{self.name}/index.json")
        except FileNotFoundError:
            raise NotFoundError(f"{self.name} is not an OCI layout (it has no index.json)") from None

    def resolve(self, ref: str) -> Descriptor:
        """The index.json entry named `ref` (its ref.name annotation), or with digest `ref`;
        an empty `ref` picks the only entry."""
        entries = self.index().manifests
        if not ref and len(entries) == 1:
            return entries[0]
        for d in entries:
            if d.annotations.get(REF_NAME) == ref or d.digest == ref:
                return d
        have = ", ".join(sorted({d.annotations.get(REF_NAME, d.digest) for d in entries})) or "nothing"
        raise NotFoundError(f"image {ref!r} not found in the OCI layout {self.name} (it holds {have})")

    def _blob_path(self, digest: str) -> str:
        try:
            d = parse_digest(digest)
        except InvalidDigestError as exc:
            raise RegistryError(f"{self.name}: {exc}") from None
        return f"blobs/{d.algorithm}/{d.hex}"

    def read_manifest(self, ref: "str | Descriptor") -> RawManifest:
        desc = ref if isinstance(ref, Descriptor) else self.resolve(ref)
        try:
            data = self._read(self._blob_path(desc.digest), _JSON_LIMIT)
        except FileNotFoundError:
            raise NotFoundError(f"manifest {desc.digest} is missing from the OCI layout {self.name}") from None
        raw = RawManifest.parse(data, desc.media_type, where=f"{self.name}@{desc.digest}")
        if raw.digest != desc.digest:
            raise DigestMismatchError(f"{self.name}: manifest {desc.digest} hashes to {raw.digest}")
        return raw

    def read_config(self, digest: str) -> ImageConfig:
        return ImageConfig.from_bytes(self._read(self._blob_path(digest), _JSON_LIMIT),
                                      where=f"{self.name}: config {digest}")

    def slot(self) -> AbstractContextManager:
        return nullcontext()

    def mount_candidates(self, digest: str, host: str) -> list[str]:
        return []

    def remember(self, digest: str, host: str, repository: str) -> None:
        pass


class LayoutDir(_LayoutReading):
    """An OCI layout directory, as source and sink (made on first write if absent).

    As a sink it writes only through descriptors opened inside the directory: a link or file
    where the layout needs a directory (`blobs`, `blobs/sha256`) or a file (`index.json`) is
    replaced, never followed. With `replace=True`, `finish` writes an index.json holding only the
    image copied (what `--output type=oci,tar=false` makes) instead of adding to the one there.
    """

    ordered = True       # blobs, then manifests, then index.json: never an entry without content

    def __init__(self, path: str | os.PathLike, *, replace: bool = False) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.name = self.path
        self.replace = replace
        self._lock = threading.Lock()

    def _read(self, path: str, limit: int | None = None) -> bytes:
        fd = os.open(os.path.join(self.path, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1 if limit else -1)
        if limit and len(data) > limit:
            raise RegistryError(f"{self.name}/{path}: larger than {limit >> 20} MiB")
        return data

    def open_blob(self, desc: Descriptor, offset: int = 0) -> Any:
        try:
            fd = os.open(os.path.join(self.path, self._blob_path(desc.digest)),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"blob {desc.digest} is missing from the OCI layout {self.name}") from None
        f = os.fdopen(fd, "rb")
        if offset:
            f.seek(offset)
        return f

    # -- sink --
    def session(self) -> AbstractContextManager:
        with self._lock:
            try:
                if not stat.S_ISDIR(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.makedirs(self.path, 0o755, exist_ok=True)
            dfd = self._dir_fd("")
            try:
                st = os.stat("oci-layout", dir_fd=dfd, follow_symlinks=False)
                present = stat.S_ISREG(st.st_mode)
            except FileNotFoundError:
                present = False
            finally:
                os.close(dfd)
            if not present:
                self._write("oci-layout", [LAYOUT_FILE])
        return nullcontext()

    def _dir_fd(self, rel: str) -> int:
        """A descriptor of the real directory `rel` under the layout, made component by
        component (a link or file where a directory belongs is replaced)."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in [p for p in rel.split("/") if p]:
                try:
                    nfd = os.open(part, flags, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError, OSError) as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        raise
                    try:
                        os.unlink(part, dir_fd=fd)       # a link or file where a directory belongs
                    except (FileNotFoundError, IsADirectoryError):
                        pass                             # (or one made concurrently)
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass          # made by a concurrent writer in the meantime
                    nfd = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write(self, rel: str, chunks: Any, digest: str | None = None, size: int | None = None) -> int:
        """Write `chunks` to `rel` through a temporary file renamed over it (never through a link
        already there); with `digest`, verify the content first (nothing is left on a mismatch)."""
        dfd = self._dir_fd(os.path.dirname(rel))
        base = os.path.basename(rel)
        tmp = f".tmp-{os.getpid()}-{os.urandom(6).hex()}"
        h = new_hasher(parse_digest(digest).algorithm) if digest else None
        n = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dfd)
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    n += len(chunk)
                    if h is not None:
                        h.update(chunk)
                os.fchmod(f.fileno(), 0o644)
            if size is not None and n != size:
                raise DigestMismatchError(f"{self.name}/{rel}: expected {size} bytes, got {n}; nothing was written")
            if h is not None and f"{parse_digest(digest).algorithm}:{h.hexdigest()}" != digest:
                raise DigestMismatchError(f"{self.name}/{rel}: content does not match {digest}; nothing was written")
            os.replace(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass
            raise
        finally:
            os.close(dfd)
        return n

    def _has(self, desc: Descriptor) -> bool:
        rel = self._blob_path(desc.digest)
        dfd = self._dir_fd(os.path.dirname(rel))
        try:
            st = os.stat(os.path.basename(rel), dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(dfd)
        return stat.S_ISREG(st.st_mode) and st.st_size == desc.size

    def receive_blob(self, desc: Descriptor, src: Any, progress: Any) -> tuple[str, int]:
        if self._has(desc):
            progress.task(label(desc.digest), desc.size).finish("already exists")
            return "skipped", 0
        with src.slot():
            task = progress.task(label(desc.digest), desc.size)

            def counted() -> Any:
                for chunk in iter_chunks(src.open_blob(desc, 0)):
                    task.advance(len(chunk))
                    yield chunk
            n = self._write(self._blob_path(desc.digest), counted(),
                            None if src.verified else desc.digest, desc.size)
        task.finish("written")
        return "transferred", n

    def put_manifest(self, raw: RawManifest) -> None:
        if not self._has(raw.descriptor):
            self._write(self._blob_path(raw.digest), [raw.data], raw.digest)

    def finish(self, top: RawManifest, tag: str | None) -> str:
        self.put_manifest(top)
        entry = Descriptor(top.media_type, top.digest, len(top.data),
                           annotations={REF_NAME: tag} if tag else {},
                           artifact_type=getattr(top.doc, "artifact_type", None) or None)
        with self._lock:
            try:
                index = Index() if self.replace else self.index()
            except NotFoundError:
                index = Index()

            def replaced(d: Descriptor) -> bool:
                name = d.annotations.get(REF_NAME)
                return name == tag if tag else (name is None and d.digest == top.digest)
            index.manifests = [d for d in index.manifests if not replaced(d)]
            index.manifests.append(entry)
            self._write("index.json", [index.to_bytes()])
        return top.digest


class LayoutTarReader(_LayoutReading):
    """An OCI layout in a plain tar file (an `oci-archive`), as a source. Member names are only
    looked up, never extracted."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.name = os.fspath(path)
        try:
            self._tar = tarfile.open(self.name, mode="r:")
        except (tarfile.TarError, OSError) as exc:
            raise RegistryError(f"cannot read OCI archive {self.name}: {exc}") from None
        self._members = {m.name.removeprefix("./"): m for m in self._tar.getmembers() if m.isfile()}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._tar.close()

    def _read(self, path: str, limit: int | None = None) -> bytes:
        m = self._members.get(path)
        if m is None:
            raise FileNotFoundError(path)
        if limit and m.size > limit:
            raise RegistryError(f"{self.name}: {path} is larger than {limit >> 20} MiB")
        with self._lock, self._tar.extractfile(m) as f:    # type: ignore[union-attr]
            return f.read()

    def open_blob(self, desc: Descriptor, offset: int = 0) -> Any:
        path = self._blob_path(desc.digest)
        m = self._members.get(path)
        if m is None:
            raise NotFoundError(f"blob {desc.digest} is missing from the OCI archive {self.name}")

        def chunks() -> Any:
            pos = offset
            while pos < m.size:
                with self._lock:          # one file position: read a piece at a time under the lock
                    f = self._tar.extractfile(m)
                    f.seek(pos)           # type: ignore[union-attr]
                    piece = f.read(min(1 << 20, m.size - pos))   # type: ignore[union-attr]
                if not piece:
                    return
                pos += len(piece)
                yield piece
        return chunks()


class LayoutTarWriter:
    """Writes an OCI layout as a tar stream to `out` (a sink): `oci-layout` first, each blob as
    it arrives, `index.json` on `close()`. Blobs are written one at a time (a tar is sequential).
    A tag given to `finish` names the entry under each annotation of `name_keys`."""

    ordered = True
    host: str | None = None
    repository: str | None = None

    def __init__(self, out: BinaryIO, name: str = "OCI archive", *,
                 name_keys: tuple[str, ...] = (REF_NAME,)) -> None:
        self.name = name
        self.name_keys = name_keys
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
        self._lock = threading.Lock()
        self._written: set[str] = set()
        self._entries: list[Descriptor] = []
        self._add("oci-layout", [LAYOUT_FILE], len(LAYOUT_FILE))

    def _add(self, name: str, chunks: Any, size: int) -> None:
        ti = tarfile.TarInfo(name)
        ti.size = size
        ti.mode = 0o644
        reader = io.BufferedReader(_ChunkReader(chunks), 1 << 20)   # type: ignore[arg-type]
        self._tar.addfile(ti, reader)

    def session(self) -> AbstractContextManager:
        return nullcontext()

    def receive_blob(self, desc: Descriptor, src: Any, progress: Any) -> tuple[str, int]:
        with self._lock:
            if desc.digest in self._written:
                return "skipped", 0
            task = progress.task(label(desc.digest), desc.size)
            h = None if src.verified else new_hasher(parse_digest(desc.digest).algorithm)

            def counted() -> Any:
                for chunk in iter_chunks(src.open_blob(desc, 0)):
                    task.advance(len(chunk))
                    if h is not None:
                        h.update(chunk)
                    yield chunk
            d = parse_digest(desc.digest)
            self._add(f"blobs/{d.algorithm}/{d.hex}", counted(), desc.size)
            if h is not None and f"{d.algorithm}:{h.hexdigest()}" != desc.digest:
                raise DigestMismatchError(f"{self.name}: blob {desc.digest} read from {src.name} "
                                          "does not match its digest")
            self._written.add(desc.digest)
        task.finish("written")
        return "transferred", desc.size

    def put_manifest(self, raw: RawManifest) -> None:
        with self._lock:
            if raw.digest not in self._written:
                d = parse_digest(raw.digest)
                self._add(f"blobs/{d.algorithm}/{d.hex}", [raw.data], len(raw.data))
                self._written.add(raw.digest)

    def finish(self, top: RawManifest, tag: str | None) -> str:
        self.put_manifest(top)
        self._entries.append(Descriptor(top.media_type, top.digest, len(top.data),
                                        annotations={k: tag for k in self.name_keys} if tag else {}))
        return top.digest

    def remember(self, digest: str, host: str, repository: str) -> None:
        pass

    def close(self) -> None:
        """Write index.json and end the tar."""
        data = Index(manifests=self._entries).to_bytes()
        self._add("index.json", [data], len(data))
        self._tar.close()


class _ChunkReader(io.RawIOBase):
    """A raw reader over an iterable of bytes (what tarfile.addfile copies from)."""

    def __init__(self, chunks: Any) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
