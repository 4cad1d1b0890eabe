"""The RUN sandbox: one process in fresh namespaces on a prepared root filesystem.

One isolation, ``oci``: an OCI runtime bundle (``config.json`` per the runtime spec) run with
``runc run --bundle DIR ID``; /proc, /dev (tmpfs + the standard device nodes), /dev/pts,
/dev/shm, /sys (read-only), and generated /etc/resolv.conf, /etc/hosts, /etc/hostname bind
mounts, as Docker sets them up; Docker's default capability set (without CAP_NET_RAW on the
host's network), Docker's default seccomp profile (builder.runtime.seccomp), no_new_privileges,
Docker's masked and read-only /proc paths.

The ``chroot`` isolation is gone: a chroot cannot confine a root process (chroot twice and it
is out), so ``--isolation chroot`` is refused with a message saying so.

Networks: ``default`` is a network namespace of the sandbox's own whose only way out is pasta
(Debian's passt), a user-mode TCP/UDP stack that turns the namespace's traffic into the host's
ordinary sockets, as rootless podman does: the command reaches what the host reaches (package
mirrors), sees none of the host's traffic and none of its loopback services. Containers run as
root use ``network_backend="bridge"`` instead (builder.runtime.bridge: a veth on the host's
pybuild0 bridge, no process per container). ``host`` shares
the host's network namespace; ``none`` is a namespace with loopback only.

The caller gets the exit code; output goes line-agnostic in chunks to a callback.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from registry.inroot import open_in_root, open_root, split_parent

from ..errors import BuildError
from .seccomp import oci_seccomp
from .userns import nested, rootless, runc_argv

HOSTNAME = "buildkitsandbox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set for containers (moby oci/caps/defaults.go).
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# (path, type, major, minor) of the device nodes Docker creates in a container's /dev.
DEVICES = [
    ("/dev/null", "c", 1, 3), ("/dev/zero", "c", 1, 5), ("/dev/full", "c", 1, 7),
    ("/dev/random", "c", 1, 8), ("/dev/urandom", "c", 1, 9), ("/dev/tty", "c", 5, 0),
]

NETWORK_MODES = ("default", "none", "host")
ISOLATIONS = ("oci", "default", "none")   # "default": docker build's name for oci; none: chroot.py

# The private network pasta gives a sandbox (the addresses slirp4netns and podman use): the
# sandbox is 10.0.2.100, its gateway 10.0.2.2, and DNS queries to 10.0.2.3 are forwarded to
# the host's first resolver. Any address the host can reach is reached through pasta.
PRIVATE_ADDRESS, PRIVATE_PREFIX, PRIVATE_GATEWAY, PRIVATE_DNS = "10.0.2.100", 24, "10.0.2.2", "10.0.2.3"

_CHROOT_REMOVED = ("--isolation chroot was removed: a chroot cannot confine a RUN step running as root "
                   "(it could read and write the host); RUN steps and containers need runc "
                   "(Debian's runc package); use --isolation oci (the default)")


def check_isolation(isolation: str | None, containers: bool = False) -> str:
    """The isolation to use for ``isolation`` as given (None: the default): "oci", or "none"
    (builder.runtime.chroot: asked for, or where no user namespace can be made; builds only,
    not ``containers``), or BuildError."""
    if isolation == "chroot":
        raise BuildError(_CHROOT_REMOVED)
    if isolation not in (None, "", "oci", "default", "none"):
        raise BuildError(f"unknown isolation {isolation!r}: use oci (or default), or none")
    from .chroot import resolve_isolation
    return resolve_isolation(isolation, containers)


@dataclass
class Mount:
    """One extra mount in the sandbox: ``bind`` (source = host path) or ``tmpfs``."""

    destination: str
    type: str = "bind"
    source: str = ""
    readonly: bool = False
    options: list[str] = field(default_factory=list)   # extra options, e.g. "size=64m"


@dataclass
class RunSpec:
    """What to run and how.

    ``network``: "default" gives the sandbox its own network namespace with outbound access
    through pasta; "host" shares the host's network namespace (and drops CAP_NET_RAW, so the
    command cannot sniff the host's traffic); "none" gives a private network namespace with
    loopback only.
    """

    args: list[str]
    rootfs: Path
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    network: str = "default"
    hostname: str = HOSTNAME
    # Published ports (default network only): pasta forwards each to the sandbox, as
    # ``(host_ip or "", host_port, container_port, "tcp"|"udp")``.
    ports: list[tuple[str, int, int, str]] = field(default_factory=list)
    terminal: bool = False             # a pty for the process (runc's own, on runc's stdin)
    # How the default network reaches out: "pasta" (a user-mode stack per network) or
    # "bridge" (builder.runtime.bridge: a veth on the host's pybuild0 bridge, root only).
    network_backend: str = "pasta"
    dns: list[str] = field(default_factory=list)            # --dns: resolvers instead of the host's
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)   # --add-host (name, address)
    # A build step keeps the /proc, /dev and /sys directories runc needs when the image lacks
    # them, as BuildKit does (its MountStubsCleaner removes only the step's own mount points
    # and /etc/hosts, /etc/resolv.conf; moby/buildkit#6686 is about those stub directories).
    # A container (run, diff, commit) leaves no trace of them, as Docker's.
    keep_runtime_dirs: bool = False


OutputCallback = Callable[[str, bytes], None]   # (stream name "stdout"|"stderr", chunk)

# Sandboxes running in this process (runc container id -> process), so that an
# interrupted build can stop them from the main thread while other threads wait on them.
_live: dict[int, tuple[str, subprocess.Popen]] = {}
_live_lock = threading.Lock()


def cancel_all() -> None:
    """Kill every sandboxed command this process is running (an interrupted build calls it)."""
    with _live_lock:
        items = list(_live.values())
    for cid, proc in items:
        if cid:
            subprocess.run([*runc_argv(), "kill", cid, "KILL"], capture_output=True)
        try:
            proc.kill()
        except OSError:
            pass


def _track(cid: str, proc: subprocess.Popen) -> None:
    with _live_lock:
        _live[proc.pid] = (cid, proc)


def _untrack(proc: subprocess.Popen) -> None:
    with _live_lock:
        _live.pop(proc.pid, None)


def runtime_available() -> bool:
    """True when ``runc`` is on PATH (the oci isolation can run)."""
    return shutil.which("runc") is not None


def run(spec: RunSpec, output: OutputCallback | None = None, isolation: str = "oci",
        state_dir: Path | None = None, cancel: threading.Event | None = None,
        networks: "NetworkPool | None" = None, stdin: int | None = None) -> int:
    """Run ``spec`` to completion and return its exit code (128+N when killed by signal N).

    ``state_dir`` holds the bundle, generated /etc files and the network namespace (a temp dir
    under it is removed afterwards). The container, its network and the mount-point stubs are
    removed even on KeyboardInterrupt. When ``cancel`` is set (before, or by another thread
    while it runs, together with :func:`cancel_all`), the command is not started or is killed.
    With ``networks``, the default network comes from that pool (and goes back to it) instead
    of being made for this command alone. ``stdin``: a file descriptor the command reads
    (default: /dev/null). With ``spec.terminal`` runc gives the command a pty connected to its
    own stdin/stdout (which must then be a terminal), so the output bypasses ``output``.
    """
    if cancel is not None and cancel.is_set():
        raise BuildError("interrupted: the command was not started")
    if isolation == "none":
        from . import chroot
        return chroot.run(spec, output, cancel=cancel, stdin=stdin)
    spec = _in_container_network(spec)
    seccomp = _preflight(spec, isolation)
    root_fd = open_root(spec.rootfs)
    try:
        _check_top_dirs(root_fd)
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        bundle = Path(tempfile.mkdtemp(prefix="run-", dir=state_dir))
        stubs: list[_Stub] = []
        net: _PrivateNetwork | None = None
        try:
            stubs = _make_mountpoints(root_fd, spec)
            etc = _write_etc_files(bundle, spec)
            if spec.network == "default":
                net = (networks.acquire() if networks is not None and not spec.ports
                       else _PrivateNetwork.start(bundle, spec.ports, spec.network_backend))
                networks = networks if not spec.ports else None
            config = oci_config(spec, etc, netns=str(net.path) if net else None, seccomp=seccomp)
            return _run_oci(spec, bundle, config, output, cancel, stdin=stdin)
        finally:
            try:
                if net is not None:
                    networks.release(net) if networks is not None else net.stop()
            finally:
                _remove_stubs(root_fd, stubs)
                shutil.rmtree(bundle, ignore_errors=True)
    finally:
        os.close(root_fd)


def _check_runnable(spec: RunSpec, isolation: str) -> None:
    """Nothing but a confined runc process with a valid network and port list runs."""
    if spec.ports and spec.network != "default":
        raise BuildError(f"published ports (-p) need the default private network, not --network {spec.network}"
                         + (" (on the host's network a server is reachable at its own port already)"
                            if spec.network == "host" else ""))


def _check_top_dirs(root_fd: int) -> None:
    for top in ("dev", "proc", "sys"):
        try:
            st = os.stat(top, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            # runc creates /dev's links through it on the host side; nothing may follow it.
            raise BuildError(f"the image's /{top} is a symbolic link (to {os.readlink(top, dir_fd=root_fd)}): "
                             "refusing to run a command on this rootfs; /dev, /proc and /sys must be "
                             "directories")


def _preflight(spec: RunSpec, isolation: str) -> dict:
    """Refuse what cannot run confined, before anything is set up; the seccomp profile for
    ``spec`` (a missing profile stops here too)."""
    if spec.network not in NETWORK_MODES:
        raise BuildError(f"unknown network mode {spec.network!r}: use one of {', '.join(NETWORK_MODES)}")
    if not spec.args:
        raise BuildError("nothing to run: the command is empty")
    check_isolation(isolation)
    if os.geteuid() != 0:
        raise BuildError("RUN steps and containers need root, or an ordinary user's pybuild inside its user "
                         "namespace: the CLI enters it by itself; a Python program calls "
                         "builder.runtime.userns.enter() first, before it starts any thread")
    if not runtime_available():
        raise BuildError("runc not found: RUN steps and containers run only under runc, which confines "
                         "them (install Debian's runc package)")
    if spec.network == "default" and spec.network_backend == "pasta" and shutil.which("pasta") is None:
        raise BuildError("pasta not found: the default network of a RUN step or container is a private "
                         "one through pasta (install Debian's passt package), or use --network host "
                         "(shares the host's network) or --network none")
    if spec.network == "default" and spec.network_backend == "pasta" and rootless() \
            and not os.access(TUN_DEVICE, os.R_OK | os.W_OK):
        # Not a silent fall-back to the host's network: that would let the command reach the
        # host's loopback services, which the private network keeps from it.
        raise BuildError(f"rootless, the default private network needs {TUN_DEVICE} readable and writable by "
                         "the user (pasta opens it; udev makes it 0666 on a stock system, it is "
                         f"{_mode_of(TUN_DEVICE)} here): an administrator runs `chmod 0666 {TUN_DEVICE}`; "
                         "or use --network host (the host's network, shared) or --network none")
    _check_runnable(spec, isolation)
    if spec.ports and rootless():
        _check_unprivileged_ports(spec.ports)
    return oci_seccomp(granted_caps(spec))


_told_network = False


def _in_container_network(spec: RunSpec) -> RunSpec:
    """In an unprivileged container without /dev/net/tun (podman and Docker give none by
    default), the default network is the container's own: pasta cannot run, and that network
    namespace is already the container's alone. Said once per process."""
    global _told_network
    if spec.network != "default" or not nested() or os.access(TUN_DEVICE, os.R_OK | os.W_OK) or spec.ports:
        return spec
    if not _told_network:
        _told_network = True
        import sys
        print(f"note: in an unprivileged container without {TUN_DEVICE}: RUN steps and containers use the "
              "container's network (run the container with --device /dev/net/tun for a private one)",
              file=sys.stderr)
    return replace(spec, network="host")


