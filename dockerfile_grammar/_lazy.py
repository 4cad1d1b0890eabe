"""The lazy facade (PEP 562) of each package's ``__init__`` (dockerfile_grammar, registry and
builder): public names are imported from their modules on first use, so importing a package
costs nothing the CLI's start-up would notice. It lives here, at the bottom of the stack,
because the other two packages already build on this one."""
from __future__ import annotations

import sys
from typing import Callable, Iterable


def lazy_facade(package: str, names: dict[str, str], submodules: Iterable[str] = ()
                ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for `package`: `names` maps each lazy name to the module
    (relative to the package) that defines it; `submodules` are imported on first use."""
    subs = frozenset(submodules)

    def __getattr__(name: str) -> object:
        import importlib
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names) | subs)

    return __getattr__, __dir__
