"""Run the benchmark suite of sandboxed plugin calls against baselines.

One run measures, side by side on the same machine, with p50, p99 and CPU
time per call:

- ours: PluginHost.execute_plugin calls to the bundled echo plugin, back
  to back and with idle gaps, and the raw channel (frames of bytes echoed
  over the transport, without JSON-RPC), on every transport PluginHost
  offers;
- baselines: multiprocessing.Pipe, length-prefixed JSON over os.pipe and
  over a socketpair, Node.js child_process.fork IPC, and C ping-pongs over
  a pipe, a futex in shared memory and pure spinning (the floors);
- round-trip throughput from 100 B to 16 MiB against memcpy;
- calls per second with 1 to 8 threads over 1 to 4 plugins;
- the CPU time of an idle worker;
- spawn to first call against interpreter start-up.

It prints a table, checks the performance targets, and writes the results
as JSON and as a PNG plot (the plot needs the ``bench`` extra).

Usage: python benchmarks/suite.py [--smoke] [--calls N]
[--placement any|same|split] [--json PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from benchlib import native, peers
from benchlib.hosts import (
    ECHO_PLUGIN,
    echo_copies,
    open_host,
    transports_to_measure,
    worker_pid,
)
from benchlib.idle import IdleResult, measure_idle
from benchlib.placement import PLACEMENTS, choose_placement
from benchlib.plot import matplotlib_missing, write_plot
from benchlib.rawchannel import raw_peers
from benchlib.report import format_report
from benchlib.results import (
    Results,
    call_label,
    gap_label,
    raw_label,
    write_json,
)
from benchlib.scaling import ScalingPoint, measure_scaling
from benchlib.settings import MIB, RunSettings
from benchlib.spawn import (
    SpawnResult,
    measure_host_spawns,
    measure_interpreter_starts,
    time_new_host,
)
from benchlib.stats import CallResult, CpuSnapshot, other_load_percent
from benchlib.throughput import (
    ThroughputPoint,
    measure_full_calls,
    measure_memcpy,
    measure_raw,
)
from benchlib.timing import Row, check_echo, measure_row

from sandbox import PluginHost, SandboxError

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Collected:
    """The parts of Results that the measuring steps fill in."""

    calls: list[CallResult] = dataclasses.field(default_factory=list)
    throughput: list[ThroughputPoint] = dataclasses.field(default_factory=list)
    scaling: list[ScalingPoint] = dataclasses.field(default_factory=list)
    idle: list[IdleResult] = dataclasses.field(default_factory=list)
    spawns: list[SpawnResult] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    transports: list[str] = dataclasses.field(default_factory=list)
    worker: dict[str, Any] = dataclasses.field(default_factory=dict)


# -- ours --------------------------------------------------------------------


def max_payload(settings: RunSettings) -> int:
    """Return a frame limit with room for the largest payload's framing."""
    return max(settings.payload_sizes) + MIB


def measure_raw_channels(settings: RunSettings, into: Collected) -> None:
    """Time raw frames over each transport: latency, then throughput."""
    found, notes = raw_peers()
    into.notes += notes
    for transport, raw_peer in found.items():
        label = raw_label(transport)
        with raw_peer(max_payload(settings)) as (round_trip, pid):

            def call(round_trip: peers.BytesRoundTrip = round_trip) -> bytes:
                return round_trip(peers.PAYLOAD_JSON)

            check_echo(call, peers.PAYLOAD_JSON, label)
            into.calls.append(
                measure_row(Row(label, "ours", call, pid), settings)
            )
            into.throughput += measure_raw(round_trip, label, settings)


def call_rows(host: PluginHost, transport: str, gap_us: int) -> list[Row]:
    """Return the execute_plugin rows of one host."""
    pid = worker_pid(host, ECHO_PLUGIN)

    def echo() -> object:
        return host.execute_plugin(ECHO_PLUGIN, "echo", peers.PAYLOAD)

    def noop() -> object:
        return host.execute_plugin(ECHO_PLUGIN, "noop")

    check_echo(echo, peers.PAYLOAD, "the echo plugin")
    return [
        Row(call_label(transport), "ours", echo, pid),
        Row(f"call noop [{transport}]", "ours", noop, pid),
        Row(gap_label(transport, gap_us), "ours", echo, pid, gap_us),
    ]


def describe_worker(host: PluginHost) -> dict[str, Any]:
    """Return the worker's own report of the restrictions it runs under."""
    status = host.worker_status(ECHO_PLUGIN)
    keys = ("uid", "gid", "no_new_privs", "seccomp", "dumpable")
    return {key: status.get(key) for key in keys}


def measure_transport(
    transport: str, settings: RunSettings, into: Collected
) -> None:
    """Measure calls, payloads, idle CPU, scaling and spawns of a transport."""
    with open_host(transport) as host:
        for row in call_rows(host, transport, settings.gap_us):
            into.calls.append(measure_row(row, settings))
        into.throughput += measure_full_calls(
            host, call_label(transport), settings
        )
        into.worker = into.worker or describe_worker(host)
    with open_host(transport) as host:
        into.idle.append(measure_idle(host, transport, settings.idle_seconds))
    plugin_count = max(settings.plugin_counts)
    with echo_copies(plugin_count) as (folder, names):
        scaling_host = open_host(transport, [folder], plugin_count)
        with scaling_host:
            into.scaling += measure_scaling(
                scaling_host, names, transport, settings
            )
    into.spawns.append(measure_host_spawns(transport, settings.spawns))
    into.transports.append(transport)


