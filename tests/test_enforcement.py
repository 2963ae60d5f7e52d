"""Enforcement reports and the audit events of each decision.

Workers run for real. The Landlock gap tests lower the ABI that the host
plans its rulesets for. The kernel then enforces an ABI 3 ruleset, as on an
older kernel, and nothing else is simulated.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import HostFactory, PluginWriter
from sandbox import (
    LaunchError,
    Policy,
    PolicyViolation,
    ResourceLimitExceeded,
    enforcement,
    kmsg,
    landlock,
    seccomp,
    verify,
)
from sandbox.cli import main
from sandbox.launcher import Identity
from sandbox.policy import DEFAULT_RESOURCES
from sandbox.process import read_kernel_status
from sandbox.spawnplan import worker_rlimits

REPO = Path(__file__).resolve().parent.parent
POLICIES = str(REPO / "examples" / "policies.toml")
IS_ROOT = os.geteuid() == 0
MIB = 1 << 20
STATUSES = {"enforced", "not_enforced", "not_requested"}
X32_GETPID = 0x40000000 | 39
# Seconds of the kernel's printk_ratelimit window, its default.
RATELIMIT_WINDOW = 5.5

SOURCE = """
    import ctypes
    import os
    import signal
    import threading


    def echo(value):
        return value


    def x32_getpid():
        return ctypes.CDLL(None).syscall(0x40000000 | 39)


    def spin():
        while True:
            pass


    def write_past_limit(megabytes):
        # CPython ignores SIGXFSZ; the default action ends the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        with open("big.bin", "wb") as file:
            for _ in range(megabytes):
                file.write(b"x" * (1 << 20))
                file.flush()


    def exhaust_memory_then_exit():
        def allocate():
            chunks = []
            while True:
                chunks.append(bytearray(1 << 20))

        thread = threading.Thread(target=allocate)
        thread.start()
        thread.join()
        os._exit(1)
"""
METHODS = [
    "echo",
    "x32_getpid",
    "spin",
    "write_past_limit",
    "exhaust_memory_then_exit",
]
LIMITS = {
    "defaults": {
        "resources": {
            "memory_mb": 64,
            "cpu_seconds": 1,
            "file_size_mb": 2,
            "timeout": 20,
        }
    }
}


@pytest.fixture
def plugin(write_plugin: PluginWriter) -> str:
    write_plugin("probe", SOURCE, METHODS)
    return "probe"


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def proc_limit(pid: int, label: str) -> list[int]:
    with open(f"/proc/{pid}/limits", encoding="ascii") as file:
        for line in file:
            if line.startswith(label + " "):
                soft, hard = line[len(label) :].split()[:2]
                return [int(soft), int(hard)]
    raise AssertionError(f"no {label} row")


def events_named(events: list[dict[str, Any]], name: str) -> list[Any]:
    return [event for event in events if event["event"] == name]


# -- the report of a running worker ------------------------------------------


def test_running_report_matches_proc_status(
    make_host: HostFactory, plugin: str
) -> None:
    host = make_host(LIMITS)
    report = host.enforcement_report(plugin)
    pid = report["pid"]
    status = proc_status(pid)
    layers = report["layers"]
    assert report["variant"] == "running"
    assert report["complete"] is True
    uids = [int(uid) for uid in status["Uid"].split()]
    assert layers["uid_gid"]["enforced"]["uid"] == uids
    assert layers["no_new_privs"]["enforced"]["no_new_privs"] == int(
        status["NoNewPrivs"]
    )
    assert layers["seccomp"]["enforced"]["mode"] == int(status["Seccomp"])
    assert layers["seccomp"]["enforced"]["instructions"] > 0
    if IS_ROOT:
        assert layers["uid_gid"]["status"] == "enforced"
        assert 0 not in uids
    else:
        assert layers["uid_gid"]["status"] == "not_requested"


def test_running_report_lists_landlock_rights(
    make_host: HostFactory, plugin: str
) -> None:
    layer = make_host().enforcement_report(plugin)["layers"]["landlock"]
    abi = landlock.abi_version()
    handled = landlock.handled_fs_access(abi)
    assert layer["status"] == "enforced"
    assert layer["enforced"]["abi"] == abi
    assert layer["enforced"]["fs"] == landlock.access_names(handled, "fs")
    assert layer["enforced"]["net"] == ["BIND_TCP", "CONNECT_TCP"]
    assert layer["enforced"]["missing"] == []


def test_running_report_rlimits_match_kernel(
    make_host: HostFactory, plugin: str
) -> None:
    report = make_host(LIMITS).enforcement_report(plugin)
    limits = report["layers"]["rlimits"]
    memory = limits["enforced"]["RLIMIT_AS"]
    assert memory == proc_limit(report["pid"], "Max address space")
    assert memory == [64 * MIB, 64 * MIB]
    assert limits["requested"]["RLIMIT_AS"] == memory
    cpu = proc_limit(report["pid"], "Max cpu time")
    assert limits["enforced"]["RLIMIT_CPU"] == cpu == [1, 2]


def test_worker_started_carries_report(
    make_host: HostFactory, plugin: str
) -> None:
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    assert host.execute_plugin(plugin, "echo", {"value": 1}) == 1
    [started] = events_named(events, "worker_started")
    assert started["plugin"] == plugin
    assert started["enforcement"]["pid"] == started["pid"]
    assert set(started["enforcement"]["layers"]) == set(enforcement.LAYERS)
    json.dumps(started)


def test_report_flags_unsandboxed_process() -> None:
    """The readback of a process with no sandbox shows each kernel gap."""
    policy = Policy.from_dict({}).for_plugin("bare")
    facts = enforcement.WorkerFacts(
        plugin="bare",
        policy=policy,
        identity=Identity(65534, 65534, ()),
        rlimits=tuple(worker_rlimits(DEFAULT_RESOURCES)),
        landlock=None,
        seccomp_bpf=seccomp.build_filter(seccomp.FilterSpec()).bpf,
        env_names=(),
        granted=frozenset(),
    )
    with subprocess.Popen(["sleep", "30"]) as bare:
        try:
            report = enforcement.running_report(
                facts,
                bare.pid,
                read_kernel_status(bare.pid),
                enforcement.read_rlimits(bare.pid),
            )
        finally:
            bare.kill()
    gaps = {layer.layer for layer in report.gaps()}
    assert "no_new_privs" in gaps
    assert "seccomp" in gaps
    assert "network" in gaps
    assert "rlimits" in gaps
    assert "landlock" in gaps
    if IS_ROOT:
        assert "uid_gid" in gaps


# -- strict and permissive with a Landlock gap --------------------------------


@pytest.fixture
def landlock_abi_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the host plan ABI 3 rulesets, which lack IOCTL_DEV and TCP."""
    if landlock.abi_version() < 5:
        pytest.skip("the kernel lacks the rights an ABI 3 plan leaves out")
    monkeypatch.setattr(landlock, "_query_abi", lambda: (3, 0))


