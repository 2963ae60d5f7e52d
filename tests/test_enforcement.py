"""Enforcement reports and the audit events of each decision.

Workers run for real. The Landlock gap tests lower the ABI that the host
plans its rulesets for. The kernel then enforces an ABI 3 ruleset, as on an
older kernel, and nothing else is simulated.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import re
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import HostFactory, PluginWriter, run_script_as_nobody
from sandbox import (
    LaunchError,
    Policy,
    PolicyViolation,
    ResourceLimitExceeded,
    enforcement,
    kernelaudit,
    landlock,
    seccomp,
    verify,
)
from sandbox.cli import main
from sandbox.launcher import Identity
from sandbox.policy import DEFAULT_RESOURCES
from sandbox.process import read_kernel_status
from sandbox.spawnplan import worker_rlimits
from sandbox.uids import DEFAULT_PLUGIN_UIDS

REPO = Path(__file__).resolve().parent.parent
POLICIES = str(REPO / "examples" / "policies.toml")

# examples/policies.toml loads only once the folders it names exist.
pytestmark = pytest.mark.usefixtures("example_folders")
IS_ROOT = os.geteuid() == 0
MIB = 1 << 20
STATUSES = {"enforced", "not_enforced", "not_requested"}
X32_GETPID = 0x40000000 | 39
# Seconds of the kernel's printk_ratelimit window (kernel.printk_ratelimit,
# 5 by default), in which it logs at most 10 audit records to /dev/kmsg.
RATELIMIT_WINDOW = 5.0
KILL_BURST = 50
NETLINK_HEADER = struct.Struct("=IHHII")
AUDIT_USER = 1107
CLOSE_SECONDS = 10.0

SOURCE = """
    import ctypes
    import os
    import signal
    import threading


    def echo(value):
        return value


    def x32_getpid():
        return ctypes.CDLL(None).syscall(0x40000000 | 39)


    def x32_getpid_named(comm):
        # PR_SET_NAME (15) and PR_GET_NAME (16). The kernel keeps the
        # first 15 bytes of the name.
        libc = ctypes.CDLL(None, use_errno=True)
        name = comm.encode()
        if libc.prctl(15, name, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NAME failed")
        current = ctypes.create_string_buffer(16)
        libc.prctl(16, current, 0, 0, 0)
        if current.value != name[:15]:
            raise ValueError(f"comm is {current.value!r}")
        return libc.syscall(0x40000000 | 39)


    def kill_children(count):
        libc = ctypes.CDLL(None)
        killed = 0
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                libc.syscall(0x40000000 | 39)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS:
                killed += 1
        return killed


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
    "x32_getpid_named",
    "kill_children",
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


def planned_identity(**options: Any) -> dict[str, Any]:
    policy = Policy.from_dict({}).for_plugin("p")
    report = enforcement.planned_report(
        "p",
        policy,
        DEFAULT_RESOURCES,
        machine_without_protections(3),
        **options,
    )
    identity: dict[str, Any] = report.to_dict()["layers"]["uid_gid"]
    return identity


def test_planned_identity_uses_plugin_uid() -> None:
    own_uid = DEFAULT_PLUGIN_UIDS.start + 7
    layer = planned_identity(plugin_uid=own_uid)
    assert layer["requested"]["uid"] == own_uid
    assert layer["requested"]["gid"] == own_uid
    assert f"uid {own_uid}, gid {own_uid}" in layer["summary"]["requested"]


def test_planned_identity_shows_uid_range() -> None:
    layer = planned_identity(uid_range=DEFAULT_PLUGIN_UIDS)
    last = DEFAULT_PLUGIN_UIDS[-1]
    assert layer["requested"]["uid"] is None
    assert layer["requested"]["uid_range"] == [DEFAULT_PLUGIN_UIDS.start, last]
    assert f"{last:#x}" in layer["summary"]["requested"]


def test_planned_identity_without_uids_is_nobody() -> None:
    layer = planned_identity()
    assert layer["requested"]["uid"] == pwd.getpwnam("nobody").pw_uid


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


def audit_group_joinable() -> bool:
    if kernelaudit.seccomp_kills_logged() is not None:
        return False
    try:
        kernelaudit.join_audit_group().close()
    except kernelaudit.AuditGroupUnavailable:
        return False
    return True


needs_x32 = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the x32 ABI is x86_64 only"
)
needs_kill_records = pytest.mark.skipif(
    not audit_group_joinable(),
    reason="the audit netlink multicast group cannot be joined",
)


