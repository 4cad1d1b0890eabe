"""Containers: instances of images, each with its own writable layer over the image's layers.

An image is the class, a container the object. ``create`` turns an image plus ``docker run``
style overrides into a container record; ``start`` mounts an overlay whose lower directories
are the image's extracted layers (builder.runtime.snapshot: extracted once per diffID, shared by every
container and build of that image, never written to) and whose upper directory is the
container's own, then runs the command through the RUN sandbox (builder.runtime.sandbox).

Records live under ``<root>/containers/<id>/``::

    config.json   what was asked for (image, command, env, user, volumes...) and its snapshot
    state.json    created | running | exited, the supervising pid, exit code, times
    log.jsonl     output, one JSON object per chunk: {"stream", "time", "log"}
    fs -> ../../snapshots/<sid>   the snapshot: fs/upper is the writable layer, fs/merged the rootfs
    run/          the runtime bundle while running

``<root>/containers/names/<name>`` reserves a name (created with O_EXCL, so two concurrent
``run --name x`` cannot both win). Each container keeps its image alive across ``store gc``
through a gc root ``container-<id>``.

Signals: the supervising process (``pybuild run`` in the foreground, or the ``-d`` supervisor)
forwards SIGINT and SIGQUIT to the container's first process; SIGTERM and SIGHUP *stop* the
container the way ``docker stop`` does: the image's StopSignal (default SIGTERM), then SIGKILL
after the stop timeout. Note that a first process without a handler ignores SIGTERM (it is PID 1
of its namespace), which is why the SIGKILL fallback exists.
"""
from __future__ import annotations

import json
import os
import posixpath
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from registry.errors import NotFoundError, RegistryError
from registry.manifest import Descriptor, History, Manifest
from registry.store import Store

from ..errors import BuildError
from ..root import Root
from ..runtime.rootview import RootView
from registry.inroot import makedirs_in_root, opened_root

from ..runtime.sandbox import (DEFAULT_PATH, Mount, RunSpec, check_isolation, create_bundle, exec_process,
                               parse_publish, release_bundle, release_networks, run as sandbox_run,
                               runtime_available)
from ..runtime.snapshot import LayerDirs, Snapshot, is_opaque, mount_snapshot
from ..runtime.users import resolve_user
from ..runtime.userns import runc_argv

DEFAULT_STOP_TIMEOUT = 10
INIT_PATH = "/sbin/docker-init"        # where --init's binary is bound (Docker's path)
# Statically linked ones only: the binary runs inside the image, which may have no libc.
INIT_BINARIES = ("/usr/bin/tini-static", "/usr/bin/catatonit")
NETWORKS = ("default", "host", "none")
_NAME_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid",
                    "merry", "nifty", "proud", "quiet", "sharp", "tender", "vivid", "witty", "zen")
_NAME_NOUNS = ("babbage", "curie", "dijkstra", "euler", "fermi", "gauss", "hopper", "knuth",
               "lovelace", "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wozniak")


@dataclass
class Volume:
    """A bind mount of a host directory or file into the container."""

    host: str
    target: str
    readonly: bool = False

    @classmethod
    def parse(cls, spec: str) -> "Volume":
        """``HOST:CTR[:ro|rw]`` (both absolute paths), as ``docker run -v`` takes it."""
        parts = spec.split(":")
        mode = ""
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or mode not in ("", "ro", "rw"):
            raise BuildError(f"invalid volume {spec!r}: use HOST_PATH:CONTAINER_PATH[:ro|rw]")
        host, target = parts
        if not host.startswith("/"):
            raise BuildError(f"invalid volume {spec!r}: the host path must be absolute "
                             "(named volumes are not supported)")
        if not target.startswith("/") or posixpath.normpath(target) == "/":
            raise BuildError(f"invalid volume {spec!r}: the container path must be absolute and not /")
        return cls(os.path.normpath(host), posixpath.normpath(target), mode == "ro")


@dataclass
class RunOptions:
    """What ``pybuild run`` was asked for (everything but the image may be left at its default)."""

    image: str
    command: list[str] = field(default_factory=list)
    name: str = ""
    env: list[str] = field(default_factory=list)          # K=V, or K to take the host's value
    volumes: list[str] = field(default_factory=list)      # HOST:CTR[:ro]
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None                          # "" clears the image's entrypoint
    network: str = "default"                               # default (private, outbound) | host | none
    isolation: str | None = None                           # oci (default: the same)
    auto_remove: bool = False
    stop_timeout: int | None = None
    pull: str = "missing"                                  # missing | always | never
    insecure_registries: tuple[str, ...] = ()
    publish: list[str] = field(default_factory=list)      # [IP:]HOST:CONTAINER[/tcp|udp]
    tty: bool = False                                      # -t: a pty for the first process
    dns: list[str] = field(default_factory=list)           # --dns: resolver addresses
    add_hosts: list[str] = field(default_factory=list)     # --add-host NAME:ADDRESS
    health_cmd: str | None = None                          # --health-cmd (a shell command)
    health_interval: str | None = None                     # --health-interval 30s
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    no_healthcheck: bool = False
    init: bool = False                                     # --init: tini (or catatonit) as PID 1
    restart: str = "no"                                    # --restart no|always|unless-stopped|on-failure[:N]
    platform: str | None = None                            # --platform: the image of an index to run


@dataclass
class ContainerState:
    """The mutable part of a container record."""

    status: str = "created"          # created | running | restarting | exited
    pid: int = 0                     # the process supervising the container while it runs
    exit_code: int | None = None
    started: str = ""
    finished: str = ""
    error: str = ""
    monitor: str = ""                # "conmon" for a detached container under conmon, else ""
    runtime_id: str = ""             # runc's id of the container (conmon-run containers)
    bundle: str = ""                 # its runtime bundle
    restart_count: int = 0           # restarts done by its restart policy
    restart_delay: float = 0.0       # the wait before the last restart (doubles while it keeps failing)


@dataclass
class Container:
    """A container record (config.json) plus its current state (state.json)."""

    id: str
    name: str
    image: str                       # the reference as given
    image_digest: str                # manifest digest the container was created from
    config_digest: str
    created: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]                   # image Env with the -e overrides (what commit records)
    workdir: str
    user: str
    uid: int
    gid: int
    additional_gids: list[int]
    home: str
    volumes: list[dict]
    network: str
    isolation: str
    stop_signal: str
    stop_timeout: int
    auto_remove: bool
    diff_ids: list[str]
    snapshot: str = ""               # snapshot directory name under <root>/snapshots
    ports: list = field(default_factory=list)     # published: [ip, host port, container port, proto]
    tty: bool = False
    network_backend: str = "pasta"   # default network: "bridge" (root) or "pasta" (rootless)
    dns: list = field(default_factory=list)
    extra_hosts: list = field(default_factory=list)   # [name, address]
    healthcheck: dict | None = None  # builder.containers.health.config_of (None: no check)
    init: bool = False               # --init: INIT_PATH (tini or catatonit, bound read-only) runs first
    anon_volumes: list = field(default_factory=list)  # [{"name": id, "target": path}] under <root>/volumes
    restart_policy: str = "no"       # no | always | unless-stopped | on-failure (see restart_wanted)
    restart_max: int = 0             # on-failure:N: at most N restarts (0: no limit)
    root: Path = field(default=Path("."), repr=False, compare=False)
    state: ContainerState = field(default_factory=ContainerState, compare=False)

    @property
    def dir(self) -> Path:
        """The container's record directory."""
        return Root(self.root).containers / self.id

    @property
    def args(self) -> list[str]:
        """The command line the container runs: entrypoint + cmd."""
        return list(self.entrypoint) + list(self.cmd)

    @property
    def hostname(self) -> str:
        return self.id[:12]

    @property
    def upper(self) -> Path | None:
        """The writable layer (overlay upper directory), once the container has been started."""
        return Root(self.root).snapshots / self.snapshot / "upper" if self.snapshot else None

    @property
    def running(self) -> bool:
        """True while a live process supervises the container."""
        return self.state.status == "running" and _alive(self.state.pid)

    @property
    def restarting(self) -> bool:
        """True while its restart policy is about to start it again: conmon recorded an exit
        the policy restarts after, and its exit command has not taken over yet, or that
        command waits for the restart's delay."""
        st = self.state
        if st.status == "restarting":
            return _alive(st.pid)
        if st.status != "running" or self.restart_policy == "no" or _alive(st.pid):
            return False
        code = monitor_exit_code(self)
        return code is not None and restart_wanted(self, code) and _exit_age(self) < _EXIT_COMMAND_GRACE

    def status_text(self) -> str:
        """``Up 3 seconds`` / ``Exited (0) 5 seconds ago`` / ``Created``, as docker ps shows it."""
        st = self.state
        if self.running:
            h = self.health()
            shown = "" if h is None else (" (health: starting)" if h.status == "starting"
                                          else f" ({h.status})")
            return f"Up {_ago(st.started)}{shown}"
        if self.restarting:
            code = st.exit_code if st.status == "restarting" else monitor_exit_code(self)
            return f"Restarting ({code}) {_ago(st.finished or st.started)} ago"
        if st.status in ("running", "restarting"):
            code = monitor_exit_code(self)
            if code is not None:
                return f"Exited ({code}) {_ago(st.started)} ago"
            return "Dead (its supervising process is gone)"
        if st.status == "exited":
            return f"Exited ({st.exit_code}) {_ago(st.finished)} ago"
        return "Created"

    def health(self):
        """The health of a running container with a check (builder.containers.health.Health), else None."""
        if not self.healthcheck:
            return None
        from .health import status
        return status(self.dir / "health", self.healthcheck)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("root")
        d.pop("state")
        return d


