"""Seccomp programs from sandbox.seccomp, installed for real in children.

Each kernel test runs its probe in a forked child under the exported
program (see seccomp_probe.py).  Where the errno alone could come from the
kernel, the test also runs the probe unfiltered and checks that the kernel
returns something else, so a pass shows that the filter set the errno.  The
docstring of each kernel test names the rule whose removal makes it fail.
Probes pass invalid arguments wherever an unfiltered call could change
anything outside the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import multiprocessing
import os
import platform
import resource
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from sandbox import procstate
from sandbox.seccomp import (
    FilterSpec,
    SeccompProgram,
    build_filter,
    describe_syscall,
    seccomp_available,
)
from seccomp_probe import (
    WAIT_ALL,
    ProbeOutcome,
    filter_errno,
    raw_syscall,
    run_probe,
    syscall_number,
)

pytestmark = pytest.mark.skipif(
    not seccomp_available(), reason="kernel without seccomp filter mode"
)
x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="x86_64 calling conventions"
)

CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# Every system call denied outright, from the design of the filter rather
# than from the module, so that a rule missing there fails here.  Names
# that the native architecture lacks are skipped.
DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "iopl",
    "ioperm",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "vhangup",
    "syslog",
    "nfsservctl",
    "uselib",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "fanotify_init",
    "pidfd_getfd",
    "statmount",
    "listmount",
    "open_tree_attr",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    "memfd_create",
    "setsid",
    "setpgid",
)
NATIVE_NUMBERS = {describe_syscall(number): number for number in range(1024)}
DENIED_NATIVE_SYSCALLS = [
    name for name in DENIED_SYSCALLS if name in NATIVE_NUMBERS
]
SIGCHLD = 17
TIOCLINUX = 0x541C
UPPER_HALF = 1 << 32
X32_SYSCALL_BIT = 0x40000000
PROGRAM_LIMIT = 4096
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
NATIVE_ARCH = {
    "x86_64": AUDIT_ARCH_X86_64,
    "aarch64": AUDIT_ARCH_AARCH64,
}.get(platform.machine(), 0)
# Every address family number up to and past AF_MAX (46 in Linux 6.18).
SOCKET_FAMILIES = range(64)
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
# "which" values of setpriority (linux/resource.h) and ioprio_set
# (linux/ioprio.h).
PRIO_PROCESS = 0
PRIO_PGRP = 1
PRIO_USER = 2
IOPRIO_WHO_PROCESS = 1
IOPRIO_WHO_PGRP = 2
IOPRIO_WHO_USER = 3
# IOPRIO_PRIO_VALUE(IOPRIO_CLASS_BE, 4)
IOPRIO_BEST_EFFORT_4 = (2 << 13) | 4
# A version 0 struct sched_attr (48 bytes) that requests SCHED_OTHER at
# nice 0: size, policy, flags, nice, priority, runtime, deadline, period.
SCHED_ATTR_OTHER = struct.pack("=IIQiIQQQ", 48, 0, 0, 0, 0, 0, 0, 0)


@pytest.fixture(scope="module")
def program() -> SeccompProgram:
    return build_filter(FilterSpec())


@pytest.fixture(scope="module")
def network_program() -> SeccompProgram:
    return build_filter(FilterSpec(network=True))


def call(name: str, *args: int) -> Callable[[], int]:
    """Return a probe that makes system call ``name`` with ``args``."""
    number = syscall_number(name)
    return lambda: raw_syscall(number, *args)


def call_number(number: int, *args: int) -> Callable[[], int]:
    return lambda: raw_syscall(number, *args)


def filtered_and_unfiltered(
    probe: Callable[[], object], bpf: bytes
) -> tuple[ProbeOutcome, ProbeOutcome]:
    return run_probe(probe, bpf), run_probe(probe)


def seccomp_mode_of_this_process() -> str:
    status = Path("/proc/self/status").read_text()
    for line in status.splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    raise LookupError("no Seccomp line in /proc/self/status")


# Shape of the exported program, without the kernel.


def test_program_is_sock_filter_array(program: SeccompProgram) -> None:
    assert len(program.bpf) % 8 == 0
    assert program.instruction_count == len(program.bpf) // 8
    assert 0 < program.instruction_count <= PROGRAM_LIMIT


def test_build_filter_is_cached() -> None:
    first = build_filter(FilterSpec())
    again = build_filter(FilterSpec())
    assert again is first
    assert build_filter(FilterSpec(network=True)) is not first


def test_build_leaves_host_unfiltered() -> None:
    build_filter(FilterSpec(network=True))
    assert seccomp_mode_of_this_process() == "0"


def test_seccomp_available_installs_nothing() -> None:
    assert seccomp_available()
    assert seccomp_mode_of_this_process() == "0"


def test_denied_lists_every_denied_syscall(program: SeccompProgram) -> None:
    for name in DENIED_SYSCALLS:
        if name in NATIVE_NUMBERS:
            assert name in program.denied


def test_denied_lists_argument_rules(program: SeccompProgram) -> None:
    for entry in (
        "clone (namespace flags)",
        "ioctl (TIOCSTI)",
        "ioctl (TIOCLINUX)",
        "personality (other than 0 and 0xffffffff)",
        "prlimit64 (target other than the caller)",
        "sched_setaffinity (target other than the caller)",
        "sched_setscheduler (target other than the caller)",
        "sched_setparam (target other than the caller)",
        "sched_setattr (target other than the caller)",
        "migrate_pages (target other than the caller)",
        "move_pages (target other than the caller)",
        "setpriority (target other than the caller)",
        "setpriority (which other than PRIO_PROCESS)",
        "ioprio_set (target other than the caller)",
        "ioprio_set (which other than IOPRIO_WHO_PROCESS)",
        "prctl (PR_SET_DUMPABLE other than 0)",
        "socket",
        "socketpair (domain other than AF_UNIX)",
        "socketpair (type other than SOCK_STREAM and SOCK_SEQPACKET)",
    ):
        assert entry in program.denied


def test_network_spec_keeps_socket_rules_out(
    network_program: SeccompProgram,
) -> None:
    socket_rules = [
        entry for entry in network_program.denied if entry.startswith("socket")
    ]
    assert socket_rules == []
    assert "ptrace" in network_program.denied
    assert "prlimit64 (target other than the caller)" in (
        network_program.denied
    )


def test_enosys_lists_clone3_and_new_numbers(
    program: SeccompProgram,
) -> None:
    assert "clone3" in program.enosys
    assert "cachestat" in program.enosys
    assert "syscall 1000" in program.enosys
    assert "syscall 1023" in program.enosys
    assert "syscall 1024" not in program.enosys
    assert "statmount" not in program.enosys


def test_describe_syscall_names() -> None:
    assert describe_syscall(syscall_number("ptrace")) == "ptrace"
    assert describe_syscall(457) == "statmount"
    assert describe_syscall(1000) == "syscall 1000"
    assert describe_syscall(-1) == "syscall -1"


@x86_64_only
def test_describe_syscall_uprobe_names() -> None:
    assert describe_syscall(335) == "uretprobe"
    assert describe_syscall(336) == "uprobe"
    assert describe_syscall(337) == "syscall 337"


@x86_64_only
def test_enosys_lists_x86_64_gap(
    program: SeccompProgram,
) -> None:
    assert "uretprobe" in program.enosys
    assert "uprobe" in program.enosys
    assert "syscall 337" in program.enosys
    assert "syscall 423" in program.enosys
    assert "rseq" not in program.enosys
    assert "pidfd_send_signal" not in program.enosys


@x86_64_only
def test_describe_syscall_marks_x32() -> None:
    x32_getpid = X32_SYSCALL_BIT | syscall_number("getpid")
    assert describe_syscall(x32_getpid) == "getpid (x32 ABI)"


# Interpreter work that must keep running under the filter.


def python_work(folder: str) -> list[object]:
    path = Path(folder) / "data.json"
    path.write_text(json.dumps({"numbers": [1, 2, 3]}))
    loaded = json.loads(path.read_text())
    results: list[int] = []
    threads = [
        threading.Thread(target=results.append, args=(index,))
        for index in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [loaded["numbers"], sorted(results)]


def test_python_work_runs(program: SeccompProgram, tmp_path: Path) -> None:
    """Fails if the program denies what file I/O, json or threads need.

    Threads also show that clone3's ENOSYS lets glibc fall back to clone.
    """
    outcome = run_probe(lambda: python_work(str(tmp_path)), program.bpf)
    assert outcome.value == [[1, 2, 3], list(range(8))]


def fork_and_wait() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_fork_works(program: SeccompProgram) -> None:
    """Fails if the clone rules match a plain fork."""
    assert run_probe(fork_and_wait, program.bpf).value == 7


def test_execve_works(program: SeccompProgram) -> None:
    """Fails if the program denies execve or what subprocess needs."""
    outcome = run_probe(
        lambda: subprocess.run(["/bin/true"], check=False).returncode,
        program.bpf,
    )
    assert outcome.value == 0


def test_seccomp_available_under_filter(program: SeccompProgram) -> None:
    assert run_probe(seccomp_available, program.bpf).value is True


def multiprocessing_work(method: str) -> Callable[[], list[object]]:
    def probe() -> list[object]:
        context: Any = multiprocessing.get_context(method)
        queue = context.Queue()
        process = context.Process(target=queue.put, args=("from child",))
        process.start()
        message = queue.get(timeout=20)
        process.join()
        with context.Pool(2) as pool:
            absolutes = pool.map(abs, [-1, -2, -3])
        sender, receiver = context.Pipe()
        sender.send("through pipe")
        return [message, process.exitcode, absolutes, receiver.recv()]

    return probe


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_works(program: SeccompProgram, method: str) -> None:
    """Fails if the program denies what these start methods need.

    multiprocessing.Pipe() is a socketpair(AF_UNIX, SOCK_STREAM), and
    nothing here calls setsid() or setpgid().
    """
    outcome = run_probe(multiprocessing_work(method), program.bpf)
    assert outcome.value == ["from child", 0, [1, 2, 3], "through pipe"]


def ctypes_callback() -> int:
    # libffi allocates an executable trampoline for a Python callback.
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(
        lambda left, right: 0
    )
    libc = ctypes.CDLL(None)
    items = (ctypes.c_int * 3)(3, 1, 2)
    libc.qsort(items, 3, ctypes.sizeof(ctypes.c_int), compare)
    return len(items)


def test_ctypes_callback_works(program: SeccompProgram) -> None:
    """Fails if libffi needs a denied call, such as memfd_create."""
    assert run_probe(ctypes_callback, program.bpf).value == 3


def harden_and_report() -> int:
    procstate.harden("probe")
    return int(procstate.report()["dumpable"])


def test_worker_harden_works(program: SeccompProgram) -> None:
    """Fails if the dumpable rule also denies PR_SET_DUMPABLE 0."""
    assert run_probe(harden_and_report, program.bpf).value == 0


# Denied families: EPERM from the filter, something else from the kernel.


def test_ptrace_traceme_denied(program: SeccompProgram) -> None:
    """Fails without the ptrace rule."""
    filtered, unfiltered = filtered_and_unfiltered(
        call("ptrace", 0, 0, 0, 0), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 0


def test_unshare_user_namespace_denied(program: SeccompProgram) -> None:
    """Fails without the unshare rule."""
    clone_newuser = CLONE_NAMESPACE_FLAGS["CLONE_NEWUSER"]
    filtered, unfiltered = filtered_and_unfiltered(
        call("unshare", clone_newuser), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.error != errno.EPERM


def mount_tmpfs(target: str) -> Callable[[], int]:
    def probe() -> int:
        source = ctypes.create_string_buffer(b"none")
        where = ctypes.create_string_buffer(target.encode())
        fstype = ctypes.create_string_buffer(b"tmpfs")
        return raw_syscall(
            syscall_number("mount"),
            ctypes.addressof(source),
            ctypes.addressof(where),
            ctypes.addressof(fstype),
            0,
            0,
        )

    return probe


def test_mount_denied(program: SeccompProgram, tmp_path: Path) -> None:
    """Fails without the mount rule.

    The target does not exist, so an unfiltered mount fails with ENOENT.
    """
    probe = mount_tmpfs(str(tmp_path / "missing"))
    filtered, unfiltered = filtered_and_unfiltered(probe, program.bpf)
    assert filtered.error == errno.EPERM
    assert unfiltered.error == errno.ENOENT


def run_true(**options: Any) -> Callable[[], int]:
    return lambda: (
        subprocess.run(["/bin/true"], check=False, **options).returncode
    )


def test_subprocess_new_session_denied(program: SeccompProgram) -> None:
    """Fails without the setsid rule: the child calls setsid() before exec
    and the parent raises its errno.
    """
    filtered, unfiltered = filtered_and_unfiltered(
        run_true(start_new_session=True), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 0


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="process_group is new in 3.11"
)
def test_subprocess_process_group_denied(program: SeccompProgram) -> None:
    """Fails without the setpgid rule: the child calls setpgid() before
    exec and the parent raises its errno.
    """
    filtered, unfiltered = filtered_and_unfiltered(
        run_true(process_group=0), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 0


# (system call, arguments): arguments that the kernel, running the call
# for root, rejects with an errno other than EPERM, or that change nothing
# outside the child.
INVALID_ARGUMENT_CALLS = [
    ("bpf", (0, 0, 0)),
    ("keyctl", (0, (-3) & 0xFFFFFFFF, 0)),
    ("userfaultfd", (0xFFFFFFFF,)),
    ("perf_event_open", (0, 0, -1, -1, 0)),
    ("io_uring_setup", (1, 0)),
    ("open_by_handle_at", (-1, 0, 0)),
    ("process_vm_readv", (os.getpid(), 0, 0, 0, 0, 0)),
    ("inotify_init1", (0,)),
    ("inotify_add_watch", (-1, 0, 0)),
    ("shmget", (0, 0, 0)),
    ("shmat", (-1, 0, 0)),
    ("shmdt", (1,)),
    ("shmctl", (-1, 2, 0)),
    ("msgget", (0x5A4D0001, 0)),
    ("msgsnd", (-1, 0, 0, 0)),
    ("msgrcv", (-1, 0, 0, 0, 0)),
    ("msgctl", (-1, 2, 0)),
    ("semget", (0, -1, 0)),
    ("semop", (-1, 0, 0)),
    ("semtimedop", (-1, 0, 0, 0)),
    ("semctl", (-1, 0, 0, 0)),
    ("mq_open", (0, 0, 0, 0)),
    ("mq_unlink", (0,)),
    ("mq_timedsend", (-1, 0, 0, 0, 0)),
    ("mq_timedreceive", (-1, 0, 0, 0, 0)),
    ("mq_notify", (-1, 0)),
    ("mq_getsetattr", (-1, 0, 0)),
    ("memfd_create", (0, 0)),
    ("setsid", ()),
    ("setpgid", (0, 0)),
]


@pytest.mark.parametrize(
    ("name", "args"),
    INVALID_ARGUMENT_CALLS,
    ids=[name for name, _ in INVALID_ARGUMENT_CALLS],
)
def test_denied_syscall_returns_eperm(
    program: SeccompProgram, name: str, args: tuple[int, ...]
) -> None:
    """Fails without the rule for the system call in the test id."""
    if os.geteuid() != 0:
        pytest.skip("the kernel itself returns EPERM to an unprivileged user")
    filtered, unfiltered = filtered_and_unfiltered(
        call(name, *args), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.error != errno.EPERM


def guard_program(numbers: list[int]) -> bytes:
    """Build a filter that returns SECCOMP_RET_TRACE for ``numbers``.

    Without a tracer that action fails the call with ENOSYS before the
    kernel runs it, and the program's ERRNO action takes precedence over
    it.  Under both filters a denied call returns EPERM and any other call
    in ``numbers`` returns ENOSYS without running.
    """
    guard = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for number in numbers:
        guard.add_rule(pyseccomp.TRACE(0), number)
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as reader:
        with open(write_end, "wb") as writer:
            guard.export_bpf(writer)
        return reader.read()


def errno_per_number(numbers: list[int]) -> Callable[[], dict[str, int]]:
    def probe() -> dict[str, int]:
        answers = {}
        for number in numbers:
            try:
                raw_syscall(number, 0, 0, 0, 0, 0, 0)
                answers[describe_syscall(number)] = 0
            except OSError as error:
                answers[describe_syscall(number)] = error.errno or 0
        return answers

    return probe


def test_every_denied_syscall_returns_eperm(program: SeccompProgram) -> None:
    """Fails without the rule for any one name in DENIED_SYSCALLS.

    A guard filter stops every call before the kernel runs it, so the
    sweep is safe even when a rule is missing.
    """
    numbers = [NATIVE_NUMBERS[name] for name in DENIED_NATIVE_SYSCALLS]
    guard = guard_program(numbers)
    probe = errno_per_number(numbers)
    guarded_only = run_probe(probe, guard).value
    filtered = run_probe(probe, guard, program.bpf).value
    assert set(guarded_only.values()) == {errno.ENOSYS}
    not_eperm = {
        name: error for name, error in filtered.items() if error != errno.EPERM
    }
    assert not_eperm == {}


# Argument rules.


def clone_with(flags: int) -> Callable[[], str]:
    number = syscall_number("clone")

    def probe() -> str:
        pid = raw_syscall(number, flags | SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, WAIT_ALL)
        return "created"

    return probe


@pytest.mark.parametrize("flag", sorted(CLONE_NAMESPACE_FLAGS))
def test_clone_namespace_flag_denied(
    program: SeccompProgram, flag: str
) -> None:
    """Fails without the clone rule for the flag in the test id."""
    outcome = run_probe(clone_with(CLONE_NAMESPACE_FLAGS[flag]), program.bpf)
    assert outcome.error == errno.EPERM


def test_clone_newuser_allowed_unfiltered() -> None:
    if os.geteuid() != 0:
        pytest.skip("user namespaces may be closed to unprivileged users")
    clone_newuser = CLONE_NAMESPACE_FLAGS["CLONE_NEWUSER"]
    assert run_probe(clone_with(clone_newuser)).value == "created"


def test_plain_clone_allowed(program: SeccompProgram) -> None:
    """Fails if a clone rule matches flags without a namespace bit."""
    assert run_probe(clone_with(0), program.bpf).value == "created"


def test_clone3_returns_enosys(program: SeccompProgram) -> None:
    """Fails without the clone3 rule: the kernel rejects size 0 with EINVAL."""
    filtered, unfiltered = filtered_and_unfiltered(
        call("clone3", 0, 0), program.bpf
    )
    assert filtered.error == errno.ENOSYS
    assert unfiltered.error == errno.EINVAL


def with_pty(operation: Callable[[int], int]) -> Callable[[], int]:
    def probe() -> int:
        leader, follower = os.openpty()
        try:
            return operation(follower)
        finally:
            os.close(leader)
            os.close(follower)

    return probe


def push_input(fd: int) -> int:
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    return 0


def push_input_with_upper_bits(fd: int) -> int:
    char = ctypes.c_char(b"x")
    request = UPPER_HALF | termios.TIOCSTI
    number = syscall_number("ioctl")
    return raw_syscall(number, fd, request, ctypes.addressof(char))


def paste_selection(fd: int) -> int:
    subcode = ctypes.c_char(b"\x03")
    number = syscall_number("ioctl")
    return raw_syscall(number, fd, TIOCLINUX, ctypes.addressof(subcode))


def window_size(fd: int) -> int:
    fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8))
    return 0


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("TIOCSTI on another terminal needs CAP_SYS_ADMIN")


@pytest.mark.usefixtures("root_only")
def test_tiocsti_denied(program: SeccompProgram) -> None:
    """Fails without the ioctl TIOCSTI rule."""
    filtered, unfiltered = filtered_and_unfiltered(
        with_pty(push_input), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 0


@pytest.mark.usefixtures("root_only")
def test_tiocsti_upper_bits_denied(program: SeccompProgram) -> None:
    """Fails if the TIOCSTI rule compares all 64 bits of the request.

    The kernel reads the request as a 32-bit value, so an unfiltered call
    with upper bits set pushes the character.
    """
    filtered, unfiltered = filtered_and_unfiltered(
        with_pty(push_input_with_upper_bits), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 0


def test_tioclinux_denied(program: SeccompProgram) -> None:
    """Fails without the ioctl TIOCLINUX rule.

    A pty is not a console, so the kernel rejects the request itself.
    """
    filtered, unfiltered = filtered_and_unfiltered(
        with_pty(paste_selection), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.error not in (None, errno.EPERM)


def test_other_terminal_ioctl_allowed(program: SeccompProgram) -> None:
    """Fails if the terminal ioctl rules match other requests."""
    assert run_probe(with_pty(window_size), program.bpf).value == 0


def set_personality(value: int) -> Callable[[], int]:
    return call("personality", value)


@pytest.mark.parametrize("value", [0, 0xFFFFFFFF])
def test_personality_query_and_linux_allowed(
    program: SeccompProgram, value: int
) -> None:
    outcome = run_probe(set_personality(value), program.bpf)
    assert outcome.error is None
    assert outcome.value is not None


@pytest.mark.parametrize(
    "value",
    [0x0040000, 0x0400000, 0x0008, 0x1, 0x80000000, 0xFFFFFFFE, UPPER_HALF],
    ids=hex,
)
def test_personality_change_denied(
    program: SeccompProgram, value: int
) -> None:
    """Fails without the personality rules."""
    filtered, unfiltered = filtered_and_unfiltered(
        set_personality(value), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.error is None


# Calls that name another process.


def with_other_process(operation: Callable[[int], int]) -> Callable[[], int]:
    """Return a probe that runs ``operation`` on the pid of a sleeping
    child of the probe, so that an unfiltered call changes only that
    child.
    """

    def probe() -> int:
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        try:
            return operation(pid)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    return probe


def read_open_files_limit(pid: int) -> int:
    limits = (ctypes.c_uint64 * 2)()
    number = syscall_number("prlimit64")
    return raw_syscall(
        number, pid, resource.RLIMIT_NOFILE, 0, ctypes.addressof(limits)
    )


def keep_affinity(pid: int) -> int:
    os.sched_setaffinity(pid, os.sched_getaffinity(0))
    return 0


def keep_scheduler(pid: int) -> int:
    os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    return 0


def keep_scheduling_parameters(pid: int) -> int:
    os.sched_setparam(pid, os.sched_param(0))
    return 0


def keep_scheduling_attributes(pid: int) -> int:
    attributes = ctypes.create_string_buffer(SCHED_ATTR_OTHER)
    number = syscall_number("sched_setattr")
    return raw_syscall(number, pid, ctypes.addressof(attributes), 0)


def migrate_node_0_to_node_0(pid: int) -> int:
    nodes = ctypes.c_ulong(1)
    address = ctypes.addressof(nodes)
    number = syscall_number("migrate_pages")
    return raw_syscall(number, pid, 64, address, address)


def query_no_pages(pid: int) -> int:
    return raw_syscall(syscall_number("move_pages"), pid, 0, 0, 0, 0, 0)


def keep_nice_value(pid: int) -> int:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, pid, own)
    return 0


def set_best_effort_io_priority(pid: int) -> int:
    number = syscall_number("ioprio_set")
    return raw_syscall(number, IOPRIO_WHO_PROCESS, pid, IOPRIO_BEST_EFFORT_4)


# One call per system call with a rule on its target, with arguments that
# change nothing or only the target.  The probe child is non-dumpable, so
# only root may run the ptrace-checked ones on its own child.
PTRACE_CHECKED_CALLS = ("migrate_pages", "move_pages")
TARGETED_CALLS: dict[str, Callable[[int], int]] = {
    "prlimit64": read_open_files_limit,
    "sched_setaffinity": keep_affinity,
    "sched_setscheduler": keep_scheduler,
    "sched_setparam": keep_scheduling_parameters,
    "sched_setattr": keep_scheduling_attributes,
    "migrate_pages": migrate_node_0_to_node_0,
    "move_pages": query_no_pages,
    "setpriority": keep_nice_value,
    "ioprio_set": set_best_effort_io_priority,
}


@pytest.mark.parametrize("name", TARGETED_CALLS)
def test_call_on_other_process_denied(
    program: SeccompProgram, name: str
) -> None:
    """Fails without the target rule of the system call in the test id."""
    if name in PTRACE_CHECKED_CALLS and os.geteuid() != 0:
        pytest.skip("the kernel denies ptrace access to a non-dumpable child")
    probe = with_other_process(TARGETED_CALLS[name])
    filtered, unfiltered = filtered_and_unfiltered(probe, program.bpf)
    assert filtered.error == errno.EPERM
    assert unfiltered.error != errno.EPERM


def outcome_per_call(
    calls: dict[str, Callable[[], object]],
) -> Callable[[], dict[str, object]]:
    def probe() -> dict[str, object]:
        outcomes: dict[str, object] = {}
        for name, operation in calls.items():
            try:
                operation()
                outcomes[name] = "ok"
            except OSError as error:
                outcomes[name] = errno.errorcode.get(error.errno or 0)
        return outcomes

    return probe


def set_own_open_files_limit() -> None:
    resource.setrlimit(
        resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)
    )


# Python's own interfaces, which pass 0 for the calling process.
SELF_CALLS: dict[str, Callable[[], object]] = {
    "resource.setrlimit": set_own_open_files_limit,
    "resource.prlimit": lambda: resource.prlimit(0, resource.RLIMIT_NOFILE),
    "os.sched_setaffinity": lambda: keep_affinity(0),
    "os.sched_setscheduler": lambda: keep_scheduler(0),
    "os.sched_setparam": lambda: keep_scheduling_parameters(0),
    "os.nice": lambda: os.nice(1),
    "os.setpriority": lambda: keep_nice_value(0),
    "sched_setattr": lambda: keep_scheduling_attributes(0),
    "migrate_pages": lambda: migrate_node_0_to_node_0(0),
    "move_pages": lambda: query_no_pages(0),
    "ioprio_set": lambda: set_best_effort_io_priority(0),
}


def test_calls_on_own_process_allowed(program: SeccompProgram) -> None:
    """Fails if a target rule matches 0, the calling process."""
    outcomes = run_probe(outcome_per_call(SELF_CALLS), program.bpf).value
    assert outcomes == dict.fromkeys(SELF_CALLS, "ok")


# (system call, which): with who 0 these select the caller's process
# group or every process of its uid.
GROUP_SELECTORS = [
    ("setpriority", PRIO_PGRP),
    ("setpriority", PRIO_USER),
    ("ioprio_set", IOPRIO_WHO_PGRP),
    ("ioprio_set", IOPRIO_WHO_USER),
]


@pytest.mark.parametrize(
    ("name", "which"),
    GROUP_SELECTORS,
    ids=[f"{name}-{which}" for name, which in GROUP_SELECTORS],
)
def test_group_priority_change_denied(
    program: SeccompProgram, name: str, which: int
) -> None:
    """Fails without the "which" rule of the system call in the test id.

    Unfiltered, the call would change the priority of every process of
    the caller's uid or process group, so a guard filter stops it before
    the kernel runs it.
    """
    probe = call(name, which, 0, 0)
    guard = guard_program([syscall_number(name)])
    assert run_probe(probe, guard).error == errno.ENOSYS
    assert run_probe(probe, guard, program.bpf).error == errno.EPERM


# Dumpable.


def set_dumpable(option: int, value: int) -> Callable[[], int]:
    number = syscall_number("prctl")

    def probe() -> int:
        raw_syscall(number, option, value, 0, 0, 0)
        return raw_syscall(number, PR_GET_DUMPABLE, 0, 0, 0, 0)

    return probe


@pytest.mark.parametrize(
    "option", [PR_SET_DUMPABLE, UPPER_HALF | PR_SET_DUMPABLE], ids=hex
)
def test_dumpable_on_denied(program: SeccompProgram, option: int) -> None:
    """Fails without the prctl rule, or if it compares the upper half of
    the option, which the kernel reads as an int.

    The probe child starts non-dumpable.
    """
    filtered, unfiltered = filtered_and_unfiltered(
        set_dumpable(option, 1), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 1


def test_dumpable_off_allowed(program: SeccompProgram) -> None:
    outcome = run_probe(set_dumpable(PR_SET_DUMPABLE, 0), program.bpf)
    assert outcome.value == 0


# Sockets.


def open_socket(family: int) -> Callable[[], int]:
    def probe() -> int:
        with socket.socket(family, socket.SOCK_STREAM):
            return 0

    return probe


def open_socketpair(family: int) -> Callable[[], int]:
    def probe() -> int:
        first, second = socket.socketpair(family, socket.SOCK_STREAM)
        first.close()
        second.close()
        return 0

    return probe


@pytest.mark.parametrize(
    "family",
    [socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET],
    ids=lambda family: family.name,
)
def test_network_socket_denied(program: SeccompProgram, family: int) -> None:
    """Fails without the socket rule."""
    probe = call("socket", family, socket.SOCK_RAW, 0)
    assert run_probe(probe, program.bpf).error == errno.EPERM


def test_inet_socket_unfiltered_succeeds() -> None:
    assert run_probe(open_socket(socket.AF_INET)).value == 0


def socket_errno_per_family() -> dict[int, int | None]:
    errors: dict[int, int | None] = {}
    for family in SOCKET_FAMILIES:
        try:
            os.close(raw_syscall(syscall_number("socket"), family, 1, 0))
            errors[family] = None
        except OSError as error:
            errors[family] = error.errno
    return errors


def test_socket_denied_for_every_family(program: SeccompProgram) -> None:
    """Fails if the socket rule lets any family through.

    Run filtered only: as root, an unfiltered socket() of some families
    loads kernel modules.
    """
    answers = run_probe(socket_errno_per_family, program.bpf).value
    assert answers == {str(family): errno.EPERM for family in SOCKET_FAMILIES}


def test_socket_domain_upper_bits_denied(program: SeccompProgram) -> None:
    """Fails if the socket rule depends on the domain.

    The kernel reads the domain as an int, so an unfiltered call with
    upper bits set opens an AF_INET socket.
    """
    probe = call("socket", UPPER_HALF | socket.AF_INET, socket.SOCK_STREAM, 0)
    filtered, unfiltered = filtered_and_unfiltered(probe, program.bpf)
    assert filtered.error == errno.EPERM
    assert unfiltered.error is None


def test_inet_socketpair_denied(program: SeccompProgram) -> None:
    """Fails without the socketpair rule: the kernel returns EOPNOTSUPP."""
    filtered, unfiltered = filtered_and_unfiltered(
        open_socketpair(socket.AF_INET), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.error == errno.EOPNOTSUPP


def test_unix_socket_denied(program: SeccompProgram) -> None:
    """Fails without the socket rule: AF_UNIX reaches the host's sockets."""
    filtered, unfiltered = filtered_and_unfiltered(
        open_socket(socket.AF_UNIX), program.bpf
    )
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 0


