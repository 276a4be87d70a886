"""One export run: the inputs (.wslog captures and tick journal files), the output folder (written
beside it under a temporary name, then renamed into place, so a failed export leaves no half-made
OUT and ``--overwrite`` replaces OUT only once the new one is complete), a progress bar on a
terminal, and the summary every figure of which can be checked in the files."""
from __future__ import annotations

import datetime as _dt
import importlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .source import TICK_ROW, CaptureSource

# target -> (the module it needs, the class that writes it)
TARGETS = {"parquet": "pyarrow", "hftbacktest": "hftbacktest", "nautilus": "nautilus_trader"}
EXTRA_HINT = "pip install 'shmpipe[export]'"
VENUES = ("coinbase", "kraken", "alpaca")
HOURLY_NAME = re.compile(r"(\d{8})_(\d{2})\.wslog(\.zst)?$")


class ExportError(Exception):
    """A user-caused failure, said in one line (exit 1)."""


@dataclass
class ExportInputs:
    wslogs: list[Path]
    journals: list[Path]


def parse_time(text: str) -> int:
    """ns since the epoch from an integer (ns), an ISO 8601 date or time (UTC unless it says)."""
    text = text.strip()
    if re.fullmatch(r"\d{10,}", text):
        return int(text)
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 2024-06-11T14:30:00Z, 2024-06-11 or ns since the epoch)") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    delta = when - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def parse_symbols(text: str | None) -> list[str] | None:
    if not text:
        return None
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    for s in symbols:
        venue, sep, _name = s.partition(":")
        if sep and venue not in VENUES:
            raise ExportError(f"unknown venue {venue!r} in --symbols {s!r} (shmpipe captures {', '.join(VENUES)})")
    return symbols


def find_inputs(paths: list[str], end_ns: int | None) -> ExportInputs:
    from shmpipe.wslog import wslog_files
    wslogs, journals = [], []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ExportError(f"no such file or directory: {raw}")
        if path.is_dir():
            journals += sorted(p for p in path.rglob("*.ticks") if p.is_file())
            wslogs += wslog_files(path)
        elif path.name.endswith(".ticks"):
            journals.append(path)
        elif path.name.endswith((".wslog", ".wslog.zst")):
            wslogs.append(path)
        else:
            raise ExportError(f"{raw}: not a .wslog, .wslog.zst or tick journal (.ticks) file")
    if end_ns is not None:     # hourly files that start at or after --until hold nothing wanted
        wslogs = [p for p in wslogs if not _starts_after(p, end_ns)]
    if not wslogs and not journals:
        raise ExportError(f"no .wslog, .wslog.zst or .ticks files in {', '.join(paths)}")
    return ExportInputs(wslogs, journals)


def _starts_after(path: Path, end_ns: int) -> bool:
    m = HOURLY_NAME.search(path.name)
    if not m:
        return False
    start = _dt.datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H").replace(tzinfo=_dt.timezone.utc)
    return int(start.timestamp()) * 1_000_000_000 >= end_ns


def check_extra(target: str) -> None:
    module = TARGETS[target]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"the {target} export needs {module}, which is not installed or does not import "
                          f"({exc}): {EXTRA_HINT}") from None


def make_target(target: str, folder: Path):
    if target == "parquet":
        from .parquet_target import ParquetExport
        return ParquetExport(folder)
    if target == "hftbacktest":
        from .hftbacktest_target import HftbacktestExport
        return HftbacktestExport(folder)
    from .nautilus_target import NautilusExport
    return NautilusExport(folder)


def prepare_out(out: Path, inputs: ExportInputs, overwrite: bool) -> Path:
    """The temporary folder to write into; refuses an OUT that exists (unless overwrite) or that
    holds an input (overwrite would delete it)."""
    out_abs = out.resolve()
    for p in inputs.wslogs + inputs.journals:
        if out_abs == p.resolve() or out_abs in p.resolve().parents:
            raise ExportError(f"--out {out} holds the input {p}: choose another folder")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"{out} exists (--overwrite replaces it)")
        if not out.is_dir():
            raise ExportError(f"{out} exists and is not a folder: remove it yourself")
    out_abs.parent.mkdir(parents=True, exist_ok=True)
    temp = out_abs.parent / f".{out_abs.name}.partial-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    return temp


def install_out(temp: Path, out: Path) -> None:
    out_abs = out.resolve()
    if out_abs.exists():
        old = out_abs.parent / f".{out_abs.name}.old-{os.getpid()}"
        out_abs.rename(old)
        temp.rename(out_abs)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(out_abs)


