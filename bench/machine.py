"""What the figures were measured on: goes into the JSON's "machine" object."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("numpy", "pyzmq", "faster-fifo", "redis", "hdrhistogram", "iceoryx2", "matplotlib",
            "posix_ipc", "shmpipe")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str | None:
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("shmpipe") is None:  # running from a source tree (PYTHONPATH=src)
        try:
            import shmpipe

            out["shmpipe"] = f"{shmpipe.__version__} (source tree, not installed)"
        except Exception:
            pass
    return out


def clock_cost_ns(samples: int = 200_000) -> float:
    """What one time.monotonic_ns() call costs here (it is inside every latency figure)."""
    f = time.monotonic_ns
    t0 = f()
    for _ in range(samples):
        f()
    return (f() - t0) / samples


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other work on the cores inflates tails, so it is recorded."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(cores: list[int]) -> dict:
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        allowed = None
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_allowed": allowed,
        "cores_used": cores,
        "isolated_cores": _read("/sys/devices/system/cpu/isolated") or "",
        "scaling_governor": gov,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": package_versions(),
        "clock": "CLOCK_MONOTONIC via time.monotonic_ns() (vDSO clock_gettime)",
        "clock_call_ns": round(clock_cost_ns(), 1),
        "loadavg_before": loadavg(),
        # filled in by the CLI from the children's reports:
        "pinning_requested": True,
        "pinning_granted": None,
    }
