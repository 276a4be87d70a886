"""The launcher with real processes: a capture killed with -9 is restarted and the data flows again
with nothing lost; SIGTERM to the launcher leaves no process, no segment and no socket; pinning,
SCHED_FIFO, give-up, stop escalation and the control plane."""

from __future__ import annotations

import os
import signal
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


def _segments(ring_name: str) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"shmpipe.{ring_name}*"))


def test_kill_9_capture_is_restarted_and_sigterm_leaves_nothing(tmp_path, ring_name, runtime_dir):
    cap, ver = f"{ring_name}-cap", f"{ring_name}-ver"
    ver_service = f"{ring_name}.{ver}"   # ring_prefix + process name
    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        name = "t"
        ring_prefix = "{ring_name}."

        [rings.ticks]
        type = "tick"
        capacity = 16384

        [rings.levels]
        type = "level_update"
        capacity = 65536

        [processes.{ver}]
        command = ["shmpipe", "verify", "--ticks", "{{ring.ticks}}", "--name", "{{service}}"]
        reads = ["ticks"]
        control = true

        [processes.{cap}]
        command = ["shmpipe", "capture", "--feed", "synthetic", "--rate", "20000",
                   "--ticks", "{{ring.ticks}}", "--levels", "{{ring.levels}}", "--name", "{{service}}"]
        writes = ["ticks", "levels"]
        restart = "always"
        backoff_s = 0.2
        control = true
        """,
    )
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        st = launcher.wait_running([cap, ver])
        assert list(st["processes"]) == [cap, ver]  # the writer first, though declared second

        def verified(at_least):
            counters = stats.read(ver_service)["counters"]
            return counters if counters["records"] >= at_least else None

        wait_for(lambda: verified(2000), 30, "ticks verified")

        old_pid = st["processes"][cap]["pid"]
        os.kill(old_pid, signal.SIGKILL)

        def restarted():
            p = launcher.status()["processes"][cap]
            return p if p["restarts"] == 1 and p["state"] == "running" and p["pid"] != old_pid else None

        wait_for(restarted, 30, "capture restarted")
        after_restart = stats.read(ver_service)["counters"]["records"]
        counters = wait_for(
            lambda: verified(after_restart + 2000), 30, "ticks flowing again after the restart"
        )
        counters = wait_for(
            lambda: (c := stats.read(ver_service)["counters"])["restarts_seen"] >= 1 and c,
            10,
            "the verifier seeing the new run of the feed",
        )
        # loss accounted: the restart is a new run of the feed, not a gap; nothing lost, nothing out of order
        assert counters["lost"] == 0 and counters["disorder"] == 0, counters
        assert launcher.status()["processes"][cap]["restarts"] == 1

        pids = launcher.children() | launcher.seen_pids
        assert len(pids) >= 2
        launcher.proc.send_signal(signal.SIGTERM)
        code, _out, err = launcher.finish()
        assert code == 0, err
        assert "killed by SIGKILL; restarting" in err
        # reverse order: the reader was stopped before the writer
        assert err.index(f"{ver}: stopped") < err.index(f"{cap}: stopped")
        assert alive(pids) == []
        assert _segments(ring_name) == []
        assert os.listdir(runtime_dir) == []  # control and signals sockets removed
        assert "start again" in (tmp_path / "logs" / f"{cap}.log").read_text()
    finally:
        launcher.kill_everything()


def test_a_process_that_keeps_failing_is_given_up_and_the_pipeline_stopped(tmp_path, ring_name, runtime_dir):
    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        ring_prefix = "{ring_name}."

        [rings.r]
        type = "tick"
        capacity = 64

        [processes.steady]
        command = ["sleep", "60"]
        writes = ["r"]
        settle_s = 0.1

        [processes.flaky]
        command = ["sh", "-c", "exit 3"]
        reads = ["r"]
        restart = "on-failure"
        max_restarts = 2
        backoff_s = 0.05
        settle_s = 0.1
        """,
    )
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        code, _out, err = launcher.finish(timeout=60)
        assert code == 1
        assert "flaky: exited with code 3; restarting in 0.05 s" in err
        assert "flaky: exited with code 3; restarting in 0.1 s" in err  # the backoff doubles
        assert "2 restarts within 60 s, giving up: stopping the pipeline" in err
        assert err.strip().splitlines()[-1] == "shmpipe launch: gave up on flaky; pipeline stopped"
        assert "steady: stopped" in err
        assert _segments(ring_name) == []
    finally:
        launcher.kill_everything()


