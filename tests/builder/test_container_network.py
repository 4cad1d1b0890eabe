"""The default network of containers as root (issue 16): the pybuild0 bridge, a veth per
container, nftables masquerade and DNAT; `--network host|none`, `--add-host`, `--dns`; nothing
left after `rm`, and `store verify --repair` after a killed pybuild.

Real runc, conmon, ip and nft; the busybox image of tests/fixtures.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from builder.containers import lifecycle as ct
from builder.runtime import bridge
from tests.builder.test_run import CLI_ENV, pybuild
from tests.fixtures.cli import start_pybuild
from tests.security.test_network import _Handler, _host_address, _mirror_name, server  # noqa: F401

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the bridge needs root (veths, nftables)"),
              pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs Debian's busybox-static"),
              pytest.mark.skipif(shutil.which("nft") is None, reason="needs Debian's nftables"),
              pytest.mark.skipif(shutil.which("conmon") is None, reason="needs Debian's conmon")]


def _until(cond, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return v


def _leases_of(root: Path) -> list[str]:
    """Bridge leases whose namespace lies under this store root."""
    d = bridge.STATE_DIR / "leases"
    out = []
    for name in os.listdir(d) if d.is_dir() else []:
        lease = bridge.load(name)
        if lease is not None and lease.netns.startswith(str(root)):
            out.append(name)
    return out


def _veth_of(address: str) -> bool:
    return Path(f"/sys/class/net/{bridge.veth_name(address)}").exists()


def _nft_elements() -> str:
    return subprocess.run(["nft", "-j", "list", "table", "ip", bridge.TABLE], capture_output=True,
                          text=True).stdout


def _get(port: int, host: str = "127.0.0.1") -> str:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.decode(errors="replace")
    except OSError:
        return ""


def test_default_network_is_private_and_reaches_out(busybox_image: Path, server: int):
    root = busybox_image
    host = _host_address()
    mirror = _mirror_name()
    r = pybuild(root, "run", "--rm", "busybox", "sh", "-c",
                f"ls /sys/class/net; echo ---; timeout 10 wget -q -O- http://{host}:{server}/; echo ---; "
                "cat /etc/resolv.conf; echo ---; ip -4 -o addr show eth0; ip route; echo ---; "
                + (f"nslookup {mirror}" if mirror else "true"), check_rc=0)
    ifaces, fetched, resolv, addr, dns = r.stdout.split("---\n")
    # Only its own loopback and veth: none of the host's interfaces.
    assert sorted(ifaces.split()) == ["eth0", "lo"]
    assert fetched == "hello from the host\n"
    assert "nameserver 127." not in resolv and "nameserver" in resolv
    assert f"{bridge.GATEWAY[:-1]}" in addr and f"default via {bridge.GATEWAY}" in addr
    if mirror:
        assert "Address" in dns.split(mirror, 1)[-1], dns      # outbound through the masquerade
    # Removed with the container: no lease, no veth.
    assert _leases_of(root) == []
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(bridge.VETH_PREFIX)
                and bridge.load(str(__import__("ipaddress").IPv4Address(int(n[3:], 16)))) is None]


def test_host_loopback_services_are_not_reachable(busybox_image: Path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        r = pybuild(busybox_image, "run", "--rm", "busybox", "sh", "-c",
                    f"timeout 3 wget -q -O- http://127.0.0.1:{port}/ || timeout 3 wget -q -O- "
                    f"http://{bridge.GATEWAY}:{port}/ || echo refused", check_rc=0)
        assert "hello" not in r.stdout and "refused" in r.stdout
    finally:
        srv.shutdown()
        srv.server_close()


def test_published_ports_with_and_without_a_host_port(busybox_image: Path, tmp_path: Path):
    root = busybox_image
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served from the bridge\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pybuild(root, "run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:8080", "-p", "8081",
            "-v", f"{www}:/www:ro", "busybox", "sh", "-c",
            "httpd -p 8081 -h /www; exec httpd -f -p 8080 -h /www", check_rc=0)
    try:
        c = ct.lookup(root, "web")
        assert c.network_backend == "bridge"
        # Only conmon stays per container: no pasta, no proxy.
        tree = subprocess.run(["ps", "-o", "comm=", "--ppid", str(c.state.pid)], capture_output=True,
                              text=True).stdout.split()
        assert tree and not [p for p in tree if "pasta" in p or "passt" in p], tree
        assert "served from the bridge" in _until(lambda: _get(port), what="the published port")
        assert _get(port, _host_address()) == ""                 # bound to 127.0.0.1 only
        ports = pybuild(root, "port", "web", check_rc=0).stdout.splitlines()
        assert f"8080/tcp -> 127.0.0.1:{port}" in ports
        picked = pybuild(root, "port", "web", "8081", check_rc=0).stdout.strip()
        host_port = int(picked.rsplit(":", 1)[1])
        assert picked.startswith("0.0.0.0:") and host_port not in (0, 8081, port)
        assert "served from the bridge" in _until(lambda: _get(host_port), what="the picked port")
        assert "served from the bridge" in _get(host_port, _host_address())
        # Another container cannot take a published host port.
        r = pybuild(root, "run", "--rm", "-p", f"127.0.0.1:{port}:80", "busybox", "true")
        assert r.returncode == 125 and "publishes it already" in r.stderr
        address = _leases_of(root)
        assert len(address) == 1 and _veth_of(address[0])
        assert str(port) in _nft_elements() and str(host_port) in _nft_elements()
    finally:
        pybuild(root, "rm", "-f", "web", check_rc=0)
    assert _leases_of(root) == [] and not _veth_of(address[0])
    assert str(port) not in _nft_elements() and str(host_port) not in _nft_elements()
    assert _get(port) == "" and _get(host_port) == ""
    pybuild(root, "port", "web", check_rc=1)


def test_a_detached_container_that_exits_releases_its_lease(busybox_image: Path):
    root = busybox_image
    cid = pybuild(root, "run", "-d", "-p", "8080", "busybox", "sh", "-c", "ip -4 -o addr show eth0; sleep 1",
                  check_rc=0).stdout.strip()
    _until(lambda: _leases_of(root), what="the lease")
    # conmon's exit command (container-cleanup) releases it; nobody else asks.
    _until(lambda: json.loads((root / "containers" / cid / "state.json").read_text())["status"] == "exited",
           what="the exit command")
    assert _leases_of(root) == []
    assert bridge.GATEWAY.rsplit(".", 2)[0] in pybuild(root, "logs", cid, check_rc=0).stdout
    pybuild(root, "rm", cid, check_rc=0)


def test_network_modes_add_host_and_dns(busybox_image: Path):
    root = busybox_image
    r = pybuild(root, "run", "--rm", "--network", "none", "--add-host", "db:10.1.2.3", "busybox", "sh", "-c",
                "ls /sys/class/net; grep -w db /etc/hosts", check_rc=0)
    assert r.stdout.split() == ["lo", "10.1.2.3", "db"]
    r = pybuild(root, "run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net", check_rc=0)
    assert sorted(r.stdout.split()) == sorted(os.listdir("/sys/class/net"))
    r = pybuild(root, "run", "--rm", "--dns", "192.0.2.53", "--add-host", "gw:host-gateway", "busybox", "sh",
                "-c", "grep nameserver /etc/resolv.conf; grep gw /etc/hosts", check_rc=0)
    assert r.stdout.splitlines() == ["nameserver 192.0.2.53", f"{bridge.GATEWAY}\tgw"]
    r = pybuild(root, "run", "--rm", "--dns", "resolver", "busybox", "true")
    assert r.returncode == 125 and "not an IP address" in r.stderr
    r = pybuild(root, "run", "--rm", "--add-host", "nocolon", "busybox", "true")
    assert r.returncode == 125 and "NAME:ADDRESS" in r.stderr and "Traceback" not in r.stderr


def test_repair_releases_the_network_of_a_killed_pybuild(busybox_image: Path):
    root = busybox_image
    proc = start_pybuild("run", "--name", "doomed", "busybox", "sleep", "300", root=root, env=CLI_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = _until(lambda: _leases_of(root), what="the container's lease")[0]

        def started() -> bool:        # runc runs the container: its network is complete
            r = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True)
            return any(str(root) in e.get("bundle", "") and e.get("status") == "running"
                       for e in json.loads(r.stdout or "null") or [])
        _until(started, what="the container")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _veth_of(address)                                   # left behind by the kill
        r = pybuild(root, "store", "verify", check_rc=1)
        assert "doomed" in r.stdout + r.stderr
        r = pybuild(root, "store", "verify", "--repair", check_rc=0)
        assert "doomed" in r.stdout
        assert _leases_of(root) == [] and not _veth_of(address)
        runc = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True).stdout
        assert str(root) not in runc
        assert "Exited (137)" in pybuild(root, "ps", "-a", check_rc=0).stdout
    finally:
        proc.kill()
        pybuild(root, "rm", "-f", "doomed")
    assert str(root) not in Path("/proc/self/mountinfo").read_text()


def test_repair_removes_a_lease_whose_namespace_is_gone(tmp_path: Path):
    # A lease and its veth as a pybuild killed before binding... or whose bundle was deleted
    # leaves them: the namespace file is gone. An address at the top of the subnet, far from
    # those live containers take first.
    address = "10.91.255.201"
    lease = bridge.Lease(address=address, veth=bridge.veth_name(address), netns=str(tmp_path / "netns"))
    bridge.ensure_bridge()
    assert not lease.path.exists()
    bridge._save(lease)
    subprocess.run(["ip", "link", "add", lease.veth, "type", "veth", "peer", "name", lease.veth + "p"],
                   check=True)
    stray = bridge.veth_name("10.91.255.202")                 # a veth no lease names
    subprocess.run(["ip", "link", "add", stray, "type", "veth", "peer", "name", stray + "p"], check=True)
    try:
        done = bridge.repair()
        assert f"network lease {address} ({lease.veth})" in done and f"veth {stray}" in done
        assert not lease.path.exists() and not _veth_of(address) and not _veth_of("10.91.255.202")
    finally:
        for v in (lease.veth, stray):
            subprocess.run(["ip", "link", "del", v], capture_output=True)
        lease.path.unlink(missing_ok=True)
