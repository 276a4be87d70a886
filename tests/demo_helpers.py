"""Running ``shmpipe demo`` from tests: what a demo process left behind (its ``demo-<pid>.`` ring
segments and stage processes), and a cleanup that kills and removes all of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil  # a dependency of shmpipe: missing is a broken install, not a skip


def left_behind(pid: int) -> tuple[list[str], list[int]]:
    """The /dev/shm segments and the processes that still carry demo ``pid``'s ring prefix."""
    prefix = f"demo-{pid}."
    segments = sorted(p.name for p in Path("/dev/shm").glob(f"shmpipe.{prefix}*"))
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(prefix in arg for arg in p.info["cmdline"] or []):
                procs.append(p.info["pid"])
        except psutil.Error:
            pass
    return segments, procs


def cleanup_demo(proc: subprocess.Popen) -> None:
    """Kill the demo if it still runs, then whatever it left behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    segments, procs = left_behind(proc.pid)
    for pid in procs:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    for name in segments:
        Path("/dev/shm", name).unlink(missing_ok=True)
