"""`shmpipe inspect` against rings in known states, broken segments, stats and registries;
--dump, --json and sampled rates. Every run must exit 0 (or the documented code), never a traceback."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import posix_ipc
import pytest
from inspect_workers import (
    produce_flat_out,
    produce_steadily,
    produce_then_hang,
    publish_stats_then_hang,
    ticks_for,
)

import shmpipe
from shmpipe import _ring, inventory, records, stats, symbols
from shmpipe.records import LEVEL_UPDATE, TICK

SPAWN = mp.get_context("spawn")
RING_KEYS = {"name", "path", "size", "in_use", "ring", "problem", "headerless", "age_s",
             "kind", "condition", "notes", "rates"}


def _run(*args, expect=0):
    out = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", "inspect", *args],
                         capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode == expect, (out.returncode, out.stdout, out.stderr)
    return out


def _json(*args, expect=0):
    return json.loads(_run("--json", "--interval", "0", *args, expect=expect).stdout)


def _one(name, *args):
    entries = [e for e in _json(name, *args) if e["kind"] == "ring"]
    assert len(entries) == 1
    return entries[0]


def _stop(proc):
    if proc.is_alive():
        proc.kill()
    proc.join(10)


# -- rings in known states ------------------------------------------------------------------------
def test_empty_ring(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 16):
        entry = _one(ring_name)
        assert set(entry) >= RING_KEYS and entry["condition"] == "ok"
        assert entry["ring"]["written"] == 0 and "empty" in entry["notes"]
        assert "no producer yet" in entry["notes"]
        text = _run("--interval", "0", ring_name).stdout
        assert "state: empty" in text and "fill 0/16" in text
    shmpipe.segments.unlink(ring_name)


def test_full_ring(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, ring.consumer():
        p.write_batch(ticks_for(0, 8))
        entry = _one(ring_name)
        assert entry["ring"]["fill"] == 8 and "full" in entry["notes"]
        assert entry["ring"]["producer"]["process"]            # our own name, next to our pid
        text = _run("--interval", "0", ring_name).stdout
        assert "fill 8/8" in text and "full" in text and f"pid {os.getpid()} (" in text
    ring.unlink()


def test_lagging_consumer(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 64, broadcast=True) as ring, ring.producer() as p, \
            ring.consumer() as fast, ring.consumer() as slow:
        p.write_batch(ticks_for(0, 10))
        assert len(fast.read(10)) == 10
        assert len(slow.read(3)) == 3
        entry = _one(ring_name)
        lags = {c["slot"]: c["lag"] for c in entry["ring"]["consumers"]}
        assert lags == {fast.slot: 0, slow.slot: 7}
        assert f"consumer {slow.slot} lagging 7" in entry["notes"]
        assert not any(n.startswith(f"consumer {fast.slot} ") for n in entry["notes"])
        assert "lag 7" in _run("--interval", "0", ring_name).stdout
    ring.unlink()


def test_dead_producer(ring_name):
    ring = shmpipe.Ring.create(ring_name, TICK, 16)
    ready = SPAWN.Event()
    child = SPAWN.Process(target=produce_then_hang, args=(ring_name, 5, ready))
    child.start()
    try:
        assert ready.wait(60)
        alive = _one(ring_name)["ring"]["producer"]
        assert alive["alive"] and alive["pid"] == child.pid and alive["process"]
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        entry = _one(ring_name)
        p = entry["ring"]["producer"]
        assert not p["alive"] and p["pid"] == child.pid and p["process"] is None
        assert "producer gone" in entry["notes"] and entry["ring"]["written"] == 5
        text = _run("--interval", "0", ring_name).stdout
        assert f"pid {child.pid} gone" in text and "producer gone" in text
    finally:
        _stop(child)
        ring.close()
        ring.unlink()


def _make_raw_segment(name, data: bytes, size: int | None = None):
    shm = posix_ipc.SharedMemory(shmpipe.segments.shm_name(name), posix_ipc.O_CREX, mode=0o600,
                                 size=size or len(data))
    try:
        if size:
            os.posix_fallocate(shm.fd, 0, size)
        os.pwrite(shm.fd, data, 0)
    finally:
        os.close(shm.fd)


def test_corrupt_header(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 16):
        pass
    shm = posix_ipc.SharedMemory(shmpipe.segments.shm_name(ring_name))
    try:
        os.pwrite(shm.fd, (3).to_bytes(8, "little"), 16)     # capacity: not a power of two
    finally:
        os.close(shm.fd)
    entry = _one(ring_name)
    assert entry["ring"] is None and entry["condition"] == "corrupt" and "corrupt header" in entry["problem"]
    assert "CORRUPT" in _run("--interval", "0", ring_name).stdout
    shmpipe.segments.unlink(ring_name)


def test_foreign_file(ring_name):
    _make_raw_segment(ring_name, b"not a ring, just somebody's file\n" * 400)
    entry = _one(ring_name)
    assert entry["ring"] is None and entry["condition"] == "foreign" and not entry["in_use"]
    assert "FOREIGN" in _run("--interval", "0", ring_name).stdout
    shmpipe.segments.unlink(ring_name)


def test_foreign_small_file(ring_name):
    _make_raw_segment(ring_name, b"tiny")
    assert _one(ring_name)["condition"] == "foreign"
    shmpipe.segments.unlink(ring_name)


def test_half_created(ring_name):
    _make_raw_segment(ring_name, b"", size=_ring.DATA_OFFSET + 16 * TICK.itemsize)   # right size, zero magic
    entry = _one(ring_name)
    assert entry["ring"] is None and entry["condition"] == "half-created" and entry["headerless"]
    assert "HALF-CREATED" in _run("--interval", "0", ring_name).stdout
    # --dump of it: a one-line reason, exit 1 (documented), no traceback
    out = _run("--interval", "0", "--dump", "3", ring_name, expect=1)
    assert "cannot dump" in out.stdout
    shmpipe.segments.unlink(ring_name)


def test_bad_arguments_and_missing_names(ring_name):
    assert "no shmpipe segment named" in _run(ring_name, expect=1).stderr
    for args in (["--dump", "0", ring_name], ["--watch", "0"], ["--interval", "-1"], ["a/b"],
                 ["--dump", "3"], ["--dump", "3", "--watch", "1", ring_name]):
        err = _run(*args, expect=2).stderr
        assert err.startswith("shmpipe inspect: ") and err.count("\n") == 1, err


# -- stats publishers and the symbol registry are what they are, not broken rings -------------------
def test_stats_live_and_stale(ring_name):
    live_name, dead_name = ring_name + "-live", ring_name + "-dead"
    ready = SPAWN.Event()
    child = SPAWN.Process(target=publish_stats_then_hang, args=(dead_name, ready))
    child.start()
    try:
        assert ready.wait(60)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        with stats.publish(live_name, ["messages", "bytes"]) as pub:
            pub.update({"messages": 7, "bytes": 100})
            entries = {e["name"]: e for e in _json(live_name, dead_name)}
            live, dead = entries[live_name], entries[dead_name]
            assert live["kind"] == dead["kind"] == "stats"
            assert live["live"] and live["counters"] == {"messages": 7, "bytes": 100}
            assert live["pid"] == os.getpid() and live["process"]
            assert not dead["live"] and dead["counters"] == {"messages": 42, "bytes": 4096}
            text = _run("--interval", "0", live_name, dead_name).stdout
            assert f"stats {live_name}  [live]" in text and f"stats {dead_name}  [STALE" in text
            assert "messages 7" in text
    finally:
        _stop(child)
        stats.unlink(dead_name)


def test_symbol_registry_shown_as_registry(private_symbol_registry):
    symbols.id_of("inspect-test", "AAA/BBB")
    [entry] = _json(private_symbol_registry)
    assert entry["kind"] == "symbols" and entry["problem"] is None and entry["default"]
    assert entry["count"] >= 1 and entry["capacity"] >= entry["count"] and entry["file"]
    assert f"symbols {private_symbol_registry}" in _run("--interval", "0", private_symbol_registry).stdout


def test_a_zeroed_record_names_no_symbol_and_the_registry_counts_symbols(private_symbol_registry, ring_name):
    """Issue 21 item 5: symbol_id 0 (a zeroed record) is shown as a number, never as a registered
    symbol; the registry's count and capacity are symbols, not its reserved entry 0."""
    known = symbols.id_of("inspect-test", "ZERO/CHECK")
    batch = ticks_for(0, 2)                  # all-zero but for the fields that tell records apart
    batch["symbol_id"] = [0, known]
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p:
        try:
            p.write_batch(batch)
            [ring_entry] = [e for e in _json("--dump", "2", ring_name) if e["kind"] == "ring"]
            assert [r["symbol"] for r in ring_entry["dump"]["records"]] == ["0", "inspect-test:ZERO/CHECK"]
        finally:
            ring.unlink()
    registry = symbols.default_registry()
    [entry] = _json(private_symbol_registry)
    assert entry["count"] == len(registry) and entry["capacity"] == registry.capacity - symbols.FIRST_ID


