"""Container commands: run, ps, stop, rm, logs, diff, commit (see builder.containers).

`pybuild run` exits with the container's exit code; its own failures exit 125 (as `docker run`
does), a command that cannot be found 127, one that cannot be executed 126.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def register(add_command) -> None:
    """Add the container commands."""
    p = add_command("run", "run a command in a new container of an image (like docker run)")
    p.add_argument("--rm", dest="auto_remove", action="store_true",
                   help="remove the container when it exits")
    p.add_argument("--name", default="", help="name the container (default: a generated one)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable; a bare K takes the host's value (repeatable)")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]",
                   help="bind-mount a host path into the container (repeatable)")
    p.add_argument("-w", "--workdir", help="working directory inside the container (absolute)")
    p.add_argument("-u", "--user", help="USER[:GROUP] (names or numbers) to run as")
    p.add_argument("--entrypoint", help='override the image\'s ENTRYPOINT ("" clears it, and the CMD)')
    p.add_argument("--network", choices=("default", "bridge", "host", "none"), default="default",
                   help="default (or bridge): a private network with outbound access (a bridge as root, pasta "
                        "rootless); "
                        "host: the host's network shared (without CAP_NET_RAW); none: only loopback")
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background (under conmon) and print the container ID")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin to the container")
    p.add_argument("-t", "--tty", action="store_true", help="give the container a pty (on this terminal)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CTR[/tcp|udp]",
                   help="publish a container port on the host (repeatable; default network; no HOST: a free one, "
                        "see `pybuild port`)")
    p.add_argument("--dns", action="append", default=[], metavar="ADDRESS",
                   help="a DNS server for the container's resolv.conf (repeatable)")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:ADDRESS",
                   help="add a line to the container's /etc/hosts (repeatable; host-gateway: the host)")
    p.add_argument("--health-cmd", metavar="COMMAND", help="a shell command checking the container's health "
                   "(replaces the image's HEALTHCHECK; with -d)")
    p.add_argument("--health-interval", metavar="DURATION", help="time between checks (default 30s)")
    p.add_argument("--health-timeout", metavar="DURATION", help="a check taking longer fails (default 30s)")
    p.add_argument("--health-retries", type=int, metavar="N", help="failures in a row for unhealthy (default 3)")
    p.add_argument("--health-start-period", metavar="DURATION",
                   help="failures within this time after the start are not counted (default 0s)")
    p.add_argument("--no-healthcheck", action="store_true", help="disable the image's HEALTHCHECK")
    p.add_argument("--init", action="store_true",
                   help="run tini (Debian's tini-static, else catatonit) as PID 1: it forwards signals "
                        "and reaps zombies")
    p.add_argument("--restart", default="no", metavar="POLICY",
                   help="with -d: restart the container when it exits: no (default), always, unless-stopped "
                        "(the same here: no daemon), on-failure[:MAX_RETRIES] (a non-zero exit); never after "
                        "`pybuild stop`")
    p.add_argument("--isolation", choices=("oci", "default", "chroot"),
                   help="oci: runc (the default, and the only one); chroot was removed (it could not "
                        "confine a container)")
    p.add_argument("--stop-timeout", type=int, metavar="SECONDS",
                   help="after the stop signal, wait this long before SIGKILL (default 10)")
    p.add_argument("--pull", choices=("missing", "always", "never"), default="missing",
                   help="pull the image: when missing from the store (default), always, or never")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="allow plain HTTP or an unverified certificate for HOST when pulling")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="run the image of this platform from a multi-platform image (foreign ones under "
                        "qemu-user-static's binfmt_misc emulation; default: this host's)")
    p.add_argument("image", metavar="IMAGE")
    # Everything after IMAGE belongs to the container, options included (`run busybox ls -l`).
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.set_defaults(func=_run)

    p = add_command("exec", "run a command in a running container (like docker exec)")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a pty (on this terminal)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (repeatable)")
    p.add_argument("-u", "--user", help="USER[:GROUP] to run as (default: the container's)")
    p.add_argument("-w", "--workdir", help="working directory (default: the container's)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.set_defaults(func=_exec)

    p = add_command("port", "list a running container's published ports (like docker port)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("private", nargs="?", metavar="PORT[/PROTO]", help="only this container port")
    p.set_defaults(func=_port)

    p = add_command("wait", "wait for containers to exit and print their exit codes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_wait)

    p = add_command("container-cleanup", "(internal) conmon's exit command: record a detached container's exit")
    p.add_argument("container")
    p.set_defaults(func=_cleanup)

    p = add_command("ps", "list containers (running ones; -a for all)")
    p.add_argument("-a", "--all", action="store_true", help="show all containers, not only running ones")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_ps)

    p = add_command("stop", "stop running containers (the image's StopSignal, then SIGKILL)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.add_argument("-t", "--time", type=int, metavar="SECONDS",
                   help="seconds to wait before SIGKILL (default: the container's stop timeout)")
    p.set_defaults(func=_stop)

    p = add_command("rm", "remove containers and their writable layers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="also remove its anonymous volumes (VOLUME)")
    p.set_defaults(func=_rm)

    p = add_command("logs", "print a container's output")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    p.set_defaults(func=_logs)

    p = add_command("diff", "list the paths a container added (A), changed (C) or deleted (D)")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=_diff)

    p = add_command("commit", "make an image from a container's changes (like docker commit)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("-m", "--message", default="", help="history comment")
    p.add_argument("-a", "--author", default="", help="author of the image")
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, EXPOSE, "
                        "LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (repeatable)")
    p.set_defaults(func=_commit)


def _root(args: argparse.Namespace):
    from registry.store import open_store
    store = open_store(args.root)
    return store, store.root


def _write(stream: str, chunk: bytes) -> None:
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    out.write(chunk)
    out.flush()


def _run(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    from builder.errors import BuildError
    from registry.errors import RegistryError
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    opts = ct.RunOptions(
        image=args.image, command=command, name=args.name, env=args.env, volumes=args.volume,
        workdir=args.workdir, user=args.user, entrypoint=args.entrypoint, network=args.network,
        isolation=args.isolation, auto_remove=args.auto_remove, stop_timeout=args.stop_timeout,
        pull=args.pull, insecure_registries=tuple(args.insecure_registry), publish=args.publish,
        tty=args.tty, dns=args.dns, add_hosts=args.add_host, health_cmd=args.health_cmd,
        health_interval=args.health_interval, health_timeout=args.health_timeout,
        health_retries=args.health_retries, health_start_period=args.health_start_period,
        no_healthcheck=args.no_healthcheck, init=args.init, restart=args.restart,
        platform=args.platform)
    if args.tty and not args.detach and not os.isatty(0):
        print("error: -t needs a terminal on stdin (the input device is not a TTY)", file=sys.stderr)
        return 125
    if args.restart != "no" and not args.detach:
        print("error: --restart needs -d (conmon's exit command restarts a detached container)", file=sys.stderr)
        return 125
    if args.detach and args.interactive:
        print("error: -d with -i is not supported (nothing would be attached to the container's stdin)",
              file=sys.stderr)
        return 125
    try:
        store, root = _root(args)
        progress = None
        if not args.quiet:
            from registry.progress import make_progress
            progress = make_progress(quiet=False)
        try:
            c = ct.create(store, root, opts, progress=progress)
        finally:
            if progress is not None:
                progress.close()
        if args.detach:
            ct.start_detached(c)
            print(c.id)
            return 0
        try:
            return ct.start(c, output=_write, stdin=0 if (args.interactive or args.tty) else None)
        except BrokenPipeError:
            # Our reader went away (`pybuild run IMAGE yes | head`): the container was killed;
            # end like a pipeline member killed by SIGPIPE, without a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        finally:
            if c.auto_remove:
                ct.remove(c)
    except (BuildError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 125


def _ps(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    from .format import ago_rfc3339, print_table, truncate
    _, root = _root(args)
    cs = ct.list_containers(root, all=args.all)
    if args.quiet:
        for c in cs:
            print(c.id[:12])
        return 0
    if args.format == "json":
        for c in cs:
            d = c.to_dict()
            d["state"] = c.state.__dict__
            d["status_text"] = c.status_text()
            h = c.health() if c.running else None
            d["health"] = h.status if h else None
            print(json.dumps(d))
        return 0
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for c in cs:
        cmd = " ".join(c.args)
        ports = ", ".join(f"{ip or '0.0.0.0'}:{hp}->{cp}/{proto}" for ip, hp, cp, proto in ct.published(c))
        rows.append((c.id[:12], c.image, '"' + truncate(cmd, 20) + '"', ago_rfc3339(c.created), c.status_text(),
                     ports, c.name))
    print_table(rows)
    return 0


def _stop(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    _, root = _root(args)
    for ref in args.containers:
        c = ct.lookup(root, ref)
        ct.stop(c, timeout=args.time)
        print(ref)
    return 0


def _rm(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    _, root = _root(args)
    for ref in args.containers:
        ct.remove(ct.lookup(root, ref), force=args.force, volumes=args.volumes)
        print(ref)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    _, root = _root(args)
    for stream, chunk in ct.read_logs(ct.lookup(root, args.container), follow=args.follow):
        _write(stream, chunk)
    return 0


def _diff(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    _, root = _root(args)
    for kind, path in ct.diff(ct.lookup(root, args.container)):
        print(f"{kind} {path}")
    return 0


def _commit(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    store, root = _root(args)
    c = ct.lookup(root, args.container)
    desc = ct.commit(store, c, args.name, message=args.message, author=args.author, changes=args.change)
    print(desc.digest)
    return 0


def _exec(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    from builder.errors import BuildError
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.tty and not os.isatty(0):
        print("error: -t needs a terminal on stdin (the input device is not a TTY)", file=sys.stderr)
        return 125
    try:
        _, root = _root(args)
        c = ct.lookup(root, args.container)
        return ct.exec_in(c, command, env=args.env, user=args.user, workdir=args.workdir,
                          interactive=args.interactive, tty=args.tty)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 125


def _port(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    _, root = _root(args)
    c = ct.lookup(root, args.container)
    want = args.private
    if want and "/" not in want:
        want += "/tcp"
    rows = [(f"{cp}/{proto}", f"{ip or '0.0.0.0'}:{hp}") for ip, hp, cp, proto in ct.published(c)]
    rows = [r for r in rows if not want or r[0] == want]
    if want and not rows:
        print(f"error: no public port {want} published for {args.container}", file=sys.stderr)
        return 1
    for private, public in rows:
        print(public if want else f"{private} -> {public}")
    return 0


def _wait(args: argparse.Namespace) -> int:
    from builder.containers import lifecycle as ct
    _, root = _root(args)
    for ref in args.containers:
        print(ct.wait(ct.lookup(root, ref)), flush=True)
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    """conmon's exit command: record the exit and release what the container held."""
    from builder.containers import lifecycle as ct
    from builder.errors import BuildError
    _, root = _root(args)
    try:
        ct.finish_monitored(ct.load(root, args.container), exit_command=True)
    except BuildError:
        pass                     # removed meanwhile (`rm -f`)
    return 0
