"""buildah's conformance cases (../shared/conformance/buildah/cases.json, materialised by its
prepare.py), each built with this tree against local bases served from a registry:2 on
127.0.0.1:5000 (tests/fixtures/conformance_cases.py). What each case must give is data, in
conformance_expectations.json beside this file: slug -> {"builds": true} or {"fails": REGEX}, the
regex searched (multi-line) in the build's stderr. A failure is only expected where buildah's Go
table expects one (`expect_fail`), and then must match the table's `failure_regex` too.

The Debian minbase is made once with debootstrap from the machine's apt sources and cached at
/var/tmp/pybuild-conformance-debian (~30-75 s when absent). Skips only when the conformance data
is absent. Regenerate the expectations from a run of the tree with
`scripts/conformance_parity.py build --out R.json` and review every change against cases.json.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fixtures.conformance import CONFORMANCE_DIR
from tests.fixtures.conformance_cases import REPO, data_dir, environment, load_cases

EXPECTATIONS = json.loads((Path(__file__).with_name("conformance_expectations.json")).read_text())


@pytest.fixture(scope="module")
def conformance_data() -> Path:
    data = data_dir()
    if data is None:
        pytest.skip(f"buildah conformance data not found at {CONFORMANCE_DIR}/buildah/cases.json "
                    "(set PYBUILD_CONFORMANCE_DIR)")
    return data


@pytest.fixture(scope="module")
def cases(conformance_data) -> dict[str, dict]:
    return {c["slug"]: c for c in load_cases(conformance_data)}


@pytest.fixture(scope="module")
def conformance_env(conformance_data, tmp_path_factory):
    with environment(REPO, conformance_data, tmp_path_factory.mktemp("conformance") / "work") as env:
        yield env


def test_expectations_cover_every_case(cases):
    assert sorted(EXPECTATIONS) == sorted(cases)
    for slug, want in EXPECTATIONS.items():
        assert set(want) in ({"builds"}, {"fails"}), slug
        assert want.get("builds", True) is True, slug
        if "fails" in want:
            re.compile(want["fails"])
            assert cases[slug]["expect_fail"], f"{slug}: expected to fail, but buildah's table builds it"


@pytest.mark.parametrize("slug", sorted(EXPECTATIONS))
def test_case(slug, cases, conformance_env):
    case = cases.get(slug)
    if case is None:
        pytest.fail(f"{slug} is in conformance_expectations.json but not in cases.json")
    want = EXPECTATIONS[slug]
    result = conformance_env.build(case)
    stderr = result.get("stderr", "")
    assert "Traceback (most recent call last)" not in stderr, f"{slug}: traceback:\n{stderr[-4000:]}"
    if "builds" in want:
        assert result["ok"], f"{slug} should build but failed: {result['error']}\n{stderr[-2000:]}"
        return
    assert not result["ok"], f"{slug} should fail with /{want['fails']}/ but built"
    assert re.search(want["fails"], stderr, re.M), \
        f"{slug} failed, but not with /{want['fails']}/:\n{stderr[-2000:]}"
    if case.get("failure_regex"):
        assert re.search(case["failure_regex"], stderr), \
            f"{slug}: error does not match buildah's failure_regex /{case['failure_regex']}/:\n{stderr[-2000:]}"
