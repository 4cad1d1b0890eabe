"""The `pybuild` command line: a thin dispatcher over the per-command modules beside it (builder.cli.*).

Each command module exposes ``register(add_command)``; ``add_command(name, help)`` returns an
argparse parser that already carries the global options (``--root``, ``--quiet``) and the module
sets ``func`` on it. Command modules import heavy libraries inside their functions so that start-up
stays cheap (it is part of every warm build).
"""
from __future__ import annotations

import os
import sys

# Neither typing nor signal (enum, re) at import: `pybuild --version` needs only this module.
# Type checkers take a TYPE_CHECKING constant as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Callable

# Order is the order of `pybuild --help`.
COMMAND_MODULES = [
    "builder.cli.build",
    "builder.cli.lint",
    "builder.cli.images",
    "builder.cli.remote",
    "builder.cli.imagetools",
    "builder.cli.login",
    "builder.cli.run",
    "builder.cli.cache",
    "builder.cli.system",
    "builder.cli.supply",
]

# Which module registers each command, so that `pybuild pull ...` builds only that module's parsers
# (building all of them is ~10 ms of every command's start-up). A name missing here just means all
# modules are loaded; tests/packaging/test_cli_startup.py checks the table against what the modules register.
COMMAND_OWNERS = {
    "build": "builder.cli.build", "lint": "builder.cli.lint",
    **dict.fromkeys(["history", "images", "import", "load", "rmi", "save", "store", "tag"],
                    "builder.cli.images"),
    **dict.fromkeys(["catalog", "copy", "delete", "inspect", "pull", "push", "tags"],
                    "builder.cli.remote"),
    **dict.fromkeys(["imagetools", "manifest"], "builder.cli.imagetools"),
    **dict.fromkeys(["login", "logout"], "builder.cli.login"),
    **dict.fromkeys(["commit", "container-cleanup", "diff", "exec", "logs", "ps", "rm", "run",
                     "port", "stop", "wait"], "builder.cli.run"),
    "cache": "builder.cli.cache",
    **dict.fromkeys(["system", "unshare"], "builder.cli.system"),
    **dict.fromkeys(["attestations", "generate-key-pair", "sign", "verify"], "builder.cli.supply"),
}


# Commands that never open the local store: they run as the user, outside any user namespace.
# Every other one runs in rootless pybuild's namespace when the user is not root
# (builder.runtime.userns): files owned by subordinate ids are the store's, and only there can
# they be made, read or removed.
STORELESS_COMMANDS = {None, "lint", "login", "logout", "tags", "catalog", "manifest", "delete",
                      "generate-key-pair"}


def _container_args(args: argparse.Namespace) -> list[str]:
    """The containers a command names (`exec CTR`, `stop CTR...`, `rm CTR...`)."""
    one = getattr(args, "container", None)
    many = getattr(args, "containers", None)
    return ([one] if isinstance(one, str) else []) + (list(many) if isinstance(many, list) else [])


def _enter_store(root: str | None, containers: list[str] = ()) -> None:
    """As an ordinary user, enter the user namespace before any thread starts: the one of the
    store's running containers (those named first) if any, so that they can be stopped and
    entered and all share one; then check the store's mode (rootful or rootless) against ours."""
    from ..root import resolve
    path = resolve(root)
    if _rootful_as_recorded(path):
        return
    from ..runtime import userns
    first: list[str] = []
    if os.geteuid() != 0:
        userns.check_store_owner(path)
    namespaced = os.geteuid() != 0 or userns.in_unprivileged_container()
    if containers and namespaced:
        from ..containers.lifecycle import lookup
        for name in containers:
            try:
                first.append(lookup(path, name).id)
            except Exception:      # the command itself says what is wrong with the name
                continue
    userns.enter(path, join_pids=userns.container_pids(path, first) if namespaced else [])
    userns.check_store_mode(path)