@needs_x32
@needs_kill_records
def test_policy_violation_names_syscall(
    make_host: HostFactory, plugin: str
) -> None:
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    pid = host.enforcement_report(plugin)["pid"]
    with pytest.raises(PolicyViolation) as caught:
        host.execute_plugin(plugin, "x32_getpid")
    [violation] = events_named(events, "policy_violation")
    assert violation["pid"] == pid
    assert violation["signal"] == "SIGSYS"
    assert violation["syscall"] == X32_GETPID, violation
    assert violation["syscall_name"] == "getpid (x32 ABI)"
    assert violation["arch"] == "c000003e"
    assert violation["reported_by"] == "kernel"
    assert "unknown_reason" not in violation
    assert "getpid (x32 ABI)" in str(caught.value)


@needs_x32
@needs_kill_records
def test_violation_named_after_kill_burst(
    make_host: HostFactory, plugin: str, write_plugin: PluginWriter
) -> None:
    """The kernel log keeps 10 audit records per 5 s (printk_ratelimit),
    so after the other plugin's burst it would drop the probe's record."""
    write_plugin("burst", SOURCE, METHODS)
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    pid = host.enforcement_report(plugin)["pid"]
    started = time.monotonic()
    killed = host.execute_plugin(
        "burst", "kill_children", {"count": KILL_BURST}
    )
    with pytest.raises(PolicyViolation):
        host.execute_plugin(plugin, "x32_getpid")
    seconds = time.monotonic() - started
    assert killed == KILL_BURST
    assert seconds < RATELIMIT_WINDOW
    # A root host with per-plugin uids also reports the burst's children.
    [violation] = [
        event
        for event in events_named(events, "policy_violation")
        if event["plugin"] == plugin
    ]
    assert violation["pid"] == pid
    assert violation["syscall"] == X32_GETPID, violation
    assert violation["reported_by"] == "kernel"


@needs_x32
@needs_kill_records
@pytest.mark.parametrize(
    "comm",
    # The first is hex-encoded by the kernel because of its spaces, and
    # cut to 15 bytes; the second is printed inside quotes.
    [" pid=1 syscall=2 ", "syscall=2,pid=1"],
    ids=["spaces", "quoted"],
)
def test_forged_comm_not_parsed(
    make_host: HostFactory, plugin: str, comm: str
) -> None:
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    pid = host.enforcement_report(plugin)["pid"]
    with pytest.raises(PolicyViolation):
        host.execute_plugin(plugin, "x32_getpid_named", {"comm": comm})
    [violation] = events_named(events, "policy_violation")
    assert violation["pid"] == pid
    assert violation["syscall"] == X32_GETPID, violation


def netlink_datagram(kind: int, text: str) -> bytes:
    body = text.encode("ascii")
    header = NETLINK_HEADER.pack(
        NETLINK_HEADER.size + len(body), kind, 0, 0, 0
    )
    return header + body


KILL_TEXT = (
    "audit(1796407667.267:10891): auid=4294967295 uid=0 gid=0 "
    'ses=4294967295 pid=42 comm={comm} exe="/usr/bin/python3.11" sig=31 '
    "arch=c000003e syscall=1073741863 compat=0 ip=0x7f84835f7829 "
    "code=0x80000000"
)


def parsed(data: bytes, sender_port: int = 0) -> list[Any]:
    return list(kernelaudit.parse_seccomp_messages(data, sender_port))


@pytest.mark.parametrize(
    "comm",
    [
        "207069643D312073797363616C6C3D",
        '"python3"',
        '"x pid=7 syscall=2 sig=9 arch=0 code=0x0 "',
    ],
    ids=["hex", "plain", "spaces_in_quotes"],
)
def test_parser_reads_fields_outside_comm(comm: str) -> None:
    [record] = parsed(netlink_datagram(1326, KILL_TEXT.format(comm=comm)))
    assert record.pid == 42
    assert record.syscall == X32_GETPID
    assert record.signal == 31
    assert record.arch == "c000003e"
    assert record.is_kill


def test_parser_rejects_other_senders() -> None:
    data = netlink_datagram(1326, KILL_TEXT.format(comm='"python3"'))
    assert parsed(data, sender_port=4242) == []


def test_parser_rejects_other_types() -> None:
    text = KILL_TEXT.format(comm='"python3"')
    assert parsed(netlink_datagram(AUDIT_USER, text)) == []


def test_parser_rejects_repeated_field() -> None:
    text = KILL_TEXT.format(comm='"python3"') + " syscall=2"
    assert parsed(netlink_datagram(1326, text)) == []


def test_parser_skips_unterminated_quote() -> None:
    """Text after an opening quote with no closing one stays unread."""
    forged = "sig=31 arch=c000003e syscall=2 code=0x80000000"
    text = KILL_TEXT.split(" comm=")[0] + f' comm="x {forged}'
    assert parsed(netlink_datagram(1326, text)) == []


