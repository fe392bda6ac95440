"""CPU time used by other processes during a measurement, read from /proc.

On a shared machine, other work takes cores from the benchmark. `ForeignCpu` measures
how many cores, on average, processes outside the benchmark kept busy over an interval.
That is the machine's busy time from /proc/stat minus the benchmark's own time: this
process, its finished children (wrk, bench.bare) and the server's PID.
"""

import os
import time
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """Return the seconds all CPUs spent busy since boot: user, nice, system, irq, softirq and steal."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_cpu_s(pid: int) -> float:
    """Return the user and system seconds of process `pid` (all its threads), or 0.0 once it has exited."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name in brackets may contain spaces, so count fields after its closing bracket.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_s(pids: Iterable[int]) -> float:
    times = os.times()
    own = times.user + times.system + times.children_user + times.children_system
    return own + sum(process_cpu_s(pid) for pid in pids)


class ForeignCpu:
    """Context manager: `cores` is the mean number of cores that other processes kept busy inside the block.

    NOTE: a server given only by URL has no known PID, so its own work counts as foreign.
    """

    def __init__(self, pids: Iterable[int | None]) -> None:
        self.pids = [pid for pid in pids if pid is not None]
        self.cores: float | None = None

    def __enter__(self) -> "ForeignCpu":
        self._started = time.monotonic()
        self._busy = machine_busy_s()
        self._own = own_cpu_s(self.pids)
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall_s = time.monotonic() - self._started
        busy_s = machine_busy_s() - self._busy
        own_s = own_cpu_s(self.pids) - self._own
        self.cores = max(0.0, busy_s - own_s) / wall_s if wall_s > 0 else None
