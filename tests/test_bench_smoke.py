"""The benchmark suite runs end to end in its smoke mode.

Only the shape of the output is checked: every row is printed with
numbers, every timing is positive, and each target's verdict agrees with
its value and goal. Speed is never asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
SUITE = BENCHMARKS / "suite.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The ``sandbox`` console script, run with this interpreter.
CLI_MAIN = "import sys; from sandbox.cli import main; sys.exit(main())"

sys.path.insert(0, str(BENCHMARKS))

from benchlib.native import ToolMissing, compiler  # noqa: E402
from benchlib.results import judge  # noqa: E402
from benchlib.stats import percentile  # noqa: E402

STREAM_ROWS = [
    "call echo [stream]",
    "call noop [stream]",
    "call echo, 1 ms gaps [stream]",
    "raw channel [stream]",
]
PYTHON_BASELINE_ROWS = [
    "multiprocessing.Pipe",
    "os.pipe + JSON",
    "socketpair + JSON",
]
NODE_ROW = "Node.js fork IPC"
C_ROWS = ["C pipe", "C futex", "C spin", "C futex, 1 ms gaps"]
SMOKE_SIZES = ["100 B", "10 KiB", "1 MiB"]
THREAD_ROWS = ["1 thread", "2 threads", "4 threads", "8 threads"]
SPAWN_ROWS = [
    "PluginHost() + call [stream]",
    "python -I -S -c pass",
    'python -c "import json"',
]
TARGETS_PER_TRANSPORT = 7


def has_compiler() -> bool:
    try:
        compiler()
    except ToolMissing:
        return False
    return True


def run_smoke(command: list[str], folder: Path) -> dict[str, Any]:
    """Run ``command`` with smoke options; return its output and JSON."""
    json_path = folder / "results.json"
    png_path = folder / "plot.png"
    completed = subprocess.run(
        [
            *command,
            "--smoke",
            "--json",
            str(json_path),
            "--png",
            str(png_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return {
        "stdout": completed.stdout,
        "json": json.loads(json_path.read_text()),
        "png": png_path,
    }


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the suite once with --smoke and return its output and files."""
    folder = tmp_path_factory.mktemp("bench")
    return run_smoke([sys.executable, str(SUITE)], folder)


def row_numbers(stdout: str, label: str) -> list[float]:
    """Return the numbers printed after ``label`` on its table row.

    A row is a line that starts with ``label`` followed only by numbers,
    so "C futex" does not match "C futex, 1 ms gaps".
    """
    rows = []
    for line in stdout.splitlines():
        if line.startswith(label):
            fields = line[len(label) :].split()
            if fields and all(is_number(field) for field in fields):
                rows.append([float(field) for field in fields])
    assert len(rows) == 1, f"expected one row {label!r} in:\n{stdout}"
    return rows[0]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_latency_row(stdout: str, label: str) -> None:
    p50, p99, mean, host_cpu, peer_cpu = row_numbers(stdout, label)
    assert p50 > 0
    assert p99 >= p50
    assert mean > 0
    assert host_cpu > 0
    # Another process's CPU time may round to 0.0 us per call.
    assert peer_cpu >= 0


# -- latency rows -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("label", STREAM_ROWS + PYTHON_BASELINE_ROWS)
def test_latency_row_printed(smoke_run: dict[str, Any], label: str) -> None:
    check_latency_row(smoke_run["stdout"], label)


@pytest.mark.slow
def test_every_transport_has_rows(smoke_run: dict[str, Any]) -> None:
    transports = smoke_run["json"]["transports"]
    assert transports[0] == "stream"
    for transport in transports:
        for row in ("call echo", "call noop", "call echo, 1 ms gaps"):
            check_latency_row(smoke_run["stdout"], f"{row} [{transport}]")


@pytest.mark.slow
def test_node_row_or_note(smoke_run: dict[str, Any]) -> None:
    if shutil.which("node") is None:
        assert (
            "Node.js row skipped: node is not on PATH" in (smoke_run["stdout"])
        )
    else:
        check_latency_row(smoke_run["stdout"], NODE_ROW)


@pytest.mark.slow
def test_c_rows_or_note(smoke_run: dict[str, Any]) -> None:
    if not has_compiler():
        assert "C rows skipped" in smoke_run["stdout"]
        return
    for label in C_ROWS:
        check_latency_row(smoke_run["stdout"], label)


@pytest.mark.slow
def test_call_counts_recorded(smoke_run: dict[str, Any]) -> None:
    settings = smoke_run["json"]["settings"]
    for row in smoke_run["json"]["calls"]:
        expected = (
            settings["gap_calls"] if row["gap_us"] else settings["calls"]
        )
        assert row["calls"] == expected, row["label"]


# -- throughput, scaling, idle and spawn --------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("size", SMOKE_SIZES)
def test_throughput_row_printed(smoke_run: dict[str, Any], size: str) -> None:
    numbers = row_numbers(smoke_run["stdout"], size)
    # call and raw per transport, then memcpy
    assert len(numbers) == 2 * len(smoke_run["json"]["transports"]) + 1
    assert all(number > 0 for number in numbers)


@pytest.mark.slow
def test_smoke_skips_16_mib(smoke_run: dict[str, Any]) -> None:
    sizes = {point["size"] for point in smoke_run["json"]["throughput"]}
    assert sizes == {100, 10 * 1024, 1024 * 1024}
    assert not any(
        line.startswith("16 MiB") for line in smoke_run["stdout"].splitlines()
    )