# -- --dump ---------------------------------------------------------------------------------------
def test_dump_ticks_with_names(ring_name):
    known = symbols.id_of("kraken", "BTC/USD")
    unknown = 4_000_000_000
    batch = ticks_for(0, 12)
    batch["symbol_id"] = known
    batch["symbol_id"][10] = unknown
    batch["source"] = records.SOURCE_KRAKEN
    batch["flags"] = records.TICK_FLAG_TRADE | records.TICK_FLAG_GAP_BEFORE
    with shmpipe.Ring.create(ring_name, TICK, 16) as ring, ring.producer() as p, ring.consumer() as c:
        p.write_batch(batch)
        assert len(c.read(5)) == 5
        before = ring.stats()
        [entry] = [e for e in _json("--dump", "4", ring_name) if e["kind"] == "ring"]
        after = ring.stats()
        # nothing attached, nothing moved
        assert [x["position"] for x in after["consumers"]] == [x["position"] for x in before["consumers"]]
        assert after["producer"]["attach_count"] == before["producer"]["attach_count"]
        d = entry["dump"]
        assert d["written"] == 12 and d["dropped"] == 0 and d["fields"] == list(TICK.names)
        assert [r["seq"] for r in d["records"]] == [8, 9, 10, 11]
        for r in d["records"]:
            assert r["sequence"] == r["seq"] and r["bid"] == float(r["seq"]) and r["ask"] == r["seq"] + 0.5
            assert r["source_name"] == "kraken" and r["flags_name"] == "trade|gap"
        assert [r["symbol"] for r in d["records"]] == ["kraken:BTC/USD", "kraken:BTC/USD", str(unknown),
                                                       "kraken:BTC/USD"]
        text = _run("--interval", "0", "--dump", "4", ring_name).stdout
        header = next(line for line in text.splitlines() if line.split()[:2] == ["seq", "timestamp_ns"])
        assert header.split() == ["seq", "timestamp_ns", "symbol_id", "symbol", *TICK.names[2:]]
        assert text.count("kraken:BTC/USD") == 3 and str(unknown) in text and "trade|gap" in text
    ring.unlink()


