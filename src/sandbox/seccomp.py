"""Seccomp-bpf programs for sandbox workers, built with libseccomp.

The launcher installs the program with seccomp(SECCOMP_SET_MODE_FILTER) as
its last step before execve, so the program allows execve and everything a
CPython interpreter needs: it is a denylist over a default of ALLOW.  Denied
calls fail with EPERM so that plugin code gets an ordinary OSError.  Calls
from a foreign architecture (i386 ``int 0x80``) or through the x32 ABI kill
the whole process with SIGSYS, because their numbers do not mean what the
denylist assumes.

Only the native architecture is filtered, and only x86_64 and aarch64 are
supported.  Both use the shared asm-generic numbers for every system call
from 424 on, so the rules for newer system calls below apply to both.  The
ENOSYS rules for numbers 335 to 423 apply to x86_64 only.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast

from .errors import LaunchError

try:
    import pyseccomp
except (ImportError, RuntimeError) as error:
    # pyseccomp is a Linux-only dependency, and it raises RuntimeError when
    # it finds no libseccomp.  Only build_filter() needs it.
    _PYSECCOMP_ERROR: str | None = f"{type(error).__name__}: {error}"
else:
    _PYSECCOMP_ERROR = None

__all__ = [
    "FilterSpec",
    "SeccompProgram",
    "build_filter",
    "describe_syscall",
    "seccomp_available",
]

_STAGE: Final = "seccomp"

# Leaving the worker's process group, which the host kills with killpg()
# to end the worker and every process it started.  The launcher calls
# setsid() before it installs the filter.  They fail with EPERM in observe
# mode too.
_GROUP_LEAVING_SYSCALLS: Final = ("setsid", "setpgid")

# Denied outright.  Names that do not exist on the native architecture
# (iopl and ioperm exist only on x86, for example) are skipped.
_DENIED_SYSCALLS: Final = (
    # Reading or changing other processes.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    # Kernel attack surface and kernel state.
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
    "iopl",
    "ioperm",
    "syslog",
    "fanotify_init",
    # Kernel keyrings, which are shared by all processes of one uid.
    "keyctl",
    "add_key",
    "request_key",
    # Mounts, namespaces and the root directory.
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
    # File handles open inodes outside the process's view of the tree.
    "open_by_handle_at",
    "name_to_handle_at",
    # Machine-wide state.
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "quotactl_fd",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    # File activity of other processes: the host's and other plugins'.
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    # System V IPC objects and POSIX message queues outlive the worker,
    # and the kernel grants access to them by uid and mode, so workers of
    # one uid would share them.
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
    # Memory in a memfd counts against RLIMIT_AS only while it is mapped.
    # The host creates any shared memory a worker needs and passes the fd.
    "memfd_create",
    *_GROUP_LEAVING_SYSCALLS,
)

# Mount-family system calls newer than the syscall table of libseccomp
# 2.5.4, by number.  The numbers are the same on x86_64 and aarch64
# (scripts/syscall.tbl and arch/x86/entry/syscalls/syscall_64.tbl in
# Linux 6.18).
_NEWER_DENIED_SYSCALLS: Final = {
    457: "statmount",
    458: "listmount",
    467: "open_tree_attr",
}

# Names for describe_syscall() of the numbers past libseccomp 2.5.4's
# table that Linux 6.18 implements (same source as above).
_NEWER_SYSCALL_NAMES: Final = {
    451: "cachestat",
    452: "fchmodat2",
    453: "map_shadow_stack",
    454: "futex_wake",
    455: "futex_wait",
    456: "futex_requeue",
    457: "statmount",
    458: "listmount",
    459: "lsm_get_self_attr",
    460: "lsm_set_self_attr",
    461: "lsm_list_modules",
    462: "mseal",
    463: "setxattrat",
    464: "getxattrat",
    465: "listxattrat",
    466: "removexattrat",
    467: "open_tree_attr",
    468: "file_getattr",
    469: "file_setattr",
}

# Every number from the first one past libseccomp 2.5.4's x86_64 table
# (set_mempolicy_home_node is 450) up to this limit returns ENOSYS, so a
# system call that a later kernel adds is rejected rather than allowed.
# The range is fixed instead of read from the installed library so that
# the program does not depend on the distribution's patches: Debian 12's
# libseccomp 2.5.4-1+deb12u1 already names 451 to 456.  glibc falls back
# when fchmodat2 returns ENOSYS and uses none of the others by default.
# NOTE: a worker that turns on x86 user shadow stacks (opt-in glibc
# tunable since glibc 2.39) needs map_shadow_stack (453) for new threads.
_FIRST_UNREVIEWED_NR: Final = 451
_LAST_UNREVIEWED_NR: Final = 1023

# x86_64 numbers below 451 that libseccomp 2.5.4 does not know, which also
# return ENOSYS.  arch/x86/entry/syscalls/syscall_64.tbl in Linux 6.19
# names 335 and 336 and nothing from 337 to 423, and it reserves 387 to
# 423, so a later x86-only system call would take 337.  On Linux 6.18,
# 335 and 336 run and 337 and 400 return ENOSYS.  aarch64 uses the
# asm-generic table, where libseccomp 2.5.4 names every number below 451.
# NOTE: the kernel runs uretprobe (since Linux 6.14, and in 6.12 stable
# updates) and uprobe without consulting any seccomp filter
# (seccomp_uprobe_exception() in kernel/seccomp.c), so their ENOSYS rules
# take effect only on kernels 6.11 to 6.13 without that change.  There a
# uretprobe that an administrator attaches to a worker kills it.
_X86_64_NAMES_PAST_LIBSECCOMP: Final = {335: "uretprobe", 336: "uprobe"}
_X86_64_FIRST_UNKNOWN_NR: Final = 335
_X86_64_LAST_UNKNOWN_NR: Final = 423

# Calls that act on the process whose pid or id is in the given argument,
# where 0 means the caller.  The kernel lets a process change the rlimits,
# CPU affinity, scheduling, nice value and I/O priority of any process of
# its uid, dumpable or not.  migrate_pages and move_pages also need ptrace
# access, which a worker has to another only while that one is dumpable.
_SELF_ONLY_SYSCALLS: Final = {
    "prlimit64": 0,
    "sched_setaffinity": 0,
    "sched_setscheduler": 0,
    "sched_setparam": 0,
    "sched_setattr": 0,
    "migrate_pages": 0,
    "move_pages": 0,
    "setpriority": 1,
    "ioprio_set": 1,
}
# The only "which" value (argument 0) allowed with setpriority and
# ioprio_set.  With who 0, PRIO_USER and IOPRIO_WHO_USER select every
# process of the caller's uid, and PRIO_PGRP and IOPRIO_WHO_PGRP the
# caller's process group (linux/resource.h, linux/ioprio.h).
_SELECTS_ONE_PROCESS: Final = {
    "setpriority": ("PRIO_PROCESS", 0),
    "ioprio_set": ("IOPRIO_WHO_PROCESS", 1),
}

_CLONE_NAMESPACE_FLAGS: Final = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# asm-generic/ioctls.h values, used by both x86_64 and aarch64.
_TERMINAL_IOCTLS: Final = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}

_AF_UNIX: Final = 1
_AF_INET: Final = 2
_AF_INET6: Final = 10
_IPPROTO_TCP: Final = 6
# linux/net.h: the low four bits of socketpair()'s type argument are the
# socket type, and the rest are SOCK_CLOEXEC and SOCK_NONBLOCK.
_SOCK_TYPE_MASK: Final = 0xF
_SOCK_STREAM: Final = 1
_SOCK_SEQPACKET: Final = 5
_UINT32_MASK: Final = 0xFFFFFFFF
_X32_SYSCALL_BIT: Final = 0x40000000

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}; the kernel takes at
# most BPF_MAXINSNS instructions per program.
_SOCK_FILTER: Final = "=HBBI"
_INSTRUCTION_SIZE: Final = struct.calcsize(_SOCK_FILTER)
_BPF_MAXINSNS: Final = 4096
# (code, k) of "ld [0]" (the number in struct seccomp_data) and of
# "jge #0x40000000", from linux/bpf_common.h.
_LOAD_NUMBER: Final = (0x20, 0)
_JUMP_IF_X32: Final = (0x35, _X32_SYSCALL_BIT)

# AUDIT_ARCH_* values from linux/audit.h, as libseccomp reports them.
_ARCH_X86_64: Final = 0xC000003E
_ARCH_AARCH64: Final = 0xC00000B7
_SUPPORTED_ARCHES: Final = {_ARCH_X86_64: "x86_64", _ARCH_AARCH64: "aarch64"}

# Constants from linux/prctl.h and linux/seccomp.h.
_PR_SET_DUMPABLE: Final = 4
_PR_GET_SECCOMP: Final = 21
_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2


@dataclass(frozen=True)
class FilterSpec:
    """Options of a worker's seccomp program beyond the fixed denylist.

    With ``network`` false, socket() fails for every family, AF_UNIX
    included, and socketpair() works only for AF_UNIX stream and
    seqpacket pairs. With ``network`` and ``tcp_only`` true, socket()
    works only for TCP over IPv4 and IPv6, listen() fails, and
    socketpair() is limited as without network. The program checks
    socket families, types and protocols only: Landlock's TCP rules
    decide which ports connect() may reach and deny bind().

    With ``log_only`` true, every rule that would fail a call with EPERM
    logs the call instead (SECCOMP_RET_LOG) and lets it run, so the
    kernel writes one audit record per call the program would deny. The
    ENOSYS rules and the kill on a foreign architecture stay, and so do
    the EPERM rules of setsid() and setpgid(), without an audit record:
    a process that left the worker's process group would outlive the
    killpg() that ends the worker. Observe mode uses it, and apart from
    those rules it protects nothing.
    """

    network: bool = False
    tcp_only: bool = False
    log_only: bool = False

    def __post_init__(self) -> None:
        if self.tcp_only and not self.network:
            raise ValueError(
                "tcp_only needs network: without network every socket() "
                "is denied already"
            )


@dataclass(frozen=True)
class SeccompProgram:
    """A classic-BPF seccomp program and what it rejects.

    ``bpf`` is an array of struct sock_filter in native byte order.
    ``denied`` lists the system calls that fail with EPERM; an entry with
    an argument condition reads ``"name (condition)"``.  ``enosys`` lists
    the system calls and numbers that fail with ENOSYS, a number without a
    known name as ``"syscall N"``.
    """

    bpf: bytes
    denied: tuple[str, ...]
    enosys: tuple[str, ...]

    @property
    def instruction_count(self) -> int:
        """Number of struct sock_filter instructions in ``bpf``."""
        return len(self.bpf) // _INSTRUCTION_SIZE


@functools.cache
def build_filter(spec: FilterSpec) -> SeccompProgram:
    """Build the seccomp program for ``spec``; the same object every time.

    Raises LaunchError (stage ``seccomp``) when pyseccomp or libseccomp is
    missing, the native architecture is not supported or libseccomp
    rejects a rule.
    """
    _require_pyseccomp()
    arch = _native_arch()
    context = _new_filter()
    if spec.log_only:
        context = _LogInsteadOfDeny(context, _GROUP_LEAVING_SYSCALLS)
    denied = [
        *_deny_syscalls(context, _DENIED_SYSCALLS),
        *_deny_newer_syscalls(context),
        *_deny_namespace_clone(context),
        *_deny_terminal_ioctls(context),
        *_deny_personality_change(context),
        *_deny_other_process_targets(context),
        *_deny_dumpable_on(context),
    ]
    if not spec.network:
        denied += _deny_sockets(context)
    elif spec.tcp_only:
        denied += _deny_sockets_but_tcp(context)
    enosys = [
        *_answer_enosys_to_clone3(context),
        *_answer_enosys_to_unreviewed(context, arch),
    ]
    bpf = _export(context)
    _check_program(bpf, arch)
    return SeccompProgram(bpf=bpf, denied=tuple(denied), enosys=tuple(enosys))


def seccomp_available() -> bool:
    """Return whether the kernel can install a seccomp filter here.

    Installs nothing.  PR_GET_SECCOMP fails with EINVAL on a kernel built
    without seccomp.  PR_SET_SECCOMP with a NULL program fails with EFAULT
    when filter mode exists, before any permission check, and with EINVAL
    when it does not.  build_filter() also needs libseccomp, which this
    function does not check.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    unused = ctypes.c_ulong(0)
    if prctl(_PR_GET_SECCOMP, unused, unused, unused, unused) < 0:
        return False
    mode = ctypes.c_ulong(_SECCOMP_MODE_FILTER)
    null_program = ctypes.c_void_p(None)
    result = prctl(_PR_SET_SECCOMP, mode, null_program, unused, unused)
    return result < 0 and ctypes.get_errno() == errno.EFAULT


