"""`pybuild import` and the local image commands, checked with umoci, skopeo and podman."""
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import uuid

import pytest

from builder.cli import main
from registry.compression import open_decompressed
from registry.errors import InvalidReferenceError, NotFoundError
from builder.engine.changes import apply_changes
from builder.errors import BuildError
from registry.imports import ImageImportError, import_image
from registry.manifest import ImageConfig
from registry.platform import Platform, host_platform
from registry.store import Store
from tests.fixtures.cli import run_pybuild

FIXED = "2000-01-01T00:00:00Z"


def layer_members(store: Store, digest: str) -> dict[str, tarfile.TarInfo]:
    with store.open_blob(digest) as f:
        data = open_decompressed(f).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name.rstrip("/"): m for m in tf.getmembers()}


def test_import_directory(root, busybox_rootfs):
    store = Store(root)
    res = import_image(store, busybox_rootfs, "busybox:latest", container=apply_changes(ImageConfig(), ['CMD ["sh"]', "ENV A=1"]).config)
    assert res.reference.familiar == "busybox:latest"
    assert store.resolve("busybox").digest == res.descriptor.digest
    img = store.image("busybox")
    host = host_platform()
    assert (img.config.os, img.config.architecture, img.config.variant) == ("linux", host.architecture, host.variant)
    assert img.config.config.cmd == ["sh"] and img.config.config.env == ["A=1"]
    assert img.manifest.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert [h.comment for h in img.config.history] == ["Imported from busybox-rootfs"]
    # the diffID is the sha256 of the uncompressed layer
    with store.open_blob(res.layer.digest) as f:
        tar_bytes = gzip.decompress(f.read())
    assert img.config.diff_ids == [res.diff_id] == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]
    members = layer_members(store, res.layer.digest)
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode & 0o111
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].mode & 0o7777 == 0o1777 and members["home/app"].uid == 1000
    assert b"app:x:1000:1000" in (busybox_rootfs / "etc/passwd").read_bytes()
    assert store.verify() == []


def test_import_leaves_out_a_store_inside_the_tree(busybox_rootfs):
    store = Store(busybox_rootfs / "var" / "pybuild")
    res = import_image(store, busybox_rootfs, "self")
    names = layer_members(store, res.layer.digest)
    assert "var" in names and not any(n.startswith("var/pybuild") for n in names)
    with pytest.raises(ImageImportError, match="store root itself"):
        import_image(store, store.root, "x")


def test_import_is_reproducible(tmp_path, busybox_rootfs):
    a = import_image(Store(tmp_path / "a"), busybox_rootfs, "x", created=FIXED)
    b = import_image(Store(tmp_path / "b"), busybox_rootfs, "y", created=FIXED)
    assert a.descriptor.digest == b.descriptor.digest and a.layer.digest == b.layer.digest


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_import_tar_any_compression(root, tmp_path, busybox_rootfs, compress):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(busybox_rootfs, arcname=".")
    tar_bytes = raw.getvalue()
    if compress == "gzip":
        payload = gzip.compress(tar_bytes)
    elif compress == "zstd":
        import zstandard
        payload = zstandard.ZstdCompressor().compress(tar_bytes)
    else:
        payload = tar_bytes
    src = tmp_path / "rootfs.tar"
    src.write_bytes(payload)
    store = Store(root)
    res = import_image(store, src, "fromtar:v1", platform=Platform("linux", "arm64", "v8"))
    # the tar passes through unchanged: its digest is the diffID
    assert res.diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    assert store.image_config("fromtar:v1", Platform("linux", "arm64")).architecture == "arm64"
    assert "./bin/busybox" in layer_members(store, res.layer.digest)


def test_cli_import_from_stdin(root, busybox_rootfs):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tf:
        tf.add(busybox_rootfs / "etc", arcname="etc")
    out = run_pybuild("import", "-", "stdin:1", "-q", root=root, stdin=raw.getvalue(), text=False, check_rc=0)
    store = Store(root)
    assert out.stdout.decode().strip() == store.image_id(store.resolve("stdin:1"))   # the config digest
    assert store.image_config("stdin:1").history[0].comment == "Imported from -"


def test_import_rejects_bad_sources(root, tmp_path):
    store = Store(root)
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(ImageImportError, match="not a tar archive"):
        import_image(store, junk, "x")
    with pytest.raises(ImageImportError, match="no such directory or tar file"):
        import_image(store, tmp_path / "missing", "x")
    with pytest.raises(InvalidReferenceError, match="lower-case"):
        import_image(store, tmp_path, "Bad/Name")
    assert store.list_images() == []
    assert list(store.blobs()) == []


