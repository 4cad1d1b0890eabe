"""The exception tree of builder: every error it raises is a ``BuildError``.

    BuildError                 a build, run or cache operation failed (bad option, step failed, ...)
      DockerignoreError        a .dockerignore pattern is malformed (builder.context.dockerignore)

A build also lets ``dockerfile_grammar.DockerfileError`` (the Dockerfile) and
``registry.RegistryError`` (a pull, a push, the store) through unchanged; the CLI prints all three
without a traceback.
"""
from __future__ import annotations

__all__ = ["BuildError", "DockerignoreError"]


class BuildError(Exception):
    """A build, run or cache operation failed. The message says what, where and what to do."""


def __getattr__(name: str):
    # Defined beside the matcher that raises it; loaded only when asked for.
    if name == "DockerignoreError":
        from .context.dockerignore import DockerignoreError
        return DockerignoreError
    raise AttributeError(f"module 'builder.errors' has no attribute {name!r}")