def describe_syscall(number: int) -> str:
    """Return the name of native system call ``number``, or "syscall N".

    A number with the x32 bit set is named after its x86_64 twin with an
    " (x32 ABI)" suffix.
    """
    if number < 0:
        return f"syscall {number}"
    if number & _X32_SYSCALL_BIT and platform.machine() == "x86_64":
        base = describe_syscall(number & ~_X32_SYSCALL_BIT)
        return f"{base} (x32 ABI)"
    fallback = _name_past_libseccomp(number)
    if _PYSECCOMP_ERROR is not None:
        return fallback
    try:
        name = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, number)
    except ValueError:
        return fallback
    return cast(bytes, name).decode("ascii")


def _name_past_libseccomp(number: int) -> str:
    if platform.machine() == "x86_64":
        name = _X86_64_NAMES_PAST_LIBSECCOMP.get(number)
        if name is not None:
            return name
    return _NEWER_SYSCALL_NAMES.get(number, f"syscall {number}")


def _require_pyseccomp() -> None:
    if _PYSECCOMP_ERROR is not None:
        raise LaunchError(
            _STAGE,
            errno.ENOSYS,
            f"pyseccomp or libseccomp is missing: {_PYSECCOMP_ERROR}. "
            "Install pyseccomp and the libseccomp2 system package",
        )


