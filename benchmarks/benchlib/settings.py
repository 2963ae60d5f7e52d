"""Sample counts, durations and sizes of one run of the suite."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .placement import Placement

KIB = 1024
MIB = 1024 * KIB
PAYLOAD_SIZES = (100, 10 * KIB, MIB, 16 * MIB)
THREAD_COUNTS = (1, 2, 4, 8)
PLUGIN_COUNTS = (1, 2, 4)


@dataclass(frozen=True)
class RunSettings:
    """What one run measures and how long it spends on each part.

    ``gap_us`` is the idle time between calls of the idle-gap rows.
    ``payload_bytes_per_size`` bounds the bytes sent at each payload
    size, so large payloads get fewer round trips than small ones.
    """

    placement: Placement
    smoke: bool = False
    calls: int = 5000
    warmup: int = 500
    gap_calls: int = 2000
    gap_us: int = 1000
    spawns: int = 20
    payload_sizes: tuple[int, ...] = PAYLOAD_SIZES
    payload_bytes_per_size: int = 256 * MIB
    max_rounds_per_size: int = 2000
    min_rounds_per_size: int = 10
    thread_counts: tuple[int, ...] = THREAD_COUNTS
    plugin_counts: tuple[int, ...] = PLUGIN_COUNTS
    scaling_seconds: float = 1.0
    idle_seconds: float = 5.0

    @classmethod
    def smoke_run(cls, placement: Placement) -> RunSettings:
        """Return tiny counts that still run every code path once."""
        return cls(
            placement=placement,
            smoke=True,
            calls=50,
            warmup=10,
            gap_calls=20,
            spawns=2,
            payload_sizes=PAYLOAD_SIZES[:-1],
            payload_bytes_per_size=4 * MIB,
            max_rounds_per_size=20,
            min_rounds_per_size=2,
            scaling_seconds=0.05,
            idle_seconds=0.3,
        )

    def rounds_for(self, size: int) -> int:
        """Return how many round trips to time at payload ``size``."""
        rounds = self.payload_bytes_per_size // size
        return max(
            self.min_rounds_per_size, min(self.max_rounds_per_size, rounds)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **self.placement.to_json(),
            "smoke": self.smoke,
            "calls": self.calls,
            "warmup": self.warmup,
            "gap_calls": self.gap_calls,
            "gap_us": self.gap_us,
            "spawns": self.spawns,
            "payload_sizes": list(self.payload_sizes),
            "thread_counts": list(self.thread_counts),
            "plugin_counts": list(self.plugin_counts),
            "scaling_seconds": self.scaling_seconds,
            "idle_seconds": self.idle_seconds,
        }
