"""Rootless mode: an ordinary user's pybuild runs inside a user namespace of its own.

As a user with a subordinate id range (``/etc/subuid``, ``/etc/subgid``), the CLI calls
:func:`enter` before anything has started a thread (``unshare(CLONE_NEWUSER)`` refuses a
multi-threaded process with EINVAL). A helper forked first, still in the host's namespace,
waits on a pipe; the process unshares its user namespace, the helper writes the id maps with
the setuid ``newuidmap``/``newgidmap`` (Debian's uidmap): 0 -> the user, 1.. -> the subordinate
range(s), and exits. The process is then root in the namespace (all capabilities there, none
on the host), makes a private mount namespace, and goes on with the command: overlay mounts
with ``userxattr`` (builder.runtime.snapshot), runc with its state under a directory the user
owns (:func:`runc_argv`), files owned by the mapped ids, which the user can only remove from
inside: every command that touches the store runs there (gc, rmi, prune, rm, repair included).

A store root records the mode it was made in (``<root>/mode``: rootful or rootless): its
extracted layers keep overlay metadata in trusted.* or user.* xattrs, and a lower directory
marked the other way would silently not be opaque. :func:`check_store_mode` refuses the other.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from registry.fsutil import (atomic_write, forget_user_namespace, in_initial_user_namespace, overlay_opaque_xattr,
                             private_dir)

from ..errors import BuildError
from ..root import Root
from ..root import resolve as resolve_root

SUBUID_FILE = "/etc/subuid"
SUBGID_FILE = "/etc/subgid"
RUNC_ROOT_ENV = "PYBUILD_RUNC_ROOT"     # runc's state directory, checked by enter() and passed on
NESTED_IDS = 65536

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


class UserNamespaceError(BuildError):
    """pybuild cannot make its user namespace here (the message names the fix)."""


class NamespaceRefused(UserNamespaceError):
    """unshare(CLONE_NEWUSER) was refused by seccomp or the kernel (EPERM, ENOSYS)."""


@dataclass(frozen=True)
class IdRange:
    """One line of /etc/subuid or /etc/subgid that belongs to the user."""

    start: int
    count: int


def subordinate_ranges(path: str, user: str, uid: int) -> list[IdRange]:
    """The ranges ``path`` gives ``user`` (by name or by number), in file order."""
    out: list[IdRange] = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise UserNamespaceError(f"cannot read {path}: {exc.strerror}") from None
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count > 0:
            out.append(IdRange(start, count))
    return out


def rootless() -> bool:
    """True when this process runs in a user namespace other than the host's."""
    return not in_initial_user_namespace()


def mode() -> str:
    """"rootless" inside a user namespace (or with overlay metadata in user.* xattrs: isolation
    none, builder.runtime.chroot), else "rootful": the store format this process makes."""
    return "rootless" if rootless() or overlay_opaque_xattr().startswith("user.") else "rootful"


def _map_args(pid: int, outer: int, ranges: list[IdRange]) -> list[str]:
    args = [str(pid), "0", str(outer), "1"]
    inner = 1
    for r in ranges:
        args += [str(inner), str(r.start), str(r.count)]
        inner += r.count
    return args


def _disabled_reason() -> str | None:
    """Why the kernel refuses unprivileged user namespaces, with the administrator's fix."""
    checks = [
        ("/proc/sys/user/max_user_namespaces", "0", "user namespaces are disabled (user.max_user_namespaces is 0); "
         "an administrator enables them with `sysctl -w user.max_user_namespaces=15000`"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "unprivileged user namespaces are disabled "
         "(kernel.unprivileged_userns_clone is 0); an administrator enables them with "
         "`sysctl -w kernel.unprivileged_userns_clone=1`"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor restricts unprivileged "
         "user namespaces (kernel.apparmor_restrict_unprivileged_userns is 1); an administrator allows "
         "them with `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile "
         "granting `userns` to pybuild's python"),
    ]
    for path, bad, why in checks:
        try:
            if Path(path).read_text().strip() == bad:
                return why
        except OSError:
            continue
    return None