def _native_arch() -> int:
    arch = cast(int, pyseccomp.system_arch())
    if arch not in _SUPPORTED_ARCHES:
        supported = " and ".join(_SUPPORTED_ARCHES.values())
        raise LaunchError(
            _STAGE,
            errno.ENOTSUP,
            f"no seccomp rules for native architecture {arch:#x}; "
            f"only {supported} are supported",
        )
    return arch


def _new_filter() -> pyseccomp.SyscallFilter:
    context = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    # A foreign architecture's numbers mean other system calls, so the
    # denylist does not apply to them.  libseccomp also applies this
    # action to x86_64 numbers with the x32 bit set (_check_program
    # verifies that the exported program does).
    _set_attr(context, pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    # A binary search over the system call numbers instead of a linear
    # list of about 600 comparisons.  Since Linux 5.11 the kernel skips the
    # program for calls it allows whatever the arguments, but calls with
    # argument rules (ioctl, socket, clone) still run it.  In a FIONREAD
    # loop on a Linux 6.18 x86_64 VM, an ioctl took about 80 ns longer
    # under the tree and about 160 ns longer under the list.
    _set_attr(context, pyseccomp.Attr.CTL_OPTIMIZE, 2)
    return context


class _LogInsteadOfDeny:
    """A libseccomp filter whose EPERM rules log the call and allow it.

    The ENOSYS rules are left alone: the one for clone3 keeps glibc on
    clone(), whose flags the rules can read, and no policy can allow the
    unreviewed numbers anyway. So are the EPERM rules of ``kept_denied``:
    a filter returns one action per call, so those calls are not logged.
    """

    def __init__(
        self, context: pyseccomp.SyscallFilter, kept_denied: Iterable[str]
    ) -> None:
        self._context = context
        self._kept_denied = {
            number
            for number in map(_native_number, kept_denied)
            if number is not None
        }

    def add_rule(
        self, action: int, number: int, *conditions: pyseccomp.Arg
    ) -> None:
        denies = action == pyseccomp.ERRNO(errno.EPERM)
        if denies and number not in self._kept_denied:
            action = pyseccomp.LOG
        self._context.add_rule(action, number, *conditions)

    def __getattr__(self, name: str) -> object:
        return getattr(self._context, name)


def _set_attr(context: pyseccomp.SyscallFilter, attr: int, value: int) -> None:
    try:
        context.set_attr(attr, value)
    except OSError as err:
        raise LaunchError(
            _STAGE, err.errno or 0, f"libseccomp rejected attribute {attr}"
        ) from err


def _add_rule(
    context: pyseccomp.SyscallFilter,
    action: int,
    number: int,
    *conditions: pyseccomp.Arg,
) -> None:
    try:
        context.add_rule(action, number, *conditions)
    except OSError as err:
        raise LaunchError(
            _STAGE,
            err.errno or 0,
            f"libseccomp rejected a rule for {describe_syscall(number)}",
        ) from err


def _native_number(name: str) -> int | None:
    # libseccomp returns -1 for an unknown name and a negative pseudo
    # number for a name that exists only on other architectures.
    number = cast(int, pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    return number if number >= 0 else None


def _deny_syscalls(
    context: pyseccomp.SyscallFilter, names: Iterable[str]
) -> list[str]:
    denied = []
    for name in names:
        number = _native_number(name)
        if number is None:
            continue
        _add_rule(context, pyseccomp.ERRNO(errno.EPERM), number)
        denied.append(name)
    return denied


def _deny_newer_syscalls(context: pyseccomp.SyscallFilter) -> list[str]:
    for number in _NEWER_DENIED_SYSCALLS:
        _add_rule(context, pyseccomp.ERRNO(errno.EPERM), number)
    return list(_NEWER_DENIED_SYSCALLS.values())


def _deny_namespace_clone(context: pyseccomp.SyscallFilter) -> list[str]:
    # One rule per flag because the rules of one system call are ORed.
    # clone() takes its flags in the first argument on x86_64 and aarch64.
    # CLONE_NEWTIME shares its bit with the exit signal byte of clone(),
    # where no valid signal sets it.
    number = _require_native_number("clone")
    for flag in _CLONE_NAMESPACE_FLAGS.values():
        has_flag = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag)
        _add_rule(context, pyseccomp.ERRNO(errno.EPERM), number, has_flag)
    return ["clone (namespace flags)"]


def _deny_terminal_ioctls(context: pyseccomp.SyscallFilter) -> list[str]:
    # The kernel reads the request as a 32-bit unsigned int, so the upper
    # half of the register must not take part in the comparison.
    number = _require_native_number("ioctl")
    denied = []
    for name, request in _TERMINAL_IOCTLS.items():
        is_request = pyseccomp.Arg(
            1, pyseccomp.MASKED_EQ, _UINT32_MASK, request
        )
        _add_rule(context, pyseccomp.ERRNO(errno.EPERM), number, is_request)
        denied.append(f"ioctl ({name})")
    return denied


def _deny_personality_change(context: pyseccomp.SyscallFilter) -> list[str]:
    """Allow only personality(0) (PER_LINUX) and the 0xffffffff query.

    libseccomp 2.5.4 rejects two comparisons of one argument in a rule, so
    "neither 0 nor 0xffffffff" is written as an OR of single comparisons.
    One rule matches a value with a bit above bit 31 set.  The others match
    a value where bit i is set and bit (i + 1) mod 32 is clear, for each i.
    Every 32-bit value other than all zeros and all ones has such a pair of
    bits, and neither of those two values does.
    """
    number = _require_native_number("personality")
    action = pyseccomp.ERRNO(errno.EPERM)
    above_32_bits = pyseccomp.Arg(0, pyseccomp.GT, _UINT32_MASK)
    _add_rule(context, action, number, above_32_bits)
    for bit in range(32):
        next_bit = (bit + 1) % 32
        mask = (1 << bit) | (1 << next_bit)
        set_then_clear = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, mask, 1 << bit)
        _add_rule(context, action, number, set_then_clear)
    return ["personality (other than 0 and 0xffffffff)"]


