"""The default network of containers when pybuild runs as root: a host bridge, as podman's.

One bridge ``pybuild0`` (10.91.0.1/16) per host, made on first use; each container's network
namespace (made by the sandbox and bound in its bundle) gets one end of a veth pair as its
``eth0`` with an address of the bridge's subnet, the other end on the bridge. An nftables table
``ip pybuild`` masquerades what leaves the subnet (outbound access) and DNATs published ports
(``-p``) from the host's own addresses, loopback included, to the container. No process stays
per container: the kernel does the forwarding (a pasta per container costs ~29 MB of PSS).

Leases: ``/run/pybuild/bridge/leases/<address>`` (created with O_EXCL: two containers never get
one address) records the namespace, the veth and the published ports, so that whoever releases a
network - the container's own cleanup, ``rm``, or ``store verify --repair`` after a killed
pybuild - knows what to delete. The veth's name comes from the address (``pbv`` + 8 hex digits),
so a leftover veth names its lease too.

Why a guard rule: the bridge has ``route_localnet`` (a DNAT from the host's 127.0.0.1 to a
container needs it), which would also let a container with CAP_NET_RAW send a crafted packet to
the host's loopback services through the bridge; the ``guard`` chain drops anything arriving on
the bridge for 127.0.0.0/8 before routing.

Rootless pybuild keeps pasta (builder.runtime.sandbox): a user cannot make bridges.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import os
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from registry.fsutil import in_initial_user_namespace

from ..errors import BuildError

BRIDGE = "pybuild0"
SUBNET = ipaddress.IPv4Network("10.91.0.0/16")
GATEWAY = "10.91.0.1"
TABLE = "pybuild"
STATE_DIR = Path(os.environ.get("PYBUILD_BRIDGE_STATE", "/run/pybuild/bridge"))
VETH_PREFIX = "pbv"
RECORD = "bridge.json"          # in a bundle: the lease its network holds

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# The table, made once per boot. Published ports are map elements (added and deleted per
# container, one nft call each), never rules, so releasing a container edits no rule.
_RULESET = f"""
table ip {TABLE} {{
  map tcp_addr {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }}
  map udp_addr {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }}
  map tcp_any {{ type inet_service : ipv4_addr . inet_service; }}
  map udp_any {{ type inet_service : ipv4_addr . inet_service; }}
  chain guard {{ type filter hook prerouting priority -300; policy accept;
    iifname "{BRIDGE}" ip daddr 127.0.0.0/8 drop; }}
  chain published {{
    meta l4proto tcp dnat ip to ip daddr . tcp dport map @tcp_addr;
    meta l4proto udp dnat ip to ip daddr . udp dport map @udp_addr;
    meta l4proto tcp dnat ip to tcp dport map @tcp_any;
    meta l4proto udp dnat ip to udp dport map @udp_any;
  }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump published; }}
  chain output {{ type nat hook output priority -100; policy accept;
    fib daddr type local jump published; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr {SUBNET} oifname != "{BRIDGE}" masquerade;
    oifname "{BRIDGE}" ip saddr 127.0.0.0/8 masquerade; }}
}}
"""


def available() -> bool:
    """True when the bridge can be used here: real root, with ip and nft installed, and
    PYBUILD_CONTAINER_NETWORK not asking for pasta."""
    return (os.geteuid() == 0 and os.environ.get("PYBUILD_CONTAINER_NETWORK", "") != "pasta"
            and shutil.which("ip") is not None and shutil.which("nft") is not None and in_initial_user_namespace())


@dataclass
class Lease:
    """One container's place on the bridge."""

    address: str
    veth: str
    netns: str                                            # the bound namespace (a file)
    ports: list[list] = field(default_factory=list)       # [host ip, host port, ctr port, proto]

    @property
    def path(self) -> Path:
        return STATE_DIR / "leases" / self.address


def veth_name(address: str) -> str:
    """The host end's name for a container address: ``pbv`` + the address in hex (<= 15 chars)."""
    return VETH_PREFIX + f"{int(ipaddress.IPv4Address(address)):08x}"


def _run(cmd: list[str], stdin: str = "", what: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True)


def _fail(what: str, r: subprocess.CompletedProcess) -> BuildError:
    detail = (r.stderr or r.stdout).strip().splitlines()
    return BuildError(f"cannot set up the container network ({what}): "
                      f"{detail[-1] if detail else f'exit {r.returncode}'}; "
                      "use --network host or --network none, or PYBUILD_CONTAINER_NETWORK=pasta")


