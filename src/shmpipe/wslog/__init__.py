"""``.wslog``: the raw capture format. Every frame as received, plus connect / disconnect /
subscribe markers, as 14-byte-header entries (format.py); a background writer with hourly rotation
per exchange, zstd compression of closed files and an index (writer.py, index.py); a reader that
stops cleanly at damage and a heap merge by receive time (reader.py).

    with WslogWriter("capture", {1: "coinbase", 2: "kraken"}) as w:
        w.connect(1, "wss://advanced-trade-ws.coinbase.com")
        w.write(time.time_ns(), 1, frame)
    for entry in merge_wslogs(["capture"]):
        entry.recv_ns, entry.exchange_id, entry.payload, entry.marker
"""
from .format import (
                     HEADER_BYTES,
                     MARKER_CONNECT,
                     MARKER_DISCONNECT,
                     MARKER_EXCHANGE_ID,
                     MARKER_SUBSCRIBE,
                     MAX_ENTRY_BYTES,
                     WslogEntry,
                     WslogStop,
                     encode_entry,
)
from .index import load_index, rebuild_index
from .reader import WslogMerge, WslogReader, merge_wslogs, read_wslog, wslog_files
from .writer import HOUR_NS, WslogWriter

__all__ = [
                     "HEADER_BYTES",
                     "HOUR_NS",
                     "MARKER_CONNECT",
                     "MARKER_DISCONNECT",
                     "MARKER_EXCHANGE_ID",
                     "MARKER_SUBSCRIBE",
                     "MAX_ENTRY_BYTES",
                     "WslogEntry",
                     "WslogMerge",
                     "WslogReader",
                     "WslogStop",
                     "WslogWriter",
                     "encode_entry",
                     "load_index",
                     "merge_wslogs",
                     "read_wslog",
                     "rebuild_index",
                     "wslog_files",
]
