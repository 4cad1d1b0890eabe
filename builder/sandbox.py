"""The RUN sandbox: one process in fresh namespaces on a prepared root filesystem.

Two isolations:

* ``oci`` (default): an OCI runtime bundle (``config.json`` per the runtime spec) run with
  ``runc run --bundle DIR ID``; /proc, /dev (tmpfs + the standard device nodes), /dev/pts,
  /dev/shm, /sys (read-only), and generated /etc/resolv.conf, /etc/hosts, /etc/hostname bind
  mounts, as Docker sets them up; Docker's default capability set, no_new_privileges, Docker's
  masked and read-only /proc paths.
* ``chroot``: for machines without a runtime, ``unshare`` (mount, uts, ipc, pid and optionally
  net namespaces) and a small helper (``python3 -m builder.sandbox``) that mounts the same
  filesystems, chroots and drops to the user.

The caller gets the exit code; output goes line-agnostic in chunks to a callback.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import BuildError

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

    ``network``: "host" shares the host's network namespace; "none" gives a private network
    namespace with no interfaces configured; "default" is the host network too, as BuildKit does
    when no CNI network is configured (pybuild sets up none).
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


OutputCallback = Callable[[str, bytes], None]   # (stream name "stdout"|"stderr", chunk)

# Sandboxes running in this process (container id or "" for chroot -> process), so that an
# interrupted build can stop them from the main thread while other threads wait on them.
_live: dict[int, tuple[str, subprocess.Popen]] = {}
_live_lock = threading.Lock()


def cancel_all() -> None:
    """Kill every sandboxed command this process is running (an interrupted build calls it)."""
    with _live_lock:
        items = list(_live.values())
    for cid, proc in items:
        if cid:
            subprocess.run(["runc", "kill", cid, "KILL"], capture_output=True)
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
        state_dir: Path | None = None, cancel: threading.Event | None = None) -> int:
    """Run ``spec`` to completion and return its exit code (128+N when killed by signal N).

    ``state_dir`` holds the bundle and generated /etc files (a temp dir under it is removed
    afterwards). The container is deleted even on KeyboardInterrupt. When ``cancel`` is set
    (before, or by another thread while it runs, together with :func:`cancel_all`), the command
    is not started or is killed.
    """
    if cancel is not None and cancel.is_set():
        raise BuildError("interrupted: the command was not started")
    if spec.network not in NETWORK_MODES:
        raise BuildError(f"unknown network mode {spec.network!r}: use one of {', '.join(NETWORK_MODES)}")
    if not spec.args:
        raise BuildError("nothing to run: the command is empty")
    if isolation not in ("oci", "chroot"):
        raise BuildError(f"unknown isolation {isolation!r}: use oci or chroot")
    if isolation == "oci" and not runtime_available():
        raise BuildError("runc not found: install Debian's runc, or use --isolation chroot")
    for top in ("dev", "proc", "sys"):
        link = os.path.join(spec.rootfs, top)
        if os.path.islink(link):
            # runc creates /dev's links through it on the host side; nothing may follow it.
            raise BuildError(f"the image's /{top} is a symbolic link (to {os.readlink(link)}): refusing to run "
                             "a command on this rootfs; /dev, /proc and /sys must be directories")
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    bundle = Path(tempfile.mkdtemp(prefix="run-", dir=state_dir))
    stubs = _missing_mountpoints(Path(spec.rootfs), spec)
    try:
        etc = _write_etc_files(bundle, spec)
        if isolation == "oci":
            return _run_oci(spec, bundle, etc, output, cancel)
        return _run_chroot(spec, bundle, etc, output, cancel)
    finally:
        _remove_stubs(stubs)
        shutil.rmtree(bundle, ignore_errors=True)


def in_root(root: str | os.PathLike, path: str) -> str:
    """The host path of ``path`` inside ``root``, symlinks resolved as in a chroot: an absolute
    or climbing link target is taken from ``root``, so the result never leaves it (components
    that do not exist yet are kept as named)."""
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, name)
        if os.path.islink(host):
            hops += 1
            if hops > 40:
                raise BuildError(f"too many levels of symbolic links resolving {path} in the rootfs")
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            todo = [t for t in target.split("/") if t] + todo
            continue
        done.append(name)
    return os.path.join(root, *done)


def _mount_destinations(spec: RunSpec) -> list[str]:
    return ["/proc", "/dev", "/sys", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname"] + [
        m.destination for m in spec.mounts]


def _missing_mountpoints(rootfs: Path, spec: RunSpec) -> list[Path]:
    """Paths (and their missing parents) the runtime will create as mount points.

    They are not changes made by the command, so they are removed afterwards (BuildKit does the
    same) and never end up in the layer. Listed deepest first.
    """
    missing: list[Path] = []
    for dest in _mount_destinations(spec):
        # Where the runtime will really create it: links in the image resolve inside it.
        p = Path(in_root(rootfs, dest))
        chain = []
        while p != rootfs and not os.path.lexists(p):
            chain.append(p)
            p = p.parent
        missing.extend(c for c in chain if c not in missing)
    return sorted(missing, key=lambda q: len(q.parts), reverse=True)


def _remove_stubs(stubs: list[Path]) -> None:
    for p in stubs:
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()           # only if empty: the command may have put files there
            elif p.is_file() and p.stat().st_size == 0:
                p.unlink()
        except OSError:
            pass


def oci_config(spec: RunSpec, etc: dict[str, Path]) -> dict:
    """The OCI runtime config.json for ``spec`` (``etc``: generated hosts/hostname/resolv.conf)."""
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
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for dest in ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname"):
        mounts.append({"destination": dest, "type": "bind", "source": str(etc[dest]),
                       "options": ["rbind", "rprivate", "rw"]})
    for m in spec.mounts:
        mounts.append(_oci_mount(m))
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.network == "none":
        namespaces.append({"type": "network"})
    caps = list(DEFAULT_CAPS)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid,
                     "additionalGids": sorted(set(spec.additional_gids))},
            "args": list(spec.args),
            "env": env,
            "cwd": spec.cwd or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.hostname,
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
    """Generate /etc/hosts, /etc/hostname and /etc/resolv.conf the way Docker's builder does."""
    hosts = bundle / "hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost {spec.hostname}\n"
                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
    hostname = bundle / "hostname"
    hostname.write_text(spec.hostname + "\n")
    resolv = bundle / "resolv.conf"
    resolv.write_text(_resolv_conf(spec.network))
    return {"/etc/hosts": hosts, "/etc/hostname": hostname, "/etc/resolv.conf": resolv}


