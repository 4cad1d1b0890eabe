"""The registry commands of the `pybuild` CLI against a real registry:2."""
from __future__ import annotations

import json

import pytest

from builder.cli import main
from registry.store import Store
from tests.fixtures.synthetic_images import make_image, multi_platform_image, tar_layer
from tests.fixtures.cli import run_pybuild

pytestmark = pytest.mark.integration


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_push_pull_inspect_manifest_tags_delete(capsys, registry, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    store = Store(a)
    ref = f"{registry.host}/cli/app:v1"
    src = make_image(store, "cli-app:v1", [tar_layer({"hello": b"world"})], cmd=["/bin/echo", "hi"])

    code, out, err = run(capsys, "--root", str(a), "push", "cli-app:v1", ref)
    assert code == 0 and out.strip() == f"{ref}@{src.digest}"
    assert "pushed" in err            # plain progress lines (not a terminal)

    code, out, _ = run(capsys, "push", "-q", "--root", str(a), "cli-app:v1", f"{registry.host}/cli/app:v2")
    assert code == 0

    code, out, err = run(capsys, "--root", str(b), "pull", ref)
    assert code == 0 and out.strip() == ref and src.digest in err
    assert Store(b).resolve(ref).digest == src.digest

    code, out, _ = run(capsys, "--root", str(b), "inspect", ref, "--format", "json")
    info = json.loads(out)
    assert info["Source"] == "local" and info["Digest"] == src.digest
    assert info["Config"]["Cmd"] == ["/bin/echo", "hi"] and info["Platform"] == "linux/amd64"

    code, out, _ = run(capsys, "--root", str(tmp_path / "empty"), "inspect", ref)
    assert code == 0 and "Source:" in out and "remote" in out and src.digest in out and "Layers (1)" in out

    code, out, _ = run(capsys, "manifest", ref)
    assert out.encode().rstrip(b"\n") == Store(a).read_blob(src.digest).rstrip(b"\n")

    code, out, _ = run(capsys, "tags", f"{registry.host}/cli/app", "-n", "1")
    assert out.split() == ["v1", "v2"]

    code, out, _ = run(capsys, "delete", f"{registry.host}/cli/app:v2")
    assert code == 0 and src.digest in out
    code, out, err = run(capsys, "manifest", ref)
    assert code == 1 and "not found" in err


def test_copy_all_platforms_and_catalog(capsys, fresh_registry, registry, tmp_path):
    store = Store(tmp_path / "a")
    ref = f"{registry.host}/cli/multi:v1"
    index, _ = multi_platform_image(store, ref, seed=21)
    assert run(capsys, "--root", str(tmp_path / "a"), "push", ref)[0] == 0
    code, out, _ = run(capsys, "copy", "--all-platforms", ref, f"{fresh_registry.host}/x/multi:v1")
    assert code == 0 and out.strip().endswith(index.digest)
    code, out, _ = run(capsys, "inspect", "--remote", f"{fresh_registry.host}/x/multi:v1", "--format", "json",
                       "--platform", "linux/arm64")
    info = json.loads(out)
    assert info["Index"]["Digest"] == index.digest and info["Platform"] == "linux/arm64/v8"
    code, out, _ = run(capsys, "catalog", fresh_registry.host)
    assert out.split() == ["x/multi"]


def test_errors_are_one_line(capsys, registry, tmp_path):
    code, _, err = run(capsys, "--root", str(tmp_path), "pull", f"{registry.host}/cli/missing:v1")
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    code, _, err = run(capsys, "--root", str(tmp_path), "push", "nothing-here:v1")
    assert code == 1 and "not found in the store" in err
    code, _, err = run(capsys, "pull", "bad//name")
    assert code == 1 and "invalid reference" in err
    code, _, err = run(capsys, "pull", "no-such-host.invalid/app:v1")
    assert code == 1 and "cannot resolve host" in err


def test_cli_entry_point_runs(registry, tmp_path):
    """The console script path (python -m builder) works end to end."""
    store = Store(tmp_path / "a")
    make_image(store, "entry:v1", [tar_layer({"e": b"e"})])
    r = run_pybuild("push", "entry:v1", f"{registry.host}/cli/entry:v1", root=tmp_path / "a", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(f"{registry.host}/cli/entry:v1@sha256:")
