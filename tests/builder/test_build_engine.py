"""End-to-end builds on the busybox base: real runc, overlayfs, store; images checked with umoci,
skopeo and podman."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.errors import BuildError
from dockerfile_grammar.errors import DockerfileError
from registry.store import Store
from tests.fixtures.building import build_in, need, podman_run, store_snapshot, unpack_image

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (runc, overlay mounts)")]

REPO = Path(__file__).resolve().parents[2]


def _config(root: Path, ref: str) -> dict:
    store = Store(root)
    return store.image_config(ref).to_dict()


def test_hello_sample_builds_runs_and_rebuilds_from_cache(busybox_image, tmp_path):
    root = busybox_image
    from builder.engine.build import BuildOptions, build
    res = build(BuildOptions(context=str(REPO / "samples" / "hello"), root=str(root), tags=["hello:1"],
                             progress="quiet"))
    cfg = _config(root, "hello:1")
    assert cfg["config"]["Cmd"] == ["/app/hello.sh"]
    assert cfg["config"]["WorkingDir"] == "/app"
    assert "GREETING=Hello from pybuild" in cfg["config"]["Env"]
    assert cfg["config"]["Labels"]["org.opencontainers.image.title"] == "hello"
    assert res.image_id == Store(root).image_manifest("hello:1")[1].config.digest
    # umoci verifies every diffID while unpacking
    rootfs = unpack_image(root, "hello:1", tmp_path / "unpacked")
    assert (rootfs / "app" / "build-info").read_text() == "built as root in /app\n"
    assert os.stat(rootfs / "app" / "hello.sh").st_mode & 0o777 == 0o755
    assert podman_run(root, "hello:1").splitlines() == ["Hello from pybuild", "built as root in /app"]
    skopeo = need("skopeo")
    info = json.loads(subprocess.run([skopeo, "inspect", f"oci:{root}/images:hello:1"], check=True,
                                     capture_output=True, text=True).stdout)
    assert len(info["Layers"]) == len(res.layers)
    # rebuild: every file-changing step is a cache hit and the layers are the same
    again = build(BuildOptions(context=str(REPO / "samples" / "hello"), root=str(root), tags=["hello:2"],
                               progress="quiet"))
    changing = [s for s in again.steps if s["instruction"].split()[0] in ("RUN", "COPY", "WORKDIR")]
    assert changing and all(s["cached"] for s in changing)
    assert [l.descriptor.digest for l in again.layers] == [l.descriptor.digest for l in res.layers]
    # --no-cache runs everything again
    fresh = build(BuildOptions(context=str(REPO / "samples" / "hello"), root=str(root), progress="quiet",
                               no_cache=True))
    assert not any(s["cached"] for s in fresh.steps)


def test_multistage_copy_from_and_target(busybox_image, tmp_path):
    root = busybox_image
    df = """\
ARG MSG=global
FROM busybox AS base
ARG MSG
RUN echo "$MSG" > /msg && mkdir -p /out/sub && echo deep > /out/sub/f && ln -s sub/f /out/link
FROM base AS unused
RUN exit 1
FROM busybox AS other
RUN echo other > /other
FROM busybox
COPY --from=base /msg /copied/msg
COPY --from=base /out/ /tree/
COPY --from=other /other /
COPY --from=0 /msg /by-index
"""
    res = build_in(root, tmp_path / "ctx", df, tags=["ms:latest"], build_args={"MSG": "from-cli"})
    rootfs = unpack_image(root, "ms:latest", tmp_path / "u")
    assert (rootfs / "copied" / "msg").read_text() == "from-cli\n"
    assert (rootfs / "tree" / "sub" / "f").read_text() == "deep\n"
    assert os.readlink(rootfs / "tree" / "link") == "sub/f"
    assert (rootfs / "other").read_text() == "other\n"
    assert (rootfs / "by-index").read_text() == "from-cli\n"
    assert not any(s["stage"] == "unused" for s in res.steps)   # not needed, not built
    # --target builds only that stage
    res = build_in(root, tmp_path / "ctx", df, tags=["ms:other"], target="other")
    assert {s["stage"] for s in res.steps} == {"other"}
    with pytest.raises(BuildError, match="RUN failed with exit code 1"):
        build_in(root, tmp_path / "ctx", df, target="unused")
    with pytest.raises(BuildError, match="target stage 'nope' could not be found"):
        build_in(root, tmp_path / "ctx", df, target="nope")


def test_arg_scoping_env_and_run_environment(busybox_image, tmp_path):
    root = busybox_image
    df = """\
