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

import ctypes
import errno
import fcntl
import json
import mmap
import os
import platform
import signal
import socket
import subprocess
import termios
import threading
from collections.abc import Callable
from pathlib import Path

import pyseccomp
import pytest

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
        "socket (domain other than AF_UNIX)",
        "socketpair (domain other than AF_UNIX)",
    ):
        assert entry in program.denied


def test_network_spec_keeps_socket_rules_out(
    network_program: SeccompProgram,
) -> None:
    socket_rules = [
        entry for entry in network_program.denied if "AF_UNIX" in entry
    ]
    assert socket_rules == []
    assert "ptrace" in network_program.denied


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


def test_socket_domain_upper_bits_denied(program: SeccompProgram) -> None:
    """Fails if the socket rule compares only the lower 32 bits.

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


def test_unix_socket_allowed(program: SeccompProgram) -> None:
    assert run_probe(open_socket(socket.AF_UNIX), program.bpf).value == 0


def test_unix_socketpair_allowed(program: SeccompProgram) -> None:
    assert run_probe(open_socketpair(socket.AF_UNIX), program.bpf).value == 0


def test_network_spec_allows_inet_socket(
    network_program: SeccompProgram,
) -> None:
    probe = open_socket(socket.AF_INET)
    assert run_probe(probe, network_program.bpf).value == 0


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