@pytest.mark.slow
@pytest.mark.parametrize("label", THREAD_ROWS)
def test_scaling_row_printed(smoke_run: dict[str, Any], label: str) -> None:
    rows = [
        line
        for line in smoke_run["stdout"].splitlines()
        if line.startswith(label + " ")
    ]
    assert len(rows) == len(smoke_run["json"]["transports"])
    for row in rows:
        # three cells of "calls/s (cores busy)"
        assert row.count("(") == 3, row


@pytest.mark.slow
def test_scaling_covers_every_pair(smoke_run: dict[str, Any]) -> None:
    results = smoke_run["json"]
    for transport in results["transports"]:
        points = [p for p in results["scaling"] if p["transport"] == transport]
        pairs = {(p["threads"], p["plugins"]) for p in points}
        assert pairs == {
            (threads, plugins)
            for threads in (1, 2, 4, 8)
            for plugins in (1, 2, 4)
        }
        for point in points:
            assert point["calls"] > 0, point
            assert point["calls_per_s"] > 0, point
            assert point["cores_busy"] > 0, point


@pytest.mark.slow
def test_idle_cpu_measured(smoke_run: dict[str, Any]) -> None:
    results = smoke_run["json"]
    idle = results["idle"]
    assert [item["transport"] for item in idle] == results["transports"]
    for item in idle:
        assert item["seconds"] >= results["settings"]["idle_seconds"]
        assert item["worker_percent"] >= 0
        assert item["worker_psutil_percent"] >= 0
        assert item["host_percent"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("label", SPAWN_ROWS)
def test_spawn_row_printed(smoke_run: dict[str, Any], label: str) -> None:
    p50, p99, mean = row_numbers(smoke_run["stdout"], label)
    assert p50 > 0
    assert p99 >= p50
    assert mean > 0


# -- targets and files --------------------------------------------------------


@pytest.mark.slow
def test_targets_printed(smoke_run: dict[str, Any]) -> None:
    results = smoke_run["json"]
    targets = results["targets"]
    assert len(targets) == TARGETS_PER_TRANSPORT * len(results["transports"])
    for target in targets:
        rows = [
            line
            for line in smoke_run["stdout"].splitlines()
            if line.startswith(target["name"])
        ]
        assert len(rows) == 1, target["name"]
        assert rows[0].split()[-1] == target["status"]


@pytest.mark.slow
def test_stream_targets_all_judged(smoke_run: dict[str, Any]) -> None:
    if not has_compiler():
        pytest.skip("the C floors need a C compiler")
    stream = [
        t for t in smoke_run["json"]["targets"] if "[stream]" in t["name"]
    ]
    assert {t["status"] for t in stream} <= {"PASS", "MISS"}


@pytest.mark.slow
def test_target_verdicts_match_values(smoke_run: dict[str, Any]) -> None:
    for target in smoke_run["json"]["targets"]:
        if target["value"] is None:
            assert target["status"] == "n/a"
            continue
        again = judge(
            target["name"],
            target["value"],
            target["comparison"],
            target["goal"],
        )
        assert target["status"] == again.status, target


@pytest.mark.slow
def test_output_fits_79_columns(smoke_run: dict[str, Any]) -> None:
    wide = [
        line for line in smoke_run["stdout"].splitlines() if len(line) > 79
    ]
    assert wide == []


@pytest.mark.slow
def test_json_records_run_settings(smoke_run: dict[str, Any]) -> None:
    results = smoke_run["json"]
    settings = results["settings"]
    assert settings["smoke"] is True
    assert settings["calls"] == 50
    assert settings["placement"] == "any"
    assert settings["host_cpus"] is None
    assert results["machine"]["nproc"] > 0
    assert results["machine"]["kernel"]
    assert results["first_spawn_ms"] > 0


@pytest.mark.slow
def test_json_worker_locked_down(smoke_run: dict[str, Any]) -> None:
    worker = smoke_run["json"]["worker"]
    assert worker["seccomp"] == 2
    assert worker["no_new_privs"] == 1
    if smoke_run["json"]["machine"]["host_uid"] == 0:
        assert worker["uid"][0] != 0


@pytest.mark.slow
def test_plot_written_or_note(smoke_run: dict[str, Any]) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in smoke_run["stdout"]
        assert not smoke_run["png"].exists()
        return
    assert smoke_run["png"].read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_cli_bench_runs_suite(tmp_path: Path) -> None:
    command = [sys.executable, "-c", CLI_MAIN, "bench"]
    run = run_smoke(command, tmp_path)
    assert run["json"]["settings"]["smoke"] is True
    assert "target" in run["stdout"]


# -- helpers of the suite -----------------------------------------------------


def test_percentile_nearest_rank() -> None:
    samples = list(range(1, 101))
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile([7, 3], 99) == 7
    assert percentile([5], 50) == 5


@pytest.mark.parametrize(
    ("value", "comparison", "goal", "status"),
    [
        (0.1, "<=", 0.1, "PASS"),
        (0.11, "<=", 0.1, "MISS"),
        (0.1, "<", 0.1, "MISS"),
        (0.09, "<", 0.1, "PASS"),
        (0.5, ">=", 0.5, "PASS"),
        (0.49, ">=", 0.5, "MISS"),
        (None, ">=", 0.5, "n/a"),
    ],
)
def test_judge_verdicts(
    value: float | None, comparison: str, goal: float, status: str
) -> None:
    assert judge("target", value, comparison, goal).status == status
