"""Landlock rulesets, built in the host for a worker to enforce.

The host calls build_ruleset() and keeps the returned file descriptor. The
launcher's child then enforces it with landlock_restrict_self(fd, 0) after
no_new_privs and before seccomp and execve. Building a ruleset never
restricts the calling process: only restrict_self() does that.

Python has no Landlock bindings, so the three system calls go through
libc's syscall() with ctypes. Struct layouts, flag values and the ABI
version of each right follow the kernel's include/uapi/linux/landlock.h
and Documentation/userspace-api/landlock.rst:

    ABI 1  filesystem rights EXECUTE .. MAKE_SYM
    ABI 2  REFER (link or rename into another directory)
    ABI 3  TRUNCATE
    ABI 4  TCP bind and connect (handled_access_net), per-port rules
    ABI 5  IOCTL_DEV
    ABI 6  scopes: abstract unix sockets and signals (scoped)
    ABI 7  audit logging flags of landlock_restrict_self, no new rights
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
import sys
from dataclasses import dataclass
from errno import EINVAL, ENOSYS, EOPNOTSUPP
from typing import Literal

from .errors import SandboxError

# Filesystem access rights (LANDLOCK_ACCESS_FS_*).
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13
ACCESS_FS_TRUNCATE = 1 << 14
ACCESS_FS_IOCTL_DEV = 1 << 15

# Network access rights (LANDLOCK_ACCESS_NET_*), a separate bit space.
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1

# Scopes (LANDLOCK_SCOPE_*), a third bit space.
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

FS_READ = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
FS_WRITE = (
    ACCESS_FS_WRITE_FILE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_CHAR
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_BLOCK
    | ACCESS_FS_MAKE_SYM
    | ACCESS_FS_REFER
    | ACCESS_FS_TRUNCATE
)
# IOCTL_DEV is handled (so denied) but never granted: a worker gets no
# device ioctls on device files it opens after sandboxing. Descriptors
# opened before landlock_restrict_self keep their rights.

# The only rights a rule on a non-directory may carry; the kernel rejects
# a file rule holding any other right with EINVAL.
FS_FILE = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)

_FS_NAMES = {
    "EXECUTE": ACCESS_FS_EXECUTE,
    "WRITE_FILE": ACCESS_FS_WRITE_FILE,
    "READ_FILE": ACCESS_FS_READ_FILE,
    "READ_DIR": ACCESS_FS_READ_DIR,
    "REMOVE_DIR": ACCESS_FS_REMOVE_DIR,
    "REMOVE_FILE": ACCESS_FS_REMOVE_FILE,
    "MAKE_CHAR": ACCESS_FS_MAKE_CHAR,
    "MAKE_DIR": ACCESS_FS_MAKE_DIR,
    "MAKE_REG": ACCESS_FS_MAKE_REG,
    "MAKE_SOCK": ACCESS_FS_MAKE_SOCK,
    "MAKE_FIFO": ACCESS_FS_MAKE_FIFO,
    "MAKE_BLOCK": ACCESS_FS_MAKE_BLOCK,
    "MAKE_SYM": ACCESS_FS_MAKE_SYM,
    "REFER": ACCESS_FS_REFER,
    "TRUNCATE": ACCESS_FS_TRUNCATE,
    "IOCTL_DEV": ACCESS_FS_IOCTL_DEV,
}
_NET_NAMES = {
    "BIND_TCP": ACCESS_NET_BIND_TCP,
    "CONNECT_TCP": ACCESS_NET_CONNECT_TCP,
}
_SCOPE_NAMES = {
    "SCOPE_ABSTRACT_UNIX_SOCKET": SCOPE_ABSTRACT_UNIX_SOCKET,
    "SCOPE_SIGNAL": SCOPE_SIGNAL,
}
_NAMES_BY_KIND = {"fs": _FS_NAMES, "net": _NET_NAMES, "scope": _SCOPE_NAMES}

# (first ABI version, filesystem rights it added)
_FS_RIGHTS_SINCE = (
    (1, (ACCESS_FS_MAKE_SYM << 1) - 1),
    (2, ACCESS_FS_REFER),
    (3, ACCESS_FS_TRUNCATE),
    (5, ACCESS_FS_IOCTL_DEV),
)
_ALL_FS = sum(_FS_NAMES.values())
_NET_SINCE_ABI = 4
_ALL_NET = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
_SCOPES_SINCE_ABI = 6

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_MAX_PORT = 65535


class LandlockError(SandboxError):
    """A Landlock system call failed or a rule's path could not be opened.

    ``errno`` is the OS error number. ``path`` is the rule's path and
    ``port`` the TCP port rule's port, or None when the failure concerns
    no such rule.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int,
        path: str | None = None,
        port: int | None = None,
    ) -> None:
        self.errno = errno
        self.path = path
        self.port = port
        super().__init__(f"{message}: [Errno {errno}] {os.strerror(errno)}")


