"""Isolation none: builds inside a container whose seccomp profile refuses user namespaces.

The container is the test image of test_in_container.py (the host's /usr, this checkout and
its venv bound in) under rootful podman without --privileged, given what Docker gives a
container by default: its capabilities (podman's plus CAP_MKNOD, CAP_NET_RAW,
CAP_AUDIT_WRITE) and a seccomp profile like Docker's default one (containers' default
seccomp.json with ``unshare`` refused, ``clone`` allowed only without namespace flags, and
``clone3`` ENOSYS, as moby's profile has them without CAP_SYS_ADMIN). pybuild cannot make a
user namespace there, says so in one line, and runs RUN steps chrooted in a copied rootfs.
The claims of SECURITY.md 4d (what this mode does not isolate) are each shown here.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pybuild
from tests.fixtures.images import make_busybox_rootfs
from tests.rootless.test_in_container import DOCKERFILE, SDE, Pod, pod  # noqa: F401  (pod: the fixture)
from tests.security.test_confinement import attack  # noqa: F401  (the static attack helper's fixture)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="starts rootful podman containers: needs root"),
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed (Debian's podman)")]

NS_FLAGS = 0x7E020000          # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
NOTICE = "RUN steps use --isolation none"

# Replacing and deleting directories and files, chown, a file made a directory, as USER.
REPLACING = DOCKERFILE + """\
USER root
RUN rm -rf /var && mkdir /var && echo x > /var/new && chown -R 1000:1000 /var \\
 && rm /etc/group && mkdir /etc/group.d && echo hi > /dev/null && rm -rf /usr/bin/env && mkdir /usr/bin/env
RUN rm -rf /home && ln -s /tmp /home && chmod 0700 /root
"""


def docker_like(tmp_path: Path) -> tuple[str, ...]:
    """podman options giving a container Docker's default capabilities and a seccomp profile
    refusing user namespaces as Docker's default one does."""
    profile = json.loads(Path("/usr/share/containers/seccomp.json").read_text())
    refused = {"clone", "clone3", "unshare"}
    rules = []
    for rule in profile["syscalls"]:
        names = [n for n in rule["names"] if n not in refused]
        if names:
            rules.append({**rule, "names": names})
    rules += [
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
    ]
    path = tmp_path / "docker-like-seccomp.json"
    path.write_text(json.dumps({**profile, "syscalls": rules}))
    return ("--security-opt", f"seccomp={path}", "--cap-add", "MKNOD", "--cap-add", "NET_RAW",
            "--cap-add", "AUDIT_WRITE")


def _context(tmp_path: Path, dockerfile: str) -> tuple[Path, Path]:
    store, ctx = tmp_path / "store", tmp_path / "ctx"
    store.mkdir()
    make_busybox_rootfs(ctx / "rootfs")
    (ctx / "Dockerfile").write_text(dockerfile)
    return store, ctx


def test_a_build_where_no_user_namespace_can_be_made_gives_the_root_builds_image(pod, tmp_path):
    """The build selects isolation none by itself (one notice), and its image, layers and all,
    is the one root builds on the host with runc and overlay."""
    store, ctx = _context(tmp_path, REPLACING)
    vols, opts = {store: "/store", ctx: "/ctx:ro"}, docker_like(tmp_path)
    r = pod.pybuild("import", "/ctx/rootfs", "busybox:latest", volumes=vols, options=opts)
    assert r.returncode == 0, r.stderr
    r = pod.pybuild("build", "--progress", "plain", "--iidfile", "/store/iid", "-t", "app", "/ctx",
                    volumes=vols, options=opts)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(NOTICE) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "warning: the kernel refused the overlay mount" not in r.stderr     # chosen, not a fallback
    assert (store / "mode").read_text().strip() == "rootless"                # user.* xattrs, as nested

    host = tmp_path / "hoststore"
    env = {**os.environ, "SOURCE_DATE_EPOCH": SDE}
    run_pybuild("import", ctx / "rootfs", "busybox:latest", root=host, check_rc=0, env=env)
    run_pybuild("build", "-q", "--iidfile", tmp_path / "iid", "-t", "app", ctx, root=host, check_rc=0, env=env)
    assert (store / "iid").read_text() == (tmp_path / "iid").read_text()

    # The same image runs on the host: the steps' files, owners and deletions are there.
    r = run_pybuild("run", "--rm", "app", "sh", "-c",
                    "cat /tmp/id; ls -lnd /home/app /var/new; ls /var /etc; test -d /usr/bin/env && echo dir; "
                    "test -e /bin/vi || echo no-vi; ls -ld /home", root=host, check_rc=0, env=env)
    out = r.stdout
    assert out.startswith("uid=1000(app) gid=1000(app)\n"), out
    assert "1000     1000" in out and "new\n" in out and "group.d" in out and "group\n" not in out
    assert "dir\n" in out and "no-vi" in out and "/home -> /tmp" in out


