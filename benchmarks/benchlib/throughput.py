"""Round-trip throughput at payload sizes from 100 B to 16 MiB.

Throughput is the payload size divided by the p50 round-trip time. A
round trip moves the payload twice, once each way, so a transport that
costs two memcpy calls per round trip reaches half the memcpy bandwidth.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sandbox import PluginHost

from .hosts import ECHO_PLUGIN
from .peers import BytesRoundTrip
from .settings import MIB, RunSettings
from .stats import Summary

# Each memcpy sample copies at least this many bytes in a batch of calls,
# so that the clock's resolution does not swamp small sizes.
MEMCPY_BYTES_PER_SAMPLE = 4 * MIB
MEMCPY_SAMPLES = 50


@dataclass(frozen=True)
class ThroughputPoint:
    """The round-trip time and throughput of one label at one size."""

    label: str
    size: int
    rounds: int
    latency_us: Summary
    mib_per_s: float


def point(
    label: str, size: int, samples_ns: Sequence[float]
) -> ThroughputPoint:
    summary = Summary.of(samples_ns, 1000)
    return ThroughputPoint(
        label=label,
        size=size,
        rounds=len(samples_ns),
        latency_us=summary,
        mib_per_s=size / MIB / (summary.p50 / 1e6),
    )


def time_rounds(call: Callable[[], object], rounds: int) -> list[int]:
    """Time ``rounds`` calls after one untimed call, in ns each."""
    call()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return samples


def measure_full_calls(
    host: PluginHost, label: str, settings: RunSettings
) -> list[ThroughputPoint]:
    """Time execute_plugin echo calls carrying a string of each size."""
    points = []
    for size in settings.payload_sizes:
        params = {"data": "x" * size}

        def call(params: dict[str, str] = params) -> object:
            return host.execute_plugin(ECHO_PLUGIN, "echo", params)

        if call() != params:
            raise RuntimeError(f"{label} did not echo {size} bytes back")
        samples = time_rounds(call, settings.rounds_for(size))
        points.append(point(label, size, samples))
    return points


def measure_raw(
    round_trip: BytesRoundTrip, label: str, settings: RunSettings
) -> list[ThroughputPoint]:
    """Time raw frames of each size echoed over one transport."""
    points = []
    for size in settings.payload_sizes:
        data = b"x" * size

        def call(data: bytes = data) -> object:
            return round_trip(data)

        if call() != data:
            raise RuntimeError(f"{label} did not echo {size} bytes back")
        samples = time_rounds(call, settings.rounds_for(size))
        points.append(point(label, size, samples))
    return points


def measure_memcpy(settings: RunSettings) -> list[ThroughputPoint]:
    """Time libc memmove (through ctypes) between two buffers per size.

    NOTE: each copy also pays for one ctypes call, about 0.1 to 0.3 us,
    which dominates at 100 B and vanishes at 1 MiB and above.
    """
    points = []
    for size in settings.payload_sizes:
        source = ctypes.create_string_buffer(b"x" * size, size)
        target = ctypes.create_string_buffer(size)
        batch = max(1, MEMCPY_BYTES_PER_SAMPLE // size)
        samples_ns = time_memmove(target, source, size, batch)
        points.append(point("memcpy", size, samples_ns))
    return points


def time_memmove(
    target: ctypes.Array[ctypes.c_char],
    source: ctypes.Array[ctypes.c_char],
    size: int,
    batch: int,
) -> list[float]:
    """Return the mean time of one copy in each of MEMCPY_SAMPLES batches."""
    memmove = ctypes.memmove
    # One untimed copy faults in the target's pages.
    memmove(target, source, size)
    samples = []
    for _ in range(MEMCPY_SAMPLES):
        start = time.perf_counter_ns()
        for _ in range(batch):
            memmove(target, source, size)
        samples.append((time.perf_counter_ns() - start) / batch)
    return samples
