"""`shmpipe inspect`: every shmpipe segment on this host -- rings (who is attached, fill, rates,
loss), services' live counters (shmpipe.stats) and symbol registries -- and a ring's newest records.

    shmpipe inspect [NAME...] [--json] [--dump N] [--watch S] [--interval S]

Rates come from two samples ``--interval`` seconds apart (0.5 s by default; 0 skips them and the
wait); ``--watch S`` refreshes a live view every S seconds instead. A segment that is not a
readable ring (half-created, foreign, corrupt, another user's) is shown as such, never as a
traceback. ``--dump N`` copies the ring's newest N records without attaching to it (a best-effort
snapshot, see shmpipe.inventory.dump) and shows them with field names, symbol names and, for
Tick and LevelUpdate, the names of coded fields.

Exit status: 0; 1 when a NAME matched no segment or a --dump could not be made; 2 for bad
arguments.

JSON (``--json``): one list, one object per segment, rings first, then stats publishers, then
symbol registries. Keys are only ever added, never renamed. Every object has "kind".

kind "ring" (inventory.SegmentInfo.as_dict()):
    name, path, size, in_use, headerless, age_s
    condition   "ok" | "half-created" | "foreign" | "corrupt" | "unreadable"
    problem     null, or why it is not a readable ring
    ring        null, or Ring.stats(): name, dtype, itemsize, capacity, broadcast, policy, wait,
                created_unix_ns, creator_pid, segment_bytes, written, wraps, lost, full_waits,
                evictions, fill, sleepers {data_ready, space_ready},
                producer {pid, start_ticks, attach_count, heartbeat_ns, attached_unix_ns,
                          full_waits, evictions, alive, heartbeat_age_s, process},
                consumers [{slot, state, generation, pid, start_ticks, position, heartbeat_ns,
                            lost, attached_unix_ns, alive, lag, heartbeat_age_s, evicted, process}]
                ("process": the process name while its role is held, else null)
    notes       ["empty" | "full" | "producer gone" | "no producer yet" | "consumer S lagging N"
                 | "consumer S gone" | "consumer S evicted", ...]
    rates       null, or {interval_s, written_per_s, lost_per_s, consumers [{slot, read_per_s}]}
    dump        only with --dump: {requested, written, dropped, fields, records [{seq, <field>...,
                 symbol, <field>_name...}]} or {requested, error}
kind "stats" (inventory.StatsInfo.as_dict()):
    name, path, live, pid, process, started_ns, updated_ns, counters {field: int}, problem,
    gauges [field, ...] (the fields that are levels, not counters: they get no rate),
    rates (null or {interval_s, counters {field: per_s}}, counters only)
kind "symbols" (inventory.SymbolsInfo.as_dict()):
    name, path, size, count, capacity, file, default, problem

With --watch and --json: one such list per line (JSON lines), every S seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

DEFAULT_INTERVAL_S = 0.5


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show shmpipe rings (attached processes, fill, rates, loss), service stats, symbol registries",
        description="Show every shmpipe segment (or the named ones): rings with dtype, capacity, fill, "
                    "records written, producer and consumers (pid, process name, liveness, lag, loss) and "
                    "rates sampled over --interval; the live counters services publish (shmpipe.stats); "
                    "symbol registries. Broken segments are shown as what they are. --dump N prints a "
                    "ring's newest N records; --watch refreshes a live view; --json prints one "
                    "machine-readable snapshot (its shape is documented in shmpipe_tools.inspector). "
                    "Exit status: 0; 1 when a NAME matched nothing or a dump failed; 2 for bad arguments.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these names (rings, stats, registries)")
    p.add_argument("--json", action="store_true", help="print one JSON snapshot and exit")
    p.add_argument("--dump", type=int, metavar="N",
                   help="also print the newest N records of each named ring (without attaching to it)")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh a live view every SECONDS until Ctrl-C")
    p.add_argument("--interval", type=float, metavar="SECONDS", default=DEFAULT_INTERVAL_S,
                   help=f"sample rates over this many seconds (default {DEFAULT_INTERVAL_S}; 0: no rates, "
                        f"no wait)")
    p.set_defaults(func=run)


def _usage_error(message: str) -> int:
    print(f"shmpipe inspect: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from shmpipe import segments
    from shmpipe.errors import InvalidNameError

    for name in args.names:
        try:
            segments.validate_name(name, "segment")
        except InvalidNameError as exc:
            return _usage_error(str(exc))
    if args.watch is not None and not args.watch > 0:
        return _usage_error(f"--watch takes a positive number of seconds, not {args.watch}")
    if not args.interval >= 0:
        return _usage_error(f"--interval takes a number of seconds >= 0, not {args.interval}")
    if args.dump is not None:
        if args.dump < 1:
            return _usage_error(f"--dump takes a positive number of records, not {args.dump}")
        if not args.names:
            return _usage_error("--dump needs the NAME of a ring")
        if args.watch is not None:
            return _usage_error("--dump and --watch do not go together")
    names = args.names or None
    if args.watch is not None:
        return _watch(names, args.watch, args.json)

    entries = _survey(names)
    elapsed = None
    if args.interval > 0:
        # The time between the ends of the two surveys, not the one asked for: a survey takes time.
        before, then = entries, time.monotonic()
        time.sleep(args.interval)
        entries = _survey(names)
        elapsed = time.monotonic() - then
        _rates(before, entries, elapsed)
    dumps = _dumps(entries, args.dump) if args.dump is not None else {}
    missing = [n for n in args.names if not any(e.name == n for e in entries)]
    if args.json:
        out = []
        for e in entries:
            d = e.as_dict()
            if e.name in dumps and e.kind == "ring":
                d["dump"] = dumps[e.name]
            out.append(d)
        print(json.dumps(out, indent=1))
    else:
        if entries or not args.names:
            _print_text(entries, elapsed)
        for name, d in dumps.items():
            _print_dump(name, d)
    for name in missing:
        print(f"shmpipe inspect: no shmpipe segment named {name!r} (ring, stats or symbol registry)",
              file=sys.stderr)
    failed_dump = any("error" in d for d in dumps.values())
    return 1 if missing or failed_dump else 0


# -- data -------------------------------------------------------------------------------------------
def _survey(names):
    from shmpipe import inventory

    return [*inventory.survey(names), *inventory.survey_stats(names), *inventory.survey_symbols(names)]


def _rates(before, after, elapsed_s):
    from shmpipe import inventory

    inventory.with_rates(before, after, elapsed_s)


def _dumps(entries, n: int) -> dict[str, dict]:
    from shmpipe import inventory
    from shmpipe.errors import ShmpipeError

    out = {}
    for e in entries:
        if e.kind != "ring":
            continue
        try:
            snapshot = inventory.dump(e.name, n)
        except (ShmpipeError, OSError, ValueError) as exc:
            out[e.name] = {"requested": n, "error": str(exc)}
            continue
        out[e.name] = {"requested": n, "written": snapshot.written, "dropped": snapshot.dropped,
                       "fields": list(snapshot.dtype.names or ()), "records": inventory.decode(snapshot)}
    return out


# -- text -------------------------------------------------------------------------------------------
def _who(side) -> str:
    """"pid 123 (name)" of a ring side (a dict) or a stats publisher (a StatsInfo)."""
    pid, process = (side["pid"], side.get("process")) if isinstance(side, dict) else (side.pid, side.process)
    if not pid:
        return "pid -"
    name = f" ({process})" if process else ""
    return f"pid {pid}{name}"


def _print_text(entries, elapsed) -> None:
    if not entries:
        print("no shmpipe segments in /dev/shm")
        return
    if elapsed:
        print(f"rate sampled over {elapsed:.2f} s")
    for e in entries:
        {"ring": _print_ring, "stats": _print_stats, "symbols": _print_symbols}[e.kind](e)


def _print_ring(info) -> None:
    use = "in use" if info.in_use else "STALE (no live owner; `shmpipe clean` removes it)"
    print(f"{info.name}  [{use}]  {info.size} bytes")
    if info.ring is None:
        what = {"half-created": "HALF-CREATED (no header yet: being made, or its creator died)",
                "foreign": "FOREIGN (not a shmpipe ring)",
                "corrupt": "CORRUPT (a shmpipe magic, but a header that does not hold together)",
                "unreadable": "UNREADABLE (not this user's to read)"}.get(info.condition, info.condition)
        print(f"  {what}: {info.problem}")
        return
    r = info.ring
    kind = f"broadcast/{r['policy']}" if r["broadcast"] else "spsc"
    print(f"  {kind}, wait={r['wait']}, {r['capacity']} x {r['itemsize']} B, fill {r['fill']}/{r['capacity']}, "
          f"written {r['written']:,}, lost {r['lost']:,}, evictions {r['evictions']}")
    if info.notes:
        print(f"  state: {', '.join(info.notes)}")
    p = r["producer"]
    print(f"  producer: {_who(p)} {'alive' if p['alive'] else 'gone'}, attached {p['attach_count']}x, "
          f"full waits {p['full_waits']:,}")
    for c in r["consumers"]:
        print(f"  consumer[{c['slot']}]: {_who(c)} {'alive' if c['alive'] else 'gone'}, "
              f"{c['state']}, position {c['position']:,}, lag {c['lag']:,}, lost {c['lost']:,}")
    if info.rates:
        reads = "".join(f"; consumer[{c['slot']}] {c['read_per_s']:,.0f} rec/s"
                        for c in info.rates["consumers"])
        print(f"  rate: written {info.rates['written_per_s']:,.0f} rec/s, lost "
              f"{info.rates['lost_per_s']:,.0f} rec/s{reads}")


def _print_stats(info) -> None:
    if info.problem:
        print(f"stats {info.name}  [UNREADABLE]  {info.path}: {info.problem}")
        return
    state = "live" if info.live else "STALE (publisher gone: last numbers it published)"
    age = max(0.0, (time.time_ns() - info.updated_ns) / 1e9) if info.updated_ns else None
    updated = f", updated {age:.1f} s ago" if age is not None else ""
    print(f"stats {info.name}  [{state}]  {_who(info)}{updated}")
    rates = (info.rates or {}).get("counters", {})
    for field, value in info.counters.items():
        rate = f"  ({rates[field]:,.1f}/s)" if field in rates else ""
        print(f"  {field} {value:,}{rate}")


def _print_symbols(info) -> None:
    if info.problem:
        print(f"symbols {info.name}  [NOT A REGISTRY]  {info.path}: {info.problem}")
        return
    default = "  (this environment's registry)" if info.default else ""
    print(f"symbols {info.name}  {info.count:,} of {info.capacity:,} ids, file {info.file}{default}")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, list):   # a sub-array (an order book side): its first element and the count
        flat = value
        while flat and isinstance(flat[0], list):
            flat = flat[0]
        return f"[{', '.join(_cell(v) for v in flat)}, ...]({len(value)})" if flat else "[]"
    return str(value)


def _print_dump(name: str, d: dict) -> None:
    print()
    if "error" in d:
        print(f"{name}: cannot dump: {d['error']}")
        return
    recs = d["records"]
    dropped = f"; {d['dropped']} overwritten during the copy, left out" if d["dropped"] else ""
    print(f"{name}: newest {len(recs)} of {d['written']:,} records written{dropped} "
          f"(a best-effort snapshot, nothing attached)")
    if not recs:
        return
    columns = ["seq"]
    for f in d["fields"]:
        columns.append(f)
        if f == "symbol_id":
            columns.append("symbol")
    rows = []
    for rec in recs:
        # coded fields (Tick/LevelUpdate source, flags, side, action) show their names
        rows.append([_cell(rec.get(f"{c}_name", rec.get(c, ""))) for c in columns])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


# -- live view --------------------------------------------------------------------------------------
def _watch(names, every_s: float, as_json: bool) -> int:
    previous, then = None, None
    if as_json:
        try:
            while True:
                entries = _survey(names)
                now = time.monotonic()
                if previous is not None:
                    _rates(previous, entries, now - then)
                print(json.dumps([e.as_dict() for e in entries]), flush=True)
                previous, then = entries, now
                time.sleep(every_s)
        except (KeyboardInterrupt, BrokenPipeError):
            return 0
    try:
        from rich.live import Live
    except ImportError:
        print("shmpipe inspect: --watch needs rich: pip install 'shmpipe[services]' (or use --watch with --json)",
              file=sys.stderr)
        return 2
    try:
        with Live(auto_refresh=False, screen=False) as live:
            while True:
                entries = _survey(names)
                now = time.monotonic()
                if previous is not None:
                    _rates(previous, entries, now - then)
                live.update(_view(entries, every_s), refresh=True)
                previous, then = entries, now
                time.sleep(every_s)
    except KeyboardInterrupt:
        return 0


def _view(entries, every_s: float):
    from rich.console import Group
    from rich.table import Table

    rings = Table(title=f"shmpipe rings (refresh every {every_s:g} s; Ctrl-C quits)", expand=False)
    rings.add_column("ring", no_wrap=True)   # a name is what people look for: never cut it
    for column in ("kind", "fill", "written", "rec/s", "lost", "producer", "consumers", "state"):
        rings.add_column(column, justify="right" if column in ("fill", "written", "rec/s", "lost") else "left")
    for e in (e for e in entries if e.kind == "ring"):
        if e.ring is None:
            rings.add_row(e.name, e.condition.upper(), "", "", "", "", "", "", e.problem or "", style="red")
            continue
        r = e.ring
        rate = f"{e.rates['written_per_s']:,.0f}" if e.rates else "…"
        p = r["producer"]
        consumers = "\n".join(f"[{c['slot']}] {_who(c)} lag {c['lag']:,}" + ("" if c["alive"] else " gone")
                              for c in r["consumers"]) or "-"
        rings.add_row(e.name, f"broadcast/{r['policy']}" if r["broadcast"] else "spsc",
                      f"{r['fill']:,}/{r['capacity']:,}", f"{r['written']:,}", rate, f"{r['lost']:,}",
                      f"{_who(p)} {'alive' if p['alive'] else 'gone'}", consumers,
                      ", ".join(e.notes) if e.notes else "ok",
                      style=None if e.in_use else "yellow")
    parts = [rings]
    stats = [e for e in entries if e.kind == "stats"]
    if stats:
        table = Table(title="service stats (shmpipe.stats)")
        for column in ("name", "state", "process", "counters"):
            table.add_column(column)
        for s in stats:
            rates = (s.rates or {}).get("counters", {})
            counters = ", ".join(f"{k} {v:,}" + (f" ({rates[k]:,.0f}/s)" if rates.get(k) else "")
                                 for k, v in s.counters.items())
            table.add_row(s.name, "unreadable" if s.problem else ("live" if s.live else "STALE"),
                          _who(s), s.problem or counters)
        parts.append(table)
    symbols = [e for e in entries if e.kind == "symbols"]
    if symbols:
        table = Table(title="symbol registries")
        for column in ("name", "ids", "file"):
            table.add_column(column)
        for s in symbols:
            table.add_row(s.name, s.problem or f"{s.count:,}/{s.capacity:,}", s.file or "")
        parts.append(table)
    return Group(*parts)
