"""Executing build steps on a stage's state: FROM, RUN in the sandbox, COPY/ADD, WORKDIR, commit.

A :class:`StageState` is the image being built by one stage: its config (a typed ImageConfig,
changed only through registry.mutate, see builder.engine.config) and its layers. The
:class:`Executor` turns steps into layers in the store; metadata instructions are handled by
builder.engine.config directly.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from registry import mediatypes as mt
from registry.fsutil import private_dir
from registry.manifest import Descriptor, ImageConfig, Manifest
from registry.store import Store

from . import config as cfgmod
from ..errors import BuildError
from ..root import Root
from ..runtime.chroot import check_mounts as check_chroot_mounts
from ..runtime.layers import LayerMaker, LayerRef, prune_upper
from ..runtime.sandbox import Mount, NetworkPool, RunSpec, run as sandbox_run
from ..runtime.snapshot import _umount, mount_snapshot, overlay_options
from ..runtime.users import ResolvedUser, resolve_user


@dataclass
class StageState:
    """The image a stage is building."""

    name: str
    config: ImageConfig          # a value: replaced by each step (registry.mutate), never changed in place
    layers: list[LayerRef] = field(default_factory=list)
    flags: cfgmod.StageFlags = field(default_factory=cfgmod.StageFlags)
    base_ref: str = ""

    def copy(self) -> "StageState":
        # The config is shared: a step replaces it rather than changing it.
        return StageState(self.name, self.config, list(self.layers),
                          cfgmod.StageFlags(self.flags.cmd_set), self.base_ref)


@dataclass
class RunMount:
    """A RUN --mount after expansion, in terms the executor understands."""

    type: str                         # bind | cache | tmpfs | secret | ssh
    target: str
    source: str = ""
    from_state: StageState | None = None     # bind/cache from a stage or image
    from_context: Path | None = None          # bind from this (trusted) host directory
    context: object | None = None             # bind from the build context (a BuildContext)
    readonly: bool = True
    cache_id: str = ""
    # Cache mounts: besides the id, what BuildKit keys the directory by. With uid/gid/mode it
    # mounts a ref made by a mkdir with them, and a `from` source is a ref too; the persistent
    # directory is per (id, ref), so a `uid=10` cache and a plain one with the same id differ.
    cache_base: str = ""
    sharing: str = "shared"
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    size: int = 0
    secret_data: bytes | None = None
    env: str | None = None
    required: bool = False


# Where a step that uses secrets keeps its runtime bundle: a tmpfs, never the store's disk.
MEMORY_TMP = Path("/dev/shm")


def memory_dir_prefix(root: Path) -> str:
    """Name prefix of the in-memory directories of steps run against the store ``root`` (so
    `store verify --repair` can find those a killed build left behind)."""
    return "pybuild-" + hashlib.sha256(str(Path(root).absolute()).encode()).hexdigest()[:12] + "-"


@contextlib.contextmanager
def memory_dir(root: Path):
    """A private (0700) temporary directory on a tmpfs, removed afterwards.

    Falls back to ``<root>/tmp`` only where /dev/shm is no tmpfs; then a killed build can
    leave the bundle (and an env secret in its config.json) on disk, as before.
    """
    base = MEMORY_TMP if _is_tmpfs(MEMORY_TMP) else private_dir(Root(root).tmp)
    d = tempfile.mkdtemp(prefix=memory_dir_prefix(root), dir=base)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _is_tmpfs(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 8 and fields[4] == str(path):
                    rest = fields[fields.index("-") + 1:]
                    return bool(rest) and rest[0] == "tmpfs"
    except (OSError, ValueError):
        pass
    return False


def _secret_file(m: "RunMount", directory: str) -> str:
    """Write the secret into a new file in the in-memory ``directory``; return its path.

    Not a memfd: the kernel refuses to bind-mount one (it lives on no mount of this
    namespace), and the runtime needs a bind source.
    """
    fd, path = tempfile.mkstemp(prefix="secret-", dir=directory)
    try:
        view = memoryview(m.secret_data or b"")
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode if m.mode is not None else 0o400)
    finally:
        os.close(fd)
    return path


def rfc3339(ts: float) -> str:
    """RFC 3339 UTC with nanoseconds trimmed like Go's time.RFC3339Nano."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


