"""Isolation ``none``: RUN steps chrooted into a copied root filesystem, no namespaces at all.

For root of a container whose seccomp profile refuses user namespaces (Docker's default
profile refuses ``unshare`` and namespace flags of ``clone`` without CAP_SYS_ADMIN), where
neither runc nor pybuild's nested user namespace can run. Kaniko's answer is to run the steps
on the container's own root; buildah's ``--isolation chroot`` still makes mount and UTS
namespaces. This mode does what is left: the rootfs is a plain directory (the copied snapshot
of builder.runtime.snapshot, no overlay mount), the step runs chrooted there as the image's
user, and the layer is the difference of the tree before and after (the same differ as the
copy snapshot fallback), so a build gives the layers the ``oci`` isolation gives.

What it does not isolate (SECURITY.md 4d): the step runs as the container's root with the
container's capabilities, in the container's pid, network, IPC, UTS and mount namespaces; a
root step can leave the chroot. The container is the only boundary.

No mounts can be made: /proc and /sys are absent in the step, /dev gets the standard nodes by
mknod (with CAP_MKNOD, Docker's default), /etc/hosts, /etc/resolv.conf and /etc/hostname the
container's where the image has none (removed afterwards, as BuildKit removes its stubs), and
``RUN --mount`` types other than env-only secrets are refused.

Selected with ``--isolation none``, or automatically (with a notice) when root of a container
could not make a user namespace (builder.runtime.userns.enter calls :func:`no_namespace`).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from registry.fsutil import has_capability, use_user_overlay_xattrs
from registry.inroot import open_beneath, open_in_root, open_root, split_parent

from ..errors import BuildError

if TYPE_CHECKING:
    from .sandbox import OutputCallback, RunSpec

# builder.runtime.sandbox (the stubs, output pump, process tracking shared with the oci
# isolation) is imported where a step runs: the CLI asks resolve_isolation on every build's
# start-up, before the no-op fast path.

CAP_SYS_CHROOT, CAP_MKNOD = 18, 27
ETC_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")

_refused: str | None = None          # why no user namespace could be made (set by no_namespace)
_told = False


def no_namespace(reason: str) -> None:
    """Record that this process (root of a container) cannot make a user namespace, and why:
    builds then default to isolation ``none``. Its store keeps overlay metadata in user.*
    xattrs (trusted.* ones need CAP_SYS_ADMIN), the format of a rootless store."""
    global _refused
    _refused = reason
    use_user_overlay_xattrs()


def namespace_refused() -> str | None:
    """Why no user namespace could be made, or None when nothing was refused."""
    return _refused


def resolve_isolation(isolation: str | None, containers: bool = False) -> str:
    """"oci" or "none" for ``isolation`` as given (None, "" or "default": the default); for
    ``containers`` (`pybuild run`), "none" is refused: a container needs namespaces."""
    global _told
    if containers and (isolation == "none" or (_refused and isolation in (None, "", "oci", "default"))):
        raise BuildError(("--isolation none is for RUN steps of builds only: " if isolation == "none" else
                          f"{_refused}; ") + "containers (`pybuild run`) need namespaces of their own (runc)")
    if isolation == "none":
        return "none"
    if _refused is None:
        return "oci"
    if isolation == "oci":
        raise BuildError(f"{_refused}; --isolation oci needs one (leave --isolation out, or give --isolation "
                         "none, to run RUN steps in a chroot instead)")
    if not _told:
        _told = True
        print("note: no user namespace can be made here (seccomp or the kernel refuses it): RUN steps use "
              "--isolation none (a chroot in this container, without namespaces; see SECURITY.md 4d)",
              file=sys.stderr)
    return "none"


def check_mounts(types: list[tuple[str, bool]]) -> None:
    """Refuse the RUN --mount types that need a mount namespace; ``types`` is (type, env-only)."""
    for kind, env_only in types:
        if kind == "secret" and env_only:
            continue                  # an environment variable: nothing to mount
        raise BuildError(f"RUN --mount=type={kind} needs a mount, and --isolation none makes none (no "
                         "namespace can be made here); only --mount=type=secret,env=NAME works in this mode: "
                         "run the build where user namespaces are allowed (e.g. podman's default seccomp "
                         "profile) for this step")


def _preflight(spec: RunSpec) -> None:
    if not spec.args:
        raise BuildError("nothing to run: the command is empty")
    if os.geteuid() != 0:
        raise BuildError("--isolation none runs RUN steps with chroot(2), which needs root (of the container)")
    if not has_capability(CAP_SYS_CHROOT):
        raise BuildError("--isolation none runs RUN steps in a chroot, which needs CAP_SYS_CHROOT, and this "
                         "process lacks it: start the container with it (Docker's and podman's default "
                         "capabilities include it; e.g. `--cap-add SYS_CHROOT`)")
    if spec.network == "none":
        raise BuildError("--network none needs a network namespace, which --isolation none cannot make: "
                         "RUN steps share the container's network")
    if spec.mounts:
        raise BuildError(f"--isolation none cannot mount {spec.mounts[0].destination} (no mount namespace)")
    if spec.ports or spec.terminal:
        raise BuildError("--isolation none runs build steps only (no published ports, no terminal)")


# Run in a fresh interpreter (imports done before the chroot, which has no Python): chroot to
# the descriptor, make and enter the working directory as root (runc does the same), drop to
# the step's user, set no_new_privs, exec. The settings come on a pipe, not argv (env secrets).
_SHIM = r"""
import ctypes, json, os, sys, warnings  # warnings: os.execvpe imports it, after the chroot
cfg_fd, root_fd = int(sys.argv[1]), int(sys.argv[2])
with os.fdopen(cfg_fd, "rb") as f:
    cfg = json.loads(f.read())
