"""Snapshots: a root filesystem made of extracted layers, with a writable overlay on top.

Each image layer is extracted once (registry.tarsafe, checked against its diffID) into
``<root>/layers/<diffid hex>/`` in overlayfs's own format (OCI whiteouts become 0/0 character
devices, opaque markers become the ``trusted.overlay.opaque`` xattr, or ``user.overlay.opaque``
inside a user namespace: rootless, overlay is mounted with ``userxattr``), so a stack of layers
is just a list of lower directories. A store holds one format (builder.runtime.userns records
which in ``<root>/mode``): a lower directory marked the other way would silently not be opaque.
A RUN step mounts ``lowerdirs + upper + work``; afterwards the upper directory *is* the change
and can itself be adopted as the extracted directory of the new layer (no re-extraction).

The overlay mount option must fit in one page, so lower directories are named through short
symlinks ``<root>/l/<12 hex>`` and the mount runs with the store root as working directory.
Where overlayfs cannot be mounted, :class:`CopySnapshot` copies the layers into a plain
directory and computes the change by comparing the tree before and after (slow, but correct).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from registry.fsutil import in_initial_user_namespace, overlay_opaque_xattr, private_dir

from ..errors import BuildError
from ..root import Root

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"      # as root; overlay_opaque_xattr() names this process's
SHORT_ID = 12


class LayerDirs:
    """The extracted-layer directories under ``<root>/layers`` and their short links."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.layers = Root(self.root).layers
        self.links = Root(self.root).links

    def path(self, diff_id: str) -> Path:
        """Directory of the extracted layer ``diff_id`` (may not exist yet)."""
        return self.layers / _hex(diff_id)

    def ensure(self, diff_id: str, open_blob: Callable[[], BinaryIO]) -> Path:
        """Extract the layer blob (any compression) from ``open_blob()`` once; return its directory."""
        final = self.path(diff_id)
        if final.is_dir():
            return final
        private_dir(self.layers)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.layers))
        try:
            with open_blob() as f:
                _apply_verified(f, tmp, diff_id)
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():      # somebody else won the race: fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def adopt(self, diff_id: str, directory: Path) -> Path:
        """Make ``directory`` (an overlay upper dir) the extracted form of layer ``diff_id``."""
        final = self.path(diff_id)
        if final.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
            return final
        private_dir(self.layers)
        try:
            os.rename(directory, final)
        except OSError:
            if not final.is_dir():      # a concurrent build made the same layer first: use it
                raise
            shutil.rmtree(directory, ignore_errors=True)
        return final

    def short_link(self, diff_id: str) -> str:
        """A short path, relative to the store root, naming the layer directory."""
        h = _hex(diff_id)
        private_dir(self.links)
        for n in range(SHORT_ID, len(h) + 1):
            link = self.links / h[:n]
            target = f"../layers/{h}"
            try:
                os.symlink(target, link)
                return f"l/{h[:n]}"
            except FileExistsError:
                if os.readlink(link) == target:
                    return f"l/{h[:n]}"
        raise BuildError(f"cannot make a short link for layer {diff_id}")

    def empty(self) -> Path:
        """An empty directory usable as the only lower of a scratch rootfs."""
        d = private_dir(self.layers) / "empty"
        d.mkdir(exist_ok=True)
        return d


def _hex(diff_id: str) -> str:
    return diff_id.split(":", 1)[-1]


class _HashingReader:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: BinaryIO, algorithm: str):
        self.raw = raw
        self.hasher = hashlib.new(algorithm)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hasher.update(data)
        return data


def _apply_verified(blob: BinaryIO, dest: Path, diff_id: str) -> None:
    """Extract a layer blob and check its uncompressed bytes against ``diff_id``.

    Extracted layers are shared by every image naming that diffID, so an image whose config
    lies about a layer must not get its content in under another layer's name.
    """
    # Only a first extraction needs the tar and decompression modules: `run` of an image
    # already extracted (every start after the first) imports neither.
    from registry.compression import open_decompressed
    from registry.tarsafe import extract_tar
    algorithm, _, want = diff_id.partition(":")
    if algorithm not in ("sha256", "sha512") or not want:
        raise BuildError(f"layer diff_id {diff_id!r} is not a sha256 or sha512 digest")
    reader = _HashingReader(open_decompressed(blob), algorithm)
    extract_tar(reader, dest, whiteouts="overlay")
    while reader.read(1 << 20):      # the tar's end blocks and padding count too
        pass
    got = reader.hasher.hexdigest()
    if got != want:
        raise BuildError(f"layer content does not match diff_id {diff_id} from the image config (it is "
                         f"{algorithm}:{got}): corrupt or forged image; pull it again from a source you trust")


def is_opaque(path: str | os.PathLike) -> bool:
    """True when the directory ``path`` (of an extracted layer or an upper dir) is opaque for
    the overlay mounts of this process (the xattr of its mode: see overlay_opaque_xattr)."""
    try:
        return os.getxattr(path, overlay_opaque_xattr(), follow_symlinks=False) == b"y"
    except OSError:
        return False


