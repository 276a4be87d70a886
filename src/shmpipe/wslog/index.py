"""``<dir>/index.json``: per capture file, its exchange, first and last receive time, counts and
state, so a replay or a person can find an hour without opening every file.

    {"format": "shmpipe-wslog-index", "version": 1,
     "files": {"coinbase/20240611_14.wslog.zst": {"exchange": "coinbase", "exchange_id": 1,
               "first_recv_ns": ..., "last_recv_ns": ..., "entries": 916, "markers": 2,
               "bytes": 312034, "compressed_bytes": 41822, "state": "compressed"}}}

``state`` is "open" (being written; its counts are those of when it was opened), "closed" or
"compressed". Writers update it when they open, close or compress a file, under an flock on
``<dir>/.index.lock`` so several writers (threads or processes) can share a directory, and replace
it atomically. A writer killed with kill -9 leaves its open files marked "open":
``rebuild_index(dir)`` rescans the files.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any

from .reader import WslogReader, wslog_files

INDEX_NAME = "index.json"
_FORMAT = "shmpipe-wslog-index"
_guard = threading.Lock()


def load_index(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / INDEX_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": _FORMAT, "version": 1, "files": {}}
    except ValueError:
        # Replaced atomically, so this is damage from outside; the files themselves are the truth.
        return {"format": _FORMAT, "version": 1, "files": {}}
    return data


def update_index(directory: str | os.PathLike, key: str, fields: dict[str, Any] | None,
                 replaces: str | None = None) -> None:
    """Set (or, with fields None, remove) one file's entry; ``replaces`` drops an old key (the
    .wslog a .wslog.zst replaced)."""
    directory = Path(directory)
    with _guard, open(directory / ".index.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_index(directory)
        files = data.setdefault("files", {})
        if replaces is not None:
            files.pop(replaces, None)
        if fields is None:
            files.pop(key, None)
        else:
            files[key] = fields
        data["files"] = dict(sorted(files.items()))
        _write(directory, data)


def rebuild_index(directory: str | os.PathLike) -> dict[str, Any]:
    """Rescan every capture file under ``directory`` and rewrite index.json from what they hold."""
    directory = Path(directory)
    files = {}
    for path in wslog_files(directory):
        reader = WslogReader(path)
        first = last = None
        entries = markers = 0
        for entry in reader:
            first = entry.recv_ns if first is None else first
            last = entry.recv_ns
            entries += 1
            markers += entry.marker is not None
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"exchange": path.parent.name, "first_recv_ns": first, "last_recv_ns": last,
                      "entries": entries, "markers": markers,
                      "state": "compressed" if rel.endswith(".zst") else "closed",
                      "stop": None if reader.stop is None else str(reader.stop)}
    data = {"format": _FORMAT, "version": 1, "files": files}
    with _guard, open(directory / ".index.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write(directory, data)
    return data


def _write(directory: Path, data: dict[str, Any]) -> None:
    tmp = directory / f".{INDEX_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, directory / INDEX_NAME)
