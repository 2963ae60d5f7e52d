"""A worker that sends itself SIGSYS without any seccomp action.

A root host reads the kernel's seccomp audit records, so it can tell a
kill by the seccomp program, which leaves a record, from a SIGSYS the
plugin sent itself, which leaves none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import sandbox
from conftest import (
    IS_ROOT,
    HostFactory,
    PluginWriter,
    run_script_as_nobody,
)
from sandbox import PluginCrashed, PolicyViolation, SandboxError
from sandbox.kernelaudit import (
    SeccompKillWatcher,
    examine_sigsys,
    read_audit_status,
    seccomp_kills_logged,
)

REPO = Path(__file__).resolve().parent.parent
# The folder that contains the sandbox package these tests import.
PACKAGE_PARENT = Path(sandbox.__file__).resolve().parents[1]


def audit_records_complete() -> bool:
    """Return whether this host can tell that it missed no audit record."""
    if not IS_ROOT or seccomp_kills_logged() is not None:
        return False
    try:
        read_audit_status()
    except OSError:
        return False
    return True


needs_complete_records = pytest.mark.skipif(
    not audit_records_complete(),
    reason="needs root, logged seccomp kills and the kernel's audit "
    "counters (CAP_AUDIT_CONTROL)",
)

RUNNER = """
import os
import signal


def send_sigsys():
    os.kill(os.getpid(), signal.SIGSYS)
"""


@needs_complete_records
def test_self_sent_sigsys_not_a_violation(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("pretender", RUNNER, ["send_sigsys"])
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    with pytest.raises(SandboxError) as raised:
        host.execute_plugin("pretender", "send_sigsys", {})
    violations = [e for e in events if e["event"] == "policy_violation"]
    crashes = [e for e in events if e["event"] == "worker_crashed"]
    assert not isinstance(raised.value, PolicyViolation), str(raised.value)
    assert not violations, violations
    assert isinstance(raised.value, PluginCrashed)
    assert raised.value.signal == signal.SIGSYS
    assert "no seccomp audit record" in str(raised.value)
    assert len(crashes) == 1, events
    assert crashes[0]["reason"] == str(raised.value)


@needs_complete_records
def test_watcher_rules_out_seccomp_for_kill() -> None:
    """A SIGSYS from kill() leaves no seccomp record to wait for."""
    watcher = SeccompKillWatcher()
    assert watcher.start(), watcher.unavailable
    child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        watcher.register(child.pid)
        child.send_signal(signal.SIGSYS)
        assert child.wait(timeout=10) == -signal.SIGSYS
        evidence = watcher.examine(child.pid, timeout=0.5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        watcher.close()
    assert evidence.record is None
    assert evidence.gap is None
    assert evidence.rules_out_seccomp


def test_sigsys_without_watcher_keeps_violation() -> None:
    evidence = examine_sigsys(None, os.getpid())
    assert not evidence.rules_out_seccomp
    assert evidence.violation_fields()["unknown_reason"] == evidence.gap
    assert evidence.gap


UNPRIVILEGED_SCRIPT = """
import json
import shutil
import sys
import tempfile

from sandbox import PluginHost, PolicyViolation

scratch_root = tempfile.mkdtemp(prefix="sandbox-test-scratch-")
events = []
outcome = "no error"
try:
    with PluginHost([sys.argv[1]], scratch_root=scratch_root) as host:
        host.subscribe(events.append)
        try:
            host.execute_plugin("pretender", "send_sigsys")
        except Exception as error:
            outcome = type(error).__name__
finally:
    shutil.rmtree(scratch_root, ignore_errors=True)
violations = [e for e in events if e["event"] == "policy_violation"]
print(json.dumps({"outcome": outcome, "violations": violations}))
"""


@pytest.mark.linux
@pytest.mark.skipif(not IS_ROOT, reason="runs a host as nobody")
@pytest.mark.skipif(shutil.which("runuser") is None, reason="needs runuser")
def test_unprivileged_host_keeps_violation(
    write_plugin: PluginWriter, plugin_root: Path
) -> None:
    """A host without CAP_AUDIT_READ cannot rule the filter out."""
    write_plugin("pretender", RUNNER, ["send_sigsys"])
    completed = run_script_as_nobody(
        plugin_root,
        "unprivileged_sigsys.py",
        UNPRIVILEGED_SCRIPT,
        str(plugin_root),
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["outcome"] == "PolicyViolation", report
    [violation] = report["violations"]
    assert violation["syscall"] is None
    assert "CAP_AUDIT_READ" in violation["unknown_reason"]