def overlay_options() -> str:
    """Mount options after the directories: no index, no metacopy (an upper dir must hold
    whole files: it becomes the layer), and the opaque/whiteout xattrs in the trusted.*
    namespace as root, in user.* (``userxattr``) inside a user namespace. redirect_dir is off
    by default with userxattr, which refuses it being named."""
    if in_initial_user_namespace():
        return ",index=off,metacopy=off,redirect_dir=off"
    return ",userxattr,index=off,metacopy=off"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


@dataclass
class Snapshot:
    """A mounted overlay: ``merged`` is the rootfs, ``upper`` collects the changes."""

    merged: Path
    upper: Path
    work: Path
    base: Path
    mounted: bool = False
    kind: str = "overlay"
    _before: dict = field(default_factory=dict, repr=False)

    def unmount(self) -> None:
        """Unmount (idempotent)."""
        if self.mounted:
            _umount(self.merged)
            self.mounted = False

    def changes(self) -> Path:
        """The directory of changes in overlay format (whiteouts as 0/0 char devices)."""
        self.unmount()
        if self.kind == "copy":
            return _copy_changes(self)
        return self.upper

    def cleanup(self) -> None:
        """Unmount and remove everything of this snapshot (the upper dir too, unless adopted)."""
        self.unmount()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def mount_snapshot(root: Path, lower_ids: list[str], writable: bool = True,
                   use_overlay: bool = True) -> Snapshot:
    """Mount the layers ``lower_ids`` (bottom first, all already extracted) as a rootfs.

    With ``writable`` an upper and work dir are added. Falls back to a copied tree when the
    kernel refuses the overlay mount (or ``use_overlay`` is False).
    """
    dirs = LayerDirs(root)
    snaps = private_dir(Root(root).snapshots)
    sid = os.urandom(6).hex()   # not uuid: it imports `platform`, a start-up cost
    base = snaps / sid
    os.mkdir(base, 0o700)
    for sub in ("merged", "upper", "work"):
        os.mkdir(base / sub, 0o700)
    snap = Snapshot(merged=base / "merged", upper=base / "upper", work=base / "work", base=base)
    os.chmod(snap.upper, 0o755)
    lowers = [dirs.short_link(d) for d in reversed(lower_ids)]   # overlay lists topmost first
    if not lowers:
        lowers = [os.path.relpath(dirs.empty(), root)]
    if not writable and len(lowers) == 1:
        lowers.append(os.path.relpath(dirs.empty(), root))
    opts = "lowerdir=" + ":".join(lowers)
    if writable:
        opts += f",upperdir=snapshots/{sid}/upper,workdir=snapshots/{sid}/work"
    opts += overlay_options()
    if use_overlay:
        refused = _mount_overlay(root, opts, f"snapshots/{sid}/merged")
        if refused is None:
            snap.mounted = True
            return snap
        _warn_copy_fallback(refused)
    try:
        return _copy_snapshot(dirs, lower_ids, snap)
    except BaseException:
        snap.cleanup()
        raise


_warned = False


def _warn_copy_fallback(detail: str) -> None:
    """Say once per process that snapshots are copies: every RUN then pays a full copy and a
    tree diff, which used to happen without a word (the rootless mount options were refused)."""
    global _warned
    if not _warned:
        _warned = True
        import sys
        print(f"warning: the kernel refused the overlay mount ({detail.strip() or 'no reason given'}); "
              "RUN steps and containers use a copied root filesystem (slower)", file=sys.stderr)


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_FS = 0x00000200
_MNT_DETACH = 2


def _mount_overlay(root: Path, options: str, target: str) -> str | None:
    """mount(2) an overlay on ``target`` with ``options``, both relative to the store ``root``
    (the options must fit in a page: see the module docstring); None when mounted, else why not.

    The system call, not mount(8): a fork and exec of util-linux per RUN step and container
    start cost more than the rest of the mount. The relative paths are resolved from ``root``
    by a short-lived thread with a working directory of its own (unshare(CLONE_FS)), so the
    process's own working directory, which other threads use, never changes.
    """
    result: list[str | None] = []

    def mount() -> None:
        try:
            if _libc.unshare(_CLONE_FS) != 0:
                result.append(f"unshare(CLONE_FS): {os.strerror(ctypes.get_errno())}")
                return
            os.chdir(root)
            if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, os.fsencode(options)) != 0:
                result.append(f"mount(2) of overlay on {Path(root) / target}: {os.strerror(ctypes.get_errno())}")
                return
            result.append(None)
        except OSError as exc:
            result.append(f"{exc.filename}: {exc.strerror}")

    t = threading.Thread(target=mount, name="pybuild-mount")
    t.start()
    t.join()
    return result[0] if result else "the mount thread failed"


def _umount(path: Path) -> None:
    """Unmount ``path`` (umount2(2); lazily when it is busy)."""
    target = os.fsencode(path)
    if _libc.umount2(target, 0) == 0:
        return
    first = os.strerror(ctypes.get_errno())
    if _libc.umount2(target, _MNT_DETACH) != 0:
        raise BuildError(f"cannot unmount {path}: {first}")


