"""Everything one run measured, the targets it checks, and its JSON form."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .idle import IdleResult
from .scaling import ScalingPoint
from .settings import MIB, RunSettings
from .spawn import SpawnResult
from .stats import CallResult
from .throughput import ThroughputPoint

MP_PIPE = "multiprocessing.Pipe"
C_SPIN = "C spin"
MEMCPY = "memcpy"
TARGET_SIZE = MIB


def call_label(transport: str) -> str:
    return f"call echo [{transport}]"


def gap_label(transport: str, gap_us: int) -> str:
    return f"call echo, {gap_us // 1000} ms gaps [{transport}]"


def raw_label(transport: str) -> str:
    return f"raw channel [{transport}]"


def futex_gap_label(gap_us: int) -> str:
    return f"C futex, {gap_us // 1000} ms gaps"


@dataclass(frozen=True)
class Target:
    """One performance goal, the value this run reached and the verdict.

    ``value`` is a ratio of ours to a baseline, or a percent of a core
    for idle CPU. ``status`` is PASS, MISS, or n/a when a row it needs
    was not measured.
    """

    name: str
    value: float | None
    comparison: str
    goal: float
    status: str


def judge(
    name: str, value: float | None, comparison: str, goal: float
) -> Target:
    if value is None:
        return Target(name, None, comparison, goal, "n/a")
    passed = {
        "<=": value <= goal,
        "<": value < goal,
        ">=": value >= goal,
    }[comparison]
    return Target(name, value, comparison, goal, "PASS" if passed else "MISS")


@dataclass(frozen=True)
class Results:
    """Everything one run measured, and the machine it ran on."""

    date: str
    machine: dict[str, Any]
    settings: RunSettings
    transports: list[str]
    worker: dict[str, Any]
    first_spawn_ms: float
    other_load_percent: float
    calls: list[CallResult]
    throughput: list[ThroughputPoint]
    scaling: list[ScalingPoint]
    idle: list[IdleResult]
    spawns: list[SpawnResult]
    notes: list[str]

    def call(self, label: str) -> CallResult | None:
        return next((row for row in self.calls if row.label == label), None)

    def throughput_at(self, label: str, size: int) -> float | None:
        for item in self.throughput:
            if item.label == label and item.size == size:
                return item.mib_per_s
        return None

    def targets(self) -> list[Target]:
        """Return every target for every transport, in report order."""
        targets = []
        for transport in self.transports:
            targets += self.transport_targets(transport)
        return targets

    def transport_targets(self, transport: str) -> list[Target]:
        gap_us = self.settings.gap_us
        tag = f"[{transport}]"
        call = self.call(call_label(transport))
        pipe = self.call(MP_PIPE)
        return [
            judge(
                f"call p50 / mp.Pipe p50 {tag}",
                ratio(call, pipe, "p50"),
                "<=",
                0.1,
            ),
            judge(
                f"call p99 / mp.Pipe p99 {tag}",
                ratio(call, pipe, "p99"),
                "<=",
                0.2,
            ),
            judge(
                f"raw p50 / C spin p50 {tag}",
                self.spin_ratio(transport),
                "<=",
                4.0,
            ),
            judge(
                f"gaps p50 / C futex gaps p50 {tag}",
                ratio(
                    self.call(gap_label(transport, gap_us)),
                    self.call(futex_gap_label(gap_us)),
                    "p50",
                ),
                "<=",
                1.5,
            ),
            judge(
                f"idle worker CPU, % of a core {tag}",
                self.idle_percent(transport),
                "<",
                0.1,
            ),
            judge(
                f"1 MiB call / memcpy {tag}",
                self.bandwidth_ratio(call_label(transport)),
                ">=",
                0.5,
            ),
            judge(
                f"1 MiB raw / memcpy {tag}",
                self.bandwidth_ratio(raw_label(transport)),
                ">=",
                0.5,
            ),
        ]

    def spin_ratio(self, transport: str) -> float | None:
        """Return raw channel p50 over C spin p50, or None without a floor.

        Under --placement same both sides of the spin share one CPU and
        hand it over by sched_yield, which is no floor to compare with.
        """
        if self.settings.placement.name == "same":
            return None
        spin = self.call(C_SPIN)
        return ratio(self.call(raw_label(transport)), spin, "p50")

    def idle_percent(self, transport: str) -> float | None:
        for item in self.idle:
            if item.transport == transport:
                return item.worker_percent
        return None

    def bandwidth_ratio(self, label: str) -> float | None:
        ours = self.throughput_at(label, TARGET_SIZE)
        memcpy = self.throughput_at(MEMCPY, TARGET_SIZE)
        if ours is None or memcpy is None:
            return None
        return ours / memcpy

    def to_json(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        plain["settings"] = self.settings.to_json()
        plain["targets"] = [dataclasses.asdict(t) for t in self.targets()]
        return plain


def ratio(
    ours: CallResult | None, baseline: CallResult | None, stat: str
) -> float | None:
    """Return ours over the baseline for ``stat``, or None if one is absent."""
    if ours is None or baseline is None:
        return None
    value: float = getattr(ours.latency_us, stat)
    base: float = getattr(baseline.latency_us, stat)
    return value / base


def write_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_json(), indent=2) + "\n")
