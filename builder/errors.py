"""The exception base of builder."""
from __future__ import annotations


class BuildError(Exception):
    """A build, run or cache operation failed. The message says what, where and what to do."""
