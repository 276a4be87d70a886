"""Child-process bodies for the symbol registry tests (importable by multiprocessing 'spawn')."""
from __future__ import annotations

import os

from shmpipe import symbols
from shmpipe.errors import RegistryBusyError


def register_all(name: str, path: str, pairs: list[tuple[str, str]], start, results) -> None:
    """Open the registry (racing the other process to create it), wait for the common start, then
    register every pair; report {pair: id} and what this process sees for every id."""
    start.wait(timeout=30)
    with symbols.SymbolRegistry.open(name, path=path) as registry:
        ids = {pair: registry.id_of(*pair) for pair in pairs}
        seen = {e.symbol_id: (e.exchange, e.symbol) for e in registry.entries()}
    results.put((os.getpid(), ids, seen))


def default_registry_ids(pairs: list[tuple[str, str]]) -> dict:
    """The module-level API, in a process of its own (the env names the registry and its file)."""
    return {f"{e}|{s}": symbols.id_of(e, s) for e, s in pairs}


def register_in_forked_child(registry: symbols.SymbolRegistry) -> int:
    """Fork while this process holds the registry's lock; the child must not get it through the
    inherited handle. Returns the child's exit status: 0 = refused as busy (right), 1 = it got in."""
    with registry._exclusive():
        pid = os.fork()
        if pid == 0:
            try:
                registry._lock_timeout = 0.2
                registry.register("forked", "CHILD")
                os._exit(1)
            except RegistryBusyError:
                os._exit(0)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
