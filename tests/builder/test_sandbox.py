"""The RUN sandbox against real runc on a busybox root filesystem."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.runtime.sandbox import Mount, RunSpec, run, oci_config

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (namespaces, mounts)"),
              pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs Debian's busybox-static")]

ISOLATIONS = ["oci", "none"]     # none: builder.runtime.chroot
# none makes no mounts and no network namespace: its refusals are in tests/rootless/test_isolation_none.py
MOUNTING = ["oci"]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A minimal busybox root: /bin/* applets, /etc/passwd and /etc/group, /tmp."""
    r = tmp_path / "rootfs"
    (r / "bin").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "tmp").mkdir(mode=0o1777)
    shutil.copy("/bin/busybox", r / "bin" / "busybox")
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", r / "bin" / applet)
    (r / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (r / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return r


def _run(spec: RunSpec, isolation: str) -> tuple[int, str, str]:
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    rc = run(spec, lambda name, chunk: out[name].extend(chunk), isolation=isolation)
    return rc, out["stdout"].decode(), out["stderr"].decode()


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_echo_and_exit_codes(rootfs, isolation):
    assert _run(RunSpec(args=["echo", "hi"], rootfs=rootfs), isolation) == (0, "hi\n", "")
    rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", "echo out; echo err >&2; exit 42"], rootfs=rootfs),
                        isolation)
    assert (rc, out, err) == (42, "out\n", "err\n")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_env_cwd_user(rootfs, isolation):
    spec = RunSpec(args=["/bin/sh", "-c", 'echo "$FOO|$PATH"; pwd; id -u; id -g; id -G'],
                   rootfs=rootfs, env=["FOO=bar baz"], cwd="/tmp", uid=65534, gid=65534,
                   additional_gids=[10, 20])
    rc, out, _ = _run(spec, isolation)
    lines = out.splitlines()
    assert rc == 0
    assert lines[0] == "bar baz|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert lines[1:4] == ["/tmp", "65534", "65534"]
    assert sorted(lines[4].split()) == ["10", "20", "65534"]


@pytest.mark.parametrize("isolation", MOUNTING)
def test_proc_dev_etc_files(rootfs, isolation):
    script = ("test -r /proc/self/status && echo proc; "
              "for d in null zero full random urandom tty; do test -c /dev/$d || echo missing $d; done; "
              "test -d /dev/pts && test -d /dev/shm && echo devdirs; "
              "cat /etc/hosts; cat /etc/hostname; hostname; test -f /etc/resolv.conf && echo resolv; "
              "echo x > /sys/x 2>/dev/null || echo sysro; echo $$")
    rc, out, _ = _run(RunSpec(args=["/bin/sh", "-c", script], rootfs=rootfs), isolation)
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == "proc"
    assert "missing" not in out
    assert "devdirs" in lines
    assert "127.0.0.1\tlocalhost buildkitsandbox" in lines
    assert lines.count("buildkitsandbox") == 2
    assert "resolv" in lines and "sysro" in lines
    assert lines[-1] == "1"                       # own pid namespace
    # mount points the runtime needed are not left behind in the rootfs
    for p in ("proc", "dev", "sys", "etc/hosts", "etc/hostname", "etc/resolv.conf"):
        assert not (rootfs / p).exists(), p


@pytest.mark.parametrize("isolation", MOUNTING)
def test_network_none_has_no_interfaces_but_lo(rootfs, isolation):
    rc, out, _ = _run(RunSpec(args=["/bin/sh", "-c", "cat /proc/net/dev; ping -c1 -W2 127.0.0.1 >/dev/null && echo lo-up"],
                              rootfs=rootfs, network="none"), isolation)
    ifaces = [l.split(":")[0].strip() for l in out.splitlines()[2:-1]]
    assert rc == 0 and ifaces == ["lo"] and out.splitlines()[-1] == "lo-up"
    rc, out, _ = _run(RunSpec(args=["/bin/sh", "-c", "cat /proc/net/dev"], rootfs=rootfs, network="host"),
                      isolation)
    host_ifaces = [l.split(":")[0].strip() for l in Path("/proc/net/dev").read_text().splitlines()[2:]]
    assert sorted(l.split(":")[0].strip() for l in out.splitlines()[2:]) == sorted(host_ifaces)


@pytest.mark.parametrize("isolation", MOUNTING)
def test_bind_and_tmpfs_mounts(rootfs, tmp_path, isolation):
    src = tmp_path / "ctx"
    src.mkdir()
    (src / "f").write_text("from host\n")
    spec = RunSpec(args=["/bin/sh", "-c", "cat /src/f; echo y > /src/g 2>/dev/null || echo ro; "
                                          "echo t > /scratch/t && cat /scratch/t"],
                   rootfs=rootfs, mounts=[Mount("/src", source=str(src), readonly=True),
                                          Mount("/scratch", type="tmpfs")])
    rc, out, _ = _run(spec, isolation)
    assert (rc, out) == (0, "from host\nro\nt\n")
    assert not (src / "g").exists()
    assert not (rootfs / "src").exists() and not (rootfs / "scratch").exists()


def test_writes_land_in_rootfs(rootfs):
    rc, _, _ = _run(RunSpec(args=["/bin/sh", "-c", "echo data > /tmp/out"], rootfs=rootfs), "oci")
    assert rc == 0 and (rootfs / "tmp" / "out").read_text() == "data\n"


def test_missing_command_and_bad_options(rootfs):
    rc, _, err = _run(RunSpec(args=["/nonexistent"], rootfs=rootfs), "oci")
    assert rc != 0 and "nonexistent" in err
    with pytest.raises(BuildError, match="network"):
        run(RunSpec(args=["true"], rootfs=rootfs, network="bridge"))
    with pytest.raises(BuildError, match="empty"):
        run(RunSpec(args=[], rootfs=rootfs))


def test_oci_config_follows_docker_defaults(rootfs):
    cfg = oci_config(RunSpec(args=["true"], rootfs=rootfs, network="none"),
                     {d: Path("/x") for d in ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")})
    assert cfg["process"]["noNewPrivileges"] is True
    assert "CAP_SYS_ADMIN" not in cfg["process"]["capabilities"]["bounding"]
    assert "CAP_CHOWN" in cfg["process"]["capabilities"]["bounding"]
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    dests = [m["destination"] for m in cfg["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/etc/hosts", "/etc/resolv.conf"):
        assert d in dests
    assert "ro" in next(m for m in cfg["mounts"] if m["destination"] == "/sys")["options"]
    host = oci_config(RunSpec(args=["true"], rootfs=rootfs, network="host"),
                      {d: Path("/x") for d in ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")})
    assert "network" not in {n["type"] for n in host["linux"]["namespaces"]}
