"""Rootless build benchmark: pybuild vs `buildah bud --layers`, both as the ordinary user pbuser
(scripts/setup.sh makes it, with the subordinate range 200000-265535), in the same run.

The Dockerfile is the build benchmark's (a) (benchmarks/build/run.py): the busybox base, COPY
of 2000 small files, two RUN steps. buildah uses overlay storage (native overlay, rootless:
`driver = "overlay"` in a storage.conf of the run's, as rootless podman/buildah users set it;
the default for a user would be the slow vfs), its state under a $HOME in the run's scratch
directory, as pybuild's store is. Both get the same XDG_RUNTIME_DIR (a directory of the user's).

"cold" is --no-cache after one untimed build (every step runs again; the base layer is already
extracted for both), "warm" is a fully cached rebuild. Wall time is the median of --repeat, CPU
time (user+sys of the tool and its children) beside it; the ratio is pybuild / buildah
(< 1.0: pybuild is faster). Both tools run as command lines through runuser (which costs both
the same few milliseconds).

Run (root): python3 benchmarks/rootless/run.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "build"))
sys.path.insert(0, str(REPO))
import run as engine   # noqa: E402  (busybox rootfs, context (a))
import warm            # noqa: E402  (measure: wall and child CPU of one command)

from tests.fixtures.rootless import RootlessUser, rootless_user  # noqa: E402

PYBUILD = str(Path(sys.executable).parent / "pybuild")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: both tools run as the test user through runuser")
    if shutil.which("buildah") is None:
        sys.exit("buildah not found (Debian's buildah; scripts/setup.sh installs it)")
    try:
        user = rootless_user()
    except BaseException as exc:       # pytest's skip/fail outside pytest
        sys.exit(f"no test user: {exc}")
    work = Path(tempfile.mkdtemp(prefix="pybuild-bench-rootless-", dir="/tmp"))
    try:
        run(user, work, args.repeat)
    finally:
        # buildah's overlay storage holds files of the subordinate ids: removed as root.
        subprocess.run(["umount", "-R", str(work / "home" / ".local" / "share" / "containers" / "storage" / "overlay")],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def run(user: RootlessUser, work: Path, repeat: int) -> None:
    os.chown(work, user.uid, user.gid)
    xdg = work / "xdg"
    xdg.mkdir(mode=0o700)
    # buildah's rootless storage follows $HOME (rootless_storage_path): a home of the run's.
    home = work / "home"
    (home / ".config" / "containers").mkdir(parents=True)
    (home / ".config" / "containers" / "storage.conf").write_text('[storage]\ndriver = "overlay"\n')
    store = work / "store"
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(xdg), "BUILDAH_ISOLATION": "oci"}

    # The base: imported as root, saved, loaded by the user into both tools.
    rootfs = engine.busybox_rootfs(work / "rootfs")
    root_store = work / "rootstore"
    engine.sh(PYBUILD, "--root", str(root_store), "import", str(rootfs), "busybox:latest")
    archive = work / "busybox.tar"
    engine.sh(PYBUILD, "--root", str(root_store), "save", "--format", "oci", "busybox:latest", "-o", str(archive))
    ctx = engine.context_a(work, "busybox")
    user.give(work)
    ok = lambda *a: user.run(*a, env=env, check_rc=0, cwd=str(work))   # noqa: E731
    ok(PYBUILD, "--root", store, "load", "-i", archive)
    ok("skopeo", "copy", "-q", f"oci-archive:{archive}", "containers-storage:docker.io/library/busybox:latest")
    driver = ok("buildah", "info", "--format", "{{.store.GraphDriverName}}").stdout.strip()

    pyb = lambda no_cache: user.argv(PYBUILD, "--root", store, "build", "-q", "-t", "bench",   # noqa: E731
                                     *(["--no-cache"] if no_cache else []), ctx, env=env)
    bah = lambda no_cache: user.argv("buildah", "bud", "--layers", "--pull-never", "-q", "-t", "bench",  # noqa: E731
                                     *(["--no-cache"] if no_cache else []), ctx, env=env)
    for cmd in (pyb(True), bah(True)):
        warm.measure(cmd)                                   # first builds, untimed
    print(f"rootless, as {user.name}: busybox + COPY 2000 files + 2 RUN; buildah storage driver: {driver}; "
          f"median of {repeat}")
    for label, no_cache in (("cold (--no-cache)", True), ("warm (fully cached)", False)):
        ours = warm.medians(repeat, pyb(no_cache))
        theirs = warm.medians(repeat, bah(no_cache))
        warm.row(label, ours, theirs)


if __name__ == "__main__":
    main()
