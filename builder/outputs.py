"""Where a built image goes: tags in the store, exports (--output), pushes, --iidfile, --metadata-file.

``--output`` follows docker buildx: ``type=image`` (the store; the default), ``type=oci,dest=P``
(an OCI layout archive, or a directory with ``tar=false``), ``type=docker,dest=P`` (a
docker-archive that ``docker load``/``podman load`` accept), ``type=tar,dest=P`` (the flattened
root filesystem as a tar), ``type=local,dest=DIR`` (the root filesystem as a directory),
``type=registry`` (push the tags). ``dest=-`` writes an archive to standard output.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from registry.manifest import Descriptor, Index
from registry.store import Store

from .errors import BuildError
from .layers import LayerMaker, LayerRef
from .snapshot import mount_snapshot

OUTPUT_TYPES = ("image", "registry", "oci", "docker", "tar", "local")


@dataclass
class OutputSpec:
    """One parsed --output value."""

    type: str
    dest: str = ""
    attrs: dict[str, str] = field(default_factory=dict)


def parse_output(spec: str) -> OutputSpec:
    """Parse ``type=T,dest=P[,k=v]`` (a bare path means type=local,dest=PATH, as docker does)."""
    if "=" not in spec:
        return OutputSpec("tar" if spec == "-" else "local", spec)
    attrs: dict[str, str] = {}
    for part in spec.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            raise BuildError(f"--output {spec}: {part!r} is not key=value")
        attrs[k.strip().lower()] = v.strip()
    typ = attrs.pop("type", "")
    if typ not in OUTPUT_TYPES:
        raise BuildError(f"--output {spec}: unknown type {typ!r}; use one of {', '.join(OUTPUT_TYPES)}")
    dest = attrs.pop("dest", "")
    if typ in ("oci", "docker", "tar", "local") and not dest:
        raise BuildError(f"--output {spec}: type={typ} needs dest=PATH")
    return OutputSpec(typ, dest, attrs)


def _open_dest(dest: str):
    if dest == "-":
        return os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    return open(dest, "wb")


def _atomic_file(dest: str):
    """(file object, finish callable): write to a temp file renamed onto ``dest`` at the end."""
    if dest == "-":
        f = _open_dest(dest)
        return f, f.close
    d = Path(dest).resolve()
    d.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d.parent)
    f = os.fdopen(fd, "wb")

    def finish() -> None:
        f.close()
        os.replace(tmp, d)
    return f, finish


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    tar.addfile(ti, io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, store: Store, name: str, digest: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = store.blob_size(digest)
    ti.mode = 0o644
    with store.open_blob(digest) as f:
        tar.addfile(ti, f)


def export_oci(store: Store, manifest: Descriptor, blobs: list[str], dest: str, tags: list[str],
               as_tar: bool = True) -> None:
    """An OCI image layout with the image (archive, or directory when ``as_tar`` is False)."""
    ann = {}
    if tags:
        from registry.reference import parse_reference
        ann["org.opencontainers.image.ref.name"] = parse_reference(tags[0]).tag or "latest"
    entry = Descriptor(manifest.media_type, manifest.digest, manifest.size, annotations=dict(ann))
    index = Index(manifests=[entry]).to_bytes()
    layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    all_blobs = [manifest.digest] + blobs
    if not as_tar:
        out = Path(dest)
        (out / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (out / "oci-layout").write_bytes(layout)
        for d in all_blobs:
            shutil.copyfile(store.blob_path(d), out / "blobs" / "sha256" / d.split(":", 1)[1])
        (out / "index.json").write_bytes(index)
        return
    f, finish = _atomic_file(dest)
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", layout)
        _add_bytes(tar, "index.json", index)
        for d in dict.fromkeys(all_blobs):
            _add_blob(tar, store, "blobs/sha256/" + d.split(":", 1)[1], d)
    finish()


def export_docker(store: Store, config_digest: str, layers: list[LayerRef], dest: str,
                  tags: list[str]) -> None:
    """A docker-archive (``docker save`` format): manifest.json, the config and layer blobs."""
    from registry.reference import parse_reference
    repo_tags = [parse_reference(t).familiar for t in tags]
    cfg_name = config_digest.split(":", 1)[1] + ".json"
    layer_names = [f"{l.descriptor.digest.split(':', 1)[1]}/layer.tar" for l in layers]
    manifest = [{"Config": cfg_name, "RepoTags": repo_tags, "Layers": layer_names}]
    f, finish = _atomic_file(dest)
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_blob(tar, store, cfg_name, config_digest)
        for name, l in zip(layer_names, layers):
            _add_blob(tar, store, name, l.descriptor.digest)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    finish()


def export_rootfs(root: Path, maker: LayerMaker, layers: list[LayerRef], dest: str, as_tar: bool,
                  source_date_epoch: int | None = None) -> None:
    """The image's flattened root filesystem as a tar or a directory."""
    from registry.layer import write_tree_tar
    maker.dirs(layers)
    with mount_snapshot(root, [l.diff_id for l in layers], writable=False) as snap:
        if as_tar:
            f, finish = _atomic_file(dest)
            write_tree_tar(snap.merged, f, source_date_epoch=source_date_epoch)
            finish()
        else:
            out = Path(dest)
            out.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(["cp", "-a", f"{snap.merged}/.", str(out)], capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"--output type=local,dest={dest}: copy failed: {r.stderr.strip()}")


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename."""
    p = Path(path).resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, p)


def push_tags(store: Store, tags: list[str], insecure_registries: tuple[str, ...] = ()) -> list[str]:
    """Push each tag to its registry; returns the pushed digests."""
    from registry.client import ClientOptions, RegistryClient
    from registry.transfer import push
    if not tags:
        raise BuildError("--push needs at least one -t NAME[:TAG] saying where to push")
    digests = []
    with RegistryClient(ClientOptions(insecure_registries=tuple(insecure_registries))) as client:
        for t in tags:
            res = push(client, store, t)
            digests.append(res.digest)
    return digests