def in_unprivileged_container() -> bool:
    """True for root without CAP_SYS_ADMIN: root of a container started without --privileged
    (podman's or Docker's default capabilities), which can neither mount nor make namespaces
    for runc until it enters a user namespace of its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return not (int(line.split()[1], 16) >> 21) & 1       # CAP_SYS_ADMIN is bit 21
    except (OSError, ValueError):
        pass
    return False


def nested() -> bool:
    """True in the namespace :func:`enter` made for root of an unprivileged container: its RUN
    steps and containers share the container's pid namespace and /proc (builder.runtime.sandbox).

    Told by the namespace itself (it maps ids 0-65535 to themselves; an ordinary user's maps
    0 to the user), never by the environment: an inherited variable must not weaken an
    ordinary user's RUN steps (tests/rootless/test_rootless_attacks.py)."""
    return rootless() and _uid_map_of("self") == [(0, 0, NESTED_IDS)]


def enter(store_root: Path | None = None, join_pids: list[int] = ()) -> None:
    """Enter pybuild's user and mount namespace (see the module docstring); as root, nothing,
    unless root lacks CAP_SYS_ADMIN (an unprivileged container): then a namespace mapping the
    container's ids 0-65535 to themselves, written directly (root there may).

    ``store_root`` is where runc keeps its state when $XDG_RUNTIME_DIR is not set. The
    namespaces of the first of ``join_pids`` that can be joined (the supervisors of the store's
    running containers, see :func:`container_pids`) are joined instead of made: a container's
    processes can be signalled and entered (`runc exec`) only from its own user namespace, and
    its overlay is mounted in that mount namespace. Raises UserNamespaceError naming the fix
    when there is no subordinate range, no newuidmap, or the kernel refuses user namespaces.
    """
    as_root = os.geteuid() == 0
    if as_root and (not in_initial_user_namespace() or not in_unprivileged_container()):
        return
    if join_pids:
        want = [(0, 0, NESTED_IDS)] if as_root else _user_uid_map()
        if want and any(_join(pid, want) for pid in join_pids):
            _set_runc_root(store_root)
            return
    pid = os.getpid()
    if as_root:
        # Root of the container has CAP_SETUID/CAP_SETGID: it writes the maps itself.
        script = ("read go || exit 0; [ \"$go\" = go ] || exit 0; "
                  f"echo '0 0 {NESTED_IDS}' > /proc/{pid}/uid_map || exit 11; "
                  f"echo '0 0 {NESTED_IDS}' > /proc/{pid}/gid_map || exit 12")

        def failed(code: int, detail: str) -> str:
            return (f"pybuild in an unprivileged container could not map ids 0-{NESTED_IDS - 1} in its user "
                    f"namespace ({detail or f'exit {code}'}): the container needs CAP_SETUID and CAP_SETGID "
                    "(podman's and Docker's defaults)")
        try:
            _unshare_mapped(script, failed, "pybuild in an unprivileged container")
        except NamespaceRefused as exc:
            # Docker's default seccomp profile: builds fall back to isolation none (a chroot).
            from .chroot import no_namespace
            no_namespace(str(exc))
            return
    else:
        script, failed = _user_maps(pid)
        _unshare_mapped(script, failed, "rootless pybuild")
    _set_runc_root(store_root)


def _set_runc_root(store_root: Path | None) -> None:
    """Check (and make) runc's state directory and pass it on in the environment: the one
    given there by a parent pybuild (a container's monitor runs `pybuild container-cleanup`),
    else :func:`runc_root`. Either way it must be this user's own private directory: runc
    keeps each container's config (its environment, secrets given as env) and init pid
    there, and whoever can write it can make runc signal or enter another process."""
    given = os.environ.get(RUNC_ROOT_ENV)
    path = Path(given) if given else runc_root(store_root)
    os.environ[RUNC_ROOT_ENV] = str(own_private_dir(path, "runc's state directory"
                                                    + (f" (${RUNC_ROOT_ENV})" if given else "")))


