"""The control plane and the signals bus: requests, error replies, dead services, two processes."""
from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

import zmq

from shmpipe import control, signals  # noqa: E402




# Every test here gets a control/signals directory of its own (conftest).
pytestmark = pytest.mark.usefixtures("private_runtime_dir")


def _status(args):
    return {"state": "running", "echo": args}


def test_request_and_reply_in_thread():
    with control.ControlServer("svc", {"status": _status}) as server:
        server.start_thread()
        assert control.request("svc", "status", {"x": 1}) == {"state": "running", "echo": {"x": 1}}
        assert control.request("svc", "ping")["pid"] == os.getpid()
        assert "status" in control.request("svc", "help")["commands"]
        assert control.list_services() == ["svc"]
    assert control.list_services() == []


def test_unknown_command_and_failing_handler_are_error_replies():
    def broken(_args):
        raise KeyError("nope")

    with control.ControlServer("svc", {"status": _status, "broken": broken}) as server:
        server.start_thread()
        with pytest.raises(control.ControlError, match="unknown command 'frobnicate'"):
            control.request("svc", "frobnicate")
        with pytest.raises(control.ControlError, match="broken failed: KeyError"):
            control.request("svc", "broken")
        assert control.request("svc", "status")["state"] == "running"   # still serving


@pytest.mark.parametrize("body, message", [
    (b"\xff\xfe not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"command": 5}', "JSON object"),
    (b'{"command": "status", "args": [1]}', '"args"'),
])
def test_malformed_requests_get_error_replies(body, message):
    with control.ControlServer("svc", {"status": _status}) as server:
        server.start_thread()
        sock = zmq.Context.instance().socket(zmq.REQ)   # a plain REQ socket speaks the protocol too
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        sock.send(body)
        assert sock.poll(2000)
        reply = json.loads(sock.recv())
        sock.close()
        assert reply["ok"] is False and message in reply["error"]
        assert control.request("svc", "status")["state"] == "running"


def test_no_such_service_is_one_line():
    with pytest.raises(control.ServiceNotRunningError, match="service 'ghost' is not running"):
        control.request("ghost", "status")


def test_silent_service_times_out_with_its_name():
    server = control.ControlServer("mute", {"status": _status})   # bound, never polled
    try:
        started = time.monotonic()
        with pytest.raises(control.ControlTimeoutError, match="'mute' did not answer 'status' within 0.3 s"):
            control.request("mute", "status", timeout=0.3)
        assert time.monotonic() - started < 2.0
    finally:
        server.close()


def test_bad_service_names_are_refused():
    for bad in ("", "a/b", "x" * 65, "../etc"):
        with pytest.raises(control.InvalidArgumentError):
            control.endpoint_for(bad)


def test_a_live_name_is_not_stolen_but_a_dead_one_is_taken_over():
    with control.ControlServer("svc", {}) as first:
        first.start_thread()
        with pytest.raises(control.ServiceNameTakenError, match=f"pid {os.getpid()}"):
            control.ControlServer("svc", {})
    # A socket file nobody answers on (a killed service): taken over.
    path = control.endpoint_for("svc")[len("ipc://"):]
    open(path, "w").close()
    with control.ControlServer("svc", {"status": _status}) as second:
        second.start_thread()
        assert control.request("svc", "status")["state"] == "running"


def test_a_stop_handler_may_close_its_own_server():
    holder = {}

    def stop(_args):
        holder["server"].close()
        return {"stopping": True}

    server = control.ControlServer("svc", {"stop": stop})
    holder["server"] = server
    server.start_thread()
    assert control.request("svc", "stop") == {"stopping": True}
    server._thread.join(5)
    assert not server._thread.is_alive()
    assert control.list_services() == []


def test_poll_from_the_services_own_loop():
    with control.ControlServer("svc", {"status": _status}) as server:
        result = {}

        def ask():
            result.update(control.request("svc", "status", timeout=5))

        import threading
        t = threading.Thread(target=ask)
        t.start()
        deadline = time.monotonic() + 5
        while not result and time.monotonic() < deadline:
            server.poll(50)
        t.join()
        assert result["state"] == "running"


def _serve_in_child(runtime: str, ready, service: str) -> None:
    os.environ["SHMPIPE_RUNTIME_DIR"] = runtime
    counter = {"n": 0}
    stop = {"flag": False}

    def bump(args):
        counter["n"] += int(args.get("by", 1))
        return {"n": counter["n"]}

    def halt(_args):
        stop["flag"] = True
        return {}

    with control.ControlServer(service, {"bump": bump, "stop": halt}) as server:
        ready.set()
        while not stop["flag"]:
            server.poll(100)


def test_two_processes(private_runtime_dir):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_serve_in_child, args=(private_runtime_dir, ready, "child"))
    child.start()
    try:
        assert ready.wait(30)
        assert control.request("child", "bump", {"by": 2}, timeout=5) == {"n": 2}
        assert control.request("child", "bump", timeout=5) == {"n": 3}
        control.request("child", "stop", timeout=5)
        child.join(10)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_kill_9_leaves_a_dead_endpoint_that_times_out_then_is_taken_over(private_runtime_dir):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_serve_in_child, args=(private_runtime_dir, ready, "victim"))
    child.start()
    try:
        assert ready.wait(30)
        child.kill()
        child.join()
        assert control.ping("victim", timeout=0.2) is None
        with pytest.raises(control.ControlTimeoutError):
            control.request("victim", "bump", timeout=0.2)
        with control.ControlServer("victim", {"status": _status}) as server:
            server.start_thread()
            assert control.request("victim", "status")["state"] == "running"
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_signals_round_trip_direct_and_through_the_bus(private_runtime_dir):
    endpoint = f"ipc://{private_runtime_dir}/bars"
    with signals.SignalPublisher(endpoint, source="bars") as pub, \
            signals.SignalSubscriber(endpoint, topics=["market.bar."]) as sub:
        got = None
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:   # PUB/SUB joins late: resend until heard
            pub.publish("signal.other", {"x": 0})
            pub.publish("market.bar.1s", {"open": 1.5, "close": 2.0})
            got = sub.recv(timeout=0.05)
        assert got is not None and got.topic == "market.bar.1s" and got.source == "bars"
        assert got.data == {"open": 1.5, "close": 2.0} and got.pid == os.getpid()

    with signals.SignalBus() as _bus, signals.SignalPublisher(source="hb") as pub, \
            signals.SignalSubscriber(topics=[signals.HEARTBEAT]) as sub:
        got = None
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            pub.heartbeat(uptime_s=1)
            got = sub.recv(timeout=0.05)
        assert got is not None and got.data["service"] == "hb" and got.data["uptime_s"] == 1