def _rootful_as_recorded(path: Path) -> bool:
    """True for root with CAP_SYS_ADMIN in the host's user namespace on a store recorded as
    rootful: there userns.enter does nothing and userns.check_store_mode passes, so neither is
    needed, nor the import of builder.runtime.userns (dataclasses, builder.errors: ~1.5 ms of a
    cached pull). Any other case (a user, root of a container, no or another mode) goes the
    whole way, which enters the namespace or words the error."""
    if os.geteuid() != 0:
        return False
    from registry.fsutil import has_capability, overlay_opaque_xattr
    from ..root import Root
    try:
        recorded = Root(path).mode.read_bytes().strip()
    except OSError:
        return False
    # The two tests userns.mode() and userns.in_unprivileged_container() make (bit 21: CAP_SYS_ADMIN).
    return recorded == b"rootful" and overlay_opaque_xattr().startswith("trusted.") and has_capability(21)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwind exactly as for Ctrl-C (every ``except
    KeyboardInterrupt`` and ``except BaseException`` on the way cleans up: RUN processes and
    their runc containers killed and deleted, overlay mounts and snapshots removed)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    # Only the first one unwinds: another SIGTERM while cleaning up (a CI runner repeating
    # itself) must not cut the cleanup short. SIGKILL remains the way to stop at once.
    import signal
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _ignore)
    raise Terminated(signum)


def _ignore(_signum: int, _frame) -> None:
    pass


