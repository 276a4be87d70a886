"""Capture parse cost: frame bytes -> Tick / LevelUpdate records, per message, per feed, per parser choice.

    python bench/parse_bench.py [--runs 7] [--json parse-bench.json] [--quick]

The frames are the fixture files in tests/fixtures/capture (one raw frame per line), read into memory
once. Each cell loops over its frames and divides the elapsed time by the number of messages; it is
repeated ``--runs`` times, interleaved with the other cells, and reported as the median with the
[min, max] spread. Choices:

- ``msgspec``: the shipped parsers (typed msgspec Structs, schema-checked; Kraken numbers as raw text),
  ``parser.feed(frame, batch)`` with the batch taken as numpy arrays every 256 frames.
- ``msgspec+ring``: the same, and each frame's records written to two lossy broadcast rings
  (``RecordBatch.write_to``): frame bytes -> records in the ring.
- ``orjson`` / ``json``: the same normalisation over a dict from ``orjson.loads`` / ``json.loads``
  (Kraken: ``parse_float=str`` for json, to keep the decimals; orjson cannot, so its Kraken prices lose
  their trailing zeros), with no schema: a missing key is a KeyError.
- ``decode-only/<lib>``: only the JSON decode (msgspec into the Structs; orjson and json into dicts).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import msgspec
from shmpipe_services.capture import alpaca, coinbase, kraken
from shmpipe_services.capture.feed_parser import non_negative, positive
from shmpipe_services.capture.record_batch import RecordBatch, pack_level, pack_tick, spread_tenth_bps
from shmpipe_services.capture.timestamps import rfc3339_ns

from shmpipe.records import (
    ACTION_CHECKSUM,
    ACTION_SET,
    LEVEL_UPDATE,
    SOURCE_ALPACA,
    SOURCE_COINBASE,
    SOURCE_KRAKEN,
    TICK,
    TICK_FLAG_QUOTE,
    TICK_FLAG_TRADE,
)

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "capture"
FLUSH_EVERY = 256

# (feed, message class) -> which fixture lines belong to it
CLASSES = {
    ("coinbase", "all frames"): ("coinbase_advanced.jsonl", lambda line: True),
    ("coinbase", "l2_data update (book)"): ("coinbase_advanced.jsonl",
                                            lambda line: b'"l2_data"' in line and b'"type":"update"' in line),
    ("coinbase", "ticker"): ("coinbase_advanced.jsonl", lambda line: b'"channel":"ticker"' in line),
    ("kraken", "all frames"): ("kraken_v2.jsonl", lambda line: True),
    ("kraken", "book update"): ("kraken_v2.jsonl", lambda line: line.startswith(b'{"channel":"book","type":"update"')),
    ("kraken", "ticker"): ("kraken_v2.jsonl", lambda line: line.startswith(b'{"channel":"ticker"')),
    ("alpaca", "all frames"): ("alpaca_stream.jsonl", lambda line: True),
    ("alpaca", "data frame (quotes, trades)"): ("alpaca_stream.jsonl", lambda line: b'"T":"q"' in line
                                                or b'"T":"t"' in line),
}
PARSERS = {"coinbase": coinbase.CoinbaseParser, "kraken": kraken.KrakenParser, "alpaca": alpaca.AlpacaParser}
DECODERS = {"coinbase": coinbase.DECODER, "kraken": kraken.DECODER, "alpaca": alpaca.DECODER}


# -- the dict-based alternatives: the same records, no schema ---------------------------------------------
class DictNormaliser:
    def __init__(self, loads) -> None:
        self.loads = loads
        self.ids: dict[str, int] = {}

    def sid(self, symbol: str) -> int:
        return self.ids.setdefault(symbol, len(self.ids) + 1)


def coinbase_dict(norm: DictNormaliser, frame: bytes, out: RecordBatch) -> None:
    msg = norm.loads(frame)
    channel = msg["channel"]
    if channel == "l2_data":
        ts = rfc3339_ns(msg["timestamp"])
        for event in msg["events"]:
            sid = norm.sid(event["product_id"])
            for u in event["updates"]:
                out.levels += pack_level(ts, positive(u["price_level"]), non_negative(u["new_quantity"]), sid,
                                         0 if u["side"] == "bid" else 1, ACTION_SET, SOURCE_COINBASE, 0)
    elif channel == "ticker":
        ts = rfc3339_ns(msg["timestamp"])
        for event in msg["events"]:
            for t in event["tickers"]:
                bid, ask = non_negative(t["best_bid"]), non_negative(t["best_ask"])
                out.ticks += pack_tick(ts, norm.sid(t["product_id"]), bid, ask,
                                       float(t["best_bid_quantity"]) + float(t["best_ask_quantity"]),
                                       SOURCE_COINBASE, TICK_FLAG_QUOTE, spread_tenth_bps(bid, ask),
                                       msg["sequence_num"])


def kraken_dict(norm: DictNormaliser, frame: bytes, out: RecordBatch) -> None:
    msg = norm.loads(frame)
    channel = msg.get("channel")
    if channel == "book":
        for data in msg["data"]:
            sid = norm.sid(data["symbol"])
            ts = rfc3339_ns(data["timestamp"]) if "timestamp" in data else 0
            for side, levels in ((0, data["bids"]), (1, data["asks"])):
                for level in levels:
                    out.levels += pack_level(ts, positive(level["price"]), non_negative(level["qty"]), sid, side,
                                             ACTION_SET, SOURCE_KRAKEN, 0)
            out.levels += pack_level(ts, float(data["checksum"]), 0.0, sid, 0, ACTION_CHECKSUM, SOURCE_KRAKEN, 0)
    elif channel == "ticker":
        for data in msg["data"]:
            bid, ask = non_negative(data["bid"]), non_negative(data["ask"])
            out.ticks += pack_tick(rfc3339_ns(data["timestamp"]), norm.sid(data["symbol"]), bid, ask,
                                   float(data["bid_qty"]) + float(data["ask_qty"]), SOURCE_KRAKEN,
                                   TICK_FLAG_QUOTE, spread_tenth_bps(bid, ask), 0)


def alpaca_dict(norm: DictNormaliser, frame: bytes, out: RecordBatch) -> None:
    for item in norm.loads(frame):
        kind = item["T"]
        if kind == "q":
            bid, ask = non_negative(item["bp"]), non_negative(item["ap"])
            out.ticks += pack_tick(rfc3339_ns(item["t"]), norm.sid(item["S"]), bid, ask,
                                   float(item["bs"]) + float(item["as"]), SOURCE_ALPACA, TICK_FLAG_QUOTE,
                                   spread_tenth_bps(bid, ask), 0)
        elif kind == "t":
            price = positive(item["p"])
            out.ticks += pack_tick(rfc3339_ns(item["t"]), norm.sid(item["S"]), price, price,
                                   non_negative(item["s"]), SOURCE_ALPACA, TICK_FLAG_TRADE, 0, 0)


DICT_NORMALISERS = {"coinbase": coinbase_dict, "kraken": kraken_dict, "alpaca": alpaca_dict}


# -- cells ---------------------------------------------------------------------------------------------
def primed_parser(feed: str, fixture: list[bytes]):
    """A parser that has seen the fixture once (snapshots, acks), so update frames are valid on their own."""
    parser = PARSERS[feed]()
    batch = RecordBatch()
    for frame in fixture:
        parser.feed(frame, batch)
    if feed == "coinbase":
        parser.next_sequence = None   # replays restart the sequence: do not time gap bookkeeping
    batch.take()
    return parser


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) since ``start``. The CPU time leaves out the time
    this process waited for a core, so on a shared machine it is the cost of the work itself; the
    wall time is what a process with a core of its own would see."""
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def time_msgspec(feed, fixture, frames) -> tuple[float, float]:
    parser, batch = primed_parser(feed, fixture), RecordBatch()
    feed_frame, take = parser.feed, batch.take
    if feed == "coinbase":
        parser.next_sequence = None
    start = _clocks()
    for i, frame in enumerate(frames):
        feed_frame(frame, batch)
        if i % FLUSH_EVERY == FLUSH_EVERY - 1:
            take()
    take()
    return _since(start)