def test_unix_socketpair_allowed(program: SeccompProgram) -> None:
    assert run_probe(open_socketpair(socket.AF_UNIX), program.bpf).value == 0


def unix_pair_of_type(socket_type: int) -> Callable[[], int]:
    number = syscall_number("socketpair")

    def probe() -> int:
        pair = (ctypes.c_int * 2)()
        raw_syscall(
            number, socket.AF_UNIX, socket_type, 0, ctypes.addressof(pair)
        )
        os.close(pair[0])
        os.close(pair[1])
        return 0

    return probe


SOCK_FLAGS = socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
ALLOWED_PAIR_TYPES = {
    "SOCK_STREAM": socket.SOCK_STREAM,
    "SOCK_SEQPACKET": socket.SOCK_SEQPACKET,
    "SOCK_STREAM with flags": socket.SOCK_STREAM | SOCK_FLAGS,
    "SOCK_SEQPACKET with flags": socket.SOCK_SEQPACKET | SOCK_FLAGS,
}
DENIED_PAIR_TYPES = {
    "SOCK_DGRAM": socket.SOCK_DGRAM,
    "SOCK_RAW": socket.SOCK_RAW,
    "SOCK_DGRAM with flags": socket.SOCK_DGRAM | SOCK_FLAGS,
    "SOCK_DGRAM with upper bits": UPPER_HALF | socket.SOCK_DGRAM,
}


