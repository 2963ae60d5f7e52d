"""The C launcher driven directly through sandbox.launcher.spawn().

Children are small system programs (cat, sleep, true) or a bare Python,
so each test checks what the launcher left in place before execve: the
descriptors, signal dispositions, session, limits and the error record of
a stage that failed.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import json
import os
import platform
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import LaunchError
from sandbox.launcher import SpawnRequest, Stage, spawn

HEADER = Path(__file__).resolve().parent.parent / "csrc" / "launcher.h"
IS_ROOT = os.geteuid() == 0
NOBODY = 65534
CAT = "/bin/cat"
TRUE = "/bin/true"
SLEEP = "/bin/sleep"
SECONDS = 10

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs a root host")


# -- helpers ------------------------------------------------------------------


def request_for(argv: list[str], **fields: Any) -> SpawnRequest:
    """Return a request that runs ``argv`` with an empty environment."""
    return SpawnRequest(path=argv[0], argv=argv, env={}, **fields)


def read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def run_to_end(
    argv: list[str], descriptors: Mapping[int, int] | None = None
) -> tuple[bytes, int]:
    """Spawn ``argv`` with its stdout on a pipe; return output and status.

    ``descriptors`` are placed in the child next to the stdout pipe.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        child = spawn(
            request_for(
                argv, descriptors={**(descriptors or {}), 1: write_end}
            )
        )
    finally:
        os.close(write_end)
    try:
        output = read_to_end(read_end)
    finally:
        os.close(read_end)
    _, status = os.waitpid(child.pid, 0)
    if child.pidfd is not None:
        os.close(child.pidfd)
    return output, status


def child_text(argv: list[str]) -> str:
    output, status = run_to_end(argv)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output.decode()


def status_fields(text: str) -> dict[str, str]:
    """Parse /proc/PID/status text into {field: value}."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def stat_fields(text: str) -> list[str]:
    """Return the /proc/PID/stat fields after the command name.

    Index 0 is the state, 1 the parent pid, 2 the process group and 3 the
    session; the command name may contain spaces and parentheses.
    """
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> set[int]:
    """Return the pids, zombies included, whose parent is ``pid``."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields((entry / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            children.add(int(entry.name))
    return children


