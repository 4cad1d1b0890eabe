"""The command line's start-up shortcuts: they must not change which commands exist or what they do."""
from __future__ import annotations

import subprocess
import sys

from builder import cli


def test_command_owners_match_what_modules_register():
    """Every command a module registers is listed under that module, and nothing else is listed
    (a stale entry would make `pybuild <command>` build a parser without that command)."""
    actual = {}
    for mod in cli.COMMAND_MODULES:
        _, names = cli.build_parser([mod])
        actual.update(dict.fromkeys(names, mod))
    assert cli.COMMAND_OWNERS == actual


def test_one_command_parses_like_the_full_parser():
    """`pull`'s own parser gives the same namespace as the parser of all commands."""
    argv = ["pull", "--platform", "linux/arm64", "example.com/a/b:1"]
    full, _ = cli.build_parser()
    own, _ = cli.build_parser([cli.COMMAND_OWNERS["pull"]])
    assert vars(own.parse_args(argv)) == vars(full.parse_args(argv))


def test_registry_import_is_lazy_and_complete():
    """`import registry` loads only its errors; every exported name still resolves."""
    code = ("import sys, registry; loaded = sorted(m for m in sys.modules if m.startswith('registry'));"
            "assert loaded == ['registry', 'registry.errors'], loaded;"
            "from registry import *; import registry as r;"
            "assert all(getattr(r, n) is not None for n in r.__all__);"
            "from registry import RegistryClient, pull, Store, parse_reference, Compression;"
            "assert 'registry.client' in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_no_uuid_on_start_up_paths():
    """The store and the engine modules name temporary files without `uuid` (it imports `platform`)."""
    code = ("import sys, registry.store, registry.transfer, builder.engine.build, builder.runtime.sandbox,"
            " builder.runtime.snapshot;"
            "assert 'uuid' not in sys.modules and 'platform' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
