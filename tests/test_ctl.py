"""``shmpipe ctl``: answers printed for people or as JSON; a dead service, an unknown command, a
service that does not answer and bad arguments are one line each, with the documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import zmq
from launch_helpers import runtime_dir  # noqa: E402,F401

from shmpipe import control  # noqa: E402


def _ctl(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "shmpipe_tools.cli", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def service(runtime_dir):
    calls = []

    def status(args):
        calls.append(args)
        return {"state": "running", "processes": {"a": {"pid": 1, "cpus": [0, 1]}}, "args": args}

    with control.ControlServer("svc", {"status": status, "stop": lambda _a: {"stopping": True}}) as server:
        server.start_thread()
        yield calls


def test_pretty_and_json_answers(service):
    out = _ctl("svc", "status")
    assert out.returncode == 0, out.stderr
    assert "state: running" in out.stdout
    assert "processes:\n  a:\n    pid: 1\n    cpus: 0, 1" in out.stdout
    out = _ctl("svc", "status", "--json", "--args", '{"verbose": true}')
    assert out.returncode == 0
    assert json.loads(out.stdout)["args"] == {"verbose": True}
    assert service[-1] == {"verbose": True}


def test_list_shows_who_answers(service, runtime_dir):
    # a left-over endpoint of a dead service: listed, not answering
    import socket

    dead = socket.socket(socket.AF_UNIX)
    dead.bind(os.path.join(runtime_dir, "shmpipe-ctl.ghost"))
    dead.close()
    out = _ctl("list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("svc") and f"pid {os.getpid()}" in line for line in lines)
    assert any(line.startswith("ghost") and "not answering" in line for line in lines)
    rows = json.loads(_ctl("list", "--json").stdout)["services"]
    assert {r["service"]: r["answers"] for r in rows} == {"ghost": False, "svc": True}


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("nobody", "status"), 1, "shmpipe ctl: service 'nobody' is not running (no endpoint at "),
        (
            ("svc", "frobnicate"),
            1,
            "shmpipe ctl: service 'svc' refused 'frobnicate': unknown command 'frobnicate'",
        ),
        (("svc", "status", "--args", "{nope"), 2, "shmpipe ctl: --args is not JSON"),
        (("svc", "status", "--args", "[1]"), 2, "shmpipe ctl: --args must be a JSON object"),
        (("svc",), 2, "shmpipe ctl: which command for svc?"),
        (("bad/name", "status"), 2, "shmpipe ctl: service name 'bad/name' must be"),
        (("list", "status"), 2, "shmpipe ctl: `ctl list` takes no command"),
    ],
    ids=["dead", "unknown-command", "bad-json", "args-not-object", "no-command", "bad-name", "list-command"],
)
def test_errors_are_one_line(service, args, code, message):
    out = _ctl(*args)
    assert out.returncode == code, out
    assert out.stderr.startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stdout == ""


def test_a_service_that_does_not_answer_times_out(runtime_dir):
    ctx = zmq.Context.instance()
    mute = ctx.socket(zmq.ROUTER)  # bound, never read: a hung service
    mute.bind(control.endpoint_for("hung"))
    try:
        started = time.monotonic()
        out = _ctl("hung", "status", "--timeout", "0.5")
        assert out.returncode == 1
        assert out.stderr.strip() == (
            f"shmpipe ctl: service 'hung' did not answer 'status' within 0.5 s "
            f"(at {control.endpoint_for('hung')}; is it running?)"
        )
        assert time.monotonic() - started < 30
    finally:
        mute.close(linger=0)
        os.unlink(control.endpoint_for("hung")[len("ipc://") :])
