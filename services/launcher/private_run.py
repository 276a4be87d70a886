"""What a self-contained run (``shmpipe demo``, ``demo --trade``, the pipeline bench) makes private
to itself: its control sockets' runtime dir and its symbol registry, so that the synthetic symbols
never reach the user's registry. Undone on the way out, whatever happened."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

PRIVATE_ENV = ("SHMPIPE_RUNTIME_DIR", "SHMPIPE_SYMBOLS", "SHMPIPE_SYMBOLS_FILE")


@contextlib.contextmanager
def private_registry(tmp: str, registry: str) -> Iterator[str]:
    """Point this process and its children at ``tmp``/run and at symbol registry ``registry``
    (its file ``tmp``/symbols.jsonl); after, remove that registry's table from /dev/shm and put
    the environment back as it was."""
    saved = {k: os.environ.get(k) for k in PRIVATE_ENV}
    os.environ["SHMPIPE_RUNTIME_DIR"] = os.path.join(tmp, "run")
    os.environ["SHMPIPE_SYMBOLS"] = registry
    os.environ["SHMPIPE_SYMBOLS_FILE"] = os.path.join(tmp, "symbols.jsonl")
    try:
        yield registry
    finally:
        try:
            from shmpipe import symbols

            symbols.remove_segment(registry)
        except Exception:  # noqa: BLE001 - nothing was registered
            pass
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