def _check_unprivileged_ports(ports: list[tuple[str, int, int, str]]) -> None:
    """Rootless, pasta binds the host ports as the user: below net.ipv4.ip_unprivileged_port_start
    the kernel refuses, which pasta reports only as 'Failed to bind any port'."""
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        start = 1024
    low = sorted({hp for _ip, hp, _cp, _proto in ports if 0 < hp < start})
    if low:
        raise BuildError(f"rootless, host port{'s' if len(low) > 1 else ''} {', '.join(map(str, low))} cannot be "
                         f"published: ports below {start} need root (net.ipv4.ip_unprivileged_port_start is "
                         f"{start}); publish a higher host port (-p {max(start, 8080)}:{low[0]}) or ask an "
                         "administrator to lower that setting")


TUN_DEVICE = "/dev/net/tun"


def _mode_of(path: str) -> str:
    try:
        return oct(stat.S_IMODE(os.stat(path).st_mode))[2:].rjust(4, "0")
    except OSError as exc:
        return f"missing ({exc.strerror})"


def granted_caps(spec: RunSpec) -> list[str]:
    """Docker's default capabilities, without CAP_NET_RAW on the host's network: a packet socket
    there would see the host's own traffic (credentials included)."""
    if spec.network == "host":
        return [c for c in DEFAULT_CAPS if c != "CAP_NET_RAW"]
    return list(DEFAULT_CAPS)


