"""Child-process bodies for test_ring_safety.py (importable by multiprocessing 'spawn'), and the
tiny out-of-tree Cython module that drives the ring's C-level API from them.

Each body runs where a hang or a crash is possible, under tests/isolation.run_isolated's time
limit, and returns what it saw for the parent to assert on."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import shmpipe
from shmpipe.records import TICK
from ring_workers import make_ticks

C_API_MODULE = textwrap.dedent('''
    # cython: language_level=3
    from libc.stdint cimport uint32_t
    from shmpipe.ring_api cimport *
    import_ring_api()

    cdef shmpipe_consumer *kept_c = NULL
    cdef shmpipe_producer *kept_p = NULL
    cdef const void *shown = NULL
    cdef char scratch[32 * 64]

    def keep(consumer=None, producer=None):
        """Take handles now (while the objects are open) for the calls below."""
        global kept_c, kept_p
        kept_c = consumer_handle(consumer) if consumer is not None else NULL
        kept_p = producer_handle(producer) if producer is not None else NULL

    def write_wait(producer, array, double timeout_s):
        """producer_write_wait of a whole TICK array (GIL held, as the header says)."""
        cdef const unsigned char[::1] raw = array.view("u1")
        return producer_write_wait(producer_handle(producer), &raw[0], array.shape[0], timeout_s)

    def wait(consumer, double timeout_s):
        return consumer_wait(consumer_handle(consumer), timeout_s)

    def peek(Py_ssize_t max_n):
        """consumer_peek on the kept consumer: (n, sequence of the first record shown or -1)."""
        global shown
        cdef Py_ssize_t n
        with nogil:
            n = consumer_peek(kept_c, &shown, max_n)
        return n, ((<const uint32_t *>((<const char *>shown) + 28))[0] if n > 0 else -1)

    def commit(Py_ssize_t n):
        cdef int r
        with nogil:
            r = consumer_commit(kept_c, n)
        return r

    def read(Py_ssize_t max_n):
        cdef Py_ssize_t n
        with nogil:
            n = consumer_read(kept_c, scratch, min(max_n, 64))
        return n

    def write_zeros(Py_ssize_t n):
        cdef Py_ssize_t i, w
        for i in range(32 * 64):
            scratch[i] = 0
        with nogil:
            w = producer_write(kept_p, scratch, min(n, 64))
        return w
''')

C_API_SETUP = textwrap.dedent('''
    import os, shmpipe
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    ext = Extension("ring_safety_capi", ["ring_safety_capi.pyx"], include_dirs=[shmpipe.get_include()])
    setup(ext_modules=cythonize([ext], include_path=[os.path.dirname(shmpipe.get_include())], quiet=True),
          script_args=["build_ext", "--inplace", "-q"])
''')


def build_c_api_module(directory: str) -> None:
    """Build ring_safety_capi in `directory` (a child that uses it puts it on sys.path)."""
    with open(os.path.join(directory, "ring_safety_capi.pyx"), "w") as f:
        f.write(C_API_MODULE)
    with open(os.path.join(directory, "setup.py"), "w") as f:
        f.write(C_API_SETUP)
    build = subprocess.run([sys.executable, "setup.py"], cwd=directory, capture_output=True, text=True,
                           timeout=300, check=False)
    if build.returncode != 0:
        raise AssertionError(f"building the C-API test module failed:\n{build.stderr[-3000:]}")


def _c_api(directory: str):
    if directory not in sys.path:
        sys.path.insert(0, directory)
    import ring_safety_capi
    return ring_safety_capi


# -- 1. close() during a multi-chunk write --------------------------------------------------------
def close_during_write_batch(name: str, wait: str, capacity: int, via: str, c_api_dir: str | None):
    """Write 2 x capacity records into a ring nobody reads, and close() the producer from another
    thread as soon as the writer lets the GIL go (during the first chunk's GIL-free copy, or the
    wait for room that follows). Returns (what the writer got, seconds it took)."""
    capi = _c_api(c_api_dir) if via == "c" else None
    with shmpipe.Ring.create(name, TICK, capacity, wait=wait) as ring:
        try:
            producer = ring.producer()
            batch = np.zeros(2 * capacity, TICK)
            outcome = {}
            entering = threading.Event()

            def writer():
                started = time.monotonic()
                entering.set()
                try:
                    if capi is None:
                        outcome["result"] = producer.write_batch(batch, timeout=2.0)
                    else:
                        outcome["result"] = capi.write_wait(producer, batch, 2.0)
                except Exception as exc:
                    outcome["result"] = type(exc).__name__
                outcome["seconds"] = time.monotonic() - started

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            # The writer keeps the GIL from here until the call first lets it go: the GIL-free copy
            # of a large first chunk, or the wait for room after a small one. close() runs there.
            entering.wait(10)
            producer.close()
            thread.join(20)
            if thread.is_alive():
                return ("still writing after 20 s", None)
            return (outcome["result"], outcome["seconds"])
        finally:
            ring.unlink()


def close_during_read(name: str, wait: str, via: str = "python", c_api_dir: str | None = None):
    """A consumer blocked in read() (or the C-level consumer_wait) on an empty ring, closed from
    another thread."""
    capi = _c_api(c_api_dir) if via == "c" else None
    with shmpipe.Ring.create(name, TICK, 64, wait=wait) as ring:
        try:
            consumer = ring.consumer()
            outcome = {}

            def reader():
                try:
                    if capi is None:
                        outcome["result"] = len(consumer.read(8, timeout=5.0))
                    else:
                        outcome["result"] = capi.wait(consumer, 5.0)
                except Exception as exc:
                    outcome["result"] = type(exc).__name__

            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while not consumer.waiting:
                if time.monotonic() > deadline:
                    return "reader never waited"
                time.sleep(0.001)
            consumer.close()
            thread.join(20)
            return "still reading after 20 s" if thread.is_alive() else outcome["result"]
        finally:
            ring.unlink()


# -- 2. read(out=) -----------------------------------------------------------------------------------
def read_out_after_resize(name: str):
    """The caller resizes its buffer between reads (refcheck=False, as users do when a plain resize
    refuses): the next reads must use the buffer as it is now, never a view of freed memory."""
    with shmpipe.Ring.create(name, TICK, 4096) as ring:
        try:
            with ring.producer() as p, ring.consumer() as c:
                buf = np.zeros(16, TICK)
                p.write_batch(make_ticks(0, 8))
                first = c.read(4, out=buf)
                seqs = [first["sequence"].tolist()]
                del first
                buf.resize(4, refcheck=False)           # smaller: the old memory may be freed
                small = c.read(4, out=buf)
                seqs.append(small["sequence"].tolist())
                del small
                buf.resize(5000, refcheck=False)        # larger than any list of views kept
                p.write_batch(make_ticks(8, 2000))
                big = c.read(2000, out=buf)
                seqs.append([len(big), int(big["sequence"][0]), int(big["sequence"][-1])])
                return seqs
        finally:
            ring.unlink()


# -- 4. the C-level API in a forked child ------------------------------------------------------------
def c_api_in_forked_child(name: str, c_api_dir: str):
    """Handles taken before fork(): in the child every nogil call must answer -1 (the Python
    handles there raise RingClosedError), never read zeros or write into private pages."""
    capi = _c_api(c_api_dir)
    with shmpipe.Ring.create(name, TICK, 64, broadcast=True) as ring:
        try:
            with ring.producer() as p, ring.consumer() as c:
                p.write_batch(make_ticks(0, 4))
                capi.keep(c, p)
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    try:
                        answers = (capi.read(2), capi.write_zeros(3), capi.peek(4)[0], capi.commit(0))
                        os.write(w, repr(answers).encode())
                    finally:
                        os._exit(0)
                os.close(w)
                _, status = os.waitpid(pid, 0)
                answers = os.read(r, 1000).decode()
                os.close(r)
                # The parent's ring is untouched by whatever the child did.
                still = c.read(16, timeout=0)["sequence"].tolist()
                capi.keep()
                return answers, os.waitstatus_to_exitcode(status), still, ring.stats()["written"]
        finally:
            ring.unlink()


# -- 5. fork() from another thread while a ring is being opened ---------------------------------------
def fork_while_opening(name: str):
    """Thread A opens a ring, pausing 0.3 s right after shm_open (as a slow machine might); the main
    thread forks meanwhile. The child must hold no fd of the segment (it would keep the parent's
    locks alive)."""
    from shmpipe import segments

    ring = shmpipe.Ring.create(name, TICK, 64)
    try:
        real = segments.posix_ipc.SharedMemory
        opened = threading.Event()

        def slow_shared_memory(*args, **kwargs):
            shm = real(*args, **kwargs)
            if threading.current_thread() is not threading.main_thread():
                opened.set()
                time.sleep(0.3)
            return shm

        segments.posix_ipc.SharedMemory = slow_shared_memory
        box = {}
        opener = threading.Thread(target=lambda: box.setdefault("ring", shmpipe.Ring.open(name)), daemon=True)
        opener.start()
        if not opened.wait(10):
            return "the opener never reached shm_open"
        pid = os.fork()
        if pid == 0:
            leaked = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}").endswith(f"shmpipe.{name}"):
                        leaked += 1
                except OSError:
                    pass
            os._exit(min(leaked, 100))
        _, status = os.waitpid(pid, 0)
        opener.join(10)
        segments.posix_ipc.SharedMemory = real
        box["ring"].close()
        return os.waitstatus_to_exitcode(status)
    finally:
        ring.close()
        ring.unlink()


# -- joins racing a running producer, across processes ------------------------------------------------
def join_repeatedly(name: str, rounds: int, per_round: int, result) -> None:
    """Join a lossless broadcast ring `rounds` times while its producer runs (alternating
    start="oldest" and "newest"), each time reading per_round records and checking every byte of
    each: a join that raced the producer's claim would show as a gap, a torn or an overwritten
    record, or a nonzero lost count."""
    from ring_workers import check_ticks
    try:
        checked = 0
        for i in range(rounds):
            with shmpipe.Ring.open(name, TICK) as ring, \
                    ring.consumer(start="oldest" if i % 2 == 0 else "newest") as consumer:
                got = consumer.read(512, timeout=30)
                if len(got) == 0:
                    raise AssertionError(f"round {i}: nothing for 30 s after joining")
                pos = (int(got["timestamp_ns"][0]) - 3) // 7
                while True:
                    check_ticks(got, pos)
                    pos += len(got)
                    checked += len(got)
                    if checked >= (i + 1) * per_round:
                        break
                    got = consumer.read(512, timeout=30)
                    if len(got) == 0:
                        raise AssertionError(f"round {i}: nothing for 30 s at {pos}")
                if consumer.lost:
                    raise AssertionError(f"round {i}: a lossless member counted {consumer.lost} lost")
        result.put(("ok", rounds, checked))
    except BaseException as exc:
        result.put(("error", f"{type(exc).__name__}: {exc}", None))
