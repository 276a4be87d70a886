"""`verify` killed with -9 and started again (issue 25): the ticks written while no verify ran are
counted as unchecked -- and said so on stderr -- never reported as `lost 0`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from inspect_workers import ticks_for

import shmpipe
from shmpipe import stats
from shmpipe.records import TICK


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _verify(ring, name, *extra):
    argv = [sys.executable, "-m", "shmpipe_tools.cli", "verify", "--ticks", ring, "--name", name, "--json",
            *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counter(name, field):
    try:
        return stats.read(name)["counters"].get(field)
    except FileNotFoundError:
        return None


def _joined(ring, pid):
    return any(c["alive"] and c["pid"] == pid for c in ring.stats()["consumers"])


def test_a_restarted_verify_counts_what_it_did_not_see(ring_name, private_runtime_dir):
    name = f"{ring_name}.verify"
    first = second = None
    with shmpipe.Ring.create(ring_name, TICK, 1024, broadcast=True) as ring:
        producer = ring.producer()
        try:
            first = _verify(ring_name, name, "--start", "oldest")
            producer.write_batch(ticks_for(0, 100))
            _wait(lambda: _counter(name, "last_sequence") == 99, 30, "the first verify at tick 99")
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            producer.write_batch(ticks_for(100, 100))   # while no verify runs
            second = _verify(ring_name, name)           # joins at the newest tick, as a restart would
            _wait(lambda: _joined(ring, second.pid), 30, "the second verify to join")
            producer.write_batch(ticks_for(200, 50))
            _wait(lambda: _counter(name, "records") == 50, 30, "the second verify to read 50 ticks")
            second.send_signal(signal.SIGTERM)
            out, err = second.communicate(timeout=30)
            result = json.loads(out)
            assert second.returncode == 0, err
            assert result["lost"] == 0 and result["records"] == 50 and result["first_sequence"] == 200
            assert result["unchecked"] == 100, result
            assert result["resumed_after_sequence"] == 99
            assert f"a previous '{name}' died after sequence 99" in err
            assert "100 ticks numbered before 200 were not checked (written while no verify ran)" in err
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            producer.close()
            stats.unlink(name)
            ring.unlink()


def test_a_fresh_verify_that_joins_late_says_what_came_before(ring_name, private_runtime_dir):
    name = f"{ring_name}.verify"
    proc = None
    with shmpipe.Ring.create(ring_name, TICK, 1024, broadcast=True) as ring:
        producer = ring.producer()
        try:
            producer.write_batch(ticks_for(0, 30))
            proc = _verify(ring_name, name)
            _wait(lambda: _joined(ring, proc.pid), 30, "verify to join")
            producer.write_batch(ticks_for(30, 10))
            _wait(lambda: _counter(name, "records") == 10, 30, "verify to read 10 ticks")
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            result = json.loads(out)
            assert result["unchecked"] == 30 and result["lost"] == 0
            assert "resumed_after_sequence" not in result
            assert "30 ticks numbered before 30 were not checked by this run (written before it joined)" in err
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
            producer.close()
            ring.unlink()