# --- mount points -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Stub:
    """A mount point this sandbox created: its path inside the rootfs and the inode it got."""

    path: str
    dev: int
    ino: int
    is_dir: bool
    parent_before: int | None = None    # the parent directory's mtime (ns) before the stub
    parent_after: int | None = None     # ... once all stubs were made (set by _make_mountpoints)


RUNTIME_DIRS = ("/proc", "/dev", "/sys")


def _mount_points(spec: RunSpec) -> list[tuple[str, bool]]:
    """(destination, is a directory) of everything the runtime mounts in the rootfs."""
    points = [*((d, True) for d in RUNTIME_DIRS), ("/etc/resolv.conf", False),
              ("/etc/hosts", False), ("/etc/hostname", False)]
    for m in spec.mounts:
        is_dir = True
        if m.type == "bind":
            try:
                is_dir = stat.S_ISDIR(os.stat(m.source).st_mode)
            except OSError:
                pass                        # runc will say what is wrong with the source
        points.append((m.destination, is_dir))
    return points


def _make_mountpoints(root_fd: int, spec: RunSpec) -> list[_Stub]:
    """Create the missing mount points (and their missing parents) inside the rootfs.

    They are not changes made by the command, so they are removed afterwards (BuildKit does the
    same) and never end up in the layer. Each is made through directory fds walked inside the
    root (the image's links resolve as the runtime resolves them: inside it), and the inode of
    each is recorded, so that the cleanup removes exactly these entries and nothing the command
    put in their place.
    """
    made: list[_Stub] = []
    builtin = len(_mount_points(RunSpec(args=[], rootfs=spec.rootfs)))
    content: list[tuple[str, str]] = []   # (resolved destination, host source) of bind mounts
    try:
        for i, (dest, is_dir) in enumerate(_mount_points(spec)):
            try:
                resolved = _make_mountpoint(root_fd, dest, is_dir, made)
            except OSError as exc:
                raise BuildError(f"cannot create the mount point {dest} in the rootfs: {exc.strerror}") from None
            if i < builtin:
                continue
            _check_destination(dest, resolved, content)
            m = spec.mounts[i - builtin]
            if m.type == "bind":
                content.append((resolved, m.source))
    except BaseException:
        _remove_stubs(root_fd, made)
        raise
    if spec.keep_runtime_dirs:
        made = [st for st in made if st.path not in RUNTIME_DIRS]
    # The parents' times once the stubs exist: a parent still at this time when the stubs go
    # was not touched by the command, and gets back its time from before (a RUN that touches
    # a directory makes a layer with it; the stubs alone do not).
    after = {p: m for p in {split_parent(st.path)[0] or "/" for st in made}
             if (m := _mtime_in_root(root_fd, p)) is not None}
    return [replace(st, parent_after=after.get(split_parent(st.path)[0] or "/")) for st in made]


