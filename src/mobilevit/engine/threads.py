"""Compute threads that follow the cores other processes leave free.

OpenMP threads spin while they wait for each other. When another busy process holds a core, one of
ours is descheduled and the other spins through its time slice: on 2 cores, two trainings side by
side each fell to a small fraction of their speed alone, and with one thread each both ran almost as
fast as one alone (benchmarks/contention.py). So while training on CPU, :class:`ThreadGovernor`
measures every few seconds how much CPU the other processes used and keeps ``torch``'s intra-op
threads at the cores left over: all of them on an idle machine, fewer beside other work.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
PROC_STAT = Path("/proc/stat")
IDLE_FIELDS = (3, 4)  # idle and iowait, among /proc/stat's user nice system idle iowait irq softirq steal
GUEST_FIELDS = 8  # guest and guest_nice are already counted in user and nice


def usable_cores() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_seconds(cores: list[int], stat: Path | None = None) -> float | None:
    """CPU seconds spent busy on ``cores`` since boot, by every process (from ``/proc/stat``), or
    None where there is no such file."""
    try:
        lines = (stat or PROC_STAT).read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if name in wanted:
            counts = [int(v) for v in values[:GUEST_FIELDS]]
            ticks += sum(counts) - sum(counts[i] for i in IDLE_FIELDS)
    return ticks / os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int | str) -> float:
    """CPU seconds (user and system) of the live process ``pid``, 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def own_seconds() -> float:
    """CPU seconds of this process and its children (DataLoader workers are ours, not others'): the
    live ones read from ``/proc``, the ended ones from ``os.times()`` once they are reaped."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            total += sum(process_seconds(pid) for pid in children.read_text().split())
        except OSError:
            continue
    return total


def threads_for(cores: int, others: float) -> int:
    """The threads to use when other processes keep ``others`` cores busy: the cores left, rounded
    to the nearest, at least one."""
    return max(1, min(cores, int(cores - others + 0.5)))


class ThreadGovernor:
    """Call :meth:`update` once per training step; every ``interval`` seconds it sets
    ``torch.set_num_threads`` to :func:`threads_for` the CPU time that other processes used since
    the last look. Off (a fixed thread count) where ``/proc/stat`` is missing."""

    def __init__(self, interval: float = 2.0, cores: list[int] | None = None) -> None:
        self.cores = cores if cores is not None else usable_cores()
        self.interval = interval
        self.threads = self.max_threads = torch.get_num_threads()  # torch's default: the physical cores
        self.enabled = busy_seconds(self.cores) is not None
        self._mark()

    def _mark(self) -> None:
        self._wall, self._own, self._busy = time.monotonic(), own_seconds(), busy_seconds(self.cores)

    def others(self) -> float | None:
        """Cores that other processes (not this one or its children) kept busy since the last look; None
        before ``interval`` passed."""
        wall = time.monotonic() - self._wall
        if not self.enabled or wall < self.interval:
            return None
        busy, own = busy_seconds(self.cores), own_seconds() - self._own
        others = max(0.0, (busy - self._busy - own) / wall)
        self._mark()
        return others

    def update(self) -> int:
        """The thread count now in use, changed first if the share of CPU left has changed."""
        others = self.others()
        if others is None:
            return self.threads
        threads = min(self.max_threads, threads_for(len(self.cores), others))
        if threads != self.threads:
            log.info(
                "compute threads %d -> %d: other processes keep %.1f of %d cores busy",
                self.threads,
                threads,
                others,
                len(self.cores),
            )
            torch.set_num_threads(threads)
            self.threads = threads
        return threads


def thread_governor(threads: int | None, device: torch.device) -> ThreadGovernor | None:
    """``threads`` (``--threads``) fixes the compute threads; otherwise on CPU, unless
    ``OMP_NUM_THREADS`` fixes them, a :class:`ThreadGovernor` makes them follow the free cores."""
    if threads:
        torch.set_num_threads(threads)
        return None
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    return ThreadGovernor()