def open_descriptors() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def wait_readable(fd: int, seconds: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


@pytest.fixture
def missing_path() -> Iterator[str]:
    """Return a path in a fresh temporary folder that does not exist."""
    with tempfile.TemporaryDirectory(prefix="sandbox-launcher-") as folder:
        yield os.path.join(folder, "missing")


# -- the stage contract -------------------------------------------------------


def test_stage_enum_matches_header() -> None:
    text = HEADER.read_text()
    body = re.search(r"enum sandbox_stage \{(.*?)\};", text, re.S)
    assert body is not None, "enum sandbox_stage not found in launcher.h"
    entries = [line.strip() for line in body.group(1).splitlines()]
    entries = [entry for entry in entries if entry]
    pattern = re.compile(r"SANDBOX_STAGE_([A-Z_]+) = (\d+),")
    matches = [pattern.fullmatch(entry) for entry in entries]
    unparsed = [e for e, m in zip(entries, matches, strict=True) if m is None]
    assert unparsed == []
    in_header = {m.group(1): int(m.group(2)) for m in matches if m}
    in_python = {stage.name: stage.value for stage in Stage}
    assert in_python == in_header


# -- failed stages ------------------------------------------------------------


# Case: (stage, errno) the launcher must report.
FAILURES = {
    "missing-cwd": ("chdir", errno.ENOENT),
    "missing-program": ("execve", errno.ENOENT),
    "soft-above-hard": ("rlimits", errno.EINVAL),
    "no-return": ("seccomp", errno.EINVAL),
    "pipe-as-ruleset": ("landlock", errno.EBADFD),
}


def failing_request(case: str, pipe_fd: int, missing: str) -> SpawnRequest:
    base = request_for([TRUE])
    if case == "missing-cwd":
        return replace(base, cwd=missing)
    if case == "missing-program":
        return replace(base, path=missing, argv=[missing])
    if case == "soft-above-hard":
        return replace(base, rlimits=[(resource.RLIMIT_NOFILE, 64, 32)])
    if case == "no-return":
        # One instruction, "ld #0": the kernel requires a final return.
        return replace(base, seccomp_bpf=bytes(8))
    assert case == "pipe-as-ruleset"
    return replace(base, landlock_fd=pipe_fd)


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_failed_stage_raises_launch_error(
    case: str, missing_path: str
) -> None:
    stage, error_number = FAILURES[case]
    pipe_read, pipe_write = os.pipe2(os.O_CLOEXEC)
    try:
        request = failing_request(case, pipe_read, missing_path)
        children_before = children_of(os.getpid())
        descriptors_before = open_descriptors()
        with pytest.raises(LaunchError) as failure:
            spawn(request)
        descriptors_after = open_descriptors()
        children_after = children_of(os.getpid())
    finally:
        os.close(pipe_read)
        os.close(pipe_write)
    assert failure.value.stage == stage
    assert failure.value.errno == error_number
    assert children_after - children_before == set(), "child not reaped"
    assert descriptors_after == descriptors_before


# Run as its own process because it changes its credentials first. It
# prints the LaunchError's stage and errno and the pids of its children.
IDENTITY_PROBE = """
import json, os, sys
from sandbox.errors import LaunchError
from sandbox.launcher import Identity, SpawnRequest, spawn

dropped = sys.argv[1]
if dropped == "nobody":
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
else:
    import prctl
    setattr(prctl.cap_effective, dropped, False)
outcome = None
try:
    spawn(SpawnRequest("/bin/true", ["/bin/true"], {},
                       identity=Identity(65534, 65534)))
except LaunchError as error:
    outcome = [error.stage, error.errno]
children = []
for name in os.listdir("/proc"):
    try:
        with open(f"/proc/{name}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        continue
    if int(fields[1]) == os.getpid():
        children.append(int(name))
print(json.dumps({"outcome": outcome, "children": children}))
"""

IDENTITY_CASES = {
    # Dropping the capability bounding set needs CAP_SETPCAP, the first
    # privilege the identity switch uses.
    "nobody": ["capbset", errno.EPERM],
    "setgid": ["setgroups", errno.EPERM],
    "setuid": ["setresuid", errno.EPERM],
}


@needs_root
@pytest.mark.parametrize("dropped", IDENTITY_CASES, ids=list(IDENTITY_CASES))
def test_identity_switch_not_permitted(dropped: str) -> None:
    """Without the privilege (``dropped``: root itself, by running as uid
    65534, or one capability) the switch fails at the stage needing it."""
    if dropped != "nobody":
        pytest.importorskip("prctl")
    result = subprocess.run(
        [sys.executable, "-c", IDENTITY_PROBE, dropped],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["outcome"] == IDENTITY_CASES[dropped]
    assert report["children"] == []


# -- the child's starting state -----------------------------------------------

DESCRIPTOR_PROBE = """
import os, sys

def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

# Listing opens a descriptor of its own, closed again when it returns.
listed = [int(name) for name in os.listdir("/proc/self/fd")]
contents = {fd: os.read(fd, 16).decode() for fd in map(int, sys.argv[1:])}
os.write(1, repr([sorted(filter(is_open, listed)), contents]).encode())
"""


def marked_pipe(marker: str) -> int:
    """Return the read end of a pipe that contains ``marker`` and then EOF."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.write(write_end, marker.encode())
    os.close(write_end)
    return read_end


@pytest.mark.parametrize("count", [2, 3], ids=["swap", "rotate-three"])
def test_descriptors_rotate_and_rest_close(count: int) -> None:
    """Each source sits on the number another one must move to."""
    sources = [marked_pipe(chr(ord("A") + i)) for i in range(count)]
    # Neither close-on-exec nor placed: only the launcher can close it.
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    placement = {sources[i]: sources[(i + 1) % count] for i in range(count)}
    try:
        output, status = run_to_end(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                DESCRIPTOR_PROBE,
                *map(str, sources),
            ],
            descriptors=placement,
        )
    finally:
        for fd in [*sources, leaked]:
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    open_fds, contents = ast.literal_eval(output.decode())
    assert open_fds == sorted([1, *sources])
    expected = {
        target: chr(ord("A") + sources.index(source))
        for target, source in placement.items()
    }
    assert contents == expected


def set_raw_disposition(number: int, handler: int) -> int:
    """Set a signal's handler with rt_sigaction, as glibc will not for 32.

    Returns the previous handler. Layout of x86_64's kernel sigaction.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    action = (ctypes.c_ulong * 4)(handler, 0, 0, 0)
    old = (ctypes.c_ulong * 4)()
    rt_sigaction = 13
    assert libc.syscall(rt_sigaction, number, action, old, 8) == 0
    return int(old[0])


@pytest.mark.skipif(
    platform.machine() != "x86_64", reason="raw sigaction layout of x86_64"
)
def test_signal_dispositions_reset() -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    previous_handler = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    # glibc reserves 32 for thread cancellation, which this process does
    # not use; a parent of the host can still leave it ignored.
    previous_reserved = set_raw_disposition(32, int(signal.SIG_IGN))
    try:
        fields = status_fields(child_text([CAT, "/proc/self/status"]))
    finally:
        set_raw_disposition(32, previous_reserved)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        signal.signal(signal.SIGUSR2, previous_handler)
    assert int(fields["SigIgn"], 16) == 0
    assert int(fields["SigBlk"], 16) == 0


def test_child_leads_new_session() -> None:
    output, status = run_to_end([CAT, "/proc/self/stat"])
    assert os.waitstatus_to_exitcode(status) == 0
    pid = int(output.split()[0])
    _state, _parent, group, session, tty = stat_fields(output.decode())[:5]
    assert int(session) == pid
    assert int(group) == pid
    assert int(tty) == 0


def core_limit_line(limits_text: str) -> list[str]:
    for line in limits_text.splitlines():
        if line.startswith("Max core file size"):
            return line[len("Max core file size") :].split()
    raise AssertionError("no core line in /proc/self/limits")


def test_core_limit_zero_without_request() -> None:
    saved = resource.getrlimit(resource.RLIMIT_CORE)
    if saved[1] == 0 and not IS_ROOT:
        pytest.skip("the hard core limit is 0 and only root can raise it")
    # The test process's own soft limit must not already be 0.
    raised = saved[1] if saved[1] != 0 else 1 << 20
    resource.setrlimit(resource.RLIMIT_CORE, (raised, raised))
    try:
        assert resource.getrlimit(resource.RLIMIT_CORE)[0] != 0
        limits = child_text([CAT, "/proc/self/limits"])
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, saved)
    soft, hard = core_limit_line(limits)[:2]
    assert soft == "0"
    assert hard == "0"


def test_pidfd_turns_readable_on_exit() -> None:
    stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        # cat exits when its stdin reaches end of file.
        child = spawn(
            request_for([CAT], descriptors={0: stdin_read, 1: devnull})
        )
    finally:
        os.close(stdin_read)
        os.close(devnull)
    try:
        assert child.pidfd is not None
        assert not os.get_inheritable(child.pidfd)
        assert not wait_readable(child.pidfd, 0)
        os.close(stdin_write)
        stdin_write = -1
        assert wait_readable(child.pidfd, SECONDS)
        info = os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED)
        assert info is not None
        assert info.si_pid == child.pid
        assert info.si_status == 0
    finally:
        if stdin_write >= 0:
            os.close(stdin_write)
        if child.pidfd is not None:
            os.close(child.pidfd)


