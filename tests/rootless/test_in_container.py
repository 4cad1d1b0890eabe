"""pybuild inside an unprivileged container: rootful podman without --privileged (podman's
default capabilities, seccomp profile and masked /proc), the store on a volume.

The container's filesystem is a few directories with the host's /usr bound read-only (Debian's
python3, runc, mount) and this checkout and its venv bound at their own paths, so that the test
runs what the checkout holds; podman keeps its images and containers in the test's own storage.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.cli import REPO, run_pybuild
from tests.fixtures.images import make_busybox_rootfs

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="starts rootful podman containers: needs root"),
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed (Debian's podman)")]

VENV = Path(sys.executable).parent.parent
SDE = "1700000000"
DOCKERFILE = """\
FROM busybox
RUN echo hi > /hi && rm -rf /home/app /bin/vi && mkdir /home/app && chown 1000:1000 /home/app
USER app
RUN id > /tmp/id
"""


class Pod:
    """podman with its own storage, running this checkout's CLI in the test image."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        # podman refuses a runroot path longer than 50 characters: pytest's are longer.
        self.runroot = Path(tempfile.mkdtemp(prefix="pb-prun-", dir="/tmp"))
        self.base = ["podman", "--root", str(tmp / "proot"), "--runroot", str(self.runroot)]
        rootfs = tmp / "image"
        for d in ("etc", "tmp", "root", "proc", "sys", "dev", "run", "var/tmp", "usr", "store", "ctx"):
            (rootfs / d).mkdir(parents=True)
        for link in ("bin", "lib", "lib64", "sbin"):
            os.symlink(f"usr/{link}", rootfs / link)
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        (rootfs / "etc" / "canary").write_text("the container's own file\n")
        os.chmod(rootfs / "tmp", 0o1777)
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
        r = subprocess.run([*self.base, "import", "-q", "-", "localhost/pybuild-in-container:test"], input=tar,
                           capture_output=True)
        assert r.returncode == 0, r.stderr.decode(errors="replace")

    PYBUILD = f"{VENV / 'bin' / 'python3'} -m builder --root /store"

    def run(self, *cmd: str, volumes: dict[Path, str], timeout: float = 600,
            options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """``cmd`` in a new container of the test image (``podman run --rm [options]``)."""
        binds = {Path("/usr"): "/usr:ro", REPO: f"{REPO}:ro", VENV: f"{VENV}:ro", **volumes}
        argv = [*self.base, "run", "--rm", *options,
                *(a for src, dst in binds.items() for a in ("-v", f"{src}:{dst}")),
                "-e", f"PYTHONPATH={REPO}", "-e", f"SOURCE_DATE_EPOCH={SDE}", "localhost/pybuild-in-container:test",
                *cmd]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def pybuild(self, *args: str, volumes: dict[Path, str], timeout: float = 600,
                options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return self.run(*self.PYBUILD.split(), *args, volumes=volumes, timeout=timeout, options=options)

    def close(self) -> None:
        subprocess.run([*self.base, "rm", "-a", "-f"], capture_output=True)
        subprocess.run(["umount", "-R", str(self.tmp / "proot" / "overlay")], capture_output=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


@pytest.fixture
def pod(tmp_path: Path):
    p = Pod(tmp_path)
    yield p
    p.close()


def _busybox_context(pod, tmp_path: Path, dockerfile: str) -> dict:
    """tmp_path/store (a store volume) and tmp_path/ctx (a busybox rootfs and ``dockerfile``),
    busybox imported into the store from inside the container; the volumes to mount."""
    store, ctx = tmp_path / "store", tmp_path / "ctx"
    store.mkdir()
    make_busybox_rootfs(ctx / "rootfs")
    (ctx / "Dockerfile").write_text(dockerfile)
    vols = {store: "/store", ctx: "/ctx:ro"}
    r = pod.pybuild("import", "/ctx/rootfs", "busybox:latest", volumes=vols)
    assert r.returncode == 0, r.stderr
    return vols


def test_build_and_run_with_run_steps_inside_an_unprivileged_podman_container(pod, tmp_path):
    """No --privileged: pybuild (root there, without CAP_SYS_ADMIN) enters a user namespace of
    its own, mounts overlay with userxattr on the volume and runs runc sharing the container's
    pid namespace; the image is the one root builds on the host, and it runs."""
    store, ctx = tmp_path / "store", tmp_path / "ctx"
    vols = _busybox_context(pod, tmp_path, DOCKERFILE)
    r = pod.pybuild("build", "--progress", "plain", "--iidfile", "/store/iid", "-t", "app", "/ctx", volumes=vols)
    assert r.returncode == 0, r.stderr
    assert "warning: the kernel refused the overlay mount" not in r.stderr       # not the copy fallback
    assert "isolation none" not in r.stderr                                  # a namespace could be made
    assert (store / "mode").read_text().strip() == "rootless"
    r = pod.pybuild("run", "--rm", "app", "sh", "-c", "cat /tmp/id; ls -lnd /home/app; cat /hi", volumes=vols)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "uid=1000(app) gid=1000(app)" and "1000     1000" in r.stdout

    host = tmp_path / "hoststore"
    run_pybuild("import", ctx / "rootfs", "busybox:latest", root=host, check_rc=0,
                env={**os.environ, "SOURCE_DATE_EPOCH": SDE})
    run_pybuild("build", "-q", "--iidfile", tmp_path / "iid", "-t", "app", ctx, root=host, check_rc=0,
                env={**os.environ, "SOURCE_DATE_EPOCH": SDE})
    assert (store / "iid").read_text() == (tmp_path / "iid").read_text()


def test_a_run_step_in_the_container_cannot_reach_pybuilds_filesystem_through_proc(pod, tmp_path):
    """The step shares the container's pid namespace and sees its processes, but it cannot
    enter them: /proc/PID/root of pybuild (in the same user namespace, with more capabilities)
    and of the container's first process (in the parent one) are refused, so the container's
    own files stay out of reach."""
    vols = _busybox_context(pod, tmp_path, (
        "FROM busybox\nRUN ps > /ps.txt; for p in $(ls /proc | grep -E '^[0-9]+$'); do "
        "cat /proc/$p/root/etc/canary 2>/dev/null && echo REACHED $p; "
        "echo pwned 2>/dev/null > /proc/$p/root/etc/canary && echo WROTE $p; done; true\n"))
    # The build, then the container's canary, in one container.
    r = pod.run("sh", "-c", f"{pod.PYBUILD} build --progress plain -t probe /ctx && cat /etc/canary", volumes=vols)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the container's own file\n"                  # not overwritten
    assert "container's own file" not in r.stderr                    # not read
    assert "python3 -m builder" in pod.pybuild("run", "--rm", "probe", "cat", "/ps.txt", volumes=vols).stdout


def test_a_run_step_in_the_container_cannot_read_pybuilds_environment_or_fds(pod, tmp_path):
    """The job's environment (a CI token) and the fds of pybuild, runc and the job's shell,
    which the step sees as processes of its pid namespace: /proc/PID/environ, the targets of
    /proc/PID/fd/*, /proc/PID/cwd and /proc/PID/mem of every pid are refused to it (no
    CAP_SYS_PTRACE, and fewer capabilities than pybuild); only its own shell answers. (It can
    list their fd numbers, read their command lines and signal pybuild, as SECURITY.md 4c says.)"""
    vols = _busybox_context(pod, tmp_path, (
        "FROM busybox\nRUN me=$$; for p in $(ls /proc | grep -E '^[0-9]+$'); do "
        "tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep CI_TOKEN && echo GOT-E\"\"NV $p; "
        "for f in /proc/$p/fd/*; do readlink $f 2>/dev/null | grep -q . && echo GOT-F\"\"D $(cat /proc/$p/comm) $p; done; "
        "ls /proc/$p/cwd/ 2>/dev/null | grep -q . && echo GOT-C\"\"WD $(cat /proc/$p/comm) $p; "
        "head -c 1 /proc/$p/mem 2>/dev/null >/dev/null && echo GOT-M\"\"EM $p; "
        "[ \"$(cat /proc/$p/comm)\" = python3 ] && kill -0 $p && echo CAN-SIG\"\"NAL $p; done; "
        "echo self=$me seen=$(ls /proc | grep -cE '^[0-9]+$'); true\n"))
    r = pod.run("sh", "-c", f"{pod.PYBUILD} build --progress plain --no-cache -t probe /ctx", volumes=vols,
                options=("-e", "CI_TOKEN=tok-s3cret-value"))
    assert r.returncode == 0, r.stderr
    assert "tok-s3cret-value" not in r.stdout + r.stderr
    got = [l.split()[-2:] for l in r.stderr.splitlines() if " GOT-" in l and "$p" not in l]
    (me, seen), = [l.split("self=", 1)[1].replace("seen=", "").split() for l in r.stderr.splitlines()
                  if " self=" in l and "$me" not in l]
    assert int(seen) > 3, r.stderr           # it does see pybuild's and the job's processes
    # Only the step's own shell may answer (the environment it has is the build's, no token).
    assert [g for g in got if g[0] == "GOT-ENV" or g[1] != me] == [], got
    assert [g for g in got if g[1] == me], r.stderr          # the probe works: on the step's own shell
    # What SECURITY.md 4c states it can do: signal pybuild (uid 0 in the same namespace).
    assert [l for l in r.stderr.splitlines() if " CAN-SIGNAL " in l and "$p" not in l], r.stderr


@pytest.mark.parametrize("tun", [False, True], ids=["no-tun", "tun"])
def test_run_steps_share_the_containers_network_only_without_tun(pod, tmp_path, tun):
    """SECURITY.md 4c: without /dev/net/tun (podman's and Docker's default) a RUN step shares
    the container's network namespace and reaches a server on the container's loopback, and
    pybuild says so; with `--device /dev/net/tun` the step gets pasta's private network and
    does not."""
    # busybox's nc, not its wget (which crashes in this static build).
    vols = _busybox_context(pod, tmp_path, "FROM busybox\nRUN printf 'GET /canary HTTP/1.0\\r\\n\\r\\n' | "
                                           "nc -w 5 127.0.0.1 8765 || echo NOT-RE\"\"ACHED\n")
    server = "/usr/bin/python3 -m http.server --bind 127.0.0.1 -d /etc 8765 >/dev/null 2>&1 &"
    r = pod.run("sh", "-c", f"{server} sleep 1; {pod.PYBUILD} build --progress plain --no-cache /ctx", volumes=vols,
                options=("--device", "/dev/net/tun") if tun else ())
    assert r.returncode == 0, r.stderr
    if tun:
        assert "NOT-REACHED" in r.stderr and "container's own file" not in r.stderr, r.stderr
    else:
        assert "container's own file" in r.stderr and "NOT-REACHED" not in r.stderr, r.stderr
        assert "without /dev/net/tun" in r.stderr


def test_a_seccomp_profile_refusing_user_namespaces_is_a_clear_error(pod, tmp_path):
    """podman's profile with unshare denied (EPERM, as Docker's default profile denies it without
    CAP_SYS_ADMIN): a container (which needs namespaces) is refused: pybuild says it cannot
    create a user namespace and why, no traceback. (Builds there use isolation none:
    tests/rootless/test_isolation_none.py.)"""
    import json
    profile = json.loads(Path("/usr/share/containers/seccomp.json").read_text())
    profile["syscalls"].insert(0, {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    (tmp_path / "seccomp.json").write_text(json.dumps(profile))
    store = tmp_path / "store"
    store.mkdir()
    r = pod.pybuild("run", "--rm", "busybox", "true", volumes={store: "/store"},
                    options=("--security-opt", f"seccomp={tmp_path / 'seccomp.json'}"))
    assert r.returncode == 125, r
    assert "cannot create a user namespace" in r.stderr and "seccomp" in r.stderr and "Traceback" not in r.stderr
