"""Where a built image goes: tags in the store, exports (--output), pushes, --iidfile, --metadata-file.

``--output`` follows docker buildx: ``type=image`` (the store; the default), ``type=oci,dest=P``
(an OCI layout archive, or a directory with ``tar=false``), ``type=docker,dest=P`` (a
docker-archive that ``docker load``/``podman load`` accept), ``type=tar,dest=P`` (the flattened
root filesystem as a tar), ``type=local,dest=DIR`` (the root filesystem as a directory),
``type=registry`` (push the tags). ``dest=-`` writes an archive to standard output.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from registry.manifest import Descriptor
from registry.store import Store

from ..errors import BuildError
from ..runtime.layers import LayerMaker, LayerRef
from ..runtime.snapshot import mount_snapshot

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
    # The last component is replaced, never followed: a link left at ``dest`` (by an earlier
    # local export of a hostile image, say) must not send the archive onto its target.
    d = Path(os.path.abspath(dest))
    d.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d.parent)
    os.fchmod(fd, _file_mode())        # an archive for others to load, not a 0600 temp file
    f = os.fdopen(fd, "wb")

    def finish() -> None:
        f.close()
        os.replace(tmp, d)
    return f, finish


def export_oci(store: Store, manifest: Descriptor, dest: str, tags: list[str], as_tar: bool = True) -> None:
    """An OCI image layout with the image (archive, or directory when ``as_tar`` is False): the
    one copy from the store into a LayoutTarWriter or a LayoutDir (whose index.json then holds
    only this image, named by the first tag's tag)."""
    from registry.copier import plan_copy, run_copy
    from registry.endpoints import StoreEndpoint
    from registry.layout import LayoutDir, LayoutTarWriter
    name = None
    if tags:
        from registry.reference import parse_reference
        name = parse_reference(tags[0]).tag or "latest"
    src = StoreEndpoint(store)
    try:
        plan = plan_copy(src, manifest, where=manifest.digest)   # type: ignore[arg-type]
        if not as_tar:
            run_copy(plan, src, LayoutDir(dest, replace=True), tag=name)
            return
        f, finish = _atomic_file(dest)
        sink = LayoutTarWriter(f, dest)
        run_copy(plan, src, sink, tag=name)
        sink.close()
        finish()
    finally:
        src.close()


def export_docker(store: Store, manifest: Descriptor, dest: str, tags: list[str]) -> None:
    """A docker-archive (``docker save`` format) of the image, under every tag."""
    from registry.archive import write_docker_archive
    from registry.reference import parse_reference
    f, finish = _atomic_file(dest)
    write_docker_archive(store, [(store.get_manifest(manifest.digest), [parse_reference(t).familiar for t in tags])], f)
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
            _extract_tree_into(snap.merged, dest)


def _extract_tree_into(tree: str | os.PathLike, dest: str) -> None:
    """Copy ``tree`` into the directory ``dest`` as a tar stream through registry.tarsafe.

    ``dest`` may hold anything (links from an earlier export of a hostile image, or planted
    there): the tree is written only through descriptors inside ``dest``, as a layer is. An
    entry of the image replaces what is at its path in ``dest`` (a link there is replaced, not
    followed, as BuildKit's local exporter does); entries resolve their parents inside
    ``dest``; what the image does not have is left in place.
    """
    import threading

    from registry.errors import RegistryError
    from registry.tarsafe import extract_tar
    from registry.tarwriter import write_tree_tar

    r, w = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(w, "wb") as out:
                write_tree_tar(tree, out)
        except BrokenPipeError:
            pass                  # the reader stopped on an error of its own, reported below
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failure.append(e)

    t = threading.Thread(target=produce, name="export-tree", daemon=True)
    t.start()
    error: Exception | None = None
    try:
        with os.fdopen(r, "rb") as src:
            try:
                extract_tar(src, dest, whiteouts="none")
            except (RegistryError, OSError) as e:
                error = e
    finally:
        t.join()
    if failure:
        e = failure[0]
        reason = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
        raise BuildError(f"--output type=local,dest={dest}: cannot read the image's tree: {reason}")
    if error is not None:
        raise BuildError(f"--output type=local,dest={dest}: {error}")


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename."""
    p = Path(path).resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)
    os.fchmod(fd, _file_mode())
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, p)


def _file_mode() -> int:
    """0666 less the umask: the mode `open()` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


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
