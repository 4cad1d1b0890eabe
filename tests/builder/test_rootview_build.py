"""Builds that try to read a host file through a lower-layer symlink an upper directory hides.

`RUN ln -s <canary> /a` then `COPY --link d /a/` leaves a stage whose /a is, by overlay's
rules, a directory holding only d's files; a view that joined host paths followed the lower
link on the host. Each build here aims such a link at a canary directory holding a unique
secret and asserts that the secret is in no blob of the store and that the build either fails
saying what was not found, or copies what overlay gives.
"""
from __future__ import annotations

import gzip
import os
import shutil
import uuid
from pathlib import Path

import pytest

from builder.errors import BuildError
from tests.fixtures.building import build_in

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds with RUN need root (runc, overlay)")


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    """A host directory with a secret in shadow-, passwd- and file-shaped places."""
    d = tmp_path / "canary"
    secret = f"canary-{uuid.uuid4()}"
    (d / "etc").mkdir(parents=True)
    (d / "sub").mkdir()
    (d / "etc" / "shadow").write_text(f"root:{secret}:19000::::::\n")
    (d / "shadow").write_text(f"root:{secret}:19000::::::\n")
    (d / "passwd").write_text(f"{secret}:x:4242:4242::/:/bin/sh\nevil:x:4242:4242::/:/bin/sh\n")
    (d / "group").write_text("evil:x:4242:\n")
    (d / "sub" / "loot").write_text(secret)
    return d, secret


def _store_bytes(root: Path) -> bytes:
    """Everything in the store's blobs, layers decompressed, to search for the secret."""
    out = []
    for p in (root / "images").rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            out.append(data)
    return b"\n".join(out)


def _assert_no_secret(root: Path, secret: str) -> None:
    assert secret.encode() not in _store_bytes(root), "the host canary's secret reached the image"


def _build(root: Path, tmp_path: Path, dockerfile: str, files: dict | None = None):
    return build_in(root, tmp_path / f"ctx-{uuid.uuid4().hex[:6]}", dockerfile,
                    files if files is not None else {"d/x": "from d\n"}, tags=["loot:1"])


@needs_root
@pytest.mark.timeout(180)
@pytest.mark.parametrize("target", ["/", "canary"])
def test_copy_from_through_a_hidden_link_is_not_found(busybox_image, tmp_path, canary, target) -> None:
    """The issue's exact Dockerfile (/a -> /), and the same aimed at a canary directory."""
    cdir, secret = canary
    link, wanted = ("/", "/a/etc/shadow") if target == "/" else (str(cdir), "/a/shadow")
    if target == "/":
        # /etc/shadow of the host cannot hold our secret: plant a unique file at the root's level.
        secret = f"canary-root-{uuid.uuid4()}"
        wanted = "/a" + str(cdir / "etc" / "shadow")
        (cdir / "etc" / "shadow").write_text(secret)
    df = (f"FROM busybox AS s1\nRUN ln -s {link} /a\nCOPY --link d /a/\n"
          f"FROM busybox\nCOPY --from=s1 {wanted} /loot/\n")
    with pytest.raises(BuildError, match=r"not found in s1"):
        _build(busybox_image, tmp_path, df)
    _assert_no_secret(busybox_image, secret)


@needs_root
@pytest.mark.timeout(180)
def test_copy_from_of_the_hidden_link_dir_copies_only_the_upper(busybox_image, tmp_path, canary) -> None:
    """COPY --from of /a/ (and /a/sub) gives overlay's /a: d's files, nothing of the host."""
    cdir, secret = canary
    df = (f"FROM busybox AS s1\nRUN ln -s {cdir} /a\nCOPY --link d /a/\n"
          "FROM busybox\nCOPY --from=s1 /a/ /loot/\nRUN ls -A /loot > /listing\n")
    _build(busybox_image, tmp_path, df)
    _assert_no_secret(busybox_image, secret)
    store = _store_bytes(busybox_image)
    assert b"from d\n" in store
    with pytest.raises(BuildError, match=r"not found in s1"):
        _build(busybox_image, tmp_path, df.replace("/a/ /loot/", "/a/sub /loot/"))
    _assert_no_secret(busybox_image, secret)


def _hostile_base(root: Path, cdir: Path) -> None:
    """`evil-base:1`: busybox's rootfs with /etc a link to the canary directory."""
    from registry.imports import import_image
    from registry.store import Store
    from tests.fixtures.images import make_busybox_rootfs
    rootfs = make_busybox_rootfs(root.parent / "evil-rootfs")
    shutil.rmtree(rootfs / "etc")
    os.symlink(str(cdir), rootfs / "etc")
    import_image(Store(root), rootfs, "evil-base:1", created="2000-01-01T00:00:00Z")


@needs_root
@pytest.mark.timeout(180)
@pytest.mark.parametrize("step", ["COPY --chown=evil d /o/", "COPY --chown=evil:evil d /o/",
                                  "USER evil\nRUN true", "USER 4242:evil\nRUN true"])
def test_user_lookups_through_a_hidden_etc_link(busybox_image, tmp_path, canary, step) -> None:
    """/etc -> canary in a lower layer, an upper /etc directory from COPY --link: the user and
    group databases are the upper /etc's (none), never the canary's."""
    cdir, secret = canary
    _hostile_base(busybox_image, cdir)
    df = f"FROM evil-base:1\nCOPY --link d /etc/\n{step}\n"
    with pytest.raises(BuildError, match=r"unable to find (user|group) evil"):
        _build(busybox_image, tmp_path, df)
    _assert_no_secret(busybox_image, secret)


@needs_root
@pytest.mark.timeout(180)
def test_user_lookup_without_the_upper_dir_stays_inside_the_image(busybox_image, tmp_path, canary) -> None:
    """Without the hiding directory, /etc is the image's absolute link: it resolves inside the
    rootfs (to a path the image lacks), so the user is still unknown."""
    cdir, secret = canary
    _hostile_base(busybox_image, cdir)
    with pytest.raises(BuildError, match=r"unable to find user evil"):
        _build(busybox_image, tmp_path, "FROM evil-base:1\nCOPY --chown=evil d /o/\n")
    _assert_no_secret(busybox_image, secret)