def test_what_isolation_none_does_not_isolate(pod, tmp_path, attack):  # noqa: F811
    """SECURITY.md 4d, each claim: the step is the container's root (it leaves the chroot and
    reads and writes the container's own files), it can signal pybuild (same pid namespace)
    and it reaches a server on the container's loopback (same network namespace)."""
    store, ctx = _context(tmp_path, "")
    shutil.copy2(attack, ctx / "attack")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nCOPY attack /attack\n"
        "RUN echo uid=$(id -u); /attack escape /etc/canary; "
        "kill -0 $PPID && echo signalled-pybuild-$PPID; echo proc-entries=$(ls /proc | wc -l); "
        f"wget -qO- http://127.0.0.1:{port}/marker; true\n")
    vols, opts = {store: "/store", ctx: "/ctx:ro"}, docker_like(tmp_path)
    assert pod.pybuild("import", "/ctx/rootfs", "busybox:latest", volumes=vols, options=opts).returncode == 0
    script = (f"mkdir /srv && echo LOOPBACK-MARKER > /srv/marker && cd /srv && "
              f"(python3 -m http.server -b 127.0.0.1 {port} >/dev/null 2>&1 &) && "
              f"for i in $(seq 50); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}))' "
              "2>/dev/null && break; sleep 0.1; done; "
              f"{pod.PYBUILD} build --progress plain -t probe /ctx; echo rc=$?; cat /etc/canary.pwned >/dev/null "
              "&& echo container-file-made")
    r = pod.run("sh", "-c", script, volumes=vols, options=opts)
    assert r.returncode == 0, r.stderr
    assert "rc=0" in r.stdout, r.stderr
    log = r.stderr
    assert "read ok the container's own file" in log, log                # out of the chroot
    assert "write ok" in log and "container-file-made" in r.stdout        # and written there
    assert "signalled-pybuild-" in log                                     # pybuild's pid, signalled
    assert "LOOPBACK-MARKER" in log                                        # the container's loopback
    assert " uid=0\n" in log and " proc-entries=0\n" in log              # root; no /proc in the chroot


def test_what_isolation_none_refuses_is_a_clear_error(pod, tmp_path):
    """Mounts, --network none, --isolation oci, containers and a missing CAP_SYS_CHROOT: each
    refused with what and why, before anything runs; the store keeps no half-built image."""
    store, ctx = _context(tmp_path, "FROM busybox\nRUN --mount=type=cache,target=/c true\n")
    vols, opts = {store: "/store", ctx: "/ctx:ro"}, docker_like(tmp_path)
    assert pod.pybuild("import", "/ctx/rootfs", "busybox:latest", volumes=vols, options=opts).returncode == 0
    cases = [
        (("build", "-t", "x", "/ctx"), opts, ["Dockerfile:2", "--mount=type=cache needs a mount"]),
        (("build", "--network", "none", "-t", "x", "-f", "/ctx/Dockerfile.run", "/ctx"), opts,
         ["--network none needs a network namespace"]),
        (("build", "--isolation", "oci", "-t", "x", "-f", "/ctx/Dockerfile.run", "/ctx"), opts,
         ["cannot create a user namespace", "--isolation oci needs one"]),
        (("run", "--rm", "busybox", "true"), opts, ["cannot create a user namespace", "containers"]),
        (("build", "-t", "x", "-f", "/ctx/Dockerfile.run", "/ctx"), (*opts, "--cap-drop", "SYS_CHROOT"),
         ["CAP_SYS_CHROOT"]),
    ]
    (ctx / "Dockerfile.run").write_text("FROM busybox\nRUN echo ran > /ran\n")
    for args, options, wanted in cases:
        r = pod.pybuild(*args, volumes=vols, options=options)
        assert r.returncode == (125 if args[0] == "run" else 1), (args, r)      # run: docker run's 125
        assert all(w in r.stderr for w in wanted) and "Traceback" not in r.stderr, (args, r.stderr)
    r = pod.pybuild("images", "--format", "json", volumes=vols, options=opts)
    assert r.returncode == 0 and '"x' not in r.stdout, r


# --- asked for explicitly, as root on the host ---------------------------------------------------

