"""The scenarios, each run as pinned child processes that drive a transport through the common
interface (transports/base.py). The parent forks the children, then only sleeps in join/get.

Clock: time.monotonic_ns() is clock_gettime(CLOCK_MONOTONIC) through the vDSO: one C call, the
same clock in every process. Latencies are collected as ints into array('q') during the run (an
append, no per-message histogram work) and folded into an HDR histogram after the timed part.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable

from . import transports
from .stats import encode_latencies
from .transports.base import pack_tick

now = time.monotonic_ns
sched_yield = getattr(os, 'sched_yield', lambda: None)
CTX = mp.get_context("fork")


@dataclass
class Params:
    messages: int          # timed messages (round trips for pingpong)
    warmup: int            # untimed messages before them
    rate: int = 0          # open loop: messages per second
    batch: int = 1         # throughput: records per call
    consumers: int = 1     # broadcast fan-out
    timeout_s: float = 60.0  # a run not done by then is killed and reported as an error
    extra: dict = field(default_factory=dict)


class RunError(RuntimeError):
    pass


def sweep_stale_rings() -> list[str]:
    """Unlink bench rings (shmpipe.bench-*) that no live process holds, e.g. after a bench run
    was killed with SIGKILL. Liveness is shmpipe's own (kernel locks), not a pid guess."""
    try:
        from shmpipe import inventory, segments
    except ImportError:
        return []
    names = [n for n in segments.list_names() if n.startswith("bench-")]
    return [info.name for info in inventory.stale(inventory.survey(names)) if inventory.remove(info)]


def pin(core: int | None) -> bool:
    """Pin this process to one core; True only if the kernel granted exactly that core."""
    if core is None:
        return False
    try:
        os.sched_setaffinity(0, {core})
        return os.sched_getaffinity(0) == {core}
    except (OSError, AttributeError, ValueError):
        return False


def _end(sync: dict, p: "Params") -> None:
    """Every party meets here before closing its end: a sender that closed early could take
    undelivered records with it (an iceoryx2 publisher does)."""
    try:
        sync["end"].wait(p.timeout_s)
    except Exception:  # BrokenBarrierError / timeout: a peer failed; it reports that itself
        pass


def _wait_for(rx: Any, deadline: int) -> Any:
    """Poll until something arrives; raise past the deadline."""
    while True:
        b = rx.poll()
        if len(b):
            return b
        if now() > deadline:
            raise TimeoutError("receiver saw nothing before the run deadline")


# ---------------------------------------------------------------- child roles
def role_ping(t, specs, p: Params, sync, index) -> dict:
    """Initiator: send one record, wait for the echo; RTT/2 per round trip."""
    tx, rx = t.sender(specs[0]), t.receiver(specs[1])
    try:
        sync["barrier"].wait(30)
        deadline = now() + int(p.timeout_s * 1e9)
        rec = pack_tick(0, 0)
        send, poll = tx.send, rx.poll
        for _ in range(p.warmup):
            send(rec)
            if not len(poll()):
                _wait_for(rx, deadline)
        half = array("q", bytes(8 * p.messages))
        t_begin = now()
        for i in range(p.messages):
            t0 = now()
            send(rec)
            b = poll()
            if not len(b):
                _wait_for(rx, deadline)
            half[i] = (now() - t0) >> 1
        elapsed = now() - t_begin
        return {"hist": encode_latencies(half), "elapsed_ns": elapsed, "received": p.messages}
    finally:
        tx.close()
        rx.close()


def role_pong(t, specs, p: Params, sync, index) -> dict:
    """Echoer: send back whatever arrives."""
    rx, tx = t.receiver(specs[0]), t.sender(specs[1])
    try:
        sync["barrier"].wait(30)
        deadline = now() + int(p.timeout_s * 1e9)
        send, poll, first = tx.send, rx.poll, rx.first
        for _ in range(p.warmup + p.messages):
            b = poll()
            if not len(b):
                b = _wait_for(rx, deadline)
            send(first(b))
        return {}
    finally:
        tx.close()
        rx.close()


def role_scheduled_sender(t, specs, p: Params, sync, index) -> dict:
    """Open loop: message i is due at t0 + i/rate; its timestamp is that due time (not the send
    time), so a sender that falls behind shows up as latency (no coordinated omission)."""
    tx = t.sender(specs[0])
    try:
        sync["barrier"].wait(30)
        total = p.warmup + p.messages
        rate = p.rate
        t0 = now() + 1_000_000  # first send 1 ms after the start line
        send = tx.send
        worst_lag = 0
        for i in range(total):
            due = t0 + (i * 1_000_000_000) // rate
            n = now()
            while n < due:
                if due - n > 3_000:
                    # Give the core away while the next send is far off: transports with a helper
                    # thread in this process (libzmq I/O, mp.Queue feeder) need it; a no-op otherwise.
                    sched_yield()
                n = now()
            lag = n - due
            if lag > worst_lag:
                worst_lag = lag
            send(pack_tick(due, i))
        end = now()
        return {"send_elapsed_ns": end - t0, "worst_send_lag_ns": worst_lag,
                "achieved_send_rate": total * 1e9 / max(1, end - t0)}
    finally:
        _end(sync, p)
        tx.close()