ARG GLOBAL=g1
ARG TAG=latest
FROM busybox:${TAG}
RUN echo "global-unset=[$GLOBAL]" > /r1
ARG GLOBAL
ARG LOCAL=l1
ENV FROM_ENV=e1 LOCAL=env-wins
RUN echo "global=[$GLOBAL] local=[$LOCAL] env=[$FROM_ENV] tp=[$TARGETPLATFORM]" > /r2
ARG TARGETPLATFORM
RUN echo "tp=[$TARGETPLATFORM] proxy=[$HTTP_PROXY]" > /r3
"""
    build_in(root, tmp_path / "ctx", df, tags=["args:latest"],
             build_args={"HTTP_PROXY": "http://proxy:3128", "UNUSED": "x"})
    rootfs = unpack_image(root, "args:latest", tmp_path / "u")
    assert (rootfs / "r1").read_text() == "global-unset=[]\n"
    assert (rootfs / "r2").read_text() == "global=[g1] local=[env-wins] env=[e1] tp=[]\n"
    from registry.platform import host_platform
    assert (rootfs / "r3").read_text() == f"tp=[{host_platform()}] proxy=[http://proxy:3128]\n"
    cfg = _config(root, "args:latest")
    assert "FROM_ENV=e1" in cfg["config"]["Env"]
    assert not any(e.startswith("GLOBAL=") or e.startswith("HTTP_PROXY") for e in cfg["config"]["Env"])
    assert not any("proxy:3128" in (h.get("created_by") or "") for h in cfg["history"])


def test_config_fields_like_docker(busybox_image, tmp_path):
    root = busybox_image
    df = """\
FROM busybox
LABEL a=1 "b c"="d e"
MAINTAINER someone@example.com
EXPOSE 80 53/udp 8000-8002
VOLUME ["/data", "/logs"]
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD wget -q -O- localhost || exit 1
SHELL ["/bin/sh", "-ec"]
CMD echo shell-form
ENTRYPOINT ["/bin/echo"]
ONBUILD RUN echo triggered > /tmp/onbuild
USER app:app
WORKDIR /home/app/work
"""
    build_in(root, tmp_path / "ctx", df, tags=["cfg:latest"], labels={"from.cli": "yes"})
    cfg = _config(root, "cfg:latest")
    c = cfg["config"]
    assert c["Labels"] == {"a": "1", "b c": "d e", "from.cli": "yes"}
    assert cfg["author"] == "someone@example.com"
    assert set(c["ExposedPorts"]) == {"80/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp"}
    assert set(c["Volumes"]) == {"/data", "/logs"}
    assert c["StopSignal"] == "SIGQUIT"
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
                                "Interval": 5_000_000_000, "Timeout": 2_000_000_000, "Retries": 4}
    assert c["Shell"] == ["/bin/sh", "-ec"]
    # CMD came before ENTRYPOINT in this stage: it is kept (shell form uses the SHELL)
    assert c["Cmd"] == ["/bin/sh", "-ec", "echo shell-form"]
    assert c["Entrypoint"] == ["/bin/echo"]
    assert c["OnBuild"] == ["RUN echo triggered > /tmp/onbuild"]
    assert c["User"] == "app:app" and c["WorkingDir"] == "/home/app/work"
    empty = [h.get("empty_layer", False) for h in cfg["history"]]
    assert len(cfg["rootfs"]["diff_ids"]) == empty.count(False)
    rootfs = unpack_image(root, "cfg:latest", tmp_path / "u")
    st = os.stat(rootfs / "home" / "app" / "work")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    # a child: ENTRYPOINT resets the inherited CMD; ONBUILD triggers run after FROM
    child = """\
