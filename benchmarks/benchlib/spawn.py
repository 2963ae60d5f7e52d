"""Spawn to first call, against bare interpreter start-up."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

from .hosts import ECHO_PLUGIN, open_host
from .stats import Summary

# "python" is the interpreter that runs the suite. Workers run its real
# path with -I -S, so the first command is their floor.
INTERPRETER_COMMANDS = [
    [sys.executable, "-I", "-S", "-c", "pass"],
    [sys.executable, "-c", "import json"],
]


@dataclass(frozen=True)
class SpawnResult:
    """Start-up latency of one spawn row, in milliseconds."""

    label: str
    group: str
    latency_ms: Summary


def time_new_host(transport: str) -> int:
    """Return ns from PluginHost() to the return of its first call.

    The first call starts a cold worker. The host is closed afterwards,
    outside the timed span.
    """
    start = time.perf_counter_ns()
    host = open_host(transport)
    try:
        host.execute_plugin(ECHO_PLUGIN, "noop")
        return time.perf_counter_ns() - start
    finally:
        host.close()


def measure_host_spawns(transport: str, spawns: int) -> SpawnResult:
    samples = [time_new_host(transport) for _ in range(spawns)]
    return SpawnResult(
        f"PluginHost() + call [{transport}]",
        "ours",
        Summary.of(samples, 10**6),
    )


def time_command(argv: list[str]) -> int:
    """Return ns from starting ``argv`` to its exit.

    Raises CalledProcessError if the command fails.
    """
    start = time.perf_counter_ns()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter_ns() - start


def measure_interpreter_starts(spawns: int) -> list[SpawnResult]:
    """Time each interpreter command ``spawns`` times after one untimed run."""
    results = []
    for argv in INTERPRETER_COMMANDS:
        time_command(argv)
        samples = [time_command(argv) for _ in range(spawns)]
        label = "python " + subprocess.list2cmdline(argv[1:])
        results.append(
            SpawnResult(label, "baseline", Summary.of(samples, 10**6))
        )
    return results
