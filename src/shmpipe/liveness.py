"""Who a process is, in a way that survives pid reuse: pid plus its start time.

The authoritative liveness test is the OFD lock each role holds on the segment (see _locks.h);
pid and start time are what the header shows people and tools."""
from __future__ import annotations


def process_start_ticks(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22); 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0
