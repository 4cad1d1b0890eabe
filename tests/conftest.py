"""Shared pytest configuration: fixture modules live in tests/fixtures/, one concept each."""
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.conformance",
    "tests.fixtures.images", "tests.fixtures.building",
    "tests.fixtures.registry",
    "tests.fixtures.registry_secure", "tests.fixtures.credentials_env", "tests.fixtures.fault_proxy",
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh, empty pybuild store root for one test."""
    r = tmp_path / "root"
    r.mkdir()
    return r
