"""``shmpipe assets watch``: subscribe to ``assets.changed``, keep a cache, print and store features.

The cache is warm-started from the database (every row, removed ones flagged) and then each
message is applied on top. Features go to the ``asset_features`` table per message; a lost
database connection is retried with backoff and a reconnect (a database restart costs a few
seconds, not the process), and features that still cannot be stored are reported and skipped:
the cache, which lives in memory, stays right either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from . import zmq_pubsub
from .features import compute_features
from .reconnect import ReconnectPolicy, with_reconnect
from .service import stored_records
from .store import AssetStore, StoreError
from .store_factory import open_store

# How long ``watch`` waits for its connection to a running publisher before reading the database.
CONNECT_WAIT = 5.0
# About half a minute of retries: a database restart fits in it.
RECONNECT = ReconnectPolicy(attempts=10, base_delay=0.2, max_delay=5.0)


async def run_watch(args: argparse.Namespace, report: Callable[[str], None]) -> int:
    """The watch command; ``report`` prints one line on stderr. Returns the exit status: 1 when
    the features of some message could not be stored."""
    warm_start = not args.no_warm_start
    store = open_store(args.db, schema=args.schema, timeout=args.db_timeout)
    try:
        await store.open()
        await store.ensure_schema()
    except BaseException:
        await store.close()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    subscriber = None
    try:
        # Subscribe first, read the database second: a change committed after the snapshot is
        # published after it too, so it reaches us as a message; ZeroMQ queues the messages
        # that arrive while we read, and they are applied after the snapshot.
        subscriber = await asyncio.to_thread(
            zmq_pubsub.AssetSubscriber, args.sub, await_connection=CONNECT_WAIT if warm_start else None
        )
        if warm_start:
            snapshot = await store.load_snapshot()
            subscriber.load(stored_records(snapshot))
            _print_features(
                compute_features(subscriber.records()),
                args.json,
                {"warm_start": len(snapshot), "received": 0},
                f"warm start: {len(snapshot)} assets from the database",
            )
        idle_since = loop.time()
        unstored = 0
        while not stop.is_set():
            # Short polls in a thread keep the loop free for the signal handlers.
            records = await asyncio.to_thread(subscriber.receive, 0.2)
            if records is None:
                if args.idle_timeout is not None and loop.time() - idle_since > args.idle_timeout:
                    break
                continue
            idle_since = loop.time()
            features = compute_features(subscriber.records())
            if not await _store_features(store, features, report):
                unstored += 1
            _print_features(
                features,
                args.json,
                {"received": len(records)},
                f"received {len(records)} changed assets",
            )
            if args.messages and subscriber.messages >= args.messages:
                break
        if unstored:
            report(f"features were not stored for {unstored} of {subscriber.messages} messages")
        return 1 if unstored else 0
    finally:
        if subscriber is not None:
            subscriber.close()
        await store.close()


async def _store_features(store: AssetStore, features: dict[str, Any], report: Callable[[str], None]) -> bool:
    """Write one feature row, across a lost connection if need be; False (reported) if it failed."""
    computed_at = datetime.now(timezone.utc)
    try:
        await with_reconnect(
            store,
            lambda: store.write_features(computed_at, features["assets"], features),
            RECONNECT,
            on_retry=lambda exc: report(f"{exc}; reconnecting"),
        )
    except StoreError as exc:
        report(f"features not stored: {exc}")
        return False
    return True


def _print_features(features: dict[str, Any], as_json: bool, head: dict[str, Any], text: str) -> None:
    if as_json:
        print(json.dumps({**head, **features}), flush=True)
        return
    ratios = ", ".join(
        f"{name} {'n/a' if features['ratios'][name] is None else format(features['ratios'][name], '.3f')}"
        for name in ("shortable", "easy_to_borrow", "fractionable")
    )
    print(
        f"{text}; {features['assets']} listed, {features['removed']} removed; "
        f"by class {features['by_class']}; {ratios}",
        flush=True,
    )