def _install_signal_handlers() -> None:
    """SIGTERM (how CI, `timeout` and Kubernetes stop a job) and SIGHUP (a closed terminal) end a
    command like SIGINT does. Without this, Python dies at once and leaves the RUN command,
    its container, mounts and snapshot behind. `pybuild run` replaces them while its container
    runs, to stop the container instead (builder.containers)."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:      # not when ignored, e.g. under nohup
            signal.signal(sig, _terminate)


def _common_options() -> argparse.ArgumentParser:
    import argparse
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS,
                        help="store root (default: $PYBUILD_ROOT or $XDG_DATA_HOME/pybuild)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print only results and errors")
    return common


class _Unneeded:
    """Stands in for the parser of a command this run does not run: every call is a no-op (argparse
    builds each parser eagerly, with gettext look-ups per string: ~1 ms a command)."""

    def __getattr__(self, name: str):
        return self._ignore

    def _ignore(self, *args, **kwargs) -> "_Unneeded":
        return self


def build_parser(modules: list[str] | None = None, parsers: dict[str, argparse.ArgumentParser] | None = None,
                 only: str | None = None) -> tuple[argparse.ArgumentParser, set[str]]:
    """Build the argument parser (of ``modules``, default all); returns it and the command names
    (and fills ``parsers`` with each command's own parser, when given). With ``only``, the other
    commands are named but get no parser."""
    import argparse
    import importlib
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="pybuild", parents=[common],
        description="Daemonless container image builder and registry client. "
                    "`pybuild [build] -f Dockerfile CONTEXT` builds like `docker build`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names: set[str] = set()

    def add_command(name: str, help: str, **kw) -> argparse.ArgumentParser:
        names.add(name)
        if only is not None and name != only:
            return _Unneeded()          # type: ignore[return-value]
        p = sub.add_parser(name, help=help, parents=[common], **kw)
        if parsers is not None:
            parsers[name] = p
        return p

    for mod_name in modules or COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:      # command not written yet in this checkout
                continue
            raise
        mod.register(add_command)
    return parser, names


def command_group(add_command, name: str, help: str):
    """Add a command that only groups subcommands (`cache ls`, `system df`): returns its
    subparsers and a parent parser carrying the global options, so that they may also follow
    the subcommand. The bare group prints its help and exits 2."""
    import argparse
    p = add_command(name, help)
    sub = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return sub, common


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pybuild` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    i = _after_globals(argv)
    if i < len(argv) and argv[i] in ("--version", "-v"):
        # Before any parser is built: the version costs one tiny module (no argparse tables).
        from .._version import __version__
        print(f"pybuild version {__version__}")
        return 0
    from .quick import parse as quick_parse
    args = quick_parse(argv)            # `pull REF`, `push NAME DEST`: no argparse at all
    if args is None:
        args = _parse(argv, i)
        if isinstance(args, int):
            return args
    # The command's word, not args.command (`run` and `exec` have an argument of that name);
    # _parse may have put `build` there.
    return _run(args, argv[i] if i < len(argv) else None)


def _parse(argv: list[str], i: int) -> "argparse.Namespace | int":
    """The command line parsed by argparse (an exit status instead when it is not a command);
    `build` is inserted at argv[i] when the line is a bare build (`pybuild -f Dockerfile .`)."""
    # An explicit command needs only its own module's parsers (building them all is a start-up cost).
    owner = COMMAND_OWNERS.get(argv[i]) if i < len(argv) else None
    parsers: dict[str, argparse.ArgumentParser] = {}
    parser, names = build_parser([owner] if owner else None, parsers, only=argv[i] if owner else None)
    # `pybuild -f Dockerfile .` means `pybuild build -f Dockerfile .`, like `docker build`.
    if "build" in names and i < len(argv) and argv[i] not in names and argv[i] not in ("-h", "--help"):
        if _looks_like_command(argv[i]):
            print(_unknown_command(argv[i], names), file=sys.stderr)
            return 2
        argv.insert(i, "build")
    args, extra = parser.parse_known_args(argv)
    word = argv[i] if i < len(argv) else None
    if extra:
        # Report on the (sub)command's own parser: its usage line is the one that helps.
        _innermost(parsers.get(word or "", parser), args).error(
            f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args


def _run(args: "argparse.Namespace", word: str | None) -> int:
    """Run the parsed command (`word`); errors pybuild raises become a message and exit status 1."""
    root = getattr(args, "root", None)
    # Absolute, because runc bundles and overlay mount options are resolved from other cwds.
    args.root = os.path.abspath(root) if root else None
    args.quiet = getattr(args, "quiet", False)
    func: Callable[[argparse.Namespace], int] = args.func
    _install_signal_handlers()
    try:
        if word not in STORELESS_COMMANDS:
            _enter_store(args.root, _container_args(args))
        return int(func(args) or 0)
    except Terminated as exc:
        import signal
        print(f"interrupted by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `pybuild images | head`: the reader left; exit like a shell pipeline would, quietly
        # (stdout is pointed at /dev/null so the interpreter's final flush cannot fail again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:     # after BrokenPipeError, which is an OSError too
        import errno
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on device{f' writing {exc.filename}' if exc.filename else ''}: free some "
              "space (e.g. `pybuild store gc`) or use another --root", file=sys.stderr)
        return 1
    except Exception as exc:
        # The error modules are imported only once something failed: a warm build's fast path
        # imports neither `registry` nor `dockerfile_grammar`.
        from dockerfile_grammar.errors import DockerfileError
        from registry.errors import RegistryError
        from ..errors import BuildError
        from .format import printable
        if not isinstance(exc, (DockerfileError, RegistryError, BuildError)):
            raise
        # Messages quote registries, images and Dockerfiles: their escape sequences must not act.
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 1


def _looks_like_command(word: str) -> bool:
    """A first word that is neither an option nor a build context: a mistyped or unknown command.
    A context is whatever exists as a path, `-` (stdin), or a word with a path or URL shape (a
    missing directory then gets build's own "context not found")."""
    if word.startswith("-") or os.path.lexists(word):
        return False
    return not any(c in word for c in "/.:~\\") and word.replace("-", "").replace("_", "").isalnum()


def _unknown_command(word: str, names: set[str]) -> str:
    import difflib
    close = difflib.get_close_matches(word, sorted(names), n=1, cutoff=0.6)
    if close:
        return f"pybuild: unknown command '{word}'; did you mean '{close[0]}'?"
    return (f"pybuild: unknown command '{word}', and no build context of that name; "
            f"see `pybuild --help` (to build a directory, give it as a path: ./{word})")


def _innermost(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest subcommand parser ``args`` went through (`cache prune`, not `cache`)."""
    import argparse
    while True:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = [a.choices[getattr(args, a.dest)] for a in subs
                  if isinstance(getattr(args, a.dest, None), str) and getattr(args, a.dest) in a.choices]
        if not chosen:
            return p
        p = chosen[0]


def _after_globals(argv: list[str]) -> int:
    """Index just after leading global options (`--root DIR`, `-q`)."""
    i = 0
    while i < len(argv):
        if argv[i] == "--root":
            i += 2
        elif argv[i].startswith("--root=") or argv[i] in ("-q", "--quiet"):
            i += 1
        else:
            break
    return i


if __name__ == "__main__":
    sys.exit(main())
