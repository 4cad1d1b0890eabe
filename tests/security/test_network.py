"""The default network of RUN steps and containers: a private namespace, outbound through pasta.

Against the real runc and pasta: a RUN reaches an HTTP server on the host's own non-loopback
address and resolves the host's package mirror by name (what `apt-get` needs); a packet socket
in it sees its own traffic but none of the host's (`Authorization: Basic ...` sent to a
loopback server while it listens); nothing of the network is left behind afterwards.
"""
from __future__ import annotations

import glob
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from builder.runtime.sandbox import RunSpec, run
from tests.fixtures.building import build_in
from tests.security.test_confinement import attack, rootfs  # noqa: F401  (fixtures)
from tests.fixtures.cli import start_pybuild

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (namespaces, mounts)"),
              pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs Debian's busybox-static"),
              pytest.mark.skipif(shutil.which("pasta") is None, reason="needs Debian's passt (scripts/setup.sh)")]


def _host_address() -> str:
    """A global IPv4 address of this host (not loopback)."""
    r = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for link in json.loads(r.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and not a["local"].startswith("127."):
                return a["local"]
    pytest.skip("this host has no global IPv4 address to serve on")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):                                   # noqa: N802 (http.server's name)
        body = b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """An HTTP server on all of the host's addresses; yields its port."""
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _run(spec: RunSpec, state_dir: Path | None = None) -> tuple[int, str, str]:
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    rc = run(spec, lambda name, chunk: out[name].extend(chunk), state_dir=state_dir)
    return rc, out["stdout"].decode(), out["stderr"].decode()


def _pastas(under: Path) -> set[int]:
    """pids of pasta processes serving a namespace under ``under`` (passt's binary is named
    passt.avx2 and so on: the command line tells)."""
    pids = set()
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = Path(cmdline).read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--netns" in args and any(a.startswith(os.fsencode(under)) for a in args):
            pids.add(int(cmdline.split("/")[2]))
    return pids


def _mirror_name() -> str | None:
    """The host name of the first package source in the host's apt configuration."""
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        m = re.search(r"^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)https?://([^/\s:]+)", text, re.M)
        if m:
            return m.group(1)
    return None


def test_default_network_reaches_the_host_address_and_is_private(rootfs: Path, server: int, tmp_path: Path):
    host = _host_address()
    seen: set[int] = set()
    out_b: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def output(name: str, chunk: bytes) -> None:
        seen.update(_pastas(tmp_path))              # while the step runs
        out_b[name].extend(chunk)
    rc = run(RunSpec(args=["/bin/sh", "-c", f"wget -q -O- http://{host}:{server}/; ls /sys/class/net"],
                     rootfs=rootfs), output, state_dir=tmp_path / "state")
    out, err = out_b["stdout"].decode(), out_b["stderr"].decode()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "hello from the host"
    ifaces = lines[1:]
    assert "lo" in ifaces and len(ifaces) == 2                 # lo and pasta's interface only
    assert sorted(ifaces) != sorted(os.listdir("/sys/class/net"))
    # torn down: no pasta left, no namespace bound, the bundle gone
    assert len(seen) == 1                                      # one pasta while it ran
    deadline = time.monotonic() + 5
    while _pastas(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pastas(tmp_path)
    assert list((tmp_path / "state").iterdir()) == []
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def test_default_network_does_not_reach_host_loopback(rootfs: Path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", f"wget -q -T 3 -O- http://127.0.0.1:{port}/ || "
                                                            f"wget -q -T 3 -O- http://10.0.2.2:{port}/ || echo refused"],
                                    rootfs=rootfs))
        assert "hello" not in out and "refused" in out, (out, err)
    finally:
        srv.shutdown()
        srv.server_close()


def test_dns_resolves_the_package_mirror(rootfs: Path):
    name = _mirror_name()
    if name is None:
        pytest.skip("no package source in the host's apt configuration to resolve")
    rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", f"cat /etc/resolv.conf; nslookup {name}"], rootfs=rootfs))
    assert "nameserver 10.0.2.3" in out
    assert rc == 0 and "Address" in out.split(name, 1)[-1], (out, err)


