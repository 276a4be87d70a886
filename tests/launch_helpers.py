"""Running ``shmpipe launch`` from tests: a private control directory, the launcher as a real
process, waits on conditions with deadlines, and a cleanup that kills every process it saw."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import psutil


@pytest.fixture
def runtime_dir(monkeypatch):
    # short: ipc:// socket paths are limited to ~107 bytes
    path = f"/tmp/shmpipe-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SHMPIPE_RUNTIME_DIR", path)
    yield path
    if os.path.isdir(path):
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # noqa: BLE001 - not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class LauncherProcess:
    def __init__(self, toml: Path, log_dir: Path, *extra: str) -> None:
        self.log_dir = log_dir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shmpipe_tools.cli",
                "launch",
                str(toml),
                "--log-dir",
                str(log_dir),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen_pids: set[int] = set()

    def status(self) -> dict:
        from shmpipe import control

        st = control.request("launcher", "status", timeout=1.0)
        for p in st["processes"].values():
            if p["pid"]:
                self.seen_pids.add(p["pid"])
        return st

    def wait_running(self, names, timeout: float = 30.0) -> dict:
        def ready():
            st = self.status()
            return st if all(st["processes"][n]["state"] == "running" for n in names) else None

        return wait_for(ready, timeout, f"{names} running")

    def children(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill_everything(self) -> None:
        """For finally blocks: nothing a test started outlives it."""
        self.seen_pids |= self.children()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.seen_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out
