"""Attacks on per-plugin uids, observe mode and kernel-record attribution.

Each test states the protection it expects. Those that fail while a hole
is open are marked xfail(strict=True) with the hole as their reason. The
flood test guards attribution: the kernel log dropped audit lines past
printk_ratelimit, so forty seccomp kills in one plugin's children hid the
system call of the next plugin's violation.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from conftest import IS_ROOT, HostFactory, PluginWriter
from sandbox import PolicyViolation
from sandbox.kernelaudit import seccomp_kills_logged
from sandbox.observe import observe_plugin
from sandbox.uids import DEFAULT_PLUGIN_UIDS, assign_plugin_uids

RUNNER = """
import ctypes
import os
import struct
import time


def uid():
    return os.getuid()


def _i386_stub():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
        ctypes.c_int, ctypes.c_long,
    ]
    # PROT_READ|WRITE|EXEC, MAP_PRIVATE|ANONYMOUS|32BIT
    return libc.mmap(None, 4096, 7, 0x22 | 0x40, -1, 0)


def i386_syscall(number):
    # push rbx; mov eax, number; xor ebx, ebx; int 0x80; pop rbx; ret
    code = b"\\x53\\xb8" + struct.pack("<I", number)
    code += b"\\x31\\xdb\\xcd\\x80\\x5b\\xc3"
    buffer = _i386_stub()
    ctypes.memmove(buffer, code, len(code))
    return ctypes.CFUNCTYPE(ctypes.c_long)(buffer)()


def killed_children(count):
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            i386_syscall(26)
            os._exit(0)
        os.waitpid(pid, 0)
    return count


def leave_daemon(seconds):
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
        except OSError:
            pass  # Denied: the grandchild stays in the worker's group.
        if os.fork() == 0:
            time.sleep(seconds)
        os._exit(0)
    os.waitpid(pid, 0)
    return "forked"
"""


@pytest.fixture
def uid_registry(tmp_path: Path) -> Path:
    """A uid registry of this test's own, in a folder only root can change."""
    return tmp_path / "registry" / "plugin-uids.json"


def _hash_start(name: str, size: int) -> int:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % size


@pytest.mark.skipif(not IS_ROOT, reason="per-plugin uids need a root host")
def test_new_plugin_cannot_take_installed_uid(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    uids = DEFAULT_PLUGIN_UIDS
    victim = "reports"
    write_plugin(victim, RUNNER, ["uid"])
    write_plugin("mailer", RUNNER, ["uid"])
    first = make_host(uid_registry=uid_registry)
    victim_uid = first.execute_plugin(victim, "uid", {})
    first.close()
    target = _hash_start(victim, len(uids))
    # The search takes about len(uids) tries, a fraction of a second.
    intruder = next(
        name
        for name in (f"aa{i}" for i in itertools.count())
        if _hash_start(name, len(uids)) == target
    )
    assert intruder < victim
    write_plugin(intruder, RUNNER, ["uid"])
    second = make_host(uid_registry=uid_registry)
    assert second.execute_plugin(intruder, "uid", {}) != victim_uid
    assert second.execute_plugin(victim, "uid", {}) == victim_uid


@pytest.mark.skipif(not IS_ROOT, reason="per-plugin uids need a root host")
def test_policy_user_cannot_reuse_plugin_uid(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("victim", RUNNER, ["uid"])
    write_plugin("intruder", RUNNER, ["uid"])
    planned = assign_plugin_uids(["victim", "intruder"], DEFAULT_PLUGIN_UIDS)
    policy = {"plugins": {"intruder": {"user": planned["victim"]}}}
    try:
        host = make_host(policy, uid_registry=uid_registry)
        uids = {
            name: host.execute_plugin(name, "uid", {})
            for name in ("victim", "intruder")
        }
    except Exception:
        return  # Rejecting the policy or the start also closes the hole.
    assert uids["victim"] != uids["intruder"], uids


def _processes_of(uid: int) -> list[psutil.Process]:
    """Return the processes of ``uid`` that still run code.

    A killed process whose parent already exited stays a zombie until
    init reaps it, which some init programs do late.
    """
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        ids = process.info["uids"]
        zombie = process.info["status"] == psutil.STATUS_ZOMBIE
        if ids is not None and uid in ids and not zombie:
            found.append(process)
    return found


@pytest.mark.skipif(not IS_ROOT, reason="per-plugin uids need a root host")
def test_observe_leaves_no_process(
    write_plugin: PluginWriter, plugin_root: Path, uid_registry: Path
) -> None:
    write_plugin("lingerer", RUNNER, ["leave_daemon"])
    uid = assign_plugin_uids(["lingerer"], DEFAULT_PLUGIN_UIDS)["lingerer"]
    observation = observe_plugin(
        [plugin_root],
        "lingerer",
        [("leave_daemon", {"seconds": 30})],
        uid_registry=uid_registry,
    )
    assert observation.calls[0].result == "forked"
    time.sleep(0.5)
    left = _processes_of(uid)
    for process in left:
        os.kill(process.pid, signal.SIGKILL)
    assert not left, [p.pid for p in left]


@pytest.mark.skipif(not IS_ROOT, reason="reading /dev/kmsg needs root")
@pytest.mark.skipif(
    seccomp_kills_logged() is not None,
    reason="the kernel does not log seccomp kills",
)
def test_flood_does_not_hide_violation(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("flooder", RUNNER, ["killed_children"])
    write_plugin("victim", RUNNER, ["i386_syscall"])
    host = make_host(
        {"defaults": {"resources": {"processes": 64}}},
        uid_registry=uid_registry,
    )
    events: list[dict[str, object]] = []
    host.subscribe(events.append)
    host.execute_plugin("flooder", "killed_children", {"count": 40})
    with pytest.raises(PolicyViolation):
        host.execute_plugin("victim", "i386_syscall", {"number": 11})
    violations = [e for e in events if e["event"] == "policy_violation"]
    victim = [e for e in violations if e["plugin"] == "victim"]
    assert len(victim) == 1
    assert victim[0]["syscall"] == 11, victim[0]
