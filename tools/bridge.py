"""``shmpipe bridge ring-to-redis`` and ``shmpipe bridge redis-to-ring``: thin argument handling
over ``shmpipe_services.bridge`` (where the loops, checkpoints and reconnects live)."""
from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from pathlib import Path

from .arg_types import positive_float, positive_int

URL_HELP = ("Redis URL: redis://[:PASSWORD@]HOST:PORT/DB, rediss://... for TLS "
            "(e.g. ?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem), unix:///path/redis.sock")


def add_parser(sub) -> None:
    if importlib.util.find_spec("redis") is None:     # the cli then says which extra to install
        raise ImportError("No module named 'redis'")
    p = sub.add_parser(
        "bridge", help="carry a ring's records to Redis Streams and back (across hosts), exactly once",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Two processes that carry records between hosts through Redis Streams:\n"
        "  ring-to-redis  reads a lossless ring, XADDs batches of records to a stream\n"
        "  redis-to-ring  reads the stream through a consumer group into a local ring\n"
        "Both run until SIGTERM/SIGINT (then finish the batch in flight and exit 0), survive a Redis\n"
        "restart (reconnect, resume) and, when restarted, resume where they stopped: no record is lost\n"
        "or delivered twice, even after kill -9; what Redis itself loses is counted (gap_records) and\n"
        "named, and stops the receiver unless --allow-gap. One ring-to-redis per stream (a sender from\n"
        "another ring is refused), one redis-to-ring per group and ring. Live counters: shmpipe.stats.read('RING.to-redis' / 'RING.from-redis').")
    modes = p.add_subparsers(dest="mode", metavar="MODE", required=True)

    out = modes.add_parser("ring-to-redis", help="ring -> Redis stream",
                           description="Reads RING (a lossless SPSC or broadcast ring; lossy rings are refused) "
                           "and XADDs one stream entry per batch of up to N records. An SPSC ring keeps the "
                           "bridge's cursor across restarts; a broadcast ring does not, so records the "
                           "producer overwrites while the bridge is down are a gap (an error naming them, "
                           "or skipped and counted with --allow-gap).")
    out.add_argument("--ring", required=True, help="the ring to read")
    out.add_argument("--redis", required=True, metavar="URL", help=URL_HELP)
    out.add_argument("--stream", required=True, metavar="KEY",
                     help="stream key; with --shards, a key with {shard} in it (e.g. 'ticks:{shard}', or "
                          "'{ticks:{shard}}' as a Redis Cluster hash tag)")
    out.add_argument("--batch", type=positive_int, default=256, metavar="N",
                     help="records per stream entry (default 256)")
    out.add_argument("--pipeline", type=positive_int, default=16, metavar="E",
                     help="entries per round trip to Redis (default 16)")
    out.add_argument("--shards", type=positive_int, default=1, metavar="K",
                     help="spread records over K streams by SHARD_FIELD modulo K (default 1)")
    out.add_argument("--shard-field", default="symbol_id", metavar="SHARD_FIELD",
                     help="integer field that picks the shard (default symbol_id)")
    retention = out.add_mutually_exclusive_group()
    retention.add_argument("--maxlen", type=positive_int, metavar="ENTRIES",
                           help="keep about this many entries per stream (XADD MAXLEN ~); default: keep all")
    retention.add_argument("--max-age", type=positive_float, metavar="SECONDS",
                           help="drop entries older than this (XADD MINID ~); default: keep all")
    out.add_argument("--allow-gap", action="store_true",
                     help="skip (and count) records that left the ring without reaching Redis instead of "
                          "stopping with an error")
    out.add_argument("--name", help="stats name (default RING.to-redis)")
    out.set_defaults(func=run_ring_to_redis)

    inp = modes.add_parser("redis-to-ring", help="Redis stream -> ring",
                           description="Reads KEY through consumer group G (created at the stream's start if "
                           "missing, so earlier entries are delivered too) and writes the records into RING, "
                           "XACKing only what is in the ring. Creates RING (from the stream's record type) "
                           "when it does not exist. Entries replayed after a crash are trimmed of what the "
                           "ring already holds (counted as duplicates_dropped).")
    inp.add_argument("--redis", required=True, metavar="URL", help=URL_HELP)
    inp.add_argument("--stream", required=True, metavar="KEY", help="stream key")
    inp.add_argument("--group", required=True, metavar="G", help="consumer group (one per receiving ring)")
    inp.add_argument("--ring", required=True, help="the local ring to write")
    inp.add_argument("--consumer", help="consumer name in the group (default HOSTNAME:RING)")
    inp.add_argument("--count", type=positive_int, default=64, metavar="E",
                     help="entries per XREADGROUP (default 64)")
    inp.add_argument("--capacity", type=positive_int, default=1 << 16,
                     help="capacity when the ring has to be created (default 65536)")
    inp.add_argument("--state-dir", type=Path, metavar="DIR",
                     help="where the ring's sequence anchor is kept (default $XDG_STATE_HOME/shmpipe/bridge)")
    inp.add_argument("--allow-gap", action="store_true",
                     help="skip (and count in gap_records) records missing from the stream (trimmed before "
                          "this group read them, or lost by Redis), and go on after a new epoch whose losses "
                          "cannot be counted, instead of stopping with an error")
    inp.add_argument("--name", help="stats name (default RING.from-redis)")
    inp.set_defaults(func=run_redis_to_ring)


def _run(prog: str, make_bridge, stats_name: str, args_url: str) -> int:
    # A SIGTERM during the imports below still means "stop cleanly": remember it from the start.
    early_stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: early_stop.append(True))
    import redis
    from shmpipe_services.bridge.connection import redact
    from shmpipe_services.bridge.runtime import Runtime
    from shmpipe_services.bridge.wire import BridgeError

    from shmpipe import ShmpipeError

    runtime = None
    try:
        runtime = Runtime(stats_name)
        runtime.install_signal_handlers()
        if early_stop:
            return 0
        return make_bridge(runtime).run()
    except BridgeError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ShmpipeError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except redis.exceptions.RedisError as exc:      # what Redis refused (out of memory, ...): one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{prog}: Redis at {redact(args_url)}: {first}", file=sys.stderr)
        return 1
    finally:
        if runtime is not None:
            runtime.close()


def run_ring_to_redis(args) -> int:
    def make(runtime):
        from shmpipe_services.bridge.to_redis import RingToRedis, SenderConfig
        return RingToRedis(SenderConfig(ring=args.ring, url=args.redis, stream=args.stream, batch=args.batch,
                                        pipeline=args.pipeline, shards=args.shards, shard_field=args.shard_field,
                                        maxlen=args.maxlen, minid_age_s=args.max_age, allow_gap=args.allow_gap),
                           runtime)
    return _run("shmpipe bridge ring-to-redis", make, args.name or f"{args.ring}.to-redis", args.redis)


def run_redis_to_ring(args) -> int:
    def make(runtime):
        from shmpipe_services.bridge.from_redis import ReceiverConfig, RedisToRing
        from shmpipe_services.bridge.ring_state import default_state_dir
        return RedisToRing(ReceiverConfig(url=args.redis, stream=args.stream, group=args.group, ring=args.ring,
                                          consumer=args.consumer, count=args.count, capacity=args.capacity,
                                          state_dir=args.state_dir or default_state_dir(),
                                          allow_gap=args.allow_gap), runtime)
    return _run("shmpipe bridge redis-to-ring", make, args.name or f"{args.ring}.from-redis", args.redis)

