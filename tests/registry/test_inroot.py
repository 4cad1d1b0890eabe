"""registry.inroot: paths in an untrusted tree resolve inside its root, by openat2 or by the
component-wise fallback, the same way; a host canary outside the tree is never reached."""
from __future__ import annotations

import os

import pytest

from registry import inroot


@pytest.fixture(params=["openat2", "walk"])
def mode(request, monkeypatch):
    if request.param == "openat2" and not inroot.openat2_available():
        pytest.skip("kernel without openat2")
    if request.param == "walk":
        monkeypatch.setattr(inroot, "_have_openat2", False)
    return request.param


@pytest.fixture
def tree(tmp_path):
    canary = tmp_path / "host"
    canary.mkdir()
    (canary / "secret").write_text("HOST-SECRET")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "secret").write_text("inside")
    (root / "abs").symlink_to(str(canary))               # absolute: re-rooted
    (root / "climb").symlink_to("../../../../" + str(canary))
    (root / "etc" / "up").symlink_to("../..")
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("/made/here")
    (root / "magic").symlink_to("/proc/self/root" + str(canary))
    return root, canary


def read(root_fd: int, path: str, **kw) -> str:
    fd = inroot.open_in_root(root_fd, path, os.O_RDONLY, **kw)
    with os.fdopen(fd) as f:
        return f.read()


def test_links_resolve_inside_the_root(tree, mode):
    root, canary = tree
    with inroot.opened_root(root) as rfd:
        for path in ("abs/secret", "climb/secret", "/etc/up/up/abs/secret"):
            with pytest.raises(FileNotFoundError):
                read(rfd, path)
        assert read(rfd, "etc/up/../etc/secret") == "inside"
        assert read(rfd, "/../../etc/secret") == "inside"
        with pytest.raises(OSError):
            read(rfd, "loop")
        with pytest.raises(OSError):
            read(rfd, "magic/secret")
        with pytest.raises(OSError):
            read(rfd, "abs", follow=False)


def test_makedirs_follows_links_inside(tree, mode):
    root, canary = tree
    with inroot.opened_root(root) as rfd:
        os.close(inroot.makedirs_in_root(rfd, "abs/new/deeper"))
        os.close(inroot.makedirs_in_root(rfd, "dangling/x"))
        fd = inroot.open_in_root(rfd, "climb/f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, follow=False)
        os.close(fd)
    assert (root / str(canary).lstrip("/") / "new" / "deeper").is_dir()
    assert (root / "made" / "here" / "x").is_dir()
    assert (root / str(canary).lstrip("/") / "f").is_file()
    assert sorted(os.listdir(canary)) == ["secret"]


def test_open_parent_and_last_component_not_followed(tree, mode):
    root, canary = tree
    with inroot.opened_root(root) as rfd:
        dfd, name = inroot.open_parent(rfd, "/etc/up/abs")
        try:
            assert name == "abs"
            assert os.readlink(name, dir_fd=dfd) == str(canary)
        finally:
            os.close(dfd)
        fd = inroot.open_in_root(rfd, "abs", os.O_PATH, follow=False)
        os.close(fd)
        with pytest.raises(OSError):
            inroot.open_in_root(rfd, "abs", os.O_RDONLY | os.O_DIRECTORY, follow=False)


def test_open_beneath_refuses_every_link(tree, mode):
    root, canary = tree
    with inroot.opened_root(root) as rfd:
        assert os.read(fd := inroot.open_beneath(rfd, "etc/secret"), 100) == b"inside"
        os.close(fd)
        for path in ("abs/secret", "etc/up/etc/secret", "../root/etc/secret", "abs"):
            with pytest.raises(OSError):
                os.close(inroot.open_beneath(rfd, path))


def test_open_beneath_refuses_any_link(tree, mode):
    """open_beneath re-finds an entry by its link-free path: a link anywhere on the way (even
    one resolving inside the root) is refused, never followed."""
    root, canary = tree
    (root / "etc" / "d").mkdir()
    (root / "inner").symlink_to("etc")
    with inroot.opened_root(root) as rfd:
        fd = inroot.open_beneath(rfd, "etc/d", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert os.fstat(fd).st_ino == os.stat(root / "etc" / "d").st_ino
        finally:
            os.close(fd)
        for path in ("inner/d", "abs/sub", "abs", "etc/up/etc", "magic"):
            with pytest.raises(OSError):
                os.close(inroot.open_beneath(rfd, path, os.O_RDONLY | os.O_DIRECTORY))
        with pytest.raises(OSError):
            inroot.open_beneath(rfd, "etc/../etc/d", os.O_RDONLY | os.O_DIRECTORY)