def test_sniffer_sees_its_own_traffic_but_not_the_hosts(rootfs: Path, server: int):
    """A packet socket is allowed in the private network (CAP_NET_RAW, as Docker grants), but
    all it can see is the sandbox's own interface: the host's requests carrying credentials to
    a loopback server are invisible, while the step's own request is counted (the control)."""
    host = _host_address()
    stop = threading.Event()

    def host_traffic() -> None:
        while not stop.is_set():
            req = urllib.request.Request(f"http://127.0.0.1:{server}/",
                                         headers={"Authorization": "Basic SE9TVE1BUktFUi1zZWNyZXQ="})
            try:
                urllib.request.urlopen(req, timeout=2).read()
            except OSError:
                pass
            time.sleep(0.02)

    t = threading.Thread(target=host_traffic, daemon=True)
    t.start()
    try:
        script = ("/attack sniff SE9TVE1BUktFUi1zZWNyZXQ= 3 > /tmp/host.txt & "
                  "/attack sniff U0VMRk1BUktFUg== 3 > /tmp/self.txt & sleep 1; "
                  f"wget -q -O /dev/null --header 'Authorization: Basic U0VMRk1BUktFUg==' http://{host}:{server}/; "
                  "wait; cat /tmp/host.txt /tmp/self.txt")
        rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", script], rootfs=rootfs))
    finally:
        stop.set()
        t.join()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines.count("socket ok") == 2, out
    seen = [int(l.split()[1]) for l in lines if l.startswith("seen ")]
    assert seen[0] == 0, out                       # the host's credentials: never
    assert seen[1] >= 1, out                       # its own request: the sniffer works


def test_build_run_default_network_reaches_out(busybox_image: Path, tmp_path: Path, server: int):
    """Through a real build: RUN has outbound access by default and its own interfaces."""
    host = _host_address()
    res = build_in(busybox_image, tmp_path / "ctx",
                   f"FROM busybox\nRUN wget -q -O /got http://{host}:{server}/ && ls /sys/class/net > /ifaces\n",
                   tags=["net:1"], no_cache=True)
    from registry.store import Store
    assert res.image_id
    store = Store(busybox_image)
    assert store.resolve("net:1")


def test_build_runs_share_one_private_network_released_at_the_end(busybox_image: Path, tmp_path: Path):
    """The RUN steps of a build reuse its private network (made once, not tens of milliseconds
    per step; steps running side by side get one each) and nothing of it is left at the end."""
    dest = tmp_path / "out"
    build_in(busybox_image, tmp_path / "ctx",
             "FROM busybox\nRUN readlink /proc/self/ns/net > /a\nRUN readlink /proc/self/ns/net > /b\n"
             "RUN readlink /proc/self/ns/net > /c\n",
             no_cache=True, outputs=[f"type=local,dest={dest}"])
    seen = {(dest / n).read_text().strip() for n in ("a", "b", "c")}
    assert len(seen) == 1
    assert seen.pop() != os.readlink("/proc/self/ns/net")
    assert _pastas(busybox_image) == set()
    assert not list((busybox_image / "tmp").glob("run-*"))
    assert not [l for l in Path("/proc/self/mountinfo").read_text().splitlines() if str(busybox_image) in l]


def test_repair_stops_the_network_of_a_killed_build(busybox_image: Path, tmp_path: Path):
    """A SIGKILLed build leaves its private network (pasta and the bound namespace) behind;
    `store verify --repair` stops that pasta and unmounts the namespace."""
    import signal
    import sys
    from builder.storecheck import check_root, repair_root
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo started-net-kill && sleep 60\n")
    p = start_pybuild("build", "--no-cache", "--progress", "plain", ctx, root=busybox_image, text=False,
                      start_new_session=True)
    cids = []
    try:
        buf = b""
        deadline = time.monotonic() + 60
        while b"started-net-kill" not in buf.replace(b"echo started-net-kill", b"") and time.monotonic() < deadline:
            buf += os.read(p.stdout.fileno(), 4096)
        assert _pastas(busybox_image), "the build's pasta should be running"
        cids = [c["id"] for c in json.loads(subprocess.run(["runc", "list", "-f", "json"], capture_output=True,
                                                            text=True).stdout or "[]")
                if c.get("bundle", "").startswith(str(busybox_image))]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for cid in cids:      # runc outlives a SIGKILLed build (a documented limit)
            subprocess.run(["runc", "kill", cid, "KILL"], capture_output=True)
            for _ in range(50):
                if subprocess.run(["runc", "delete", "--force", cid], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
    assert _pastas(busybox_image)
    repair_root(busybox_image)
    assert _pastas(busybox_image) == set()
    assert not [l for l in Path("/proc/self/mountinfo").read_text().splitlines() if str(busybox_image) in l]
    assert check_root(busybox_image) == []
