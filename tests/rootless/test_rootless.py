"""Rootless pybuild: the CLI run as the ordinary user pbuser (subordinate range 200000-265535,
made by scripts/setup.sh) builds with RUN, pushes to registry:2, pulls, runs, commits and
cleans up, with the same images as root.

Each test's stores live in a scratch directory the user owns; root's stores in pytest's tmp.
Skipped only where the kernel refuses the user namespace (the reason is pybuild's own message).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pybuild
from tests.fixtures.rootless import SUBID_START, RootlessUser, store_with, subid_owned

pytestmark = pytest.mark.skipif(shutil.which("runc") is None, reason="runc not installed (Debian's runc)")

SDE = "1700000000"
DOCKERFILE = """\
FROM busybox
RUN grep ' / ' /proc/mounts
RUN mkdir -p /srv/data/old && echo one > /srv/data/old/f && echo 'svc:x:1234:1234::/srv:/bin/sh' >> /etc/passwd \\
 && echo 'svc:x:1234:' >> /etc/group && chown -R 1234:1234 /srv/data && chown 65534:65534 /etc/group \\
 && touch /usr/bin/suid && chmod 4755 /usr/bin/suid
RUN rm -rf /srv/data/old /home/app /bin/vi && mkdir -p /home/app/new /srv/data/old && echo two > /home/app/new/g \\
 && chown -R svc:svc /home/app && mkfifo /srv/fifo && ln -s /srv/data /srv/link && ln /etc/passwd /etc/passwd.hard
USER svc
RUN id > /tmp/id.txt && echo 'as svc' > /tmp/svc.txt
CMD ["sh", "-c", "id; cat /tmp/id.txt; ls -ln /home/app/new /srv/data; cat /home/app/new/g; ls /srv/data/old | wc -l"]
"""


def _context(user: RootlessUser, scratch: Path) -> Path:
    ctx = scratch / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    user.give(ctx)
    return ctx


def _image(root: Path, tag: str) -> dict:
    """Manifest digest, config digest and layer diffIDs/digests of ``tag`` in the store at ``root``."""
    images = root / "images"
    index = json.loads((images / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == f"{tag}:latest":
            man = json.loads((images / "blobs" / "sha256" / m["digest"][7:]).read_text())
            cfg = json.loads((images / "blobs" / "sha256" / man["config"]["digest"][7:]).read_text())
            return {"manifest": m["digest"], "config": man["config"]["digest"],
                    "layers": [l["digest"] for l in man["layers"]], "diff_ids": cfg["rootfs"]["diff_ids"],
                    "user": cfg["config"].get("User"), "cmd": cfg["config"].get("Cmd")}
    raise AssertionError(f"{tag} not in {images}/index.json: {index}")


def test_rootless_build_gives_the_root_build_and_uses_userxattr_overlay(user, scratch, tmp_path, _busybox_layout):
    """The same Dockerfile (chown, deleted files, replaced directories, setuid, fifo, links,
    USER) built by pbuser and by root: the same layers and config, so the same image digest.
    Rootless, the RUN's root is a native overlay mounted with userxattr (not the copy
    fallback); the layers on disk are owned by the subordinate ids and opaque directories
    carry user.overlay.opaque."""
    ustore = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch)
    r = user.pybuild("build", "--progress", "plain", "-t", "app", ctx, root=ustore,
                     env={"SOURCE_DATE_EPOCH": SDE}, check_rc=0)
    mounts = [l for l in r.stderr.splitlines() if " overlay / overlay " in l or "overlay / " in l]
    assert mounts and "userxattr" in mounts[0], r.stderr

    rstore = store_with(_busybox_layout, tmp_path / "rootstore")
    rr = run_pybuild("build", "--progress", "plain", "-t", "app", ctx, root=rstore, check_rc=0,
                     env={**os.environ, "SOURCE_DATE_EPOCH": SDE})
    root_mounts = [l for l in rr.stderr.splitlines() if "overlay / " in l]
    assert root_mounts and "userxattr" not in root_mounts[0]

    mine, theirs = _image(ustore, "app"), _image(rstore, "app")
    assert mine == theirs
    assert mine["user"] == "svc" and len(mine["layers"]) == 4    # base + 3 RUN with changes

    assert (ustore / "mode").read_text().strip() == "rootless"
    assert (rstore / "mode").read_text().strip() == "rootful"
    layers = ustore / "layers"
    owned = {p.stat().st_uid for p in layers.glob("*/srv/data")}
    assert owned == {SUBID_START + 1234 - 1}, owned         # container uid 1234 on the host
    opaque = [p for p in layers.glob("*/home/app") if "user.overlay.opaque" in os.listxattr(p)]
    assert opaque, "the replaced /home/app is not an opaque directory in any extracted layer"
    assert not any("trusted.overlay.opaque" in os.listxattr(p) for p in layers.glob("*/home/app"))


def test_rootless_push_pull_run_equals_root(user, scratch, tmp_path, _busybox_layout, registry):
    """pbuser pushes the image to registry:2, pulls it into a fresh store and runs it: the
    output is the root run's of the root build (ids, owners, deleted and replaced content)."""
    ustore = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch)
    ref = f"{registry.host}/rootless/app:1"
    user.pybuild("build", "-q", "-t", ref, "--push", ctx, root=ustore, env={"SOURCE_DATE_EPOCH": SDE}, check_rc=0)
    fresh = scratch / "fresh"
    user.pybuild("pull", "-q", ref, root=fresh, check_rc=0)
    out = user.pybuild("run", "--rm", ref, root=fresh, check_rc=0).stdout

    # Root builds the same, and runs what it pulls of its own push: the same output.
    rstore = store_with(_busybox_layout, tmp_path / "rootstore")
    root_ref = f"{registry.host}/rootful/app:1"
    run_pybuild("build", "-q", "-t", "app", ctx, root=rstore, check_rc=0, env={**os.environ, "SOURCE_DATE_EPOCH": SDE})
    run_pybuild("push", "-q", "app", root_ref, root=rstore, check_rc=0)
    run_pybuild("pull", "-q", root_ref, root=tmp_path / "rootfresh", check_rc=0)
    root_out = run_pybuild("run", "--rm", root_ref, root=tmp_path / "rootfresh", check_rc=0).stdout
    assert out == root_out
    assert "uid=1234(svc)" in out and "two" in out and out.rstrip().endswith("0")
    # What the registry holds from the user is what root built.
    pushed = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                            capture_output=True, text=True, check=True)
    assert json.loads(pushed.stdout)["Layers"] == _image(rstore, "app")["layers"]