def test_pinning_fifo_control_stop_and_escalation(tmp_path, ring_name, runtime_dir):
    cpu = max(os.sched_getaffinity(0))
    stubborn = (
        f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(tmp_path / 'ready')!r}, 'w').close(); time.sleep(120)"
    )
    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        ring_prefix = "{ring_name}."

        [processes.pinned]
        command = ["sleep", "120"]
        cpus = [{cpu}]
        rt_priority = 1
        settle_s = 0.1

        [processes.stubborn]
        command = [{sys.executable!r}, "-c", {stubborn!r}]
        settle_s = 0.1
        stop_grace_s = 0.3
        """,
    )
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        st = launcher.wait_running(["pinned", "stubborn"])
        pinned = st["processes"]["pinned"]
        assert os.sched_getaffinity(pinned["pid"]) == {cpu}
        assert pinned["cpus"] == [cpu]
        wait_for(lambda: (tmp_path / "ready").exists(), 30, "the stubborn process to ignore SIGTERM")
        # a second launcher under the same control name is refused, naming the first
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "shmpipe_tools.cli",
                "launch",
                str(toml),
                "--log-dir",
                str(tmp_path / "logs2"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "service name 'launcher' is taken" in second.stderr
        assert _segments(ring_name) == []

        pids = launcher.children() | launcher.seen_pids
        ctl = subprocess.run(
            [sys.executable, "-m", "shmpipe_tools.cli", "ctl", "launcher", "stop"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ctl.returncode == 0, ctl.stderr
        code, _out, err = launcher.finish()
        assert code == 0, err
        if pinned["rt_applied"]:
            assert "SCHED_FIFO 1" in err
        else:
            assert "pinned: SCHED_FIFO priority 1 not permitted" in err
        assert "stubborn: still running after SIGTERM; sending SIGKILL" in err
        assert "stubborn: stopped (killed by SIGKILL)" in err
        assert err.index("stubborn: stopped") < err.index("pinned: stopped")  # reverse order
        assert alive(pids) == []
    finally:
        launcher.kill_everything()


def test_fifo_is_really_applied_when_permitted(tmp_path, runtime_dir):
    toml = _pipeline(
        tmp_path,
        """\
        [processes.rt]
        command = ["sleep", "60"]
        rt_priority = 2
        settle_s = 0.1
        """,
    )
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        p = launcher.wait_running(["rt"])["processes"]["rt"]
        if p["rt_applied"]:
            assert os.sched_getscheduler(p["pid"]) == os.SCHED_FIFO
            assert os.sched_getparam(p["pid"]).sched_priority == 2
        else:
            assert os.sched_getscheduler(p["pid"]) == os.SCHED_OTHER
        launcher.proc.send_signal(signal.SIGINT)
        code, _out, err = launcher.finish()
        assert code == 0
        assert p["rt_applied"] or "not permitted" in err
    finally:
        launcher.kill_everything()


def test_processes_that_end_end_the_launcher(tmp_path, runtime_dir):
    toml = _pipeline(
        tmp_path,
        """\
        [processes.once]
        command = ["sh", "-c", "echo hello from once"]
        restart = "never"
        settle_s = 0

        [processes.clean]
        command = ["sh", "-c", "sleep 0.3"]
        restart = "on-failure"
        settle_s = 0
        """,
    )
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        code, _out, err = launcher.finish(timeout=60)
        assert code == 0, err
        assert "once: exited with code 0; restart = 'never', left down" in err
        assert "clean: exited with code 0; restart = 'on-failure', left down" in err
        assert "hello from once" in (tmp_path / "logs" / "once.log").read_text()
    finally:
        launcher.kill_everything()


def test_metrics_port_without_the_exporter_is_one_line(tmp_path, runtime_dir):
    # prometheus_client made unimportable, as on an install without the services extra
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('simulated: no prometheus_client')\n")
    toml = _pipeline(tmp_path, '[processes.a]\ncommand = ["sleep", "5"]\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmpipe_tools.cli",
            "launch",
            str(toml),
            "--metrics-port",
            "0",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(shadow.parent)),
    )
    assert out.returncode == 1
    assert out.stderr.startswith("shmpipe launch: --metrics-port needs shmpipe.metrics"), out.stderr
    assert "pip install 'shmpipe[services]'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_metrics_port_in_use_is_one_line_and_nothing_is_left(tmp_path, ring_name, runtime_dir):
    pytest.importorskip("prometheus_client")
    import socket

    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        ring_prefix = "{ring_name}."
        [rings.r]
        type = "tick"
        capacity = 64
        [processes.a]
        command = ["sleep", "30"]
        writes = ["r"]
        """,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "shmpipe_tools.cli",
                "launch",
                str(toml),
                "--metrics-port",
                str(port),
                "--log-dir",
                str(tmp_path / "logs"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert out.stderr.strip() == f"shmpipe launch: metrics: port {port} on 127.0.0.1 is already in use"
    assert _segments(ring_name) == []
    assert os.listdir(runtime_dir) == []


def test_existing_rings_are_kept_bus_heartbeats_and_pause_is_passed_on(tmp_path, ring_name, runtime_dir):
    import shmpipe
    from shmpipe import control, signals
    from shmpipe.records import TICK

    ver = f"{ring_name}-ver"
    existing = shmpipe.Ring.create(f"{ring_name}.old", TICK, 256, broadcast=True)
    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        ring_prefix = "{ring_name}."

        [rings.old]
        type = "tick"
        capacity = 256

        [rings.new]
        type = "level_update"
        capacity = 256

        [processes.{ver}]
        command = ["shmpipe", "verify", "--ticks", "{{ring.old}}", "--name", "{{service}}"]
        reads = ["old"]
        control = true
        """,
    )
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        st = launcher.wait_running([ver])
        assert st["rings"] == {
            "old": {"segment": f"{ring_name}.old", "created": False},
            "new": {"segment": f"{ring_name}.new", "created": True},
        }
        with signals.SignalSubscriber(topics=[signals.HEARTBEAT]) as sub:
            beat = wait_for(lambda: sub.recv(timeout=0.5), 30, "a launcher heartbeat on the bus")
        assert beat.source == "launcher" and beat.data["processes"] == {ver: "running"}

        paused = control.request("launcher", "pause")["processes"]
        assert paused[ver]["state"] == "paused"
        service = st["processes"][ver]["service"]
        assert service == f"{ring_name}.{ver}"
        assert control.request(service, "status")["state"] == "paused"
        control.request("launcher", "resume")
        assert control.request(service, "status")["state"] == "running"
        rings = control.request("launcher", "stats")["rings"]
        assert (
            set(rings) == {"old", "new"}
            and rings["old"]["consumers"][0]["pid"] == st["processes"][ver]["pid"]
        )

        launcher.proc.send_signal(signal.SIGTERM)
        code, _out, err = launcher.finish()
        assert code == 0, err
        assert "ring old: " in err and "exists; attached (it will be left in place)" in err
        assert _segments(ring_name) == [f"shmpipe.{ring_name}.old"]  # only what it created is gone
    finally:
        launcher.kill_everything()
        existing.unlink()
        existing.close()


def test_without_pyzmq_the_launcher_stops_processes_with_signals(tmp_path, ring_name):
    shadow = tmp_path / "shadow" / "zmq"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('simulated: no zmq')\n")
    toml = _pipeline(
        tmp_path,
        f"""\
        [pipeline]
        ring_prefix = "{ring_name}."
        [rings.r]
        type = "tick"
        capacity = 64
        [processes.a]
        command = ["sleep", "60"]
        writes = ["r"]
        control = true
        ready_timeout_s = 0.5
        [processes.b]
        command = ["sleep", "60"]
        reads = ["r"]
        settle_s = 0.1
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpipe_tools.cli", "launch", str(toml), "--log-dir", str(tmp_path / "logs")],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(shadow.parent)),
    )
    pids = []
    try:
        for _ in range(2):  # "a: started pid N", "b: started pid M"
            line = wait_for(proc.stderr.readline, 30, "a process started")
            while "started pid" not in line:
                line = wait_for(proc.stderr.readline, 30, "a process started")
            pids.append(int(line.split("started pid ")[1].split()[0]))
        assert _segments(ring_name) == [f"shmpipe.{ring_name}.r"]
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
        assert proc.returncode == 0, rest
        assert "b: stopped (killed by SIGTERM)" in rest and "a: stopped (killed by SIGTERM)" in rest
        assert alive(pids) == []
        assert _segments(ring_name) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in alive(pids):
            os.kill(pid, signal.SIGKILL)