def _user_maps(pid: int):
    """The helper script mapping an ordinary user's ranges with newuidmap/newgidmap, and the
    message for its failure; UserNamespaceError when the user has no range or no newuidmap."""
    # Imported here: as root (and on every command's start-up) none of this is needed.
    import pwd
    import shutil
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    uids = subordinate_ranges(SUBUID_FILE, user, uid)
    gids = subordinate_ranges(SUBGID_FILE, user, uid)
    if not uids or not gids:
        missing = " and ".join(f for f, r in ((SUBUID_FILE, uids), (SUBGID_FILE, gids)) if not r)
        raise UserNamespaceError(
            f"rootless pybuild needs a subordinate id range for user {user} in {missing}: ask an "
            f"administrator to run `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}` "
            "(65536 ids, a range no other user has), or run pybuild as root")
    tools = {t: shutil.which(t) for t in ("newuidmap", "newgidmap")}
    if not all(tools.values()):
        raise UserNamespaceError(
            "rootless pybuild needs newuidmap and newgidmap (setuid helpers that map a user's "
            "subordinate ids): install Debian's uidmap package (`apt-get install uidmap`)")
    reason = _disabled_reason()
    if reason:
        raise UserNamespaceError(f"rootless pybuild needs a user namespace, but {reason}")
    # The maps' numbers are all integers: nothing to quote.
    script = ("read go || exit 0; [ \"$go\" = go ] || exit 0; "
              f"{tools['newuidmap']} {' '.join(_map_args(pid, uid, uids))} || exit 11; "
              f"{tools['newgidmap']} {' '.join(_map_args(pid, gid, gids))} || exit 12")

    def failed(code: int, detail: str) -> str:
        tool = "newgidmap" if code == 12 else "newuidmap"
        ranges = uids if tool == "newuidmap" else gids
        return (f"rootless pybuild could not map its ids: {tool} failed ({detail or f'exit {code}'}); "
                f"the ranges of {user} are {', '.join(f'{r.start}-{r.start + r.count - 1}' for r in ranges)} "
                f"in {SUBUID_FILE if tool == 'newuidmap' else SUBGID_FILE}: check that {tool} is setuid root "
                f"(Debian's uidmap package) and that the ranges are the user's own")
    return script, failed


