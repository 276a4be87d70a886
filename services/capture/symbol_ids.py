"""(exchange, symbol) -> dense u32 id, injected into every parser.

A parser calls ``symbol_id(exchange, symbol, price_decimals=None, size_decimals=None, depth=None)``
the first time it sees a symbol, and again whenever it learns one of the instrument's facts (Kraken:
the depth from the subscribe ack, the decimals from the first snapshot). The call must return the same
id every time for one (exchange, symbol). The host-wide registry (``shmpipe.symbols``, issue 11's
shared-memory table) has that shape; ``InMemorySymbolIds`` is the stand-in for tests, benches and a
single process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shmpipe.errors import UnknownSymbolError


class SymbolIdFn(Protocol):
    def __call__(self, exchange: str, symbol: str, price_decimals: int | None = None,
                 size_decimals: int | None = None, depth: int | None = None,
                 effective_ns: int | None = None) -> int: ...


@dataclass
class InstrumentFacts:
    exchange: str
    symbol: str
    price_decimals: int | None = None
    size_decimals: int | None = None
    depth: int | None = None


class InMemorySymbolIds:
    """Ids 1, 2, 3, ... in order of first sight (0 is never handed out, so a zeroed record names no
    symbol); facts given later fill in the ones still unknown and never erase a known one."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self.facts: dict[int, InstrumentFacts] = {}
        self.changes: list[tuple] = []   # (id, effective_ns, price_decimals, size_decimals, depth)

    def __call__(self, exchange: str, symbol: str, price_decimals: int | None = None,
                 size_decimals: int | None = None, depth: int | None = None,
                 effective_ns: int | None = None) -> int:
        """effective_ns: a change of a known fact, and when the venue made it (kept in ``changes``)."""
        key = (exchange, symbol)
        sid = self._ids.get(key)
        if sid is None:
            sid = len(self._ids) + 1
            self._ids[key] = sid
            self.facts[sid] = InstrumentFacts(exchange, symbol)
        facts = self.facts[sid]
        if effective_ns is not None:
            self.changes.append((sid, effective_ns, price_decimals, size_decimals, depth))
        if price_decimals is not None:
            facts.price_decimals = price_decimals
        if size_decimals is not None:
            facts.size_decimals = size_decimals
        if depth is not None:
            facts.depth = depth
        return sid

    def lookup(self, symbol_id: int) -> tuple[str, str]:
        """(exchange, symbol) of an id; UnknownSymbolError, as from the host registry, for any other."""
        facts = self.facts.get(symbol_id)
        if facts is None:
            if symbol_id == 0:
                raise UnknownSymbolError("symbol id 0 names no symbol (ids start at 1; 0 is what a zeroed "
                                         "record holds)")
            n = len(self._ids)
            raise UnknownSymbolError(f"symbol id {symbol_id} is not registered ({n} symbols, "
                                     f"{f'ids 1..{n}' if n else 'none yet'})")
        return facts.exchange, facts.symbol

    def id_of(self, exchange: str, symbol: str) -> int:
        return self._ids[(exchange, symbol)]


def host_registry_or_memory() -> SymbolIdFn:
    """``shmpipe.symbols.register`` when the host registry is installed, else a fresh in-memory map.

    The capture process wants the registry (ids every process on the host agrees on); a test wants the
    in-memory map and passes it explicitly.
    """
    try:
        from shmpipe import symbols  # type: ignore[attr-defined]
    except ImportError:
        return InMemorySymbolIds()
    register = getattr(symbols, "register", None)
    return register if callable(register) else InMemorySymbolIds()