def role_latency_receiver(t, specs, p: Params, sync, index) -> dict:
    """Open loop / broadcast receiver: latency = receive time - scheduled send time."""
    rx = t.receiver(specs[0], index)
    try:
        sync["barrier"].wait(30)
        deadline = now() + int(p.timeout_s * 1e9)
        total = p.warmup + p.messages
        lat = array("q")
        append = lat.append
        poll, stamps = rx.poll, rx.stamps
        got = 0
        first_timed_due = last_rx = 0
        while got < total:
            b = poll()
            if not len(b):
                if now() > deadline:
                    raise TimeoutError(f"received {got} of {total} before the deadline")
                continue
            last_rx = now()
            for s in stamps(b):
                append(last_rx - s)
            got = len(lat)
            if not first_timed_due and got > p.warmup:
                first_timed_due = last_rx - lat[p.warmup]  # that record's scheduled send time
        timed = lat[p.warmup:total]
        span = max(1, last_rx - first_timed_due)
        return {"hist": encode_latencies(timed), "received": len(timed), "elapsed_ns": span,
                "extra_received": got - total}
    finally:
        _end(sync, p)
        rx.close()


def role_bulk_sender(t, specs, p: Params, sync, index) -> dict:
    """Throughput: warm-up, wait until drained, then N records as fast as the calls go."""
    tx = t.sender(specs[0])
    try:
        sync["barrier"].wait(30)
        b = p.batch
        rec = pack_tick(now(), 0)
        blob = tx.prepare_batch(rec * b, b)
        send, send_batch = tx.send, tx.send_batch
        single = p.extra.get("single", False)
        for _ in range(p.warmup // b):
            send_batch(blob, b) if not single else send(rec)
        if not sync["drained"].wait(p.timeout_s):
            raise TimeoutError("receiver did not drain the warm-up")
        t_start = now()
        if single:
            for _ in range(p.messages):
                send(rec)
        else:
            for _ in range(p.messages // b):
                send_batch(blob, b)
        return {"t_start": t_start, "send_elapsed_ns": now() - t_start}
    finally:
        _end(sync, p)
        tx.close()


def _count_until(rx: Any, n: int, deadline: int, what: str) -> int:
    poll, count = rx.poll, rx.count
    got = 0
    while got < n:
        b = poll()
        if len(b):
            got += count(b)
        elif now() > deadline:
            raise TimeoutError(f"{what}: received {got} of {n} before the deadline")
    return got


def role_counting_receiver(t, specs, p: Params, sync, index) -> dict:
    rx = t.receiver(specs[0], index)
    try:
        sync["barrier"].wait(30)
        deadline = now() + int(p.timeout_s * 1e9)
        warm = (p.warmup // p.batch) * p.batch if not p.extra.get("single") else p.warmup
        _count_until(rx, warm, deadline, "warm-up")
        sync["drained"].set()
        got = _count_until(rx, p.messages, deadline, "timed")
        return {"t_end": now(), "received": got}
    finally:
        _end(sync, p)
        rx.close()


ROLES: dict[str, Callable] = {f.__name__[5:]: f for f in (
    role_ping, role_pong, role_scheduled_sender, role_latency_receiver,
    role_bulk_sender, role_counting_receiver)}


def _child(role: str, tname: str, specs, core, p: Params, sync, index: int, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    granted = pin(core)
    try:
        out = ROLES[role](transports.get(tname), specs, p, sync, index)
        out.update(role=role, index=index, core=core, pinned=granted)
    except BaseException as exc:  # report, never hang the parent
        out = {"role": role, "index": index, "core": core, "pinned": granted,
               "error": f"{type(exc).__name__}: {exc}",
               "trace": traceback.format_exc(limit=4)}
    results.put(out)


# ---------------------------------------------------------------- parent side
def run_once(tname: str, layout: str, p: Params, cores: list[int]) -> list[dict]:
    """One measured run: make channels, fork pinned children, collect their reports, clean up.

    layout: "pingpong" | "openloop" | "throughput" | "broadcast".
    """
    t = transports.get(tname)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    n_rx = p.consumers if layout == "broadcast" else 1
    specs: list[Any] = []
    procs: list[Any] = []
    results = CTX.Queue()
    finished = False
    try:
        if layout == "pingpong":
            specs = [t.make_channel(tag + "-ab"), t.make_channel(tag + "-ba")]
            plan = [("ping", specs, cores[0], 0), ("pong", specs, cores[1 % len(cores)], 0)]
        else:
            specs = [t.make_channel(tag, consumers=n_rx, max_batch=p.batch, broadcast=layout == "broadcast")]
            tx_role, rx_role = (("bulk_sender", "counting_receiver") if layout == "throughput"
                                else ("scheduled_sender", "latency_receiver"))
            rx_cores = cores[1:] or cores
            plan = [(tx_role, specs, cores[0], 0)]
            plan += [(rx_role, specs, rx_cores[i % len(rx_cores)], i) for i in range(n_rx)]
        sync = {"barrier": CTX.Barrier(len(plan)), "end": CTX.Barrier(len(plan)), "drained": CTX.Event()}
        for role, sp, core, idx in plan:
            proc = CTX.Process(target=_child, args=(role, tname, sp, core, p, sync, idx, results),
                               name=f"bench-{tname}-{role}-{idx}", daemon=True)
            proc.start()
            procs.append(proc)
        reports = []
        deadline = time.monotonic() + p.timeout_s + 35
        while len(reports) < len(plan):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunError(f"run did not finish within {p.timeout_s + 35:.0f} s; children killed")
            try:
                reports.append(results.get(timeout=min(left, 1.0)))
            except queue.Empty:
                if all(not pr.is_alive() for pr in procs) and results.empty():
                    raise RunError("a child died without reporting (exit codes "
                                   f"{[pr.exitcode for pr in procs]})") from None
        errors = [r for r in reports if "error" in r]
        if errors:
            raise RunError("; ".join(f"{r['role']}: {r['error']}" for r in errors))
        finished = True
        return reports
    finally:
        for proc in procs:
            proc.join(timeout=5 if finished else 0.2)  # on Ctrl-C or an error: kill at once
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for sp in specs:
            try:
                t.destroy_channel(sp)
            except Exception:
                pass
        results.close()
        results.cancel_join_thread()