libc = ctypes.CDLL(None, use_errno=True)
def fail(what, exc, code):
    os.write(2, f"pybuild: {what}: {exc.strerror}\n".encode())
    os._exit(code)
try:
    os.fchdir(root_fd); os.chroot("."); os.chdir("/"); os.close(root_fd)
except OSError as exc:
    fail("chroot", exc, 125)
try:
    os.makedirs(cfg["cwd"], exist_ok=True); os.chdir(cfg["cwd"])
except OSError as exc:
    fail(f"working directory {cfg['cwd']}", exc, 125)
try:
    os.setgroups(cfg["groups"]); os.setresgid(*[cfg["gid"]] * 3); os.setresuid(*[cfg["uid"]] * 3)
except OSError as exc:
    fail(f"user {cfg['uid']}:{cfg['gid']}", exc, 125)
if libc.prctl(38, 1, 0, 0, 0) != 0:
    fail("no_new_privs", OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())), 125)
env = dict(e.split("=", 1) if "=" in e else (e, "") for e in cfg["env"])
try:
    os.execvpe(cfg["args"][0], cfg["args"], env)
except OSError as exc:
    fail(f"exec {cfg['args'][0]}", exc, 127 if exc.errno == 2 else 126)
"""


class _Runtime:
    """What the step gets in the rootfs and what is removed afterwards: the mount-point stubs
    of the oci sandbox (the same ones, so the layers are the same), device nodes made in /dev,
    and the container's /etc files written into the stubs that stand for them."""

    def __init__(self, root_fd: int, spec: RunSpec):
        from .sandbox import _make_mountpoints
        self.root_fd = root_fd
        self.stubs = _make_mountpoints(root_fd, spec)
        self.nodes: list[tuple[str, int, int]] = []          # (name in /dev, st_dev, st_ino)
        self.dev_mtime: tuple[int | None, int | None] = (None, None)
        self.filled: list[tuple[str, int, int]] = []         # /etc stubs written: (path, dev, ino)
        self._devices()
        self._etc(spec)

    def _devices(self) -> None:
        from .sandbox import DEVICES, _mtime_in_root
        if not has_capability(CAP_MKNOD):
            return                  # podman's default capabilities lack it: /dev as the image has it
        before = _mtime_in_root(self.root_fd, "/dev")
        try:
            dev_fd = open_in_root(self.root_fd, "/dev", os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return
        try:
            for path, _kind, major, minor in DEVICES:
                name = split_parent(path)[1]
                try:
                    os.mknod(name, stat.S_IFCHR | 0o666, os.makedev(major, minor), dir_fd=dev_fd)
                    os.chmod(name, 0o666, dir_fd=dev_fd, follow_symlinks=False)    # not the umask's
                except OSError:
                    continue        # the image has one already, or the device cgroup refuses
                st = os.stat(name, dir_fd=dev_fd, follow_symlinks=False)
                self.nodes.append((name, st.st_dev, st.st_ino))
        finally:
            os.close(dev_fd)
        self.dev_mtime = (before, _mtime_in_root(self.root_fd, "/dev"))

    def _etc(self, spec: RunSpec) -> None:
        import socket

        from .sandbox import _resolv_conf
        made = {s.path: s for s in self.stubs if not s.is_dir}
        try:
            hosts = Path("/etc/hosts").read_text()
        except OSError:
            hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        content = {"/etc/hosts": hosts + "".join(f"{addr}\t{name}\n" for name, addr in spec.extra_hosts),
                   "/etc/resolv.conf": _resolv_conf("host", dns=spec.dns),
                   "/etc/hostname": socket.gethostname() + "\n"}
        for path in ETC_FILES:
            stub = made.get(path)
            if stub is None:
                continue            # the image's own file: the step uses it as it is
            fd = self._open_stub(path, stub.dev, stub.ino, os.O_WRONLY)
            if fd is None:
                continue
            try:
                os.write(fd, content[path].encode())
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
            self.filled.append((path, stub.dev, stub.ino))

    def _open_stub(self, path: str, dev: int, ino: int, flags: int) -> int | None:
        """Our stub at ``path``, opened without following any link, if it is still that inode."""
        try:
            fd = open_beneath(self.root_fd, path, flags)
        except OSError:
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return fd

    def remove(self) -> None:
        """Take away everything this made, if it is still what was made (never through a link
        the step planted: every entry is re-found beneath the root, link-free, by inode)."""
        from .sandbox import _remove_stubs
        for path, dev, ino in self.filled:
            fd = self._open_stub(path, dev, ino, os.O_WRONLY)
            if fd is not None:
                os.ftruncate(fd, 0)         # an empty stub: _remove_stubs removes it
                os.close(fd)
        if self.nodes:
            try:
                dev_fd = open_beneath(self.root_fd, "dev", os.O_PATH | os.O_DIRECTORY)
            except OSError:
                dev_fd = None
            if dev_fd is not None:
                # /dev untouched by the step (its time still the one the nodes gave it) gets
                # its time from before them back: no change for the layer.
                before, after = self.dev_mtime
                if os.fstat(dev_fd).st_mtime_ns != after:
                    before = None
                try:
                    for name, sdev, ino in self.nodes:
                        try:
                            st = os.stat(name, dir_fd=dev_fd, follow_symlinks=False)
                            if (st.st_dev, st.st_ino) == (sdev, ino) and stat.S_ISCHR(st.st_mode):
                                os.unlink(name, dir_fd=dev_fd)
                        except OSError:
                            pass
                    if before is not None:
                        st = os.fstat(dev_fd)
                        os.utime(f"/proc/self/fd/{dev_fd}", ns=(st.st_atime_ns, before))
                finally:
                    os.close(dev_fd)
        _remove_stubs(self.root_fd, self.stubs)


def run(spec: RunSpec, output: OutputCallback | None = None, cancel: threading.Event | None = None,
        stdin: int | None = None) -> int:
    """Run ``spec`` chrooted in ``spec.rootfs`` (a plain directory) and return its exit code
    (128+N when killed by signal N). Everything the step left running in its session is
    killed when it ends, so that nothing writes into the tree while it is diffed."""
    from .sandbox import _check_top_dirs
    _preflight(spec)
    if spec.network == "default":
        _say_network_once()
    root_fd = open_root(spec.rootfs)
    try:
        _check_top_dirs(root_fd)
        runtime = _Runtime(root_fd, spec)
        try:
            return _run_chrooted(spec, root_fd, output, cancel, stdin)
        finally:
            runtime.remove()
    finally:
        os.close(root_fd)


_told_network = False


def _say_network_once() -> None:
    global _told_network
    if not _told_network:
        _told_network = True
        print("note: --isolation none: RUN steps use the container's network (no network namespace can be "
              "made)", file=sys.stderr)


def _run_chrooted(spec: RunSpec, root_fd: int, output: OutputCallback | None,
                  cancel: threading.Event | None, stdin: int | None) -> int:
    import subprocess

    from .sandbox import DEFAULT_PATH, _exit_code, _track, _untrack
    env = list(spec.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=" + DEFAULT_PATH)          # as the oci config gets it
    cfg = json.dumps({"args": spec.args, "env": env, "cwd": spec.cwd or "/", "uid": spec.uid,
                      "gid": spec.gid, "groups": sorted(set(spec.additional_gids))}).encode()
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SHIM, str(rfd), str(root_fd)],
                                stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(rfd, root_fd), start_new_session=True,
                                env={"PATH": "/usr/bin:/bin"}, cwd="/")
    except BaseException:
        os.close(wfd)
        raise
    finally:
        os.close(rfd)
    _track("", proc)
    try:
        try:
            view = memoryview(cfg)
            while view:
                view = view[os.write(wfd, view):]
        except BrokenPipeError:
            pass                    # the shim died first: its stderr says why
        finally:
            os.close(wfd)
        if cancel is not None and cancel.is_set():
            proc.kill()
        _pump_until_exit(proc, output)
        return _exit_code(proc.wait())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        _untrack(proc)
        _kill_session(proc.pid)


def _pump_until_exit(proc, output: OutputCallback | None) -> None:
    """Forward the step's output until it exits, then kill what it left in its session (a
    background child holding the pipes would otherwise keep the step open forever; under runc
    the end of its pid namespace does this) and forward what is left, for as long as it comes."""
    import selectors
    sel = selectors.DefaultSelector()
    for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        sel.register(f, selectors.EVENT_READ, name)
    exited = False
    while sel.get_map():
        events = sel.select(timeout=1.0 if exited else 0.2)
        if not events and exited:
            break                   # held open by a process outside the session: stop here
        for key, _ in events:
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
            elif output is not None:
                output(key.data, chunk)
        if not exited and proc.poll() is not None:
            exited = True
            _kill_session(proc.pid)
    sel.close()


def _kill_session(sid: int) -> None:
    """Kill what the step started in its session and left running (a daemon it forked)."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
