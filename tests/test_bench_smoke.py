"""The call-latency benchmark runs end to end in its smoke mode.

Only the shape of the output is checked: every row is printed with
numbers, and every timing is positive. Speed is never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "benchmarks" / "call_latency.py"

CALL_ROWS = [
    "sandbox noop",
    "sandbox echo",
    "multiprocessing.Pipe",
    "os.pipe + JSON",
]
CALL_RATIO_ROWS = [
    "echo / multiprocessing.Pipe",
    "echo / os.pipe + JSON",
]
SPAWN_ROWS = [
    "PluginHost() + first call",
    "first call, new host",
    "python -I -S -c pass",
    'python -c "import json"',
]
SPAWN_RATIO_ROWS = [
    "spawn / python -I -S -c pass",
    'spawn / python -c "import json"',
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the benchmark once with --smoke and return its output and JSON."""
    json_path = tmp_path_factory.mktemp("bench") / "results.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--json", str(json_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return {
        "stdout": completed.stdout,
        "json": json.loads(json_path.read_text()),
    }


def row_numbers(stdout: str, label: str) -> list[float]:
    """Return the numbers printed after ``label`` on its table row."""
    rows = [line for line in stdout.splitlines() if line.startswith(label)]
    assert len(rows) == 1, f"expected one row {label!r} in:\n{stdout}"
    return [float(field) for field in rows[0][len(label) :].split()]


@pytest.mark.slow
@pytest.mark.parametrize("label", CALL_ROWS)
def test_call_row_printed(smoke_run: dict[str, Any], label: str) -> None:
    p50, p99, mean, host_cpu, peer_cpu = row_numbers(
        smoke_run["stdout"], label
    )
    assert p50 > 0
    assert p99 >= p50
    assert mean > 0
    assert host_cpu > 0
    # The kernel reports another process's CPU time in clock ticks, so a
    # run of 50 calls may round the peer's share down to zero.
    assert peer_cpu >= 0


@pytest.mark.slow
@pytest.mark.parametrize("label", SPAWN_ROWS)
def test_spawn_row_printed(smoke_run: dict[str, Any], label: str) -> None:
    p50, p99, mean = row_numbers(smoke_run["stdout"], label)
    assert p50 > 0
    assert p99 >= p50
    assert mean > 0


@pytest.mark.slow
@pytest.mark.parametrize("label", CALL_RATIO_ROWS + SPAWN_RATIO_ROWS)
def test_ratio_row_printed(smoke_run: dict[str, Any], label: str) -> None:
    p50, p99 = row_numbers(smoke_run["stdout"], label)
    assert p50 > 0
    assert p99 > 0


@pytest.mark.slow
def test_output_fits_79_columns(smoke_run: dict[str, Any]) -> None:
    wide = [
        line for line in smoke_run["stdout"].splitlines() if len(line) > 79
    ]
    assert wide == []


@pytest.mark.slow
def test_json_has_every_row(smoke_run: dict[str, Any]) -> None:
    results = smoke_run["json"]
    assert [row["label"] for row in results["calls"]] == CALL_ROWS
    assert [row["label"] for row in results["spawns"]] == SPAWN_ROWS
    assert list(results["call_ratios"]) == CALL_RATIO_ROWS
    assert list(results["spawn_ratios"]) == SPAWN_RATIO_ROWS


@pytest.mark.slow
def test_json_timings_positive(smoke_run: dict[str, Any]) -> None:
    results = smoke_run["json"]
    for row in results["calls"]:
        for stat in ("p50", "p99", "mean"):
            assert row["latency_us"][stat] > 0, (row["label"], stat)
        assert row["host_cpu_us"] > 0, row["label"]
    for row in results["spawns"]:
        for stat in ("p50", "p99", "mean"):
            assert row["latency_ms"][stat] > 0, (row["label"], stat)
    assert results["first_spawn_ms"] > 0


@pytest.mark.slow
def test_json_records_run_settings(smoke_run: dict[str, Any]) -> None:
    results = smoke_run["json"]
    assert results["settings"]["calls"] == 50
    assert results["settings"]["spawns"] == 2
    assert results["settings"]["placement"] == "same"
    assert results["settings"]["host_cpus"] == results["settings"]["peer_cpus"]
    assert results["machine"]["nproc"] > 0
    assert results["machine"]["kernel"]
    assert results["machine"]["python"]


@pytest.mark.slow
def test_json_worker_locked_down(smoke_run: dict[str, Any]) -> None:
    worker = smoke_run["json"]["worker"]
    assert worker["seccomp"] == 2
    assert worker["no_new_privs"] == 1
    if smoke_run["json"]["machine"]["host_uid"] == 0:
        assert worker["uid"][0] != 0
