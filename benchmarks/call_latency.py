"""Measure call latency and spawn time of sandboxed plugins.

One run measures, side by side on the same machine:

- round trips through ``PluginHost.execute_plugin`` to the bundled echo
  plugin (``noop`` and ``echo`` with a small JSON payload), against a
  multiprocessing.Pipe ping-pong and length-prefixed JSON over os.pipe,
  each with a child process that sends the payload back;
- spawn to first call on a new PluginHost, against bare interpreter
  start-up (``python -I -S -c pass``) and ``python -c "import json"``.

Usage: python benchmarks/call_latency.py [--calls N] [--spawns N]
[--placement same|split|any] [--json [PATH]] [--smoke]. Standard library
and psutil only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from sandbox import PluginHost

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "examples" / "plugins"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"
PLUGIN = "echo"
SANDBOX_ECHO = "sandbox echo"
HOST_SPAWN = "PluginHost() + first call"

DEFAULT_CALLS = 5000
DEFAULT_SPAWNS = 20
SMOKE_CALLS = 50
SMOKE_SPAWNS = 2

# A small request of about 100 bytes of JSON that uses every JSON type.
PAYLOAD: dict[str, Any] = {
    "user": "alice",
    "action": "render",
    "items": [1, 2, 3],
    "scale": 0.5,
    "draft": False,
    "note": "hi",
}
PAYLOAD_BYTES = len(json.dumps(PAYLOAD).encode())

HEADER = struct.Struct(">I")

# The child of the os.pipe baseline: it reads a 4-byte big-endian length
# and that many bytes of JSON, decodes them and sends them back the same
# way, until its input reaches end of file.
PIPE_ECHO_CHILD = """
import json, os, struct, sys

header = struct.Struct(">I")
read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])


def read_exact(count):
    chunks = []
    while count:
        chunk = os.read(read_fd, count)
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


while True:
    head = read_exact(header.size)
    if head is None:
        break
    body = read_exact(header.unpack(head)[0])
    if body is None:
        break
    reply = json.dumps(json.loads(body)).encode()
    os.write(write_fd, header.pack(len(reply)) + reply)
"""

# "python" is the interpreter that runs this script. Workers run its real
# path with -I -S, so the first command is their floor.
INTERPRETER_COMMANDS = [
    [sys.executable, "-I", "-S", "-c", "pass"],
    [sys.executable, "-c", "import json"],
]


# -- statistics --------------------------------------------------------------


def percentile(samples: Sequence[int], percent: float) -> int:
    """Return the nearest-rank percentile of ``samples``.

    With few samples the high percentiles are the maximum: p99 of 20
    samples is the slowest one.
    """
    ordered = sorted(samples)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """p50, p99 and mean of timing samples.

    ``of`` divides nanoseconds by ``scale_ns``: 1000 gives microseconds
    and 10**6 milliseconds.
    """

    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples_ns: Sequence[int], scale_ns: int) -> Summary:
        return cls(
            p50=percentile(samples_ns, 50) / scale_ns,
            p99=percentile(samples_ns, 99) / scale_ns,
            mean=sum(samples_ns) / len(samples_ns) / scale_ns,
        )

    def ratio_to(self, baseline: Summary) -> dict[str, float]:
        return {
            "p50": self.p50 / baseline.p50,
            "p99": self.p99 / baseline.p99,
        }


@dataclass(frozen=True)
class CallResult:
    """Round-trip latency and CPU time per call of one call benchmark.

    ``host_cpu_us`` is this process's CPU time (all threads) per call, and
    ``peer_cpu_us`` that of the worker or child process that replies.
    """

    label: str
    latency_us: Summary
    host_cpu_us: float
    peer_cpu_us: float


@dataclass(frozen=True)
class SpawnResult:
    """Start-up latency of one spawn benchmark, in milliseconds."""

    label: str
    latency_ms: Summary


# -- CPU placement -----------------------------------------------------------

PLACEMENTS = ("same", "split", "any")


@dataclass(frozen=True)
class Placement:
    """CPUs for this process and for the peer process that replies.

    None leaves the choice to the scheduler, which may put the peer on
    this process's CPU or on another from one run to the next. The two
    differ a lot (on a 2-vCPU AMD EPYC VM with Linux 6.18 the sandbox round
    trip took about twice as long across CPUs), so only pinned runs give
    ratios that compare like with like.
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
        if self.peer_cpus is not None:
            os.sched_setaffinity(pid, self.peer_cpus)

    def describe(self) -> str:
        if self.host_cpus is None or self.peer_cpus is None:
            return "any (not pinned, the scheduler places both)"
        host = format_cpus(self.host_cpus)
        if self.host_cpus == self.peer_cpus:
            return f"same (host and peer on CPU {host})"
        peer = format_cpus(self.peer_cpus)
        return f"split (host on CPU {host}, peer on CPU {peer})"


