"""Image identity as Docker's (issue 14): the image ID is the config digest everywhere.

Real builds FROM the test store's busybox:
- `build` returns, prints ("writing image sha256:...") and writes to --iidfile the config digest;
  `images` shows its first 12 hex digits under IMAGE ID; `inspect`, `history`, `tag`, `rmi` and
  `run` take it (whole or as a 12-digit prefix);
- an untagged build is listed as `<none> <none>` and goes from the list once tagged;
- a fully cached rebuild, and the same build under another tag, give the same image ID (the
  cached steps keep their times and config-only steps take the time of the layer before them,
  as BuildKit's exporter does), with and without SOURCE_DATE_EPOCH;
- through the CLI in a subprocess (the issue's Done-when): `id=$(pybuild build -q .)` then
  `pybuild run --rm $id true`, and a second build prints the same ID;
- `FROM scratch` with only ENV/LABEL has no creation time (BuildKit's exporter takes it from
  the history, which has none), so every build of it has the same ID;
- an ambiguous ID prefix is a clear error naming the images it matches;
- `import` prints the image ID; `save ID` writes no RepoTags, and `load` of it keeps a <none>
  entry and prints "Loaded image ID: <config digest>", as docker does.
"""
from __future__ import annotations

import io
import json
import os
import time

import pytest

from builder.cli import main
from registry.manifest import ContainerConfig, ImageConfig, Manifest
from registry.store import Store
from tests.fixtures.building import build_in, write_context
from tests.fixtures.cli import run_pybuild

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (runc, overlay mounts)")]

DOCKERFILE = "FROM busybox\nENV A=1\nRUN echo hi > /hi\nCOPY f /f\nCMD [\"sh\"]\nLABEL x=y\n"