def _mtime_in_root(root_fd: int, path: str) -> int | None:
    try:
        fd = open_in_root(root_fd, path, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _check_destination(dest: str, resolved: str, content: list[tuple[str, str]]) -> None:
    """Refuse a mount that would land on the runtime's own /dev, /proc or /sys (resolved inside
    the rootfs as runc resolves it). Over /dev, runc creates no device nodes and takes the
    mounted tree's `null` for masking: a link there unmasks /proc/keys & co. A mount inside an
    earlier bind mount (`--mount=type=cache,target=/app/node_modules` beside a bind at /app) is
    made by runc inside that mount's content, whose links this resolution cannot see: it is
    allowed when no link lies on its way there, and refused otherwise."""
    where = f"{dest}" + (f" (resolved inside the rootfs to {resolved})" if resolved != dest else "")
    if resolved == "/" or resolved == "/dev" or _under(resolved, "/proc") or _under(resolved, "/sys"):
        raise BuildError(f"cannot mount at {where}: /, /dev, /proc and /sys (and anything under "
                         "/proc and /sys) belong to the sandbox")
    for earlier, source in content:
        if _under(resolved, earlier):
            link = _link_on_the_way(source, resolved[len(earlier):])
            if link is not None:
                raise BuildError(f"cannot mount at {where}: it is inside the earlier bind or cache mount "
                                 f"at {earlier}, whose content has a symbolic link at {earlier}/{link} "
                                 "on the way; mount it elsewhere")


def _link_on_the_way(source: str, rel: str) -> str | None:
    """The first component of ``rel`` inside directory ``source`` that is a symlink (or not a
    directory), None when every existing one is a real directory (runc makes the rest)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    try:
        fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return ""                       # not a directory: nothing can be mounted inside it
    try:
        for i, name in enumerate(parts):
            if name == "..":
                return "/".join(parts[:i + 1])
            try:
                nfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return None
            if not stat.S_ISDIR(os.fstat(nfd).st_mode):
                os.close(nfd)
                return "/".join(parts[:i + 1])
            os.close(fd)
            fd = nfd
        return None
    finally:
        os.close(fd)


def _make_mountpoint(root_fd: int, dest: str, is_dir: bool, made: list[_Stub]) -> str:
    """Make ``dest`` (and missing parents) inside the root; return its path resolved there."""
    todo = [p for p in dest.split("/") if p not in ("", ".")]
    stack: list[tuple[int, str]] = [(os.dup(root_fd), "")]
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            dir_fd, dir_path = stack[-1]
            path = f"{dir_path}/{name}"
            last = not todo
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                if last and not is_dir:
                    before = os.fstat(dir_fd).st_mtime_ns
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=dir_fd)
                    try:
                        st = os.fstat(fd)
                    finally:
                        os.close(fd)
                    made.append(_Stub(path, st.st_dev, st.st_ino, False, before))
                    return path
                before = os.fstat(dir_fd).st_mtime_ns
                os.mkdir(name, 0o755, dir_fd=dir_fd)
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                made.append(_Stub(path, st.st_dev, st.st_ino, True, before))
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), dest)
                target = os.readlink(name, dir_fd=dir_fd)
                if target.startswith("/"):
                    for fd, _ in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            if last:
                return path                 # exists: the runtime mounts over it
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), dest)
            stack.append((os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=dir_fd), path))
        return stack[-1][1] or "/"
    finally:
        for fd, _ in stack:
            os.close(fd)


def _remove_stubs(root_fd: int, stubs: list[_Stub]) -> None:
    """Remove the mount points we made, deepest first, if they are still the very inodes we
    made: the command may have replaced a parent by a link (resolved inside the root here, so
    never to the host) or put files in a directory (rmdir leaves a non-empty one). A parent
    the command did not touch gets back the mtime it had before the stubs; one it touched
    keeps the command's."""
    restore: dict[str, int] = {}
    for stub in stubs:
        parent = split_parent(stub.path)[0] or "/"
        if parent in restore or stub.parent_before is None or stub.parent_after is None:
            continue
        now = _mtime_in_root(root_fd, parent)
        if now is not None:
            restore[parent] = stub.parent_before if now == stub.parent_after else now
    for stub in reversed(stubs):
        try:
            parent, name = split_parent(stub.path)
            dir_fd = open_in_root(root_fd, parent or "/", os.O_PATH | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (stub.dev, stub.ino):
                continue
            if stub.is_dir:
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=dir_fd)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
    for parent, mtime in restore.items():
        try:
            fd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            os.utime(f"/proc/self/fd/{fd}", ns=(st.st_atime_ns, mtime))
        except OSError:
            pass
        finally:
            os.close(fd)


# --- the private network ----------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2


def _bind_new_netns(path: Path) -> None:
    """Make a new network namespace and keep it alive as a bind mount on ``path`` (a file).

    A network namespace belongs to a thread: a short-lived thread unshares one and binds it, so
    neither this process nor a child process has to change namespaces.
    """
    failure: list[str] = []

    def make() -> None:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            failure.append(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
            return
        if _libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), None, _MS_BIND, None) != 0:
            failure.append(f"bind mount on {path}: {os.strerror(ctypes.get_errno())}")

    t = threading.Thread(target=make, name="pybuild-netns")
    t.start()
    t.join()
    if failure:
        raise BuildError(f"cannot create the private network namespace: {failure[0]}")