def test_rootless_containers_commit_diff_exec_and_cleanup_leave_no_subuid_files(user, scratch, _busybox_layout):
    """run, diff, commit, a detached container with exec, stop and rm, then rmi, system prune,
    store gc and verify --repair, all as pbuser: afterwards nothing in the store is owned by a
    subordinate id (an ordinary user could never remove such files from outside)."""
    ustore = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch)
    pb = lambda *a, **kw: user.pybuild(*a, root=ustore, **kw)   # noqa: E731
    pb("build", "-q", "-t", "app", ctx, check_rc=0)
    pb("run", "--name", "c1", "-u", "0", "app", "sh", "-c",
       "echo changed > /home/app/new/g && rm /etc/group && mkdir /made && chown 1234 /made", check_rc=0)
    diff = pb("diff", "c1", check_rc=0).stdout.split("\n")
    assert {"C /home/app/new/g", "D /etc/group", "A /made"} <= set(diff), diff
    pb("commit", "c1", "committed", check_rc=0)
    out = pb("run", "--rm", "committed", "sh", "-c", "cat /home/app/new/g; ls -lnd /made; ls /etc/group",
             check_rc=1).stdout
    assert "changed" in out and " 1234 " in out

    pb("run", "-d", "--name", "d1", "app", "sh", "-c", "sleep 300", check_rc=0)
    ex = pb("exec", "d1", "sh", "-c", "id -u; cat /tmp/svc.txt", check_rc=0).stdout
    assert ex.split() == ["1234", "as", "svc"]
    pb("stop", "-t", "1", "d1", check_rc=0)
    pb("rm", "c1", "d1", check_rc=0)
    assert subid_owned(ustore / "layers"), "the build made no subordinate-owned files: nothing was tested"

    pb("rmi", "committed", "app", "busybox", check_rc=0)
    pb("system", "prune", "-a", "-f", check_rc=0)
    pb("store", "gc", check_rc=0)
    pb("store", "verify", "--repair", check_rc=0)
    assert subid_owned(ustore) == []
    assert not list((ustore / "snapshots").iterdir()) if (ustore / "snapshots").exists() else True


