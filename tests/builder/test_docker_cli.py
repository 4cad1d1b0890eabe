"""The docker CLI where a docker user looks: tag, history, save/load, images filtering, import's
refusal of image archives, login -p, --version, unknown commands, subcommand usage, --ssh, and
errors that say where and what to do (file:line, fast failure on a refused registry)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pybuild


def pb(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess:
    return run_pybuild(*args, cwd=cwd, stdin=input)


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, str]:
    """A store with `app:1`, a FROM scratch image of two layers (no runtime needed)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    (ctx / "b.txt").write_text("b\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\nENV K=v\nCOPY b.txt /b.txt\nCMD [\"/a\"]\n")
    root = str(tmp_path / "root")
    r = pb("--root", root, "build", "-q", "-t", "app:1", str(ctx), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path, root


def test_version_is_cheap_and_from_one_place(tmp_path: Path) -> None:
    from builder._version import __version__
    code = ("import sys, builder.cli as c; c.main(['--version']);"
            "assert not any(m.startswith(('registry', 'builder.cli.')) for m in sys.modules), sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"pybuild version {__version__}"


def test_tag_images_filter_and_history(built) -> None:
    cwd, root = built
    assert pb("--root", root, "tag", "app:1", "team/app:2", cwd=cwd).returncode == 0
    r = pb("--root", root, "images", "team/app", cwd=cwd)
    assert r.returncode == 0 and "team/app" in r.stdout and "\napp " not in r.stdout, r.stdout
    r = pb("--root", root, "images", "app:1", cwd=cwd)
    assert [l.split()[0] for l in r.stdout.splitlines()[1:]] == ["app"], r.stdout
    r = pb("--root", root, "images", "*app:2", cwd=cwd)
    assert [l.split()[:2] for l in r.stdout.splitlines()[1:]] == [["team/app", "2"]], r.stdout
    r = pb("--root", root, "images", "nothing", cwd=cwd)
    assert r.stdout.splitlines()[1:] == []
    r = pb("--root", root, "history", "--format", "json", "team/app:2", cwd=cwd)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["created_by"].split()[0] for row in rows] == ["CMD", "COPY", "ENV", "COPY"]
    assert rows[0]["size"] == 0 and rows[1]["size"] > 0 and rows[3]["size"] > 0
    r = pb("--root", root, "history", "app:1", cwd=cwd)
    assert r.stdout.splitlines()[0].split()[:3] == ["CREATED", "CREATED", "BY"]
    r = pb("--root", root, "tag", "missing:1", "x:1", cwd=cwd)
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_save_then_load_round_trips(built, fmt: str) -> None:
    cwd, root = built
    archive = cwd / f"app-{fmt}.tar"
    r = pb("--root", root, "save", "--format", fmt, "-o", str(archive), "app:1", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert archive.stat().st_mode & 0o777 == 0o644
    with tarfile.open(archive) as t:
        names = set(t.getnames())
    assert ({"manifest.json", "repositories"} if fmt == "docker" else {"oci-layout", "index.json"}) <= names
    root2 = str(cwd / f"root-{fmt}")
    r = pb("--root", root2, "load", "-i", str(archive), cwd=cwd)
    assert r.returncode == 0 and "Loaded image: app:1" in r.stdout, r
    before = json.loads(pb("--root", root, "images", "--format", "json", cwd=cwd).stdout)
    after = json.loads(pb("--root", root2, "images", "--format", "json", cwd=cwd).stdout)
    assert [(i["repository"], i["tag"], i["digest"]) for i in after] == \
        [(i["repository"], i["tag"], i["digest"]) for i in before]
    # From standard input too, as `docker load < FILE`.
    r = run_pybuild("load", root=cwd / "root-stdin", stdin=archive.read_bytes(), cwd=cwd, text=False)
    assert r.returncode == 0 and b"Loaded image: app:1" in r.stdout, r


def test_load_reads_an_uncompressed_docker_save(tmp_path: Path) -> None:
    """What `docker save` writes: uncompressed layer.tar files named by directory."""
    import hashlib
    import io
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        ti = tarfile.TarInfo("hello")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"hi\n"))
    data = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
                      "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    archive = tmp_path / "docker-save.tar"
    with tarfile.open(archive, "w") as t:
        for name, body in ((cfg_name, cfg), ("abc/layer.tar", data),
                           ("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": ["saved:v1"],
                                                          "Layers": ["abc/layer.tar"]}]).encode()),
                           ("repositories", b"{}")):
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            t.addfile(ti, io.BytesIO(body))
    root = str(tmp_path / "root")
    r = pb("--root", root, "load", "-i", str(archive), cwd=tmp_path)
    assert r.returncode == 0 and "Loaded image: saved:v1" in r.stdout, r
    r = pb("--root", root, "inspect", "--format", "json", "saved:v1", cwd=tmp_path)
    info = json.loads(r.stdout)
    assert info["Layers"][0]["Digest"] == diff_id and info["Config"]["Cmd"] == ["/hello"]
    # import refuses the same file, pointing at load
    r = pb("--root", root, "import", str(archive), "wrong:1", cwd=tmp_path)
    assert r.returncode == 1 and "image archive (docker-archive)" in r.stderr and "pybuild load -i" in r.stderr


