"""RFC 3339 timestamps as venues write them -> integer nanoseconds since the epoch (UTC).

``datetime.fromisoformat`` keeps only microseconds and costs ~1 µs; Alpaca sends nanoseconds and a
book message's budget is a few µs, so this parses the fixed layout by hand and caches everything up to
the second.
"""
from __future__ import annotations

import datetime as _dt

_NS_PER_S = 1_000_000_000
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
# "2024-06-11T14:30:00" -> ns at that second, UTC; a stream's timestamps share it for a second at a time.
# Bounded, so a hostile stream of distinct times cannot grow it.
_SECOND_NS: dict[str, int] = {}
_MAX_CACHED_SECONDS = 4096
# ns per unit of the last fraction digit, by number of fraction digits (RFC 3339 allows any; keep 9)
_FRACTION_SCALE = [10 ** (9 - n) for n in range(10)]


def _second_ns(prefix: str) -> int:
    if (len(prefix) != 19 or prefix[4] != "-" or prefix[7] != "-" or prefix[10] not in "Tt "
            or prefix[13] != ":" or prefix[16] != ":" or not prefix[17:19].isdigit()):
        raise ValueError(f"not an RFC 3339 timestamp: {prefix!r}...")
    when = _dt.datetime(int(prefix[:4]), int(prefix[5:7]), int(prefix[8:10]), int(prefix[11:13]),
                        int(prefix[14:16]), int(prefix[17:19]), tzinfo=_dt.UTC)
    ns = (when - _EPOCH) // _dt.timedelta(seconds=1) * _NS_PER_S
    if len(_SECOND_NS) >= _MAX_CACHED_SECONDS:
        _SECOND_NS.clear()
    _SECOND_NS[prefix] = ns
    return ns


def rfc3339_ns(text: str) -> int:
    """``2024-06-11T14:30:00.150435272Z`` (0-9 or more fraction digits, ``Z`` or ``±HH:MM``) -> ns.

    Raises ValueError for anything else, so a parser counts it as a bad value.
    """
    prefix = text[:19]
    base = _SECOND_NS.get(prefix)
    if base is None:
        base = _second_ns(prefix)
    # the venues' form: a fraction of up to 9 digits and "Z"
    if text[-1:] == "Z":
        fraction = text[20:-1]
        if text[19:20] == "." and 0 < len(fraction) <= 9 and fraction.isdigit():
            return base + int(fraction) * _FRACTION_SCALE[len(fraction)]
        if len(text) == 20:
            return base
    return _rfc3339_general(text, base)


def _rfc3339_general(text: str, base: int) -> int:
    """Lower-case z, an offset, more than 9 fraction digits; or an error."""
    rest = text[19:]
    if rest[-1:] in ("Z", "z"):
        zone, offset_s = rest[:-1], 0
    elif len(rest) >= 6 and rest[-6] in "+-" and rest[-3] == ":" and rest[-5:-3].isdigit() \
            and rest[-2:].isdigit():
        zone = rest[:-6]
        offset_s = (int(rest[-5:-3]) * 3600 + int(rest[-2:]) * 60) * (1 if rest[-6] == "+" else -1)
    else:
        raise ValueError(f"no zone in timestamp: {text!r}")
    ns = base - offset_s * _NS_PER_S
    if zone:
        fraction = zone[1:10]
        if zone[0] != "." or not zone[1:].isdigit() or not zone.isascii():
            raise ValueError(f"bad fraction in timestamp: {text!r}")
        ns += int(fraction) * _FRACTION_SCALE[len(fraction)]
    return ns