def format_cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def sorted_cpus(cpus: frozenset[int] | None) -> list[int] | None:
    return None if cpus is None else sorted(cpus)


def choose_placement(name: str) -> Placement:
    """Return the placement ``name`` on the CPUs this process may use."""
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


@dataclass(frozen=True)
class RunSettings:
    """Sample counts and CPU placement of one run."""

    calls: int
    warmup: int
    spawns: int
    placement: Placement

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "warmup": self.warmup,
            "spawns": self.spawns,
            "payload_bytes": PAYLOAD_BYTES,
            "placement": self.placement.name,
            "host_cpus": sorted_cpus(self.placement.host_cpus),
            "peer_cpus": sorted_cpus(self.placement.peer_cpus),
        }


# -- call round trips --------------------------------------------------------


def process_cpu_ns(process: psutil.Process) -> int:
    """Return user plus system CPU time of ``process`` in nanoseconds.

    NOTE: the kernel reports another process's CPU time in clock ticks
    (usually 10 ms), so short runs report it coarsely, even as zero.
    """
    times = process.cpu_times()
    seconds = float(times.user + times.system)
    return round(seconds * 1e9)


def measure_calls(
    label: str,
    call: Callable[[], object],
    peer_pid: int,
    settings: RunSettings,
) -> CallResult:
    """Time back-to-back calls after untimed warm-up calls."""
    settings.placement.pin_peer(peer_pid)
    calls = settings.calls
    for _ in range(settings.warmup):
        call()
    peer = psutil.Process(peer_pid)
    peer_start = process_cpu_ns(peer)
    cpu_start = time.process_time_ns()
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    host_cpu = time.process_time_ns() - cpu_start
    peer_cpu = process_cpu_ns(peer) - peer_start
    return CallResult(
        label=label,
        latency_us=Summary.of(samples, 1000),
        host_cpu_us=host_cpu / calls / 1000,
        peer_cpu_us=peer_cpu / calls / 1000,
    )


def check_echo(call: Callable[[], object], label: str) -> None:
    """Raise RuntimeError unless ``call`` returns the payload unchanged."""
    reply = call()
    if reply != PAYLOAD:
        raise RuntimeError(
            f"{label} returned {reply!r} instead of the payload it was sent"
        )


def measure_sandbox(
    host: PluginHost, settings: RunSettings
) -> list[CallResult]:
    """Time ``noop`` and then ``echo`` calls to a worker that is running."""

    def noop() -> object:
        return host.execute_plugin(PLUGIN, "noop")

    def echo() -> object:
        return host.execute_plugin(PLUGIN, "echo", PAYLOAD)

    check_echo(echo, "the echo plugin")
    pid = int(host.worker_status(PLUGIN)["pid"])
    return [
        measure_calls("sandbox noop", noop, pid, settings),
        measure_calls(SANDBOX_ECHO, echo, pid, settings),
    ]


def echo_connection(connection: Connection) -> None:
    """Send back every object received until None arrives."""
    while True:
        message = connection.recv()
        if message is None:
            break
        connection.send(message)


@contextmanager
def mp_pipe_peer() -> Iterator[tuple[Callable[[], object], int]]:
    """Yield a round-trip function over multiprocessing.Pipe and its pid."""
    # The spawn start method, so the child inherits no fork of the host's
    # threads, locks or memory.
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(
        target=echo_connection, args=(child_end,), daemon=True
    )
    child.start()
    child_end.close()

    def round_trip() -> object:
        parent_end.send(PAYLOAD)
        return parent_end.recv()

    try:
        assert child.pid is not None
        yield round_trip, child.pid
    finally:
        with suppress(OSError):
            parent_end.send(None)
        parent_end.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()


def read_exact(fd: int, count: int) -> bytes:
    """Read exactly ``count`` bytes from ``fd``.

    Raises EOFError if the writer closes the pipe first.
    """
    chunks = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise EOFError("the echo child closed its pipe")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


