"""Percentiles, result records and CPU-time readings shared by the suite."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


def percentile(samples: Sequence[float], percent: float) -> float:
    """Return the nearest-rank percentile of ``samples``.

    With few samples the high percentiles are the maximum: p99 of 20
    samples is the slowest one.
    """
    ordered = sorted(samples)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """p50, p99 and mean of timing samples, in the unit ``of`` scales to."""

    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples_ns: Sequence[float], scale_ns: float) -> Summary:
        """Summarise ``samples_ns`` divided by ``scale_ns`` (1000 for us)."""
        return cls(
            p50=percentile(samples_ns, 50) / scale_ns,
            p99=percentile(samples_ns, 99) / scale_ns,
            mean=sum(samples_ns) / len(samples_ns) / scale_ns,
        )


@dataclass(frozen=True)
class CallResult:
    """Round-trip latency and CPU time per call of one latency row.

    ``host_cpu_us`` is the CPU time per call of the side that times the
    calls (this process, or the parent of a C or Node.js pair), and
    ``peer_cpu_us`` that of the process that replies. ``gap_us`` is the
    idle time between calls, 0 for back-to-back calls.
    """

    label: str
    group: str
    latency_us: Summary
    host_cpu_us: float
    peer_cpu_us: float
    calls: int
    gap_us: int = 0


# -- CPU time ----------------------------------------------------------------


def clock_cpu_ns(pid: int) -> int | None:
    """Return the CPU time of process ``pid`` in ns, or None off Linux.

    The clock id of another process's CPU-time clock is ~pid << 3 | 2
    (process-wide, CPUCLOCK_SCHED) in the Linux ABI, which is what glibc's
    clock_getcpuclockid() returns. Reading it counts the slice a thread is
    running right now, unlike /proc/PID/schedstat, which lags by up to a
    scheduler tick for a thread that spins.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return time.clock_gettime_ns((~pid << 3) | 2)
    except OSError:
        return None


def psutil_cpu_ns(pid: int) -> int:
    """Return user plus system CPU time of ``pid`` from psutil, in ns.

    NOTE: the kernel reports another process's CPU time in clock ticks
    (usually 10 ms), so short spans read coarsely, even as zero.
    """
    times = psutil.Process(pid).cpu_times()
    return round(float(times.user + times.system) * 1e9)


def process_cpu_ns(pid: int) -> int:
    """Return the CPU time of ``pid`` in ns, as precisely as readable."""
    precise = clock_cpu_ns(pid)
    return precise if precise is not None else psutil_cpu_ns(pid)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by the machine and by this process tree.

    ``own`` counts this process and its children once they are reaped,
    which every worker and baseline child is by the end of a run.
    """

    wall: float
    machine_busy: float
    own: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        machine = psutil.cpu_times()
        # Linux counts guest time inside user and nice time already.
        guest = getattr(machine, "guest", 0.0)
        guest += getattr(machine, "guest_nice", 0.0)
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        own = os.times()
        return cls(
            wall=time.perf_counter(),
            machine_busy=float(sum(machine) - guest - idle),
            own=own.user
            + own.system
            + own.children_user
            + own.children_system,
        )


def other_load_percent(start: CpuSnapshot, end: CpuSnapshot) -> float:
    """Return other processes' CPU use between two snapshots.

    The result is a percent of the machine's whole capacity, so 50 on two
    CPUs means one CPU was busy with other work during the run.
    """
    other = (end.machine_busy - start.machine_busy) - (end.own - start.own)
    capacity = (end.wall - start.wall) * (psutil.cpu_count() or 1)
    return max(0.0, 100 * other / capacity)
