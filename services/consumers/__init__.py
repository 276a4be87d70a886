"""Consumers of the rings: bars from trade Ticks (``shmpipe bars``) and book features from
OrderbookEntries (``shmpipe features``), published on the signals bus.

``bars`` and ``features`` hold the vectorised arithmetic (no I/O, tested against pandas and a
per-record reference); ``bar_service`` / ``feature_service`` the processes; ``loop`` what both
processes share (the ring stream, control endpoint, live counters, heartbeats, signals)."""
