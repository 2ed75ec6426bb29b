"""CPU time and resident memory of a process, and the machine's load, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStats:
    """A snapshot of one process."""

    cpu_seconds: float
    rss_bytes: int


def read(pid: int) -> ProcStats:
    """User + system CPU seconds and resident set size of ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return ProcStats((utime + stime) / _TICKS, rss_kb * 1024)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` (and ``uptime``) give them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
