"""`shmpipe clean` removes only segments whose every owner is dead; `inspect` reports rings."""
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys

import shmpipe
from shmpipe import inventory
from shmpipe.records import TICK

SPAWN = mp.get_context("spawn")


def _create_and_hang(name, ready):
    ring = shmpipe.Ring.create(name, TICK, 8)
    ring.producer()
    ready.set()
    signal.pause()


def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_clean_removes_only_dead_owners(ring_name):
    dead_name, live_name = ring_name + "-dead", ring_name + "-live"
    ready = SPAWN.Event()
    crasher = SPAWN.Process(target=_create_and_hang, args=(dead_name, ready))
    crasher.start()
    assert ready.wait(30)
    with shmpipe.Ring.create(live_name, TICK, 8) as live:
        assert not inventory.stale(inventory.survey([dead_name, live_name]))   # both still held
        os.kill(crasher.pid, signal.SIGKILL)
        crasher.join(10)
        listed = json.loads(_cli("clean", "--json", dead_name, live_name))
        assert {k: listed[k] for k in ("stale", "in_use", "removed")} == {
            "stale": [dead_name], "in_use": [live_name], "removed": []}
        assert listed["stale_stats"] == [] and listed["unmatched"] == []   # keys added by issue 25
        assert os.path.exists(f"/dev/shm/shmpipe.{dead_name}")            # listing removes nothing
        done = json.loads(_cli("clean", "--yes", "--json", dead_name, live_name))
        assert done["removed"] == [dead_name]
        assert not os.path.exists(f"/dev/shm/shmpipe.{dead_name}")
        assert os.path.exists(f"/dev/shm/shmpipe.{live_name}")
        # The name is usable again at once.
        shmpipe.Ring.create(dead_name, TICK, 8).close()
        shmpipe.segments.unlink(dead_name)
        live.unlink()


def test_clean_handles_foreign_segments(ring_name):
    import posix_ipc
    shm = posix_ipc.SharedMemory(shmpipe.segments.shm_name(ring_name), posix_ipc.O_CREX, size=64)
    os.close(shm.fd)
    [info] = inventory.survey([ring_name])
    assert info.ring is None and "smaller than a header" in info.problem and not info.in_use
    assert "stale" in _cli("clean", ring_name)
    assert inventory.remove(info)


def test_inspect_json_and_text(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 16) as ring, ring.producer() as p, ring.consumer():
        p.write(b"\0" * 32)
        [entry] = json.loads(_cli("inspect", "--json", ring_name))
        assert entry["in_use"] and entry["ring"]["written"] == 1 and entry["ring"]["capacity"] == 16
        assert entry["ring"]["producer"]["pid"] == os.getpid()
        text = _cli("inspect", ring_name)
        assert ring_name in text and "fill 1/16" in text and "alive" in text
    ring.unlink()


def test_demo_runs_and_verifies():
    result = json.loads(_cli("demo", "--records", "300000", "--json"))
    assert result["records"] == 300000 and result["verified"]


def test_help_lists_commands():
    text = _cli("--help")
    for command in ("clean", "inspect", "demo", "bench", "assets"):
        assert command in text
