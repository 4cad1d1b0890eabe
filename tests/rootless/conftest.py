"""Fixtures of the rootless tests: the test user (skipping only where the kernel refuses user
namespaces) and a scratch directory of theirs, emptied of containers and removed afterwards."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.rootless import RootlessUser, remove, rootless_user


@pytest.fixture(scope="session")
def user() -> RootlessUser:
    u = rootless_user()
    probe = u.scratch()
    try:
        r = u.pybuild("unshare", "true", root=probe / "store")
    finally:
        remove(probe)
    if r.returncode != 0:
        if "user namespace" in r.stderr and ("disabled" in r.stderr or "cannot create" in r.stderr):
            pytest.skip(f"the kernel refuses user namespaces here: {r.stderr.strip()}")
        pytest.fail(f"pybuild unshare as {u.name} failed: {r.stderr}")
    return u


@pytest.fixture
def scratch(user: RootlessUser):
    d = user.scratch()
    yield d
    # A failed test may leave detached containers (and their conmon) running: remove them first.
    for containers in d.glob("*/containers"):
        r = user.pybuild("ps", "-a", "--format", "json", root=containers.parent)
        ids = [json.loads(line)["id"] for line in r.stdout.splitlines() if line.startswith("{")]
        if ids:
            user.pybuild("rm", "-f", *ids, root=containers.parent)
    remove(d)