@contextmanager
def os_pipe_peer() -> Iterator[tuple[Callable[[], object], int]]:
    """Yield a round-trip function of framed JSON over os.pipe and its pid."""
    to_child_read, to_child_write = os.pipe()
    from_child_read, from_child_write = os.pipe()
    child = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-c",
            PIPE_ECHO_CHILD,
            str(to_child_read),
            str(from_child_write),
        ],
        pass_fds=(to_child_read, from_child_write),
    )
    os.close(to_child_read)
    os.close(from_child_write)

    def round_trip() -> object:
        body = json.dumps(PAYLOAD).encode()
        os.write(to_child_write, HEADER.pack(len(body)) + body)
        (length,) = HEADER.unpack(read_exact(from_child_read, HEADER.size))
        return json.loads(read_exact(from_child_read, length))

    try:
        yield round_trip, child.pid
    finally:
        os.close(to_child_write)
        os.close(from_child_read)
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def measure_baselines(settings: RunSettings) -> list[CallResult]:
    """Time the same payload over multiprocessing.Pipe and over os.pipe."""
    results = []
    peers = [
        ("multiprocessing.Pipe", mp_pipe_peer),
        ("os.pipe + JSON", os_pipe_peer),
    ]
    for label, peer in peers:
        with peer() as (round_trip, pid):
            check_echo(round_trip, label)
            results.append(measure_calls(label, round_trip, pid, settings))
    return results


# -- spawn to first call -----------------------------------------------------


def time_new_host() -> tuple[int, int]:
    """Time one cold spawn on a new host, in ns.

    Returns the time from PluginHost() to the first call's return and the
    time of that first call alone. The host is closed afterwards, outside
    the timed span.
    """
    start = time.perf_counter_ns()
    host = PluginHost([PLUGIN_DIR])
    try:
        created = time.perf_counter_ns()
        host.execute_plugin(PLUGIN, "noop")
        done = time.perf_counter_ns()
    finally:
        host.close()
    return done - start, done - created


def measure_host_spawns(spawns: int) -> list[SpawnResult]:
    """Time ``spawns`` cold workers, each on a new host."""
    with_host: list[int] = []
    first_call: list[int] = []
    for _ in range(spawns):
        total, call = time_new_host()
        with_host.append(total)
        first_call.append(call)
    return [
        SpawnResult(HOST_SPAWN, Summary.of(with_host, 10**6)),
        SpawnResult("first call, new host", Summary.of(first_call, 10**6)),
    ]


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
        results.append(SpawnResult(label, Summary.of(samples, 10**6)))
    return results


# -- machine and report ------------------------------------------------------


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


def describe_worker(host: PluginHost) -> dict[str, Any]:
    """Return the worker's own report of the restrictions it runs under."""
    status = host.worker_status(PLUGIN)
    keys = ("uid", "gid", "no_new_privs", "seccomp", "dumpable")
    return {key: status.get(key) for key in keys}


CALL_COLUMNS = f"{'round trip, us':<28}{'p50':>9}{'p99':>9}{'mean':>9}"
CALL_COLUMNS += f"{'host cpu':>12}{'peer cpu':>10}"
RATIO_COLUMNS = f"{'ours / baseline':<40}{'p50':>9}{'p99':>9}"
SPAWN_COLUMNS = f"{'spawn to first call, ms':<28}{'p50':>9}{'p99':>9}"
SPAWN_COLUMNS += f"{'mean':>9}"


def format_call_row(result: CallResult) -> str:
    summary = result.latency_us
    return (
        f"{result.label:<28}{summary.p50:>9.1f}{summary.p99:>9.1f}"
        f"{summary.mean:>9.1f}{result.host_cpu_us:>12.1f}"
        f"{result.peer_cpu_us:>10.1f}"
    )


def format_spawn_row(result: SpawnResult) -> str:
    summary = result.latency_ms
    return (
        f"{result.label:<28}{summary.p50:>9.2f}{summary.p99:>9.2f}"
        f"{summary.mean:>9.2f}"
    )


def format_ratio_row(label: str, ratio: dict[str, float]) -> str:
    return f"{label:<40}{ratio['p50']:>9.2f}{ratio['p99']:>9.2f}"


def call_ratios(calls: list[CallResult]) -> dict[str, dict[str, float]]:
    """Return sandbox echo over each baseline, which send the same payload."""
    echo = next(r for r in calls if r.label == SANDBOX_ECHO)
    return {
        f"echo / {base.label}": echo.latency_us.ratio_to(base.latency_us)
        for base in calls
        if not base.label.startswith("sandbox")
    }


def spawn_ratios(spawns: list[SpawnResult]) -> dict[str, dict[str, float]]:
    """Return PluginHost() + first call over each interpreter start-up."""
    ours = next(r for r in spawns if r.label == HOST_SPAWN)
    return {
        f"spawn / {base.label}": ours.latency_ms.ratio_to(base.latency_ms)
        for base in spawns
        if base.label.startswith("python")
    }