@dataclass
class _PrivateNetwork:
    """A network namespace bound at ``path`` with a pasta process connecting it to the host."""

    path: Path
    pasta_pid: int = 0
    mounted: bool = False
    bridged: bool = False
    ports: list[tuple[str, int, int, str]] = field(default_factory=list)   # as published

    @classmethod
    def start(cls, bundle: Path, ports: list[tuple[str, int, int, str]] = (),
              backend: str = "pasta") -> "_PrivateNetwork":
        net = cls(bundle / "netns")
        try:
            net.path.touch()
            _bind_new_netns(net.path)
            net.mounted = True
            if backend == "bridge":
                from . import bridge
                net.bridged = True
                lease = bridge.connect(net.path, list(ports))
                net.ports = [tuple(p) for p in lease.ports]
                _write_json_file(bundle / PORTS_RECORD, lease.ports)
                return net
            ports = [(ip, hp or _free_host_port(ip, proto), cp, proto) for ip, hp, cp, proto in ports]
            net.ports = list(ports)
            if ports:
                _write_json_file(bundle / PORTS_RECORD, [list(p) for p in ports])
            pidfile = bundle / "pasta.pid"
            # --runas 0: this pasta cannot join a namespace after switching to nobody. -t/-u
            # none: no port of the sandbox is published on the host; -T/-U none and
            # --no-map-gw: the sandbox reaches none of the host's loopback services. pasta
            # configures the namespace, then forks into the background and exits.
            cmd = ["pasta", "--config-net", "--quiet", "--runas", "0",
                   "-a", PRIVATE_ADDRESS, "-n", str(PRIVATE_PREFIX), "-g", PRIVATE_GATEWAY,
                   "--dns-forward", PRIVATE_DNS, "--no-map-gw",
                   *pasta_port_args(ports), "-T", "none", "-U", "none",
                   "-P", str(pidfile), "--netns", str(net.path)]
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            if pidfile.exists():
                net.pasta_pid = int(pidfile.read_text().strip() or 0)
            if r.returncode != 0:
                detail = " ".join(l for l in r.stderr.decode(errors="replace").splitlines()
                                  if "syslog" not in l).strip()
                raise BuildError(f"pasta could not set up the private network (exit {r.returncode}"
                                 f"{': ' + detail if detail else ''}); use --network host or --network none")
        except BaseException:
            net.stop()
            raise
        return net

    def stop(self) -> None:
        """Stop pasta (or leave the bridge) and release the namespace (idempotent)."""
        if self.bridged or (self.path.parent / "bridge.json").exists():
            from . import bridge
            bridge.release_recorded(self.path.parent)
            self.bridged = False
        if self.pasta_pid > 0:
            try:
                # The pid came from pasta's own file: make sure it is still the pasta of this
                # namespace (its command name is passt's binary, e.g. passt.avx2).
                args = Path(f"/proc/{self.pasta_pid}/cmdline").read_bytes().split(b"\0")
                if os.fsencode(self.path) in args:
                    os.kill(self.pasta_pid, signal.SIGTERM)
                    _wait_gone(self.pasta_pid)
            except (OSError, ValueError):
                pass
            self.pasta_pid = 0
        if self.mounted:
            if _libc.umount2(os.fsencode(self.path), _MNT_DETACH) == 0 or ctypes.get_errno() == errno.EINVAL:
                self.mounted = False        # EINVAL: not (or no longer) a mount point
        if not self.mounted:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _wait_gone(pid: int, timeout: float = 2.0) -> None:
    """Wait a little for a process that is not our child (pasta daemonizes) to exit, so that
    what it held (published ports) is free when `rm` or `run --rm` returns."""
    import time
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return              # exited; its parent has yet to reap it
        except (OSError, IndexError):
            return
        time.sleep(0.01)


PORTS_RECORD = "ports.json"      # in a bundle: the published ports, host ports as chosen


def _free_host_port(ip: str, proto: str) -> int:
    """A host port nothing listens on now (``-p CONTAINER_PORT`` without a host port)."""
    import socket
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip or "0.0.0.0", 0))
        return s.getsockname()[1]


def published_ports(state_dir: Path) -> list[list]:
    """The published ports of the network of each bundle under ``state_dir``:
    ``[host ip, host port, container port, proto]`` with the host ports as chosen."""
    out: list[list] = []
    for rec in sorted(Path(state_dir).glob(f"run-*/{PORTS_RECORD}")):
        try:
            out += json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
    return out