FROM cfg:latest
ENTRYPOINT ["/bin/cat"]
"""
    build_in(root, tmp_path / "ctx2", child, tags=["child:latest"])
    c2 = _config(root, "child:latest")["config"]
    assert c2["Entrypoint"] == ["/bin/cat"] and "Cmd" not in c2
    assert "OnBuild" not in c2
    rootfs2 = unpack_image(root, "child:latest", tmp_path / "u2")
    assert (rootfs2 / "tmp" / "onbuild").read_text() == "triggered\n"


def test_user_workdir_and_run_changes(busybox_image, tmp_path):
    root = busybox_image
    df = """\
FROM busybox
RUN rm /etc/group && mkdir -p /gone/deep && echo x > /gone/deep/f
RUN rm -rf /gone && echo "app:x:1000:" > /etc/group && echo "extra:x:2000:app" >> /etc/group
USER app
RUN id > /tmp/id-app && touch /tmp/owned-by-app && echo "$HOME" > /tmp/home-app
USER 4242
RUN id -u > /tmp/id-num
USER root
WORKDIR rel
WORKDIR sub
RUN pwd > /pwd && true
RUN true
"""
    res = build_in(root, tmp_path / "ctx", df, tags=["u:latest"])
    rootfs = unpack_image(root, "u:latest", tmp_path / "u")
    assert not (rootfs / "gone").exists()
    ident = (rootfs / "tmp" / "id-app").read_text()
    assert ident.startswith("uid=1000(app) gid=1000(app)") and "2000(extra)" in ident
    st = os.stat(rootfs / "tmp" / "owned-by-app")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert (rootfs / "tmp" / "id-num").read_text() == "4242\n"
    assert (rootfs / "tmp" / "home-app").read_text() == "/home/app\n"     # HOME from /etc/passwd
    assert (rootfs / "pwd").read_text() == "/rel/sub\n"
    # `RUN true` changed nothing: no layer
    last = res.steps[-1]
    assert last["instruction"] == "RUN true" and last["layer_digest"] == ""
    cfg = _config(root, "u:latest")
    assert cfg["history"][-1]["empty_layer"] is True


def test_copy_semantics(busybox_image, tmp_path):
    root = busybox_image
    files = {"a.txt": "A", "b.txt": "B", "dir/x": "X", "dir/sub/y": "Y", "script.sh": "#!/bin/sh\necho s\n",
             ".dockerignore": "ignored*\n", "ignored.txt": "no"}
    df = """\