def _progress(total: int | None, enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    progress = Progress(TextColumn("export"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True, disable=not enabled)
    task = progress.add_task("export", total=total)
    return progress, (lambda n: progress.advance(task, n))


def run_export(target: str, paths: list[str], out: str | os.PathLike, *, start_ns: int | None = None,
               end_ns: int | None = None, symbols: list[str] | None = None, overwrite: bool = False,
               progress: bool | None = None) -> dict:
    """Export; returns the summary. Raises ExportError (one line) when nothing could be written."""
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise ExportError("--until must be later than --from")
    check_extra(target)
    inputs = find_inputs(list(paths), end_ns)
    out = Path(out)
    temp = prepare_out(out, inputs, overwrite)
    try:
        summary = _export_into(target, temp, inputs, start_ns, end_ns, symbols,
                               sys.stderr.isatty() if progress is None else progress)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    install_out(temp, out)
    summary["out"] = str(out)
    return summary


def _export_into(target: str, folder: Path, inputs: ExportInputs, start_ns, end_ns, symbols, show) -> dict:
    from shmpipe.errors import WslogFormatError
    writer = make_target(target, folder)
    total = sum(p.stat().st_size for p in inputs.wslogs if p.suffix == ".wslog")
    if any(p.suffix != ".wslog" for p in inputs.wslogs):
        total = None      # compressed: the decompressed size is not known up front
    progress, advance = _progress(total, show)
    source = CaptureSource([str(p) for p in inputs.wslogs], start_ns=start_ns, end_ns=end_ns, symbols=symbols,
                           on_bytes=advance)
    with progress:
        try:
            if inputs.wslogs:
                for chunk in source.chunks():
                    writer.add(chunk, source.instruments)
        except WslogFormatError as exc:   # a corrupt .zst: the message names the file
            raise ExportError(str(exc)) from None
        journal_ticks = _journal_ticks(inputs.journals, start_ns, end_ns, source)
    instruments = source.instruments
    if journal_ticks is not None and len(journal_ticks) and hasattr(writer, "add_journal_ticks"):
        writer.add_journal_ticks(journal_ticks, instruments)
    result = writer.close(instruments)
    c = source.counts
    summary = {"target": target, "inputs": len(inputs.wslogs) + len(inputs.journals),
               "entries": c.entries, "messages": c.messages, "messages_before_window": c.before_window,
               "reconnects": c.reconnects, "parse_errors": dict(c.parse_errors), "gaps": dict(c.gaps),
               "gap_flagged_book_records": c.gap_flagged_book_rows,
               "unknown_exchange": {str(k): v for k, v in c.unknown_exchange.items()},
               # an empty file (a capture that had just rotated) is not damage: listed, not an error
               "stopped_early": [str(s) for s in source.stops if getattr(s, "reason", None) != "empty file"],
               "empty_files": [s.path for s in source.stops if getattr(s, "reason", None) == "empty file"],
               "unmatched_symbols": source.unmatched_symbols, **result}
    if journal_ticks is not None:
        summary["journal_ticks"] = int(len(journal_ticks))
        if target != "parquet":
            summary["journal_ticks_not_exported"] = f"the {target} export takes books and trades; ticks go to parquet"
    return summary


def _journal_ticks(paths: list[Path], start_ns, end_ns, source: CaptureSource) -> np.ndarray | None:
    """Ticks of the journal files in the window, for the symbols asked for. A journal names symbols by
    the host registry's ids; the export source's own registry learns the names from them."""
    if not paths:
        return None
    from shmpipe.journal import journal_info, read_journal
    parts = []
    for path in paths:
        try:
            info = journal_info(path)
            ticks = read_journal(path, copy=True)
        except Exception as exc:   # JournalFormatError and an unreadable file alike: name it, go on
            source.stops.append(f"{path}: {exc}")
            continue
        if start_ns is not None:
            ticks = ticks[ticks["timestamp_ns"] >= start_ns]
        if end_ns is not None:
            ticks = ticks[ticks["timestamp_ns"] < end_ns]
        sid = _journal_symbol(info["symbol_id"], source)
        if sid is None:
            continue
        ticks = ticks.copy()
        ticks["symbol_id"] = sid
        rows = np.zeros(len(ticks), TICK_ROW)
        rows["tick"] = ticks
        parts.append(rows)
    return np.concatenate(parts) if parts else np.zeros(0, TICK_ROW)


def _journal_symbol(host_id: int, source: CaptureSource) -> int | None:
    """The export's id for a journal's host-registry id (None: a symbol not asked for)."""
    try:
        from shmpipe import symbols
        exchange, symbol = symbols.default_registry().lookup(host_id)
    except Exception:   # no registry on this host, or the id is not in it: keep the number
        exchange, symbol = "unknown", f"#{host_id}"
    sid = source.registry(exchange, symbol)
    return sid if source._keep(sid) else None