def _deny_other_process_targets(
    context: pyseccomp.SyscallFilter,
) -> list[str]:
    # A 64-bit comparison: an id with only upper bits set is also
    # rejected, although the kernel would read it as 0, the caller.
    action = pyseccomp.ERRNO(errno.EPERM)
    denied = []
    for name, index in _SELF_ONLY_SYSCALLS.items():
        number = _require_native_number(name)
        not_self = pyseccomp.Arg(index, pyseccomp.NE, 0)
        _add_rule(context, action, number, not_self)
        denied.append(f"{name} (target other than the caller)")
    for name, (which_name, which) in _SELECTS_ONE_PROCESS.items():
        number = _require_native_number(name)
        not_one_process = pyseccomp.Arg(0, pyseccomp.NE, which)
        _add_rule(context, action, number, not_one_process)
        denied.append(f"{name} (which other than {which_name})")
    return denied


def _deny_dumpable_on(context: pyseccomp.SyscallFilter) -> list[str]:
    # The worker turns dumpable off at start, because a dumpable process
    # is open to ptrace, /proc/PID/mem and pidfd_getfd from processes of
    # its uid.  The kernel reads the option as a 32-bit int and the value
    # as an unsigned long.
    number = _require_native_number("prctl")
    is_set_dumpable = pyseccomp.Arg(
        0, pyseccomp.MASKED_EQ, _UINT32_MASK, _PR_SET_DUMPABLE
    )
    turns_on = pyseccomp.Arg(1, pyseccomp.NE, 0)
    action = pyseccomp.ERRNO(errno.EPERM)
    _add_rule(context, action, number, is_set_dumpable, turns_on)
    return ["prctl (PR_SET_DUMPABLE other than 0)"]


