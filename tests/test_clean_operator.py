"""`shmpipe clean` as an operator types it (issue 25): a glob selects segments, a name that matches
nothing is said so, and a dead publisher's stats segment is listed and removed too."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import shmpipe
from shmpipe import stats
from shmpipe.records import TICK


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_a_glob_selects_and_a_name_matching_nothing_is_said(ring_name):
    for suffix in ("a", "b"):
        shmpipe.Ring.create(f"{ring_name}.{suffix}", TICK, 8).close()   # left behind, owned by no one
    with shmpipe.Ring.create(f"{ring_name}.live", TICK, 8) as live:
        out = _cli("clean", "--json", f"{ring_name}.*")
        assert out.returncode == 0, out.stderr
        listed = json.loads(out.stdout)
        assert listed["stale"] == [f"{ring_name}.a", f"{ring_name}.b"]
        assert listed["in_use"] == [f"{ring_name}.live"]
        text = _cli("clean", f"{ring_name}.*")
        assert f"run `shmpipe clean --yes '{ring_name}.*'` to remove them" in text.stdout
        none = _cli("clean", f"{ring_name}-nothing.*")
        assert none.returncode == 1
        assert none.stderr.strip() == f"shmpipe clean: no shmpipe segment matches '{ring_name}-nothing.*'"
        done = json.loads(_cli("clean", "--yes", "--json", f"{ring_name}.*").stdout)
        assert done["removed"] == [f"{ring_name}.a", f"{ring_name}.b"]
        left = sorted(p.name for p in Path("/dev/shm").glob(f"shmpipe.{ring_name}*"))
        assert left == [f"shmpipe.{ring_name}.live"]
        live.unlink()


_PUBLISH_AND_HANG = """
import signal, sys
from shmpipe import stats
stats.publish(sys.argv[1], ["x"]).update({"x": 7})
print("ready", flush=True)
signal.pause()
"""


def test_a_dead_publisher_s_stats_segment_is_listed_and_removed(ring_name):
    dead, live_name = f"{ring_name}.dead", f"{ring_name}.alive"
    child = subprocess.Popen([sys.executable, "-c", _PUBLISH_AND_HANG, dead], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        with stats.publish(live_name, ["y"]):
            listed = json.loads(_cli("clean", "--json", f"{ring_name}.*").stdout)
            assert listed["stale_stats"] == [dead]
            text = _cli("clean", f"{ring_name}.*").stdout
            row = f"stale      /dev/shm/shmpipe-stats.{dead}  (stats of pid {child.pid}, which is gone)"
            assert row in text
            done = json.loads(_cli("clean", "--yes", "--json", f"{ring_name}.*").stdout)
            assert done["removed_stats"] == [dead]
            assert not os.path.exists(f"/dev/shm/shmpipe-stats.{dead}")
            assert os.path.exists(f"/dev/shm/shmpipe-stats.{live_name}")   # a live publisher is never touched
    finally:
        child.kill()
        child.wait(10)
        stats.unlink(dead)
