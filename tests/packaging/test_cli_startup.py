"""The command line's start-up shortcuts: they must not change which commands exist or what they do."""
from __future__ import annotations

import os
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


_PARSER: list = []


def _argparse_namespace(argv: list[str]):
    """vars() of what argparse makes of argv, or None when it refuses it."""
    import contextlib
    import io
    if not _PARSER:
        _PARSER.append(cli.build_parser()[0])
    parser = _PARSER[0]
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            ns, extra = parser.parse_known_args(argv)
    except SystemExit:
        return None
    return None if extra else vars(ns)


def test_quick_command_lines_read_like_argparse():
    """builder.cli.quick reads `pull`/`push` lines without argparse: on every line it accepts it
    gives argparse's namespace, and it declines the lines argparse reads its own way."""
    from builder.cli import quick
    accepted = [["pull", "x"], ["--root", "/r", "-q", "pull", "x"], ["pull", "--platform", "linux/arm64", "x"],
                ["pull", "--platform=linux/arm64", "--all-platforms", "x", "-q"],
                ["pull", "x", "--insecure-registry", "a", "--insecure-registry=b", "--root", "/r"],
                ["push", "a"], ["push", "a", "b", "--root=/r"], ["--quiet", "push", "a", "b"], ["push", "-q", "a", "b"]]
    for argv in accepted:
        got = quick.parse(argv)
        assert got is not None, argv
        assert vars(got) == _argparse_namespace(argv), argv
    declined = [["pull"], ["pull", "x", "y"], ["pull", "--plat", "p", "x"], ["pull", "-h"], ["pull", "--platform", "-x", "r"],
                ["push", "a", "--insecure-registry", "h", "b"], ["pull", "--", "x"], ["-q", "-q", "pull", "x"],
                ["pull", "--root", "a", "--root", "b", "x"], ["build", "."], ["pull", "--platform"], ["tags", "x"],
                ["pull", "--root=", "x"], ["pull", "--all-platforms=1", "x"]]
    for argv in declined:
        assert quick.parse(argv) is None, argv
    # Generated lines: whatever quick accepts, argparse reads the same.
    import random
    rng = random.Random(18)
    items = [["x"], ["y"], ["-"], ["-q"], ["--quiet"], ["--root", "/r"], ["--root=/s"], ["--platform", "linux/arm64"],
             ["--platform=linux/amd64"], ["--all-platforms"], ["--all"], ["--insecure-registry", "h:5000"],
             ["--insecure-registry=i"], ["--"], ["-h"], ["--bogus"], ["--platform"], ["--root"]]
    taken = 0
    for _ in range(3000):
        head = [w for item in rng.sample(items[3:7], rng.randint(0, 2)) for w in item]
        tail = [w for item in rng.choices(items, weights=[6, 4] + [1] * (len(items) - 2), k=rng.randint(1, 5))
                for w in item]
        argv = head + [rng.choice(["pull", "push"])] + tail
        got = quick.parse(argv)
        if got is not None:
            taken += 1
            assert vars(got) == _argparse_namespace(argv), argv
    assert taken > 300, taken