def _resolv_conf(network: str) -> str:
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    lines = text.splitlines()
    if network == "none":
        # Loopback resolvers are useless (and misleading) in a private network namespace.
        lines = [l for l in lines if not (l.split()[:1] == ["nameserver"] and
                                          l.split()[1:2] and l.split()[1].startswith("127."))]
    if not any(l.startswith("nameserver") for l in lines) and network != "none":
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


def _run_oci(spec: RunSpec, bundle: Path, etc: dict[str, Path],
             output: OutputCallback | None, cancel: threading.Event | None) -> int:
    (bundle / "config.json").write_text(json.dumps(oci_config(spec, etc)))
    cid = "pybuild-" + os.urandom(8).hex()   # not uuid: it imports `platform`, a start-up cost
    cmd = ["runc", "run", "--bundle", str(bundle), cid]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        _track(cid, proc)
        try:
            if cancel is not None and cancel.is_set():     # cancelled while starting
                subprocess.run(["runc", "kill", cid, "KILL"], capture_output=True)
            _pump(proc, output)
            return _exit_code(proc.wait())
        except BaseException:
            subprocess.run(["runc", "kill", cid, "KILL"], capture_output=True)
            proc.kill()
            proc.wait()
            raise
        finally:
            _untrack(proc)
    finally:
        subprocess.run(["runc", "delete", "--force", cid], capture_output=True)


