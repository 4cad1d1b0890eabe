"""Making images: plan, context, instruction semantics, RUN sandbox, layers, cache, CLI.

Public API (loaded on first use, PEP 562: ``import builder`` costs nothing the CLI's start-up
would notice)::

    import builder

    result = builder.build("samples/hello", tags=["hello"], build_args={"V": "1"})
    result.image_id, result.digest          # config digest, manifest digest
    for step in result.steps:               # BuildStep records
        print(step.instruction, step.cached, step.duration)

    for e in builder.explain("samples/hello"):       # would the cache answer each step?
        print(e.status, e.step, e.reasons)

    builder.cache.entries(), builder.cache.disk_usage(), builder.cache.prune(keep_storage="2GB")
    builder.containers.run("hello", ["echo", "hi"])

Names: ``build`` and ``explain`` (keyword arguments, see builder.api), ``BuildOptions``,
``BuildResult``, ``BuildStep`` (the engine's types, builder.engine.build), ``BuildError`` and
``DockerignoreError`` (builder.errors: every error builder raises is a BuildError; a build also lets
``dockerfile_grammar.DockerfileError`` and ``registry.RegistryError`` through), ``Root`` (the
directories under a store root), the subpackages ``cache`` and ``containers`` (each with its own
small API), and ``__version__``. Everything else is internal: import it from its module.
"""
_LAZY = {
    "build": "api", "explain": "api",
    "BuildOptions": "engine.build", "BuildResult": "engine.build",
    "BuildStep": "engine.build",
    "BuildError": "errors", "DockerignoreError": "errors",
    "Root": "root", "__version__": "_version",
    "cache": None, "containers": None,   # subpackages
}


def __getattr__(name: str):      # PEP 562: a public name is imported from its module on first use
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = __import__("importlib").import_module(f".{_LAZY[name] or name}", __name__)
    return globals().setdefault(name, module if _LAZY[name] is None else getattr(module, name))



__all__ = ["build", "explain", "BuildOptions", "BuildResult", "BuildStep", "BuildError", "DockerignoreError",
           "Root", "cache", "containers", "__version__"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