@pytest.mark.usefixtures("landlock_abi_3")
def test_strict_host_rejects_gap(make_host: HostFactory, plugin: str) -> None:
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    with pytest.raises(LaunchError) as caught:
        host.execute_plugin(plugin, "echo", {"value": 1})
    assert caught.value.stage == "landlock"
    [missing] = events_named(events, "protection_missing")
    assert missing["layer"] == "landlock"
    assert "IOCTL_DEV" in missing["gap"]
    assert events_named(events, "worker_started") == []


@pytest.mark.usefixtures("landlock_abi_3")
def test_permissive_host_starts_with_gap(
    make_host: HostFactory, plugin: str
) -> None:
    host = make_host(strict=False)
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    assert host.execute_plugin(plugin, "echo", {"value": 1}) == 1
    missing = events_named(events, "protection_missing")
    assert [event["layer"] for event in missing] == ["landlock"]
    [started] = events_named(events, "worker_started")
    layers = started["enforcement"]["layers"]
    assert layers["landlock"]["status"] == "not_enforced"
    assert layers["landlock"]["enforced"]["abi"] == 3
    assert "BIND_TCP" in layers["landlock"]["gap"]
    # seccomp alone still denies every socket.
    assert layers["network"]["status"] == "enforced"
    assert started["enforcement"]["complete"] is False


# -- the planned variant ------------------------------------------------------


def machine_without_protections(abi: int) -> verify.MachineReport:
    protections = tuple(
        verify.Protection(name, "missing", f"{name} absent")
        for name in verify.PROTECTION_NAMES
    )
    return verify.MachineReport(
        protections, as_root=True, interpreter="", landlock_abi=abi
    )


def test_planned_report_lists_each_gap() -> None:
    policy = Policy.from_dict({}).for_plugin("p")
    report = enforcement.planned_report(
        "p", policy, DEFAULT_RESOURCES, machine_without_protections(3)
    )
    gaps = {layer.layer: layer.gap for layer in report.gaps()}
    assert report.variant == "planned"
    assert set(gaps) == {
        "uid_gid",
        "rlimits",
        "no_new_privs",
        "seccomp",
        "landlock",
        "network",
    }
    assert "IOCTL_DEV" in gaps["landlock"]
    assert report.layer("capabilities").status == "enforced"


def test_planned_report_of_this_machine() -> None:
    machine = verify.probe_machine()
    policy = Policy.from_dict({}).for_plugin("p")
    report = enforcement.planned_report(
        "p", policy, DEFAULT_RESOURCES, machine
    )
    assert report.gaps() == []
    expected = "enforced" if IS_ROOT else "not_requested"
    assert report.layer("uid_gid").status == expected


# -- policy violations --------------------------------------------------------