def test_dump_fewer_written_than_asked_and_level_names(ring_name):
    updates = np.zeros(3, LEVEL_UPDATE)
    updates["price"] = [100.5, 101.0, 0.0]
    updates["side"] = [records.SIDE_BID, records.SIDE_ASK, records.SIDE_BID]
    updates["action"] = [records.ACTION_SET, records.ACTION_TRADE, records.ACTION_SNAPSHOT_END]
    with shmpipe.Ring.create(ring_name, LEVEL_UPDATE, 8) as ring, ring.producer() as p:
        p.write_batch(updates)
        d = _one(ring_name, "--dump", "100")["dump"]
        assert [r["seq"] for r in d["records"]] == [0, 1, 2]
        assert [r["side_name"] for r in d["records"]] == ["bid", "ask", "bid"]
        assert [r["action_name"] for r in d["records"]] == ["set", "trade", "snapshot_end"]
        assert [r["price"] for r in d["records"]] == [100.5, 101.0, 0.0]
        empty = shmpipe.Ring.create(ring_name + "-e", TICK, 8)
        try:
            assert _one(ring_name + "-e", "--dump", "5")["dump"]["records"] == []
        finally:
            empty.close()
            empty.unlink()
    ring.unlink()


def test_dump_of_a_ring_overwritten_meanwhile_never_shows_torn_records(ring_name):
    """A lossy ring lapped all the time by a producer in another process: every record a dump
    returns is whole (its fields agree with its sequence number); overwritten ones are dropped."""
    ring = shmpipe.Ring.create(ring_name, TICK, 64, broadcast=True, policy="lossy")
    ready = SPAWN.Event()
    child = SPAWN.Process(target=produce_flat_out, args=(ring_name, ready))
    child.start()
    try:
        assert ready.wait(60)
        deadline, dumps, dropped = time.monotonic() + 3.0, 0, 0
        while time.monotonic() < deadline or dumps < 20:
            snap = inventory.dump(ring_name, 64)
            expected = ticks_for(snap.sequences[0], len(snap.sequences)) if snap.sequences else ticks_for(0, 0)
            assert snap.records.tobytes() == expected.tobytes(), "a torn or misplaced record"
            assert len(snap.records) + snap.dropped == min(64, snap.written)
            dumps, dropped = dumps + 1, dropped + snap.dropped
    finally:
        _stop(child)
        ring.close()
        ring.unlink()