def time_msgspec_ring(feed, fixture, frames, rings) -> tuple[float, float]:
    parser, batch = primed_parser(feed, fixture), RecordBatch()
    ticks_out, levels_out = rings
    feed_frame, write_to = parser.feed, batch.write_to
    start = _clocks()
    for frame in frames:
        feed_frame(frame, batch)
        write_to(ticks_out, levels_out)
    return _since(start)


def time_dict(feed, frames, loads) -> tuple[float, float]:
    norm, batch = DictNormaliser(loads), RecordBatch()
    normalise, take = DICT_NORMALISERS[feed], batch.take
    start = _clocks()
    for i, frame in enumerate(frames):
        normalise(norm, frame, batch)
        if i % FLUSH_EVERY == FLUSH_EVERY - 1:
            take()
    take()
    return _since(start)


def time_decode(frames, decode) -> tuple[float, float]:
    start = _clocks()
    for frame in frames:
        try:
            decode(frame)
        except msgspec.ValidationError:   # Kraken's method responses: outside the channel union
            pass
    return _since(start)


def renumbered(frames: list[bytes]) -> list[bytes]:
    """Coinbase frames with consecutive sequence_num: a subset (only the tickers) would otherwise be one
    sequence gap per message, and gap bookkeeping is not the per-message cost being measured."""
    return [re.sub(rb'"sequence_num":\d+', b'"sequence_num":%d' % i, f, count=1) for i, f in enumerate(frames)]