# --- records ----------------------------------------------------------------------------------

def _now() -> str:
    """UTC now as ``2006-01-02T15:04:05.000000Z`` (from time, not datetime: an import less on
    every `run`)."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns // 1000 % 1_000_000:06d}Z"


def _parse_time(text: str) -> float:
    from datetime import datetime, timezone
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return time.time()


def _ago(text: str) -> str:
    s = max(0, int(time.time() - _parse_time(text)))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "Less than a second" if s < 1 else f"{s} second{'s' if s != 1 else ''}"


def monitor_exit_code(c: "Container") -> int | None:
    """The exit code conmon recorded for a container it ran, None if none (yet)."""
    if c.state.monitor != "conmon":
        return None
    try:
        return int((c.dir / "exits" / c.state.runtime_id).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _write_json(path: Path, doc: dict) -> None:
    """Replace ``path`` atomically (temp file + rename) so readers never see half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def containers_dir(root: Path) -> Path:
    """``<root>/containers``."""
    return Root(root).containers


def save_state(c: Container) -> None:
    """Write the container's state.json."""
    _write_json(c.dir / "state.json", asdict(c.state))


def _save_config(c: Container) -> None:
    _write_json(c.dir / "config.json", c.to_dict())


def load(root: Path, cid: str) -> Container:
    """Read the container with full id ``cid``."""
    d = containers_dir(root) / cid
    try:
        cfg = json.loads((d / "config.json").read_text())
        st = json.loads((d / "state.json").read_text())
    except FileNotFoundError:
        raise BuildError(f"no such container: {cid} (see `pybuild ps -a`)") from None
    c = Container(**cfg)
    c.root = Path(root)
    c.state = ContainerState(**st)
    return c


def list_containers(root: Path, all: bool = False) -> list[Container]:
    """Containers under ``root``, newest first; only the running ones unless ``all``."""
    out = []
    base = containers_dir(root)
    if not base.is_dir():
        return []
    for d in base.iterdir():
        if d.name == "names" or d.name.startswith(".") or not (d / "config.json").is_file():
            continue
        try:
            c = load(root, d.name)
        except (BuildError, ValueError, TypeError):
            continue            # half-created or being removed right now
        if all or c.running or c.restarting:
            out.append(c)
    out.sort(key=lambda c: c.created, reverse=True)
    return out


def lookup(root: Path, ref: str) -> Container:
    """A container by name, full id or unique id prefix."""
    base = containers_dir(root)
    name_file = base / "names" / ref
    if ref and "/" not in ref and name_file.is_file():
        return load(root, name_file.read_text().strip())
    if (base / ref / "config.json").is_file():
        return load(root, ref)
    hits = [d.name for d in base.iterdir() if d.name.startswith(ref) and len(ref) >= 1
            and d.name != "names"] if base.is_dir() and ref else []
    if len(hits) == 1:
        return load(root, hits[0])
    if len(hits) > 1:
        raise BuildError(f"container {ref!r} is ambiguous: {len(hits)} ids start with it; give more digits")
    raise BuildError(f"no such container: {ref} (see `pybuild ps -a`)")


