"""Multi-platform builds: the platform list, the index over the per-platform images, Docker
media types, the per-platform outputs, and pushes by digest.

One engine run per platform (``build.py`` drives them, side by side when the machine has more
than one core); each run commits its image manifest; this module writes the OCI image index (or
Docker manifest list) over them, which is what gets tagged, pushed and exported.
"""
from __future__ import annotations

from pathlib import Path

from registry import mediatypes as mt
from registry.errors import RegistryError
from registry.manifest import Descriptor, Index, Manifest
from registry.platform import Platform, host_platform, parse_platform
from registry.store import Store

from ..errors import BuildError

_DOCKER_LAYER = {mt.OCI_LAYER: mt.DOCKER_LAYER, mt.OCI_LAYER_GZIP: mt.DOCKER_LAYER_GZIP,
                 mt.OCI_LAYER_ZSTD: mt.DOCKER_LAYER_ZSTD}


def parse_platforms(text: str | None) -> list[Platform]:
    """``linux/amd64,linux/arm64`` -> platforms in order, each once (default: this host's)."""
    if not text:
        return [host_platform()]
    out: list[Platform] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            p = parse_platform(part)
        except RegistryError as exc:
            raise BuildError(f"--platform {text}: {exc}") from None
        if all(str(p) != str(q) for q in out):
            out.append(p)
    if not out:
        raise BuildError(f"--platform {text!r}: no platform given (e.g. linux/amd64,linux/arm64)")
    return out


def platform_dir(p: Platform) -> str:
    """The subdirectory a tar/local output gives one platform (BuildKit: ``linux_arm_v7``)."""
    return "_".join(x for x in (p.os, p.architecture, p.variant) if x)


def wants_docker(fmt: str, specs) -> bool:
    """Docker media types: ``--format docker`` or an output with ``oci-mediatypes=false``."""
    if fmt not in ("oci", "docker"):
        raise BuildError(f"--format {fmt}: use oci or docker")
    return fmt == "docker" or any(s.attrs.get("oci-mediatypes") == "false" for s in specs)


def as_docker(store: Store, manifest: Descriptor) -> Descriptor:
    """The same image with Docker v2 schema 2 media types (same config and layer blobs)."""
    doc = store.get_manifest(manifest.digest)
    assert isinstance(doc, Manifest)
    layers = []
    for l in doc.layers:
        t = _DOCKER_LAYER.get(l.media_type)
        if t is None:
            raise BuildError(f"a layer of media type {l.media_type} has no Docker equivalent: "
                             "build with the OCI format")
        layers.append(Descriptor(t, l.digest, l.size, dict(l.annotations)))
    cfg = Descriptor(mt.DOCKER_CONFIG, doc.config.digest, doc.config.size)
    return store.put_manifest(Manifest(config=cfg, layers=layers, media_type=mt.DOCKER_MANIFEST))


def write_index(store: Store, children: list[tuple[Descriptor, dict]], docker: bool = False,
                attestations: list[Descriptor] | None = None) -> Descriptor:
    """The index (Docker manifest list when ``docker``) over (manifest, config) pairs, each
    entry's platform taken from its config, as buildah and BuildKit write it; with
    ``attestations`` (one attestation manifest per child, OCI only) their entries follow the
    images, as BuildKit's."""
    plats = []
    for _desc, cfg in children:
        plat = {"architecture": cfg.get("architecture", ""), "os": cfg.get("os", "")}
        for k in ("variant", "os.version", "os.features"):
            if cfg.get(k):
                plat[k] = cfg[k]
        plats.append(Platform.from_dict(plat))
    if not docker:
        from ..attest.attach import image_index
        atts = attestations or [None] * len(children)
        return image_index(store, [(d, p, a) for (d, _c), p, a in zip(children, plats, atts)])
    entries = [Descriptor(desc.media_type, desc.digest, desc.size, platform=p) for (desc, _c), p in zip(children, plats)]
    return store.put_manifest(Index(manifests=entries, media_type=mt.DOCKER_MANIFEST_LIST))


def refuse_docker_output(platforms: list[Platform]) -> None:
    raise BuildError(f"--output type=docker cannot hold a multi-platform image "
                     f"({', '.join(map(str, platforms))}): a docker-archive loads one image per name; "
                     "use -o type=oci,dest=FILE (an index), or build one --platform at a time")


def export_rootfs_multi(root: Path, maker, runs, dest: str, as_tar: bool, sde: int | None) -> None:
    """tar/local of several platforms: one ``linux_amd64/``-like directory per platform (a
    directory tree, or one tar whose entries carry the prefix), as BuildKit writes them."""
    from registry.tarwriter import write_tree_tar
    from ..runtime.snapshot import mount_snapshot
    from .outputs import _atomic_file, export_rootfs
    if not as_tar:
        for r in runs:
            export_rootfs(root, maker, r.final.layers, str(Path(dest) / platform_dir(r.platform)), False, sde)
        return
    f, finish = _atomic_file(dest)
    for i, r in enumerate(runs):
        maker.dirs(r.final.layers)
        with mount_snapshot(root, [l.diff_id for l in r.final.layers], writable=False) as snap:
            write_tree_tar(snap.merged, f, source_date_epoch=sde, prefix=platform_dir(r.platform) + "/",
                           close=i == len(runs) - 1)
    finish()


def push_by_digest(store: Store, top: Descriptor, names: list[str],
                   insecure_registries: tuple[str, ...] = ()) -> list[str]:
    """Push the image or index to each repository without a tag (``push-by-digest=true``);
    returns ``REPO@DIGEST`` for each."""
    from registry.client import ClientOptions, RegistryClient
    from registry.copier import plan_copy, run_copy
    from registry.endpoints import RemoteEndpoint, StoreEndpoint
    from registry.reference import parse_reference
    if not names:
        raise BuildError("push-by-digest=true needs name=REPO in the same --output (where to push)")
    out = []
    with RegistryClient(ClientOptions(insecure_registries=tuple(insecure_registries))) as client:
        for n in names:
            ref = parse_reference(n)
            src = StoreEndpoint(store)
            try:
                plan = plan_copy(src, top, where=top.digest, all_platforms=True)   # type: ignore[arg-type]
                dst = RemoteEndpoint(client.repository(ref.registry, ref.repository))
                res = run_copy(plan, src, dst, tag=None, workers=client.options.max_per_host)
            finally:
                src.close()
            out.append(f"{ref.registry}/{ref.repository}@{res.digest}")
    return out
