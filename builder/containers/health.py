"""HEALTHCHECK for detached containers: a tiny shell loop runs the check, ``ps``/``inspect`` read it.

conmon cannot run a health check, and podman's way (a systemd timer per container) needs systemd,
which these machines lack; a Python loop per container would cost 15-20 MB, the very thing
conmon saved. So each detached container with a check gets one ``/bin/sh`` loop (a sleeping dash
and its ``sleep``, well under 1 MB of PSS) that every interval runs the check with ``runc exec``
and the container's own process spec (same confinement as ``exec``), bounded by ``timeout``, and
appends ``UPTIME EXIT_CODE`` to ``health/results``. No Python runs per check. The status is not
kept anywhere: :func:`status` derives it from the results whenever ``ps``, ``inspect`` or
``wait`` asks, with Docker's rules (starting until the first success; healthy after a success;
unhealthy after ``retries`` consecutive failures, failures within the start period not counted).
The loop ends by itself when runc no longer knows the container; the container's cleanup kills it
too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..runtime.userns import runc_argv

DEFAULTS = {"interval": 30.0, "timeout": 30.0, "start_period": 0.0, "retries": 3}

# $1 health dir, $2 runc id, $3 interval, $4 timeout, then runc and its global options (rootless:
# --root DIR). `read` of /proc/uptime is a builtin: the only programs started per check are runc
# (the check itself) and timeout.
_LOOP = r'''
d=$1 rid=$2 interval=$3 limit=$4
shift 4
while sleep "$interval"; do
  "$@" state "$rid" >/dev/null 2>&1 || exit 0
  timeout -s KILL "$limit" "$@" exec --process "$d/process.json" "$rid" >"$d/output" 2>&1 </dev/null
  rc=$?
  read up _ </proc/uptime
  echo "$up $rc" >>"$d/results"
done
'''


@dataclass
class Health:
    """What ``ps`` and ``inspect`` show."""

    status: str                 # starting | healthy | unhealthy
    failing_streak: int
    log: list[dict]             # the last checks: {"End": time, "ExitCode": n}
    output: str                 # the last check's output (at most 4 KiB)


def _seconds(ns) -> float:
    return float(ns) / 1e9 if ns else 0.0


def _duration(text: str, what: str) -> float:
    """``30s``, ``1m30s``, ``500ms``, ``2`` (seconds) -> seconds."""
    import re
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise BuildError(f"{what} {text!r}: use a duration like 30s, 1m30s or 500ms")
    return sum(float(a) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for a, u in parts)


def config_of(image_check: dict | None, cmd: str | None = None, interval: str | None = None,
              timeout: str | None = None, retries: int | None = None, start_period: str | None = None,
              disabled: bool = False) -> dict | None:
    """The container's check from the image's Healthcheck and the ``--health-*`` options:
    ``{"test": argv, "interval": s, "timeout": s, "start_period": s, "retries": n}`` or None."""
    if disabled:
        return None
    hc = dict(image_check or {})
    test = list(hc.get("Test") or [])
    if cmd is not None:
        test = ["CMD-SHELL", cmd]
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        argv = test[1:]
    elif test[0] == "CMD-SHELL":
        argv = ["/bin/sh", "-c", " ".join(test[1:])]
    else:
        argv = test                                  # a bare list: Docker takes it as CMD
    if not argv:
        return None
    out = {"test": argv,
           "interval": _seconds(hc.get("Interval")) or DEFAULTS["interval"],
           "timeout": _seconds(hc.get("Timeout")) or DEFAULTS["timeout"],
           "start_period": _seconds(hc.get("StartPeriod")) or DEFAULTS["start_period"],
           "retries": int(hc.get("Retries") or DEFAULTS["retries"])}
    if interval is not None:
        out["interval"] = _duration(interval, "--health-interval")
    if timeout is not None:
        out["timeout"] = _duration(timeout, "--health-timeout")
    if start_period is not None:
        out["start_period"] = _duration(start_period, "--health-start-period")
    if retries is not None:
        out["retries"] = retries
    if out["interval"] <= 0 or out["timeout"] <= 0 or out["retries"] < 1:
        raise BuildError("health check: the interval and timeout must be positive, retries at least 1")
    return out


def start_loop(health_dir: Path, runtime_id: str, process: dict, check: dict,
               env: dict[str, str] | None = None) -> int:
    """Start the check loop of a container (see the module docstring) with environment ``env``
    (it lives as long as the container: give it no more than it needs); its pid."""
    import json
    health_dir.mkdir(exist_ok=True)
    proc = dict(process)
    proc["args"] = list(check["test"])
    proc["terminal"] = False
    (health_dir / "process.json").write_text(json.dumps(proc))
    (health_dir / "started").write_text(Path("/proc/uptime").read_text().split()[0])
    p = subprocess.Popen(["/bin/sh", "-c", _LOOP, "pybuild-health", str(health_dir), runtime_id,
                          f"{check['interval']:g}", f"{check['timeout']:g}", *runc_argv()],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, cwd="/", env=env)
    (health_dir / "pid").write_text(str(p.pid))
    return p.pid


def stop_loop(health_dir: Path) -> None:
    """Kill the check loop (the very process: its command line names ``health_dir``)."""
    try:
        pid = int((health_dir / "pid").read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if os.fsencode(str(health_dir)) in args:
        try:
            os.killpg(pid, signal.SIGKILL)         # the loop's session: sh, sleep, timeout, runc
        except OSError:
            pass


def status(health_dir: Path, check: dict) -> Health | None:
    """The container's health from the results the loop wrote (None: no loop ever started)."""
    try:
        started = float((health_dir / "started").read_text())
    except (OSError, ValueError):
        return None
    try:
        lines = (health_dir / "results").read_text().splitlines()
    except OSError:
        lines = []
    state, streak, log = "starting", 0, []
    try:
        up_now = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        up_now = 0.0
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue                                 # being written
        t, rc = float(parts[0]), int(parts[1])
        log.append({"End": time.time() - (up_now - t), "ExitCode": rc})
        if rc == 0:
            state, streak = "healthy", 0
        elif t - started >= check["start_period"] or state != "starting":
            streak += 1
            if streak >= check["retries"]:
                state = "unhealthy"
    try:
        output = (health_dir / "output").read_bytes()[:4096].decode(errors="replace")
    except OSError:
        output = ""
    return Health(status=state, failing_streak=streak, log=log[-5:], output=output)