# Spawns a sleeping child, prints its pid and waits to be killed.
DEATH_PROBE = """
import json, sys, time
from sandbox.launcher import Identity, SpawnRequest, spawn

ids = json.loads(sys.argv[1])
identity = Identity(*ids) if ids else None
child = spawn(SpawnRequest("/bin/sleep", ["/bin/sleep", "60"], {},
                           identity=identity))
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param(None, id="same-uid"),
        pytest.param([NOBODY, NOBODY], marks=needs_root, id="nobody"),
    ],
)
def test_child_dies_with_parent(identity: list[int] | None) -> None:
    """A uid change clears the parent-death signal, so it is set twice."""
    parent = subprocess.Popen(
        [sys.executable, "-c", DEATH_PROBE, json.dumps(identity)],
        stdout=subprocess.PIPE,
        text=True,
    )
    pidfd = -1
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        pidfd = os.pidfd_open(child_pid)
        stat = stat_fields(Path(f"/proc/{child_pid}/stat").read_text())
        assert int(stat[1]) == parent.pid
        assert not wait_readable(pidfd, 0)
        parent.kill()
        parent.wait(SECONDS)
        assert wait_readable(pidfd, SECONDS), "child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(SECONDS)
        if pidfd >= 0:
            if not wait_readable(pidfd, 0):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        if parent.stdout is not None:
            parent.stdout.close()