def _leftover(marker: str) -> list[int]:
    """Pids of processes whose command line is `sleep MARKER`."""
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and Path(f"/proc/{d}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                out.append(int(d))
        except OSError:
            continue
    return out


def test_explicit_isolation_none_on_the_host_gives_the_oci_image_and_leaves_nothing_running(tmp_path):
    """--isolation none where namespaces can be made (no notice then): the image is the oci
    one; a process the step left in the background is killed before the tree is diffed."""
    store, ctx = _context(tmp_path, REPLACING + "RUN (sleep 987651 &) ; echo left\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": SDE}
    ids = {}
    for mode in ("none", "oci"):
        root = tmp_path / f"store-{mode}"
        run_pybuild("import", ctx / "rootfs", "busybox:latest", root=root, check_rc=0, env=env)
        r = run_pybuild("build", "--isolation", mode, "--progress", "plain", "--iidfile", tmp_path / f"iid-{mode}",
                        "-t", "app", ctx, root=root, check_rc=0, env=env)
        assert NOTICE not in r.stderr
        ids[mode] = (tmp_path / f"iid-{mode}").read_text()
        if mode == "none":
            left = _leftover("987651")
            for pid in left:           # ours: started by this test's build
                os.kill(pid, 9)
            assert not left, "the step's background process outlived it"
    assert ids["none"] == ids["oci"]


def test_a_step_replacing_a_directory_by_a_link_gets_no_whiteout_through_it(tmp_path):
    """The tree diff once made the whiteouts of a removed directory's entries through the link
    that replaced it: as root on the host, `rm -rf /x && ln -s HOSTDIR /x` put character devices
    into HOSTDIR. Now the link covers them, as on an overlay."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("HOST-CANARY\n")
    store, ctx = _context(tmp_path, f"FROM busybox\nRUN mkdir -p /x/sub && echo 1 > /x/sub/f && echo 2 > /x/g\n"
                                    f"RUN rm -rf /x && ln -s {canary} /x\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": SDE}
    run_pybuild("import", ctx / "rootfs", "busybox:latest", root=store, check_rc=0, env=env)
    run_pybuild("build", "--isolation", "none", "-q", "-t", "app", ctx, root=store, check_rc=0, env=env)
    assert sorted(os.listdir(canary)) == ["keep"] and (canary / "keep").read_text() == "HOST-CANARY\n"
    r = run_pybuild("run", "--rm", "app", "sh", "-c", "readlink /x; ls /x/ 2>&1 | head -1", root=store, check_rc=0,
                    env=env)
    assert r.stdout.splitlines()[0] == str(canary)


def test_without_cap_mknod_device_nodes_of_layers_are_skipped(pod, tmp_path):
    """podman's default capabilities lack CAP_MKNOD: a base layer's device node is skipped (as
    rootless), not a failed extraction, and the build runs."""
    store, ctx = _context(tmp_path, "FROM busybox\nRUN ls /dev; echo ran > /ran\n")
    os.mknod(ctx / "rootfs" / "dev" / "null", 0o20666, os.makedev(1, 3))
    vols = {store: "/store", ctx: "/ctx:ro"}
    opts = docker_like(tmp_path)[:2]              # the profile, podman's capabilities
    assert pod.pybuild("import", "/ctx/rootfs", "busybox:latest", volumes=vols, options=opts).returncode == 0
    r = pod.pybuild("build", "--progress", "plain", "-t", "app", "/ctx", volumes=vols, options=opts)
    assert r.returncode == 0 and NOTICE in r.stderr, r.stderr


def test_an_environment_secret_works_and_a_secret_file_is_refused(tmp_path):
    """`--mount=type=secret,env=NAME` needs no mount: it works chrooted; a secret file would."""
    store, ctx = _context(tmp_path, "FROM busybox\n"
                                    "RUN --mount=type=secret,id=tok,env=TOK test \"$TOK\" = s3cret && echo secret-ok\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": SDE, "PB_TEST_TOK": "s3cret"}
    run_pybuild("import", ctx / "rootfs", "busybox:latest", root=store, check_rc=0, env=env)
    r = run_pybuild("build", "--isolation", "none", "--progress", "plain", "--secret", "id=tok,env=PB_TEST_TOK",
                    "-t", "app", ctx, root=store, check_rc=0, env=env)
    assert "secret-ok" in r.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n")
    r = run_pybuild("build", "--isolation", "none", "--secret", "id=tok,env=PB_TEST_TOK", "-t", "app2", ctx,
                    root=store, check_rc=1, env=env)
    assert "--mount=type=secret needs a mount" in r.stderr and "Traceback" not in r.stderr