def test_dependents_wait_for_a_writer_that_failed_its_first_start(tmp_path, ring_name, runtime_dir):
    mark = tmp_path / "started-once"
    toml = _pipeline(tmp_path, f"""\
        [pipeline]
        ring_prefix = "{ring_name}."
        [rings.r]
        type = "tick"
        capacity = 64
        [processes.reader]
        command = ["sleep", "60"]
        reads = ["r"]
        settle_s = 0.1
        [processes.writer]
        command = ["sh", "-c", "test -e {mark} || {{ touch {mark}; exit 1; }}; exec sleep 60"]
        writes = ["r"]
        restart = "on-failure"
        backoff_s = 0.1
        settle_s = 0.3
        """)
    launcher = LauncherProcess(toml, tmp_path / "logs")
    try:
        st = launcher.wait_running(["writer", "reader"])
        assert st["processes"]["writer"]["restarts"] == 1
        launcher.proc.send_signal(signal.SIGTERM)
        code, _out, err = launcher.finish()
        assert code == 0, err
        # the reader started only once its writer was up, after the writer's restart
        assert err.index("writer: exited with code 1; restarting") < err.index("reader: started")
    finally:
        launcher.kill_everything()


def _without_realtime() -> list[str]:
    """A command prefix that takes SCHED_FIFO away (no CAP_SYS_NICE, RLIMIT_RTPRIO 0), or skip."""
    import shutil
    if os.geteuid() != 0:
        if os.getrlimit(getattr(os, "RLIMIT_RTPRIO", 14))[0] == 0:   # an ordinary user: already so
            return []
    if not (shutil.which("setpriv") and shutil.which("prlimit")):
        pytest.skip("needs setpriv and prlimit to run the launcher without real-time rights")
    return ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice", "prlimit", "--rtprio=0"]