def test_unshare_runs_a_command_in_the_namespace(user, scratch):
    """`pybuild unshare CMD`: root there, the user's range mapped from 1, as `buildah unshare`."""
    r = user.pybuild("unshare", "sh", "-c", "id -u; cat /proc/self/uid_map", root=scratch / "s", check_rc=0)
    lines = [l.split() for l in r.stdout.splitlines()]
    assert lines[0] == ["0"]
    assert lines[1] == ["0", str(user.uid), "1"] and lines[2] == ["1", str(SUBID_START), "65536"]


def test_store_modes_refuse_each_other(user, scratch, tmp_path):
    """A rootless store refuses root, a rootful one the user: clear errors, no traceback."""
    ustore = scratch / "s"
    user.pybuild("images", root=ustore, check_rc=0)
    r = run_pybuild("images", root=ustore)
    assert r.returncode == 1 and "was made by pybuild rootless" in r.stderr and "Traceback" not in r.stderr

    rstore = scratch / "r"
    rstore.mkdir(mode=0o700)
    (rstore / "mode").write_text("rootful\n")
    user.give(rstore)
    r = user.pybuild("images", root=rstore)
    assert r.returncode == 1 and "was made by pybuild rootful" in r.stderr and "--root" in r.stderr
    assert "Traceback" not in r.stderr


def test_clear_errors_without_a_range_or_newuidmap(user, scratch):
    """No subordinate range (nobody has none): the usermod line to run. No newuidmap on PATH:
    the package to install. Never a raw runc or unshare message, never a traceback."""
    # nobody's own directory, under root's /tmp: a store below the test user's scratch would be
    # refused first (another user's directory above it, tests/rootless/test_rootless_attacks.py).
    nobody = RootlessUser("nobody", 65534, 65534, scratch)
    d = Path(tempfile.mkdtemp(prefix="pybuild-nobody-", dir="/tmp"))
    os.chown(d, 65534, 65534)
    try:
        r = nobody.pybuild("images", root=d / "store")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert r.returncode == 1, r
    assert "usermod --add-subuids" in r.stderr and "/etc/subuid" in r.stderr and "Traceback" not in r.stderr

    bindir = scratch / "bin"
    bindir.mkdir()
    os.symlink(shutil.which("python3") or "/usr/bin/python3", bindir / "python3")
    r = user.pybuild("images", root=scratch / "s", env={"PATH": str(bindir)})
    assert r.returncode == 1 and "uidmap" in r.stderr and "Traceback" not in r.stderr


