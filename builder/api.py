"""builder's library calls with keyword arguments: ``build(...)`` and ``explain(...)``.

They are thin: ``build`` fills a ``BuildOptions`` and runs ``builder.engine.build.build`` (the
engine the CLI runs too), ``explain`` runs ``builder.cache.explain.explain``. Imports happen inside
the calls, so ``import builder`` stays as cheap as the CLI's start-up needs.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from .cache.explain import Explained
    from .engine.build import BuildResult

__all__ = ["build", "explain"]


def _path(p: str | os.PathLike | None) -> str | None:
    return None if p is None else os.fspath(p)


def build(context: str | os.PathLike = ".", *, tags: Iterable[str] | str = (),
          dockerfile: str | os.PathLike | None = None, dockerfile_text: str | None = None,
          build_args: Mapping[str, str] | None = None, target: str | None = None,
          platform: str | None = None, labels: Mapping[str, str] | None = None,
          no_cache: bool = False, pull: bool = False, push: bool = False,
          outputs: Iterable[str] = (), cache_from: Iterable[str] = (), cache_to: Iterable[str] = (),
          secrets: Iterable[str] = (), network: str = "default", compression: str = "gzip",
          root: str | os.PathLike | None = None, progress: str = "quiet",
          **options: Any) -> "BuildResult":
    """Build the image a Dockerfile describes, like ``pybuild build``; returns a ``BuildResult``.

    ``context`` is a directory, a tar file or "-" (a tar on stdin); ``dockerfile`` defaults to
    CONTEXT/Dockerfile (or give the text itself as ``dockerfile_text``). ``tags`` name the image in
    the store (``push=True`` pushes them too). ``outputs``, ``cache_from``, ``cache_to`` and
    ``secrets`` take the CLI's specs (``type=oci,dest=out.tar``, ``type=registry,ref=R``,
    ``id=ID,src=PATH``). ``root`` is the store root (default: $PYBUILD_ROOT, else
    $XDG_DATA_HOME/pybuild). ``progress`` is quiet by default; "plain", "tty", "auto" or "rawjson"
    print BuildKit-style progress to stderr (or to ``progress_out=``). Any other field of
    ``BuildOptions`` may be given by name (``iidfile=``, ``metadata_file=``, ``no_cache_filter=``,
    ``source_date_epoch=``, ``insecure_registries=``, ...).

    Raises ``builder.BuildError`` (a step failed, a bad option), ``dockerfile_grammar.DockerfileError``
    (the Dockerfile does not parse) or ``registry.RegistryError`` (a base image could not be pulled).
    """
    from .engine.build import BuildOptions, build as run
    from .errors import BuildError
    known = BuildOptions.__dataclass_fields__
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"build() got unexpected keyword argument(s): {', '.join(unknown)} "
                        f"(BuildOptions has {', '.join(sorted(known))})")
    if isinstance(tags, str):
        tags = [tags]
    from .progress import MODES
    if progress not in MODES:
        raise BuildError(f"progress={progress!r}: use one of {', '.join(MODES)}")
    opts = BuildOptions(
        context=_path(context) or ".", dockerfile=_path(dockerfile), dockerfile_text=dockerfile_text,
        tags=list(tags), build_args=dict(build_args or {}), target=target, platform=platform,
        labels=dict(labels or {}), no_cache=no_cache, pull=pull, push=push, outputs=list(outputs),
        cache_from=list(cache_from), cache_to=list(cache_to), secrets=list(secrets), network=network,
        compression=compression, root=_path(root), progress=progress, **options)
    if "insecure_registries" in options:
        opts.insecure_registries = tuple(options["insecure_registries"])
    return run(opts)


def explain(context: str | os.PathLike = ".", *, dockerfile: str | os.PathLike | None = None,
            build_args: Mapping[str, str] | None = None, target: str | None = None,
            cache_from: Iterable[str] = (), root: str | os.PathLike | None = None) -> "list[Explained]":
    """Which steps of ``build(context, ...)`` would hit the cache, and why the others would miss,
    without running anything (``pybuild cache explain``). One ``Explained`` per step: ``status``
    is hit, remote or miss; ``reasons`` say what differs from the nearest earlier build of that
    line; ``to_dict()`` gives the JSON form."""
    from .cache.explain import explain as run
    return run(_path(context) or ".", _path(dockerfile), root=_path(root), build_args=dict(build_args or {}),
               target=target, cache_from=list(cache_from))