def test_fifo_not_permitted_is_one_warning_per_process(tmp_path, runtime_dir):
    mark = tmp_path / "started-once"
    toml = _pipeline(tmp_path, f"""\
        [processes.rt]
        command = ["sh", "-c", "test -e {mark} || {{ touch {mark}; exit 1; }}; exec sleep 60"]
        rt_priority = 5
        restart = "on-failure"
        backoff_s = 0.05
        settle_s = 0.3
        """)
    cmd = [*_without_realtime(), sys.executable, "-m", "shmpipe_tools.cli", "launch", str(toml),
           "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    child = None
    try:
        from shmpipe import control
        st = wait_for(lambda: (s := control.request("launcher", "status", timeout=1.0))["processes"]["rt"]["state"]
                      == "running" and s, 30, "rt running after its restart")
        p = st["processes"]["rt"]
        child = p["pid"]
        assert p["restarts"] == 1 and p["rt_applied"] is False
        assert os.sched_getscheduler(p["pid"]) == os.SCHED_OTHER
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode == 0, err
        warnings = [line for line in err.splitlines() if "not permitted" in line]
        assert warnings == ["shmpipe launch: rt: SCHED_FIFO priority 5 not permitted (needs CAP_SYS_NICE or an "
                            "RLIMIT_RTPRIO of that much); it runs at normal priority"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if child and alive([child]):
            os.kill(child, signal.SIGKILL)
