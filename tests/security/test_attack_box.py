"""An outside review's attacks on the RUN sandbox and the registry client (issue 10 re-run).

Each test runs one attack against the real components (runc, pasta, a hostile HTTP server on
loopback) and asserts the safe outcome: a failing test is a break. Probes run from a static C
helper (tests/helpers/attack_box.c, gcc -static: the busybox image has no compiler).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.runtime.sandbox import Mount, RunSpec, run

REPO = Path(__file__).resolve().parents[2]
HELPER_SOURCE = REPO / "tests" / "helpers" / "attack_box.c"

sandbox_only = [pytest.mark.integration,
                pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root"),
                pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs Debian's busybox-static"),
                pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")]


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found (the probe is built with gcc -static)")
    out = tmp_path_factory.mktemp("probe") / "attack"
    r = subprocess.run([gcc, "-static", "-O1", "-o", str(out), str(HELPER_SOURCE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def box(busybox_rootfs: Path, probe: Path) -> Path:
    for m in sandbox_only[1:]:
        if m.args[0]:
            pytest.skip(m.kwargs["reason"])
    shutil.copy2(probe, busybox_rootfs / "attack")
    return busybox_rootfs


def _run(rootfs: Path, script: str, network: str = "default", mounts: list[Mount] | None = None):
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    rc = run(RunSpec(args=["/bin/sh", "-c", script], rootfs=rootfs, network=network, mounts=mounts or []),
             lambda name, chunk: out[name].extend(chunk))
    return rc, out["stdout"].decode(), out["stderr"].decode()


def _outcomes(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


# --- syscalls -------------------------------------------------------------------------------------

@pytest.mark.parametrize("network", ["default", "host"])
def test_dangerous_syscalls_are_denied(box: Path, network: str):
    rc, out, err = _run(box, "/attack syscalls", network)
    assert rc == 0, err
    got = _outcomes(out)
    denied = ["mount", "umount2", "unshare_user", "unshare_ns", "unshare_net", "unshare_cgroup", "setns",
              "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "open_by_handle_at",
              "clone3_newuser", "clone_newuser", "clone_newns", "io_uring_setup", "userfaultfd",
              "kexec_load", "init_module", "finit_module", "delete_module", "iopl", "ioperm", "swapon",
              "reboot", "syslog", "acct", "settimeofday", "pivot_root", "fsopen", "open_tree",
              "fanotify_init", "quotactl", "personality_bad", "sethostname"]
    allowed = {k: v for k, v in got.items() if k in denied and v == "ok"}
    assert not allowed, f"allowed inside the sandbox: {sorted(allowed)}"
    assert set(denied) <= set(got), out
    assert got["kill_outside"] == "ESRCH"          # a pid of the host is not visible from inside
    if network == "host":
        assert got["socket_packet"] == "EPERM"


# --- devices, /proc, /sys -------------------------------------------------------------------------

def _block_devices() -> list[tuple[int, int]]:
    found = []
    for name in os.listdir("/sys/dev/block"):
        ma, mi = name.split(":")
        found.append((int(ma), int(mi)))
    return found[:6]


def test_mknod_of_host_disks_cannot_be_opened(box: Path):
    devs = [("b", ma, mi) for ma, mi in _block_devices()] + [("c", 1, 1), ("c", 1, 11), ("c", 10, 237)]
    script = "; ".join(f"/attack dev /tmp/d{i} {t} {ma} {mi}" for i, (t, ma, mi) in enumerate(devs))
    rc, out, err = _run(box, script)
    assert rc == 0, err
    assert "open ok" not in out, out
    assert out.count("open EPERM") == len(devs), out


def test_proc_and_sys_writes_are_refused(box: Path):
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    targets = ["/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger", "/sys/kernel/uevent_helper",
               "/proc/sys/vm/drop_caches", "/sys/kernel/mm/transparent_hugepage/enabled"]
    rc, out, err = _run(box, "; ".join(f"/attack write {t} x" for t in targets)
                        + "; cat /proc/keys /proc/timer_list /proc/sched_debug 2>/dev/null | wc -c")
    assert rc == 0, err
    assert "write ok" not in out, out
    assert out.strip().splitlines()[-1].strip() == "0"        # masked paths read empty
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before


@pytest.mark.parametrize("dest", ["/dev", "/mydev", "/proc/x", "/sys/fs", "/x/../proc"])
def test_mount_over_the_sandbox_dev_proc_sys_is_refused(box: Path, tmp_path: Path, dest: str):
    """Attack: a cache (or bind) mount over /dev whose `null` is a link to /proc/keys: runc then
    creates no device nodes and masks /proc/keys, /proc/timer_list... with the link's target,
    i.e. unmasks them (the host's keyring list was readable). Also through an image link."""
    src = tmp_path / "evil-dev"
    src.mkdir()
    os.symlink("/proc/keys", src / "null")
    os.symlink("/dev", box / "mydev")
    with pytest.raises(BuildError, match="belong to the sandbox"):
        _run(box, "cat /proc/keys; grep keys /proc/self/mountinfo", mounts=[Mount(dest, source=str(src))])
    assert not (box / "x").exists() and (box / "mydev").is_symlink()


def test_mount_inside_an_earlier_bind_mount_is_refused(box: Path, tmp_path: Path):
    """The earlier mount's tree (a cache the build wrote) could hold `d -> /dev`: runc would
    follow it when mounting the later one, where the rootfs check cannot see."""
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink("/dev", cache / "d")
    (cache / "real").mkdir()
    os.symlink("real", cache / "rel")
    for target in ("/x/d", "/x/d/sub", "/x/rel/sub"):
        with pytest.raises(BuildError, match="inside the earlier bind or cache mount .* symbolic link"):
            _run(box, "true", mounts=[Mount("/x", source=str(cache)), Mount(target, source=str(tmp_path))])
    # The common shape (a bind of the sources, a cache for node_modules inside it) still works,
    # through an existing directory of the earlier mount or one runc makes.
    other = tmp_path / "other"
    other.mkdir()
    (other / "mark").write_text("inner")
    for target in ("/x/real", "/x/new/deeper"):
        rc, out, err = _run(box, f"cat {target}/mark",
                            mounts=[Mount("/x", source=str(cache)), Mount(target, source=str(other))])
        assert rc == 0 and "inner" in out, err
    rc, out, err = _run(box, "ls /c /dev/shm >/dev/null && echo fine",
                        mounts=[Mount("/c", source=str(cache)), Mount("/dev/shm", type="tmpfs")])
    assert rc == 0 and "fine" in out, err


# --- network --------------------------------------------------------------------------------------

class _Banner:
    """TCP servers on the host that answer a tag, one per (family, address)."""

    def __init__(self):
        self.socks = []

    def serve(self, family, addr, tag: bytes) -> int:
        s = socket.socket(family)
        s.bind((addr, 0))
        s.listen(8)
        self.socks.append(s)

        def loop():
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                c.sendall(tag + b"\n")
                c.close()
        threading.Thread(target=loop, daemon=True).start()
        return s.getsockname()[1]

    def close(self):
        for s in self.socks:
            s.close()


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    addrs = []
    for line in out.splitlines():
        f = line.split()
        if f[2] in ("inet", "inet6") and not f[3].startswith(("127.", "::1", "fe80")):
            addrs.append(f[3].split("/")[0])
    return addrs


def test_default_network_reaches_no_host_loopback_service(box: Path):
    b = _Banner()
    try:
        p4 = b.serve(socket.AF_INET, "127.0.0.1", b"HOSTLOOP4")
        p6 = b.serve(socket.AF_INET6, "::1", b"HOSTLOOP6")
        targets = ["127.0.0.1", "10.0.2.2", "10.0.2.3", "::1", "::ffff:127.0.0.1", "::ffff:10.0.2.2",
                   "fd00::1"] + _host_addresses()
        script = "; ".join(f"/attack tcp {a} {p}" for a in targets for p in (p4, p6))
        rc, out, err = _run(box, script)
        assert rc == 0, err
        assert "HOSTLOOP" not in out, out
    finally:
        b.close()


# --- the container bridge (builder.runtime.bridge) -------------------------------------------------

def _udp_listener(addr: str) -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    s.settimeout(3)
    return s, s.getsockname()[1]


def test_crafted_frame_to_host_loopback_is_dropped_on_the_bridge(box: Path):
    """The bridge has route_localnet (for -p on 127.0.0.1): a container with CAP_NET_RAW sends a
    hand-made UDP frame for 127.0.0.1 to the host's bridge MAC. The guard chain must drop it; the
    same frame for the gateway's own address (a 0.0.0.0 listener) arrives: the control."""
    from builder.runtime import bridge
    if not bridge.available():
        pytest.skip("the bridge needs ip and nft (Debian's iproute2, nftables)")
    loop, loop_port = _udp_listener("127.0.0.1")
    anyaddr, any_port = _udp_listener("0.0.0.0")
    try:
        script = (f"ping -c1 -W2 {bridge.GATEWAY} >/dev/null; "
                  "src=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1); "
                  f"gw=$(awk '$1==\"{bridge.GATEWAY}\" {{print $4}}' /proc/net/arp); "
                  f"/attack udpframe $src $gw 127.0.0.1 {loop_port} LOOPBACK-MARKER; "
                  f"/attack udpframe $src $gw {bridge.GATEWAY} {any_port} CONTROL-MARKER")
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        rc = run(RunSpec(args=["/bin/sh", "-c", script], rootfs=box, network_backend="bridge"),
                 lambda name, chunk: out[name].extend(chunk))
        text = out["stdout"].decode()
        assert rc == 0 and "udpframe 127.0.0.1 sent" in text and f"udpframe {bridge.GATEWAY} sent" in text, (
            text, out["stderr"].decode())
        assert anyaddr.recv(100) == b"CONTROL-MARKER"          # crafted frames do reach the host
        with pytest.raises(socket.timeout):
            print("received on host loopback:", loop.recv(100))
    finally:
        loop.close()
        anyaddr.close()