def _reserve_name(root: Path, name: str, cid: str) -> None:
    names = containers_dir(root) / "names"
    names.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(names / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        other = (names / name).read_text().strip()
        raise BuildError(f"the container name {name!r} is already in use by container {other[:12]}: "
                         "remove it (`pybuild rm`) or choose another --name") from None
    with os.fdopen(fd, "w") as f:
        f.write(cid)


def _pick_name(root: Path, cid: str) -> str:
    rnd = random.Random(cid)
    for _ in range(50):
        name = f"{rnd.choice(_NAME_ADJECTIVES)}_{rnd.choice(_NAME_NOUNS)}"
        try:
            _reserve_name(root, name, cid)
            return name
        except BuildError:
            continue
    name = f"pybuild_{cid[:12]}"
    _reserve_name(root, name, cid)
    return name


# --- creating ---------------------------------------------------------------------------------

def ensure_image(store: Store, ref: str, pull: str = "missing",
                 insecure_registries: tuple[str, ...] = (), progress=None, platform=None) -> None:
    """Pull ``ref`` (its image for ``platform``, default this host's) into the store when it is
    missing (``pull="missing"``), always, or never."""
    if pull not in ("missing", "always", "never"):
        raise BuildError(f"--pull {pull}: use missing, always or never")
    local = ""
    if pull != "always":
        try:
            store.image_manifest(ref, platform)
            return
        except NotFoundError as exc:
            if pull == "never":
                raise BuildError(f"image {ref} is not in the store at {store.root} and --pull never "
                                 f"was given: pull, build or import it first ({exc})") from None
            if platform is not None:
                local = f"; locally: {exc}"      # tagged here, but not for that platform
    from registry.client import ClientOptions, RegistryClient
    from registry.transfer import pull as pull_image
    try:
        with RegistryClient(ClientOptions(insecure_registries=tuple(insecure_registries))) as client:
            pull_image(client, ref, store, progress=progress, platform=platform)
    except RegistryError as exc:
        raise BuildError(f"cannot pull image {ref}: {exc} (pull, build or import it first){local}") from None


def _merge_env(image_env: list[str], overrides: list[str]) -> list[str]:
    """Docker's rule: an override replaces the image's variable in place, new ones are appended."""
    env = list(image_env)
    for item in overrides:
        if "=" not in item:
            if item not in os.environ:
                continue            # `-e NAME` with NAME unset on the host: left out, as Docker does
            item = f"{item}={os.environ[item]}"
        key = item.partition("=")[0]
        if not key:
            raise BuildError(f"invalid environment variable {item!r}: use -e NAME=VALUE")
        for i, e in enumerate(env):
            if e.partition("=")[0] == key:
                env[i] = item
                break
        else:
            env.append(item)
    return env


def command_of(image_entrypoint: list[str] | None, image_cmd: list[str] | None,
               entrypoint: str | None, command: list[str]) -> tuple[list[str], list[str]]:
    """Docker's override rules: ``(entrypoint, cmd)`` of the container.

    ``--entrypoint`` replaces the image's Entrypoint and clears its Cmd ("" clears the
    entrypoint); a COMMAND replaces Cmd.
    """
    ep = list(image_entrypoint or [])
    cmd = list(image_cmd or [])
    if entrypoint is not None:
        ep = [entrypoint] if entrypoint else []
        cmd = []
    if command:
        cmd = list(command)
    return ep, cmd


def create(store: Store, root: Path, opts: RunOptions, progress=None) -> Container:
    """Make a container record for ``opts`` (pulling the image if needed); nothing runs yet."""
    root = Path(root)
    network = "default" if opts.network == "bridge" else opts.network   # docker's name for it
    if network not in NETWORKS:
        raise BuildError(f"--network {opts.network}: use one of {', '.join(NETWORKS)}")
    isolation = check_isolation(opts.isolation, containers=True)
    if not runtime_available():
        # Never a weaker sandbox instead: without runc nothing runs.
        raise BuildError("runc not found: containers run only under runc, which confines them "
                         "(install Debian's runc package)")
    volumes = [Volume.parse(v) for v in opts.volumes]
    ports = [list(parse_publish(p)) for p in opts.publish]
    if ports and network != "default":
        raise BuildError(f"-p needs the default (private) network, not --network {network}")
    from ..runtime import bridge
    backend = "bridge" if network == "default" and bridge.available() else "pasta"
    dns = [_check_address(d, f"--dns {d}") for d in opts.dns]
    extra_hosts = [_parse_add_host(h, backend) for h in opts.add_hosts]
    from .health import config_of
    if opts.init:
        init_binary()                  # refuse up front when no init is installed
    restart_policy, restart_max = parse_restart(opts.restart)
    if restart_policy != "no" and opts.auto_remove:
        raise BuildError("conflicting options: --restart and --rm (a container that is removed "
                         "when it exits cannot be restarted)")
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise BuildError(f"the working directory {opts.workdir!r} is invalid: it must be an absolute path")
    platform = None
    if opts.platform:
        from registry.platform import parse_platform
        from ..engine.emulation import check_emulation
        try:
            platform = parse_platform(opts.platform)
        except RegistryError as exc:
            raise BuildError(f"--platform {opts.platform}: {exc}") from None
        check_emulation(platform, f"--platform {opts.platform}")
    ensure_image(store, opts.image, opts.pull, opts.insecure_registries, progress, platform)
    desc, manifest = store.image_manifest(opts.image, platform)
    cfg = store.get_config(manifest.config.digest)
    if len(cfg.diff_ids) != len(manifest.layers):
        raise BuildError(f"image {opts.image}: its config lists {len(cfg.diff_ids)} layers but its "
                         f"manifest {len(manifest.layers)}; the image is corrupt (pull it again)")
    c_cfg = cfg.config
    ep, cmd = command_of(c_cfg.entrypoint, c_cfg.cmd, opts.entrypoint, opts.command)
    if not ep and not cmd:
        raise BuildError(f"no command specified: image {opts.image} has no Entrypoint or Cmd; "
                         "give one after the image name")
    dirs = LayerDirs(root)
    layer_paths = [dirs.ensure(d, lambda dg=l.digest: store.open_blob(dg))
                   for d, l in zip(cfg.diff_ids, manifest.layers)]
    user_spec = opts.user if opts.user is not None else c_cfg.user
    user = resolve_user(user_spec or "0", RootView(layer_paths))
    env = _merge_env(c_cfg.env or [], opts.env)
    cid = os.urandom(32).hex()
    cdir = containers_dir(root) / cid
    name = ""
    cdir.mkdir(parents=True)
    try:
        if opts.name:
            if not all(ch.isalnum() or ch in "_.-" for ch in opts.name) or not opts.name[0].isalnum():
                raise BuildError(f"invalid container name {opts.name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
            _reserve_name(root, opts.name, cid)
            name = opts.name
        else:
            name = _pick_name(root, cid)
        c = Container(
            id=cid, name=name, image=opts.image, image_digest=desc.digest,
            config_digest=manifest.config.digest, created=_now(), entrypoint=ep, cmd=cmd, env=env,
            workdir=opts.workdir or c_cfg.working_dir or "/", user=user_spec or "",
            uid=user.uid, gid=user.gid, additional_gids=user.additional_gids, home=user.home or "/",
            volumes=[asdict(v) for v in volumes], network=network, isolation=isolation,
            stop_signal=c_cfg.stop_signal or "SIGTERM",
            stop_timeout=DEFAULT_STOP_TIMEOUT if opts.stop_timeout is None else opts.stop_timeout,
            auto_remove=opts.auto_remove, diff_ids=list(cfg.diff_ids), ports=ports, tty=opts.tty,
            network_backend=backend, dns=dns, extra_hosts=extra_hosts,
            init=opts.init, anon_volumes=_anonymous_volumes(root, c_cfg.volumes, volumes),
            restart_policy=restart_policy, restart_max=restart_max,
            healthcheck=config_of(c_cfg.healthcheck, opts.health_cmd, opts.health_interval, opts.health_timeout,
                                  opts.health_retries, opts.health_start_period, opts.no_healthcheck),
            root=root)
        signal_number(c.stop_signal)     # refuse an image whose StopSignal this host lacks, up front
        store.add_root(f"container-{cid}", [desc.digest])
        _save_config(c)
        save_state(c)
    except BaseException:
        _release_name(root, name, cid)
        Store(root).remove_root(f"container-{cid}")
        shutil.rmtree(cdir, ignore_errors=True)
        raise
    return c


RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")


def parse_restart(text: str) -> tuple[str, int]:
    """``--restart`` as Docker takes it: (policy, at most this many restarts, 0 for no limit)."""
    name, colon, count = text.partition(":")
    if name not in RESTART_POLICIES or (colon and name != "on-failure"):
        raise BuildError(f"--restart {text!r}: use no, always, unless-stopped or on-failure[:MAX_RETRIES]")
    if not colon:
        return name, 0
    if not count.isdigit():
        raise BuildError(f"--restart {text!r}: the maximum retry count must be a whole number")
    return name, int(count)


def restart_wanted(c: Container, code: int) -> bool:
    """Whether the container's policy restarts it after it exited with ``code``: not once `stop`
    or `rm` asked it to end (as Docker: a stopped container stays stopped); ``unless-stopped``
    is ``always`` here, since pybuild has no daemon whose restart would tell them apart."""
    if c.restart_policy == "no" or (c.dir / "stopping").exists():
        return False
    if c.restart_policy == "on-failure":
        return code != 0 and (not c.restart_max or c.state.restart_count < c.restart_max)
    return True


def init_binary() -> str:
    """The host's static init for ``--init`` (Debian's tini-static, else catatonit)."""
    for path in INIT_BINARIES:
        if os.access(path, os.X_OK):
            return path
    raise BuildError("--init needs Debian's tini (tini-static) or catatonit: install one "
                     "(scripts/setup.sh does)")


def _anonymous_volumes(root: Path, image_volumes, given: list[Volume]) -> list[dict]:
    """A new volume directory under ``<root>/volumes`` for each VOLUME of the image that no
    ``-v`` covers (filled from the image when the container first starts)."""
    out = []
    taken = {v.target for v in given}
    for target in sorted(image_volumes or {}):
        target = posixpath.normpath("/" + target.lstrip("/"))
        if target == "/" or target in taken:
            continue
        vid = os.urandom(32).hex()
        (Root(root).volumes / vid / "_data").mkdir(parents=True, mode=0o755)
        out.append({"name": vid, "target": target})
        taken.add(target)
    return out


def _fill_volume(merged: Path, target: str, data: Path) -> None:
    """Copy what the image has at ``target`` into a new volume, as Docker does at first use.

    The source is opened inside the container's root (its links resolve there), and copied
    through that descriptor, so no link in the image leads the copy outside."""
    from registry.inroot import open_in_root
    marker = data.parent / "filled"
    if marker.exists():
        return
    with opened_root(merged) as root_fd:
        try:
            fd = open_in_root(root_fd, target, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            fd = -1                     # nothing (or not a directory) there: an empty volume
        if fd >= 0:
            try:
                st = os.fstat(fd)
                os.chown(data, st.st_uid, st.st_gid)
                os.chmod(data, stat.S_IMODE(st.st_mode))
                r = subprocess.run(["cp", "-a", "--no-dereference", f"/proc/self/fd/{fd}/.", str(data)],
                                   pass_fds=(fd,), capture_output=True, text=True)
                if r.returncode:
                    raise BuildError(f"cannot fill the volume for {target}: {r.stderr.strip()}")
            finally:
                os.close(fd)
    marker.touch()


def remove_volumes(c: Container) -> None:
    """Delete the container's anonymous volumes (``rm -v``, ``run --rm``)."""
    for v in c.anon_volumes:
        shutil.rmtree(Root(c.root).volumes / v["name"], ignore_errors=True)


def _check_address(text: str, what: str) -> str:
    import ipaddress
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise BuildError(f"{what}: {text!r} is not an IP address") from None


def _parse_add_host(spec: str, backend: str) -> list[str]:
    """``NAME:ADDRESS`` (or ``NAME=ADDRESS``; ``host-gateway`` is the host as the container sees
    it on the bridge) -> [name, address]."""
    sep = "=" if "=" in spec else ":"
    name, _, addr = spec.partition(sep)
    if not name or not addr or any(ch.isspace() for ch in name):
        raise BuildError(f"invalid --add-host {spec!r}: use NAME:ADDRESS")
    if addr == "host-gateway":
        if backend != "bridge":
            raise BuildError(f"--add-host {spec}: host-gateway needs the default network as root "
                             "(the bridge); give the address")
        from ..runtime.bridge import GATEWAY
        addr = GATEWAY
    return [name, _check_address(addr, f"--add-host {spec}")]


def signal_number(name: str) -> int:
    """``SIGTERM``/``TERM``/``15``/``RTMIN+2`` -> the signal number."""
    s = name.strip().upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    if s.startswith("SIGRTMIN") or s.startswith("SIGRTMAX"):
        base = signal.SIGRTMIN if s.startswith("SIGRTMIN") else signal.SIGRTMAX
        off = s[8:]
        return int(base) + (int(off) if off else 0)
    try:
        return int(getattr(signal.Signals, s))
    except AttributeError:
        raise BuildError(f"unknown stop signal {name!r}: use a name like SIGTERM or a number") from None


# --- running ----------------------------------------------------------------------------------

class _Log:
    """Appends output chunks to log.jsonl (bytes survive through surrogateescape)."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, stream: str, chunk: bytes) -> None:
        rec = {"stream": stream, "time": _now(), "log": chunk.decode("utf-8", "surrogateescape")}
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_logs(c: Container, follow: bool = False) -> Iterator[tuple[str, bytes]]:
    """The container's output as ``(stream, chunk)`` pairs; with ``follow``, until it exits.

    pybuild's own messages and a supervised container's output are in log.jsonl; what a
    conmon-run container writes is in conmon's ctr.log (read after log.jsonl)."""
    path = c.dir / "log.jsonl"
    conmon_log = c.dir / "ctr.log"
    f = None
    g = None
    pending = ""
    gpending = b""
    while True:
        if f is None:
            try:
                f = open(path, encoding="utf-8")
            except FileNotFoundError:
                pass
        if g is None:
            try:
                g = open(conmon_log, "rb")
            except FileNotFoundError:
                pass
        running = follow and _still_running(c)
        if f is not None:
            for line in f:
                pending += line
                if not pending.endswith("\n"):
                    break                    # a record being written right now
                rec = json.loads(pending)
                pending = ""
                yield rec["stream"], rec["log"].encode("utf-8", "surrogateescape")
        if g is not None:
            gpending += g.read()
            complete, sep, gpending = gpending.rpartition(b"\n")
            if sep:
                yield from _parse_conmon_log(complete + b"\n")
        if not running:
            break
        time.sleep(0.1)
    for h in (f, g):
        if h is not None:
            h.close()


def _read_state(c: Container) -> dict:
    """The state.json another process (the supervisor) writes; {} while it is absent or unreadable."""
    try:
        return json.loads((c.dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _still_running(c: Container) -> bool:
    st = _read_state(c)
    return st.get("status") == "running" and _alive(st.get("pid", 0))


def _make_workdir(merged: Path, path: str) -> None:
    """Create the working directory (root-owned, 0755) if the image lacks it, as Docker does.

    It is made through directory fds walked inside the container's root (the image's links,
    absolute or climbing, resolve inside it, as runc resolves the cwd), so neither a link nor a
    `..` in the image or in WorkingDir can lead the creation outside.
    """
    try:
        with opened_root(merged) as root_fd:
            os.close(makedirs_in_root(root_fd, path, 0o755))
    except NotADirectoryError:
        raise BuildError(f"cannot use {path} as the working directory: a component of it is not "
                         "a directory in the image") from None
    except OSError as exc:
        raise BuildError(f"cannot use {path} as the working directory: {exc.strerror}") from None


def _find_executable(view: RootView, argv0: str, env: list[str], cwd: str) -> int:
    """0 if ``argv0`` resolves to an executable file in the image, else Docker's 127/126."""
    path = DEFAULT_PATH
    for e in env:
        if e.startswith("PATH="):
            path = e[5:]
    candidates = ([posixpath.join(cwd, argv0)] if "/" in argv0
                  else [posixpath.join(d or ".", argv0) for d in path.split(":")])
    found_any = False
    for cand in candidates:
        s = view.stat(cand if cand.startswith("/") else posixpath.join(cwd, cand))
        if s is None or not stat.S_ISREG(s[1].st_mode):
            continue
        found_any = True
        if s[1].st_mode & 0o111:
            return 0
    return 126 if found_any else 127


def runtime_env(c: Container) -> list[str]:
    """The environment the process gets: HOSTNAME, the container's env, HOME if unset (Docker's order)."""
    env = [f"HOSTNAME={c.hostname}"] + [e for e in c.env if not e.startswith("HOSTNAME=")]
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=" + DEFAULT_PATH)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={c.home}")
    return env


def start(c: Container, output: Callable[[str, bytes], None] | None = None,
          forward_signals: bool = True, stdin: int | None = None) -> int:
    """Run the container to completion and return its exit code (Docker's 125/126/127 included).

    The writable layer is mounted over the image's layers; the output goes to ``output`` and to
    the container's log. When called from the main thread with ``forward_signals``, SIGINT and
    SIGQUIT are forwarded and SIGTERM/SIGHUP stop the container (see the module docstring).
    """
    if c.state.status != "created":
        raise BuildError(f"container {c.name} has already run (status {c.state.status}); "
                         "start a new one with `pybuild run`")
    root = c.root
    dirs = LayerDirs(root)
    view = RootView([dirs.path(d) for d in c.diff_ids])
    snap = mount_snapshot(root, c.diff_ids)
    c.snapshot = snap.base.name
    _save_config(c)
    try:
        os.symlink(f"../../snapshots/{c.snapshot}", c.dir / "fs")
    except FileExistsError:
        pass
    log = _Log(c.dir / "log.jsonl")

    def emit(stream: str, chunk: bytes) -> None:
        log(stream, chunk)
        if output is not None:
            output(stream, chunk)

    c.state = ContainerState(status="running", pid=os.getpid(), started=_now())
    save_state(c)
    rc: int | None = None
    guard = _SignalGuard(c) if forward_signals and threading.current_thread() is threading.main_thread() else None
    try:
        if guard:
            guard.install()
        rc = _exit_status(c, _prepare_and_run(c, snap, view, emit, stdin))
    except BuildError as exc:
        emit("stderr", f"pybuild: {exc}\n".encode())
        c.state.error = str(exc)
        rc = 125
    finally:
        if guard:
            guard.uninstall()
        log.close()
        _finish(c, snap, view, rc)
    return rc


def _prepare_and_run(c: Container, snap: Snapshot, view: RootView,
                     emit: Callable[[str, bytes], None], stdin: int | None = None) -> int:
    spec = _prepare_spec(c, snap, view, emit)
    if isinstance(spec, int):
        return spec
    return sandbox_run(spec, emit, isolation=c.isolation, state_dir=c.dir / "run", stdin=stdin)


def _prepare_spec(c: Container, snap: Snapshot, view: RootView,
                  emit: Callable[[str, bytes], None]) -> "RunSpec | int":
    """The sandbox spec of the container's first process, or Docker's 126/127 (reported)."""
    env = runtime_env(c)
    _make_workdir(snap.merged, c.workdir)
    missing = _find_executable(view, c.args[0], env, c.workdir)
    if missing:
        what = "executable file not found in $PATH" if missing == 127 else "permission denied"
        if missing == 127 and "/" in c.args[0]:
            what = "no such file or directory"
        emit("stderr", f"pybuild: exec: {c.args[0]!r}: {what}\n".encode())
        return missing
    mounts = []
    for v in c.volumes:
        if not os.path.exists(v["host"]):
            os.makedirs(v["host"], exist_ok=True)       # `docker run -v` creates a missing host dir
        mounts.append(Mount(v["target"], source=v["host"], readonly=v["readonly"]))
    for v in c.anon_volumes:
        data = Root(c.root).volumes / v["name"] / "_data"
        _fill_volume(snap.merged, v["target"], data)
        mounts.append(Mount(v["target"], source=str(data)))
    args = list(c.args)
    if c.init:
        mounts.append(Mount(INIT_PATH, source=init_binary(), readonly=True))
        args = [INIT_PATH, "--"] + args
    spec = RunSpec(args=args, rootfs=snap.merged, env=env, cwd=c.workdir, uid=c.uid, gid=c.gid,
                   additional_gids=c.additional_gids, mounts=mounts, network=c.network,
                   hostname=c.hostname, ports=[tuple(p) for p in c.ports], terminal=c.tty,
                   network_backend=c.network_backend, dns=list(c.dns),
                   extra_hosts=[(n, a) for n, a in c.extra_hosts])
    return spec


def _finish(c: Container, snap: Snapshot, view: RootView, rc: int | None) -> None:
    """Unmount, keep the upper dir as the container's layer, record the exit code."""
    from ..runtime.layers import prune_upper
    try:
        upper = snap.changes()
        # Mount points the sandbox made and removed leave copied-up, unchanged directories.
        prune_upper(upper, view)
    finally:
        shutil.rmtree(c.dir / "run", ignore_errors=True)
        c.state.status = "exited"
        c.state.exit_code = rc if rc is not None else 137
        c.state.finished = _now()
        save_state(c)


# --- signals ----------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def signal_container(supervisor_pid: int, sig: int) -> bool:
    """Send ``sig`` to the first process of the container supervised by ``supervisor_pid``.

    The supervisor's child is ``runc``, which forwards what it gets to the container's first
    process, even a signal that arrives while the container is still being set up, so it gets
    everything but SIGKILL; SIGKILL goes to runc's children (the container's first process).
    True if a process was signalled.
    """
    sent = False
    for rt in _children(supervisor_pid):
        comm = _comm(rt)
        if comm != "runc":
            continue
        targets = [rt] if sig != signal.SIGKILL else _children(rt)
        for pid in targets:
            try:
                os.kill(pid, sig)
                sent = True
            except ProcessLookupError:
                pass
    return sent


def kill_container(c: Container, supervisor_pid: int) -> bool:
    """SIGKILL the container's first process, noting that it was killed (see _exit_status)."""
    (c.dir / "killed").touch()
    if c.state.monitor == "conmon":
        return _runc_kill(c, signal.SIGKILL)
    return signal_container(supervisor_pid, signal.SIGKILL)


def _runc_kill(c: Container, sig: int) -> bool:
    """Signal the first process of a conmon-run container through runc (its state knows it)."""
    return subprocess.run([*runc_argv(), "kill", c.state.runtime_id, str(int(sig))],
                          capture_output=True).returncode == 0


def _exit_status(c: Container, rc: int) -> int:
    """The container's exit code (runc already reports a signalled process as 128+N)."""
    return rc


class _SignalGuard:
    """Signal handling of the supervising process (see the module docstring).

    A signal that arrives before the runtime has started is delivered as soon as it has.
    """

    def __init__(self, c: Container):
        self.c = c
        self.saved: dict[int, object] = {}
        self.timer: threading.Timer | None = None
        self.stops = 0
        self.done = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
            self.saved[sig] = signal.signal(sig, self._handle)
        if self.c.tty:
            # runc resizes the container's pty to its stdin's size on SIGWINCH; it runs in a
            # session of its own, so the terminal's SIGWINCH reaches only us.
            self.saved[signal.SIGWINCH] = signal.signal(
                signal.SIGWINCH, lambda *_: signal_container(os.getpid(), signal.SIGWINCH))

    def uninstall(self) -> None:
        self.done.set()
        if self.timer is not None:
            self.timer.cancel()
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _deliver(self, sig: int) -> None:
        if signal_container(os.getpid(), sig):
            return

        def retry() -> None:
            while not self.done.wait(0.05):
                if signal_container(os.getpid(), sig):
                    return
        threading.Thread(target=retry, daemon=True).start()

    def _kill(self) -> None:
        (self.c.dir / "killed").touch()
        self._deliver(signal.SIGKILL)

    def _handle(self, signum: int, _frame) -> None:
        if signum in (signal.SIGINT, signal.SIGQUIT):
            self.stops += 1
            if self.stops >= 3:               # a third Ctrl-C means: really, now
                self._kill()
            else:
                self._deliver(signum)
            return
        if self.timer is None:
            self._deliver(signal_number(self.c.stop_signal))
            self.timer = threading.Timer(self.c.stop_timeout, self._kill)
            self.timer.daemon = True
            self.timer.start()
        else:
            self._kill()


def stop(c: Container, timeout: int | None = None, sig: str | None = None) -> bool:
    """Stop a running container: its StopSignal (or ``sig``), then SIGKILL after ``timeout`` s.

    Returns False if it was not running. Waits until the supervisor has recorded the exit.
    A stopped container stays stopped, whatever its restart policy.
    """
    if c.state.monitor == "conmon":
        (c.dir / "stopping").touch()                # before the signal: no restart after this exit
        c.state = ContainerState(**(_read_state(c) or asdict(c.state)))
        if c.state.status == "restarting":
            _end_restarting(c)
    if not c.running:
        if c.state.monitor == "conmon" and c.state.status == "running":
            finish_monitored(c)          # exited (or its conmon died): record and clean up
        return False
    timeout = c.stop_timeout if timeout is None else timeout
    if c.state.monitor == "conmon":
        _runc_kill(c, signal_number(sig or c.stop_signal))
        if not _wait_monitored(c, timeout):
            kill_container(c, c.state.pid)
            _wait_monitored(c, 30)
        finish_monitored(c)
        return True
    signal_container(c.state.pid, signal_number(sig or c.stop_signal))
    if not _wait_exit(c, timeout):
        kill_container(c, c.state.pid)
        _wait_exit(c, 30)
    return True


def _wait_exit(c: Container, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _read_state(c)
        if st.get("status") == "exited" or not _alive(c.state.pid):
            c.state = ContainerState(**st) if st else c.state
            return True
        time.sleep(0.05)
    return False


# --- detached containers ------------------------------------------------------------------------

def conmon_available() -> bool:
    return shutil.which("conmon") is not None


def start_detached(c: Container, timeout: float = 30.0) -> None:
    """Start ``c`` so that it outlives the caller (``run -d``): under conmon when it is
    installed (:func:`start_monitored`: no Python process stays), else under a forked Python
    supervisor (below).

    The supervisor is a fork of this process (no second interpreter start-up), forked twice so
    that it belongs to init and never lingers as the caller's zombie, in its own session with
    /dev/null as stdio: it runs the container, writes its log and state, and removes it
    afterwards if it was created with ``auto_remove``. Returns once the container is running
    (or already finished).
    """
    if conmon_available():
        start_monitored(c)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        rc = 125
        try:
            os.close(r)
            os.setsid()
            pid = os.fork()
            if pid:
                os.write(w, str(pid).encode())
                rc = 0
            else:
                os.close(w)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                rc = supervise(c)
        finally:
            os._exit(rc)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(first, 0)
    if not text.isdigit():
        raise BuildError(f"could not fork the supervisor of container {c.id[:12]}")
    pid = int(text)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _read_state(c)
        if st.get("status") in ("running", "exited"):
            c.state = ContainerState(**st)
            return
        if not _alive(pid):
            raise BuildError(f"the supervisor of container {c.id[:12]} died before starting it")
        time.sleep(0.02)
    raise BuildError(f"container {c.id[:12]} did not start within {timeout:.0f} s")


def supervise(c: Container) -> int:
    """Run the container with its output going to the log only; remove it if asked."""
    rc = start(c)
    if c.auto_remove:
        remove(c)
    return rc


# --- detached containers under conmon -----------------------------------------------------------
#
# As podman runs them: `pybuild run -d` mounts the container's filesystem and prepares the
# bundle (stubs, /etc files, the private network with pasta, config.json with the confinement
# of every container), then starts conmon, which daemonizes, runs `runc create` (runc's
# console/stdio are conmon's), reports the container's pid on a sync pipe, and holds its
# output (a k8s-file log, ctr.log) and, when it exits, its exit code (exits/<runtime id>).
# pybuild then runs `runc start` and exits: per container only conmon (~2 MB) is left beside
# the container's own processes. When the container exits, conmon runs its exit command,
# `pybuild container-cleanup ID` (:func:`finish_monitored`), which records the exit code,
# deletes runc's container, releases the network and stubs, unmounts the overlay and removes
# the container if it was run with --rm. `stop`, `wait`, `rm`, `ps` finish the job themselves
# (under a lock) if that exit command has not run yet, or if conmon was killed. A container
# whose --restart policy wants it again is restarted by that exit command alone: it releases
# the runtime, keeps the overlay, waits the delay and launches a new conmon (:func:`_restart`).

# What conmon and its exit command (`pybuild container-cleanup`) need from our environment: where
# programs are (runc, umount, nft, ip), where runc keeps its state when not root
# (XDG_RUNTIME_DIR: every runc call must agree), how this interpreter finds this package and
# caches its byte code, and the pybuild settings that name state the cleanup must find again.
# Nothing else: conmon holds its environment for the container's whole life, and ours may carry
# registry or signing passwords (PYBUILD_REGISTRY_*_PASSWORD, COSIGN_PASSWORD) and whatever
# `-e K` read.
_CONMON_ENV_KEEP = ("PATH", "HOME", "TMPDIR", "XDG_RUNTIME_DIR",
                    "PYTHONHOME", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE",
                    "PYBUILD_BRIDGE_STATE", "PYBUILD_CONTAINER_NETWORK", "PYBUILD_SECCOMP_PROFILE")


def _conmon_env() -> dict[str, str]:
    """conmon's environment, which its exit command inherits: the few variables of
    ``_CONMON_ENV_KEEP`` that are set, and PYTHONPATH making this very package importable."""
    env = {k: os.environ[k] for k in _CONMON_ENV_KEEP if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    paths = [str(Path(__file__).resolve().parents[2])] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env


def start_monitored(c: Container) -> None:
    """Start ``c`` under conmon (see above); returns once it runs (or has already exited)."""
    if c.state.status != "created":
        raise BuildError(f"container {c.name} has already run (status {c.state.status}); "
                         "start a new one with `pybuild run`")
    root = c.root
    view = RootView([LayerDirs(root).path(d) for d in c.diff_ids])
    snap = mount_snapshot(root, c.diff_ids)
    c.snapshot = snap.base.name
    _save_config(c)
    try:
        os.symlink(f"../../snapshots/{c.snapshot}", c.dir / "fs")
    except FileExistsError:
        pass
    if snap.kind != "overlay":
        # A copied tree's changes are found by comparing with what this process saw: only a
        # supervisor that stays can do that.
        snap.cleanup()
        raise BuildError("the kernel refused the overlay mount: detached containers need overlayfs")
    c.state = ContainerState(status="running", pid=os.getpid(), started=_now())
    save_state(c)
    _launch_monitored(c, snap, view)


def _launch_monitored(c: Container, snap: Snapshot, view: RootView) -> None:
    """Prepare the bundle of ``c`` on its mounted snapshot, start conmon and the container (and
    its health loop); on failure record exit 125 and release everything (then raise)."""
    root = c.root
    log = _Log(c.dir / "log.jsonl")
    restarts = c.state.restart_count, c.state.restart_delay
    bundle: Path | None = None
    try:
        spec = _prepare_spec(c, snap, view, log)
        if isinstance(spec, int):
            log.close()
            _finish(c, snap, view, spec)
            if c.auto_remove:
                remove(c)
            return
        bundle = create_bundle(spec, c.dir / "run", isolation=c.isolation)
        rid = "pybuild-" + c.id[:32]
        (c.dir / "exits").mkdir(exist_ok=True)
        (c.dir / "sock").mkdir(exist_ok=True)
        r, w = os.pipe()
        env = _conmon_env()
        env["_OCI_SYNCPIPE"] = str(w)
        exit_args = ["-m", "builder", "--root", str(root), "container-cleanup", c.id]
        cmd = ["conmon", "--api-version", "1", "-c", rid, "-u", rid, "-n", c.name,
               "-r", shutil.which("runc") or "runc", "-b", str(bundle),
               *[a for x in runc_argv()[1:] for a in ("--runtime-arg", x)],
               "-p", str(bundle / "pidfile"), "-P", str(c.dir / "conmon.pid"),
               "-l", f"k8s-file:{c.dir / 'ctr.log'}", "--exit-dir", str(c.dir / "exits"),
               "-0", str(c.dir), "--socket-dir-path", str(c.dir / "sock"), "--log-level", "error",
               "--exit-command", sys.executable] + [a for x in exit_args for a in ("--exit-command-arg", x)]
        if c.tty:
            cmd.append("-t")
        # conmon daemonizes: its stdio must not be pipes we wait on (the daemon keeps them).
        errf = tempfile.TemporaryFile()
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                                  env=env, pass_fds=(w,), start_new_session=True, timeout=60)
        finally:
            os.close(w)
        errf.seek(0)
        proc.stderr = errf.read()
        errf.close()
        # conmon writes {"data": PID} once `runc create` is done and keeps the pipe open
        # until the container starts: read that one line, not to EOF.
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                buf += chunk
        finally:
            os.close(r)
        reply = buf.decode(errors="replace")
        try:
            msg = json.loads(reply.splitlines()[0]) if reply.strip() else {}
        except ValueError:
            msg = {}
        if proc.returncode != 0 or int(msg.get("data", -1)) <= 0:
            detail = msg.get("message") or proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
            raise BuildError(f"conmon could not create the container: {detail}")
        try:
            monitor = int((c.dir / "conmon.pid").read_text().strip())
        except (OSError, ValueError):
            raise BuildError("conmon started the container but wrote no pid file") from None
        c.state = ContainerState(status="running", pid=monitor, started=_now(), monitor="conmon",
                                 runtime_id=rid, bundle=str(bundle), restart_count=restarts[0],
                                 restart_delay=restarts[1])
        save_state(c)
        r2 = subprocess.run([*runc_argv(), "start", rid], capture_output=True, text=True)
        if r2.returncode != 0:
            _runc_kill(c, signal.SIGKILL)
            raise BuildError(f"runc could not start the container: {r2.stderr.strip()}")
        if c.healthcheck:
            from .health import start_loop
            start_loop(c.dir / "health", rid, exec_process(bundle, c.healthcheck["test"]), c.healthcheck,
                       env={k: v for k, v in env.items() if not k.startswith("_OCI_")})
        log.close()
    except BaseException as exc:
        if isinstance(exc, BuildError):
            log("stderr", f"pybuild: {exc}\n".encode())
            c.state.error = str(exc)
        log.close()
        if c.state.runtime_id:
            subprocess.run([*runc_argv(), "delete", "--force", c.state.runtime_id], capture_output=True)
        if bundle is not None:
            release_bundle(bundle)
        _finish(c, snap, view, 125)
        raise


def _wait_monitored(c: Container, timeout: float) -> bool:
    """Wait until conmon recorded the exit (or died); True if it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if monitor_exit_code(c) is not None or not _alive(c.state.pid) or _read_state(c).get("status") == "exited":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class _Lock:
    def __init__(self, path: Path):
        import fcntl
        self.fcntl = fcntl
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self):
        self.fcntl.flock(self.fd, self.fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


# How long a container may sit exited with its exit code recorded, waiting for conmon's exit
# command to restart it, before another caller (`wait`, `ps`...) takes the exit as final.
_EXIT_COMMAND_GRACE = 60.0


def finish_monitored(c: Container, auto_remove: bool = True, exit_command: bool = False) -> None:
    """Record the exit of a conmon-run container and release what it held (idempotent: the
    exit command, `stop`, `wait` and `rm` may all get here). A container still running when
    its conmon is gone (conmon was killed) is killed first.

    A container whose restart policy wants it again (:func:`restart_wanted`) is restarted by
    conmon's exit command only (``exit_command``; the others leave it to that one)."""
    try:
        lock = _Lock(c.dir / "cleanup.lock")
    except FileNotFoundError:
        return                                      # removed meanwhile
    restart = False
    with lock:
        st = _read_state(c)
        if not st or st.get("status") != "running" or st.get("monitor") != "conmon":
            if st:
                c.state = ContainerState(**st)
            return
        c.state = ContainerState(**st)
        if _alive(c.state.pid) and monitor_exit_code(c) is None:
            return                                  # still running
        code = monitor_exit_code(c)
        restart = code is not None and restart_wanted(c, code)
        if restart and not exit_command and _exit_age(c) < _EXIT_COMMAND_GRACE:
            return                                  # the exit command restarts it
        if c.healthcheck:
            from .health import stop_loop
            stop_loop(c.dir / "health")
        subprocess.run([*runc_argv(), "delete", "--force", c.state.runtime_id], capture_output=True)
        if c.state.bundle:
            release_bundle(Path(c.state.bundle))
        release_networks(c.dir / "run")
        if restart and exit_command:
            _await_restart(c, code)
        else:
            restart = False
            _finish_recorded(c, code if code is not None else 137)
    if restart:
        _restart(c)
    elif auto_remove and c.auto_remove:
        remove(c)


def _exit_age(c: Container) -> float:
    try:
        return time.time() - (c.dir / "exits" / c.state.runtime_id).stat().st_mtime
    except OSError:
        return 0.0


def _await_restart(c: Container, code: int) -> None:
    """Record that ``c`` exited with ``code`` and is to be restarted by this process after
    Docker's delay: 100 ms, doubled at each restart, at most a minute, back to 100 ms once a run
    lasted 10 s."""
    ran = time.time() - _parse_time(c.state.started)
    delay = 0.1 if ran >= 10 or not c.state.restart_delay else min(c.state.restart_delay * 2, 60.0)
    (c.dir / "exits" / c.state.runtime_id).unlink(missing_ok=True)
    c.state = ContainerState(status="restarting", pid=os.getpid(), exit_code=code, started=c.state.started,
                             finished=_now(), monitor="conmon", runtime_id=c.state.runtime_id,
                             restart_count=c.state.restart_count + 1, restart_delay=delay)
    save_state(c)


def _restart(c: Container) -> None:
    """Start ``c`` again on its own writable layer (still mounted) after its delay, unless
    `stop` or `rm` asked it to end meanwhile (they wait for this process to record that)."""
    deadline = time.monotonic() + c.state.restart_delay
    while time.monotonic() < deadline and not (c.dir / "stopping").exists():
        time.sleep(0.05)
    try:
        lock = _Lock(c.dir / "cleanup.lock")
    except FileNotFoundError:
        return
    with lock:
        st = _read_state(c)
        if st.get("status") != "restarting" or st.get("pid") != os.getpid():
            return
        c.state = ContainerState(**st)
        if (c.dir / "stopping").exists():
            _finish_recorded(c, c.state.exit_code if c.state.exit_code is not None else 137)
            return
        if c.healthcheck:
            for name in ("results", "output"):      # a new run starts healthy-less, as Docker's
                (c.dir / "health" / name).unlink(missing_ok=True)
        snap_base = Root(c.root).snapshots / c.snapshot
        snap = Snapshot(merged=snap_base / "merged", upper=snap_base / "upper", work=snap_base / "work",
                        base=snap_base, mounted=_is_mounted(snap_base / "merged"))
        view = RootView([LayerDirs(c.root).path(d) for d in c.diff_ids])
        try:
            _launch_monitored(c, snap, view)
        except BuildError:
            pass                                    # recorded: exited (125) with the error


def _end_restarting(c: Container, timeout: float = 30) -> None:
    """Ask a container waiting to be restarted to stay stopped, and wait until its restarting
    process has recorded the exit (or started it again just before: then it is running)."""
    (c.dir / "stopping").touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _read_state(c)
        if st.get("status") != "restarting" or not _alive(st.get("pid", 0)):
            break
        time.sleep(0.05)
    st = _read_state(c)
    if st:
        c.state = ContainerState(**st)
    if c.state.status == "restarting":              # its restarting process died
        _finish_recorded(c, c.state.exit_code if c.state.exit_code is not None else 137)


def _finish_recorded(c: Container, code: int) -> None:
    """:func:`_finish` from another process than the one that mounted the snapshot."""
    snap_base = Root(c.root).snapshots / c.snapshot
    snap = Snapshot(merged=snap_base / "merged", upper=snap_base / "upper", work=snap_base / "work",
                    base=snap_base, mounted=_is_mounted(snap_base / "merged"))
    view = RootView([LayerDirs(c.root).path(d) for d in c.diff_ids])
    _finish(c, snap, view, code)


def wait(c: Container, poll: float = 0.1) -> int:
    """Block until the container exits; its exit code."""
    while True:
        st = _read_state(c)
        if not st:
            raise BuildError(f"container {c.name} was removed")
        c.state = ContainerState(**st)
        if c.state.status == "exited":
            return c.state.exit_code if c.state.exit_code is not None else -1
        if c.state.status == "created":
            raise BuildError(f"container {c.name} has not been started")
        if c.state.monitor == "conmon":
            if _wait_monitored(c, 3600):
                finish_monitored(c, auto_remove=False)
                st = _read_state(c)
                if st.get("status") == "exited":
                    return st.get("exit_code", -1)
        elif not _alive(c.state.pid):
            return 137                          # its supervisor died: no exit code was recorded
        time.sleep(poll)


def exec_in(c: Container, args: list[str], env: list[str] | None = None, user: str | None = None,
            workdir: str | None = None, interactive: bool = False, tty: bool = False) -> int:
    """Run ``args`` in the running container (``runc exec`` with the container's own process
    spec: the same capabilities, no_new_privileges and seccomp profile); its exit code. The
    output goes to our stdout/stderr; stdin is forwarded with ``interactive``; ``tty`` gives it
    a pty on our terminal."""
    if not c.running:
        raise BuildError(f"container {c.name} is not running")
    rid, bundle = _runtime_of(c)
    uid = gid = None
    groups: list[int] = []
    if user is not None:
        merged = Root(c.root).snapshots / c.snapshot / "merged"
        u = resolve_user(user, RootView([merged]))
        uid, gid, groups = u.uid, u.gid, u.additional_gids
    proc = exec_process(bundle, args, env=_merge_env([], env or []), cwd=workdir, uid=uid, gid=gid,
                        additional_gids=groups, terminal=tty)
    spec_file = bundle.parent / f".exec-{os.getpid()}-{os.urandom(4).hex()}.json"
    spec_file.write_text(json.dumps(proc))
    try:
        cmd = [*runc_argv(), "exec", "--process", str(spec_file)] + (["--tty"] if tty else []) + [rid]
        p = subprocess.Popen(cmd, stdin=None if (interactive or tty) else subprocess.DEVNULL)
        old = {s: signal.signal(s, lambda n, _f: p.send_signal(n))
               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
        try:
            rc = p.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return 128 - rc if rc < 0 else rc
    finally:
        spec_file.unlink(missing_ok=True)


def _runtime_of(c: Container) -> tuple[str, Path]:
    """runc's id and bundle of the running container (conmon-run, or a foreground/supervised one)."""
    if c.state.monitor == "conmon":
        return c.state.runtime_id, Path(c.state.bundle)
    r = subprocess.run([*runc_argv(), "list", "--format", "json"], capture_output=True, text=True)
    prefix = str(c.dir / "run") + os.sep
    for e in json.loads(r.stdout or "null") or []:
        if str(e.get("bundle", "")).startswith(prefix) and e.get("status") == "running":
            return e["id"], Path(e["bundle"])
    raise BuildError(f"container {c.name} has no running runtime container yet")


def find_exact(root: Path, ref: str) -> Container | None:
    """The container named ``ref``, or with that id or an id prefix of 12+ digits; else None
    (``inspect`` tries containers before images, without mistaking an image name for an id)."""
    base = containers_dir(root)
    if not ref or "/" in ref or ":" in ref or not base.is_dir():
        return None
    if (base / "names" / ref).is_file() or (base / ref / "config.json").is_file():
        return lookup(root, ref)
    if len(ref) >= 12 and all(ch in "0123456789abcdef" for ch in ref):
        try:
            return lookup(root, ref)
        except BuildError:
            return None
    return None


def inspect_doc(c: Container) -> dict:
    """What ``pybuild inspect CONTAINER`` prints (the fields of ``docker inspect`` pybuild has)."""
    from datetime import datetime, timezone
    running = c.running
    st = c.state
    h = c.health() if running else None
    restarting = c.restarting
    state = {"Status": ("running" if running else "restarting" if restarting
                        else "exited" if st.status != "created" else "created"),
             "Running": running, "Restarting": restarting, "Pid": st.pid if running else 0,
             "ExitCode": st.exit_code if st.exit_code is not None else (monitor_exit_code(c) or 0),
             "StartedAt": st.started, "FinishedAt": st.finished, "Error": st.error}
    if h is not None:
        state["Health"] = {"Status": h.status, "FailingStreak": h.failing_streak,
                           "Log": [{"End": datetime.fromtimestamp(e["End"], timezone.utc).isoformat(),
                                    "ExitCode": e["ExitCode"]} for e in h.log],
                           "Output": h.output}
    ports: dict[str, list] = {}
    for ip, hp, cp, proto in published(c):
        ports.setdefault(f"{cp}/{proto}", []).append({"HostIp": ip or "0.0.0.0", "HostPort": str(hp)})
    return {
        "Id": c.id, "Name": c.name, "Created": c.created, "Image": c.config_digest, "ImageName": c.image,
        "Path": c.args[0] if c.args else "", "Args": c.args[1:], "State": state,
        "RestartCount": st.restart_count,
        "Config": {"Hostname": c.hostname, "User": c.user, "Env": c.env, "Entrypoint": c.entrypoint,
                   "Cmd": c.cmd, "WorkingDir": c.workdir, "StopSignal": c.stop_signal, "Tty": c.tty,
                   **({"Healthcheck": {"Test": c.healthcheck["test"], "Interval": c.healthcheck["interval"],
                                       "Timeout": c.healthcheck["timeout"], "Retries": c.healthcheck["retries"],
                                       "StartPeriod": c.healthcheck["start_period"]}}
                      if c.healthcheck else {})},
        "Mounts": [{"Type": "bind", "Source": v["host"], "Destination": v["target"], "RW": not v["readonly"]}
                   for v in c.volumes] + [
                  {"Type": "volume", "Name": v["name"], "Source": str(Root(c.root).volumes / v["name"] / "_data"),
                   "Destination": v["target"], "RW": True} for v in c.anon_volumes],
        "HostConfig": {"NetworkMode": c.network, "AutoRemove": c.auto_remove, "Init": c.init,
                       "RestartPolicy": {"Name": c.restart_policy, "MaximumRetryCount": c.restart_max},
                       "Dns": c.dns, "ExtraHosts": [f"{n}:{a}" for n, a in c.extra_hosts]},
        "NetworkSettings": {"Backend": c.network_backend if c.network == "default" else c.network,
                            "Ports": ports},
    }


def published(c: Container) -> list[list]:
    """The running container's published ports: [host ip, host port, container port, proto]."""
    from ..runtime.sandbox import published_ports
    if not c.running:
        return []
    return published_ports(c.dir / "run")


def _parse_conmon_log(data: bytes) -> Iterator[tuple[str, bytes]]:
    """conmon's k8s-file log: ``TIME STREAM P|F TEXT`` per line; P marks a partial line."""
    for line in data.split(b"\n"):
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            continue
        text = parts[3] if len(parts) == 4 else b""
        yield parts[1].decode(), text + (b"\n" if parts[2] == b"F" else b"")

# --- removing ---------------------------------------------------------------------------------

def _is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    return any(line.split()[4] == target for line in text.splitlines() if len(line.split()) > 4)


def _release_name(root: Path, name: str, cid: str) -> None:
    if not name:
        return
    f = containers_dir(root) / "names" / name
    try:
        if f.read_text().strip() == cid:
            f.unlink()
    except FileNotFoundError:
        pass


def _kill_orphans(c: Container) -> None:
    """Kill and delete runc containers whose bundle is this container's (supervisor gone)."""
    if not runtime_available():
        return
    r = subprocess.run([*runc_argv(), "list", "--format", "json"], capture_output=True, text=True)
    try:
        entries = json.loads(r.stdout or "null") or []
    except ValueError:
        return
    prefix = str(c.dir / "run") + os.sep
    for e in entries:
        if str(e.get("bundle", "")).startswith(prefix):
            subprocess.run([*runc_argv(), "kill", e["id"], "KILL"], capture_output=True)
            # A loaded machine can still be reaping the init process when delete runs, and
            # runc then refuses; retry until runc no longer knows the container.
            deadline = time.monotonic() + 10
            while subprocess.run([*runc_argv(), "delete", "--force", e["id"]], capture_output=True).returncode:
                if subprocess.run([*runc_argv(), "state", e["id"]], capture_output=True).returncode:
                    break                                    # gone after all
                if time.monotonic() > deadline:
                    raise BuildError(f"container {c.name}: runc could not delete {e['id']}; "
                                     f"try `runc delete --force {e['id']}`")
                time.sleep(0.1)


def dead_containers(root: Path) -> list[Container]:
    """Containers recorded as running whose supervising process (pybuild in the foreground, or
    conmon) is gone without cleaning up: their runc container and network may be left."""
    return [c for c in list_containers(root, all=True)
            if c.state.status in ("running", "restarting") and not c.running and not _alive(c.state.pid)
            and c.state.pid != os.getpid()]


def reap(c: Container) -> None:
    """Release what a dead container holds (its runc container, network, stubs, mount) and
    record it as exited; the record itself stays until `rm`."""
    if c.state.status == "restarting":
        _end_restarting(c)
        return
    if c.state.monitor == "conmon":
        finish_monitored(c, auto_remove=False)
        return
    _kill_orphans(c)
    release_networks(c.dir / "run")
    if c.snapshot:
        c.state.error = "its supervising process died"
        _finish_recorded(c, 137)


def remove(c: Container, force: bool = False, volumes: bool = False) -> None:
    """Delete the container: its writable layer, logs and record (``force`` kills it first);
    its anonymous volumes too with ``volumes`` or when it was run with ``--rm``, as Docker does."""
    if c.restarting and not force:
        raise BuildError(f"container {c.name} is restarting: stop it (`pybuild stop {c.name}`) "
                         "or use `pybuild rm -f`")
    if c.state.monitor == "conmon" and c.state.status in ("running", "restarting") and force:
        (c.dir / "stopping").touch()
        if c.state.status == "restarting":
            _end_restarting(c)
    if c.running:
        if not force:
            raise BuildError(f"container {c.name} is running: stop it (`pybuild stop {c.name}`) "
                             "or use `pybuild rm -f`")
        kill_container(c, c.state.pid)
        if c.state.monitor == "conmon":
            _wait_monitored(c, 30)
        else:
            _wait_exit(c, 30)
    if c.state.monitor == "conmon" and c.state.status == "running":
        finish_monitored(c, auto_remove=False)     # also when its conmon was killed
    if c.state.status == "running":
        _kill_orphans(c)          # its supervisor died; runc may still run the container
        release_networks(c.dir / "run")     # and its pasta and network namespace are left
    if c.snapshot:
        merged = Root(c.root).snapshots / c.snapshot / "merged"
        if _is_mounted(merged):
            subprocess.run(["umount", "-l", str(merged)], capture_output=True)
        shutil.rmtree(Root(c.root).snapshots / c.snapshot, ignore_errors=True)
    if volumes or c.auto_remove:
        remove_volumes(c)
    Store(c.root).remove_root(f"container-{c.id}")
    _release_name(c.root, c.name, c.id)
    # Rename first so that `ps` never reads a half-deleted record.
    trash = containers_dir(c.root) / f".rm-{c.id}"
    try:
        os.rename(c.dir, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# --- diff and commit --------------------------------------------------------------------------

def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def diff(c: Container) -> list[tuple[str, str]]:
    """What the container changed, as ``docker diff`` shows it: ``("A"|"C"|"D", path)``, sorted."""
    if c.upper is None or not c.upper.is_dir():
        return []
    view = RootView([LayerDirs(c.root).path(d) for d in c.diff_ids])
    out: list[tuple[str, str]] = []
    upper = str(c.upper)
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in sorted(dirnames + filenames):
            host = os.path.join(dirpath, name)
            path = "/" + os.path.relpath(host, upper)
            st = os.lstat(host)
            below = view.stat(path, follow=False)
            if _is_whiteout(st):
                if below is not None:
                    out.append(("D", path))
                continue
            out.append(("C" if below is not None else "A", path))
            if stat.S_ISDIR(st.st_mode) and below is not None and stat.S_ISDIR(below[1].st_mode):
                if is_opaque(host):   # everything the image had below is gone
                    kept = set(os.listdir(host))
                    out += [("D", posixpath.join(path, n)) for n in view.listdir(path) if n not in kept]
    if c.running:
        out = _hide_mount_points(c, view, out)
    return sorted(out, key=lambda x: x[1])


def _hide_mount_points(c: Container, view: RootView, changes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Leave out what the runtime put there for a running container (its mount points and the
    directories copied up or made only to hold them), as ``docker diff`` does; on exit the
    sandbox removes them and the upper directory is pruned, so they never reach a commit."""
    mounts = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/proc", "/sys", "/dev"] + [
        v["target"] for v in c.volumes + c.anon_volumes] + ([INIT_PATH] if c.init else [])

    def under(path: str, top: str) -> bool:
        return path == top or path.startswith(top.rstrip("/") + "/")

    kept = [(k, p) for k, p in changes if not any(under(p, m) for m in mounts)]
    paths = {p for _, p in kept}
    out = []
    upper = c.upper
    for kind, path in kept:
        holds_mount = any(under(m, path) and m != path for m in mounts)
        has_change_below = any(under(q, path) and q != path for q in paths)
        if holds_mount and not has_change_below and upper is not None:
            st = os.lstat(upper / path.lstrip("/"))
            low = view.stat(path, follow=False)
            if kind == "A" or (low is not None and (st.st_mode, st.st_uid, st.st_gid) ==
                               (low[1].st_mode, low[1].st_uid, low[1].st_gid)):
                continue
        out.append((kind, path))
    return out


def commit(store: Store, c: Container, name: str, message: str = "", author: str = "",
           changes: list[str] | None = None) -> Descriptor:
    """Make image ``name`` from the container: its writable layer on top of its image.

    The config is the container's (Entrypoint, Cmd, Env, WorkingDir, User, as ``docker commit``
    records them) with ``changes`` (Dockerfile instructions: CMD, ENV, ...) applied; a history
    entry names the command. Deletions become whiteouts. Returns the manifest descriptor.
    A running container is refused: its upper directory still holds the runtime's mount points
    (/etc/hosts...) and is changing.
    """
    import shlex
    from registry import mediatypes as mt
    from registry.compression import Compression
    from ..engine.changes import apply_changes
    from registry.layer import store_layer, write_overlay_upper_tar
    from registry.reference import parse_reference

    if c.running:
        raise BuildError(f"container {c.name} is running: stop it first (`pybuild stop {c.name}`), "
                         "then commit")
    ref = parse_reference(name)
    manifest = store.get_manifest(c.image_digest)
    if not isinstance(manifest, Manifest):
        raise BuildError(f"container {c.name}: its image {c.image_digest} is not an image manifest")
    cfg = store.get_config(c.config_digest)
    docker = manifest.media_type == mt.DOCKER_MANIFEST
    cc = cfg.config
    cc.entrypoint = list(c.entrypoint) if c.entrypoint else None
    cc.cmd = list(c.cmd) if c.cmd else None
    cc.env = list(c.env)
    cc.working_dir = c.workdir
    cc.user = c.user
    if changes:
        try:
            cfg = apply_changes(cfg, changes)
        except BuildError as exc:
            raise BuildError(f"commit {exc}") from None
    created = _now()
    layers = list(manifest.layers)
    upper = c.upper
    has_changes = upper is not None and upper.is_dir() and any(os.scandir(upper))
    with store.lease():
        if has_changes:
            compression = Compression()
            res = store_layer(store, lambda lw: write_overlay_upper_tar(upper, lw), compression,
                              docker_media_types=docker)
            layers.append(Descriptor(res.media_type, res.digest, res.size))
            cfg.diff_ids.append(res.diff_id)
        cfg.history.append(History(created=created, created_by=shlex.join(c.args), author=author or None,
                                   comment=message or None, empty_layer=not has_changes))
        cfg.created = created
        if author:
            cfg.author = author
        config_desc = store.put_config(cfg, mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG)
        new = Manifest(config=config_desc, layers=layers,
                       media_type=mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST)
        desc = store.put_manifest(new)
        store.tag(ref, desc)
    return desc
