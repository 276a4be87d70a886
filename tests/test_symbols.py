"""The symbol registry: dense ids every process agrees on, persisted across restarts, clear errors."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import posix_ipc
import pytest
from isolation import SPAWN
from symbol_workers import register_all, register_in_forked_child

from shmpipe import _ring, records, symbols
from shmpipe.errors import (
    InvalidArgumentError,
    RegistryBusyError,
    RegistryFormatError,
    RegistryFullError,
    RegistryPermissionError,
    ShmpipeError,
    SymbolConflictError,
    SymbolNameError,
    UnknownSymbolError,
)
from shmpipe.symbols import SymbolRegistry

TESTS = Path(__file__).parent


@pytest.fixture
def registry_name():
    """A registry name unique to this test; its table is removed afterwards."""
    name = f"test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    symbols.remove_segment(name)


@pytest.fixture
def registry(registry_name, tmp_path):
    with SymbolRegistry.open(registry_name, path=tmp_path / "symbols.jsonl", capacity=64) as reg:
        yield reg


def test_layout_matches_the_c_structs():
    c_side = _ring.file_layouts()
    for dt, struct in ((symbols.HEADER, "symbols_header"), (symbols.ENTRY, "symbol_entry")):
        c = dict(c_side[struct])
        assert dt.itemsize == c.pop("itemsize")
        assert {name: dt.fields[name][1] for name in dt.names} == c


def test_ids_are_dense_stable_and_round_trip(registry):
    pairs = [("coinbase", "BTC-USD"), ("kraken", "BTC/USD"), ("alpaca", "AAPL"), ("coinbase", "ETH-USD")]
    ids = [registry.id_of(*p) for p in pairs]
    assert ids == [1, 2, 3, 4]                                  # dense, from 1: 0 is "no symbol"
    assert [registry.id_of(*p) for p in pairs] == ids          # asking again registers nothing
    assert [registry.lookup(i) for i in ids] == pairs
    assert len(registry) == 4
    assert registry.find("kraken", "ETH/USD") is None and len(registry) == 4
    assert registry.info(ids[1]) == symbols.SymbolInfo(ids[1], "kraken", "BTC/USD", None, None, 0)


def test_facts_are_recorded_filled_in_and_never_changed(registry):
    sid = registry.register("kraken", "BTC/USD", price_decimals=1, size_decimals=8, depth=10)
    assert registry.info(sid) == symbols.SymbolInfo(sid, "kraken", "BTC/USD", 1, 8, 10)
    # A consumer asked first (facts unknown); capture fills them in later.
    early = registry.id_of("coinbase", "BTC-USD")
    assert registry.register("coinbase", "BTC-USD", price_decimals=2, size_decimals=8) == early
    assert registry.info(early).price_decimals == 2 and registry.info(early).depth == 0
    assert registry.register("coinbase", "BTC-USD", depth=50) == early and registry.info(early).depth == 50
    aapl = registry.register("alpaca", "AAPL", price_decimals=0, size_decimals=0)   # 0 is a real value
    assert aapl == early + 1 and registry.info(aapl).price_decimals == 0
    with pytest.raises(SymbolConflictError, match=r"'kraken', 'BTC/USD'.*price_decimals=1, not 2"):
        registry.register("kraken", "BTC/USD", price_decimals=2)
    with pytest.raises(SymbolConflictError, match="depth=10, not 25"):
        registry.register("kraken", "BTC/USD", depth=25)


def test_a_venues_change_of_a_fact_is_recorded_with_when_it_took_effect(registry):
    """Issue 21 item 4: a venue that changes a pair's precision (Kraken does) made the registry raise
    for good; a change is now recorded, with when it took effect, and every reader sees the new facts."""
    sid = registry.register("kraken", "BTC/USD", price_decimals=1, size_decimals=8, depth=10)
    assert registry.register("kraken", "BTC/USD", price_decimals=2, effective_ns=1_718_116_200_000_000_000) == sid
    assert registry.info(sid) == symbols.SymbolInfo(sid, "kraken", "BTC/USD", 2, 8, 10)
    with pytest.raises(SymbolConflictError, match="price_decimals=2, not 3"):   # no time: still a conflict
        registry.register("kraken", "BTC/USD", price_decimals=3)
    with pytest.raises(symbols.InvalidArgumentError, match="effective_ns"):
        registry.register("kraken", "BTC/USD", price_decimals=3, effective_ns=-1)
    lines = [json.loads(line) for line in registry.path.read_text().splitlines()[1:]]
    assert [(line["price_decimals"], line.get("effective_unix_ns")) for line in lines] == \
        [(1, None), (2, 1_718_116_200_000_000_000)]


@pytest.mark.parametrize("exchange, symbol, complaint", [
    ("", "BTC-USD", "exchange is empty"),
    ("coinbase", "", "symbol is empty"),
    ("coin\0base", "BTC-USD", "exchange 'coin\\\\x00base' contains a NUL"),
    ("coinbase", "BTC\0USD", "symbol 'BTC\\\\x00USD' contains a NUL"),
    ("x" * 33, "BTC-USD", "exchange 'x{33}' is 33 UTF-8 bytes; the registry holds at most 32"),
    ("coinbase", "é" * 41, "symbol 'é{41}' is 82 UTF-8 bytes; the registry holds at most 80"),
    ("coinbase", "\udc80", "not valid UTF-8"),
    (b"coinbase", "BTC-USD", "exchange must be a str, not bytes"),
    ("coinbase", None, "symbol must be a str, not NoneType"),
])
def test_bad_names_are_refused_by_name(registry, exchange, symbol, complaint):
    for call in (registry.id_of, registry.register, registry.find):
        with pytest.raises(SymbolNameError, match=complaint):
            call(exchange, symbol)
    assert len(registry) == 0
    assert issubclass(SymbolNameError, ShmpipeError)


def test_longest_names_that_fit_are_kept_whole(registry):
    sid = registry.id_of("x" * 32, "é" * 40)
    assert registry.lookup(sid) == ("x" * 32, "é" * 40)


@pytest.mark.parametrize("facts, complaint", [
    ({"price_decimals": 255}, "price_decimals must be an int from 0 to 254, not 255"),
    ({"size_decimals": -1}, "size_decimals must be an int from 0 to 254, not -1"),
    ({"size_decimals": True}, "size_decimals .* not True"),
    ({"depth": 70000}, "depth must be an int from 0 to 65535, not 70000"),
    ({"depth": 2.5}, "depth .* not 2.5"),
])
def test_bad_facts_are_refused(registry, facts, complaint):
    with pytest.raises(SymbolNameError, match=complaint):
        registry.register("kraken", "BTC/USD", **facts)


@pytest.mark.parametrize("bad_id, complaint", [
    (5, "symbol id 5 is not registered in symbol registry '.*' \\(1 symbols, ids 1..1\\)"),
    (-1, "symbol id -1 is not registered"),
    ("0", "symbol id must be an int, not str"),
    (True, "symbol id must be an int, not bool"),
])
def test_unknown_ids_are_refused_by_number(registry, bad_id, complaint):
    registry.id_of("coinbase", "BTC-USD")
    with pytest.raises(UnknownSymbolError, match=complaint):
        registry.lookup(bad_id)
    with pytest.raises(UnknownSymbolError, match=complaint):
        registry.info(bad_id)


def test_ids_survive_a_restart_from_the_file(registry_name, tmp_path):
    path = tmp_path / "symbols.jsonl"
    with SymbolRegistry.open(registry_name, path=path) as reg:
        kraken = reg.register("kraken", "BTC/USD", price_decimals=1, size_decimals=8, depth=10)
        coinbase = reg.id_of("coinbase", "BTC-USD")
        reg.register("coinbase", "BTC-USD", price_decimals=2)       # an update line
        reg.unlink()                                                  # as a reboot would
    assert not symbols.segment_path(registry_name).exists()
    with SymbolRegistry.open(registry_name, path=path) as reg:
        assert reg.entries() == [symbols.SymbolInfo(kraken, "kraken", "BTC/USD", 1, 8, 10),
                                 symbols.SymbolInfo(coinbase, "coinbase", "BTC-USD", 2, None, 0)]
        aapl = reg.id_of("alpaca", "AAPL")
        assert (kraken, coinbase, aapl) == (1, 2, 3)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"shmpipe_symbols": 1, "registry": registry_name}
    assert [line["id"] for line in lines[1:]] == [kraken, coinbase, coinbase, aapl]


def test_two_processes_registering_at_once_agree_on_dense_ids(registry_name, tmp_path):
    """Both race to create the table, then register 150 pairs each (100 in common, in opposite
    orders): every id is unique and dense, and both see the same (exchange, symbol) for each."""
    path = str(tmp_path / "symbols.jsonl")
    common = [("coinbase", f"C{i}-USD") for i in range(100)]
    mine = [common + [("kraken", f"K{i}/USD") for i in range(50)],
            common[::-1] + [("alpaca", f"A{i}") for i in range(50)]]
    start, results = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [SPAWN.Process(target=register_all, args=(registry_name, path, pairs, start, results))
             for pairs in mine]
    for p in procs:
        p.start()
    got, deadline = [], time.monotonic() + 120
    try:
        while len(got) < len(procs):
            try:
                got.append(results.get(timeout=0.2))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    codes = [p.exitcode for p in procs]
                    pytest.fail(f"a registering process gave no answer (exit codes {codes})")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    (_, ids_a, seen_a), (_, ids_b, seen_b) = got
    # The same table, seen from both (the one that finished first saw a prefix of it).
    assert all(seen_b[sid] == pair for sid, pair in seen_a.items() if sid in seen_b)
    assert all(seen_a[sid] == pair for sid, pair in seen_b.items() if sid in seen_a)
    all_ids = {**ids_a, **ids_b}
    assert sorted(all_ids.values()) == list(range(1, 201))   # 100 common + 50 + 50, dense from 1, unique
    assert all(ids_a[p] == ids_b[p] for p in common)
    with SymbolRegistry.open(registry_name, path=path) as reg:      # and the file agrees
        reg.unlink()
    with SymbolRegistry.open(registry_name, path=path) as reg:
        assert {(e.exchange, e.symbol): e.symbol_id for e in reg.entries()} == all_ids


def test_the_module_api_works_in_any_process(registry_name, tmp_path, monkeypatch):
    monkeypatch.setenv("SHMPIPE_SYMBOLS", registry_name)
    monkeypatch.setenv("SHMPIPE_SYMBOLS_FILE", str(tmp_path / "default.jsonl"))
    code = ("import json, sys; from shmpipe import symbols; "
            "print(json.dumps([symbols.id_of('coinbase', 'BTC-USD'), symbols.register('kraken', 'ETH/USD', "
            "price_decimals=2, size_decimals=8, depth=10)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    child_ids = json.loads(out.stdout)
    try:
        assert [symbols.lookup(i) for i in child_ids] == [("coinbase", "BTC-USD"), ("kraken", "ETH/USD")]
        assert symbols.info(child_ids[1]).depth == 10
        assert symbols.id_of("coinbase", "BTC-USD") == child_ids[0]
        assert symbols.default_registry().path == tmp_path / "default.jsonl"
    finally:
        symbols.default_registry().close()


def test_a_crash_between_the_file_and_the_table_is_repaired(registry):
    """An appender killed after its fsync but before its release store left a line the table
    lacks; the next appender publishes it first, so the id it wrote stays that symbol's."""
    written = registry.id_of("coinbase", "BTC-USD") + 1
    with open(registry.path, "a") as f:
        f.write(json.dumps({"id": written, "exchange": "kraken", "symbol": "BTC/USD", "price_decimals": 1,
                            "size_decimals": 8, "depth": 10, "registered_unix_ns": 1}) + "\n")
    assert registry.id_of("alpaca", "AAPL") == written + 1
    assert registry.lookup(written) == ("kraken", "BTC/USD") and registry.info(written).depth == 10


