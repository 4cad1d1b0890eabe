"""Whether this machine can run another platform's binaries: binfmt_misc entries, read only.

A RUN step of a foreign platform (linux/arm64 on an amd64 host) runs its binaries through the
kernel's binfmt_misc: an entry that is enabled, whose magic matches the target's ELF header
(class, byte order, ``e_machine``), with the F (fix-binary) flag so that the interpreter was
opened when it was registered and works inside a root filesystem that does not contain it.
pybuild never registers handlers (that is the administrator's decision); ``check_emulation``
says exactly what is missing and how to fix it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from registry.platform import Platform, host_platform, platform_matches

from ..errors import BuildError

BINFMT_DIR = "/proc/sys/fs/binfmt_misc"

# architecture -> (ELF class: 1 = 32-bit, 2 = 64-bit; data: 1 = little, 2 = big endian; e_machine;
# the qemu name Debian's qemu-user-static registers)
ELF_MACHINES: dict[str, tuple[int, int, int, str]] = {
    "amd64": (2, 1, 0x3E, "x86_64"),
    "386": (1, 1, 0x03, "i386"),
    "arm64": (2, 1, 0xB7, "aarch64"),
    "arm": (1, 1, 0x28, "arm"),
    "riscv64": (2, 1, 0xF3, "riscv64"),
    "ppc64le": (2, 1, 0x15, "ppc64le"),
    "s390x": (2, 2, 0x16, "s390x"),
    "mips64le": (2, 1, 0x08, "mips64el"),
}


@dataclass(frozen=True)
class BinfmtEntry:
    """One /proc/sys/fs/binfmt_misc entry."""

    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int
    magic: bytes
    mask: bytes

    def matches(self, header: bytes) -> bool:
        """True if an ELF file starting with ``header`` is handed to this entry."""
        if self.offset + len(self.magic) > len(header):
            return False
        mask = self.mask or b"\xff" * len(self.magic)
        chunk = header[self.offset:self.offset + len(self.magic)]
        return all((c & m) == (g & m) for c, g, m in zip(chunk, self.magic, mask))


def elf_header(architecture: str) -> bytes | None:
    """The first 20 bytes of an executable ELF file of ``architecture`` (None if unknown)."""
    known = ELF_MACHINES.get(architecture)
    if known is None:
        return None
    cls, data, machine, _ = known
    order = "little" if data == 1 else "big"
    return (b"\x7fELF" + bytes([cls, data, 1, 0]) + bytes(8)
            + (2).to_bytes(2, order) + machine.to_bytes(2, order))


def read_entries(binfmt_dir: str = BINFMT_DIR) -> list[BinfmtEntry] | None:
    """The registered entries; None when binfmt_misc is not mounted."""
    if not os.path.exists(os.path.join(binfmt_dir, "register")):
        return None
    out = []
    for name in sorted(os.listdir(binfmt_dir)):
        if name in ("register", "status"):
            continue
        try:
            with open(os.path.join(binfmt_dir, name)) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        fields: dict[str, str] = {}
        enabled = False
        for line in lines:
            if line in ("enabled", "disabled"):
                enabled = line == "enabled"
                continue
            k, _, v = line.partition(" ")
            fields[k.rstrip(":")] = v.strip()
        if "magic" not in fields:
            continue                 # an extension-based entry: never an ELF handler
        try:
            magic = bytes.fromhex(fields["magic"])
            mask = bytes.fromhex(fields.get("mask", ""))
            offset = int(fields.get("offset", "0"))
        except ValueError:
            continue
        out.append(BinfmtEntry(name, enabled, fields.get("interpreter", ""), fields.get("flags", ""),
                               offset, magic, mask))
    return out


def emulation_problem(platform: Platform, binfmt_dir: str = BINFMT_DIR) -> str | None:
    """None if binaries of ``platform`` run here (natively or emulated), else what is missing."""
    if platform_matches(host_platform(), platform):
        return None
    header = elf_header(platform.architecture)
    qemu = ELF_MACHINES.get(platform.architecture, (0, 0, 0, platform.architecture))[3]
    fix = (f"install Debian's qemu-user-static (`apt-get install qemu-user-static`), which registers "
           f"qemu-{qemu} with the F (fix-binary) flag; or `cat /usr/lib/binfmt.d/qemu-{qemu}.conf > "
           f"{binfmt_dir}/register`")
    if header is None:
        return f"pybuild does not know the ELF machine of architecture {platform.architecture!r}"
    entries = read_entries(binfmt_dir)
    if entries is None:
        return (f"binfmt_misc is not mounted at {binfmt_dir}, so no emulator is registered: "
                f"`mount -t binfmt_misc binfmt_misc {binfmt_dir}`, then {fix}")
    try:
        with open(os.path.join(binfmt_dir, "status")) as f:
            if f.read().strip() == "disabled":
                return f"binfmt_misc is disabled on this machine: `echo 1 > {binfmt_dir}/status`"
    except OSError:
        pass
    machine = ELF_MACHINES[platform.architecture][2]
    matching = [e for e in entries if e.matches(header)]
    if not matching:
        return f"no binfmt_misc entry runs {platform} binaries (ELF machine {machine:#x}): {fix}"
    good = [e for e in matching if e.enabled and "F" in e.flags]
    if good:
        return None
    enabled = [e for e in matching if e.enabled]
    if not enabled:
        names = ", ".join(e.name for e in matching)
        return (f"the binfmt_misc entry for {platform} ({names}) is disabled: "
                f"`echo 1 > {binfmt_dir}/{matching[0].name}`")
    e = enabled[0]
    return (f"the binfmt_misc entry {e.name} for {platform} lacks the F (fix-binary) flag (flags: "
            f"{e.flags or 'none'}): its interpreter {e.interpreter} is not inside the image, so a RUN "
            f"would fail with `no such file or directory`; register it again with F: "
            f"`echo -1 > {binfmt_dir}/{e.name}; cat /usr/lib/binfmt.d/qemu-{qemu}.conf > {binfmt_dir}/register` "
            "(Debian's file carries the flags OPF)")


def check_emulation(platform: Platform, what: str) -> None:
    """Raise BuildError naming ``what`` (the stage, the flag) when ``platform`` cannot run here."""
    problem = emulation_problem(platform)
    if problem is not None:
        raise BuildError(f"{what}: cannot run {platform} binaries on this {host_platform()} host: {problem}")
