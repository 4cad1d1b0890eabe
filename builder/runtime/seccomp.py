"""The seccomp filter of every RUN step and container: Docker/podman's default profile.

Debian's containers-common ships that profile at /usr/share/containers/seccomp.json, in the
containers' own format (rules conditional on capabilities, architectures and kernel versions,
an archMap). runc reads the OCI runtime-spec ``linux.seccomp`` form, so :func:`oci_seccomp`
converts it for this machine's architecture and the capability set a sandbox is granted.

containers-common's profile allows a few syscalls outright that Docker's default profile only
allows with a capability pybuild never grants (mount, unshare, setns, pivot_root, clone with
namespace flags...) or never (the kernel keyring, which is not namespaced). Confinement must be
at least Docker's, so those are gated the same way here on top of the file.

The profile is read and converted once per process and capability set: it is used for every RUN.
"""
from __future__ import annotations

import errno
import json
import os
import threading
from dataclasses import dataclass

from ..errors import BuildError

PROFILE_PATH = "/usr/share/containers/seccomp.json"

# machine (uname -m) -> (the architecture name the profile's "arches" use, libseccomp's name)
_ARCHES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv6l": ("arm", "SCMP_ARCH_ARM"),
    "i686": ("x86", "SCMP_ARCH_X86"),
    "i386": ("x86", "SCMP_ARCH_X86"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
}

# Syscalls that need the capability named, as in Docker's default profile; without it they
# fail with EPERM whatever containers-common's file says.
_GATED = {
    "CAP_SYS_ADMIN": ("mount", "umount", "umount2", "unshare", "setns", "pivot_root", "mount_setattr",
                      "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
                      "quotactl", "quotactl_fd"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_PTRACE": ("process_vm_readv", "process_vm_writev"),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYS_TIME": ("clock_adjtime", "clock_adjtime64"),
}
# Never allowed: the keyring is shared by every container on the host.
_DENIED = ("add_key", "keyctl", "request_key")
# Namespace flags of clone(2): CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
_CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000


@dataclass(frozen=True)
class _Source:
    path: str
    mtime_ns: int
    size: int


_cache: dict[tuple[_Source, frozenset[str]], dict] = {}
_lock = threading.Lock()


def _kernel_version() -> tuple[int, ...]:
    nums = []
    for part in os.uname().release.split("-")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part else ""
        if not digits:
            break
        nums.append(int(digits))
    return tuple(nums)


_x32: bool | None = None


def _kernel_has_x32() -> bool:
    """Whether this kernel runs x32 system calls: getpid with the x32 bit set answers ENOSYS
    where CONFIG_X86_X32_ABI is off."""
    global _x32
    if _x32 is None:
        if os.uname().machine != "x86_64":
            _x32 = False
        else:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            _x32 = libc.syscall(ctypes.c_long(0x40000000 | 39)) >= 0 or ctypes.get_errno() != errno.ENOSYS
    return _x32


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        raise BuildError(f"seccomp profile: invalid minKernel {text!r}") from None


def _applies(rule: dict, arch: str, caps: frozenset[str], kernel: tuple[int, ...]) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("caps") and not all(c in caps for c in inc["caps"]):
        return False
    if inc.get("minKernel") and kernel < _version(inc["minKernel"]):
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    if exc.get("caps") and any(c in caps for c in exc["caps"]):
        return False
    if exc.get("minKernel") and kernel >= _version(exc["minKernel"]):
        return False
    return True


def _errno_of(rule: dict, number_key: str, name_key: str) -> int | None:
    if rule.get(number_key) is not None:
        return int(rule[number_key])
    name = rule.get(name_key)
    if name:
        value = getattr(errno, name, None)
        if value is None:
            raise BuildError(f"seccomp profile: unknown errno {name!r}")
        return value
    return None


def convert(profile: dict, caps: frozenset[str], machine: str | None = None,
            kernel: tuple[int, ...] | None = None) -> dict:
    """The OCI ``linux.seccomp`` object for ``profile`` (containers-common's format) on
    ``machine`` (default: this one) for a process granted ``caps``."""
    machine = machine or os.uname().machine
    kernel = _kernel_version() if kernel is None else kernel
    if machine not in _ARCHES:
        raise BuildError(f"seccomp: no known seccomp architecture for this machine ({machine})")
    arch, scmp = _ARCHES[machine]
    architectures = [scmp]
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == scmp:
            architectures += list(entry.get("subArchitectures") or [])
    if "SCMP_ARCH_X32" in architectures and machine == os.uname().machine and not _kernel_has_x32():
        # A kernel without the x32 ABI refuses those calls itself; their rules (a third of the
        # filter runc compiles for every RUN step, ~4 ms) would guard nothing.
        architectures.remove("SCMP_ARCH_X32")
    out: dict = {"defaultAction": profile.get("defaultAction", "SCMP_ACT_ERRNO"),
                 "architectures": architectures}
    default_errno = _errno_of(profile, "defaultErrnoRet", "defaultErrno")
    if default_errno is not None:
        out["defaultErrnoRet"] = default_errno
    gated = {n for cap, names in _GATED.items() if cap not in caps for n in names} | set(_DENIED)
    gate_clone = "CAP_SYS_ADMIN" not in caps
    syscalls = []
    for rule in profile.get("syscalls") or []:
        if not _applies(rule, arch, caps, kernel):
            continue
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        if rule.get("action") == "SCMP_ACT_ALLOW":
            names = [n for n in names if n not in gated and not (gate_clone and n in ("clone", "clone3"))]
        if not names:
            continue
        new: dict = {"names": names, "action": rule["action"]}
        err = _errno_of(rule, "errnoRet", "errno")
        if err is not None and rule["action"] in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
            new["errnoRet"] = err
        args = [{"index": a["index"], "value": a.get("value", 0), "valueTwo": a.get("valueTwo", 0),
                 "op": a["op"]} for a in rule.get("args") or []]
        if args:
            new["args"] = args
        syscalls.append(new)
    syscalls.append({"names": sorted(gated), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM})
    if gate_clone:
        # clone's flags are its first argument, except on s390 where they are the second.
        index = 1 if arch in ("s390", "s390x") else 0
        syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": index, "value": _CLONE_NS_FLAGS, "valueTwo": 0,
                                   "op": "SCMP_CMP_MASKED_EQ"}]})
        # clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc use clone.
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    out["syscalls"] = syscalls
    return out


def oci_seccomp(caps: list[str] | frozenset[str], path: str | None = None) -> dict:
    """The converted default profile for a process granted ``caps`` (cached per file version
    and capability set). Raises BuildError when the profile is missing: nothing runs unconfined."""
    path = path or os.environ.get("PYBUILD_SECCOMP_PROFILE") or PROFILE_PATH
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BuildError(f"seccomp profile {path} is missing ({exc.strerror}): RUN steps and containers "
                         "never run without seccomp; install Debian's golang-github-containers-common "
                         "(scripts/setup.sh does)") from None
    key = (_Source(path, st.st_mtime_ns, st.st_size), frozenset(caps))
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    try:
        with open(path, encoding="utf-8") as f:
            profile = json.load(f)
    except (OSError, ValueError) as exc:
        raise BuildError(f"seccomp profile {path} cannot be read: {exc}") from None
    if not isinstance(profile, dict) or not isinstance(profile.get("syscalls"), list):
        raise BuildError(f"seccomp profile {path}: not a seccomp profile (no syscalls list)")
    result = convert(profile, frozenset(caps))
    with _lock:
        _cache[key] = result
    return result
