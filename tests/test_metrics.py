"""The Prometheus exporter: scraped over HTTP, parsed with prometheus_client's own parser."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import posix_ipc
import pytest
from inspect_workers import produce_then_hang, ticks_for
from prometheus_client.parser import text_string_to_metric_families

import shmpipe
from shmpipe import stats
from shmpipe.metrics import MetricsServerError, metric_name, start_metrics_server
from shmpipe.records import TICK

SPAWN = mp.get_context("spawn")


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _samples(scrape, name, **labels):
    want = set(labels.items())
    return {k[1]: v for k, v in scrape.items() if k[0] == name and want <= set(k[1])}


def test_rings_in_known_states(ring_name):
    written, lagging, broken = ring_name + "-w", ring_name + "-lag", ring_name + "-bad"
    shm = posix_ipc.SharedMemory(shmpipe.segments.shm_name(broken), posix_ipc.O_CREX, mode=0o600, size=100)
    os.close(shm.fd)
    ready = SPAWN.Event()
    ring_w = shmpipe.Ring.create(written, TICK, 16)
    child = SPAWN.Process(target=produce_then_hang, args=(written, 6, ready))
    child.start()
    try:
        assert ready.wait(60)
        with shmpipe.Ring.create(lagging, TICK, 64, broadcast=True) as ring, ring.producer() as p, \
                ring.consumer() as fast, ring.consumer() as slow, \
                start_metrics_server(0, rings=[written, lagging, broken]) as server:
            assert server.port > 0
            p.write_batch(ticks_for(0, 10))
            fast.read(10)
            slow.read(4)
            scrape = _scrape(server.url)
            assert scrape[("shmpipe_ring_written_total", (("ring", written),))] == 6
            assert scrape[("shmpipe_ring_written_total", (("ring", lagging),))] == 10
            assert scrape[("shmpipe_ring_capacity", (("ring", lagging),))] == 64
            assert scrape[("shmpipe_ring_fill", (("ring", written),))] == 6   # SPSC: held for its one reader
            me = str(os.getpid())
            assert _samples(scrape, "shmpipe_ring_consumer_lag", ring=lagging) == {
                (("pid", me), ("ring", lagging), ("slot", str(fast.slot))): 0,
                (("pid", me), ("ring", lagging), ("slot", str(slow.slot))): 6}
            assert _samples(scrape, "shmpipe_ring_consumer_position", ring=lagging, slot=str(slow.slot)) \
                == {(("pid", me), ("ring", lagging), ("slot", str(slow.slot))): 4}
            assert _samples(scrape, "shmpipe_ring_producer_alive", ring=written) == {
                (("pid", str(child.pid)), ("ring", written)): 1}
            assert scrape[("shmpipe_segment_unreadable", (("condition", "foreign"), ("ring", broken)))] == 1
            for key in ("lost", "evictions", "full_waits"):
                assert scrape[(f"shmpipe_ring_{key}_total", (("ring", lagging),))] == 0
            # a producer killed with kill -9 shows as dead at the next scrape; its count stays
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            scrape = _scrape(server.url)
            assert _samples(scrape, "shmpipe_ring_producer_alive", ring=written) == {
                (("pid", str(child.pid)), ("ring", written)): 0}
            assert scrape[("shmpipe_ring_written_total", (("ring", written),))] == 6
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)
        ring_w.close()
        for name in (written, lagging, broken):
            try:
                shmpipe.segments.unlink(name)
            except shmpipe.RingNotFoundError:
                pass


def test_every_ring_by_default_and_service_counters(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p, \
            stats.publish(ring_name, ["messages", "latency-p99.us"]) as pub, start_metrics_server(0) as server:
        p.write_batch(ticks_for(0, 3))
        pub.update({"messages": 12, "latency-p99.us": 250})
        scrape = _scrape(server.url)
        assert scrape[("shmpipe_ring_written_total", (("ring", ring_name),))] == 3
        labels = (("pid", str(os.getpid())), ("service", ring_name))
        assert scrape[("shmpipe_service_up", labels)] == 1
        assert scrape[("shmpipe_service_messages", labels)] == 12
        assert scrape[(f"shmpipe_service_{metric_name('latency-p99.us')}", labels)] == 250
        assert abs(scrape[("shmpipe_service_updated_timestamp_seconds", labels)] - time.time()) < 600
    ring.unlink()


def test_port_in_use_is_one_line_naming_the_port():
    with start_metrics_server(0) as first:
        with pytest.raises(MetricsServerError, match=f"port {first.port} on 127.0.0.1 is already in use"):
            start_metrics_server(first.port)
        out = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", "metrics", "--port", str(first.port)],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 1
        assert out.stderr == f"shmpipe metrics: port {first.port} on 127.0.0.1 is already in use\n"
    bad = subprocess.run([sys.executable, "-m", "shmpipe_tools.cli", "metrics", "--port", "70000"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_close_frees_the_port():
    server = start_metrics_server(0)
    port = server.port
    server.close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_cli_serves_until_sigterm(ring_name):
    with shmpipe.Ring.create(ring_name, TICK, 8) as ring, ring.producer() as p:
        p.write_batch(ticks_for(0, 2))
        proc = subprocess.Popen([sys.executable, "-m", "shmpipe_tools.cli", "metrics", "--port", "0", ring_name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert "serving shmpipe metrics on http://127.0.0.1:" in line, proc.stderr.read()
            url = line.split(" on ", 1)[1].split()[0]
            scrape = _scrape(url)
            assert scrape[("shmpipe_ring_written_total", (("ring", ring_name),))] == 2
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0 and "Traceback" not in err, err
    ring.unlink()
