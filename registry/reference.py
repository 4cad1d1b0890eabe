"""Image references (`[registry/]repository[:tag][@digest]`), parsed and normalized like Docker.

The grammar is the one of distribution/reference; normalization follows Docker's rules:
a first path component is a registry only if it contains `.` or `:`, is `localhost`, or has an
upper-case letter; otherwise the registry is `docker.io`, and a one-component repository on
docker.io gets `library/` in front (`busybox` -> `docker.io/library/busybox`). `index.docker.io`
is an alias of `docker.io`, whose API endpoint is `registry-1.docker.io`. The tag defaults to
`latest` when neither tag nor digest is given.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .digest import InvalidDigestError, parse_digest
from .errors import InvalidReferenceError

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
# ASCII only, as distribution's grammar: Python's \w would also take other scripts' letters
# and digits, giving names no registry accepts (and that look like other names).
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"

# \Z, not $: `$` also matches before a final newline.
_REFERENCE_RE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?\Z", re.ASCII)
_TAG_RE = re.compile(rf"^{_TAG}\Z", re.ASCII)
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}\Z", re.ASCII)


@dataclass(frozen=True)
class Reference:
    """A normalized image reference.

    `registry` is the host[:port] as written (docker.io for Docker Hub), `repository` the path
    (with `library/` for official images), `tag` and `digest` may each be None (but parse gives a
    `latest` tag when both are missing). `str(ref)` is the fully qualified form.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`registry/repository`, e.g. `docker.io/library/busybox`."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker prints it: `busybox`, `user/app`, `localhost:5000/app`."""
        if self.registry == DEFAULT_REGISTRY:
            parts = self.repository.split("/")
            if len(parts) == 2 and parts[0] == OFFICIAL_PREFIX[:-1]:
                return parts[1]
            return self.repository
        return self.name

    @property
    def familiar(self) -> str:
        """The short form Docker prints, with tag and digest: `busybox:latest`."""
        return self.familiar_name + self._suffix()

    @property
    def api_host(self) -> str:
        """The host[:port] to send registry API requests to (registry-1.docker.io for Docker Hub)."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def is_docker_hub(self) -> bool:
        """True for references that live on Docker Hub."""
        return self.registry == DEFAULT_REGISTRY

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> "Reference":
        """The same repository with `tag` and no digest."""
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(
                f"invalid tag {tag!r} for {self.name}: a tag is up to 128 letters, digits, '_', '.' or '-' "
                "and must not start with '.' or '-'")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> "Reference":
        """The same repository and tag pinned to `digest`."""
        try:
            parse_digest(digest)
        except InvalidDigestError as exc:
            raise InvalidReferenceError(f"cannot pin {self.name} to {digest!r}: {exc}") from None
        return replace(self, digest=digest)

    def repo_only(self) -> "Reference":
        """The repository with neither tag nor digest (str gives `registry/repository`)."""
        return replace(self, tag=None, digest=None)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def _invalid(ref: str, why: str) -> InvalidReferenceError:
    return InvalidReferenceError(f"invalid reference {ref!r}: {why}")


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's splitDockerDomain: decide whether the first component is a registry host."""
    i = name.find("/")
    first = name[:i] if i >= 0 else ""
    if i == -1 or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, rest = DEFAULT_REGISTRY, name
    else:
        domain, rest = first, name[i + 1:]
    if domain == LEGACY_DEFAULT_REGISTRY:
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in rest:
        rest = OFFICIAL_PREFIX + rest
    return domain, rest


def parse_reference(ref: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse and normalize an image reference like `docker pull` does.

    `busybox` -> docker.io/library/busybox:latest; `localhost:5000/app@sha256:...` keeps only
    the digest. Pass default_tag=None to leave the tag empty when none is written.
    Raises InvalidReferenceError saying which reference and why.
    """
    if not isinstance(ref, str) or ref == "":
        raise _invalid(ref, "it is empty; expected NAME[:TAG][@DIGEST], e.g. busybox:latest")
    if _IDENTIFIER_RE.match(ref):
        raise _invalid(ref, "a 64-character hexadecimal string is an image ID, not a repository name")
    if ref != ref.strip():
        raise _invalid(ref, "it has leading or trailing white space")
    if not ref.isascii():
        pos, ch = next((i, c) for i, c in enumerate(ref) if not c.isascii())
        raise _invalid(ref, f"character {ch!r} (U+{ord(ch):04X}) at position {pos + 1} is not ASCII; "
                            f"names, tags and digests are ASCII letters, digits and . _ - : / @")
    domain, rest = _split_domain(ref)
    repo_part = rest.split("@", 1)[0]
    repo_part = repo_part.split(":", 1)[0]
    if repo_part.lower() != repo_part:
        raise _invalid(ref, f"repository name {repo_part!r} must be lower-case")
    full = f"{domain}/{rest}"
    m = _REFERENCE_RE.match(full)
    if m is None:
        raise _invalid(ref, _explain(ref, rest))
    # Like distribution/reference (v0.6+), the limit applies to the path, not the registry host.
    if len(m.group("path")) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(ref, f"the repository path is {len(m.group('path'))} characters long, "
                            f"at most {NAME_TOTAL_LENGTH_MAX} are allowed")
    digest = m.group("digest")
    if digest is not None:
        try:
            parse_digest(digest)
        except InvalidDigestError as exc:
            raise _invalid(ref, str(exc)) from None
    tag = m.group("tag")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(m.group("domain"), m.group("path"), tag, digest)


def _explain(ref: str, rest: str) -> str:
    """A specific reason an otherwise well-split reference does not match the grammar."""
    if "://" in ref:
        return "a reference has no URL scheme; write HOST[:PORT]/NAME[:TAG]"
    if ref.startswith((":", "@")):
        return "the repository name is missing before the tag or digest"
    if "//" in rest or rest.endswith("/"):
        return "the repository path has an empty component"
    if "@" in rest:
        return "the digest must be ALGORITHM:HEX, e.g. sha256: followed by 64 hex digits"
    tail = rest.rsplit("/", 1)[-1]
    if ":" in tail and not _TAG_RE.match(tail.split(":", 1)[1]):
        return ("the tag must be 1-128 letters, digits, '_', '.' or '-' and must not start "
                "with '.' or '-'")
    return ("repository path components are lower-case letters and digits, separated by '.', '_', "
            "'__' or '-', and must start and end with a letter or digit")


def is_valid_tag(tag: str) -> bool:
    """True if `tag` is a valid tag (1-128 of [A-Za-z0-9_.-], not starting with '.' or '-')."""
    return bool(_TAG_RE.match(tag))
