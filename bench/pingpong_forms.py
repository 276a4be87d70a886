"""Ping-pong through two SPSC rings, one read form at a time: where the distance to the floor is.

Two processes pinned to two cores; A writes one Tick, B reads it and writes it back, A reads the
echo; the figure is RTT/2 per round trip, as `shmpipe bench`'s pingpong row, but without the
harness's transport layer, so each row is the ring's own calls in the form a user would write:

  read          b = c.read(4096, timeout=0.005); p.write(b[0])         (a new array per read)
  read_out      b = c.read(4096, 0.005, out=buf); p.write(b[:1] view)  (a reused array, a view back)
  read_into     n = c.read_into(buf1, 0.005); p.write(buf1)           (a reused one-record array)

Forms run interleaved (run 1 of every form, then run 2 ...). Prints median p50/p99 over runs
with [min, max]; --json writes every run.

    python bench/pingpong_forms.py --runs 5 --cores 0,1 [--wait spin|block|yield] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

FORMS = ("read", "read_out", "read_into")


def _pin(core: int) -> None:
    os.sched_setaffinity(0, {core})


def _echo(form: str, name_in: str, name_out: str, total: int, core: int, ready_fd: int) -> None:
    import numpy as np

    import shmpipe
    from shmpipe.records import TICK

    _pin(core)
    with shmpipe.Ring.open(name_in, TICK) as rin, shmpipe.Ring.open(name_out, TICK) as rout, \
            rin.consumer() as c, rout.producer() as p:
        os.write(ready_fd, b"x")
        write = p.write
        if form == "read":
            read = c.read
            for _ in range(total):
                b = read(4096, timeout=0.005)
                while not len(b):
                    b = read(4096, timeout=0.005)
                write(b[0])
        elif form == "read_out":
            buf = np.empty(4096, TICK)
            first = buf[:1]
            read = c.read
            for _ in range(total):
                b = read(4096, 0.005, buf)
                while not len(b):
                    b = read(4096, 0.005, buf)
                write(first)
        else:
            one = np.empty(1, TICK)
            read_into = c.read_into
            for _ in range(total):
                while not read_into(one, 0.005):
                    pass
                write(one)


def one_run(form: str, messages: int, warmup: int, cores: list[int], wait: str) -> dict:
    import numpy as np

    import shmpipe
    from shmpipe.records import TICK

    tag = f"ppf-{os.getpid()}-{form}"
    a_name, b_name = f"{tag}-a", f"{tag}-b"
    ring_a = shmpipe.Ring.create(a_name, TICK, 8192, wait=wait)
    ring_b = shmpipe.Ring.create(b_name, TICK, 8192, wait=wait)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the echoer
        code = 0
        try:
            _echo(form, a_name, b_name, warmup + messages, cores[1], w)
        except BaseException as exc:  # report, never fall back into the parent's code
            print(f"pingpong_forms: echo ({form}) failed: {exc!r}", file=sys.stderr)
            code = 1
        os._exit(code)
    try:
        _pin(cores[0])
        os.read(r, 1)
        rec = np.zeros(1, TICK).tobytes()
        half = np.empty(messages, dtype=np.int64)
        now = time.monotonic_ns
        with shmpipe.Ring.open(a_name, TICK) as ra, shmpipe.Ring.open(b_name, TICK) as rb, \
                ra.producer() as p, rb.consumer() as c:
            write = p.write
            if form == "read":
                read = c.read

                def poll():
                    return len(read(4096, timeout=0.005))
            elif form == "read_out":
                buf = np.empty(4096, TICK)
                read = c.read

                def poll():
                    return len(read(4096, 0.005, buf))
            else:
                one = np.empty(1, TICK)
                read_into = c.read_into

                def poll():
                    return read_into(one, 0.005)
            for _ in range(warmup):
                write(rec)
                while not poll():
                    pass
            for i in range(messages):
                t0 = now()
                write(rec)
                while not poll():
                    pass
                half[i] = (now() - t0) >> 1
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError(f"the echo process of {form!r} failed (status {status})")
        return {"form": form, "p50_ns": float(np.percentile(half, 50)), "p99_ns": float(np.percentile(half, 99))}
    finally:
        os.close(r)
        os.close(w)
        for ring in (ring_a, ring_b):
            ring.close()
            ring.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each form, interleaved (default 5)")
    ap.add_argument("--messages", type=int, default=20000, help="timed round trips per run (default 20000)")
    ap.add_argument("--warmup", type=int, default=2000, help="untimed round trips first (default 2000)")
    ap.add_argument("--cores", default=None, help="two cores: pinger,echoer (default: the last two usable)")
    ap.add_argument("--wait", default="spin", choices=["spin", "yield", "block"], help="the rings' wait strategy")
    ap.add_argument("--forms", default=",".join(FORMS), help=f"comma list of {', '.join(FORMS)}")
    ap.add_argument("--json", help="write every run here")
    a = ap.parse_args(argv)
    forms = [f for f in a.forms.split(",") if f]
    bad = [f for f in forms if f not in FORMS]
    if bad or a.runs < 1 or a.messages < 1:
        ap.error(f"unknown form {bad[0]!r}" if bad else "--runs and --messages must be at least 1")
    usable = sorted(os.sched_getaffinity(0))
    cores = [int(c) for c in a.cores.split(",")] if a.cores else usable[-2:]
    if len(cores) != 2 or any(c not in usable for c in cores):
        ap.error(f"--cores needs two of the usable cores {usable}, got {cores}")
    runs: list[dict] = []
    for k in range(a.runs):
        for form in forms:
            row = one_run(form, a.messages, a.warmup, cores, a.wait)
            row["run"] = k + 1
            runs.append(row)
    print(f"ping-pong RTT/2, {a.runs} runs x {a.messages} round trips, cores {cores}, wait={a.wait}, "
          f"load {os.getloadavg()[0]:.2f}")
    for form in forms:
        p50 = [r["p50_ns"] for r in runs if r["form"] == form]
        p99 = [r["p99_ns"] for r in runs if r["form"] == form]
        print(f"  {form:10s} p50 {statistics.median(p50):6.0f} ns [{min(p50):.0f}, {max(p50):.0f}]"
              f"   p99 {statistics.median(p99):6.0f} ns [{min(p99):.0f}, {max(p99):.0f}]")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cores": cores, "wait": a.wait, "messages": a.messages, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
