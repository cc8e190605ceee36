"""Intra-op threads that follow the cores other processes leave free.

A torch process runs its parallel regions on a team of OpenMP threads that meet at a barrier
after every region. When another busy process shares the cores, one thread of the team is
often descheduled and the others wait for it at every barrier: on a small machine a 2-thread
training run next to one other busy process can be several times slower than the same run on
1 thread (``benchmarks/speed/RESULTS.md``, the loaded rows). Taking only the cores that are
actually free avoids that, and costs nothing on an idle machine, where every core is free.

:class:`CoreShare` measures what other processes use (all CPU time on the cores this process may
run on, less this process's own) between two calls of :meth:`CoreShare.poll`, and sets torch's
intra-op threads to the free cores, at least 1 and at most ``limit``. It re-decides at most every
``interval`` seconds, so polling once per batch costs a clock read. Linux only (``/proc/stat``);
elsewhere it keeps every allowed core, as torch does.

Threads are set for the calling thread's parallel regions (OpenMP's setting is per thread), so
poll from the thread that runs the model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch

__all__ = [
    "CoreShare",
    "allowed_cores",
    "cores_in_use",
    "parse_threads",
    "poll",
    "read_cpu_seconds",
]

# A core counts as free when at least this share of it was idle: a core 40 % used by another
# process is busy enough to stall a team's barrier.
_FREE_ENOUGH = 0.7


def allowed_cores() -> int:
    """The cores this process may run on (its affinity mask), or the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_cpu_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """Busy CPU seconds summed over the cores this process may run on, since boot (``None`` where
    ``/proc/stat`` cannot be read). Busy = every state but idle and iowait."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    try:
        cores = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cores = None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += sum(values) - values[3] - values[4]
    return busy / ticks


def parse_threads(value: str) -> int | None:
    """``--threads`` values: ``auto`` -> None (follow the free cores), or a positive count."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"threads must be 'auto' or a positive whole number, got {value!r}")
    return count


class CoreShare:
    """Sets torch's intra-op threads to the cores other processes leave free (see the module).

    ``fixed``: a thread count to keep instead (no measuring; what ``--threads N`` gives).
    ``limit``: the most threads to take (default: the allowed cores). ``interval``: seconds
    between decisions. ``clock``, ``own_seconds`` and ``cpu_seconds`` are injectable for tests
    (wall clock, this process's CPU seconds, all busy CPU seconds).
    """

    def __init__(
        self,
        fixed: int | None = None,
        limit: int | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        own_seconds: Callable[[], float] = time.process_time,
        cpu_seconds: Callable[[], float | None] = read_cpu_seconds,
    ):
        self.fixed = fixed
        self.limit = max(1, limit or allowed_cores())
        self.interval = interval
        self._clock, self._own, self._cpu = clock, own_seconds, cpu_seconds
        self._last: tuple[float, float, float] | None = None
        self.threads = fixed or torch.get_num_threads()
        self.others: float | None = None  # cores other processes used in the last interval

    def _reading(self) -> tuple[float, float, float] | None:
        cpu = self._cpu()
        return None if cpu is None else (self._clock(), self._own(), cpu)

    def start(self, sample: float = 0.1) -> int:
        """The first decision, from a ``sample``-second look (the process is idle meanwhile)."""
        if self.fixed is not None:
            return self._set(self.fixed)
        self._last = self._reading()
        if self._last is None:
            return self._set(self.limit)
        time.sleep(sample)
        return self.poll(force=True)

    def poll(self, force: bool = False) -> int:
        """Re-decide when ``interval`` seconds have passed since the last decision (or now, with
        ``force``); returns the threads in use."""
        if self.fixed is not None or self._last is None:
            return self.threads
        now = self._clock()
        if not force and now - self._last[0] < self.interval:
            return self.threads
        reading = self._reading()
        if reading is None:
            return self.threads
        wall = reading[0] - self._last[0]
        if wall <= 0:
            return self.threads
        others = (reading[2] - self._last[2]) - (reading[1] - self._last[1])
        self._last = reading
        self.others = max(0.0, others / wall)
        free = self.limit - self.others
        return self._set(max(1, min(self.limit, int(free + 1 - _FREE_ENOUGH))))

    def _set(self, threads: int) -> int:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.threads = threads
        return threads


_CURRENT: ContextVar[CoreShare | None] = ContextVar("gpner_core_share", default=None)


@contextmanager
def cores_in_use(fixed: int | None = None, limit: int | None = None) -> Iterator[CoreShare]:
    """Inside the block, torch runs on ``fixed`` threads, or (``None``) on the cores other
    processes leave free, re-decided as :func:`poll` is called (inference polls once per
    batch). Torch's previous thread count is restored on exit."""
    before = torch.get_num_threads()
    share = CoreShare(fixed=fixed, limit=limit)
    share.start()
    token = _CURRENT.set(share)
    try:
        yield share
    finally:
        _CURRENT.reset(token)
        torch.set_num_threads(before)


def poll() -> None:
    """Lets the enclosing :func:`cores_in_use` block re-decide (a clock read between decisions;
    nothing outside a block)."""
    share = _CURRENT.get()
    if share is not None:
        share.poll()