@dataclass(frozen=True)
class RulesetSpec:
    """Paths and IPC a worker may use; Landlock denies the rest it handles.

    ``read`` paths (files or directories) are readable and executable,
    ``write`` paths are readable and writable. A directory rule covers
    everything beneath it.

    ``connect_tcp_ports`` lists the TCP ports that connect() may reach
    when ``restrict_tcp`` is set. A port rule matches the destination
    port on every address, IPv4 and IPv6 alike, because Landlock has no
    address rules. Binding stays denied on every port, and Landlock
    covers neither UDP nor other socket families: the seccomp program
    must deny those.
    """

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    # Handle TCP bind and connect (ABI 4) with no port rule, so both are
    # denied on every port.
    restrict_tcp: bool = True
    connect_tcp_ports: tuple[int, ...] = ()
    # Deny signals to processes outside the worker's domain (ABI 6).
    scope_signals: bool = True
    # Deny connecting to abstract unix sockets created outside the
    # worker's domain (ABI 6).
    scope_abstract_unix: bool = True

    def __post_init__(self) -> None:
        if self.connect_tcp_ports and not self.restrict_tcp:
            raise ValueError(
                "connect_tcp_ports needs restrict_tcp: without it the "
                "ruleset does not handle TCP and a port rule has no effect"
            )
        for port in self.connect_tcp_ports:
            if isinstance(port, bool) or not isinstance(port, int):
                raise ValueError(
                    f"invalid TCP port {port!r}: expected an integer"
                )
            if not 1 <= port <= _MAX_PORT:
                raise ValueError(
                    f"invalid TCP port {port}: expected 1 to {_MAX_PORT}"
                )


@dataclass(frozen=True)
class RulesetReport:
    """Rights and scopes a built ruleset enforces, and those the ABI lacks.

    ``missing`` names each right or scope that the spec needs and this ABI
    cannot enforce, for example ``"TRUNCATE"`` or ``"SCOPE_SIGNAL"``. The
    caller decides whether a missing entry is fatal.
    """

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    missing: tuple[str, ...]


class _RulesetAttr(ctypes.Structure):
    # struct landlock_ruleset_attr. Kernels older than ABI 6 know a
    # shorter struct, but they accept this size as long as the fields they
    # do not know are zero, which _plan() guarantees.
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    # struct landlock_path_beneath_attr is packed: 12 bytes, no padding.
    _pack_ = 1
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


class _NetPortAttr(ctypes.Structure):
    # struct landlock_net_port_attr is packed: 16 bytes. The port is in
    # host byte order.
    _pack_ = 1
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("port", ctypes.c_uint64),
    )


def _syscall_numbers() -> tuple[int, int, int] | None:
    """Return the numbers of create_ruleset, add_rule and restrict_self.

    Landlock's calls are 444, 445 and 446 in the kernel's generic syscall
    table (include/uapi/asm-generic/unistd.h, used by aarch64, riscv64 and
    loongarch64) and in the x86_64 and i386 tables (asm/unistd_64.h and
    asm/unistd_32.h).
    Some tables differ, for example alpha (554 to 556) and mips (offset by
    its ABI base), so unchecked machines get None.
    """
    if sys.platform != "linux":
        return None
    machine = platform.machine()
    if machine == "x86_64" and ctypes.sizeof(ctypes.c_void_p) == 4:
        return None  # x32 numbers carry __X32_SYSCALL_BIT
    # NOTE: ppc64le, s390x and 32-bit arm very likely use 444 too, but
    # their tables were not checked, so Landlock is reported unavailable.
    known = {"x86_64", "i386", "i686", "aarch64", "riscv64", "loongarch64"}
    return (444, 445, 446) if machine in known else None


