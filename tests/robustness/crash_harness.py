"""Kill pybuild with SIGKILL at random moments and check what it leaves behind.

`run_killed(argv, delay)` runs one `pybuild ARGV` command in a forked child (the parent has
already imported pybuild, so each run costs milliseconds of start-up instead of an
interpreter launch: that is what lets CI afford hundreds of kills) and SIGKILLs the child's
whole process group (pybuild, and runc or anything else it started) after `delay` seconds.
The child is a real pybuild process: its own pid, file descriptors, flocks and mounts, and it
dies the way an OOM kill or a cancelled CI job kills it - no cleanup code runs.

`CrashCampaign` drives many such runs: for each operation it measures how long an unkilled run
takes, then kills runs at delays drawn uniformly from that span, and after every kill checks
the root: no "broken" problem may ever appear (leftovers of the dead process are allowed), and
after `repair_root` the root must be fully clean and the same operation must then succeed.
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from builder.storecheck import check_root, repair_root


def preload() -> None:
    """Import what the commands use once in the parent, so forked children start warm."""
    import builder.engine.build  # noqa: F401
    import builder.cli.images  # noqa: F401
    import builder.cli.remote  # noqa: F401
    import registry.client  # noqa: F401
    import registry.imports  # noqa: F401
    import registry.transfer  # noqa: F401
    import requests  # noqa: F401


@dataclass
class RunOutcome:
    """How one forked pybuild run ended: killed (by us) or exited with `returncode`."""

    killed: bool
    returncode: int | None
    seconds: float
    stderr: str = ""


def run_pybuild(argv: list[str], timeout: float = 120.0) -> RunOutcome:
    """Run `pybuild ARGV` to completion in a forked child (no kill)."""
    return run_killed(argv, None, timeout)


def run_killed(argv: list[str], delay: float | None, timeout: float = 120.0) -> RunOutcome:
    """Run `pybuild ARGV` in a forked child and SIGKILL its process group after `delay` s.

    Returns killed=False when the command finished first (then `returncode` is its exit code).
    A run still alive after `timeout` is killed and reported as a hang (AssertionError).
    """
    import tempfile
    err = tempfile.TemporaryFile()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:   # child: a pybuild process of its own
        code = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(devnull, fd)
            os.dup2(err.fileno(), 2)
            from builder.cli import main
            code = main(list(argv))
        except BaseException:   # noqa: BLE001 - the child must never return into pytest
            import traceback
            traceback.print_exc()
            code = 99
        finally:
            os._exit(code)
    deadline = t0 + (timeout if delay is None else delay)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return RunOutcome(False, os.waitstatus_to_exitcode(status), time.monotonic() - t0, _text(err))
        if time.monotonic() >= deadline:
            break
        time.sleep(0.002)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    if delay is None:
        raise AssertionError(f"pybuild {' '.join(argv)} did not finish within {timeout}s (hang)")
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        _reap_group(pid)
        return RunOutcome(True, None, time.monotonic() - t0)
    return RunOutcome(False, os.waitstatus_to_exitcode(status), time.monotonic() - t0, _text(err))


def _text(f) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")[-2000:]


def _reap_group(pgid: int) -> None:
    """Wait (briefly) until no process of the killed group is left (runc children reparent)."""
    for _ in range(500):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.01)


@dataclass
class CrashCampaign:
    """Kill operations at random points against one root; see the module docstring."""

    root: Path
    rng: random.Random
    kills: int = 0
    finished: int = 0
    log: list[str] = field(default_factory=list)

    def assert_consistent(self, after: str) -> None:
        """No damage may be present (leftovers of a killed process are allowed)."""
        broken = [p.message for p in check_root(self.root) if p.kind == "broken"]
        assert not broken, f"store damaged after {after}:\n" + "\n".join(broken)

    def repair_and_check(self, after: str) -> None:
        """Repair must leave nothing to report."""
        result = repair_root(self.root)
        assert not result.remaining, f"after repair ({after}): " + "; ".join(p.message for p in result.remaining)
        from builder.storecheck import mounts_under
        assert mounts_under(self.root) == [], f"after repair ({after}): still mounted"

    def hammer(self, name: str, make_argv: Callable[[int], list[str]], rounds: int,
               then: Callable[[int], object] | None = None, min_delay: float = 0.0) -> None:
        """Kill `rounds` runs of an operation at random points, checking the root after each.

        `make_argv(i)` gives the command for round i (vary it so work is not cached away).
        After every kill the root is checked; every few kills it is also repaired and the
        operation must then complete; `then(i)` (if given) checks the result of round i.
        """
        t_start = time.monotonic()
        kills_before = self.kills
        calib = run_pybuild(make_argv(-1))
        assert calib.returncode == 0, f"{name}: an unkilled run failed with {calib.returncode}: {calib.stderr}"
        span = max(calib.seconds, 0.05)
        i = 0
        while i < rounds:
            argv = make_argv(i)
            delay = self.rng.uniform(min_delay, span)
            out = run_killed(argv, delay)
            if not out.killed:
                # Finished before the kill: it must have succeeded; aim earlier next time.
                assert out.returncode == 0, f"{name} round {i}: exited {out.returncode} without a kill: {out.stderr}"
                self.finished += 1
                span = max(span * 0.9, 0.02)
                continue
            self.kills += 1
            self.assert_consistent(f"{name} killed after {delay:.3f}s")
            if i % 4 == 3:
                self.repair_and_check(f"{name} killed after {delay:.3f}s")
                ok = run_pybuild(make_argv(i))
                assert ok.returncode == 0, f"{name}: the run after a kill + repair failed ({ok.returncode}): {ok.stderr}"
                if then is not None:
                    then(i)
            i += 1
        self.repair_and_check(f"the last {name} kill")
        ok = run_pybuild(make_argv(rounds))
        assert ok.returncode == 0, f"{name}: the run after the campaign failed ({ok.returncode}): {ok.stderr}"
        if then is not None:
            then(rounds)
        self.log.append(f"{name}: {self.kills - kills_before} kills in {time.monotonic() - t_start:.1f}s "
                        f"(an unkilled run took {calib.seconds:.2f}s)")


def unmount_under(path: Path) -> None:
    """Unmount anything killed builds left mounted below `path` (test teardown)."""
    from builder.storecheck import mounts_under
    import subprocess
    for mp in mounts_under(path):
        subprocess.run(["umount", "-l", mp], capture_output=True)