class _Lock:
    """An flock on the bridge's state directory (bridge creation and port checks)."""

    def __enter__(self):
        import fcntl
        STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def ensure_bridge() -> None:
    """Make the bridge and the nftables table unless this boot already has them (idempotent)."""
    marker = STATE_DIR / "ready"
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        try:
            if marker.read_text() == _boot_id():
                return
        except OSError:
            pass
    with _Lock():
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            # A new bridge (first use, or after a reboot): any lease left is from before.
            shutil.rmtree(STATE_DIR / "leases", ignore_errors=True)
            r = _run(["ip", "-batch", "-"], f"link add {BRIDGE} type bridge\n"
                     f"addr add {GATEWAY}/{SUBNET.prefixlen} dev {BRIDGE}\nlink set {BRIDGE} up\n")
            if r.returncode and not Path(f"/sys/class/net/{BRIDGE}").exists():
                raise _fail(f"bridge {BRIDGE}", r)
        # Forwarding for outbound traffic; route_localnet so that -p on 127.0.0.1 reaches the
        # bridge (see the module docstring for the guard that comes with it).
        for knob in ("ipv4/ip_forward", f"ipv4/conf/{BRIDGE}/route_localnet"):
            Path("/proc/sys/net", knob).write_text("1")
        if _run(["nft", "list", "table", "ip", TABLE]).returncode != 0:
            r = _run(["nft", "-f", "-"], _RULESET)
            if r.returncode:
                raise _fail("nftables", r)
        (STATE_DIR / "leases").mkdir(parents=True, exist_ok=True)
        marker.write_text(_boot_id())


def _allocate(netns: Path) -> Lease:
    leases = STATE_DIR / "leases"
    leases.mkdir(parents=True, exist_ok=True)
    taken = set(os.listdir(leases))
    gw = ipaddress.IPv4Address(GATEWAY)
    for host in SUBNET.hosts():
        a = str(host)
        if host == gw or a in taken:
            continue
        lease = Lease(address=a, veth=veth_name(a), netns=str(netns))
        try:
            fd = os.open(lease.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(lease), f)
        return lease
    raise BuildError(f"the container network {SUBNET} has no free address left "
                     "(`pybuild store verify --repair` releases those of dead containers)")


def _save(lease: Lease) -> None:
    tmp = lease.path.with_name(f".{lease.address}.tmp")
    tmp.write_text(json.dumps(asdict(lease)))
    os.replace(tmp, lease.path)


