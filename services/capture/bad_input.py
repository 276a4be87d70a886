"""Bad frames: counted per kind, the first few of each kind logged in full, the rest rate-limited.

A feed that starts sending garbage must not flood the log (or the disk) at message rate, yet the first
examples of each kind are what someone needs to fix it, so they are logged whole.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

# Kinds a parser reports (counts keys).
NOT_UTF8 = "not_utf8"
INVALID_JSON = "invalid_json"
SCHEMA = "schema"                  # valid JSON that does not fit the venue's message schema
UNKNOWN_TYPE = "unknown_type"      # a channel / message type the parser does not know
BAD_VALUE = "bad_value"            # NaN, infinite or negative price or size, bad timestamp, out of f32 range
OVERSIZED = "oversized"
UPDATE_WITHOUT_SNAPSHOT = "update_without_snapshot"  # a book update for a symbol with no snapshot yet
VENUE_ERROR = "venue_error"        # the venue said something failed (an error message, success: false)
INTERNAL = "internal"              # a bug in the parser; counted and logged, never raised

DEFAULT_FULL_LOGS = 5
DEFAULT_REPORT_INTERVAL_S = 10.0
# Even a "full" log line keeps only this much of a frame: an oversized frame may be megabytes.
DEFAULT_MAX_LOGGED_CHARS = 4096


def _frame_text(frame: bytes | str, limit: int) -> str:
    shown = frame[:limit]
    text = shown if isinstance(shown, str) else shown.decode("utf-8", errors="backslashreplace")
    return text + (f" ... ({len(frame) - limit} more)" if len(frame) > limit else "")


class BadInputLog:
    def __init__(self, source: str, *, logger: logging.Logger | None = None,
                 full_logs: int = DEFAULT_FULL_LOGS, report_interval_s: float = DEFAULT_REPORT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 max_logged_chars: int = DEFAULT_MAX_LOGGED_CHARS) -> None:
        self.source = source
        self.logger = logger or logging.getLogger("shmpipe.capture")
        self.full_logs = full_logs
        self.report_interval_s = report_interval_s
        self.clock = clock
        self.max_logged_chars = max_logged_chars
        self.counts: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()
        self._last_report: dict[str, float] = {}
        self._latest: dict[str, str] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, kind: str, frame: bytes | str, detail: str) -> None:
        self.counts[kind] += 1
        n = self.counts[kind]
        if n <= self.full_logs:
            self.logger.warning("%s: bad input #%d of kind %s: %s; frame (%d bytes): %s", self.source, n,
                                kind, detail, len(frame), _frame_text(frame, self.max_logged_chars))
            self._last_report[kind] = self.clock()
            return
        self._suppressed[kind] += 1
        self._latest[kind] = detail
        if self.clock() - self._last_report.get(kind, float("-inf")) >= self.report_interval_s:
            self._report(kind)

    def _report(self, kind: str) -> None:
        self.logger.warning("%s: %d more bad input of kind %s (%d in all; latest: %s)", self.source,
                            self._suppressed[kind], kind, self.counts[kind], self._latest.get(kind, ""))
        self._suppressed[kind] = 0
        self._last_report[kind] = self.clock()

    def flush(self) -> None:
        """Report what the rate limit held back (a capture calls this when it stops)."""
        for kind in [k for k, n in self._suppressed.items() if n]:
            self._report(kind)