def test_a_torn_last_line_is_dropped(registry_name, tmp_path):
    path = tmp_path / "symbols.jsonl"
    with SymbolRegistry.open(registry_name, path=path) as reg:
        first = reg.id_of("coinbase", "BTC-USD")
        reg.unlink()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id":%d,"exchange":"kra' % (first + 1))   # a write cut short by a crash
    with SymbolRegistry.open(registry_name, path=path) as reg:
        assert len(reg) == 1
        assert reg.id_of("kraken", "BTC/USD") == first + 1
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"\n") == 3


def test_a_corrupt_or_foreign_file_is_named(registry_name, tmp_path):
    path = tmp_path / "symbols.jsonl"
    path.write_text('{"shmpipe_symbols": 1, "registry": "someone-else"}\n')
    with pytest.raises(RegistryFormatError,
                       match=f"{path} is not the file of symbol registry '{registry_name}'"):
        SymbolRegistry.open(registry_name, path=path)
    path.write_text(f'{{"shmpipe_symbols": 1, "registry": "{registry_name}"}}\nnot json\n')
    with pytest.raises(RegistryFormatError, match=f"{path} line 2: unreadable line b'not json'"):
        SymbolRegistry.open(registry_name, path=path)
    path.write_text(f'{{"shmpipe_symbols": 1, "registry": "{registry_name}"}}\n'
                    '{"id": 3, "exchange": "kraken", "symbol": "BTC/USD"}\n')
    with pytest.raises(RegistryFormatError, match="line 2: id 3 where 1 was next"):
        SymbolRegistry.open(registry_name, path=path)


