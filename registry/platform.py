"""Platforms (`os/architecture[/variant]`): parsing, normalizing, the host's, and matching."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import RegistryError

_KNOWN_OS = frozenset({"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris",
                       "illumos", "aix", "plan9", "js", "wasip1"})
_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "386": "386",
    "armhf": "arm", "armel": "arm", "arm": "arm",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64le",
}
# Variants an architecture can run, best first (an arm v7 CPU runs v6 and v5 code too).
_COMPATIBLE_VARIANTS = {
    ("arm", "v8"): ("v8", "v7", "v6", "v5"),
    ("arm", "v7"): ("v7", "v6", "v5"),
    ("arm", "v6"): ("v6", "v5"),
    ("arm64", "v9"): ("v9", "v8"),
    ("amd64", "v4"): ("v4", "v3", "v2", "v1"),
    ("amd64", "v3"): ("v3", "v2", "v1"),
    ("amd64", "v2"): ("v2", "v1"),
}
# The variant implied when none is written.
_DEFAULT_VARIANT = {"arm64": "v8", "amd64": "v1", "arm": "v7"}


class InvalidPlatformError(RegistryError):
    """A platform string such as `linux/arm64/v8` could not be parsed."""


@dataclass(frozen=True)
class Platform:
    """An OCI platform. `str(p)` gives `os/architecture[/variant]`."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    @classmethod
    def from_dict(cls, d: dict) -> "Platform":
        """Build from the JSON object of a descriptor's `platform` field."""
        known = {"os", "architecture", "variant", "os.version", "os.features", "features"}
        return cls(os=str(d.get("os", "")), architecture=str(d.get("architecture", "")),
                   variant=d.get("variant") or None, os_version=d.get("os.version") or None,
                   os_features=tuple(d.get("os.features") or ()), features=tuple(d.get("features") or ()),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        """The JSON object, fields in the OCI order, empty ones left out."""
        d: dict = {"architecture": self.architecture, "os": self.os}
        for key, value in (("os.version", self.os_version), ("os.features", list(self.os_features)),
                           ("variant", self.variant), ("features", list(self.features))):
            if value:
                d[key] = value
        d.update(self.extra)
        return d

    def normalized(self) -> "Platform":
        """Canonical spelling: aarch64 -> arm64, x86_64 -> amd64, `8` -> `v8`, lower case."""
        arch = _ARCH_ALIASES.get(self.architecture.lower(), self.architecture.lower())
        variant = (self.variant or "").lower() or None
        if variant and variant[0].isdigit():
            variant = "v" + variant.split(".")[0]
        if variant == "v8.0":
            variant = "v8"
        return Platform(self.os.lower(), arch, variant, self.os_version, self.os_features, self.features)


def parse_platform(text: str) -> Platform:
    """Parse `os/arch[/variant]` (`linux/arm64/v8`), or just `arch` or `os` (the rest from the host).

    Raises InvalidPlatformError with the text and the expected form.
    """
    parts = [p.strip() for p in text.strip().split("/")] if text else []
    if not parts or any(not p for p in parts) or len(parts) > 3:
        raise InvalidPlatformError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8")
    host = host_platform()
    if len(parts) == 1:
        one = parts[0].lower()
        if one in _KNOWN_OS:
            p = Platform(one, host.architecture, host.variant) if one == host.os else Platform(one, host.architecture)
        else:
            p = Platform("linux", one)
    else:
        p = Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
    p = p.normalized()
    if p.os not in _KNOWN_OS:
        raise InvalidPlatformError(f"invalid platform {text!r}: unknown operating system {p.os!r}")
    return p


def host_platform() -> Platform:
    """The platform of this machine as images name it (linux/amd64, linux/arm64/v8, linux/arm/v7...)."""
    machine = os.uname().machine.lower()   # not the platform module: it costs ~8 ms to import
    arch = _ARCH_ALIASES.get(machine, machine)
    variant = None
    if arch == "arm64":
        variant = "v8"
    elif arch == "arm":
        variant = "v6" if machine.startswith("armv6") else ("v5" if machine.startswith("armv5") else "v7")
    return Platform("linux", arch, variant)


def _variant_rank(want: Platform, have: Platform) -> int | None:
    """0 for the best match, larger for worse, None when `have` cannot run on `want`."""
    wv = want.variant or None
    hv = have.variant or None
    default = _DEFAULT_VARIANT.get(want.architecture)
    if wv is None:
        # No variant asked: prefer the architecture's default variant, accept any.
        return 0 if hv in (None, default) else 1
    if (hv or default) == wv:
        return 0
    compatible = _COMPATIBLE_VARIANTS.get((want.architecture, wv), (wv,))
    if (hv or default) in compatible:
        return compatible.index(hv or default)
    return None


def platform_rank(want: Platform, have: Platform | None) -> int | None:
    """How well an image for `have` suits `want`: 0 best, larger worse, None for no match."""
    if have is None:
        return None
    w, h = want.normalized(), have.normalized()
    if w.os != h.os or w.architecture != h.architecture:
        return None
    return _variant_rank(w, h)


def platform_matches(want: Platform, have: Platform | None) -> bool:
    """True if an image built for `have` runs on `want` (same os and arch, compatible variant)."""
    return platform_rank(want, have) is not None