def _in_netns(netns: Path, cmd: list[str], stdin: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` inside the namespace bound at ``netns``: a short-lived thread joins it (a
    network namespace is per thread) and its child inherits it."""
    out: list = []

    def go() -> None:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                out.append(OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())))
                return
        finally:
            os.close(fd)
        out.append(_run(cmd, stdin))

    t = threading.Thread(target=go, name="pybuild-netns-config")
    t.start()
    t.join()
    if isinstance(out[0], OSError):
        raise BuildError(f"cannot enter the container's network namespace {netns}: {out[0].strerror}")
    return out[0]


def _check_host_port(ip: str, port: int, proto: str) -> None:
    """Refuse a host port a host process already listens on (a DNAT would steal its traffic)."""
    import socket                      # only with -p: not a cost of every container's start
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((ip or "0.0.0.0", port))
        except OSError as exc:
            raise BuildError(f"cannot publish {ip + ':' if ip else ''}{port}/{proto}: "
                             f"{exc.strerror.lower() if exc.strerror else exc} on the host") from None


def _free_port(ip: str, proto: str, used: set[tuple[str, int]]) -> int:
    import socket
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((ip or "0.0.0.0", 0))
            port = s.getsockname()[1]
        if (proto, port) not in used:
            return port
    raise BuildError("cannot find a free host port to publish on")


def _published_ports() -> set[tuple[str, int]]:
    """(proto, host port) of every lease on this host."""
    out: set[tuple[str, int]] = set()
    leases = STATE_DIR / "leases"
    for name in os.listdir(leases) if leases.is_dir() else []:
        try:
            for _ip, hp, _cp, proto in json.loads((leases / name).read_text()).get("ports", []):
                out.add((proto, int(hp)))
        except (OSError, ValueError, TypeError):
            continue
    return out


def _elements(lease: Lease) -> list[str]:
    """nft element specs ``(map, key, value)`` of the lease's published ports."""
    out = []
    for ip, hp, cp, proto in lease.ports:
        if ip and ip != "0.0.0.0":
            out.append(f"{proto}_addr {{ {ip} . {hp} : {lease.address} . {cp} }}")
        else:
            out.append(f"{proto}_any {{ {hp} : {lease.address} . {cp} }}")
    return out


def connect(netns: Path, ports: list[tuple[str, int, int, str]] = ()) -> Lease:
    """Put the namespace bound at ``netns`` on the bridge with the given published ports
    (a host port 0 is picked free); the lease, also recorded beside ``netns`` in the bundle."""
    ensure_bridge()
    lease = _allocate(netns)
    try:
        (netns.parent / RECORD).write_text(json.dumps({"address": lease.address}))
        r = _in_netns(netns, ["ip", "-batch", "-"],
                      "link set lo up\n"
                      f"link add eth0 type veth peer name {lease.veth} netns {os.getpid()}\n"
                      f"addr add {lease.address}/{SUBNET.prefixlen} dev eth0\n"
                      "link set eth0 up\n"
                      f"route add default via {GATEWAY}\n")
        if r.returncode:
            raise _fail("veth", r)
        r = _run(["ip", "link", "set", lease.veth, "master", BRIDGE, "up"])
        if r.returncode:
            raise _fail(f"attach {lease.veth} to {BRIDGE}", r)
        if ports:
            with _Lock():
                used = _published_ports()
                for ip, hp, cp, proto in ports:
                    if hp == 0:
                        hp = _free_port(ip, proto, used)
                    elif (proto, hp) in used:
                        raise BuildError(f"cannot publish {ip + ':' if ip else ''}{hp}/{proto}: "
                                         "another container publishes it already")
                    else:
                        _check_host_port(ip, hp, proto)
                    used.add((proto, hp))
                    lease.ports.append([ip, hp, cp, proto])
                _save(lease)
                cmds = "".join(f"add element ip {TABLE} {e}\n" for e in _elements(lease))
                r = _run(["nft", "-f", "-"], cmds)
                if r.returncode:
                    raise _fail("published ports", r)
        return lease
    except BaseException:
        release(lease)
        raise


def release(lease: Lease) -> None:
    """Delete the lease's veth and published ports and free its address (idempotent)."""
    if lease.ports:
        cmds = "".join(f"delete element ip {TABLE} {e}\n" for e in _elements(lease))
        _run(["nft", "-f", "-"], cmds)         # an element already gone is no error to us
    if Path(f"/sys/class/net/{lease.veth}").exists():
        _run(["ip", "link", "del", lease.veth])
    try:
        lease.path.unlink()
    except FileNotFoundError:
        pass


def load(address: str) -> Lease | None:
    """The lease of ``address``, None if there is none."""
    try:
        return Lease(**json.loads((STATE_DIR / "leases" / address).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def release_recorded(bundle: Path) -> None:
    """Release the lease recorded in ``bundle`` (by :func:`connect`), if any."""
    try:
        address = json.loads((Path(bundle) / RECORD).read_text())["address"]
    except (OSError, ValueError, KeyError):
        return
    lease = load(address)
    if lease is not None and lease.netns == str(Path(bundle) / "netns"):
        release(lease)
    (Path(bundle) / RECORD).unlink(missing_ok=True)


def ports_of(bundle: Path) -> list[list]:
    """The published ports (host ip, host port, container port, proto) of a bundle's network."""
    try:
        address = json.loads((Path(bundle) / RECORD).read_text())["address"]
    except (OSError, ValueError, KeyError):
        return []
    lease = load(address)
    return lease.ports if lease is not None else []


def _is_nsfs(path: str) -> bool:
    """True while ``path`` is a bound network namespace (an nsfs mount)."""
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path and " - nsfs " in line for line in f)
    except OSError:
        return False


def repair() -> list[str]:
    """Release every lease whose namespace is no longer bound (its owner died and the bundle
    went away), and delete veths on the bridge that no lease names. What was released."""
    done: list[str] = []
    leases = STATE_DIR / "leases"
    known = set()
    for name in sorted(os.listdir(leases)) if leases.is_dir() else []:
        lease = load(name)
        if lease is None:
            continue
        known.add(lease.veth)
        if not _is_nsfs(lease.netns):
            release(lease)
            done.append(f"network lease {lease.address} ({lease.veth})")
    try:
        links = os.listdir("/sys/class/net")
    except OSError:
        links = []
    for link in links:
        if link.startswith(VETH_PREFIX) and link not in known:
            # Re-read: a container may have taken the address since the listing above.
            try:
                addr = str(ipaddress.IPv4Address(int(link[len(VETH_PREFIX):], 16)))
            except ValueError:
                continue
            if load(addr) is None:
                _run(["ip", "link", "del", link])
                done.append(f"veth {link}")
    return done
