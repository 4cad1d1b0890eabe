"""The exception types of registry: one base, a few specific kinds callers may catch."""
from __future__ import annotations


class RegistryError(Exception):
    """Base of every error raised by the registry package. Messages say what, where, what to do."""


class InvalidReferenceError(RegistryError):
    """An image reference could not be parsed."""


class NotFoundError(RegistryError):
    """A manifest, blob, tag or repository does not exist (locally or remotely)."""


class AuthError(RegistryError):
    """Authentication or authorization failed."""


class DigestMismatchError(RegistryError):
    """Content did not hash to the digest it was announced with; nothing was stored."""


class ResponseTooLargeError(RegistryError):
    """An answer from the network was longer than pybuild reads for its kind; the rest was not read."""


class LimitError(RegistryError):
    """Hostile or broken input exceeded a structural limit (JSON depth, pages, index nesting)."""