def measure_transports(settings: RunSettings, into: Collected) -> None:
    """Measure each transport.

    A failure on the first, default transport stops the run. One on
    another transport is noted in the report and the run goes on.
    """
    default, *others = transports_to_measure()
    measure_transport(default, settings, into)
    for transport in others:
        try:
            measure_transport(transport, settings, into)
        except (SandboxError, ValueError, OSError) as error:
            into.notes.append(f"transport {transport} failed: {error}")


# -- baselines ---------------------------------------------------------------


def measure_python_baselines(settings: RunSettings, into: Collected) -> None:
    python_peers = [
        ("multiprocessing.Pipe", peers.mp_pipe_peer),
        ("os.pipe + JSON", peers.os_pipe_peer),
        ("socketpair + JSON", peers.socketpair_peer),
    ]
    for label, peer in python_peers:
        with peer() as (round_trip, pid):
            check_echo(round_trip, peers.PAYLOAD, label)
            row = Row(label, "baseline", round_trip, pid)
            into.calls.append(measure_row(row, settings))


def measure_native_baselines(settings: RunSettings, into: Collected) -> None:
    """Run the Node.js and C baselines, noting a missing toolchain."""
    try:
        into.calls.append(native.measure_node(settings))
    except native.ToolMissing as missing:
        into.notes.append(f"Node.js row skipped: {missing}")
    try:
        into.calls += native.measure_c(settings)
    except native.ToolMissing as missing:
        into.notes.append(f"C rows skipped: {missing}")
        return
    spin_cpus = native.c_cpus("spin", settings.placement)
    if spin_cpus:
        parent, child = spin_cpus
        into.notes.append(
            f"C spin ran its parent on CPU {parent} and its child on CPU "
            f"{child}, since a spin on one CPU waits for time slices"
        )
    elif settings.placement.name == "same":
        into.notes.append(
            "C spin shared one CPU (--placement same), so it measures "
            "sched_yield hand-overs rather than a floor, and the raw "
            "channel's target against it is not judged"
        )


# -- machine -----------------------------------------------------------------


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


def describe_machine() -> dict[str, Any]:
    """Return the facts a reader needs to compare two runs."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 0
    return {
        "nproc": cpus,
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "host_uid": os.geteuid(),
    }


# -- run ---------------------------------------------------------------------


def run(settings: RunSettings) -> Results:
    """Run every part of the suite once and return the results."""
    # The machine is described before pinning narrows this process's CPUs.
    machine = describe_machine()
    settings.placement.pin_host()
    start = CpuSnapshot.take()

    collected = Collected()
    measure_raw_channels(settings, collected)
    measure_python_baselines(settings, collected)
    measure_native_baselines(settings, collected)
    # The first host in a process also probes the interpreter's shared
    # libraries once, so its spawn is kept out of the spawn rows.
    first_spawn_ns = time_new_host(transports_to_measure()[0])
    measure_transports(settings, collected)
    collected.throughput += measure_memcpy(settings)
    collected.spawns += measure_interpreter_starts(settings.spawns)

    end = CpuSnapshot.take()
    return Results(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine,
        settings=settings,
        transports=collected.transports,
        worker=collected.worker,
        first_spawn_ms=first_spawn_ns / 10**6,
        other_load_percent=other_load_percent(start, end),
        calls=sort_calls(collected.calls, collected.transports),
        throughput=collected.throughput,
        scaling=collected.scaling,
        idle=collected.idle,
        spawns=collected.spawns,
        notes=collected.notes,
    )


def sort_calls(
    calls: list[CallResult], transports: list[str]
) -> list[CallResult]:
    """Put our rows first, by transport with the raw channel last."""

    def key(row: CallResult) -> tuple[bool, int, bool]:
        if row.group != "ours":
            return (True, 0, False)
        transport = row.label.rpartition("[")[2].rstrip("]")
        order = (
            transports.index(transport)
            if transport in transports
            else len(transports)
        )
        return (False, order, row.label.startswith("raw"))

    return sorted(calls, key=key)


# -- command line ------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure sandboxed plugin calls against IPC baselines "
        "and C floors, print a table and write JSON and a PNG plot."
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny counts that only check that every part runs; skips "
        "16 MiB payloads and writes smoke.json and smoke.png by default",
    )
    parser.add_argument(
        "--calls",
        type=positive_int,
        help="timed back-to-back calls per latency row (default 5000)",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="any",
        help="CPUs of the latency rows: 'any' leaves placement to the "
        "scheduler, 'same' pins this process and every peer to one CPU, "
        "'split' puts each peer on a second CPU (default any)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="where to write the results as JSON (default "
        "benchmarks/results/latest.json)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        metavar="PATH",
        help="where to write the plot (default benchmarks/results/latest.png)",
    )
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> RunSettings:
    placement = choose_placement(args.placement)
    if args.smoke:
        settings = RunSettings.smoke_run(placement)
    else:
        settings = RunSettings(placement=placement)
    if args.calls is not None:
        settings = dataclasses.replace(settings, calls=args.calls)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    stem = "smoke" if settings.smoke else "latest"
    json_path = args.json or RESULTS_DIR / f"{stem}.json"
    png_path = args.png or RESULTS_DIR / f"{stem}.png"
    results = run(settings)
    print(format_report(results))
    write_json(results, json_path)
    print(f"results written to {json_path}")
    missing = matplotlib_missing()
    if missing is None:
        write_plot(results, png_path)
        print(f"plot written to {png_path}")
    else:
        print(textwrap.fill(f"note: {missing}", 79, subsequent_indent="  "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
