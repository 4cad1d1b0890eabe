"""Containers with the real sandbox: `pybuild run/ps/stop/rm/logs/diff/commit` on the busybox image.

Most tests drive the CLI in a child process (as a user would, so exit codes and signals are
real); a few call builder.containers directly.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from builder.containers import lifecycle as ct
from builder.runtime.snapshot import LayerDirs
from registry.imports import import_image
from registry.store import Store
from tests.fixtures.cli import run_pybuild, start_pybuild
from tests.fixtures.trees import tree_digest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (namespaces, overlay mounts)"),
              pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs Debian's busybox-static")]

# The CLI runs ~50 times here (20 at once): let it cache byte code, outside the tree, even where
# the environment says not to write it.
CLI_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "pybuild-test-pycache")}


def pybuild(root: Path, *args: str, timeout: float = 120, check_rc: int | None = None,
            **kw) -> subprocess.CompletedProcess:
    """Run the CLI (`python -m builder --root ROOT ARGS...`)."""
    kw.setdefault("env", CLI_ENV)
    return run_pybuild(*args, root=root, timeout=timeout, check_rc=check_rc, **kw)


def popen(root: Path, *args: str) -> subprocess.Popen:
    return start_pybuild(*args, root=root, stderr=subprocess.PIPE, env=CLI_ENV)


@pytest.fixture
def img(busybox_image: Path) -> Path:
    """The store root with busybox:latest (CMD ["sh"]) and `app:1`, an image with a full config."""
    store = Store(busybox_image)
    rootfs = Path(busybox_image).parent / "app-rootfs"
    from tests.fixtures.images import make_busybox_rootfs
    make_busybox_rootfs(rootfs)
    from builder.engine.changes import apply_changes
    from registry.manifest import ImageConfig
    container = apply_changes(ImageConfig(), [
        'ENTRYPOINT ["echo", "ep"]', 'CMD ["default", "args"]', "ENV A=1 B=2",
        "WORKDIR /srv/app", "USER app"]).config
    import_image(store, rootfs, "app:1", container=container, created="2000-01-01T00:00:00Z")
    return busybox_image


# --- basics: output, exit codes, config and overrides -------------------------------------------

def test_output_streams_and_exit_code(img: Path):
    r = pybuild(img, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3", check_rc=3)
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    r = pybuild(img, "run", "--rm", "busybox", "ls", "-l", "/bin/busybox", check_rc=0)
    assert "busybox" in r.stdout and r.stdout.startswith("-rwx")


def test_docker_exit_codes_for_failures(img: Path):
    r = pybuild(img, "run", "--rm", "busybox", "no-such-command", check_rc=127)
    assert "executable file not found" in r.stderr
    pybuild(img, "run", "--rm", "busybox", "/etc/passwd", check_rc=126)
    r = pybuild(img, "run", "--rm", "--pull", "never", "missing:1", check_rc=125)
    assert "not in the store" in r.stderr
    r = pybuild(img, "run", "--rm", "-u", "nosuchuser", "busybox", "true", check_rc=125)
    assert "nosuchuser" in r.stderr


def test_command_override_rules():
    assert ct.command_of(["ep"], ["a"], None, []) == (["ep"], ["a"])
    assert ct.command_of(["ep"], ["a"], None, ["b", "c"]) == (["ep"], ["b", "c"])
    assert ct.command_of(["ep"], ["a"], "other", []) == (["other"], [])      # --entrypoint clears Cmd
    assert ct.command_of(["ep"], ["a"], "", ["x"]) == ([], ["x"])
    assert ct.command_of(None, ["sh"], None, []) == ([], ["sh"])


def test_image_config_applied_and_overridden(img: Path):
    r = pybuild(img, "run", "--rm", "app:1", check_rc=0)
    assert r.stdout == "ep default args\n"
    r = pybuild(img, "run", "--rm", "app:1", "x", "-n", check_rc=0)
    assert r.stdout == "ep x -n\n"
    script = 'echo "$A $B $C $D"; pwd; id -u; id -g; echo $HOME $HOSTNAME'
    r = pybuild(img, "run", "--rm", "--entrypoint", "sh", "-e", "B=3", "-e", "C=4", "-e", "D",
                "app:1", "-c", script, check_rc=0, env={**CLI_ENV, "D": "from-host"})
    lines = r.stdout.splitlines()
    assert lines[0] == "1 3 4 from-host"
    assert lines[1] == "/srv/app"                    # WORKDIR, created since the image lacks it
    assert lines[2:4] == ["1000", "1000"]            # USER app
    home, hostname = lines[4].split()
    assert home == "/home/app" and len(hostname) == 12
    r = pybuild(img, "run", "--rm", "--entrypoint", "", "-u", "1234:55", "-w", "/tmp", "app:1",
                "sh", "-c", "id -u; id -g; pwd", check_rc=0)
    assert r.stdout.split() == ["1234", "55", "/tmp"]
    r = pybuild(img, "run", "--rm", "-u", "root", "--entrypoint", "id", "app:1", "-u", check_rc=0)
    assert r.stdout == "0\n"


def test_volumes_read_only_and_read_write(img: Path, tmp_path: Path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "in").write_text("from host\n")
    r = pybuild(img, "run", "--rm", "-v", f"{vol}:/data:ro", "busybox", "sh", "-c",
                "cat /data/in; echo x > /data/out", check_rc=1)
    assert r.stdout == "from host\n" and "Read-only file system" in r.stderr
    assert not (vol / "out").exists()
    pybuild(img, "run", "--rm", "-v", f"{vol}:/data", "busybox", "sh", "-c",
            "echo written > /data/out", check_rc=0)
    assert (vol / "out").read_text() == "written\n"
    fresh = tmp_path / "created-by-run"
    pybuild(img, "run", "--rm", "-v", f"{fresh}:/x", "busybox", "touch", "/x/f", check_rc=0)
    assert (fresh / "f").is_file()
    pybuild(img, "run", "--rm", "-v", "relative:/x", "busybox", "true", check_rc=125)


def test_library_api(img: Path):
    """Everything the CLI does is a call: create, start (output to a callback), diff, commit, remove."""
    store = Store(img)
    c = ct.create(store, img, ct.RunOptions(image="busybox", command=["sh", "-c", "echo made > /made; echo out"],
                                           env=["X=1"]))
    assert c.args == ["sh", "-c", "echo made > /made; echo out"] and c.state.status == "created"
    chunks: list[tuple[str, bytes]] = []
    assert ct.start(c, output=lambda stream, data: chunks.append((stream, data))) == 0
    assert b"".join(d for s, d in chunks if s == "stdout") == b"out\n"
    assert ct.load(img, c.id).state.exit_code == 0
    assert ct.diff(c) == [("A", "/made")]
    desc = ct.commit(store, c, "made:1")
    assert store.resolve("made:1").digest == desc.digest
    assert "X=1" in store.image_config("made:1").config.env
    ct.remove(c)
    assert ct.list_containers(img, all=True) == []


def test_network_none_and_chroot_isolation_removed(img: Path):
    r = pybuild(img, "run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net", check_rc=0)
    assert r.stdout.split() == ["lo"]
    r = pybuild(img, "run", "--rm", "--isolation", "chroot", "-u", "app", "busybox", "sh", "-c",
                "id -u; exit 4", check_rc=125)
    assert "--isolation chroot was removed" in r.stderr and "runc" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""
    r = pybuild(img, "run", "--rm", "--isolation", "default", "-u", "app", "busybox", "sh", "-c",
                "id -u; exit 4", check_rc=4)
    assert r.stdout == "1000\n"


def test_default_network_is_private_with_outbound(img: Path):
    """`pybuild run` defaults to its own network namespace (a veth on the pybuild0 bridge as
    root, tests/builder/test_container_network.py; pasta's eth0 with PYBUILD_CONTAINER_NETWORK=pasta,
    as rootless), never the host's interfaces; through pasta names resolve via its DNS forwarder."""
    for backend in ("bridge", "pasta"):
        env = dict(CLI_ENV, PYBUILD_CONTAINER_NETWORK=backend)
        r = pybuild(img, "run", "--rm", "busybox", "sh", "-c", "ls /sys/class/net; cat /etc/resolv.conf",
                    check_rc=0, env=env)
        names = r.stdout.split("nameserver")[0].split()
        assert sorted(names) == ["eth0", "lo"], r.stdout
        assert ("nameserver 10.0.2.3" in r.stdout) == (backend == "pasta"), r.stdout
    # The namespace itself, not its interface list: other containers add and remove veths.
    r = pybuild(img, "run", "--rm", "--network", "host", "busybox", "readlink", "/proc/self/ns/net", check_rc=0)
    assert r.stdout.strip() == os.readlink("/proc/self/ns/net")


