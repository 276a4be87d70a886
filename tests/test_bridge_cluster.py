"""Sharded streams through a Redis Cluster of the test's own: the shards land on different nodes
and every shard's records arrive complete and in order, with a kill -9 of the sender between XADD and commit."""
from __future__ import annotations

import time

import numpy as np
import pytest
import redis.cluster
from bridge_helpers import assert_alive, private_cluster, start_receiver, start_sender, stop, ticks

import shmpipe
from shmpipe.records import TICK

pytestmark = pytest.mark.services


def test_sharded_streams_spread_over_cluster_nodes_and_arrive_in_order(ring_name, tmp_path):
    k = 3
    src = shmpipe.Ring.create(f"{ring_name}-src", TICK, 1 << 14)
    dsts = [shmpipe.Ring.create(f"{ring_name}-dst{j}", TICK, 1 << 14) for j in range(k)]
    data = ticks(0, 40_000)
    expected = [data[data["symbol_id"] % k == j] for j in range(k)]
    procs = []
    try:
        with private_cluster(tmp_path / "cluster") as urls, src.producer() as producer:
            client = redis.cluster.RedisCluster.from_url(urls[0])
            nodes = {client.get_node_from_key(f"bt:{j}").name for j in range(k)}
            assert len(nodes) >= 2, "the shard keys should spread over nodes"
            # killed between its XADDs and the ring commit: every shard has records the restart re-sees
            sender = start_sender(src.name, urls[1], "bt:{shard}", "--shards", str(k), "--batch", "64",
                                  env={"SHMPIPE_BRIDGE_CRASH": "after_xadd:4"})
            receivers = [start_receiver(d.name, urls[j % len(urls)], f"bt:{j}", "g", tmp_path / f"s{j}")
                         for j, d in enumerate(dsts)]
            procs = [sender, *receivers]
            consumers = [d.consumer() for d in dsts]
            got = [[] for _ in range(k)]
            written = 0
            killed = False
            deadline = time.monotonic() + 90
            while not all(sum(map(len, got[j])) >= len(expected[j]) for j in range(k)):
                if written < len(data):
                    written += producer.write_batch(data[written:written + 2048], timeout=0)
                for j, c in enumerate(consumers):
                    got[j].append(c.read(8192, timeout=0.01))
                if not killed and sender.poll() is not None:
                    assert sender.returncode == -9
                    sender = start_sender(src.name, urls[2], "bt:{shard}", "--shards", str(k), "--batch", "64")
                    procs[0] = sender
                    killed = True
                assert_alive(*procs)
                assert time.monotonic() < deadline, [sum(map(len, g)) for g in got]
            assert killed
            for j in range(k):
                assert np.array_equal(np.concatenate(got[j]), expected[j]), f"shard {j}"
            for c in consumers:
                c.close()
            assert [stop(p) for p in procs] == [0] * (k + 1)
            client.close()
    finally:
        for p in procs:
            stop(p)
        for ring in [src, *dsts]:
            ring.close()
            ring.unlink()
