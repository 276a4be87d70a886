"""Run a test body in a spawned child, so a segfault or a hang fails the test instead of taking
pytest down with it. The body must be a module-level function (spawn imports it by name)."""
from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback

SPAWN = mp.get_context("spawn")


def _trampoline(target, args, results) -> None:
    try:
        results.put(("ok", target(*args)))
    except BaseException as exc:  # report, never hang the parent
        results.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))


def run_isolated(target, *args, timeout: float = 60.0):
    """target(*args) in a child process; its return value, or AssertionError naming how it died."""
    results = SPAWN.Queue()
    child = SPAWN.Process(target=_trampoline, args=(target, args, results), daemon=True)
    child.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                kind, value = results.get(timeout=0.2)
                break
            except queue.Empty:
                if not child.is_alive() and results.empty():
                    raise AssertionError(f"{target.__name__} died in the child with exit code "
                                         f"{child.exitcode} (negative: the signal)") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"{target.__name__} gave no answer in {timeout} s") from None
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)
    if kind == "error":
        raise AssertionError(f"{target.__name__} failed in the child: {value}")
    return value
