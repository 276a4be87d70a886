"""The launcher as an operator meets it (issue 25): a failing child's reason is on the launcher's
own stderr, and a service name a live process already holds is refused before anything starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("zmq")
from launch_helpers import LauncherProcess, alive, runtime_dir, wait_for  # noqa: F401

from shmpipe import stats


def _pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_failing_child_s_last_log_lines_are_on_the_launcher_s_stderr(tmp_path, ring_name, runtime_dir):
    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        ring_prefix = "{ring_name}."

        [processes.flaky]
        command = ["sh", "-c", "echo starting up; echo 'flaky: the disk is on fire' >&2; exit 3"]
        restart = "never"
        settle_s = 0.1
        """,
    )
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        code, _out, err = launcher.finish(timeout=60)
        assert code == 1, err
        assert f"flaky: exited with code 3; the last lines of {tmp_path / 'logs' / 'flaky.log'}:" in err
        assert "  flaky| flaky: the disk is on fire" in err
        assert "  flaky| starting up" in err
        assert "==== " not in err  # the launcher's own start marker is not the child's output
    finally:
        launcher.kill_everything()


_HOLDER = """
import sys, time
from shmpipe import stats
name, how = sys.argv[1], sys.argv[2]
pub = stats.publish(name, ["x"])
if how == "control":
    from shmpipe import control
    control.ControlServer(name, {}).start_thread()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["stats", "control"])
def test_a_name_held_by_a_live_process_is_refused_before_anything_starts(
    tmp_path, ring_name, runtime_dir, how
):
    service = f"{ring_name}.capture"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, service, how], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        toml = _pipeline(
            tmp_path,
            f"""\
            [pipeline]
            ring_prefix = "{ring_name}."

            [rings.ticks]
            type = "tick"
            capacity = 64

            [processes.capture]
            command = ["sleep", "30"]
            writes = ["ticks"]
            settle_s = 0.1
            """,
        )
        launcher = LauncherProcess(toml, tmp_path / "logs")
        try:
            code, _out, err = launcher.finish(timeout=30)
        finally:
            launcher.kill_everything()
        assert code == 1, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"shmpipe launch: capture: the name '{service}' is taken: a live process "
                               f"(pid {holder.pid})"), err
        assert f"shmpipe ctl {service} stop" in line
        assert "started" not in err  # refused at once, not started and retried
        assert not list(Path("/dev/shm").glob(f"shmpipe.{ring_name}.*"))
        dry = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", "launch", str(toml), "--dry-run"],
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 1 and dry.stderr.strip() == line, dry.stderr
    finally:
        holder.kill()
        holder.wait(10)
        stats.unlink(service)


def test_recovery_after_the_launcher_is_killed_as_the_docs_describe(tmp_path, ring_name, runtime_dir):
    """The launcher killed with -9 leaves its children running: a second launch is refused naming
    the capture's pid; `ctl NAME stop`, `clean --yes 'PREFIX.*'`, and the launch works again."""
    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        ring_prefix = "{ring_name}."

        [rings.ticks]
        type = "tick"
        capacity = 4096

        [rings.levels]
        type = "level_update"
        capacity = 4096

        [processes.capture]
        command = ["shmpipe", "capture", "--feed", "synthetic", "--rate", "2000",
                   "--ticks", "{{ring.ticks}}", "--levels", "{{ring.levels}}", "--name", "{{service}}"]
        writes = ["ticks", "levels"]
        control = true
        """,
    )
    service = f"{ring_name}.capture"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", *args], capture_output=True,
                              text=True, timeout=60)

    first = LauncherProcess(toml, tmp_path / "logs")
    second = third = None
    try:
        capture_pid = first.wait_running(["capture"])["processes"]["capture"]["pid"]
        first.proc.kill()
        first.proc.wait(10)
        second = LauncherProcess(toml, tmp_path / "logs2")
        code, _out, err = second.finish(timeout=30)
        assert code == 1
        assert f"the name '{service}' is taken: a live process (pid {capture_pid})" in err, err
        assert cli("ctl", service, "stop").returncode == 0
        wait_for(lambda: not alive([capture_pid]), 30, "the capture to stop")
        assert cli("clean", "--yes", f"{ring_name}.*").returncode == 0
        assert not list(Path("/dev/shm").glob(f"shmpipe.{ring_name}.*"))
        third = LauncherProcess(toml, tmp_path / "logs3")
        third.wait_running(["capture"])
        third.proc.terminate()
        code, _out, err = third.finish(timeout=60)
        assert code == 0, err
    finally:
        for launcher in (first, second, third):
            if launcher is not None:
                launcher.kill_everything()