def audit_socket_fds() -> list[int]:
    """Return this process's descriptors of NETLINK_AUDIT sockets."""
    inodes = set()
    with open("/proc/self/net/netlink", encoding="ascii") as table:
        next(table)
        for line in table:
            columns = line.split()
            if int(columns[1]) == kernelaudit.NETLINK_AUDIT:
                inodes.add(f"socket:[{columns[-1]}]")
    return [fd for fd, target in fd_targets().items() if target in inodes]


def fd_targets() -> dict[int, str]:
    targets = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            targets[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue
    return targets


def eventfd_count() -> int:
    return sum(t == "anon_inode:[eventfd]" for t in fd_targets().values())


def watcher_threads() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name == "sandbox-seccomp-kills"
    ]


@needs_kill_records
def test_watcher_stops_on_close(make_host: HostFactory, plugin: str) -> None:
    threads_before = set(watcher_threads())
    audit_fds_before = audit_socket_fds()
    eventfds_before = eventfd_count()
    host = make_host()
    # The thread starts with the first worker, not with the host.
    assert set(watcher_threads()) == threads_before
    host.execute_plugin(plugin, "echo", {"value": 1})
    [thread] = set(watcher_threads()) - threads_before
    assert len(audit_socket_fds()) == len(audit_fds_before) + 1
    # In a thread of its own, so that a close() that hangs fails the test.
    closer = threading.Thread(target=host.close, daemon=True)
    closer.start()
    closer.join(CLOSE_SECONDS)
    assert not closer.is_alive()
    assert not thread.is_alive()
    assert set(watcher_threads()) == threads_before
    assert audit_socket_fds() == audit_fds_before
    assert eventfd_count() == eventfds_before


UNPRIVILEGED_VIOLATION_SCRIPT = """
import json
import shutil
import sys
import tempfile

from sandbox import PluginHost, PolicyViolation

scratch_root = tempfile.mkdtemp(prefix="sandbox-test-scratch-")
events = []
try:
    with PluginHost([sys.argv[1]], scratch_root=scratch_root) as host:
        host.subscribe(events.append)
        try:
            host.execute_plugin("probe", "x32_getpid")
        except PolicyViolation:
            pass
finally:
    shutil.rmtree(scratch_root, ignore_errors=True)
print(json.dumps([e for e in events if e["event"] == "policy_violation"]))
"""


@pytest.mark.linux
@needs_x32
@pytest.mark.skipif(not IS_ROOT, reason="runs a host as nobody")
@pytest.mark.skipif(shutil.which("runuser") is None, reason="needs runuser")
def test_unprivileged_host_gives_reason(
    plugin: str, plugin_root: Path
) -> None:
    completed = run_script_as_nobody(
        plugin_root,
        "unprivileged_violation.py",
        UNPRIVILEGED_VIOLATION_SCRIPT,
        str(plugin_root),
    )
    assert completed.returncode == 0, completed.stderr
    [violation] = json.loads(completed.stdout)
    assert violation["syscall"] is None
    assert violation["syscall_name"] is None
    assert "CAP_AUDIT_READ" in violation["unknown_reason"]
    assert "reported_by" not in violation


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


# -- seccomp kills of a worker's descendants ----------------------------------

DESCENDANT_WAIT_SECONDS = 10.0
FLOOD_CHILDREN = 100
WATCHER_THREAD = "sandbox-seccomp-kills"


def descendant_violations(events: list[dict[str, Any]]) -> list[Any]:
    return [
        event
        for event in events_named(events, "policy_violation")
        if event.get("process") == "descendant"
    ]


def wait_for_kills(
    events: list[dict[str, Any]], count: int
) -> list[dict[str, Any]]:
    """Wait until the descendant events account for ``count`` kills.

    Each event stands for itself and the kills suppressed before it.
    """
    deadline = time.monotonic() + DESCENDANT_WAIT_SECONDS
    while time.monotonic() < deadline:
        found = descendant_violations(events)
        if sum(1 + event["suppressed"] for event in found) >= count:
            break
        time.sleep(0.05)
    # Longer than a rate window, so that a late or repeated event shows.
    time.sleep(2 * kernelaudit.RECORD_WAIT_SECONDS)
    return descendant_violations(events)


def recording_thread(
    events: list[dict[str, Any]], threads: list[str]
) -> Callable[[dict[str, Any]], None]:
    """Return a subscriber that also records the thread of each event."""

    def record(event: dict[str, Any]) -> None:
        threads.append(threading.current_thread().name)
        events.append(event)

    return record


needs_plugin_uid = pytest.mark.skipif(
    not IS_ROOT, reason="per-plugin uids need a root host"
)


