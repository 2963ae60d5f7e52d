"""Timing loops for round trips made from this process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .settings import RunSettings
from .stats import CallResult, Summary, process_cpu_ns


@dataclass(frozen=True)
class Row:
    """One latency row: the call it times, its peer's pid and its pacing."""

    label: str
    group: str
    call: Callable[[], object]
    peer_pid: int
    gap_us: int = 0


def measure_row(row: Row, settings: RunSettings) -> CallResult:
    """Time the calls of ``row`` after untimed warm-up calls.

    Back-to-back rows make ``settings.calls`` calls; rows with a gap make
    ``settings.gap_calls`` and sleep ``row.gap_us`` before each, outside
    the timed span. CPU time covers the whole timed loop, sleeps included.
    """
    settings.placement.pin_peer(row.peer_pid)
    calls = settings.gap_calls if row.gap_us else settings.calls
    gap_seconds = row.gap_us / 1e6
    for _ in range(settings.warmup):
        row.call()
    peer_start = process_cpu_ns(row.peer_pid)
    host_start = time.process_time_ns()
    samples = []
    for _ in range(calls):
        if gap_seconds:
            time.sleep(gap_seconds)
        start = time.perf_counter_ns()
        row.call()
        samples.append(time.perf_counter_ns() - start)
    host_cpu = time.process_time_ns() - host_start
    peer_cpu = process_cpu_ns(row.peer_pid) - peer_start
    return CallResult(
        label=row.label,
        group=row.group,
        latency_us=Summary.of(samples, 1000),
        host_cpu_us=host_cpu / calls / 1000,
        peer_cpu_us=peer_cpu / calls / 1000,
        calls=calls,
        gap_us=row.gap_us,
    )


def check_echo(
    call: Callable[[], object], expected: object, label: str
) -> None:
    """Raise RuntimeError unless ``call`` returns ``expected``."""
    reply = call()
    if reply != expected:
        raise RuntimeError(
            f"{label} returned {reply!r:.80} instead of what it was sent"
        )
