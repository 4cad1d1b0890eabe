"""`pybuild system df|prune` and the collection of extracted layers, on a root filled the way a
user fills one: a pull from registry:2, builds with RUN --mount=type=cache, a `pybuild run`.

`system df` must account for every byte of the root (its total equals `du -sb ROOT`), and
`system prune -a -f` must bring the root under 10% of its peak.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from builder.cache.records import BuildCache
from builder.root import Root
from builder.storecheck import check_root
from builder.system import collect_layers, disk_usage, layer_references
from registry.store import Store
from tests.fixtures.building import build_in

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="builds and containers need root (overlay, runc)"),
              pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")]

CLI_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "pybuild-test-pycache")}

DOCKERFILE = """FROM {base}
ARG N=1
RUN --mount=type=cache,target=/var/cache/dl head -c 3000000 /dev/urandom > /var/cache/dl/blob$N && ls /var/cache/dl
RUN head -c 2000000 /dev/urandom > /big$N
COPY f /f
"""


def pybuild(root: Path, *args: str, input: str | None = None, rc: int = 0) -> str:
    r = subprocess.run([sys.executable, "-m", "builder", "--root", str(root), *args], capture_output=True,
                       text=True, env=CLI_ENV, input=input, timeout=300)
    assert r.returncode == rc, f"pybuild {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def du_sb(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _fill(root: Path, registry, tmp_path: Path) -> str:
    """A pull, two builds on it (cache mounts, big RUN layers), an exited container."""
    base = f"{registry.host}/system/base:1"
    pybuild(root, "push", "busybox:latest", base)
    pybuild(root, "rmi", "busybox:latest")
    pybuild(root, "pull", "-q", base)
    for n in (1, 2):
        build_in(root, tmp_path / f"ctx{n}", DOCKERFILE.format(base=base), {"f": f"file {n}\n" * 100},
                 tags=[f"app:{n}"], build_args={"N": str(n)})
    pybuild(root, "run", "--name", "job", "app:1", "sh", "-c", "head -c 1000000 /dev/urandom > /out")
    return base


@pytest.mark.timeout(600)
def test_df_equals_du_and_prune_all_reclaims_nearly_everything(busybox_image, registry, tmp_path):
    root = busybox_image
    _fill(root, registry, tmp_path)
    # Crash debris too: a half-extracted layer and a snapshot of a dead build.
    (Root(root).layers / ".tmp-dead").mkdir()
    (Root(root).layers / ".tmp-dead" / "x").write_bytes(b"x" * 5000)
    os.utime(Root(root).layers / ".tmp-dead", (1, 1))

    df = json.loads(pybuild(root, "system", "df", "--format", "json"))
    du = du_sb(root)
    print(f"system df total {df['total']}, du -sb {du}")
    assert abs(df["total"] - du) <= 4096, (df["total"], du)
    types = {t["type"]: t for t in df["types"]}
    assert sum(t["size"] for t in df["types"]) == df["total"]
    assert types["Images"]["total"] == 3 and types["Containers"]["total"] == 1
    assert types["Extracted layers"]["size"] > 4_000_000
    assert types["Cache mounts"]["size"] >= 6_000_000 and types["Cache mounts"]["total"] == 1
    assert types["Build cache"]["total"] >= 6
    assert types["Containers"]["size"] >= 1_000_000 and types["Containers"]["reclaimable"] >= 1_000_000
    table = pybuild(root, "system", "df")
    assert table.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    verbose = pybuild(root, "system", "df", "-v")
    for section in ("Images space usage:", "Containers space usage:", "Extracted layers:", "Cache mounts:"):
        assert section in verbose
    assert "job" in verbose and "app" in verbose

    # Without -f, "no" changes nothing.
    pybuild(root, "system", "prune", "-a", input="n\n", rc=1)
    assert du_sb(root) == du

    peak = du
    out = pybuild(root, "system", "prune", "-a", "-f")
    after = du_sb(root)
    print(f"peak {peak} bytes, after `system prune -a -f` {after} bytes ({100 * after / peak:.1f}%)\n{out}")
    assert "Total reclaimed space:" in out
    assert after < peak * 0.10
    assert not any(Root(root).layers.glob("[0-9a-f]*")) and not list(Root(root).cachemounts.iterdir())
    assert "job" not in pybuild(root, "ps", "-a")
    assert Store(root).list_images() == []
    assert check_root(root) == []
    df = json.loads(pybuild(root, "system", "df", "--format", "json"))
    assert abs(df["total"] - du_sb(root)) <= 4096


@pytest.mark.timeout(600)
def test_gc_and_cache_prune_collect_layers_nothing_references(busybox_image, tmp_path):
    root = busybox_image
    dirs = Root(root).layers
    build_in(root, tmp_path / "a", DOCKERFILE.format(base="busybox"), {"f": "a\n"}, tags=["a:1"])
    build_in(root, tmp_path / "b", DOCKERFILE.format(base="busybox"), {"f": "b\n"}, tags=["b:1"],
             build_args={"N": "2"})
    pybuild(root, "run", "--name", "keep", "a:1", "true")
    made = {p.name for p in dirs.iterdir() if not p.name.startswith(".") and p.name != "empty"}
    refs_a = {d.split(":")[1] for d in Store(root).image_config("a:1").diff_ids}
    assert refs_a <= made

    # rmi + store gc: the cache still names b's layers, so they stay.
    pybuild(root, "rmi", "b:1", "a:1")
    pybuild(root, "store", "gc")
    assert made <= {p.name for p in dirs.iterdir()}
    # cache prune --all: b's layers go; a's stay, the exited container `keep` uses them.
    out = pybuild(root, "cache", "prune", "--all")
    left = {p.name for p in dirs.iterdir() if not p.name.startswith(".") and p.name != "empty"}
    assert left == refs_a, out
    assert "extracted layers" in out
    assert all(l.exists() for l in Root(root).links.iterdir())        # no link to nothing
    # While a build holds the cache lock (shared), collection waits, or (rmi) skips.
    with BuildCache(root).in_use():
        assert collect_layers(root, Store(root), wait=False).skipped
    pybuild(root, "rm", "keep")
    base = {d.split(":")[1] for d in Store(root).image_config("busybox:latest").diff_ids}
    assert layer_references(root, Store(root)) == base
    pybuild(root, "rmi", "busybox:latest")
    assert layer_references(root, Store(root)) == set()
    pybuild(root, "store", "gc")
    assert not [p for p in dirs.iterdir() if p.name != "empty"]
    assert check_root(root) == []
    u = disk_usage(root)
    assert abs(u.total - du_sb(root)) <= 4096