def _unshare_mapped(script: str, failed, who: str) -> None:
    """Unshare a user namespace, have ``script`` (a helper started before, in the parent
    namespace) write its maps, become its root and make a private mount namespace."""
    import ctypes
    import subprocess
    libc = ctypes.CDLL(None, use_errno=True)
    helper = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, close_fds=True)
    if libc.unshare(_CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        helper.communicate(b"")
        if err == errno.EINVAL:
            why = "this process already runs threads (pybuild enters its namespace at start-up only)"
        elif err == errno.ENOSPC:
            why = "the limit of user namespaces (user.max_user_namespaces) is reached"
        elif err in (errno.EPERM, errno.ENOSYS):           # ENOSYS: a seccomp profile's default
            why = ("the kernel or a seccomp filter refuses it (in a container: run it with user namespaces "
                   "allowed, e.g. podman's default profile; Docker's default seccomp profile refuses them)")
        else:
            why = os.strerror(err)
        raise (NamespaceRefused if err in (errno.EPERM, errno.ENOSYS) else UserNamespaceError)(
            f"{who} cannot create a user namespace: unshare(CLONE_NEWUSER): {os.strerror(err)}: {why}")
    _, stderr = helper.communicate(b"go\n")
    if helper.returncode != 0:
        raise UserNamespaceError(failed(helper.returncode, stderr.decode(errors="replace").strip()))
    forget_user_namespace()
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if libc.unshare(_CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise UserNamespaceError(f"{who} cannot make its mount namespace: {os.strerror(ctypes.get_errno())}")


def container_pids(store_root: Path, first: list[str] = ()) -> list[int]:
    """The supervising pids (conmon, or the pybuild running it) of the store's running
    containers: those with the ids in ``first`` before the others. Read straight from the
    records (no import of builder.containers): every rootless command pays for it."""
    base = Root(store_root).containers
    import json
    out: list[int] = []
    try:
        ids = [e.name for e in os.scandir(base) if e.is_dir() and e.name != "names"]
    except OSError:
        return out
    ids.sort(key=lambda i: (i not in first, i))
    for cid in ids:
        try:
            st = json.loads((base / cid / "state.json").read_text())
        except (OSError, ValueError):
            continue
        pid = st.get("pid") if isinstance(st, dict) else None
        if st.get("status") == "running" and isinstance(pid, int) and pid > 0:
            out.append(pid)
    return out


def _user_uid_map() -> list[tuple[int, int, int]]:
    """The uid map :func:`enter` gives an ordinary user's namespace (empty without a range)."""
    import pwd
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    args = _map_args(0, uid, subordinate_ranges(SUBUID_FILE, user, uid))[1:]
    out = [tuple(int(x) for x in args[i:i + 3]) for i in range(0, len(args), 3)]
    return out if len(out) > 1 else []


def _uid_map_of(pid: int | str) -> list[tuple[int, int, int]]:
    try:
        lines = Path(f"/proc/{pid}/uid_map").read_text().splitlines()
        return [tuple(int(x) for x in line.split()) for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


def _join(pid: int, want: list[tuple[int, int, int]]) -> bool:
    """Join the user and mount namespaces of ``pid`` (a process of this user's, started by an
    earlier pybuild) if its uid map is ``want``, the one pybuild would make: a recycled pid
    that now names some other namespace of the user's (a rootless podman's) is not joined.
    False when it is gone or they cannot be joined."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        mnt_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(user_fd)
        return False
    try:
        if os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user"):
            return False                   # not in a namespace of ours (a stale pid)
        if _uid_map_of(pid) != want:
            return False
        if libc.setns(user_fd, _CLONE_NEWUSER) != 0:
            return False
        forget_user_namespace()
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        if libc.setns(mnt_fd, _CLONE_NEWNS) != 0:
            raise UserNamespaceError(f"rootless pybuild joined the user namespace of process {pid} but not its "
                                     f"mount namespace: {os.strerror(ctypes.get_errno())}")
        return True
    finally:
        os.close(user_fd)
        os.close(mnt_fd)


def runc_root(store_root: Path | None) -> Path:
    """Where runc keeps container state rootless: $XDG_RUNTIME_DIR/pybuild-runc (a tmpfs of
    the user's, emptied at reboot as runc's state should be), else ``<store root>/runc``.

    $XDG_RUNTIME_DIR counts only when it is what the XDG spec says it is, a directory of the
    user's that no one else may enter: one set to a shared directory (/tmp) would let another
    user plant `pybuild-runc` there."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() \
                and not st.st_mode & 0o077:
            return Path(xdg) / "pybuild-runc"
    return Root(resolve_root(store_root)).runc


def own_private_dir(path: Path, what: str) -> Path:
    """Make ``path`` (0700) unless it exists, and check that it is a directory of this user's
    (not a symlink) that no one else may write: else UserNamespaceError naming it and its
    owner. One of ours that is too open is tightened."""
    try:
        if not path.parent.exists():
            private_dir(path.parent)          # a new store root: 0700 as it would be made anyway
        private_dir(path)
        st = os.lstat(path)
    except OSError as exc:
        raise UserNamespaceError(f"cannot make {what} {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UserNamespaceError(f"{what} {path} is not a directory (a symlink or a file): remove it, or "
                                 "give pybuild another place")
    if st.st_uid != os.geteuid():
        raise UserNamespaceError(f"{what} {path} belongs to uid {st.st_uid}, not to this user: another user made "
                                 "it and could change what pybuild keeps there; remove it, or give pybuild "
                                 "another place")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def runc_argv() -> list[str]:
    """``runc`` and its global options: rootless, ``--root`` at a directory the user owns
    (runc's default, /run/runc, is the host root's)."""
    root = os.environ.get(RUNC_ROOT_ENV)
    if root and rootless():
        # In an unprivileged container runc warns on every start that it has no cgroups to
        # freeze, into the command's own output: its log goes nowhere (a failure is still
        # printed on runc's stderr).
        return ["runc", "--root", root, *(["--log", "/dev/null"] if nested() else [])]
    return ["runc"]


def check_store_owner(root: Path) -> None:
    """As an ordinary user (before entering the namespace), refuse a store root that is not
    the user's own: another user who made the directory (a shared --root, a pre-created
    ~/.local/share/pybuild or $PYBUILD_ROOT) could swap its blobs and layers under pybuild.
    A root that does not exist yet is fine (pybuild makes it 0700). Nor may a directory above
    it be another user's: they could rename the store away and put theirs in its place. (A
    root-owned directory writable by everyone without the sticky bit would allow the same; it is
    not refused: some machines' /tmp is 0777.)"""
    _check_ancestors(Path(os.path.abspath(root)).parent, root)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BuildError(f"cannot use the store {root}: {exc.strerror} (a symlink another user planted in a "
                         "shared directory is refused by the kernel): give pybuild a store of your own "
                         "(--root or $PYBUILD_ROOT)") from None
    if st.st_uid != os.geteuid():
        raise BuildError(f"the store {root} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): another user "
                         "made it and could change its images and layers under pybuild; give pybuild a store "
                         "of your own (--root or $PYBUILD_ROOT)")


def _check_ancestors(path: Path, root: Path) -> None:
    """Refuse ``root`` if ``path`` or a directory above it (symlinks resolved) is another
    non-root user's."""
    me = os.geteuid()
    for d in [path.resolve(), *path.resolve().parents]:
        try:
            st = os.stat(d)
        except OSError:
            continue                 # not made yet: pybuild makes it, as this user
        if st.st_uid not in (0, me):
            raise BuildError(f"cannot use the store {root}: {d} above it belongs to uid {st.st_uid}, who could "
                             "put another store in its place; give pybuild a store of your own (--root or "
                             "$PYBUILD_ROOT)")


def check_store_mode(root: Path) -> None:
    """Refuse a store made in the other mode; record this mode in a store that has none.

    Made lazily: a new root gets the file with its first command."""
    want = mode()
    marker = Root(root).mode
    try:
        have = marker.read_text().strip()
    except FileNotFoundError:
        have = ""
    except OSError as exc:
        raise BuildError(f"cannot read {marker}: {exc.strerror}") from None
    if have == want:
        return
    if have in ("rootful", "rootless"):
        if want == "rootful":
            how = ("as root; it holds files owned by a user's subordinate ids and overlay metadata in "
                   "user.* xattrs, which root's overlay mounts ignore: run pybuild as the user who made "
                   "it, or give root another --root")
        else:
            how = ("in a user namespace (rootless); it holds overlay metadata in trusted.* xattrs, which "
                   "an ordinary user can neither read nor set: use a store of your own (another --root "
                   "or $PYBUILD_ROOT)")
        raise BuildError(f"the store {root} was made by pybuild {have}, and cannot be used {how}")
    if have:
        raise BuildError(f"{marker} says {have!r}: expected rootful or rootless; remove the file if the store "
                         "was made by this mode")
    private_dir(root)
    atomic_write(marker, (want + "\n").encode(), mode=0o600, durable=False)
