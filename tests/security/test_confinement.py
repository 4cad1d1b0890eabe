"""Confinement of RUN steps and containers, tried as an attacker would, under real runc.

The attacks run from a static C helper (tests/helpers/attack.c, built with `gcc -static`: the
busybox image has no compiler or Python) against canary files on the host: seccomp (Docker's
default), no_new_privs, CAP_NET_RAW on the host's network, the chroot-twice escape, a
WorkingDir that climbs with `..`, a symlinked WorkingDir, and mount-point stub cleanup through
a link planted by the step.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.runtime import seccomp
from builder.errors import BuildError
from builder.runtime.sandbox import DEFAULT_CAPS, Mount, RunSpec, granted_caps, oci_config, run

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (namespaces, mounts)"),
              pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs Debian's busybox-static")]

REPO = Path(__file__).resolve().parents[2]
HELPER_SOURCE = REPO / "tests" / "helpers" / "attack.c"


@pytest.fixture(scope="session")
def attack(tmp_path_factory) -> Path:
    """The static attack helper, compiled once."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the attack helper is compiled with gcc -static (Debian's gcc)")
    out = tmp_path_factory.mktemp("attack") / "attack"
    r = subprocess.run([gcc, "-static", "-O1", "-o", str(out), str(HELPER_SOURCE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def rootfs(busybox_rootfs: Path, attack: Path) -> Path:
    shutil.copy2(attack, busybox_rootfs / "attack")
    return busybox_rootfs


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A host directory with a secret file that no RUN step may read or write."""
    d = tmp_path / "canary"
    d.mkdir()
    (d / "secret").write_text("HOST-CANARY-SECRET\n")
    return d


def _run(spec: RunSpec) -> tuple[int, str, str]:
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    rc = run(spec, lambda name, chunk: out[name].extend(chunk))
    return rc, out["stdout"].decode(), out["stderr"].decode()


def _outcomes(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


# --- seccomp, no_new_privs ------------------------------------------------------------------------

@pytest.mark.parametrize("network", ["default", "host", "none"])
def test_seccomp_and_no_new_privs_are_applied(rootfs: Path, network: str):
    rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; "
                                                        "/attack syscalls; unshare -U true; echo busybox-unshare=$?"],
                                rootfs=rootfs, network=network))
    assert rc == 0, err
    status = dict(l.split(":\t") for l in out.splitlines() if ":\t" in l)
    assert status == {"Seccomp": "2", "NoNewPrivs": "1"}
    got = _outcomes(out)
    # Docker's default profile denies the keyring and namespace creation without CAP_SYS_ADMIN;
    # mount fails for lack of CAP_SYS_ADMIN as well.
    assert got["keyctl"] == "EPERM" and got["add_key"] == "EPERM"
    assert got["unshare"] == "EPERM" and got["mount"] == "EPERM"
    assert got["clone_newuser"] in ("EPERM", "ENOSYS")
    assert "busybox-unshare=0" not in out


def test_profile_conversion_honours_caps_arches_and_kernel():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrno": "ENOSYS",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read", "write", "mount", "clone"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["newer"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        ]}
    got = seccomp.convert(profile, frozenset({"CAP_SYS_CHROOT"}), machine="x86_64", kernel=(6, 1))
    assert got["defaultAction"] == "SCMP_ACT_ERRNO" and got["defaultErrnoRet"] == 38
    assert got["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    names = {n: r for r in got["syscalls"] for n in r["names"]}
    allowed = {n for r in got["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
               for n in r["names"]}
    assert {"read", "write", "chroot", "arch_prctl"} <= allowed
    assert "newer" not in names                              # minKernel above this kernel
    assert names["mount"]["action"] == "SCMP_ACT_ERRNO" and names["mount"]["errnoRet"] == 1
    assert names["keyctl"]["errnoRet"] == 1
    assert names["clone"]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert names["personality"]["args"] == [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]
    without = seccomp.convert(profile, frozenset(), machine="aarch64", kernel=(6, 1))
    assert without["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    rules = [r for r in without["syscalls"] if "chroot" in r["names"]]
    assert [r["action"] for r in rules] == ["SCMP_ACT_ERRNO"]
    assert not any("arch_prctl" in r["names"] for r in without["syscalls"])
    with_admin = seccomp.convert(profile, frozenset({"CAP_SYS_ADMIN"}), machine="x86_64", kernel=(6, 1))
    assert any(r["action"] == "SCMP_ACT_ALLOW" and "mount" in r["names"] for r in with_admin["syscalls"])


def test_real_profile_converts_and_is_cached():
    if not Path(seccomp.PROFILE_PATH).exists():
        pytest.fail(f"{seccomp.PROFILE_PATH} missing: scripts/setup.sh installs golang-github-containers-common")
    a = seccomp.oci_seccomp(DEFAULT_CAPS)
    assert seccomp.oci_seccomp(list(DEFAULT_CAPS)) is a
    names = {n for r in a["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert "chroot" in names and "read" in names              # CAP_SYS_CHROOT is granted
    assert "bpf" not in names and "unshare" not in names      # CAP_SYS_ADMIN is not
    cfg = oci_config(RunSpec(args=["true"], rootfs=Path("/nonexistent"), network="host"),
                     {d: Path("/x") for d in ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")})
    assert cfg["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "CAP_NET_RAW" not in cfg["process"]["capabilities"]["bounding"]
    assert cfg["process"]["noNewPrivileges"] is True
    # x32 rules only where the kernel runs x32 calls (they cost runc a third of its filter).
    if os.uname().machine == "x86_64":
        assert ("SCMP_ARCH_X32" in a["architectures"]) == seccomp._kernel_has_x32()
        assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86"} <= set(a["architectures"])


def test_missing_profile_refuses_to_run(rootfs: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PYBUILD_SECCOMP_PROFILE", str(tmp_path / "absent.json"))
    shutil.rmtree(rootfs / "etc")
    before = sorted(os.listdir(rootfs))
    with pytest.raises(BuildError, match="absent.json is missing.*never run without seccomp"):
        run(RunSpec(args=["true"], rootfs=rootfs), state_dir=tmp_path / "state")
    assert sorted(os.listdir(rootfs)) == before                # nothing was set up
    assert not (tmp_path / "state").exists()


# --- CAP_NET_RAW and the host's traffic -----------------------------------------------------------

def test_net_raw_only_in_a_private_network():
    assert "CAP_NET_RAW" in granted_caps(RunSpec(args=["x"], rootfs=Path("/"), network="default"))
    assert "CAP_NET_RAW" not in granted_caps(RunSpec(args=["x"], rootfs=Path("/"), network="host"))


def test_packet_socket_on_the_host_network_is_refused(rootfs: Path):
    rc, out, err = _run(RunSpec(args=["/attack", "sniff", "M", "1"], rootfs=rootfs, network="host"))
    assert rc == 2 and out.strip() == "socket EPERM", (out, err)


# --- chroot twice, WorkingDir ------------------------------------------------------------------------

@pytest.mark.parametrize("network", ["default", "host"])
def test_chroot_twice_does_not_reach_the_host(rootfs: Path, canary: Path, network: str):
    secret = canary / "secret"
    rc, out, err = _run(RunSpec(args=["/attack", "escape", str(secret)], rootfs=rootfs, network=network))
    got = _outcomes(out)
    assert rc == 0, (out, err)
    assert got["read"] == "ENOENT" and "HOST-CANARY" not in out
    assert sorted(os.listdir(canary)) == ["secret"]               # nothing written next to it
    assert secret.read_text() == "HOST-CANARY-SECRET\n"


@pytest.mark.parametrize("cwd", ["../../../../../../../..", "..", "x/../../.."])
def test_climbing_working_dir_starts_inside_the_root(rootfs: Path, canary: Path, cwd: str):
    relative = str(canary / "secret").lstrip("/")
    rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", f"pwd; cat {relative}; ls"], rootfs=rootfs, cwd=cwd))
    assert "HOST-CANARY" not in out
    assert out.splitlines()[0] == "/"
    assert "attack" in out.split()                                 # the container's own /


def test_symlinked_working_dir_resolves_inside_the_root(rootfs: Path, canary: Path):
    os.symlink("../../../../../../../../.." + str(canary), rootfs / "w")
    os.symlink(str(canary), rootfs / "w2")
    for cwd in ("/w", "/w2"):
        rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", "cat secret; echo made > made; pwd"], rootfs=rootfs,
                                    cwd=cwd))
        assert "HOST-CANARY" not in out, out
    assert sorted(os.listdir(canary)) == ["secret"]


# --- mount-point stubs ---------------------------------------------------------------------------------

def test_stub_cleanup_never_follows_a_planted_link(rootfs: Path, tmp_path: Path):
    """The step replaces the directory holding its mount points by a link to a host directory
    holding empty files of the same names: cleanup must not delete them."""
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("hosts", "hostname", "resolv.conf", "m"):
        (victim / name).write_bytes(b"")
    (victim / "sub").mkdir()
    shutil.rmtree(rootfs / "etc")                  # /etc and its files become stubs
    src = tmp_path / "src"
    src.mkdir()
    script = (f"mkdir -p /gone && mv /etc /gone/etc && ln -sfn {victim} /etc && "
              f"mv /data /gone/data && ln -sfn {victim} /data && echo planted")
    rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", script], rootfs=rootfs,
                                mounts=[Mount("/data/sub", source=str(src))]))
    assert (rc, out) == (0, "planted\n"), err
    assert os.readlink(rootfs / "etc") == str(victim)
    assert sorted(os.listdir(victim)) == ["hostname", "hosts", "m", "resolv.conf", "sub"]


def test_stubs_are_made_inside_the_root_and_removed(rootfs: Path, tmp_path: Path):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(str(victim), rootfs / "run")                    # an absolute link to a host path
    src = tmp_path / "f"
    src.write_text("file\n")
    rc, out, err = _run(RunSpec(args=["/bin/sh", "-c", "cat /run/x/f; test -d /run/t && echo tmpfs"],
                                rootfs=rootfs, mounts=[Mount("/run/x/f", source=str(src), readonly=True),
                                                       Mount("/run/t", type="tmpfs")]))
    assert (rc, out) == (0, "file\ntmpfs\n"), err
    assert os.listdir(victim) == []
    # made under the rootfs' own /<victim path>, and removed again
    assert not (rootfs / str(victim).lstrip("/") / "x").exists()