def test_every_process_must_use_the_same_file(registry, tmp_path):
    with pytest.raises(RegistryFormatError,
                       match=f"persists to {registry.path}, not to {tmp_path / 'other'}"):
        SymbolRegistry.open(registry.name, path=tmp_path / "other")


def test_a_full_registry_says_so(registry_name, tmp_path):
    with SymbolRegistry.open(registry_name, path=tmp_path / "s.jsonl", capacity=2) as reg:
        _, second = reg.id_of("a", "1"), reg.id_of("a", "2")
        with pytest.raises(RegistryFullError,
                           match=f"symbol registry '{registry_name}' is full \\(2 symbols\\)"):
            reg.id_of("a", "3")
        assert reg.id_of("a", "2") == second and len(reg) == 2


def test_a_held_lock_times_out_with_a_clear_error(registry):
    other = posix_ipc.SharedMemory("/" + symbols.SHM_PREFIX + registry.name)   # another open file description
    try:
        assert _ring.try_lock_byte(other.fd, 0)
        registry._lock_timeout = 0.05
        with pytest.raises(RegistryBusyError,
                           match=f"symbol registry '{registry.name}': another process held"):
            registry.id_of("coinbase", "BTC-USD")
    finally:
        os.close(other.fd)
    assert registry.id_of("coinbase", "BTC-USD") == symbols.FIRST_ID   # the kernel dropped it with the fd


