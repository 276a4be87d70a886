"""The ring's own benchmark (first version): shmpipe alone next to the C cache-line floor.

    python bench/ring_bench.py [--cores 0,1] [--runs 5] [--quick] [--json ring-bench.json]

Two processes pinned to two cores: one-way latency (ping-pong round trip / 2, and open loop at
100k msg/s) with p50/p99/p99.9, single-record and batched throughput. It is `shmpipe bench`
restricted to these transports and scenarios; any of its options can be added and win.
"""
import os
import runpy
import sys

DEFAULTS = ["--transports", "shmpipe,c-floor", "--scenarios", "pingpong,open-loop-100k,throughput",
            "--json", "ring-bench.json", "--no-plot"]

if __name__ == "__main__":
    sys.argv = [sys.argv[0], *DEFAULTS, *sys.argv[1:]]
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py"), run_name="__main__")