def _deny_sockets(context: pyseccomp.SyscallFilter) -> list[str]:
    """Deny socket(), and socketpair() but of AF_UNIX stream or seqpacket.

    socket(AF_UNIX) would let a plugin connect to the host's pathname and
    abstract sockets.  So would a datagram pair: sendto() with an address
    on an AF_UNIX datagram socket reaches the socket bound to that name,
    and the kernel turns an AF_UNIX SOCK_RAW socket into a datagram one.
    Stream sockets reject an address and seqpacket sockets ignore it.
    """
    action = pyseccomp.ERRNO(errno.EPERM)
    _add_rule(context, action, _require_native_number("socket"))
    return ["socket", *_limit_socketpair(context)]


def _deny_sockets_but_tcp(context: pyseccomp.SyscallFilter) -> list[str]:
    """Allow socket() only for TCP over IPv4 and IPv6, and deny listen().

    The protocol must be 0 or IPPROTO_TCP because SCTP and MPTCP sockets
    are SOCK_STREAM sockets of AF_INET too, and Landlock's TCP rules
    skip them: on Linux 6.18 an MPTCP socket connects to a port that no
    rule lists. listen() on an unbound socket binds it to an ephemeral
    port without calling bind(), which is the only server-side call that
    Landlock (up to ABI 7) checks.
    """
    action = pyseccomp.ERRNO(errno.EPERM)
    socket = _require_native_number("socket")
    families = (_AF_INET, _AF_INET6)
    for condition in _conditions_outside(0, families):
        _add_rule(context, action, socket, condition)
    for condition in _conditions_on_type_other_than(1, (_SOCK_STREAM,)):
        _add_rule(context, action, socket, condition)
    for condition in _conditions_outside(2, (0, _IPPROTO_TCP)):
        _add_rule(context, action, socket, condition)
    _add_rule(context, action, _require_native_number("listen"))
    return [
        "socket (domain other than AF_INET and AF_INET6)",
        "socket (type other than SOCK_STREAM)",
        "socket (protocol other than 0 and IPPROTO_TCP)",
        "listen",
        *_limit_socketpair(context),
    ]