@needs_x32
@needs_kill_records
@needs_plugin_uid
def test_descendant_kill_reported(make_host: HostFactory, plugin: str) -> None:
    host = make_host()
    events: list[dict[str, Any]] = []
    threads: list[str] = []
    host.subscribe(recording_thread(events, threads))
    worker_pid = host.enforcement_report(plugin)["pid"]
    killed = host.execute_plugin(plugin, "kill_children", {"count": 1})
    assert killed == 1
    [violation] = wait_for_kills(events, 1)
    assert violation["plugin"] == plugin
    assert violation["process"] == "descendant"
    assert violation["worker_pid"] == worker_pid
    assert violation["pid"] != worker_pid
    assert violation["syscall"] == X32_GETPID, violation
    assert violation["syscall_name"] == "getpid (x32 ABI)"
    assert violation["arch"] == "c000003e"
    assert violation["reported_by"] == "kernel"
    assert violation["suppressed"] == 0
    assert events_named(events, "worker_crashed") == []
    # The worker lives on, and the event came from the watcher's thread.
    assert host.enforcement_report(plugin)["pid"] == worker_pid
    assert host.execute_plugin(plugin, "echo", {"value": 2}) == 2
    assert threads[events.index(violation)] == WATCHER_THREAD


@needs_x32
@needs_kill_records
@needs_plugin_uid
def test_worker_kill_reported_once(
    make_host: HostFactory, plugin: str
) -> None:
    """The worker's own kill goes to its death report alone."""
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    with pytest.raises(PolicyViolation):
        host.execute_plugin(plugin, "x32_getpid")
    time.sleep(2 * kernelaudit.RECORD_WAIT_SECONDS)
    [violation] = events_named(events, "policy_violation")
    assert "process" not in violation
    assert violation["syscall"] == X32_GETPID, violation


@needs_x32
@needs_kill_records
@needs_plugin_uid
def test_descendant_flood_is_bounded(
    make_host: HostFactory, plugin: str
) -> None:
    bound = kernelaudit.DESCENDANT_EVENTS_PER_SECOND
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    started = time.monotonic()
    killed = host.execute_plugin(
        plugin, "kill_children", {"count": FLOOD_CHILDREN}
    )
    seconds = time.monotonic() - started
    assert killed == FLOOD_CHILDREN
    violations = wait_for_kills(events, FLOOD_CHILDREN)
    # One rate window per started second of the flood, and the release
    # of the latest suppressed kill after the last window.
    windows = int(seconds) + 1
    assert len(violations) <= bound * windows + 1, violations
    total = sum(1 + event["suppressed"] for event in violations)
    assert total == FLOOD_CHILDREN
    assert max(event["suppressed"] for event in violations) > 0
    assert all(event["syscall"] == X32_GETPID for event in violations)


@needs_x32
@needs_kill_records
def test_shared_uid_host_skips_descendants(
    make_host: HostFactory, plugin: str
) -> None:
    """With plugin_uids=None every plugin of a root host runs as nobody,
    as other hosts and daemons may, so a kill under that uid names no
    single plugin and the host reports none."""
    host = make_host(plugin_uids=None)
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    killed = host.execute_plugin(plugin, "kill_children", {"count": 1})
    assert killed == 1
    # The worker's own kill comes after the child's, and the watcher
    # reads records in order, so by its event the child's was read.
    with pytest.raises(PolicyViolation):
        host.execute_plugin(plugin, "x32_getpid")
    time.sleep(2 * kernelaudit.RECORD_WAIT_SECONDS)
    [violation] = events_named(events, "policy_violation")
    assert "process" not in violation
    assert violation["reported_by"] == "kernel"


@pytest.mark.parametrize(
    "comm",
    ['"python3"', '"x uid=7 "', "207569643D3720"],
    ids=["plain", "uid_in_quotes", "hex"],
)
def test_parser_reads_uid_outside_comm(comm: str) -> None:
    text = KILL_TEXT.format(comm=comm).replace(" uid=0 ", " uid=1234 ")
    [record] = parsed(netlink_datagram(1326, text))
    assert record.uid == 1234


def test_parser_ignores_uid_inside_comm() -> None:
    text = KILL_TEXT.format(comm='"x uid=7"').replace(" uid=0 ", " ")
    [record] = parsed(netlink_datagram(1326, text))
    assert record.uid is None
    assert record.pid == 42


def test_watcher_rejects_shared_uids() -> None:
    watcher = kernelaudit.SeccompKillWatcher()
    nobody = pwd.getpwnam("nobody").pw_uid
    for uid in (0, os.getuid(), nobody):
        with pytest.raises(ValueError, match="nobody"):
            watcher.register_uid(uid, "probe")
    watcher.register_uid(nobody - 1, "probe")
    with pytest.raises(ValueError, match="registered for plugin 'probe'"):
        watcher.register_uid(nobody - 1, "other")
    watcher.close()