def pasta_port_args(ports: list[tuple[str, int, int, str]]) -> list[str]:
    """pasta's inbound forwarding options for published ports: ``-t [ADDR/]HOST:CONTAINER`` per
    TCP port, ``-u`` per UDP port; ``none`` for a protocol with no port (nothing published)."""
    out: list[str] = []
    for proto, opt in (("tcp", "-t"), ("udp", "-u")):
        specs = [f"{ip + '/' if ip else ''}{host}:{ctr}" for ip, host, ctr, p in ports if p == proto]
        for sp in specs or ["none"]:
            out += [opt, sp]
    return out


def parse_publish(spec: str) -> tuple[str, int, int, str]:
    """``[[IP:]HOST:]CONTAINER[/tcp|udp]`` (docker run -p) -> (ip, host port, container port,
    proto); a host port left out (``-p 8080``, ``-p 127.0.0.1::8080``) is 0: one is picked."""
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    parts = rest.split(":")
    if proto not in ("tcp", "udp") or len(parts) not in (1, 2, 3):
        raise BuildError(f"invalid -p {spec!r}: use [[IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]")
    ip = parts[0] if len(parts) == 3 else ""
    try:
        host = int(parts[-2]) if len(parts) >= 2 and parts[-2] != "" else 0
        ctr = int(parts[-1])
        if ip:
            import ipaddress
            if ipaddress.ip_address(ip).version != 4:
                raise ValueError
    except ValueError:
        raise BuildError(f"invalid -p {spec!r}: ports are numbers, the address an IPv4 address") from None
    if not (0 <= host < 65536 and 0 < ctr < 65536):
        raise BuildError(f"invalid -p {spec!r}: ports are 1-65535")
    return ip, host, ctr, proto