def test_malformed_signals_are_counted_not_raised(private_runtime_dir):
    endpoint = f"ipc://{private_runtime_dir}/raw"
    raw = zmq.Context.instance().socket(zmq.PUB)
    raw.bind(endpoint)
    try:
        with signals.SignalSubscriber(endpoint) as sub:
            deadline = time.monotonic() + 5
            while sub.bad == 0 and time.monotonic() < deadline:
                raw.send_multipart([b"x", b"\xc1 not msgpack"])
                assert sub.recv(timeout=0.05) is None
            assert sub.bad >= 1
    finally:
        raw.close(linger=0)


def test_a_runtime_dir_others_can_write_is_refused(tmp_path, monkeypatch):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv("SHMPIPE_RUNTIME_DIR", str(open_dir))
    with pytest.raises(control.ControlError, match="closed to others"):
        control.endpoint_for("svc")


def test_a_refused_command_is_an_error_reply_without_a_traceback(caplog):
    def pick(args):
        raise control.CommandRefused(f"no symbol {args.get('symbol')!r} here")

    with control.ControlServer("svc", {"pick": pick}) as server:
        server.start_thread()
        with caplog.at_level("DEBUG", logger="shmpipe.control"):
            with pytest.raises(control.ControlError, match="refused 'pick': pick: no symbol 'X' here"):
                control.request("svc", "pick", {"symbol": "X"})
        assert not [r for r in caplog.records if r.exc_info]