def _run_chroot(spec: RunSpec, bundle: Path, etc: dict[str, Path],
                output: OutputCallback | None, cancel: threading.Event | None) -> int:
    env = list(spec.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=" + DEFAULT_PATH)
    plan = {
        "rootfs": str(spec.rootfs), "args": spec.args, "env": env, "cwd": spec.cwd or "/",
        "uid": spec.uid, "gid": spec.gid, "groups": sorted(set(spec.additional_gids)),
        "hostname": spec.hostname,
        "new_net": spec.network == "none",
        "binds": [[str(src), dest, False] for dest, src in etc.items()] +
                 [[m.source, m.destination, m.readonly] for m in spec.mounts if m.type == "bind"],
        "tmpfs": [[m.destination, ",".join(["mode=1777"] + m.options)]
                  for m in spec.mounts if m.type == "tmpfs"],
    }
    plan_file = bundle / "plan.json"
    plan_file.write_text(json.dumps(plan))
    flags = ["--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child"]
    if spec.network == "none":
        flags.append("--net")
    repo = str(Path(__file__).resolve().parents[1])
    cmd = ["unshare", *flags, sys.executable, "-m", "builder.sandbox", str(plan_file)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={"PYTHONPATH": repo, "PATH": os.environ.get("PATH", DEFAULT_PATH)})
    _track("", proc)
    try:
        if cancel is not None and cancel.is_set():
            proc.kill()
        _pump(proc, output)
        return _exit_code(proc.wait())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        _untrack(proc)


def _chroot_child(plan_path: str) -> None:
    """Runs inside the new namespaces: set up mounts, chroot, drop privileges, exec."""
    import ctypes
    plan = json.loads(Path(plan_path).read_text())
    libc = ctypes.CDLL(None, use_errno=True)
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18

    def mount(src: str, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        if libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None,
                      ctypes.c_ulong(flags), data.encode() if data else None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")

    root = plan["rootfs"]
    mount("none", "/", None, MS_REC | MS_PRIVATE)

    def target(dest: str, is_dir: bool) -> str:
        # Resolved inside the rootfs: joined as text, an image's `etc -> /etc` would have us
        # create mount points (and mount) on the host.
        path = in_root(root, dest)
        if is_dir:
            os.makedirs(path, exist_ok=True)
        elif not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        return path

    mount("proc", target("/proc", True), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    devdir = target("/dev", True)
    mount("tmpfs", devdir, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for dev, _t, _ma, _mi in DEVICES:
        mount(dev, target(dev, False), None, MS_BIND)
    mount("devpts", target("/dev/pts", True), "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", os.path.join(devdir, "ptmx"))
    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        os.symlink(f"/proc/self/fd/{fd}", os.path.join(devdir, name))
    os.symlink("/proc/self/fd", os.path.join(devdir, "fd"))
    mount("shm", target("/dev/shm", True), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "mode=1777,size=65536k")
    mount("sysfs", target("/sys", True), "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    for src, dest, ro in plan["binds"]:
        t = target(dest, os.path.isdir(src))
        mount(src, t, None, MS_BIND | MS_REC)
        if ro:
            mount("none", t, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for dest, opts in plan["tmpfs"]:
        mount("tmpfs", target(dest, True), "tmpfs", MS_NOSUID | MS_NODEV, opts)
    import socket
    socket.sethostname(plan["hostname"])
    if plan["new_net"]:
        _loopback_up()
    os.chroot(root)
    os.chdir(plan["cwd"] if os.path.isdir(plan["cwd"]) else "/")
    os.setgroups(plan["groups"])
    os.setgid(plan["gid"])
    os.setuid(plan["uid"])
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in plan["env"])
    args = plan["args"]
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        sys.stderr.write(f"exec {args[0]}: {exc.strerror}\n")
        os._exit(127)


def _loopback_up() -> None:
    """Bring up ``lo`` in a new network namespace (runc does this for the oci isolation)."""
    import fcntl
    import socket
    import struct
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


if __name__ == "__main__":
    _chroot_child(sys.argv[1])
