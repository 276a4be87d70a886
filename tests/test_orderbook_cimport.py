"""The ring's C-level API from outside the tree: a tiny Cython module in a temporary directory
cimports ``shmpipe.ring_api`` from the installed package (headers and .pxd found through
``shmpipe.get_include()``), is built with cythonize + setuptools, and moves records with no Python
call per record: it writes N Ticks, reads them back and forwards a ring to another zero-copy (the
README's ten-line example)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import shmpipe

MODULE = textwrap.dedent('''
    # cython: language_level=3
    from libc.stdint cimport uint32_t
    from libc.stdlib cimport calloc, free
    from shmpipe.ring_api cimport *
    import_ring_api()

    def forward(src_consumer, dst_producer, Py_ssize_t max_n=1024):
        """Move up to max_n records from one ring to another, zero-copy, no Python call per record."""
        cdef shmpipe_consumer *c = consumer_handle(src_consumer)
        cdef shmpipe_producer *p = producer_handle(dst_producer)
        cdef const void *first
        cdef Py_ssize_t n
        with nogil:
            n = consumer_peek(c, &first, max_n)
            if n > 0:
                n = producer_write(p, first, n)
                consumer_commit(c, n)
        return n

    def write_ticks(producer, Py_ssize_t n):
        """n 32-byte Ticks whose sequence is 0..n-1, one C call per record; waits when full."""
        cdef shmpipe_producer *p = producer_handle(producer)
        cdef char rec[32]
        cdef Py_ssize_t i, w
        for i in range(32):
            rec[i] = 0
        for i in range(n):
            (<uint32_t *>&rec[28])[0] = <uint32_t>i
            with nogil:
                w = producer_write(p, rec, 1)
            if w == 0:
                w = producer_write_wait(p, rec, 1, 10.0)
            if w != 1:
                raise RuntimeError(f"write {i} failed: {w}")
        return n

    def edges(consumer, producer):
        """What the nogil calls answer to misuse: -1, never a crash or an exception."""
        cdef shmpipe_consumer *c = consumer_handle(consumer)
        cdef shmpipe_producer *p = producer_handle(producer)
        cdef const void *first
        cdef char rec[32]
        return (consumer_commit(c, 5), consumer_peek(c, &first, 0), consumer_read(c, rec, 0),
                producer_write(p, rec, -1), consumer_peek(c, &first, 8), itemsize(consumer))

    def read_ticks(consumer, Py_ssize_t n):
        """Read n Ticks (waiting when empty) and return their sequence numbers as a list."""
        cdef shmpipe_consumer *c = consumer_handle(consumer)
        cdef char *buf = <char *>calloc(256, 32)
        cdef Py_ssize_t got = 0, k, i
        out = []
        try:
            while got < n:
                with nogil:
                    k = consumer_read(c, buf, min(256, n - got))
                if k < 0:
                    raise RuntimeError("consumer unusable")
                if k == 0:
                    if consumer_wait(c, 10.0) == 0:
                        raise RuntimeError("timed out")
                    continue
                for i in range(k):
                    out.append((<uint32_t *>&buf[i * 32 + 28])[0])
                got += k
            return out
        finally:
            free(buf)
''')

SETUP = textwrap.dedent('''
    import os, shmpipe
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    ext = Extension("ring_copy", ["ring_copy.pyx"], include_dirs=[shmpipe.get_include()])
    setup(ext_modules=cythonize([ext], include_path=[os.path.dirname(shmpipe.get_include())], quiet=True),
          script_args=["build_ext", "--inplace", "-q"])
''')

USE = textwrap.dedent('''
    import sys, threading, shmpipe, ring_copy
    from shmpipe.records import TICK
    name = sys.argv[1]
    a = shmpipe.Ring.create(name + "-a", TICK, 1 << 10, broadcast=True)
    b = shmpipe.Ring.create(name + "-b", TICK, 1 << 16)
    c = shmpipe.Ring.create(name + "-c", TICK, 64)
    try:
        with a.producer() as pa, a.consumer() as ca, b.producer() as pb, b.consumer() as cb, \\
                c.producer() as pc, c.consumer() as cc:
            ring_copy.write_ticks(pa, 600)                      # C writes, C reads
            assert ring_copy.read_ticks(ca, 600) == list(range(600))
            ring_copy.write_ticks(pa, 500)                      # across the wrap point
            moved = 0
            while moved < 500:
                moved += ring_copy.forward(ca, pb)               # zero-copy a -> b
            got = cb.read(1000, timeout=0)                     # the Python API sees the same records
            assert got["sequence"].tolist() == list(range(500)), got["sequence"][:10]
            seen = []
            reader = threading.Thread(target=lambda: seen.extend(
                s for _ in range(1000) for s in cc.read(1, timeout=10)["sequence"].tolist()))
            reader.start()
            ring_copy.write_ticks(pc, 1000)                     # 64 slots: the C write waits for room
            reader.join(30)
            assert seen == list(range(1000)), seen[:10]
            # misuse: commit more than shown, zero-sized calls, a negative count, peek on a lossy ring
            lossy = shmpipe.Ring.create(name + "-d", TICK, 64, broadcast=True, policy="lossy")
            try:
                with lossy.consumer() as cd, lossy.producer() as pd:
                    assert ring_copy.edges(cd, pd) == (-1, -1, -1, -1, -1, 32), ring_copy.edges(cd, pd)
                    cd.close()
                    try:
                        ring_copy.edges(cd, pd)
                        raise AssertionError("a closed consumer gave a handle")
                    except shmpipe.RingClosedError:
                        pass
                    try:
                        ring_copy.forward("not a consumer", pd)
                        raise AssertionError("a str gave a handle")
                    except TypeError:
                        pass
            finally:
                lossy.unlink()
                lossy.close()
        print("ok")
    finally:
        for r in (a, b, c):
            r.unlink()
            r.close()
''')


def test_an_out_of_tree_cython_module_cimports_the_ring_api(tmp_path, ring_name):
    import Cython  # noqa: F401 - the dev extra installs it: missing, the test fails rather than skips
    assert os.path.exists(os.path.join(shmpipe.get_include(), "shmpipe_ring_api.h"))
    assert os.path.exists(os.path.join(shmpipe.get_include(), "ring_api.pxd"))
    (tmp_path / "ring_copy.pyx").write_text(MODULE)
    (tmp_path / "setup.py").write_text(SETUP)
    (tmp_path / "use.py").write_text(USE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path)] + [p for p in sys.path if p])}
    build = subprocess.run([sys.executable, "setup.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    use = subprocess.run([sys.executable, "use.py", ring_name], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert use.returncode == 0 and use.stdout.strip() == "ok", use.stderr[-3000:]