def test_a_forked_child_does_not_share_the_parents_lock(registry):
    assert register_in_forked_child(registry) == 0


def test_a_segment_replaced_under_a_handle_is_followed(registry_name, tmp_path):
    path = tmp_path / "symbols.jsonl"
    old = SymbolRegistry.open(registry_name, path=path)
    try:
        first = old.id_of("coinbase", "BTC-USD")
        old.unlink()
        with SymbolRegistry.open(registry_name, path=path) as new:     # rebuilt from the file
            assert new.id_of("kraken", "BTC/USD") == first + 1
        assert old.lookup(first + 1) == ("kraken", "BTC/USD")          # the old handle re-attaches
        assert old.id_of("alpaca", "AAPL") == first + 2
    finally:
        old.close()


def test_a_segment_someone_else_could_write_is_refused(registry_name, tmp_path):
    fd = os.open(symbols.segment_path(registry_name), os.O_CREAT | os.O_RDWR, 0o600)
    os.fchmod(fd, 0o666)
    os.close(fd)
    with pytest.raises(RegistryPermissionError, match=f"symbol registry '{registry_name}' .* mode 0666"):
        SymbolRegistry.open(registry_name, path=tmp_path / "s.jsonl")


def test_a_corrupt_table_is_refused(registry_name, tmp_path):
    with SymbolRegistry.open(registry_name, path=tmp_path / "s.jsonl"):
        pass
    with open(symbols.segment_path(registry_name), "r+b") as f:
        f.seek(symbols.HEADER.fields["layout_version"][1])
        f.write((99).to_bytes(4, "little"))
    with pytest.raises(RegistryFormatError, match="is not a version-2 symbol table"):
        SymbolRegistry.open(registry_name, path=tmp_path / "s.jsonl")


def test_bad_registry_arguments(tmp_path):
    with pytest.raises(ShmpipeError, match="invalid symbol registry name 'a/b'"):
        SymbolRegistry.open("a/b", path=tmp_path / "s.jsonl")
    with pytest.raises(InvalidArgumentError, match="capacity must be an int from 1"):
        SymbolRegistry.open("fine", path=tmp_path / "s.jsonl", capacity=0)


