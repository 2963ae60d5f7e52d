"""Baselines outside Python: the C ping-pong floors and Node.js fork IPC.

Both programs time their own round trips and print JSON, so no Python
overhead enters their numbers. The C program is compiled into
benchmarks/build/ at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .peers import PAYLOAD, PAYLOAD_JSON
from .placement import Placement
from .settings import RunSettings
from .stats import CallResult, Summary

BENCHMARKS = Path(__file__).resolve().parents[1]
PINGPONG_SOURCE = BENCHMARKS / "c" / "pingpong.c"
BUILD_DIR = BENCHMARKS / "build"
NODE_SCRIPT = BENCHMARKS / "node" / "fork_pingpong.js"
C_MODES = ("pipe", "futex", "spin")
RUN_TIMEOUT_S = 600


class ToolMissing(Exception):
    """A compiler or runtime that a baseline needs is not installed."""


def compiler() -> str:
    """Return the C compiler to use: $CC, else cc, else gcc or clang.

    Raises ToolMissing when none is on PATH.
    """
    candidates = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    for name in candidates:
        if name and shutil.which(name):
            return name
    raise ToolMissing("no C compiler (cc, gcc or clang) on PATH")


def build_pingpong() -> Path:
    """Compile pingpong.c unless the binary is newer; return its path.

    Raises ToolMissing without a compiler and CalledProcessError when
    the compiler fails.
    """
    cc = compiler()
    binary = BUILD_DIR / "pingpong"
    source_time = PINGPONG_SOURCE.stat().st_mtime
    if binary.exists() and binary.stat().st_mtime >= source_time:
        return binary
    BUILD_DIR.mkdir(exist_ok=True)
    command = [cc, "-O2", "-std=gnu11", "-Wall", "-Wextra"]
    command += ["-o", str(binary), str(PINGPONG_SOURCE)]
    subprocess.run(command, check=True)
    return binary


def c_label(mode: str, gap_us: int) -> str:
    label = f"C {mode}"
    return f"{label}, {gap_us // 1000} ms gaps" if gap_us else label


def c_cpus(mode: str, placement: Placement) -> tuple[int, int] | tuple[()]:
    """Return the parent's and the child's CPU, or () to inherit.

    Spinning is a floor only with each side on its own CPU. On one CPU
    the waiting side keeps the CPU that its peer needs, so each round
    trip waits for a yield. Unless the placement pins everything to one
    CPU, the spin mode therefore runs on two CPUs.
    """
    if placement.name == "split":
        assert placement.host_cpus is not None
        peer = placement.peer_cpu()
        assert peer is not None
        return min(placement.host_cpus), peer
    allowed = sorted(os.sched_getaffinity(0))
    if mode == "spin" and placement.name == "any" and len(allowed) >= 2:
        return allowed[-2], allowed[-1]
    return ()


def run_pingpong(
    binary: Path, mode: str, gap_us: int, settings: RunSettings
) -> CallResult:
    """Run one C ping-pong mode and return its row."""
    calls = settings.gap_calls if gap_us else settings.calls
    command = [
        str(binary),
        mode,
        str(calls),
        str(settings.warmup),
        str(gap_us),
        str(len(PAYLOAD_JSON)),
    ]
    command += [str(cpu) for cpu in c_cpus(mode, settings.placement)]
    completed = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    report: dict[str, Any] = json.loads(completed.stdout)
    return CallResult(
        label=c_label(mode, gap_us),
        group="baseline",
        latency_us=Summary(
            p50=report["p50_ns"] / 1000,
            p99=report["p99_ns"] / 1000,
            mean=report["mean_ns"] / 1000,
        ),
        host_cpu_us=report["parent_cpu_ns"] / calls / 1000,
        peer_cpu_us=report["child_cpu_ns"] / calls / 1000,
        calls=calls,
        gap_us=gap_us,
    )


def measure_c(settings: RunSettings) -> list[CallResult]:
    """Run every C mode back to back, and futex with idle gaps too.

    Raises ToolMissing without a C compiler.
    """
    binary = build_pingpong()
    rows = [run_pingpong(binary, mode, 0, settings) for mode in C_MODES]
    rows.append(run_pingpong(binary, "futex", settings.gap_us, settings))
    return rows


# -- Node.js ---------------------------------------------------------------


def measure_node(settings: RunSettings) -> CallResult:
    """Run the Node.js fork ping-pong with PAYLOAD and return its row.

    Raises ToolMissing when ``node`` is not on PATH.
    """
    node = shutil.which("node")
    if node is None:
        raise ToolMissing("node is not on PATH")
    command = [
        node,
        str(NODE_SCRIPT),
        str(settings.calls),
        str(settings.warmup),
        "0",
        json.dumps(PAYLOAD),
    ]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as program:
        assert program.stdin is not None and program.stdout is not None
        # The script names its child first and waits, so that the child
        # is on its CPU before the first timed call.
        first_line = program.stdout.readline()
        if not first_line:
            program.wait()
            raise subprocess.CalledProcessError(program.returncode, command)
        settings.placement.pin_peer(json.loads(first_line)["child_pid"])
        output, _ = program.communicate("go\n", timeout=RUN_TIMEOUT_S)
    if program.returncode != 0:
        raise subprocess.CalledProcessError(program.returncode, command)
    return node_row(json.loads(output), settings.calls)


def node_row(report: dict[str, Any], calls: int) -> CallResult:
    return CallResult(
        label="Node.js fork IPC",
        group="baseline",
        latency_us=Summary.of(report["latencies_ns"], 1000),
        host_cpu_us=report["parent_cpu_us"] / calls,
        peer_cpu_us=report["child_cpu_us"] / calls,
        calls=calls,
    )