def kill_records_readable() -> bool:
    watch = kmsg.KernelLogWatch()
    try:
        return watch.unavailable is None
    finally:
        watch.close()


@pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the x32 ABI is x86_64 only"
)
@pytest.mark.skipif(
    not kill_records_readable(), reason="the kernel log is not readable"
)
def test_policy_violation_names_syscall(
    make_host: HostFactory, plugin: str
) -> None:
    """The kernel's log drops audit records past a burst of 10 in 5 s
    (printk_ratelimit), which other processes may have used up, so the
    kill is repeated after that window, three times at most."""
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    for attempt in range(3):
        if attempt:
            time.sleep(RATELIMIT_WINDOW)
        pid = host.enforcement_report(plugin)["pid"]
        with pytest.raises(PolicyViolation) as caught:
            host.execute_plugin(plugin, "x32_getpid")
        violation = events_named(events, "policy_violation")[-1]
        if violation["syscall"] is not None:
            break
    assert violation["pid"] == pid
    assert violation["syscall"] == X32_GETPID, violation
    assert violation["syscall_name"] == "getpid (x32 ABI)"
    assert violation["reported_by"] == "kernel"
    assert "getpid (x32 ABI)" in str(caught.value)


def test_unreadable_log_gives_reason() -> None:
    watch = kmsg.KernelLogWatch("/nonexistent/kmsg")
    fields = kmsg.violation_fields(watch, 1)
    watch.close()
    assert fields["syscall"] is None
    assert "cannot open /nonexistent/kmsg" in fields["unknown_reason"]


def test_record_parser_rejects_forgery() -> None:
    kernel = (
        "5,10,20,-;audit: type=1326 audit(1.2:3): uid=65534 pid=42 "
        'comm="pid=7" sig=31 arch=c000003e syscall=1073741863 compat=0'
    )
    user = "13,11,21,-;" + kernel.split(";", 1)[1]
    kill = kmsg.parse_seccomp_record(kernel)
    assert kill is not None
    assert kill.pid == 42
    assert kill.syscall == X32_GETPID
    assert kmsg.parse_seccomp_record(user) is None


# -- limits the kernel enforces -----------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "limit", "witness"),
    [
        ("spin", {}, "cpu_seconds", "kernel"),
        ("write_past_limit", {"megabytes": 8}, "file_size_mb", "kernel"),
        ("exhaust_memory_then_exit", {}, "memory_mb", "worker_output"),
    ],
    ids=["cpu", "fsize", "memory"],
)
def test_limit_death_emits_limit_hit(
    make_host: HostFactory,
    plugin: str,
    method: str,
    params: dict[str, Any],
    limit: str,
    witness: str,
) -> None:
    host = make_host(LIMITS)
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    with pytest.raises(ResourceLimitExceeded) as caught:
        host.execute_plugin(plugin, method, params)
    assert caught.value.limit == limit
    [hit] = events_named(events, "limit_hit")
    assert hit["limit"] == limit
    assert hit["reported_by"] == witness
    assert hit["plugin"] == plugin


# -- the command line ---------------------------------------------------------


@pytest.fixture
def verify_output(
    capsys: pytest.CaptureFixture[str],
) -> Iterator[tuple[int, str]]:
    status = main(["verify", "--policy", POLICIES])
    yield status, capsys.readouterr().out


def test_verify_policy_prints_layer_tables(
    verify_output: tuple[int, str],
) -> None:
    status, out = verify_output
    assert status == 0, out
    names = Policy.load(POLICIES).names()
    tables = out.count("  layer ")
    assert tables == len(names) + 1
    for layer in enforcement.LAYERS:
        rows = re.findall(rf"^  {layer} +(\w+)", out, flags=re.MULTILINE)
        assert len(rows) == tables, layer
        assert set(rows) <= STATUSES, layer
    assert [line for line in out.splitlines() if len(line) > 79] == []


def test_verify_policy_json_has_reports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["verify", "--json", "--policy", POLICIES])
    data = json.loads(capsys.readouterr().out)
    assert status == 0
    assert data["ok"] is True
    for name, entry in data["plugins"].items():
        report = entry["enforcement"]
        assert report["plugin"] == name
        assert report["variant"] == "planned"
        assert list(report["layers"]) == list(enforcement.LAYERS)
        for layer, values in report["layers"].items():
            assert values["status"] in STATUSES, (name, layer)
    assert data["defaults"]["enforcement"]["complete"] is True


def test_demo_prints_audit_stream(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "demo",
            "--plugins",
            str(REPO / "examples" / "plugins"),
            "--policy",
            POLICIES,
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    started = re.findall(r"^  audit: worker_started (\S+)", out, re.M)
    stopped = re.findall(r"^  audit: worker_stopped (\S+)", out, re.M)
    assert started
    assert sorted(started) == sorted(stopped)
    assert "  audit: capability_denied env-protection" in out