class Executor:
    """Runs steps against the store rooted at ``root``."""

    def __init__(self, store: Store, root: Path, layers: LayerMaker, isolation: str = "oci",
                 source_date_epoch: int | None = None, cancel: threading.Event | None = None):
        self.store = store
        self.root = Path(root)
        self.layers = layers
        self.isolation = isolation
        self.source_date_epoch = source_date_epoch
        self.cancel = cancel or threading.Event()      # set when the build is interrupted
        self.networks = NetworkPool(Root(self.root).tmp)  # the private network of this build's RUNs

    def warm_network(self) -> None:
        """A step is about to be executed: have the private network ready by the first RUN."""
        if self.isolation != "none":         # chrooted steps share the container's network
            self.networks.prewarm()

    def close(self) -> None:
        """Release what the build's steps shared (the private network)."""
        self.networks.close()

    def now(self) -> str:
        """The creation time to record (SOURCE_DATE_EPOCH when set)."""
        return rfc3339(self.source_date_epoch if self.source_date_epoch is not None else time.time())

    # -- users -------------------------------------------------------------------------------
    def user(self, state: StageState, spec: str | None = None, for_chown: bool = False) -> ResolvedUser:
        """Resolve ``spec`` (default: the stage's USER) through the stage's /etc/passwd and /etc/group."""
        if spec is None:
            spec = state.config.config.user
        if not spec:
            if for_chown:
                return ResolvedUser(0, 0)
            spec = "0"
        user, _, group = spec.partition(":")
        if user.isdigit() and (not group or group.isdigit()) and for_chown:
            return ResolvedUser(int(user), int(group) if group else int(user))
        return resolve_user(spec, self.layers.view(state.layers), for_chown=for_chown)

    # -- RUN -----------------------------------------------------------------------------------
    def run(self, state: StageState, argv: list[str], env: list[str], mounts: list[RunMount],
            network: str, output: Callable[[str, bytes], None]) -> tuple[int, LayerRef | None]:
        """Run ``argv`` on the stage's rootfs; returns the exit code and the layer (None if nothing changed)."""
        user = self.user(state)
        cwd = state.config.config.working_dir or "/"
        lower_ids = [l.diff_id for l in state.layers]
        chrooted = self.isolation == "none"
        if chrooted:           # no mount namespace: refused before anything is set up
            check_chroot_mounts([(m.type, m.type == "secret" and bool(m.env) and not m.target) for m in mounts])
        self.layers.dirs(state.layers)
        # isolation none: a copied rootfs and a tree diff (nothing can be mounted).
        snap = mount_snapshot(self.root, lower_ids, use_overlay=not chrooted)
        try:
            with contextlib.ExitStack() as stack:
                sb_mounts, extra_env = self._mounts(state, mounts, cwd, stack)
                if not any(e.startswith("HOME=") for e in env):
                    # Like Docker: HOME from the user's passwd entry when the image sets none.
                    env = env + ["HOME=" + (user.home if user.home != "/" or user.uid else "/root")]
                spec = RunSpec(args=argv, rootfs=snap.merged, env=env + extra_env, cwd=cwd,
                               uid=user.uid, gid=user.gid, additional_gids=user.additional_gids,
                               mounts=sb_mounts, network=network, keep_runtime_dirs=True)
                # The bundle's config.json carries the environment, env secrets included:
                # such a step keeps its bundle in memory, off the store's disk.
                has_secret = any(m.type == "secret" and m.secret_data is not None for m in mounts)
                state_dir = (Path(stack.enter_context(memory_dir(self.root))) if has_secret
                             else Root(self.root).tmp)
                rc = sandbox_run(spec, output, isolation=self.isolation,
                                 state_dir=state_dir, cancel=self.cancel, networks=self.networks)
            if rc != 0:
                return rc, None
            upper = snap.changes()
            prune_upper(upper, self.layers.view(state.layers))
            return 0, self.layers.commit_upper(upper)
        finally:
            snap.cleanup()

    def _mounts(self, state: StageState, mounts: list[RunMount], cwd: str,
                stack: contextlib.ExitStack) -> tuple[list[Mount], list[str]]:
        out: list[Mount] = []
        env: list[str] = []
        secrets_dir: str | None = None      # in memory (see memory_dir), made on first use
        for m in mounts:
            target = m.target if m.target.startswith("/") else posixpath.join(cwd, m.target)
            if m.type == "tmpfs":
                opts = [f"size={m.size}"] if m.size else []
                out.append(Mount(target, type="tmpfs", options=opts))
            elif m.type == "bind" and m.context is not None:
                out.append(Mount(target, source=self._context_bind(m, stack), readonly=m.readonly))
            elif m.type == "bind":
                out.append(Mount(target, source=str(self._bind_source(m, stack)), readonly=m.readonly))
            elif m.type == "cache":
                out.append(Mount(target, source=str(self._cache_dir(m, stack)), readonly=m.readonly))
            elif m.type == "secret":
                if m.secret_data is None:
                    if m.required:
                        raise BuildError(f"secret {m.cache_id} is required but was not given: "
                                         f"pass --secret id={m.cache_id},src=FILE")
                    continue
                if m.env:
                    env.append(f"{m.env}={m.secret_data.decode('utf-8', 'replace')}")
                if m.target or not m.env:
                    if secrets_dir is None:
                        secrets_dir = stack.enter_context(memory_dir(self.root))
                    out.append(Mount(target or f"/run/secrets/{m.cache_id}",
                                     source=_secret_file(m, secrets_dir), readonly=True))
            elif m.type == "ssh":
                # BuildKit fails such a step when no agent is forwarded; running it without the
                # socket would fail later, inside the step, with a far less clear message.
                raise BuildError("RUN --mount=type=ssh: SSH agent forwarding is not supported yet "
                                 "(`pybuild build --ssh` is accepted but not forwarded); fetch with "
                                 "another method, e.g. a --secret holding a deploy token")
            else:
                raise BuildError(f"unsupported mount type {m.type!r}")
        return out, env

    def _tmp(self) -> Path:
        return private_dir(Root(self.root).tmp)

    def _bind_source(self, m: RunMount, stack: contextlib.ExitStack) -> Path:
        """Host path to bind: a context path, or a path in a mounted stage/image rootfs.

        A read-write bind gets its own overlay so that writes are discarded, as BuildKit does.
        """
        source = m.source
        if m.from_state is not None:
            self.layers.dirs(m.from_state.layers)
            # Links in the source resolve inside that rootfs, as in a chroot: joined as text,
            # `source=etc` with etc -> /etc in the image would make runc bind the host's /etc.
            source = self.layers.view(m.from_state.layers).resolve(m.source or "/")
            if source is None:
                raise BuildError(f"bind mount source {m.source or '/'} does not exist")
            snap = mount_snapshot(self.root, [l.diff_id for l in m.from_state.layers],
                                  writable=not m.readonly)
            stack.callback(snap.cleanup)
            base = snap.merged
        elif m.from_context is not None:
            base = m.from_context
            if not m.readonly:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self._tmp())))
                shutil.copytree(base, tmp / "ctx", symlinks=True)
                base = tmp / "ctx"
        else:
            raise BuildError(f"bind mount at {m.target}: no source")
        src = Path(os.path.normpath(os.path.join(base, source.lstrip("/")))) if source else base
        if not str(src).startswith(str(base)):
            raise BuildError(f"bind mount source {m.source} leaves its root")
        if not os.path.lexists(src):
            raise BuildError(f"bind mount source {m.source or '/'} does not exist")
        return src

    def _context_bind(self, m: RunMount, stack: contextlib.ExitStack) -> str:
        """The host path to bind for a mount of the build context, anchored to a descriptor.

        The source is opened inside the context (builder.context: symlinks followed inside it
        only) and never named by its joined path again: a directory is the lower layer of an
        overlay given as /proc/<pid>/fd/N (the kernel resolves that to the very directory
        opened, whatever is renamed meanwhile), with whiteouts in a private upper for what
        .dockerignore leaves out, as BuildKit's mount only sees what the context sends. Writes
        of a read-write mount land in that upper and are discarded, as in BuildKit. A file is
        bound through /proc/<pid>/fd/N (read-only) or copied from its descriptor (rw).
        """
        ms = m.context.mount_source(m.source or ".")  # type: ignore[attr-defined]
        stack.callback(ms.close)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self._tmp(), prefix="ctxmount-")))
        fd_path = f"/proc/{os.getpid()}/fd/{ms.fd}"
        if not stat.S_ISDIR(ms.st.st_mode):
            if m.readonly:
                # runc refuses an O_PATH descriptor of a file as a source: bind it here, onto
                # a stub of ours, and hand runc that.
                stub = tmp / "file"
                stub.touch()
                r = subprocess.run(["mount", "--bind", fd_path, str(stub)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise BuildError(f"bind mount of the build context at {m.target}: cannot bind "
                                     f"{ms.host}: {r.stderr.strip() or 'mount failed'}")
                stack.callback(_umount, stub)
                return str(stub)
            copy = tmp / "file"
            with open(f"/proc/self/fd/{ms.fd}", "rb") as src, open(copy, "wb") as dst:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise BuildError(f"bind mount source {m.source!r}: not a regular file")
                shutil.copyfileobj(src, dst)
            os.chmod(copy, stat.S_IMODE(ms.st.st_mode))
            return str(copy)
        upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
        for d in (upper, work, merged):
            d.mkdir()
        os.chmod(upper, stat.S_IMODE(ms.st.st_mode))
        os.chown(upper, ms.st.st_uid, ms.st.st_gid)
        for inner in ms.hidden:
            parent = upper
            parts = inner.split("/")
            for i, part in enumerate(parts[:-1]):
                parent = parent / part
                if not parent.is_dir():
                    # The upper's copy of a directory shows in the mount: give it the lower's metadata.
                    st = ms.lstat("/".join(parts[:i + 1]))
                    parent.mkdir()
                    os.chown(parent, st.st_uid, st.st_gid)
                    os.chmod(parent, stat.S_IMODE(st.st_mode))
                    os.utime(parent, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.mknod(parent / parts[-1], stat.S_IFCHR | 0o000, os.makedev(0, 0))
        # Directory times last: the whiteouts just made changed them.
        for d in sorted({str(Path(h).parent) for h in ms.hidden if "/" in h}, key=len, reverse=True):
            st = ms.lstat(d)
            os.utime(upper / d, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.utime(upper, ns=(ms.st.st_atime_ns, ms.st.st_mtime_ns))
        # The snapshot's options: rootless (userxattr) refuses redirect_dir being named.
        opts = f"lowerdir={fd_path},upperdir={upper},workdir={work}{overlay_options()}"
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"bind mount of the build context at {m.target}: cannot mount an overlay "
                             f"over {ms.host}: {r.stderr.strip() or 'mount failed'}")
        stack.callback(_umount, merged)
        return str(merged)

    def _cache_dir(self, m: RunMount, stack: contextlib.ExitStack) -> Path:
        """The persistent directory of a cache mount (created with its mode/uid/gid)."""
        ident = m.cache_id if not m.cache_base else f"{m.cache_id}\0{m.cache_base}"
        key = hashlib.sha256(ident.encode()).hexdigest()[:32]
        d = Root(self.root).cachemounts / key
        if not d.is_dir():
            private_dir(d.parent)
            d.mkdir(exist_ok=True)
            os.chmod(d, m.mode if m.mode is not None else 0o755)
            os.chown(d, m.uid, m.gid)
            if m.from_state is not None and m.source:
                _seed_cache(self.layers.view(m.from_state.layers), m.source, d)
        if m.sharing in ("locked", "private"):
            lock = open(Root(self.root).cachemounts / f"{key}.lock", "w")
            stack.callback(lock.close)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return d

    # -- commit --------------------------------------------------------------------------------
    def add_layer(self, state: StageState, layer: LayerRef | None, created_by: str) -> None:
        """Record a step's result in the stage's config (layer + history)."""
        if layer is not None:
            state.layers.append(layer)
        # A config-only step gets its time when the image is committed (see commit_image).
        created = self.now() if layer is not None or self.source_date_epoch is not None else None
        state.config = cfgmod.add_step(state.config, layer.diff_id if layer is not None else None,
                                       cfgmod.history(created_by, created))

    def commit_image(self, state: StageState) -> tuple[Descriptor, Descriptor, ImageConfig]:
        """Write the stage's config and manifest to the store (the one serialization of the
        config in a build); returns (manifest, config descriptor, the final config)."""
        history, created = cfgmod.fill_history_times(state.config.history)
        # No step made a layer and none is timed (FROM scratch with only ENV/LABEL...): like
        # BuildKit's exporter, the image gets no creation time rather than the current one, so
        # the same Dockerfile gives the same image ID on every build.
        if self.source_date_epoch is not None:
            created = self.now()
        elif created is None:
            created = state.config.created      # the base's, if it has one and no history times
        image_config = cfgmod.finalize(replace(state.config, history=history), created)
        data = image_config.to_bytes()
        config_desc = self.store.put_blob(data, mt.OCI_CONFIG)
        manifest = Manifest(config=Descriptor(mt.OCI_CONFIG, config_desc.digest, config_desc.size),
                            layers=[l.descriptor for l in state.layers], media_type=mt.OCI_MANIFEST)
        manifest_desc = self.store.put_manifest(manifest)
        return manifest_desc, config_desc, image_config


def _seed_cache(view, source: str, dest: Path) -> None:
    """Fill a new cache directory with the tree at ``source`` of a stage or image.

    Paths are taken relative to the *resolved* source (the walk starts there), and everything is
    made through descriptors inside ``dest``: each entry is new in a new directory (O_EXCL,
    mkdirat, symlinkat), so nothing is ever written through a link, and only regular files,
    directories and links are copied (a device node would read the host's device; a FIFO would
    block). Files are read with O_NOFOLLOW and must be the inode the view found.
    """
    from registry import inroot
    base = view.resolve(source)
    if base is None:
        return
    s = view.stat(base, follow=False)
    if s is None or not stat.S_ISDIR(s[1].st_mode):
        return
    root_fd = inroot.open_root(dest)
    try:
        for vpath, host, st in list(view.walk(base))[1:]:
            rel = posixpath.relpath(vpath, base)
            if rel.startswith("..") or rel in ("", "."):
                raise BuildError(f"cache mount source {source}: {vpath} is not below {base}")
            pfd, name = inroot.open_parent(root_fd, rel)
            try:
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=pfd)
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(host), name, dir_fd=pfd)
                elif stat.S_ISREG(st.st_mode):
                    src = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                    try:
                        now = os.fstat(src)
                        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
                            raise BuildError(f"cache mount source {vpath}: changed while being read")
                        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                      0o600, dir_fd=pfd)
                        try:
                            with os.fdopen(src, "rb", closefd=False) as fi, \
                                    os.fdopen(out, "wb", closefd=False) as fo:
                                shutil.copyfileobj(fi, fo)
                            os.fchmod(out, stat.S_IMODE(st.st_mode))
                            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                        finally:
                            os.close(out)
                    finally:
                        os.close(src)
                # device nodes, FIFOs and sockets are not seeded
            finally:
                os.close(pfd)
    finally:
        os.close(root_fd)