# -- rates ----------------------------------------------------------------------------------------
def test_sampled_rate_of_a_steady_producer(ring_name):
    ring = shmpipe.Ring.create(ring_name, TICK, 1024, broadcast=True, policy="lossy")
    ready = SPAWN.Event()
    child = SPAWN.Process(target=produce_steadily, args=(ring_name, 200.0, ready))
    child.start()
    try:
        assert ready.wait(60)
        deadline = time.monotonic() + 30
        while ring.stats()["written"] == 0:      # the first write has happened
            assert time.monotonic() < deadline
            time.sleep(0.01)
        out = _run("--json", "--interval", "0.5", ring_name)
        [entry] = json.loads(out.stdout)
        rates = entry["rates"]
        assert rates["interval_s"] >= 0.5
        # 200/s asked; a loaded box may run slower, never faster than a small margin
        assert 0 < rates["written_per_s"] < 400
        text = _run("--interval", "0.5", ring_name).stdout
        assert "rate sampled over 0.5" in text and "rec/s" in text
        assert _json(ring_name)[0]["rates"] is None                           # --interval 0: no rates
    finally:
        _stop(child)
        ring.close()
        ring.unlink()


# -- --watch --------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_json", [True, False])
def test_watch_refreshes_until_interrupted(ring_name, as_json):
    with shmpipe.Ring.create(ring_name, TICK, 16) as ring, ring.producer() as p:
        p.write_batch(ticks_for(0, 3))
        proc = subprocess.Popen([sys.executable, "-m", "shmpipe_tools.cli", "inspect", "--watch", "0.1",
                                 *(["--json"] if as_json else []), ring_name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if as_json:
                lines = [proc.stdout.readline() for _ in range(3)]
                snapshots = [json.loads(line) for line in lines]
                assert all(s[0]["ring"]["written"] == 3 for s in snapshots)
                assert snapshots[-1][0]["rates"]["written_per_s"] == 0
            else:
                time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0 and "Traceback" not in err, err
        if not as_json:
            assert ring_name in out
    ring.unlink()


def test_foreign_stats_and_registry_segments(ring_name):
    for prefix in ("/shmpipe-stats.", "/shmpipe-symbols."):
        shm = posix_ipc.SharedMemory(prefix + ring_name, posix_ipc.O_CREX, mode=0o600, size=4096)
        os.pwrite(shm.fd, b"\x07junk" * 100, 0)
        os.close(shm.fd)
    try:
        entries = {e["kind"]: e for e in _json(ring_name)}
        assert set(entries) == {"stats", "symbols"}
        assert "not a stats segment" in entries["stats"]["problem"]
        assert "symbol table" in entries["symbols"]["problem"]
        text = _run("--interval", "0", ring_name).stdout
        assert "[UNREADABLE]" in text and "[NOT A REGISTRY]" in text
    finally:
        stats.unlink(ring_name)
        symbols.remove_segment(ring_name)
