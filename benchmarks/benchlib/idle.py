"""CPU time that an idle worker and its host use while no call comes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sandbox import PluginHost

from .hosts import ECHO_PLUGIN, worker_pid
from .peers import PAYLOAD
from .stats import process_cpu_ns, psutil_cpu_ns


@dataclass(frozen=True)
class IdleResult:
    """CPU use over an idle span, in percent of one core.

    ``worker_psutil_percent`` comes from psutil, which counts clock ticks
    of usually 10 ms, so over 5 s it resolves 0.2 % of a core.
    ``worker_percent`` comes from the worker's CPU-time clock in ns where
    the platform has one, else from psutil.
    ``host_percent`` is this process, whose benchmark thread sleeps.
    """

    transport: str
    seconds: float
    worker_percent: float
    worker_psutil_percent: float
    host_percent: float


def measure_idle(
    host: PluginHost, transport: str, seconds: float
) -> IdleResult:
    """Make one call, then leave the worker idle for ``seconds``."""
    host.execute_plugin(ECHO_PLUGIN, "echo", PAYLOAD)
    pid = worker_pid(host, ECHO_PLUGIN)
    psutil_start = psutil_cpu_ns(pid)
    precise_start = process_cpu_ns(pid)
    host_start = time.process_time_ns()
    wall_start = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - wall_start
    host_cpu = time.process_time_ns() - host_start
    psutil_cpu = psutil_cpu_ns(pid) - psutil_start
    precise_cpu = process_cpu_ns(pid) - precise_start
    return IdleResult(
        transport=transport,
        seconds=wall,
        worker_percent=percent_of_core(precise_cpu, wall),
        worker_psutil_percent=percent_of_core(psutil_cpu, wall),
        host_percent=percent_of_core(host_cpu, wall),
    )


def percent_of_core(cpu_ns: int, wall_seconds: float) -> float:
    return 100 * cpu_ns / 1e9 / wall_seconds