class NetworkPool:
    """Private networks reused by the RUN steps of one build (one per step running at a time).

    Making a network (namespace + pasta) costs tens of milliseconds; a build pays it once per
    concurrent step, and can start the first in the background (:meth:`prewarm`) while other
    steps run. Steps of one build are one trust domain (BuildKit pools its namespaces too), and
    a RUN step cannot leave state in the namespace that outlives its processes: it has no
    CAP_NET_ADMIN. Each network lives in
    a ``run-net-*`` directory of ``state_dir``, so :func:`release_networks` finds those a killed
    process left behind.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._idle: list[_PrivateNetwork] = []
        self._made: list[_PrivateNetwork] = []
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        self._warm_error: BaseException | None = None

    def _make(self) -> _PrivateNetwork:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        net = _PrivateNetwork.start(Path(tempfile.mkdtemp(prefix="run-net-", dir=self.state_dir)))
        with self._lock:
            self._made.append(net)
        return net

    def prewarm(self) -> None:
        """Start making one network in the background, unless one is ready or on its way."""
        with self._lock:
            if self._idle or self._warming is not None or shutil.which("pasta") is None:
                return

            def warm() -> None:
                try:
                    net = self._make()
                except BaseException as exc:     # reported by the step that needs it
                    self._warm_error = exc
                    return
                with self._lock:
                    self._idle.append(net)

            self._warming = threading.Thread(target=warm, name="pybuild-netwarm", daemon=True)
            self._warming.start()

    def acquire(self) -> _PrivateNetwork:
        """A ready network for one command (made now when none is idle)."""
        warming = self._warming
        if warming is not None:
            warming.join()
            self._warming = None
        with self._lock:
            if self._idle:
                return self._idle.pop()
        self._warm_error = None            # a failed prewarm is retried here, and reported
        return self._make()

    def release(self, net: _PrivateNetwork) -> None:
        with self._lock:
            self._idle.append(net)

    def close(self) -> None:
        """Stop every network of the pool and remove their directories."""
        if self._warming is not None:
            self._warming.join()
            self._warming = None
        with self._lock:
            made, self._made, self._idle = self._made, [], []
        for net in made:
            net.stop()
            shutil.rmtree(net.path.parent, ignore_errors=True)


def release_networks(state_dir: Path) -> None:
    """Stop the pasta and release the network namespace of every bundle under ``state_dir``
    whose process died before its own cleanup (a SIGKILLed supervisor or build), so that the
    directory can be removed."""
    for netns in Path(state_dir).glob("run-*/netns"):
        release_network(netns.parent)


def release_network(bundle: Path) -> None:
    """Stop the pasta of the network a dead process left in ``bundle`` and release its namespace."""
    netns = Path(bundle) / "netns"
    if (Path(bundle) / "bridge.json").exists():
        from . import bridge
        bridge.release_recorded(Path(bundle))
    if not netns.exists():
        return
    net = _PrivateNetwork(netns, mounted=True)
    try:
        net.pasta_pid = int((netns.parent / "pasta.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        pass
    net.stop()
    if net.mounted:
        raise BuildError(f"cannot release the network namespace bound at {netns}: "
                         f"{os.strerror(ctypes.get_errno())}")


def oci_config(spec: RunSpec, etc: dict[str, Path], netns: str | None = None,
               seccomp: dict | None = None) -> dict:
    """The OCI runtime config.json for ``spec`` (``etc``: generated hosts/hostname/resolv.conf;
    ``netns``: the bound network namespace of the default network; ``seccomp``: the converted
    profile, default: builder.runtime.seccomp's for the granted capabilities)."""
    env = list(spec.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=" + DEFAULT_PATH)
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        # Rootless on the host's network the kernel refuses a new sysfs (the network namespace
        # is not ours): the host's, bound read-only, as rootless podman does.
        {"destination": "/sys", "type": "bind", "source": "/sys",
         "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        if (spec.network == "host" and rootless()) or nested() else
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for dest in ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname"):
        mounts.append({"destination": dest, "type": "bind", "source": str(etc[dest]),
                       "options": ["rbind", "rprivate", "rw"]})
    for m in spec.mounts:
        mounts.append(_oci_mount(m))
    # In an unprivileged container the container's /proc is masked (over-mounted), so the
    # kernel refuses a new procfs: the container's is bound in, and the command shares its pid
    # namespace (and hostname), as buildah does there (SECURITY.md, section 4c).
    namespaces: list[dict] = [{"type": t} for t in (("ipc", "mount") if nested() else ("pid", "ipc", "uts", "mount"))]
    if nested():
        mounts[0] = {"destination": "/proc", "type": "bind", "source": "/proc",
                     "options": ["rbind", "nosuid", "noexec", "nodev"]}
    if spec.network == "none":
        namespaces.append({"type": "network"})
    elif spec.network == "default":
        namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    caps = granted_caps(spec)
    # The OCI spec wants an absolute cwd; an image's relative WorkingDir (`../../..`) is taken
    # from the container's root, where runc resolves it after pivot_root: it cannot leave it.
    cwd = spec.cwd or "/"
    if not cwd.startswith("/"):
        cwd = "/" + cwd
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid,
                     "additionalGids": sorted(set(spec.additional_gids))},
            "args": list(spec.args),
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        **({} if nested() else {"hostname": spec.hostname}),
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "devices": [{"path": p, "type": t, "major": ma, "minor": mi, "fileMode": 0o666,
                         "uid": 0, "gid": 0} for p, t, ma, mi in DEVICES],
            # Without a device rule the runtime's cgroup denies even /dev/null.
            "resources": {"devices": [{"allow": False, "access": "rwm"}] + [
                {"allow": True, "type": t, "major": ma, "minor": mi, "access": "rwm"}
                for _p, t, ma, mi in DEVICES] + [
                {"allow": True, "type": "c", "major": 136, "access": "rwm"},   # /dev/pts/*
                {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"}]},  # ptmx
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp if seccomp is not None else oci_seccomp(caps),
        },
    }
def _oci_mount(m: Mount) -> dict:
    if m.type == "bind":
        opts = ["rbind", "rprivate", "ro" if m.readonly else "rw"] + m.options
        return {"destination": m.destination, "type": "bind", "source": m.source, "options": opts}
    if m.type == "tmpfs":
        opts = ["nosuid", "nodev", "mode=1777"] + m.options + (["ro"] if m.readonly else [])
        return {"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": opts}
    raise BuildError(f"unsupported sandbox mount type {m.type!r} at {m.destination}")


def _write_etc_files(bundle: Path, spec: RunSpec) -> dict[str, Path]:
    """Generate /etc/hosts, /etc/hostname and /etc/resolv.conf the way Docker's builder does
    (with the ``--add-host`` entries and ``--dns`` resolvers of the spec)."""
    hosts = bundle / "hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost {spec.hostname}\n"
                     "::1\tlocalhost ip6-localhost ip6-loopback\n"
                     + "".join(f"{addr}\t{name}\n" for name, addr in spec.extra_hosts))
    hostname = bundle / "hostname"
    hostname.write_text(spec.hostname + "\n")
    resolv = bundle / "resolv.conf"
    resolv.write_text(_resolv_conf(spec.network, spec.network_backend, spec.dns))
    return {"/etc/hosts": hosts, "/etc/hostname": hostname, "/etc/resolv.conf": resolv}


def _resolv_conf(network: str, backend: str = "pasta", dns: list[str] | None = None) -> str:
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    lines = text.splitlines()
    servers = [l for l in lines if l.split()[:1] == ["nameserver"]]
    if dns:
        return "\n".join([f"nameserver {d}" for d in dns] + [l for l in lines if l not in servers]) + "\n"
    if network == "default" and backend == "pasta":
        # pasta's DNS forwarder, which asks the host's first resolver (loopback ones included).
        return "\n".join([f"nameserver {PRIVATE_DNS}"] + [l for l in lines if l not in servers]) + "\n"
    if network == "none" or network == "default":
        # Loopback resolvers are useless (and misleading) in a private network namespace.
        lines = [l for l in lines if not (l in servers and l.split()[1:2] and l.split()[1].startswith("127."))]
        servers = [l for l in servers if l in lines]
    if not servers and network != "none":
        lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return "\n".join(lines) + ("\n" if lines else "")


def _pump(proc: subprocess.Popen, output: OutputCallback | None) -> None:
    """Forward the child's stdout/stderr to ``output`` until both close."""
    sel = selectors.DefaultSelector()
    for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        if f is not None:
            sel.register(f, selectors.EVENT_READ, name)
    open_count = len(sel.get_map())
    while open_count:
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_count -= 1
                continue
            if output is not None:
                output(key.data, chunk)
    sel.close()


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def _run_oci(spec: RunSpec, bundle: Path, config: dict,
             output: OutputCallback | None, cancel: threading.Event | None,
             stdin: int | None = None) -> int:
    config["process"]["terminal"] = bool(spec.terminal)
    (bundle / "config.json").write_text(json.dumps(config))
    cid = "pybuild-" + os.urandom(8).hex()   # not uuid: it imports `platform`, a start-up cost
    cmd = [*runc_argv(), "run", "--bundle", str(bundle), cid]
    # With a terminal runc copies the pty to its stdout: a pipe too, so that the output reaches
    # the log (`logs` of a -t container) as well as the caller.
    pipe = subprocess.PIPE
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=pipe,
                                stderr=pipe, start_new_session=True)
        _track(cid, proc)
        try:
            if cancel is not None and cancel.is_set():     # cancelled while starting
                subprocess.run([*runc_argv(), "kill", cid, "KILL"], capture_output=True)
            _pump(proc, output)
            return _exit_code(proc.wait())
        except BaseException:
            subprocess.run([*runc_argv(), "kill", cid, "KILL"], capture_output=True)
            proc.kill()
            proc.wait()
            raise
        finally:
            _untrack(proc)
    finally:
        subprocess.run([*runc_argv(), "delete", "--force", cid], capture_output=True)


# --- bundles that outlive this process (detached containers under a monitor) -------------------

BUNDLE_RECORD = "pybuild-bundle.json"


def create_bundle(spec: RunSpec, state_dir: Path, isolation: str = "oci") -> Path:
    """Prepare everything :func:`run` prepares (checks, mount-point stubs, /etc files, the
    private network with its published ports, config.json with the same confinement) in a
    bundle directory under ``state_dir``, for a runtime started by another process (``runc
    create`` under conmon). What must be undone later is recorded in the bundle's
    ``pybuild-bundle.json``; :func:`release_bundle` undoes it, from any process."""
    spec = _in_container_network(spec)
    seccomp = _preflight(spec, isolation)
    root_fd = open_root(spec.rootfs)
    try:
        _check_top_dirs(root_fd)
        state_dir.mkdir(parents=True, exist_ok=True)
        bundle = Path(tempfile.mkdtemp(prefix="run-", dir=state_dir))
        stubs: list[_Stub] = []
        net: _PrivateNetwork | None = None
        try:
            stubs = _make_mountpoints(root_fd, spec)
            _write_json_file(bundle / BUNDLE_RECORD, {"rootfs": str(spec.rootfs),
                                                      "stubs": [s.__dict__ for s in stubs]})
            etc = _write_etc_files(bundle, spec)
            if spec.network == "default":
                net = _PrivateNetwork.start(bundle, spec.ports, spec.network_backend)
            config = oci_config(spec, etc, netns=str(net.path) if net else None, seccomp=seccomp)
            config["process"]["terminal"] = bool(spec.terminal)
            _write_json_file(bundle / "config.json", config)
            return bundle
        except BaseException:
            try:
                if net is not None:
                    net.stop()
            finally:
                _remove_stubs(root_fd, stubs)
                shutil.rmtree(bundle, ignore_errors=True)
            raise
    finally:
        os.close(root_fd)


def _write_json_file(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def release_bundle(bundle: Path) -> None:
    """Undo :func:`create_bundle` once the runtime's container is gone: stop pasta, release the
    network namespace, remove the stubs (the very inodes made, as :func:`run` does) and the
    bundle directory. Idempotent."""
    bundle = Path(bundle)
    try:
        release_network(bundle)
    finally:
        try:
            rec = json.loads((bundle / BUNDLE_RECORD).read_text())
        except (OSError, ValueError):
            rec = None
        if rec and rec.get("stubs"):
            try:
                root_fd = open_root(Path(rec["rootfs"]))
            except OSError:
                root_fd = -1
            if root_fd >= 0:
                try:
                    _remove_stubs(root_fd, [_Stub(**s) for s in rec["stubs"]])
                finally:
                    os.close(root_fd)
        shutil.rmtree(bundle, ignore_errors=True)


def exec_process(bundle: Path, args: list[str], env: list[str] | None = None, cwd: str | None = None,
                 uid: int | None = None, gid: int | None = None, additional_gids: list[int] | None = None,
                 terminal: bool = False) -> dict:
    """The process spec for ``runc exec --process`` in the container of ``bundle``: the
    container's own process (capabilities, no_new_privileges, rlimits; runc applies the
    container's seccomp profile to every exec'd process) with the command, and the given env
    additions, working directory and user."""
    proc = json.loads((Path(bundle) / "config.json").read_text())["process"]
    proc = dict(proc)
    if not args:
        raise BuildError("exec: nothing to run: give a command")
    proc["args"] = list(args)
    merged = list(proc.get("env", []))
    for item in env or []:
        key = item.partition("=")[0]
        merged = [e for e in merged if e.partition("=")[0] != key] + [item]
    proc["env"] = merged
    if cwd:
        proc["cwd"] = cwd if cwd.startswith("/") else "/" + cwd
    if uid is not None:
        proc["user"] = {"uid": uid, "gid": gid or 0, "additionalGids": sorted(set(additional_gids or []))}
    proc["terminal"] = bool(terminal)
    proc["noNewPrivileges"] = True
    return proc
