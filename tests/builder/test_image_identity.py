"""Image identity as Docker's (issue 14): the image ID is the config digest everywhere.

Real builds FROM the test store's busybox:
- `build` returns, prints ("writing image sha256:...") and writes to --iidfile the config digest;
  `images` shows its first 12 hex digits under IMAGE ID; `inspect`, `history`, `tag`, `rmi` and
  `run` take it (whole or as a 12-digit prefix);
- an untagged build is listed as `<none> <none>` and goes from the list once tagged;
- a fully cached rebuild, and the same build under another tag, give the same image ID (the
  cached steps keep their times and config-only steps take the time of the layer before them,
  as BuildKit's exporter does), with and without SOURCE_DATE_EPOCH.
"""
from __future__ import annotations

import io
import json
import os
import time

import pytest

from builder.cli import main
from registry.store import Store
from tests.fixtures.building import build_in

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
    assert all(d.digest != res.manifest.digest for d in Store(busybox_image).read_index().manifests)


@pytest.mark.parametrize("sde", [None, "1700000000"])
def test_fully_cached_rebuild_keeps_the_image_id(busybox_image, tmp_path, monkeypatch, sde):
    if sde is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", sde)
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