def test_image_id_is_the_config_digest_everywhere(busybox_image, tmp_path, capsys):
    r = str(busybox_image)
    out = io.StringIO()
    iid = tmp_path / "iid"
    res = build_in(busybox_image, tmp_path / "ctx", DOCKERFILE, {"f": "f\n"}, iidfile=str(iid), progress_out=out)
    store = Store(busybox_image)
    assert res.image_id == res.config_digest
    assert iid.read_text() == res.image_id
    assert f"writing image {res.image_id}" in out.getvalue()
    entry = store.resolve(res.image_id)
    assert entry.digest == res.manifest.digest and store.image_id(entry) == res.image_id
    short = res.image_id[7:19]
    assert store.resolve(short).digest == res.manifest.digest

    capsys.readouterr()
    assert main(["--root", r, "images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["REPOSITORY", "TAG", "IMAGE", "ID"]
    assert any(line.split()[:3] == ["<none>", "<none>", short] for line in lines[1:]), lines

    assert main(["--root", r, "inspect", short, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["Id"] == res.image_id
    assert main(["--root", r, "history", short]) == 0
    assert "LABEL x=y" in capsys.readouterr().out
    assert main(["--root", r, "run", "--rm", short, "cat", "/hi"]) == 0
    assert "hi" in capsys.readouterr().out

    assert main(["--root", r, "tag", short, "named:1"]) == 0
    capsys.readouterr()
    assert main(["--root", r, "images", "--format", "json"]) == 0
    rows = [row for row in json.loads(capsys.readouterr().out) if row["id"] == res.image_id]
    assert [(row["repository"], row["tag"]) for row in rows] == [("named", "1")]   # no <none> row left
    assert main(["--root", r, "rmi", short]) == 0
    assert f"Deleted: {res.image_id}" in capsys.readouterr().out
    assert all(d.digest != res.manifest.digest for d in Store(busybox_image).read_index().manifests)


@pytest.fixture(params=[None, "1700000000"], ids=["now", "epoch"])
def sde(request, monkeypatch) -> str | None:
    """SOURCE_DATE_EPOCH unset, then set."""
    if request.param is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", request.param)
    return request.param


def test_fully_cached_rebuild_keeps_the_image_id(busybox_image, tmp_path, sde):
    files = {"f": "f\n"}
    first = build_in(busybox_image, tmp_path / "ctx", DOCKERFILE, files, tags=["ident:1"])
    assert not all(s.cached for s in first.steps if s.instruction.startswith(("RUN", "COPY")))
    time.sleep(1.1)                       # a re-stamped time would show in the config
    again = build_in(busybox_image, tmp_path / "ctx", DOCKERFILE, files, tags=["ident:1"])
    other = build_in(busybox_image, tmp_path / "ctx", DOCKERFILE, files, tags=["ident:2"])
    assert again.image_id == first.image_id == other.image_id
    cfg = first.config
    if sde is None:
        # config-only steps take the time of the layer before them; the image's is the last one's
        times = [h["created"] for h in cfg["history"][-5:]]
        assert times[0] == times[1]          # ENV takes the first new layer's time, not the base's
        assert times[-1] == times[-2] == times[-3] == cfg["created"]               # COPY, CMD, LABEL
    else:
        assert cfg["created"] == "2023-11-14T22:13:20Z"


def test_cli_build_q_output_runs_and_is_stable(busybox_image, tmp_path):
    ctx = tmp_path / "ctx"
    write_context(ctx, DOCKERFILE, {"f": "f\n"})
    first = run_pybuild("build", "-q", ctx, root=busybox_image, check_rc=0).stdout.strip()
    assert first.startswith("sha256:") and len(first) == 71, first
    assert run_pybuild("run", "--rm", first, "true", root=busybox_image).returncode == 0
    again = run_pybuild("build", "-q", ctx, root=busybox_image, check_rc=0).stdout.strip()
    tagged = run_pybuild("build", "-q", "-t", "other:1", ctx, root=busybox_image, check_rc=0).stdout.strip()
    assert first == again == tagged
    cfg = json.loads(run_pybuild("inspect", "--format", "json", first[7:19], root=busybox_image,
                                 check_rc=0).stdout)
    assert cfg["Id"] == first


def test_scratch_with_config_only_steps_has_a_stable_id(busybox_image, tmp_path, sde):
    df = "FROM scratch\nENV A=1\nLABEL x=y\n"
    first = build_in(busybox_image, tmp_path / "ctx", df, tags=["cfgonly:1"])
    time.sleep(1.1)                       # a time stamped at commit would differ
    other = build_in(busybox_image, tmp_path / "ctx", df, tags=["cfgonly:2"], no_cache=True)
    assert first.image_id == other.image_id
    assert first.config["config"]["Labels"] == {"x": "y"}
    assert first.config.get("created") == (None if sde is None else "2023-11-14T22:13:20Z")


def _colliding_images(store: Store) -> str:
    """Tag two images whose config digests share their first 4 hex digits; returns them."""
    import hashlib
    seen: dict[str, ImageConfig] = {}
    for i in range(100000):
        cfg = ImageConfig(architecture="amd64", os="linux", config=ContainerConfig(labels={"n": str(i)}))
        prefix = hashlib.sha256(cfg.to_bytes()).hexdigest()[:4]
        if prefix in seen:
            break
        seen[prefix] = cfg
    for n, c in enumerate((seen[prefix], cfg)):
        store.tag(f"amb:{n}", store.put_manifest(Manifest(config=store.put_config(c), layers=[])))
    return prefix


def test_ambiguous_id_prefix_is_a_clear_error(root):
    prefix = _colliding_images(Store(root))
    ids = [Store(root).image_id(Store(root).resolve(f"amb:{n}"))[7:19] for n in (0, 1)]
    for argv in (["inspect", prefix], ["rmi", prefix], ["tag", prefix, "x:1"], ["history", prefix]):
        r = run_pybuild(*argv, root=root)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r
        assert f"image ID prefix '{prefix}' is ambiguous" in r.stderr, r.stderr
        assert all(i in r.stderr for i in ids) and "amb:0" in r.stderr, r.stderr
    assert len(Store(root).read_index().manifests) == 2          # nothing was removed or tagged
    assert run_pybuild("inspect", ids[0], root=root, check_rc=0).stdout


def test_import_prints_and_load_keeps_the_image_id(busybox_image, busybox_rootfs, tmp_path):
    r = str(busybox_image)
    out = run_pybuild("import", busybox_rootfs, "imp:1", "-q", root=r, check_rc=0).stdout.strip()
    store = Store(busybox_image)
    assert out == store.image_id(store.resolve("imp:1")) != store.resolve("imp:1").digest
    res = build_in(busybox_image, tmp_path / "ctx", DOCKERFILE, {"f": "f\n"})
    short = res.image_id[7:19]
    for fmt in ("docker", "oci"):
        archive = tmp_path / f"u-{fmt}.tar"
        run_pybuild("save", "--format", fmt, "-o", archive, short, root=r, check_rc=0)
        run_pybuild("rmi", short, root=r, check_rc=0)
        loaded = run_pybuild("load", "-i", archive, root=r, check_rc=0).stdout
        assert f"Loaded image ID: {res.image_id}" in loaded, loaded
        rows = json.loads(run_pybuild("images", "--format", "json", root=r, check_rc=0).stdout)
        assert [(row["repository"], row["tag"]) for row in rows if row["id"] == res.image_id] == \
            [("<none>", "<none>")], rows
        assert "hi" in run_pybuild("run", "--rm", short, "cat", "/hi", root=r, check_rc=0).stdout
