"""RFC 3339 timestamps as venues write them -> integer nanoseconds since the epoch (UTC).

``datetime.fromisoformat`` keeps only microseconds and costs ~1 µs; Alpaca sends nanoseconds and a
book message's budget is a few µs, so this parses the fixed layout by hand and caches everything up to
the minute (a stream's timestamps share it for 60 s at a time).
"""
from __future__ import annotations

import datetime as _dt

_NS_PER_S = 1_000_000_000
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
# "2024-06-11T14:30" -> ns at that minute, UTC; bounded so a hostile stream of minutes cannot grow it.
_MINUTE_NS: dict[str, int] = {}
_MAX_CACHED_MINUTES = 4096
# ns per unit of the last fraction digit, by number of fraction digits (RFC 3339 allows any; keep 9)
_FRACTION_SCALE = [10 ** (9 - n) for n in range(10)]


def _minute_ns(prefix: str) -> int:
    ns = _MINUTE_NS.get(prefix)
    if ns is None:
        if prefix[4] != "-" or prefix[7] != "-" or prefix[10] not in "Tt " or prefix[13] != ":":
            raise ValueError(f"not an RFC 3339 timestamp: {prefix!r}...")
        when = _dt.datetime(int(prefix[:4]), int(prefix[5:7]), int(prefix[8:10]), int(prefix[11:13]),
                            int(prefix[14:16]), tzinfo=_dt.UTC)
        ns = (when - _EPOCH) // _dt.timedelta(microseconds=1) * 1000
        if len(_MINUTE_NS) >= _MAX_CACHED_MINUTES:
            _MINUTE_NS.clear()
        _MINUTE_NS[prefix] = ns
    return ns


def rfc3339_ns(text: str) -> int:
    """``2024-06-11T14:30:00.150435272Z`` (0-9 or more fraction digits, ``Z`` or ``±HH:MM``) -> ns.

    Raises ValueError for anything else, so a parser counts it as a bad value.
    """
    if text[-1:] in ("Z", "z"):
        end, offset_s = len(text) - 1, 0
    elif len(text) >= 25 and text[-6] in "+-" and text[-3] == ":":
        end = len(text) - 6
        offset_s = (int(text[-5:-3]) * 3600 + int(text[-2:]) * 60) * (1 if text[-6] == "+" else -1)
    else:
        raise ValueError(f"no zone in timestamp: {text!r}")
    seconds = text[17:19]
    if end < 19 or text[16] != ":" or not seconds.isdigit():
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    ns = _minute_ns(text[:16]) + (int(seconds) - offset_s) * _NS_PER_S
    if end > 19:
        fraction = text[20:end]
        if text[19] != "." or not fraction.isdigit() or not fraction.isascii():
            raise ValueError(f"bad fraction in timestamp: {text!r}")
        if len(fraction) > 9:  # keep nanoseconds, drop the rest
            fraction = fraction[:9]
        ns += int(fraction) * _FRACTION_SCALE[len(fraction)]
    return ns