def test_import_refuses_an_oci_archive_but_takes_a_rootfs_tar(built) -> None:
    cwd, root = built
    archive = cwd / "oci.tar"
    assert pb("--root", root, "save", "--format", "oci", "-o", str(archive), "app:1", cwd=cwd).returncode == 0
    r = pb("--root", root, "import", str(archive), "wrong:1", cwd=cwd)
    assert r.returncode == 1 and "oci-archive" in r.stderr and "pybuild load" in r.stderr, r.stderr
    rootfs = cwd / "rootfs.tar"
    with tarfile.open(rootfs, "w") as t:               # a project's manifest.json is not docker's
        for name, body in (("manifest.json", b'{"name": "x"}'), ("index.json", b"{}")):
            import io
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            t.addfile(ti, io.BytesIO(body))
    r = pb("--root", root, "import", str(rootfs), "fs:1", cwd=cwd)
    assert r.returncode == 0, r.stderr


def test_unknown_command_says_did_you_mean(tmp_path: Path) -> None:
    r = pb("imgaes", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown command 'imgaes'; did you mean 'images'?" in r.stderr, r.stderr
    r = pb("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr and "build context" not in r.stdout
    # An existing directory of a command-like name is still a build context.
    (tmp_path / "imgaes").mkdir()
    (tmp_path / "imgaes" / "Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    r = pb("--root", str(tmp_path / "root"), "imgaes", "-q", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("sha256:"), r.stderr
    r = pb("--root", str(tmp_path / "root"), "-q", "-f", "imgaes/Dockerfile", ".", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_argument_errors_show_the_subcommands_usage(tmp_path: Path) -> None:
    r = pb("pull", "--bogus", "x", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("usage: pybuild pull"), r.stderr
    assert "unrecognized arguments: --bogus" in r.stderr
    r = pb("cache", "prune", "--bogus", cwd=tmp_path)
    assert r.stderr.startswith("usage: pybuild cache prune"), r.stderr
    r = pb("tag", "onlyone", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("usage: pybuild tag"), r.stderr


def test_ssh_takes_one_value_and_ssh_mounts_fail_clearly(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    root = str(tmp_path / "root")
    r = pb("--root", root, "build", "-q", "--ssh", "default", str(ctx), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = pb("--root", root, "build", "-q", "--ssh=default", str(ctx), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL a=b\nRUN --mount=type=ssh git clone x\n")
    r = pb("--root", root, "build", "--progress", "plain", str(ctx), cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{ctx / 'Dockerfile'}:3:" in r.stderr and "not supported yet" in r.stderr, r.stderr


def test_copy_and_from_errors_carry_file_and_line(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n\nLABEL a=b\nCOPY missing.txt /x\n")
    root = str(tmp_path / "root")
    r = pb("--root", root, "build", "--progress", "quiet", str(ctx), cwd=tmp_path)
    assert r.returncode == 1 and f"{ctx / 'Dockerfile'}:4: COPY missing.txt /x:" in r.stderr, r.stderr
    port = _free_port()
    (ctx / "Dockerfile").write_text(f"# base\nFROM 127.0.0.1:{port}/nothere:1\nLABEL a=b\n")
    t0 = time.monotonic()
    r = pb("--root", root, "build", "--progress", "quiet", str(ctx), cwd=tmp_path)
    took = time.monotonic() - t0
    assert r.returncode == 1 and f"{ctx / 'Dockerfile'}:2: FROM" in r.stderr, r.stderr
    # a plain-HTTP loopback registry that is down: named with http://, after one quick retry
    assert f"http://127.0.0.1:{port}/" in r.stderr and "2 attempt(s)" in r.stderr, r.stderr
    assert "pybuild import" in r.stderr                       # nothing reachable: offline hint fits
    assert took < 8, took


def test_refused_registry_fails_fast_with_the_right_scheme(tmp_path: Path) -> None:
    port = _free_port()
    t0 = time.monotonic()
    r = pb("--root", str(tmp_path / "root"), "pull", f"127.0.0.1:{port}/x:1", cwd=tmp_path)
    took = time.monotonic() - t0
    assert r.returncode == 1 and f"http://127.0.0.1:{port}/v2/" in r.stderr, r.stderr
    assert "after 2 attempt(s)" in r.stderr and "Traceback" not in r.stderr
    assert took < 8, took                                   # was 6 attempts over ~10 s


def test_login_with_p_warns_and_checks_the_registry(tmp_path: Path) -> None:
    port = _free_port()
    env_cfg = tmp_path / "docker"
    r = run_pybuild("login", f"127.0.0.1:{port}", "-u", "me", "-p", "pw", cwd=tmp_path, timeout=60,
                    env={**__import__("os").environ, "DOCKER_CONFIG": str(env_cfg)})
    assert "WARNING! Using --password via the CLI is insecure. Use --password-stdin." in r.stderr
    assert r.returncode == 1 and "Traceback" not in r.stderr       # nothing listens there
    assert not (env_cfg / "config.json").exists()
    r = pb("login", "x.example", "-u", "me", "-p", "pw", "--password-stdin", cwd=tmp_path, input="pw\n")
    assert r.returncode == 1 and "mutually exclusive" in r.stderr


def test_build_accepts_insecure_registry(tmp_path: Path) -> None:
    from builder.cli import build_parser
    parser, _ = build_parser(["builder.cli.build"])
    args = parser.parse_args(["build", "--insecure-registry", "reg.local:5000", "--ssh", "default", "."])
    assert args.insecure_registries == ["reg.local:5000"] and args.ssh == ["default"] and args.context == "."


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_inspect_shows_healthcheck_onbuild_shell_and_archives_are_not_private(busybox_image, tmp_path):
    """`inspect` shows every runtime field docker's does; `-o type=tar|oci|docker` files get the
    mode a new file gets (0666 less the umask), not the 0600 of a temporary file."""
    import os
    import stat

    from tests.fixtures.building import build_in
    from tests.fixtures.cli import run_pybuild
    out = tmp_path / "out.tar"
    build_in(busybox_image, tmp_path / "ctx",
             'FROM busybox\nHEALTHCHECK CMD true\nSHELL ["/bin/sh", "-c"]\nONBUILD RUN echo\n',
             tags=["fields:1"], outputs=[f"type=tar,dest={out}"])
    r = run_pybuild("inspect", "fields:1", root=busybox_image, check_rc=0)
    for field in ("Healthcheck", "OnBuild", "Shell"):
        assert field in r.stdout, r.stdout
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