def test_a_layer_owner_outside_the_range_is_a_clear_error(user, scratch):
    """An image whose file belongs to uid 70000 (beyond the 65536 ids mapped): extraction fails
    naming the entry, the uid, the mapped ids and the usermod fix, not a bare EINVAL."""
    import gzip
    import hashlib
    import io
    import tarfile

    from registry.platform import host_platform
    from registry.store import Store
    from tests.fixtures.synthetic_images import make_image

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("far/away.txt")
        info.size, info.uid, info.gid = 3, 70000, 70000
        tar.addfile(info, io.BytesIO(b"hi\n"))
    data = raw.getvalue()
    store_root = scratch / "s"
    make_image(Store(store_root), "far:latest", [(gzip.compress(data, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest())],
               platform=host_platform(), cmd=["true"])
    user.give(store_root)
    r = user.pybuild("run", "--rm", "far", root=store_root)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "far/away.txt" in r.stderr and "uid 70000" in r.stderr and "usermod --add-subuids" in r.stderr, r.stderr
    assert "uids 0-65536" in r.stderr


def test_rootless_default_network_is_pastas_private_one(user, scratch, _busybox_layout):
    """Rootless, a container's default network is its own namespace through pasta (the sandbox's
    address 10.0.2.100), not the host's interfaces."""
    ustore = store_with(_busybox_layout, scratch / "store", user)
    out = user.pybuild("run", "--rm", "busybox", "ip", "-4", "addr", root=ustore, check_rc=0).stdout
    assert "10.0.2.100" in out, out


# ---- a real Debian base: dpkg, useradd, apt's sandbox user, the mirror ---------------------------

@pytest.fixture(scope="module")
def debian_layout(tmp_path_factory) -> Path:
    """debian:bookworm (the conformance suite's cached minbase) in an OCI layout, imported by root."""
    from registry.imports import import_image
    from registry.store import Store
    from tests.fixtures.conformance_cases import ConformanceSetupError, debian_minbase
    try:
        tree = debian_minbase()
    except ConformanceSetupError as exc:
        pytest.skip(f"no Debian minbase (debootstrap needs the Debian mirror of apt's sources): {exc}")
    store = Store(tmp_path_factory.mktemp("debian") / "root")
    import_image(store, tree, "debian:bookworm", created="2000-01-01T00:00:00Z")
    return store.layout


def test_rootless_debian_build_with_dpkg_and_useradd_equals_root(user, scratch, tmp_path, debian_layout):
    """On Debian: dpkg -i of a real package, useradd, chown, deleted files and a replaced
    directory, a RUN as the new user: pbuser's build and root's give the same image."""
    debs = sorted(Path("/var/cache/pybuild").glob("tini_*_amd64.deb"))
    if not debs:
        pytest.skip("no tini .deb in /var/cache/pybuild (scripts/setup.sh fetches it on amd64)")
    ctx = scratch / "ctx"
    ctx.mkdir()
    shutil.copy(debs[-1], ctx / "tini.deb")
    (ctx / "Dockerfile").write_text(
        "FROM debian:bookworm\nCOPY tini.deb /tmp/\n"
        "RUN dpkg -i /tmp/tini.deb && rm /tmp/tini.deb && useradd -m -u 1500 -s /bin/bash app"
        " && mkdir -p /srv/app && chown -R app:app /srv/app && rm -rf /usr/share/doc/* /var/log/apt"
        " && mkdir /var/log/apt && echo fresh > /var/log/apt/note"
        " && rm /var/log/dpkg.log\n"            # it holds the time of day: no two builds agree on it
        "USER app\nRUN id > /srv/app/id && touch /srv/app/ready\n")
    user.give(ctx)
    ustore = store_with(debian_layout, scratch / "store", user)
    user.pybuild("build", "-q", "-t", "deb", ctx, root=ustore, env={"SOURCE_DATE_EPOCH": SDE}, check_rc=0,
                 timeout=900)
    rstore = store_with(debian_layout, tmp_path / "rootstore")
    run_pybuild("build", "-q", "-t", "deb", ctx, root=rstore, check_rc=0, timeout=900,
                env={**os.environ, "SOURCE_DATE_EPOCH": SDE})
    assert _image(ustore, "deb") == _image(rstore, "deb")
    out = user.pybuild("run", "--rm", "deb", "sh", "-c", "cat /srv/app/id; tini --version; ls /usr/share/doc | wc -l",
                       root=ustore, check_rc=0).stdout
    assert "uid=1500(app) gid=1500(app)" in out and "tini version" in out and out.split()[-1] == "0"


def test_rootless_apt_get_update_reaches_the_mirror(user, scratch, debian_layout):
    """apt-get update as root of a rootless container: apt drops to its _apt user (setgroups,
    seteuid: the full subordinate range is mapped) and reaches the machine's Debian mirror
    through the default private network."""
    from tests.fixtures.conformance_cases import mirror
    try:
        mirror()
    except Exception as exc:
        pytest.skip(f"no Debian mirror in apt's sources: {exc}")
    ustore = store_with(debian_layout, scratch / "store", user)
    r = user.pybuild("run", "--rm", "debian:bookworm", "apt-get", "update", root=ustore, timeout=600)
    assert r.returncode == 0 and "Reading package lists" in r.stdout, r.stdout + r.stderr
    assert "setgroups" not in r.stdout + r.stderr and "seteuid" not in r.stdout + r.stderr


# ---- the product: a wheel pip-installed by the user ----------------------------------------------

from tests.packaging.test_packaging import wheel  # noqa: E402,F401  (the fixture: this checkout's wheel)


def test_pip_installed_wheel_builds_pushes_and_runs_rootless(user, scratch, wheel, _busybox_layout, registry):
    """A venv of the user's with the wheel installed (non-editable, nothing from the checkout on
    the path): the build with RUN, the push and the run work as for the source tree."""
    import sys
    mine = scratch / wheel.name
    shutil.copy(wheel, mine)
    user.give(mine)
    venv = scratch / "venv"
    user.run("/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable, "-m", "venv", venv,
             env={"PYTHONPATH": None}, check_rc=0)
    # The dependencies from the interpreter running the tests (offline), as tests/packaging does.
    import isal, lark, requests, zstandard  # noqa: E401
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "pybuild-test-deps.pth").write_text("".join(
        dict.fromkeys(str(Path(m.__file__).resolve().parent.parent) + "\n" for m in (isal, lark, requests, zstandard))))
    env = {"PYTHONPATH": None, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PATH": f"{venv / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin"}
    user.run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", mine, env=env, check_rc=0)
    where = user.run(venv / "bin" / "python", "-c", "import builder; print(builder.__file__)", env=env, check_rc=0)
    assert where.stdout.startswith(str(venv)), where.stdout

    ustore = store_with(_busybox_layout, scratch / "store", user)
    ctx = _context(user, scratch)
    ref = f"{registry.host}/rootless/wheel:1"
    pb = lambda *a: user.run(venv / "bin" / "pybuild", "--root", ustore, *a, env=env, check_rc=0)   # noqa: E731
    pb("build", "-q", "-t", ref, "--push", ctx)
    out = pb("run", "--rm", ref).stdout
    assert "uid=1234(svc)" in out and "two" in out


def test_rootless_healthcheck_runs(user, scratch, _busybox_layout):
    """A detached container's HEALTHCHECK loop runs its check with runc (its state under the
    user's runc root): the container becomes healthy, and an always-failing one unhealthy."""
    import time
    ustore = store_with(_busybox_layout, scratch / "store", user)
    pb = lambda *a, **kw: user.pybuild(*a, root=ustore, **kw)   # noqa: E731
    pb("run", "-d", "--name", "ok", "--health-cmd", "test -d /tmp", "--health-interval", "1s", "busybox",
       "sleep", "120", check_rc=0)
    pb("run", "-d", "--name", "bad", "--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1",
       "busybox", "sleep", "120", check_rc=0)
    seen = ""
    for _ in range(120):                  # the loop checks every second; the machine may be loaded
        seen = pb("ps", check_rc=0).stdout
        if "(healthy)" in seen and "(unhealthy)" in seen:
            break
        time.sleep(0.5)
    assert "(healthy)" in seen and "(unhealthy)" in seen, seen
    pb("rm", "-f", "ok", "bad", check_rc=0)


def test_rootless_published_port_and_a_privileged_one(user, scratch, _busybox_layout):
    """-p through the user's pasta reaches the container's server; a host port below 1024 is
    refused before anything starts, naming the setting (pasta alone says 'Failed to bind')."""
    import time
    import urllib.request

    from tests.fixtures.registry import free_port
    ustore = store_with(_busybox_layout, scratch / "store", user)
    pb = lambda *a, **kw: user.pybuild(*a, root=ustore, **kw)   # noqa: E731
    port = free_port()
    pb("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:8080", "busybox", "sh", "-c",
       "mkdir /www && echo hello-rootless > /www/index.html && httpd -f -p 8080 -h /www", check_rc=0)
    body = ""
    for _ in range(120):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5).read().decode()
            break
        except OSError:
            time.sleep(0.5)
    assert body == "hello-rootless\n"
    pb("rm", "-f", "web", check_rc=0)
    r = pb("run", "--rm", "-p", "80:80", "busybox", "true")
    assert r.returncode != 0 and "ip_unprivileged_port_start" in r.stderr and "Traceback" not in r.stderr
