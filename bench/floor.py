"""Build (once, cached by source hash) and run bench/floor.c: the cache-line ping-pong floor, the
two-process C SPSC ring throughput floor and the memcpy bandwidth of a core."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("floor.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shmpipe-bench"


class BuildError(RuntimeError):
    """floor.c did not compile: a failure of ours, not a reason to skip the floor."""


def build() -> tuple[Path | None, str | None]:
    """(binary, None), or (None, reason) when this machine has no C compiler; raises BuildError
    when the compiler rejects floor.c."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler (cc/gcc/clang) on PATH"
    try:
        src = SOURCE.read_bytes()
    except OSError as exc:  # an install without its package data: ours to fix, not a skip
        raise BuildError(f"cannot read {SOURCE}: {exc}") from exc
    digest = hashlib.sha256(src + cc.encode()).hexdigest()[:12]
    out = cache_dir() / f"floor-{digest}"
    if out.exists():
        return out, None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run([cc, "-O2", "-pthread", "-std=gnu11", "-o", str(tmp), str(SOURCE)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BuildError(f"compiling floor.c failed: {proc.stderr.strip()[:500]}")
    os.replace(tmp, out)
    return out, None


def run(binary: Path, cores: tuple[int, int], iterations: int, warmup: int, timeout: float) -> dict:
    proc = subprocess.run([str(binary), str(cores[0]), str(cores[1]), str(iterations), str(warmup)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"floor exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return json.loads(proc.stdout)


def _run_json(args: list[str], timeout: float) -> dict:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"floor exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return json.loads(proc.stdout)


def run_throughput(binary: Path, cores: tuple[int, int], records: int, batch: int, capacity: int,
                   record_size: int, timeout: float) -> dict:
    """The C SPSC ring between two pinned processes: records/s at this batch size."""
    return _run_json([str(binary), "throughput", str(cores[0]), str(cores[1]), str(records), str(batch),
                      str(capacity), str(record_size)], timeout)


def run_memcpy(binary: Path, nbytes: int = 64 << 20, repeats: int = 10, timeout: float = 60.0) -> dict:
    """Best-of-``repeats`` memcpy of ``nbytes`` on one core, GB/s."""
    return _run_json([str(binary), "memcpy", str(nbytes), str(repeats)], timeout)