_NUMBERS = _syscall_numbers()
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 0, 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(index: int, *args: ctypes.c_long | ctypes.c_void_p) -> int:
    """Call the Landlock syscall at ``index`` of _NUMBERS; raise OSError.

    Every argument is passed as a full machine word because glibc's
    syscall() reads each one with va_arg(ap, long).
    """
    if _NUMBERS is None:
        raise OSError(ENOSYS, os.strerror(ENOSYS))
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(_NUMBERS[index]), *args)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return int(result)


def _long(value: int) -> ctypes.c_long:
    return ctypes.c_long(value)


def _address(struct: ctypes.Structure) -> ctypes.c_void_p:
    return ctypes.c_void_p(ctypes.addressof(struct))


def _query_abi() -> tuple[int, int]:
    """Return (ABI version, 0), or (0, errno) when Landlock is absent."""
    try:
        version = _syscall(
            _CREATE_RULESET,
            ctypes.c_void_p(None),
            _long(0),
            _long(_CREATE_RULESET_VERSION),
        )
    except OSError as error:
        # ENOSYS: the kernel lacks Landlock. EOPNOTSUPP: it is built in
        # but disabled at boot (missing from the lsm= list).
        if error.errno in (ENOSYS, EOPNOTSUPP):
            return 0, error.errno
        raise LandlockError(
            "landlock_create_ruleset(VERSION) failed", errno=error.errno or 0
        ) from error
    return version, 0


def abi_version() -> int:
    """Return the kernel's Landlock ABI version, or 0 when unsupported."""
    return _query_abi()[0]


def handled_fs_access(abi: int) -> int:
    """Return every filesystem right that Landlock ABI ``abi`` supports."""
    mask = 0
    for since, rights in _FS_RIGHTS_SINCE:
        if abi >= since:
            mask |= rights
    return mask


def access_names(
    mask: int, kind: Literal["fs", "net", "scope"] = "fs"
) -> list[str]:
    """Name each bit of ``mask``, in bit order; unknown bits appear as hex.

    ``kind`` selects the bit space: filesystem rights, network rights or
    scopes, because the three reuse the same low bits.
    """
    names = [name for name, bit in _NAMES_BY_KIND[kind].items() if mask & bit]
    unknown = mask & ~sum(_NAMES_BY_KIND[kind].values())
    bit = 1
    while unknown >= bit:
        if unknown & bit:
            names.append(hex(bit))
        bit <<= 1
    return names


def _plan(spec: RulesetSpec, abi: int) -> RulesetReport:
    """Choose what the ruleset handles under ``abi`` and what is lost."""
    handled_fs = handled_fs_access(abi)
    missing_fs = _ALL_FS & ~handled_fs
    if abi == 1:
        # ABI 1 has no REFER right, but it denies every link or rename
        # into another directory, which is stricter than any REFER rule.
        missing_fs &= ~ACCESS_FS_REFER

    requested_net = _ALL_NET if spec.restrict_tcp else 0
    handled_net = requested_net if abi >= _NET_SINCE_ABI else 0

    requested_scopes = (SCOPE_SIGNAL if spec.scope_signals else 0) | (
        SCOPE_ABSTRACT_UNIX_SOCKET if spec.scope_abstract_unix else 0
    )
    scoped = requested_scopes if abi >= _SCOPES_SINCE_ABI else 0

    missing = (
        access_names(missing_fs, "fs")
        + access_names(requested_net & ~handled_net, "net")
        + access_names(requested_scopes & ~scoped, "scope")
    )
    return RulesetReport(abi, handled_fs, handled_net, scoped, tuple(missing))


def _create_ruleset(report: RulesetReport) -> int:
    attr = _RulesetAttr(report.handled_fs, report.handled_net, report.scoped)
    try:
        # The kernel always opens the ruleset descriptor with O_CLOEXEC.
        return _syscall(
            _CREATE_RULESET,
            _address(attr),
            _long(ctypes.sizeof(attr)),
            _long(0),
        )
    except OSError as error:
        raise LandlockError(
            f"landlock_create_ruleset(ABI {report.abi}) failed",
            errno=error.errno or 0,
        ) from error