def test_runc_missing_is_an_error_not_a_fallback(img: Path, tmp_path: Path):
    """Without runc on PATH `run` fails saying so (it used to fall back to an unconfined chroot)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("python3", "mount", "umount"):
        path = shutil.which(tool)
        if path:
            os.symlink(path, bindir / tool)
    env = dict(os.environ, PATH=str(bindir))
    r = run_pybuild("run", "--rm", "busybox", "true", root=img, env=env)
    assert r.returncode == 125 and "runc not found" in r.stderr and "Traceback" not in r.stderr, r.stderr


# --- writable layers ---------------------------------------------------------------------------

def test_writes_are_private_to_each_container(img: Path):
    store = Store(img)
    image_before = store.resolve("busybox").digest
    layer_dir = LayerDirs(img).path(store.image_config("busybox").diff_ids[0])
    pybuild(img, "run", "--rm", "busybox", "true", check_rc=0)   # extracts the layer once
    layer_before = tree_digest(layer_dir)
    a = pybuild(img, "run", "-d", "--name", "a", "busybox", "sh", "-c",
                "echo mine > /tmp/a; echo changed > /etc/motd; rm /bin/vi; sleep 30", check_rc=0)
    assert len(a.stdout.strip()) == 64
    try:
        deadline = time.monotonic() + 30
        while "D /bin/vi" not in (running_diff := pybuild(img, "diff", "a").stdout):
            assert time.monotonic() < deadline, "container a never made its changes"
            time.sleep(0.1)
        # The runtime's mount points (/etc/hosts...) are not the container's changes.
        assert running_diff.splitlines() == ["C /bin", "D /bin/vi", "C /etc", "A /etc/motd", "C /tmp",
                                             "A /tmp/a"]
        r = pybuild(img, "commit", "a", "too-early:1")
        assert r.returncode == 1 and "stop it first" in r.stderr
        # Another container of the same image, while the first one still runs.
        r = pybuild(img, "run", "--rm", "busybox", "sh", "-c",
                    "cat /tmp/a; cat /etc/motd; ls /bin/vi", check_rc=0)
        assert "can't open '/tmp/a'" in r.stderr and r.stdout == "/bin/vi\n"
    finally:
        pybuild(img, "rm", "-f", "a", check_rc=0)
    assert tree_digest(layer_dir) == layer_before
    assert store.resolve("busybox").digest == image_before
    assert "a" not in pybuild(img, "ps", "-a").stdout.split()


def test_diff_and_commit_round_trip(img: Path, registry, tmp_path: Path):
    pybuild(img, "run", "--name", "w", "busybox", "sh", "-c",
            "echo hi > /tmp/new; mkdir -p /opt/x; rm /bin/vi; echo extra >> /etc/passwd; "
            "rm -rf /home/app; mkdir /home/app; touch /home/app/only", check_rc=0)
    r = pybuild(img, "diff", "w", check_rc=0)
    assert r.stdout.splitlines() == [
        "C /bin", "D /bin/vi", "C /etc", "C /etc/passwd", "C /home", "C /home/app", "A /home/app/only",
        "A /opt", "A /opt/x", "C /tmp", "A /tmp/new"]
    r = pybuild(img, "commit", "-m", "my change", "-a", "me", "-c", "ENV COMMITTED=yes", "w", "mine:v1",
                check_rc=0)
    digest = r.stdout.strip()
    assert digest.startswith("sha256:")
    store = Store(img)
    cfg = store.image_config("mine:v1")
    base = store.image_config("busybox")
    assert cfg.diff_ids[:-1] == base.diff_ids and len(cfg.diff_ids) == len(base.diff_ids) + 1
    assert cfg.history[-1].comment == "my change" and cfg.history[-1].author == "me"
    assert cfg.history[-1].created_by.startswith("sh -c 'echo hi > /tmp/new")
    assert "COMMITTED=yes" in cfg.config.env
    check = ("cat /tmp/new; ls /bin/vi 2>&1; tail -1 /etc/passwd; ls /home/app; echo $COMMITTED; "
             "test -d /opt/x && echo dir")
    r = pybuild(img, "run", "--rm", "mine:v1", "sh", "-c", check, check_rc=0)
    assert r.stdout.splitlines() == ["hi", "ls: /bin/vi: No such file or directory", "extra", "only",
                                     "yes", "dir"]
    # The committed image pushes, and a fresh store pulls it on `run` and sees the change.
    ref = f"{registry.host}/run-test/mine:v1"
    pybuild(img, "push", "mine:v1", ref, check_rc=0)
    fresh = tmp_path / "fresh-root"
    r = pybuild(fresh, "run", "--rm", ref, "sh", "-c", "cat /tmp/new; ls /bin/vi", check_rc=1)
    assert r.stdout == "hi\n"
    # It builds on like any image.
    from tests.fixtures.building import build_in
    build_in(img, tmp_path / "ctx", "FROM mine:v1\nRUN cat /tmp/new > /copied\n", tags=["built:1"])
    r = pybuild(img, "run", "--rm", "built:1", "cat", "/copied", check_rc=0)
    assert r.stdout == "hi\n"


def test_commit_without_changes_adds_no_layer(img: Path):
    pybuild(img, "run", "--name", "clean", "busybox", "true", check_rc=0)
    assert pybuild(img, "diff", "clean", check_rc=0).stdout == ""
    pybuild(img, "commit", "clean", "same:1", check_rc=0)
    store = Store(img)
    cfg = store.image_config("same:1")
    assert cfg.diff_ids == store.image_config("busybox").diff_ids
    assert cfg.history[-1].empty_layer and cfg.config.cmd == ["true"]


# --- lifecycle: -d, ps, logs, stop, rm, names ----------------------------------------------------

def test_detached_ps_logs_stop_rm(img: Path):
    cid = pybuild(img, "run", "-d", "--name", "svc", "busybox", "sh", "-c",
                  'echo started; echo warn >&2; trap "echo stopping; exit 42" TERM; '
                  "while true; do sleep 0.1; done", check_rc=0).stdout.strip()
    deadline = time.monotonic() + 30
    while "started" not in pybuild(img, "logs", "svc").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ps = pybuild(img, "ps", check_rc=0).stdout
    assert cid[:12] in ps and "Up " in ps and "svc" in ps
    pybuild(img, "run", "--name", "svc", "busybox", "true", check_rc=125)     # name taken
    r = pybuild(img, "rm", "svc")
    assert r.returncode == 1 and "is running" in r.stderr
    pybuild(img, "stop", cid[:8], check_rc=0)
    logs = pybuild(img, "logs", "svc", check_rc=0)
    assert logs.stdout == "started\nstopping\n" and logs.stderr == "warn\n"
    assert cid[:12] not in pybuild(img, "ps").stdout
    assert "Exited (42)" in pybuild(img, "ps", "-a").stdout
    pybuild(img, "rm", "svc", check_rc=0)
    assert cid[:12] not in pybuild(img, "ps", "-a").stdout
    assert not (img / "containers" / cid).exists()
    assert not any((img / "snapshots").iterdir())
    pybuild(img, "run", "--rm", "--name", "svc", "busybox", "true", check_rc=0)   # name free again
    assert pybuild(img, "ps", "-a", check_rc=0).stdout.count("\n") == 1      # --rm left nothing


def test_logs_follow_until_exit(img: Path):
    cid = pybuild(img, "run", "-d", "busybox", "sh", "-c",
                  "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo bye >&2; exit 9",
                  check_rc=0).stdout.strip()
    r = pybuild(img, "logs", "-f", cid, check_rc=0)
    assert r.stdout == "line 1\nline 2\nline 3\n" and r.stderr == "bye\n"
    assert "Exited (9)" in pybuild(img, "ps", "-a").stdout


def test_rm_cleans_up_after_a_killed_supervisor(img: Path):
    cid = pybuild(img, "run", "-d", "--name", "orphan", "busybox", "sleep", "300", check_rc=0).stdout.strip()
    c = ct.load(img, cid)
    bundle = str(img / "containers" / cid / "run")
    deadline = time.monotonic() + 10
    # "running" is recorded before the network and runc are set up: wait for runc's container.
    while bundle not in subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(c.state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "Dead" not in pybuild(img, "ps", "-a").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    bundle = str(img / "containers" / cid / "run")
    runc = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True).stdout
    assert bundle in runc                        # the container outlived its supervisor
    pybuild(img, "rm", "orphan", check_rc=0)
    runc = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True).stdout
    assert bundle not in runc
    assert str(img) not in Path("/proc/self/mountinfo").read_text()
    assert not (img / "containers" / cid).exists()


def test_container_keeps_its_image_alive_across_gc(img: Path):
    pybuild(img, "run", "--name", "keep", "busybox", "true", check_rc=0)
    pybuild(img, "rmi", "busybox", check_rc=0)
    pybuild(img, "commit", "keep", "kept:1", check_rc=0)
    r = pybuild(img, "run", "--rm", "kept:1", "echo", "alive", check_rc=0)
    assert r.stdout == "alive\n"


# --- signals -------------------------------------------------------------------------------------

def _start_ready(root: Path, *args: str) -> subprocess.Popen:
    p = popen(root, "run", "--rm", *args)
    line = p.stdout.readline()
    assert line == "ready\n", p.stderr.read()
    return p


@pytest.mark.parametrize("isolation", ["oci"])
def test_sigterm_stops_the_container(img: Path, isolation: str):
    p = _start_ready(img, "--isolation", isolation, "busybox", "sh", "-c",
                     'trap "echo got TERM; exit 42" TERM; echo ready; while true; do sleep 0.1; done')
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=10)
    assert p.returncode == 42 and out == "got TERM\n"
    # A plain `sleep` as first process ignores SIGTERM: SIGKILL follows after the stop timeout.
    p = _start_ready(img, "--isolation", isolation, "--stop-timeout", "1", "busybox", "sh", "-c",
                     "echo ready; exec sleep 300")
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=15)
    assert p.returncode == 137


def test_sigint_is_forwarded(img: Path):
    p = _start_ready(img, "busybox", "sh", "-c",
                     'trap "echo got INT; exit 5" INT; echo ready; while true; do sleep 0.1; done')
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 5 and out == "got INT\n"


def test_stop_signal_of_the_image_is_honoured(img: Path):
    pybuild(img, "run", "--name", "base", "busybox", "true", check_rc=0)
    pybuild(img, "commit", "-c", "STOPSIGNAL SIGUSR1", "base", "usr1:1", check_rc=0)
    p = _start_ready(img, "usr1:1", "sh", "-c",
                     'trap "echo got USR1; exit 7" USR1; trap "echo got TERM; exit 8" TERM; '
                     "echo ready; while true; do sleep 0.1; done")
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 7 and out == "got USR1\n"


# --- many at once ----------------------------------------------------------------------------------

def test_twenty_containers_of_one_image_at_once(img: Path, tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    n = 20
    script = ('echo "$N" > /tmp/me; touch /shared/ready-$N; '
              "while [ ! -e /shared/go ]; do sleep 0.1; done; cat /tmp/me")
    procs = [popen(img, "run", "--rm", "-e", f"N={i}", "-v", f"{shared}:/shared", "busybox", "sh", "-c", script)
             for i in range(n)]
    try:
        deadline = time.monotonic() + 150
        while len(list(shared.glob("ready-*"))) < n:
            assert time.monotonic() < deadline, f"only {len(list(shared.glob('ready-*')))} of {n} started"
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.poll() is not None]
            time.sleep(0.2)
        # All twenty are running now, each with its own writable layer.
        assert pybuild(img, "ps", "-q").stdout.count("\n") == n
        (shared / "go").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * n
    assert [o for o, _ in outs] == [f"{i}\n" for i in range(n)]
    assert not any((img / "snapshots").iterdir())


# --- hostile WorkingDir ------------------------------------------------------------------------

def _with_workdir(root: Path, name: str, workdir: str, link: tuple[str, str] | None = None) -> None:
    """Tag ``name``: busybox with its config's WorkingDir set to ``workdir`` as is (and an
    extra layer holding the symlink ``link`` = (path, target))."""
    import gzip
    import io
    import tarfile
    from registry.manifest import Descriptor, Manifest
    store = Store(root)
    m = store.get_manifest(store.resolve("busybox:latest").digest)
    cfg = store.get_config(m.config.digest)
    layers = list(m.layers)
    if link:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tf.addfile(info)
        tar = buf.getvalue()
        blob = store.put_blob(gzip.compress(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        cfg.diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        layers.append(Descriptor(blob.media_type, blob.digest, blob.size))
    cfg.config.working_dir = workdir
    store.tag(name, store.put_manifest(Manifest(config=store.put_config(cfg), layers=layers)))


@pytest.mark.parametrize("workdir", ["../../../../../../../..", "/x/..", "/a/./b/", "a/../../.."])
def test_odd_working_dir_stays_inside(img: Path, tmp_path: Path, workdir: str):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret").write_text("HOST-CANARY\n")
    _with_workdir(img, "wd:1", workdir)
    r = pybuild(img, "run", "--rm", "wd:1", "sh", "-c", f"pwd; cat {str(canary / 'secret').lstrip('/')}")
    assert "Traceback" not in r.stderr and "HOST-CANARY" not in r.stdout, r.stderr
    assert r.stdout.splitlines()[0] in ("/", "/a/b"), r.stdout
    assert sorted(os.listdir(canary)) == ["secret"]


def test_symlinked_working_dir_resolves_inside(img: Path, tmp_path: Path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret").write_text("HOST-CANARY\n")
    _with_workdir(img, "wdl:1", "/w/new", link=("w", str(canary)))
    r = pybuild(img, "run", "--rm", "wdl:1", "sh", "-c", "pwd; cat ../secret; echo x > made; ls", check_rc=0)
    assert "HOST-CANARY" not in r.stdout and "made" in r.stdout
    assert sorted(os.listdir(canary)) == ["secret"]


def test_rm_releases_the_network_of_a_killed_supervisor(img: Path):
    """A SIGKILLed supervisor leaves its pasta and bound network namespace: `rm` releases them."""
    cid = pybuild(img, "run", "-d", "busybox", "sleep", "300", check_rc=0).stdout.strip()
    c = ct.load(img, cid)
    bundle = str(img / "containers" / cid / "run")
    deadline = time.monotonic() + 10
    while bundle not in subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(c.state.pid, signal.SIGKILL)
    assert bundle in Path("/proc/self/mountinfo").read_text()
    pybuild(img, "rm", "-f", cid, check_rc=0)
    assert bundle not in Path("/proc/self/mountinfo").read_text()
    pastas = [p for p in Path("/proc").glob("[0-9]*/cmdline") if bundle.encode() in p.read_bytes()]
    assert pastas == []
    assert not (img / "containers" / cid).exists()