@pytest.mark.parametrize("name", ALLOWED_PAIR_TYPES)
def test_unix_stream_pair_types_allowed(
    program: SeccompProgram, name: str
) -> None:
    """Fails if a socketpair type rule matches these types or flags."""
    probe = unix_pair_of_type(ALLOWED_PAIR_TYPES[name])
    assert run_probe(probe, program.bpf).value == 0


@pytest.mark.parametrize("name", DENIED_PAIR_TYPES)
def test_unix_datagram_pair_denied(program: SeccompProgram, name: str) -> None:
    """Fails without the socketpair type rules.

    The kernel reads the type as an int and makes an AF_UNIX SOCK_RAW
    socket a datagram socket, so every case opens a datagram pair
    unfiltered.
    """
    probe = unix_pair_of_type(DENIED_PAIR_TYPES[name])
    filtered, unfiltered = filtered_and_unfiltered(probe, program.bpf)
    assert filtered.error == errno.EPERM
    assert unfiltered.value == 0


def send_through_datagram_pair(path: str, payload: bytes) -> Callable[[], int]:
    def probe() -> int:
        first, second = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with first, second:
            return first.sendto(payload, path)

    return probe


def test_datagram_pair_cannot_reach_named_socket(
    program: SeccompProgram, tmp_path: Path
) -> None:
    """Fails without the socketpair type rules.

    sendto() with an address on one end of an AF_UNIX datagram pair
    reaches the socket bound to that address, as a connect() would.
    """
    path = str(tmp_path / "host.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as host_socket:
        host_socket.bind(path)
        host_socket.setblocking(False)
        filtered = run_probe(
            send_through_datagram_pair(path, b"filtered"), program.bpf
        )
        unfiltered = run_probe(send_through_datagram_pair(path, b"plain"))
        received = []
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(host_socket.recv(64))
    assert filtered.error == errno.EPERM
    assert unfiltered.value == len(b"plain")
    assert received == [b"plain"]


def test_inherited_socket_wraps_without_socket_call(
    program: SeccompProgram,
) -> None:
    """Fails if socket.socket(fileno=fd) calls socket(), as the worker
    wraps its inherited channel descriptor that way.
    """
    inherited, peer = socket.socketpair()
    with inherited, peer:

        def probe() -> str:
            wrapped = socket.socket(fileno=os.dup(inherited.fileno()))
            with wrapped:
                wrapped.sendall(b"ping")
            return peer.recv(4).decode()

        assert run_probe(probe, program.bpf).value == "ping"


def test_network_spec_allows_inet_socket(
    network_program: SeccompProgram,
) -> None:
    probe = open_socket(socket.AF_INET)
    assert run_probe(probe, network_program.bpf).value == 0


def test_network_spec_allows_unix_socket_and_pair(
    network_program: SeccompProgram,
) -> None:
    unix_socket = run_probe(open_socket(socket.AF_UNIX), network_program.bpf)
    datagram_pair = run_probe(
        unix_pair_of_type(socket.SOCK_DGRAM), network_program.bpf
    )
    assert unix_socket.value == 0
    assert datagram_pair.value == 0


# System call numbers newer than the rules.


def test_syscall_1000_returns_enosys(program: SeccompProgram) -> None:
    assert run_probe(call_number(1000), program.bpf).error == errno.ENOSYS


def test_implemented_new_syscall_returns_enosys(
    program: SeccompProgram,
) -> None:
    """Fails without the ENOSYS range: the kernel runs cachestat (451)."""
    probe = call_number(451, 2**32 - 1, 0, 0, 0)
    filtered, unfiltered = filtered_and_unfiltered(probe, program.bpf)
    assert filtered.error == errno.ENOSYS
    assert unfiltered.error not in (None, errno.ENOSYS)


def test_unreviewed_range_errnos(program: SeccompProgram) -> None:
    """Fails without the ENOSYS range or the statmount, listmount and
    open_tree_attr rules.
    """
    numbers = list(range(451, 1024))
    answers = run_probe(errno_per_number(numbers), program.bpf).value
    expected = {describe_syscall(number): errno.ENOSYS for number in numbers}
    for name in ("statmount", "listmount", "open_tree_attr"):
        expected[name] = errno.EPERM
    assert answers == expected


def errno_guard(numbers: list[int]) -> bytes:
    """Build a filter that fails each of ``numbers`` with EDOM.

    Installed before the program, it stops every call in ``numbers`` and
    lets the program's errno through: of two ERRNO actions, the kernel
    keeps the one of the filter installed last.
    """
    guard = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for number in numbers:
        guard.add_rule(pyseccomp.ERRNO(errno.EDOM), number)
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as reader:
        with open(write_end, "wb") as writer:
            guard.export_bpf(writer)
        return reader.read()


# (name, system call, arguments) whose results under the program cover
# EPERM, ENOSYS and allowed, with argument rules on both sides.
VERDICT_CASES = [
    ("ptrace", "ptrace", ()),
    ("getppid", "getppid", ()),
    ("clone3", "clone3", ()),
    ("prctl set dumpable", "prctl", (PR_SET_DUMPABLE, 1)),
    ("prctl clear dumpable", "prctl", (PR_SET_DUMPABLE, 0)),
    ("prlimit64 other", "prlimit64", (1, 0, 0, 0)),
    ("prlimit64 self", "prlimit64", (0, 0, 0, 0)),
    ("socket AF_UNIX", "socket", (socket.AF_UNIX, socket.SOCK_STREAM, 0)),
    ("socketpair stream", "socketpair", (socket.AF_UNIX, 1, 0, 0)),
    ("socketpair datagram", "socketpair", (socket.AF_UNIX, 2, 0, 0)),
    ("ioctl TIOCSTI", "ioctl", (0, termios.TIOCSTI, 0)),
    ("ioctl TIOCGWINSZ", "ioctl", (0, termios.TIOCGWINSZ, 0)),
]


def kernel_verdicts() -> dict[str, int | None]:
    verdicts: dict[str, int | None] = {}
    for label, name, args in VERDICT_CASES:
        try:
            raw_syscall(syscall_number(name), *args)
            verdicts[label] = 0
        except OSError as error:
            verdicts[label] = error.errno
        if verdicts[label] == errno.EDOM:
            verdicts[label] = None
    return verdicts


def test_filter_errno_matches_seccomp(program: SeccompProgram) -> None:
    """Fails if filter_errno() reads the program differently from seccomp.

    A guard filter stops every call, so none of them runs.
    """
    numbers = sorted({syscall_number(name) for _, name, _ in VERDICT_CASES})
    kernel = run_probe(kernel_verdicts, errno_guard(numbers), program.bpf)
    evaluated = {
        label: filter_errno(
            program.bpf, syscall_number(name), args, arch=NATIVE_ARCH
        )
        for label, name, args in VERDICT_CASES
    }
    assert evaluated == kernel.value
    assert set(evaluated.values()) == {errno.EPERM, errno.ENOSYS, None}


@x86_64_only
def test_uprobe_numbers_return_enosys(program: SeccompProgram) -> None:
    """Fails without the ENOSYS rules for x86_64 numbers 335 to 423.

    Linux 6.18 runs uretprobe (335) and uprobe (336) without consulting
    seccomp and returns ENOSYS itself for 337 to 423, so the test reads
    the program's errnos with filter_errno().
    """
    numbers = range(335, 424)
    answers = {
        number: filter_errno(program.bpf, number, arch=AUDIT_ARCH_X86_64)
        for number in numbers
    }
    assert answers == dict.fromkeys(numbers, errno.ENOSYS)


@x86_64_only
def test_x86_64_enosys_range_bounds(
    program: SeccompProgram,
) -> None:
    """Fails if the x86_64 ENOSYS range reaches rseq (334) or
    pidfd_send_signal (424).
    """
    for number in (334, 424):
        assert (
            filter_errno(program.bpf, number, arch=AUDIT_ARCH_X86_64) is None
        )


# Other system call conventions.


@x86_64_only
def test_x32_syscall_killed(program: SeccompProgram) -> None:
    """Fails if the program lets x32 numbers through to the rules.

    The kernel returns ENOSYS when built without x32 support, and runs the
    call otherwise.
    """
    x32_getpid = call_number(X32_SYSCALL_BIT | syscall_number("getpid"))
    filtered, unfiltered = filtered_and_unfiltered(x32_getpid, program.bpf)
    assert filtered.signal == signal.SIGSYS
    assert unfiltered.signal is None


# mov eax, 20 (getpid in the i386 table); int 0x80; ret
I386_GETPID = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])


def i386_getpid() -> int:
    """Call getpid through the i386 entry point from a stub in the child."""
    protection = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=protection)
    page.write(I386_GETPID)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    stub = ctypes.CFUNCTYPE(ctypes.c_int)(address)
    return int(stub())


@x86_64_only
def test_int80_syscall_killed(program: SeccompProgram) -> None:
    """Fails if the bad-architecture action is not KILL_PROCESS."""
    unfiltered = run_probe(i386_getpid)
    if unfiltered.signal is not None:
        pytest.skip("kernel without IA32 emulation")
    filtered = run_probe(i386_getpid, program.bpf)
    assert filtered.signal == signal.SIGSYS
    assert unfiltered.value is not None