# --- fallback: a copied tree and a full-tree diff -------------------------------------------

def _copy_snapshot(dirs: LayerDirs, lower_ids: list[str], snap: Snapshot) -> Snapshot:
    for d in lower_ids:
        _apply_overlay_dir(dirs.path(d), snap.merged)
    # The root of an overlay of extracted layers is 0755 (theirs): a step as another user
    # than root must be able to reach its files (the snapshot's own directory is 0700).
    os.chmod(snap.merged, 0o755)
    snap.kind = "copy"
    snap._before = _scan(snap.merged)
    return snap


def _apply_overlay_dir(src: Path, dst: Path) -> None:
    """Apply one extracted layer (overlay format) onto a plain tree."""
    times: list[tuple[Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = dst if rel == "." else dst / rel
        if rel != ".":
            if is_opaque(dirpath) and out.is_dir():
                shutil.rmtree(out)
            if not out.is_dir():
                _remove(str(out))
                out.mkdir()
            shutil.copystat(dirpath, out, follow_symlinks=False)
            st = os.lstat(dirpath)
            os.chown(out, st.st_uid, st.st_gid)
            times.append((out, st))
        for name in list(dirnames):
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                dirnames.remove(name)
                filenames.append(name)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            target = out / name
            _remove(str(target))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue                                   # whiteout: deletion only
            _copy_entry(p, target, st)
    # Directories' times last (deepest first): making their entries changed them, and a step
    # that leaves a directory alone must find the layer's time there, as on an overlay.
    for out, st in reversed(times):
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_entry(src: str, dst: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copy2(src, dst, follow_symlinks=False)
    elif stat.S_ISDIR(st.st_mode):
        dst.mkdir()
        shutil.copystat(src, dst)
    else:
        os.mknod(dst, st.st_mode, st.st_rdev)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _scan(top: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                           st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                           _generation(p) if stat.S_ISDIR(st.st_mode) else 0)
    return out


_FS_IOC_GETVERSION = 0x80087601


def _generation(path: str) -> int:
    """The inode's generation (ext4 and others; 0 where not kept): ext4 gives a directory
    removed and made again the same inode number, but never the same generation."""
    import fcntl
    import struct
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETVERSION, bytes(8)))[0]
    except OSError:
        return 0
    finally:
        os.close(fd)


def _copy_changes(snap: Snapshot) -> Path:
    """For a copied snapshot: write the before/after difference into ``snap.upper``."""
    after = _scan(snap.merged)
    before = snap._before
    # A directory removed and made again (another inode) hides everything it held, as the
    # opaque directory overlay makes for it: its old entries need no whiteouts of their own.
    replaced = {rel for rel, st in after.items() if stat.S_ISDIR(st[0]) and rel in before
                and stat.S_ISDIR(before[rel][0]) and before[rel][6:8] != st[6:8]}
    for rel in sorted(after):
        if before.get(rel) == after[rel] and not stat.S_ISDIR(after[rel][0]):
            continue
        if stat.S_ISDIR(after[rel][0]) and before.get(rel) == after[rel]:
            continue
        src = snap.merged / rel
        dst = snap.upper / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        st = os.lstat(src)
        if stat.S_ISDIR(st.st_mode):
            if rel in before and not stat.S_ISDIR(before[rel][0]):
                _remove(str(dst))
            dst.mkdir(exist_ok=True)
            shutil.copystat(src, dst)
            os.chown(dst, st.st_uid, st.st_gid)
            if (rel in before and not stat.S_ISDIR(before[rel][0])) or rel in replaced:
                os.setxattr(dst, overlay_opaque_xattr(), b"y")
        else:
            _remove(str(dst))
            _copy_entry(str(src), dst, st)
    for rel in sorted(before):
        if rel in after:
            continue
        parent = os.path.dirname(rel)
        if parent and (parent not in after or not stat.S_ISDIR(after[parent][0])):
            # A removed parent's whiteout covers it, or what replaced the parent does: never
            # make a whiteout through it (a link the step put there points anywhere).
            continue
        if any(rel.startswith(d + "/") for d in replaced):
            continue                 # an opaque directory above hides it
        dst = snap.upper / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(dst, stat.S_IFCHR, os.makedev(0, 0))
    # Parent directories created for the change above keep the merged tree's metadata.
    for dirpath, dirnames, _ in os.walk(snap.upper):
        for name in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, name), snap.upper)
            st = os.lstat(snap.merged / rel) if (snap.merged / rel).exists() else None
            if st is not None:
                os.chmod(os.path.join(dirpath, name), stat.S_IMODE(st.st_mode))
                os.chown(os.path.join(dirpath, name), st.st_uid, st.st_gid)
                os.utime(os.path.join(dirpath, name), ns=(st.st_atime_ns, st.st_mtime_ns))
    return snap.upper