@dataclass(frozen=True)
class Results:
    """Everything one run measured, and the machine it ran on."""

    date: str
    machine: dict[str, Any]
    settings: RunSettings
    worker: dict[str, Any]
    first_spawn_ms: float
    other_load_percent: float
    calls: list[CallResult]
    spawns: list[SpawnResult]

    def to_json(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        plain["settings"] = self.settings.to_json()
        plain["call_ratios"] = call_ratios(self.calls)
        plain["spawn_ratios"] = spawn_ratios(self.spawns)
        return plain


def format_header(results: Results) -> list[str]:
    machine = results.machine
    settings = results.settings
    worker = results.worker
    return [
        f"cpu: {machine['cpu_model']}, {machine['nproc']} CPUs (nproc), "
        f"{machine['memory_gib']} GiB",
        f"os: Linux {machine['kernel']}, Python {machine['python']}, "
        f"host uid {machine['host_uid']}",
        f"worker: uid {worker['uid'][0]}, seccomp mode {worker['seccomp']}, "
        f"no_new_privs {worker['no_new_privs']}",
        f"run: {settings.calls} calls after {settings.warmup} warm-up, "
        f"{settings.spawns} spawns, payload {PAYLOAD_BYTES} B of JSON",
        f"placement: {settings.placement.describe()}",
        f"load: other processes used {results.other_load_percent:.0f}% "
        "of the machine's CPU time during the run",
    ]


def format_report(results: Results) -> str:
    """Return the results as plain-text tables of at most 79 columns."""
    lines = [
        *format_header(results),
        "",
        CALL_COLUMNS,
        *(format_call_row(r) for r in results.calls),
        "",
        RATIO_COLUMNS,
        *(
            format_ratio_row(k, v)
            for k, v in call_ratios(results.calls).items()
        ),
        "",
        SPAWN_COLUMNS,
        *(format_spawn_row(r) for r in results.spawns),
        "",
        RATIO_COLUMNS,
        *(
            format_ratio_row(k, v)
            for k, v in spawn_ratios(results.spawns).items()
        ),
        "",
        "cpu columns: CPU time per call in us of this process (host)",
        "and of the worker or child that answers (peer)",
        "first spawn in this process, not in the rows above: "
        f"{results.first_spawn_ms:.2f} ms",
    ]
    return "\n".join(lines)


def write_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_json(), indent=2) + "\n")


# -- command line ------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure call latency and spawn time of sandboxed "
        "plugins against multiprocessing and interpreter baselines."
    )
    parser.add_argument(
        "--calls",
        type=positive_int,
        default=DEFAULT_CALLS,
        help=f"timed calls per round-trip row (default {DEFAULT_CALLS})",
    )
    parser.add_argument(
        "--spawns",
        type=positive_int,
        default=DEFAULT_SPAWNS,
        help=f"timed starts per spawn row (default {DEFAULT_SPAWNS})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=DEFAULT_JSON,
        default=None,
        metavar="PATH",
        help="also write the results as JSON to PATH "
        f"(default {DEFAULT_JSON.relative_to(REPO)})",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="same",
        help="CPUs for the round-trip rows: 'same' pins this process, its "
        "workers and children to one CPU, 'split' puts each peer on a "
        "second CPU, 'any' leaves placement to the scheduler "
        "(default same)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"a quick check that every row runs: {SMOKE_CALLS} calls and "
        f"{SMOKE_SPAWNS} spawns, overriding --calls and --spawns",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls = SMOKE_CALLS
        args.spawns = SMOKE_SPAWNS
    return args


def run(settings: RunSettings) -> Results:
    """Run every benchmark once and return the results."""
    # The machine is described before pinning narrows this process's CPUs.
    machine = describe_machine()
    settings.placement.pin_host()
    start = CpuSnapshot.take()
    # The first host in a process also probes the interpreter's libraries
    # once, so it is timed apart from the cold-spawn rows.
    first_spawn_ns, _ = time_new_host()
    with PluginHost([PLUGIN_DIR]) as host:
        sandbox_calls = measure_sandbox(host, settings)
        worker = describe_worker(host)
    call_results = sandbox_calls + measure_baselines(settings)
    spawn_results = measure_host_spawns(settings.spawns)
    spawn_results += measure_interpreter_starts(settings.spawns)
    end = CpuSnapshot.take()
    return Results(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine,
        settings=settings,
        worker=worker,
        first_spawn_ms=first_spawn_ns / 10**6,
        other_load_percent=other_load_percent(start, end),
        calls=call_results,
        spawns=spawn_results,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = RunSettings(
        calls=args.calls,
        warmup=max(10, args.calls // 10),
        spawns=args.spawns,
        placement=choose_placement(args.placement),
    )
    results = run(settings)
    print(format_report(results))
    if args.json is not None:
        write_json(results, args.json)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