FROM busybox
WORKDIR /w
COPY a.txt .
COPY a.txt /renamed.txt
COPY *.txt /many/
COPY dir /dircontents
COPY --chown=app:app --chmod=0640 b.txt /owned/
COPY --chmod=u+x script.sh /bin/
ENV WHO=world
COPY <<EOF /etc/heredoc
hello "$WHO" it's \\$HOME
EOF
ADD dir/x /added
"""
    build_in(root, tmp_path / "ctx", df, files, tags=["copy:latest"])
    rootfs = unpack_image(root, "copy:latest", tmp_path / "u")
    assert (rootfs / "w" / "a.txt").read_text() == "A"
    assert (rootfs / "renamed.txt").read_text() == "A"
    assert sorted(os.listdir(rootfs / "many")) == ["a.txt", "b.txt"]    # .dockerignore'd file left out
    assert (rootfs / "dircontents" / "x").read_text() == "X"
    assert (rootfs / "dircontents" / "sub" / "y").read_text() == "Y"
    st = os.stat(rootfs / "owned" / "b.txt")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o640)
    assert os.stat(rootfs / "bin" / "script.sh").st_mode & 0o100
    assert os.stat(rootfs / "w" / "a.txt").st_uid == 0
    assert (rootfs / "added").read_text() == "X"
    # BuildKit keeps quotes in an expanded heredoc body; only variables and escapes are processed.
    assert (rootfs / "etc" / "heredoc").read_text() == "hello \"world\" it's $HOME\n"
    with pytest.raises(BuildError, match="must be a directory and end with a /"):
        build_in(root, tmp_path / "ctx", "FROM busybox\nCOPY a.txt b.txt /notadir\n", files)
    with pytest.raises(BuildError, match="nothing.txt"):
        build_in(root, tmp_path / "ctx", "FROM busybox\nCOPY nothing.txt /\n", files)


def test_add_extracts_local_tar(busybox_image, tmp_path):
    root = busybox_image
    src = tmp_path / "payload"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "file").write_text("in the tar")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with tarfile.open(ctx / "payload.tar.gz", "w:gz") as t:
        t.add(src / "pkg", arcname="pkg")
    build_in(root, ctx, "FROM busybox\nADD payload.tar.gz /opt/\nCOPY payload.tar.gz /raw/\n", tags=["add:latest"])
    rootfs = unpack_image(root, "add:latest", tmp_path / "u")
    assert (rootfs / "opt" / "pkg" / "file").read_text() == "in the tar"
    assert (rootfs / "raw" / "payload.tar.gz").is_file()


def test_heredoc_run_cache_mount_secret_and_tmpfs(busybox_image, tmp_path):
    root = busybox_image
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    df = """\
FROM busybox
RUN --mount=type=cache,target=/cache <<EOF
n=$(cat /cache/n 2>/dev/null || echo 0)
echo $((n + 1)) > /cache/n
cp /cache/n /seen
EOF
RUN --mount=type=secret,id=tok cat /run/secrets/tok > /leak-check-len && wc -c < /run/secrets/tok > /secret-len
RUN --mount=type=secret,id=tok,env=TOKEN sh -c 'echo ${#TOKEN} > /env-len'
RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && ls /scratch > /tmpfs-seen
RUN <<EOT
#!/bin/sh
echo "script $0" > /script-ran
EOT
"""
    build_in(root, tmp_path / "ctx", df, tags=["m:latest"], secrets=[f"id=tok,src={secret}"])
    rootfs = unpack_image(root, "m:latest", tmp_path / "u")
    assert (rootfs / "seen").read_text() == "1\n"
    assert (rootfs / "secret-len").read_text().strip() == "6"
    assert (rootfs / "env-len").read_text().strip() == "6"
    assert not (rootfs / "run" / "secrets").exists()
    assert not (rootfs / "scratch").exists() and (rootfs / "tmpfs-seen").read_text() == "x\n"
    assert (rootfs / "script-ran").read_text() == "script /dev/pipes/EOT\n"
    # the cache mount persists across builds (no-cache forces the RUN again)
    build_in(root, tmp_path / "ctx", df, tags=["m:2"], secrets=[f"id=tok,src={secret}"], no_cache=True)
    rootfs2 = unpack_image(root, "m:2", tmp_path / "u2")
    assert (rootfs2 / "seen").read_text() == "2\n"


def test_failing_run_reports_and_leaves_store_unchanged(busybox_image, tmp_path):
    root = busybox_image
    before = store_snapshot(root)
    df = "FROM busybox\nRUN echo one && echo two >&2 && exit 3\n"
    with pytest.raises(BuildError) as exc:
        build_in(root, tmp_path / "ctx", df, tags=["fail:latest"])
    msg = str(exc.value)
    assert "Dockerfile:2" in msg and "exit code 3" in msg and "one" in msg and "two" in msg
    assert store_snapshot(root) == before
    assert not list((root / "snapshots").iterdir())           # overlay mounts cleaned up
    with open("/proc/self/mounts") as f:
        assert str(root) not in f.read()


def test_bad_dockerfiles_give_clear_errors(busybox_image, tmp_path):
    root = busybox_image
    before = store_snapshot(root)
    with pytest.raises(DockerfileError, match=r"Dockerfile:2"):
        build_in(root, tmp_path / "ctx", "FROM busybox\nRUN --mount=type=nope echo\n")
    with pytest.raises(DockerfileError, match="unknown instruction"):
        build_in(root, tmp_path / "ctx", "FROM busybox\nCOPPY a b\n")
    with pytest.raises(BuildError, match="no FROM"):
        build_in(root, tmp_path / "ctx", "ARG X=1\n")
    with pytest.raises(BuildError, match="image busybox is for linux/amd64, not linux/s390x"):
        build_in(root, tmp_path / "ctx", "FROM busybox\n", platform="linux/s390x")
    assert store_snapshot(root) == before


def test_outputs_and_metadata(busybox_image, tmp_path):
    root = busybox_image
    out = tmp_path / "out"
    res = build_in(root, tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\nCMD [\"cat\", \"/hi\"]\n",
                   tags=["out:latest"],
                   outputs=[f"type=oci,dest={out}/img.tar", f"type=docker,dest={out}/docker.tar",
                            f"type=tar,dest={out}/rootfs.tar", f"type=local,dest={out}/rootfs"],
                   iidfile=str(out / "iid"), metadata_file=str(out / "meta.json"))
    assert (out / "iid").read_text() == res.image_id
    meta = json.loads((out / "meta.json").read_text())
    # type=oci is index-capable: provenance is attached by default (as buildx), so the build's
    # digest is the index's (issue 17).
    assert res.index is not None
    assert meta["containerimage.digest"] == res.index.digest
    assert meta["containerimage.config.digest"] == res.image_id
    assert any(s["instruction"].startswith("RUN") and s["layer_digest"] for s in meta["pybuild.steps"])
    assert (out / "rootfs" / "hi").read_text() == "hi\n"
    with tarfile.open(out / "rootfs.tar") as t:
        assert t.extractfile("hi").read() == b"hi\n"
    skopeo = need("skopeo")
    for ref in (f"oci-archive:{out}/img.tar", f"docker-archive:{out}/docker.tar"):
        info = json.loads(subprocess.run([skopeo, "inspect", "--config", ref], check=True,
                                         capture_output=True, text=True).stdout)
        assert info["config"]["Cmd"] == ["cat", "/hi"]
    # podman loads the docker-archive and runs it
    podman = need("podman")
    from tests.fixtures.building import PODMAN_FLAGS, PODMAN_RUN_FLAGS
    loaded = subprocess.run([podman, *PODMAN_FLAGS, "load", "-q", "-i", str(out / "docker.tar")],
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    try:
        ran = subprocess.run([podman, *PODMAN_FLAGS, "run", *PODMAN_RUN_FLAGS, "localhost/out:latest"],
                             capture_output=True, text=True, timeout=120)
        assert ran.stdout == "hi\n", ran.stderr
    finally:
        subprocess.run([podman, *PODMAN_FLAGS, "rmi", "-f", "localhost/out:latest"], capture_output=True)


def test_push_to_registry(busybox_image, registry, tmp_path):
    root = busybox_image
    ref = f"{registry.host}/buildtest/pushed:v1"
    res = build_in(root, tmp_path / "ctx", "FROM busybox\nRUN echo pushed > /p\n", tags=[ref], push=True)
    skopeo = need("skopeo")
    info = json.loads(subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["Digest"] == res.index.digest          # the index with the default provenance (issue 17)


@pytest.mark.parametrize("isolation", ["default", "oci"])
def test_isolation_builds(busybox_image, tmp_path, isolation):
    root = busybox_image
    build_in(root, tmp_path / "ctx", "FROM busybox\nRUN echo $(hostname) > /h && ls /proc/self > /dev/null\n",
             tags=["iso:latest"], isolation=isolation)
    rootfs = unpack_image(root, "iso:latest", tmp_path / "u")
    assert (rootfs / "h").read_text() == "buildkitsandbox\n"


def test_chroot_isolation_is_refused(busybox_image, tmp_path):
    with pytest.raises(BuildError, match="--isolation chroot was removed.*runc"):
        build_in(busybox_image, tmp_path / "ctx", "FROM busybox\nRUN true\n", isolation="chroot")


def test_source_date_epoch_is_reproducible(busybox_image, tmp_path):
    root = busybox_image
    df = "FROM busybox\nRUN echo same > /same\nENV X=1\n"
    a = build_in(root, tmp_path / "ctx", df, no_cache=True, source_date_epoch=1700000000)
    b = build_in(root, tmp_path / "ctx", df, no_cache=True, source_date_epoch=1700000000)
    assert a.image_id == b.image_id and a.manifest.digest == b.manifest.digest
    assert a.config["created"] == "2023-11-14T22:13:20Z"
