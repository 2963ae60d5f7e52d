"""CPU placement of the benchmark and of the processes that reply to it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

PLACEMENTS = ("any", "same", "split")


@dataclass(frozen=True)
class Placement:
    """CPUs for this process and for each peer process that replies.

    None leaves the choice to the scheduler, which may put the peer on
    this process's CPU or on another from one row to the next. The two
    differ a lot: on a 2-vCPU AMD EPYC VM with Linux 6.18 a C futex
    ping-pong took about 5 us on one CPU and about 40 us across two.
    """

    name: str
    host_cpus: frozenset[int] | None
    peer_cpus: frozenset[int] | None

    def pin_host(self) -> None:
        """Pin the calling thread and everything it starts afterwards.

        Linux sets affinity per thread, and new threads and child processes
        inherit it, so this runs before the first PluginHost starts its
        spawner thread.
        """
        if self.host_cpus is not None:
            os.sched_setaffinity(0, self.host_cpus)

    def pin_peer(self, pid: int) -> None:
        """Move the main thread of process ``pid`` to the peer CPUs."""
        if self.peer_cpus is not None:
            os.sched_setaffinity(pid, self.peer_cpus)

    def peer_cpu(self) -> int | None:
        """Return the one peer CPU of a split placement, else None.

        Programs that fork their own peer (the C ping-pong) pin it
        themselves; under ``same`` the peer inherits the host's CPU.
        """
        if self.peer_cpus is None or self.peer_cpus == self.host_cpus:
            return None
        return min(self.peer_cpus)

    def describe(self) -> str:
        if self.host_cpus is None or self.peer_cpus is None:
            return "any (not pinned, the scheduler places both sides)"
        host = format_cpus(self.host_cpus)
        if self.host_cpus == self.peer_cpus:
            return f"same (host and peer on CPU {host})"
        peer = format_cpus(self.peer_cpus)
        return f"split (host on CPU {host}, peer on CPU {peer})"

    def to_json(self) -> dict[str, Any]:
        return {
            "placement": self.name,
            "host_cpus": sorted_cpus(self.host_cpus),
            "peer_cpus": sorted_cpus(self.peer_cpus),
        }


def format_cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def sorted_cpus(cpus: frozenset[int] | None) -> list[int] | None:
    return None if cpus is None else sorted(cpus)


def choose_placement(name: str) -> Placement:
    """Return the placement ``name`` on the CPUs this process may use.

    Raises SystemExit with advice when the platform lacks CPU affinity or
    ``split`` finds only one CPU.
    """
    if name == "any":
        return Placement(name, None, None)
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit(
            f"--placement {name} needs CPU affinity, which this platform "
            "lacks. Use --placement any."
        )
    allowed = sorted(os.sched_getaffinity(0))
    if name == "same":
        cpu = frozenset({allowed[-1]})
        return Placement(name, cpu, cpu)
    if len(allowed) < 2:
        raise SystemExit(
            "--placement split needs two CPUs, but this process may use "
            f"only CPU {allowed[0]}. Use --placement same."
        )
    return Placement(name, frozenset({allowed[-2]}), frozenset({allowed[-1]}))