def _open_rule_path(path: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as error:
        raise LandlockError(
            f"failed to open Landlock rule path {path!r}",
            errno=error.errno or 0,
            path=path,
        ) from error
    except ValueError as error:  # an embedded NUL byte
        raise LandlockError(
            f"invalid Landlock rule path {path!r}", errno=EINVAL, path=path
        ) from error


def _rule_rights(path_fd: int, rights: int) -> int:
    if stat.S_ISDIR(os.fstat(path_fd).st_mode):
        return rights
    return rights & FS_FILE


def _add_path_rule(
    ruleset_fd: int, path: str, rights: int, handled_fs: int
) -> None:
    """Allow ``rights`` (limited to what the ruleset handles) on ``path``."""
    path_fd = _open_rule_path(path)
    try:
        allowed = _rule_rights(path_fd, rights & handled_fs)
        attr = _PathBeneathAttr(allowed, path_fd)
        _syscall(
            _ADD_RULE,
            _long(ruleset_fd),
            _long(_RULE_PATH_BENEATH),
            _address(attr),
            _long(0),
        )
    except OSError as error:
        raise LandlockError(
            f"landlock_add_rule failed for {path!r}",
            errno=error.errno or 0,
            path=path,
        ) from error
    finally:
        os.close(path_fd)


def _add_connect_port_rule(ruleset_fd: int, port: int) -> None:
    """Allow connect() to TCP ``port`` on any address."""
    attr = _NetPortAttr(ACCESS_NET_CONNECT_TCP, port)
    try:
        _syscall(
            _ADD_RULE,
            _long(ruleset_fd),
            _long(_RULE_NET_PORT),
            _address(attr),
            _long(0),
        )
    except OSError as error:
        raise LandlockError(
            f"landlock_add_rule failed for TCP port {port}",
            errno=error.errno or 0,
            port=port,
        ) from error


def _add_rules(
    ruleset_fd: int, spec: RulesetSpec, report: RulesetReport
) -> None:
    for path in spec.read:
        _add_path_rule(ruleset_fd, path, FS_READ, report.handled_fs)
    for path in spec.write:
        _add_path_rule(ruleset_fd, path, FS_READ | FS_WRITE, report.handled_fs)
    # Below ABI 4 the ruleset handles no TCP right, so the kernel would
    # reject a port rule. The report then lists the TCP rights as missing.
    if report.handled_net & ACCESS_NET_CONNECT_TCP:
        for port in spec.connect_tcp_ports:
            _add_connect_port_rule(ruleset_fd, port)


def build_ruleset(
    spec: RulesetSpec, *, abi: int | None = None
) -> tuple[int, RulesetReport]:
    """Create a Landlock ruleset for ``spec`` and return its descriptor.

    The ruleset handles every right that ``abi`` (by default the kernel's
    ABI) supports, so the rules (paths and TCP connect ports) are the only
    exceptions to what it denies.
    The descriptor is close-on-exec and owned by the caller. Raises
    LandlockError when Landlock is unavailable, when a path cannot be
    opened (``path`` names it) or when the kernel rejects the ruleset or a
    rule.
    """
    if abi is None:
        abi, error = _query_abi()
        if abi == 0:
            raise LandlockError(
                "Landlock is not supported or is disabled on this kernel "
                "(it needs Linux 5.13 or later with landlock in lsm=)",
                errno=error,
            )
    elif abi < 1:
        raise LandlockError(f"invalid Landlock ABI {abi}", errno=EINVAL)

    report = _plan(spec, abi)
    ruleset_fd = _create_ruleset(report)
    try:
        _add_rules(ruleset_fd, spec, report)
    except BaseException:
        os.close(ruleset_fd)
        raise
    return ruleset_fd, report


def restrict_self(ruleset_fd: int) -> None:
    """Enforce the ruleset on the calling thread and its future children.

    For tests and ``sandbox run`` only: workers are restricted by the C
    launcher. no_new_privs must already be set unless the caller has
    CAP_SYS_ADMIN. Other threads of the process stay unrestricted.
    """
    try:
        _syscall(_RESTRICT_SELF, _long(ruleset_fd), _long(0))
    except OSError as error:
        raise LandlockError(
            "landlock_restrict_self failed", errno=error.errno or 0
        ) from error