# -- issue 21 item 5: id 0 is "no symbol" ------------------------------------------------------------
def test_a_fresh_registry_never_issues_id_0(registry_name, tmp_path):
    """A zeroed record (a never-written slot, a memset buffer) holds symbol_id 0: it must name no
    symbol, in the table and in the file it is rebuilt from."""
    path = tmp_path / "symbols.jsonl"
    with SymbolRegistry.open(registry_name, path=path) as reg:
        first = reg.id_of("coinbase", "BTC-USD")
        second = reg.register("kraken", "BTC/USD", price_decimals=1)
        assert (first, second) == (1, 2)
        assert symbols.FIRST_ID == first and symbols.NO_SYMBOL == 0
        assert len(reg) == 2 and [e.symbol_id for e in reg.entries()] == [first, second]
        zeroed = np.zeros(1, records.TICK)[0]
        for call in (reg.lookup, reg.info):
            with pytest.raises(UnknownSymbolError, match="symbol id 0 names no symbol"):
                call(zeroed["symbol_id"])
        reg.unlink()
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert [line["id"] for line in lines] == [1, 2]
    with SymbolRegistry.open(registry_name, path=path) as reg:          # rebuilt from the file
        assert reg.lookup(1) == ("coinbase", "BTC-USD") and reg.id_of("alpaca", "AAPL") == 3
        with pytest.raises(UnknownSymbolError, match="symbol id 0 names no symbol"):
            reg.lookup(0)
        assert reg.zero_id_symbol is None


def _legacy_file(path: Path, name: str) -> None:
    """A registry file written before ids started at 1: its first symbol holds id 0."""
    lines = [{"shmpipe_symbols": 1, "registry": name}] + [
        {"id": i, "exchange": "kraken", "symbol": s, "price_decimals": 1, "size_decimals": 8, "depth": 10,
         "registered_unix_ns": 1} for i, s in enumerate(["BTC/USD", "ETH/USD"])]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_an_old_registry_holding_id_0_keeps_its_ids_and_says_so(registry_name, tmp_path, caplog):
    """Records written before the change carry id 0 for that symbol: renumbering would make them name
    another one. The ids stay; new ones come after; opening it warns, naming the symbol and the fix."""
    path = tmp_path / "symbols.jsonl"
    _legacy_file(path, registry_name)
    with caplog.at_level("WARNING", logger="shmpipe.symbols"):
        with SymbolRegistry.open(registry_name, path=path) as reg:
            assert reg.lookup(0) == ("kraken", "BTC/USD") and reg.lookup(1) == ("kraken", "ETH/USD")
            assert reg.zero_id_symbol == ("kraken", "BTC/USD")
            assert reg.id_of("alpaca", "AAPL") == 2
            assert len(reg) == 3 and [e.symbol_id for e in reg.entries()] == [0, 1, 2]
    assert "id 0 is ('kraken', 'BTC/USD')" in caplog.text and "a zeroed record" in caplog.text
    assert str(path) in caplog.text
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()[1:]] == [0, 1, 2]


def test_an_old_table_in_shared_memory_is_still_read(registry_name, tmp_path):
    """A version-1 table (made by a process from before ids started at 1) stays readable and
    appendable: a table with no symbols yet starts at 1, one holding id 0 keeps it."""
    path = tmp_path / "symbols.jsonl"
    _legacy_file(path, registry_name)
    with SymbolRegistry.open(registry_name, path=path):
        pass
    with open(symbols.segment_path(registry_name), "r+b") as f:     # as the old code made it
        f.seek(symbols.HEADER.fields["layout_version"][1])
        f.write((1).to_bytes(4, "little"))
    with SymbolRegistry.open(registry_name, path=path) as reg:
        assert reg.lookup(0) == ("kraken", "BTC/USD") and reg.id_of("alpaca", "AAPL") == 2
        reg.unlink()
    empty_name, empty_path = registry_name + "-empty", tmp_path / "empty.jsonl"
    try:
        with SymbolRegistry.open(empty_name, path=empty_path):
            pass
        with open(symbols.segment_path(empty_name), "r+b") as f:
            f.seek(symbols.HEADER.fields["layout_version"][1])
            f.write((1).to_bytes(4, "little"))
        with SymbolRegistry.open(empty_name, path=empty_path) as reg:
            assert reg.id_of("coinbase", "BTC-USD") == 1
    finally:
        symbols.remove_segment(empty_name)


def test_a_file_that_gives_id_0_after_id_1_is_refused(registry_name, tmp_path):
    path = tmp_path / "symbols.jsonl"
    path.write_text(json.dumps({"shmpipe_symbols": 1, "registry": registry_name}) + "\n"
                    '{"id": 1, "exchange": "kraken", "symbol": "BTC/USD"}\n'
                    '{"id": 0, "exchange": "kraken", "symbol": "ETH/USD"}\n')
    with pytest.raises(RegistryFormatError, match="line 3: id 0 names no symbol in this registry"):
        SymbolRegistry.open(registry_name, path=path)