def _conditions_outside(
    index: int, allowed: tuple[int, ...]
) -> list[pyseccomp.Arg]:
    """Return conditions, to be ORed, that match every other value.

    libseccomp 2.5.4 rejects two comparisons of one argument in a rule,
    so "not in ``allowed``" becomes one equality per smaller value and
    one comparison above the largest. Each comparison is 64-bit, so a
    value with upper bits set matches too, although the kernel would
    read only the lower 32 bits.
    """
    largest = max(allowed)
    conditions = [
        pyseccomp.Arg(index, pyseccomp.EQ, value)
        for value in range(largest)
        if value not in allowed
    ]
    conditions.append(pyseccomp.Arg(index, pyseccomp.GT, largest))
    return conditions


def _conditions_on_type_other_than(
    index: int, allowed: tuple[int, ...]
) -> list[pyseccomp.Arg]:
    # The mask leaves out the flag bits and, like the kernel, the upper
    # half of the register.
    return [
        pyseccomp.Arg(index, pyseccomp.MASKED_EQ, _SOCK_TYPE_MASK, kind)
        for kind in range(_SOCK_TYPE_MASK + 1)
        if kind not in allowed
    ]


def _limit_socketpair(context: pyseccomp.SyscallFilter) -> list[str]:
    """Deny socketpair() but of AF_UNIX stream or seqpacket."""
    action = pyseccomp.ERRNO(errno.EPERM)
    socketpair = _require_native_number("socketpair")
    # A 64-bit comparison: a domain with upper bits set is also rejected,
    # although the kernel would read only the lower 32 bits.
    not_unix = pyseccomp.Arg(0, pyseccomp.NE, _AF_UNIX)
    _add_rule(context, action, socketpair, not_unix)
    # One rule per other type because the rules of one system call are
    # ORed.
    unix_types = (_SOCK_STREAM, _SOCK_SEQPACKET)
    for condition in _conditions_on_type_other_than(1, unix_types):
        _add_rule(context, action, socketpair, condition)
    return [
        "socketpair (domain other than AF_UNIX)",
        "socketpair (type other than SOCK_STREAM and SOCK_SEQPACKET)",
    ]