def make_cells(rings, fixtures_dir: Path):
    import orjson
    stdlib_loads = json.loads

    def kraken_json(frame):   # keep Kraken's decimals as text, as the parser must
        return stdlib_loads(frame, parse_float=str)

    fixtures = {name: (fixtures_dir / name).read_bytes().splitlines() for name in
                {f for f, _ in CLASSES.values()}}
    cells = []
    for (feed, what), (fixture_name, keep) in CLASSES.items():
        fixture = fixtures[fixture_name]
        frames = [f for f in fixture if keep(f)]
        if feed == "coinbase":
            frames = renumbered(frames)
        json_loads = kraken_json if feed == "kraken" else stdlib_loads
        choices = {
            "msgspec": lambda feed=feed, fixture=fixture, frames=frames: time_msgspec(feed, fixture, frames),
            "orjson": lambda feed=feed, frames=frames: time_dict(feed, frames, orjson.loads),
            "json": lambda feed=feed, frames=frames, loads=json_loads: time_dict(feed, frames, loads),
            "decode-only/msgspec": lambda feed=feed, frames=frames: time_decode(frames, DECODERS[feed].decode),
            "decode-only/orjson": lambda frames=frames: time_decode(frames, orjson.loads),
            "decode-only/json": lambda frames=frames, loads=json_loads: time_decode(frames, loads),
        }
        if rings is not None:
            choices["msgspec+ring"] = lambda feed=feed, fixture=fixture, frames=frames: \
                time_msgspec_ring(feed, fixture, frames, rings)
        for choice, fn in choices.items():
            cells.append({"feed": feed, "messages": what, "choice": choice, "count": len(frames), "fn": fn})
    return cells


def open_rings():
    try:
        import shmpipe
    except ImportError:
        return None, []
    made = []
    producers = []
    for dtype, name in ((TICK, "ticks"), (LEVEL_UPDATE, "levels")):
        ring = shmpipe.Ring.create(f"parse-bench-{os.getpid()}-{name}", dtype, 1 << 16, broadcast=True,
                                   policy="lossy")   # lossy with no consumer: the producer never waits
        made.append(ring)
        producers.append(ring.producer())
    return tuple(producers), made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", metavar="PATH", help="write every figure here")
    ap.add_argument("--quick", action="store_true", help="1 run (a smoke test)")
    ap.add_argument("--only", metavar="CHOICE", action="append", help="only these parser choices")
    ap.add_argument("--fixtures", type=Path, default=FIXTURES, metavar="DIR",
                    help=f"folder with the venue .jsonl files (default {FIXTURES})")
    args = ap.parse_args(argv)
    runs = 1 if args.quick else args.runs
    rings, made = open_rings()
    try:
        cells = [c for c in make_cells(rings, args.fixtures) if not args.only or c["choice"] in args.only]
        for cell in cells:
            cell["fn"]()   # warm-up: imports, caches, first-call costs
        per_run = {id(c): [] for c in cells}
        cpu_per_run = {id(c): [] for c in cells}
        for _ in range(runs):   # interleaved: background noise spreads over every cell alike
            for cell in cells:
                wall, cpu = cell["fn"]()
                per_run[id(cell)].append(wall / cell["count"] * 1e6)
                cpu_per_run[id(cell)].append(cpu / cell["count"] * 1e6)
    finally:
        for ring in made:
            ring.close()
            ring.unlink()
    rows = []
    print(f"{'feed':9} {'messages':30} {'choice':20} {'n':>5} {'µs/msg median':>14} {'[min, max]':>16} "
          f"{'CPU µs/msg':>11} {'msgs/s/core':>12}")
    for cell in cells:
        us, cpu_us = per_run[id(cell)], cpu_per_run[id(cell)]
        median, cpu_median = statistics.median(us), statistics.median(cpu_us)
        rows.append({"feed": cell["feed"], "messages": cell["messages"], "choice": cell["choice"],
                     "count": cell["count"], "us_per_msg": median, "spread": [min(us), max(us)],
                     "cpu_us_per_msg": cpu_median, "cpu_spread": [min(cpu_us), max(cpu_us)],
                     "msgs_per_s": 1e6 / median, "per_run": us, "cpu_per_run": cpu_us})
        print(f"{cell['feed']:9} {cell['messages']:30} {cell['choice']:20} {cell['count']:5} {median:14.2f} "
              f"{f'[{min(us):.2f}, {max(us):.2f}]':>16} {cpu_median:11.2f} {1e6 / median:12,.0f}")
    machine = {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
               "cores": os.cpu_count(), "loadavg_after": os.getloadavg(), "runs": runs}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        machine["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
