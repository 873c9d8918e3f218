"""What the benchmarks read from ``/proc``: how busy the machine was, a process's CPU time, and
how long its threads waited for a CPU.

The machine these benchmarks run on is small and shared (two cores, here): the sink, the
database server and the process measured take turns on them, and a rate alone does not say
who waited for whom.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """Return (busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_since(start: tuple[int, int]) -> float:
    """Fraction of all cores that were busy since START (a machine_ticks() reading)."""
    busy, total = machine_ticks()
    return (busy - start[0]) / max(1, total - start[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds PID has used so far; None when its /proc entry cannot be read
    (gone, or in another PID namespace)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command's name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def waited_seconds(pid: int) -> float | None:
    """Seconds PID's threads have spent so far ready to run but waiting for a CPU (the run
    queue), summed over its threads; None when the kernel does not keep it (no
    ``/proc/PID/task/TID/schedstat``) or PID is gone.

    A thread that waits for I/O or a lock is not in the run queue: this is only the time its
    work was ready and a core was busy with someone else's."""
    total, found = 0, False
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for thread in threads:
        try:
            fields = (thread / "schedstat").read_text().split()
        except OSError:  # a thread that ended meanwhile, or no schedstat at all
            continue
        total += int(fields[1])  # nanoseconds on the run queue
        found = True
    return total / 1e9 if found else None