def _answer_enosys_to_clone3(context: pyseccomp.SyscallFilter) -> list[str]:
    # clone3 passes its flags in memory that BPF cannot read.  glibc falls
    # back to clone(), whose flags the rules above check, on ENOSYS only.
    number = _native_number("clone3")
    if number is None:
        return []
    _add_rule(context, pyseccomp.ERRNO(errno.ENOSYS), number)
    return ["clone3"]


def _answer_enosys_to_unreviewed(
    context: pyseccomp.SyscallFilter, arch: int
) -> list[str]:
    answered = []
    for number in _unreviewed_numbers(arch):
        _add_rule(context, pyseccomp.ERRNO(errno.ENOSYS), number)
        answered.append(describe_syscall(number))
    return answered


def _unreviewed_numbers(arch: int) -> list[int]:
    numbers: list[int] = []
    if arch == _ARCH_X86_64:
        last = _X86_64_LAST_UNKNOWN_NR
        numbers += range(_X86_64_FIRST_UNKNOWN_NR, last + 1)
    numbers += range(_FIRST_UNREVIEWED_NR, _LAST_UNREVIEWED_NR + 1)
    return [n for n in numbers if n not in _NEWER_DENIED_SYSCALLS]


def _require_native_number(name: str) -> int:
    number = _native_number(name)
    if number is None:
        raise LaunchError(
            _STAGE,
            errno.ENOSYS,
            f"libseccomp has no number for {name} on this architecture",
        )
    return number


def _export(context: pyseccomp.SyscallFilter) -> bytes:
    # A memfd rather than a pipe: libseccomp writes the whole program
    # before we read, and a pipe would block once its buffer is full.
    fd = os.memfd_create("sandbox-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b", buffering=0) as memfd:
        try:
            context.export_bpf(memfd)
        except OSError as err:
            raise LaunchError(
                _STAGE, err.errno or 0, "libseccomp could not export"
            ) from err
        memfd.seek(0)
        return memfd.read()


def _check_program(bpf: bytes, arch: int) -> None:
    count, remainder = divmod(len(bpf), _INSTRUCTION_SIZE)
    if remainder or not count:
        raise LaunchError(
            _STAGE, errno.EINVAL, f"exported program has {len(bpf)} bytes"
        )
    if count > _BPF_MAXINSNS:
        raise LaunchError(
            _STAGE,
            errno.E2BIG,
            f"program has {count} instructions; "
            f"the kernel accepts at most {_BPF_MAXINSNS}",
        )
    if arch == _ARCH_X86_64 and not _has_x32_check(bpf):
        raise LaunchError(
            _STAGE,
            errno.EINVAL,
            "libseccomp did not reject x32 system call numbers",
        )


def _has_x32_check(bpf: bytes) -> bool:
    # libseccomp 2.5.4 loads the number and then jumps to the
    # bad-architecture action when it is at least 0x40000000, unless it is
    # -1 (a tracer's way to skip a call), whenever x86_64 is the filter's
    # only x86 architecture.
    previous = None
    for code, _jt, _jf, value in struct.iter_unpack(_SOCK_FILTER, bpf):
        current = (code, value)
        if previous == _LOAD_NUMBER and current == _JUMP_IF_X32:
            return True
        previous = current
    return False