@pytest.mark.parametrize("changes, expected", [
    (['CMD ["sh", "-c", "echo hi"]'], {"Cmd": ["sh", "-c", "echo hi"]}),
    (["CMD echo hi"], {"Cmd": ["/bin/sh", "-c", "echo hi"]}),
    (['ENTRYPOINT ["/bin/busybox"]', "cmd []"], {"Entrypoint": ["/bin/busybox"], "Cmd": []}),
    (["ENV A=1 B=\"two words\"", "ENV C some value"], {"Env": ["A=1", "B=two words", "C=some value"]}),
    (["ENV A=1", "ENV A=2"], {"Env": ["A=2"]}),
    (['LABEL org.example.x="y z" k=v'], {"Labels": {"k": "v", "org.example.x": "y z"}}),
    (["EXPOSE 80 53/udp 8000-8001"], {"ExposedPorts": {"53/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}}}),
    (['VOLUME ["/data", "/logs"]', "VOLUME /x /y"], {"Volumes": {"/data": {}, "/logs": {}, "/x": {}, "/y": {}}}),
    (["WORKDIR /srv", "WORKDIR app"], {"WorkingDir": "/srv/app"}),
    (["USER app:app", "STOPSIGNAL SIGTERM", "ONBUILD RUN true"],
     {"User": "app:app", "StopSignal": "SIGTERM", "OnBuild": ["RUN true"]}),
])
def test_changes(changes, expected):
    assert apply_changes(ImageConfig(), changes).config.to_dict() == expected


@pytest.mark.parametrize("change, why", [
    ("RUN echo", "not supported"),
    ("ENV", "requires at least one argument"),
    ("LABEL novalue", "novalue=<value>"),
    ("EXPOSE 70000", "invalid containerPort"),
    ("EXPOSE 80/icmp", "invalid proto"),
    ("EXPOSE http", "invalid"),
    ('ENV A="unterminated', "double-quote"),
])
def test_bad_changes(change, why):
    with pytest.raises(BuildError, match=why):
        apply_changes(ImageConfig(), [change])


def test_cli_import_images_rmi_gc(root, busybox_rootfs, capsys):
    r = str(root)
    assert main(["--root", r, "import", str(busybox_rootfs), "bb:1", "--change", 'CMD ["sh"]', "-q"]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest.startswith("sha256:") and Store(root).image_id(Store(root).resolve("bb:1")) == digest
    assert main(["import", str(busybox_rootfs), "localhost:5000/team/bb", "--root", r]) == 0
    capsys.readouterr()
    assert main(["--root", r, "images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    rows = {tuple(line.split()[:2]) for line in lines[1:]}
    assert rows == {("bb", "1"), ("localhost:5000/team/bb", "latest")}
    image_id = Store(root).image_id(Store(root).resolve("bb:1"))
    assert any(image_id[7:19] in line and "ago" in line and "MB" in line for line in lines)
    assert main(["--root", r, "images", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in data} == {"bb:1", "localhost:5000/team/bb:latest"}
    assert all(d["size"] > 1_000_000 and d["platform"].startswith("linux/") for d in data)
    # both tags share the layer: removing one keeps it, removing both empties the store
    assert main(["--root", r, "rmi", "bb:1"]) == 0
    assert "Untagged: bb:1" in capsys.readouterr().out
    store = Store(root)
    assert len(list(store.blobs())) == 3 and store.verify() == []
    assert main(["--root", r, "rmi", "--no-prune", "localhost:5000/team/bb"]) == 0
    assert len(list(store.blobs())) == 3
    assert main(["--root", r, "store", "gc"]) == 0
    assert "removed 3 blobs" in capsys.readouterr().out
    assert list(store.blobs()) == []
    assert main(["--root", r, "store", "verify"]) == 0
    assert main(["--root", r, "rmi", "nothere"]) == 1
    assert "'nothere' not found" in capsys.readouterr().err


def test_cli_store_verify_reports_problems(busybox_image, capsys):
    store = Store(busybox_image)
    _, manifest = store.image_manifest("busybox")
    path = store.blob_path(manifest.config.digest)
    path.unlink()
    assert main(["--root", str(busybox_image), "store", "verify"]) == 1
    assert manifest.config.digest in capsys.readouterr().out


def test_busybox_image_fixture(busybox_image):
    store = Store(busybox_image)
    img = store.image("busybox:latest")
    assert img.config.config.cmd == ["sh"] and img.config.created == FIXED
    assert store.verify() == []
    with pytest.raises(NotFoundError):
        store.resolve("busybox:other")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    return path


@pytest.mark.integration
def test_umoci_unpacks_and_checks_diffids(busybox_image, tmp_path):
    umoci = _need("umoci")
    bundle = tmp_path / "bundle"
    subprocess.run([umoci, "unpack", "--image", f"{busybox_image}/images:busybox:latest", str(bundle)],
                   check=True, capture_output=True)
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
    assert (bundle / "rootfs" / "bin" / "sh").is_symlink()
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]
    # Names with a registry and a port work too: the annotation holds the familiar name.
    store = Store(busybox_image)
    store.tag("localhost:5000/team/app:v1", store.resolve("busybox"))
    subprocess.run([umoci, "unpack", "--image", f"{busybox_image}/images:localhost:5000/team/app:v1",
                    str(tmp_path / "bundle2")], check=True, capture_output=True)
    assert (tmp_path / "bundle2" / "rootfs" / "etc" / "passwd").is_file()


@pytest.mark.integration
def test_skopeo_inspects_full_and_familiar_names(busybox_image):
    skopeo = _need("skopeo")
    store = Store(busybox_image)
    out = subprocess.run([skopeo, "inspect", f"oci:{busybox_image}/images:busybox:latest"],
                         check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["Digest"] == store.resolve("busybox").digest
    assert info["Architecture"] == host_platform().architecture and len(info["Layers"]) == 1


@pytest.mark.integration
def test_podman_runs_the_imported_image(busybox_image):
    skopeo, podman = _need("skopeo"), _need("podman")
    name = f"localhost/pybuild-test-{uuid.uuid4().hex[:12]}:latest"
    subprocess.run([skopeo, "copy", "-q", f"oci:{busybox_image}/images:busybox:latest", f"containers-storage:{name}"],
                   check=True, capture_output=True)
    try:
        # Flags instead of a containers.conf: this machine needs runc, cgroupfs and bounded rlimits.
        out = subprocess.run([podman, "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                              "run", "--rm", "--network", "host", "--ulimit", "nofile=1024:1024",
                              "--ulimit", "nproc=1024:1024", "--user", "app", name,
                              "sh", "-c", "echo hello from $(id -un) in $(pwd); ls /bin/busybox"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["hello from app in /", "/bin/busybox"]
    finally:
        subprocess.run([podman, "rmi", "-f", name], capture_output=True)