def test_registry_import_is_lazy_and_complete():
    """`import registry` loads only its errors; every exported name still resolves."""
    code = ("import sys, registry; loaded = sorted(m for m in sys.modules if m.startswith('registry'));"
            "assert loaded == ['registry', 'registry.errors'], loaded;"
            "from registry import *; import registry as r;"
            "assert all(getattr(r, n) is not None for n in r.__all__);"
            "from registry import Client, ClientOptions, pull, Store, parse_reference;"
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


# ---- the import graph of the transfer and fast-build paths (issue 18) ----------------------------
# Start-up is most of a small pull or a no-op rebuild: these tests keep what those paths import
# from growing back. Raise a limit only with a reason (and a measurement) in the commit message.

HEAVY = ("requests", "urllib3", "lark", "rich", "certifi", "cryptography", "dockerfile_grammar",
         "concurrent", "tempfile", "logging", "uuid", "platform", "subprocess",
         "multiprocessing", "asyncio", "zstandard", "isal", "zlib_ng", "tarfile", "gzip")
# What the transfer commands do without: http.client (with the email package and ssl: ~10 ms),
# argparse (with gettext, locale, shutil: ~10 ms with its parsers; builder.cli.quick reads these
# command lines), hashlib (OpenSSL: the few small digests use the builtin sha256), auth and the
# credential stores (made at a registry's first 401), random (only for a retry's jitter).
# Nor, for root on a store recorded rootful, the rootless machinery (builder.cli._rootful_as_recorded).
TRANSFER_NEVER = HEAVY + ("http.client", "email", "ssl", "argparse", "gettext", "locale", "shutil", "bz2", "lzma",
                          "hashlib", "_hashlib", "random", "base64", "registry.auth", "registry.credentials",
                          *(("builder.runtime", "builder.runtime.userns") if os.geteuid() == 0 else ()))
PULL_CACHED_MAX_MODULES = 140      # `pybuild pull` of a cached image: 130 in sys.modules when written (175 before)
PUSH_CACHED_MAX_MODULES = 140      # `pybuild push` of what the registry holds: 130 when written
VERSION_MAX_MODULES = 62           # `pybuild --version`: 58 when written (73 before)
FAST_BUILD_MAX_MODULES = 95        # builder.cli.build + builder.cache.fast: 83 when written

# Runs a command as `python3 -m builder` does and writes what sys.modules holds at exit to a file.
_DUMP = """
def _dump(out):
    mods = sorted(sys.modules)          # before json is imported to write them
    import json
    open(out, "w").write(json.dumps(mods))
"""
_RUNNER = "import atexit, runpy, sys\n" + _DUMP + """
atexit.register(_dump, sys.argv.pop(1))
sys.argv[0] = "pybuild"
runpy.run_module("builder", run_name="__main__", alter_sys=True)
"""


def _imported(args: list[str], tmp_path) -> list[str]:
    """Modules in sys.modules at the end of `pybuild ARGS` (`-c CODE`: of that code), run in a
    fresh interpreter with bytecode caches as users have them."""
    import json
    import os
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = tmp_path / "modules.json"
    if args[0] == "-c":
        cmd = [sys.executable, "-c", args[1] + "\nimport sys\n" + _DUMP + f"_dump({str(out)!r})"]
    else:
        cmd = [sys.executable, "-c", _RUNNER, str(out), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())


def _heavy(mods: list[str], never: tuple[str, ...] = HEAVY) -> list[str]:
    return [m for m in mods if m.split(".")[0] in never or m in never or m.startswith("builder.engine")]


def _pushed_and_pulled(registry, tmp_path):
    """An image pushed to the test registry and pulled into a store, both stores used by the CLI
    once (which records their mode): (source root, ref, store root)."""
    from registry.client import ClientOptions, RegistryClient
    from registry.platform import host_platform
    from registry.store import Store
    from registry.transfer import pull, push
    from tests.fixtures.synthetic_images import make_image, tar_layer

    src = Store(tmp_path / "src")
    make_image(src, "startup/app:v1", layers=[tar_layer({"a.txt": b"hello\n"})], platform=host_platform())
    ref = f"{registry.host}/startup/app:v1"
    root = tmp_path / "dst"
    with RegistryClient(ClientOptions(use_credentials=False)) as client:
        push(client, src, "startup/app:v1", ref)
        pull(client, ref, Store(root))
    for store in (src.root, root):
        r = subprocess.run([sys.executable, "-m", "builder", "--root", str(store), "-q", "images"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    return src.root, ref, root


def test_pull_of_a_cached_image_imports_little(registry, tmp_path):
    """`pybuild pull REF` of an image already in the store: the client, the store and the copier;
    no thread pool, logging, temp-file module, http.client, argparse, hashlib or auth."""
    _, ref, root = _pushed_and_pulled(registry, tmp_path)
    mods = _imported(["--root", str(root), "-q", "pull", ref], tmp_path)
    assert "registry.copier" in mods and "registry.store" in mods   # the real path ran
    assert not _heavy(mods, TRANSFER_NEVER), _heavy(mods, TRANSFER_NEVER)
    assert len(mods) <= PULL_CACHED_MAX_MODULES, (len(mods), mods)


def test_push_of_what_the_registry_holds_imports_little(registry, tmp_path):
    """`pybuild push NAME REF` when the registry has every blob (HEADs, then the manifest PUT)."""
    src_root, ref, _ = _pushed_and_pulled(registry, tmp_path)
    mods = _imported(["--root", str(src_root), "-q", "push", "startup/app:v1", ref], tmp_path)
    assert "registry.copier" in mods and "registry.endpoints" in mods
    assert not _heavy(mods, TRANSFER_NEVER), _heavy(mods, TRANSFER_NEVER)
    assert len(mods) <= PUSH_CACHED_MAX_MODULES, (len(mods), mods)


def test_version_imports_little(tmp_path):
    mods = _imported(["--version"], tmp_path)
    never = TRANSFER_NEVER + ("typing", "signal", "re", "dataclasses", "json")
    assert not [m for m in mods if m.startswith(("registry", "builder.engine"))] and not _heavy(mods, never), mods
    assert len(mods) <= VERSION_MAX_MODULES, (len(mods), mods)


def test_fast_build_path_imports_little(tmp_path):
    """What `pybuild build` loads before a no-op rebuild is recognised (builder.cache.fast)."""
    mods = _imported(["-c", "import builder.cli, builder.cli.build, builder.cache.fast"], tmp_path)
    assert not [m for m in mods if m.startswith(("registry.client", "registry.http", "builder.engine"))]
    assert not _heavy(mods), _heavy(mods)
    assert len(mods) <= FAST_BUILD_MAX_MODULES, (len(mods), mods)


def test_root_skips_the_namespace_only_on_a_store_recorded_rootful(tmp_path):
    """The shortcut that spares root builder.runtime.userns changes no outcome: a store recorded
    rootless still refuses root, and one with no record gets `rootful` written."""
    if os.geteuid() != 0:
        import pytest
        pytest.skip("the shortcut is root's (an ordinary user always enters the namespace)")
    marked = tmp_path / "marked"
    marked.mkdir(mode=0o700)
    (marked / "mode").write_text("rootless\n")
    r = subprocess.run([sys.executable, "-m", "builder", "--root", str(marked), "images"], capture_output=True, text=True)
    assert r.returncode == 1 and "was made by pybuild rootless" in r.stderr and "Traceback" not in r.stderr
    fresh = tmp_path / "fresh"
    mods = _imported(["--root", str(fresh), "images"], tmp_path)
    assert (fresh / "mode").read_text() == "rootful\n" and "builder.runtime.userns" in mods   # the whole way
    mods = _imported(["--root", str(fresh), "images"], tmp_path)
    assert "builder.runtime.userns" not in mods


# ---- the import graph of `run -d` and `run --rm` (issue 16) -----------------------------------
# Twenty `run -d` at once on two cores are CPU-bound, and Python start-up and imports are most of
# pybuild's share of each start: what the run path imports is kept from growing back. It needs
# subprocess, tempfile, ctypes and threading (runc, conmon, the network namespace's thread).
RUN_NEVER = tuple(m for m in HEAVY if m not in ("subprocess", "tempfile")) + (
    "socket", "datetime", "secrets", "hmac", "shlex", "registry.tarsafe", "registry.compression",
    "registry.layer", "registry.tarwriter", "registry.client", "registry.http", "registry.transfer",
    "builder.cli.build", "builder.cli.images")
RUN_MAX_MODULES = 165              # `run -d` / `run --rm`: 156 / 157 when written (171 / 178 before)


def _container_tests_possible() -> str | None:
    import os
    import shutil
    if os.geteuid() != 0:
        return "containers need root (namespaces, overlay mounts)"
    if shutil.which("runc") is None or shutil.which("conmon") is None:
        return "needs Debian's runc and conmon"
    return None


def test_run_path_imports_little(busybox_image, tmp_path):
    """`pybuild run -d` and `run --rm` of an image already extracted: no tar or decompression
    module, no registry client, no socket/datetime/secrets/shlex, nothing of the build engine."""
    import pytest
    why = _container_tests_possible()
    if why:
        pytest.skip(why)
    root = busybox_image
    base = ["--root", str(root), "-q"]
    subprocess.run([sys.executable, "-m", "builder", *base, "run", "--rm", "busybox", "true"],
                   check=True, capture_output=True, timeout=60)           # extracts the layer once
    try:
        mods = _imported([*base, "run", "-d", "--name", "startup", "busybox", "sleep", "30"], tmp_path)
    finally:
        subprocess.run([sys.executable, "-m", "builder", *base, "rm", "-f", "startup"], capture_output=True, timeout=60)
    assert "builder.containers.lifecycle" in mods and "builder.runtime.bridge" in mods   # the real path ran
    assert not _heavy(mods, RUN_NEVER), _heavy(mods, RUN_NEVER)
    assert len(mods) <= RUN_MAX_MODULES, (len(mods), mods)
    mods = _imported([*base, "run", "--rm", "busybox", "true"], tmp_path)
    assert "builder.runtime.sandbox" in mods and "builder.runtime.layers" in mods
    assert not _heavy(mods, RUN_NEVER), _heavy(mods, RUN_NEVER)
    assert len(mods) <= RUN_MAX_MODULES, (len(mods), mods)
