"""Seccomp records from the kernel's audit netlink multicast group.

When a seccomp program kills a process (SECCOMP_RET_KILL_*) or logs a
call (SECCOMP_RET_LOG), the kernel writes an audit record of type 1326
(AUDIT_SECCOMP) with the pid, the system call number and its
architecture. kauditd copies every record to the read-only multicast
group AUDIT_NLGRP_READLOG of the NETLINK_AUDIT protocol, whether or not
auditd runs. The kernel log (/dev/kmsg) drops audit lines past
printk_ratelimit (10 per 5 s by default) and gets none while auditd
runs. The group has no rate limit of its own, and only the audit rate
limit (auditctl -r, off by default) applies. Joining it needs
CAP_AUDIT_READ, so only a root host reads these records. A host without
it reports why in the ``unknown_reason`` of each policy_violation event.
It does not fall back to the kernel log, because reading that needs
CAP_SYSLOG while kernel.dmesg_restrict is 1, the Debian and Ubuntu default.

A multicast socket left unread fills with every audit record of the
machine and then drops new ones. SeccompKillWatcher therefore reads
from a thread and keeps only the kill records of the pids registered
with it. SeccompLogCollector reads the LOG records of one observed
worker after its calls, from a socket with a large receive buffer.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import seccomp

__all__ = [
    "RECORD_WAIT_SECONDS",
    "AuditGroupUnavailable",
    "SeccompKillWatcher",
    "SeccompLogCollector",
    "SeccompRecord",
    "join_audit_group",
    "parse_seccomp_messages",
    "parse_seccomp_text",
    "receive_available",
    "seccomp_kills_logged",
    "violation_fields",
]

logger = logging.getLogger("sandbox.host")

# linux/netlink.h, linux/audit.h and linux/seccomp.h.
NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_SECCOMP = 1326
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_LOG = 0x7FFC0000
_KILL_ACTIONS = (SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD)
ACTIONS_LOGGED_PATH = "/proc/sys/kernel/seccomp/actions_logged"
# Port id of the kernel's end of a netlink socket, which no process can bind.
KERNEL_PORT_ID = 0
# The kernel sends a record from its kauditd thread shortly after the
# system call, so the host waits this long for a kill's record.
RECORD_WAIT_SECONDS = 1.0
# Maximum pids watched at once. Workers forget their pid when they stop,
# so only a caller that never calls forget() reaches it. The oldest pid
# goes first.
MAX_WATCHED_PIDS = 4096
_NLMSGHDR = struct.Struct("=IHHII")
_NLMSG_ALIGNTO = 4
# An audit record is at most MAX_AUDIT_MESSAGE_LENGTH (8970) bytes.
_DATAGRAM_BYTES = 65536
_RECEIVE_BUFFER_BYTES = 8 << 20
# asm-generic/socket.h; the socket module does not export it.
_SO_RCVBUFFORCE = 33
# AUDIT_ARCH_* of the native architecture as the audit record prints it.
_NATIVE_AUDIT_ARCH = {"x86_64": "c000003e", "aarch64": "c00000b7"}
# One quoted value, skipped whole, or one name=value field that follows a
# space. The kernel prints the strings a process chooses (comm, exe)
# quoted, or in hex when they contain a space, a quote or a control
# character. Skipping quoted values keeps field text inside them unread
# even if a kernel printed a space between the quotes.
_TOKEN = re.compile(r'"[^"]*(?:"|$)|(?<![^ ])([a-z_]+)=([^ "]*)')
_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"(?:0x)?[0-9a-f]+")


class AuditGroupUnavailable(Exception):
    """Raised when the audit multicast group cannot be joined.

    The message contains the reason.
    """


@dataclass(frozen=True)
class SeccompRecord:
    """One AUDIT_SECCOMP record, as the kernel sent it."""

    pid: int
    syscall: int
    # AUDIT_ARCH_* in hex, for example "c000003e" for x86_64.
    arch: str
    # The signal of a kill (SIGSYS), or None for an action without one.
    signal: int | None
    # The SECCOMP_RET_* action, for example 0x80000000 for a process kill.
    code: int

    @property
    def is_kill(self) -> bool:
        """Whether the action killed the thread or the process."""
        return self.code in _KILL_ACTIONS

    @property
    def syscall_name(self) -> str:
        """The system call's name, when its number is a native one."""
        native = _NATIVE_AUDIT_ARCH.get(platform.machine())
        if self.arch != native:
            return f"syscall {self.syscall} of audit arch {self.arch}"
        return seccomp.describe_syscall(self.syscall)


# -- the group ---------------------------------------------------------------


def seccomp_kills_logged(path: str = ACTIONS_LOGGED_PATH) -> str | None:
    """Return why kill_process records are not written, or None if they are.

    The kernel writes no audit record for an action missing from
    actions_logged.
    """
    try:
        with open(path, encoding="ascii") as file:
            actions = file.read().split()
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    if "kill_process" not in actions:
        return f"{path} does not list kill_process"
    return None


def join_audit_group() -> socket.socket:
    """Open a non-blocking socket in the audit read-only multicast group.

    Raises AuditGroupUnavailable when the kernel has no audit support or
    the process lacks CAP_AUDIT_READ.
    """
    try:
        sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_CLOEXEC,
            NETLINK_AUDIT,
        )
    except OSError as error:
        raise AuditGroupUnavailable(
            f"cannot open an audit netlink socket ({error.strerror}): the "
            "kernel may lack CONFIG_AUDIT"
        ) from None
    try:
        sock.bind((0, AUDIT_NLGRP_READLOG))
        _grow_receive_buffer(sock)
    except OSError as error:
        sock.close()
        raise AuditGroupUnavailable(
            f"cannot join the audit netlink multicast group "
            f"({error.strerror}): it needs CAP_AUDIT_READ, which a host "
            "that is not root lacks"
        ) from None
    sock.setblocking(False)
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    # SO_RCVBUFFORCE passes net.core.rmem_max, which needs CAP_NET_ADMIN.
    try:
        sock.setsockopt(
            socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER_BYTES
        )
    except OSError:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES
        )


def receive_available(sock: socket.socket) -> tuple[list[SeccompRecord], int]:
    """Read every datagram waiting on non-blocking ``sock``.

    Returns the seccomp records among them and how many times the socket
    reported ENOBUFS, that is, dropped records because it was full.
    """
    records: list[SeccompRecord] = []
    overflows = 0
    while True:
        try:
            data, address = sock.recvfrom(_DATAGRAM_BYTES)
        except BlockingIOError:
            return records, overflows
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            overflows += 1
            continue
        sender_port = address[0]
        records.extend(parse_seccomp_messages(data, sender_port))


# -- parsing -----------------------------------------------------------------


def parse_seccomp_messages(
    data: bytes, sender_port: int
) -> Iterator[SeccompRecord]:
    """Yield the AUDIT_SECCOMP records in one netlink datagram.

    ``sender_port`` is the source port id that recvfrom() returned.
    Only the kernel sends from port id 0, so a datagram from any other
    port, which a process with CAP_NET_ADMIN could send to the group,
    yields nothing.
    """
    if sender_port != KERNEL_PORT_ID:
        return
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, offset)
        end = offset + length
        if length < _NLMSGHDR.size or end > len(data):
            return
        if kind == AUDIT_SECCOMP:
            body = data[offset + _NLMSGHDR.size : end]
            record = parse_seccomp_text(body.decode("ascii", "replace"))
            if record is not None:
                yield record
        offset += _aligned(length)


def _aligned(length: int) -> int:
    return (length + _NLMSG_ALIGNTO - 1) & ~(_NLMSG_ALIGNTO - 1)


def parse_seccomp_text(text: str) -> SeccompRecord | None:
    """Parse the text of an AUDIT_SECCOMP record, or return None if invalid.

    The text reads ``audit(TIME:SERIAL): auid=... pid=... comm="..."
    ... sig=31 arch=c000003e syscall=... code=0x80000000``.
    """
    fields = _fields(text)
    if fields is None:
        return None
    pid, syscall = fields.get("pid", ""), fields.get("syscall", "")
    arch, code = fields.get("arch", ""), fields.get("code", "")
    signal = fields.get("sig", "")
    if not (_DECIMAL.fullmatch(pid) and _DECIMAL.fullmatch(syscall)):
        return None
    if not (_HEX.fullmatch(arch) and _HEX.fullmatch(code)):
        return None
    return SeccompRecord(
        pid=int(pid),
        syscall=int(syscall),
        arch=arch,
        signal=int(signal) if _DECIMAL.fullmatch(signal) else None,
        code=int(code, 16),
    )


def _fields(text: str) -> dict[str, str] | None:
    """Return the record's name=value fields, or None if a name repeats."""
    fields: dict[str, str] = {}
    for match in _TOKEN.finditer(text):
        name, value = match.group(1), match.group(2)
        if name is None:
            continue
        if name in fields:
            return None
        fields[name] = value
    return fields


# -- seccomp kills -----------------------------------------------------------


class SeccompKillWatcher:
    """Kill records of registered pids, read by a thread as they arrive.

    start() joins the group and starts the thread, once. Where it cannot
    join, ``unavailable`` contains the reason and find_kill() returns None
    at once. Register a pid right after its spawn and forget it once its
    death has been reported.
    """

    def __init__(self) -> None:
        self.unavailable: str | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._started = False
        self._closed = False
        self._socket: socket.socket | None = None
        self._wake_fd: int | None = None
        self._thread: threading.Thread | None = None
        # Each registered pid and its kill record, None until one comes.
        # Insertion order is registration order, for MAX_WATCHED_PIDS.
        self._watched: dict[int, SeccompRecord | None] = {}
        self._overflows = 0

    def start(self) -> bool:
        """Join the group and start the thread, and return whether it runs.

        Only the first call tries, because a host that lacks
        CAP_AUDIT_READ does not gain it later.
        """
        with self._lock:
            if not self._started and not self._closed:
                self._started = True
                self._start_thread()
            return self._thread is not None

    def _start_thread(self) -> None:
        reason = seccomp_kills_logged()
        if reason is not None:
            self.unavailable = reason
            return
        try:
            self._socket = join_audit_group()
        except AuditGroupUnavailable as error:
            self.unavailable = str(error)
            return
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(
            target=self._run, name="sandbox-seccomp-kills", daemon=True
        )
        self._thread.start()

    def register(self, pid: int) -> None:
        """Keep the kill record of ``pid`` from now on."""
        # NOTE: kauditd sends records asynchronously, so the kill record
        # of an earlier process with this pid that arrives after this
        # call would count as the new process's own.
        with self._lock:
            if self._thread is None:
                return
            self._watched.pop(pid, None)
            self._watched[pid] = None
            while len(self._watched) > MAX_WATCHED_PIDS:
                del self._watched[next(iter(self._watched))]

    def forget(self, pid: int) -> None:
        """Stop keeping records of ``pid``, whose number may be reused."""
        with self._lock:
            self._watched.pop(pid, None)

    def find_kill(
        self, pid: int, timeout: float = RECORD_WAIT_SECONDS
    ) -> SeccompRecord | None:
        """Return the kill record of registered ``pid``, waiting ``timeout``.

        Returns None when none came in time, and then
        missing_record_reason() returns the reason.
        """
        with self._arrived:
            if self._thread is None:
                return None
            self._arrived.wait_for(
                lambda: self._watched.get(pid) is not None or self._closed,
                timeout,
            )
            return self._watched.get(pid)

    def missing_record_reason(self, timeout: float) -> str:
        """Explain why find_kill() returned None."""
        with self._lock:
            if self.unavailable is not None:
                return self.unavailable
            if self._closed:
                return "the host was closed"
            if self._overflows:
                return (
                    "the audit netlink socket was full and dropped records "
                    f"{self._overflows} time(s), so the worker's record "
                    "may be among them"
                )
        return (
            f"no seccomp audit record of the worker arrived within "
            f"{timeout:g} s. The kernel writes none when booted with "
            "audit=0 or when an audit exclude rule drops AUDIT_SECCOMP, "
            "and drops records past its backlog limit"
        )

    def close(self) -> None:
        """Stop the thread and close the socket. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._arrived.notify_all()
        if thread is not None:
            assert self._wake_fd is not None
            os.eventfd_write(self._wake_fd, 1)
            thread.join()
        if self._socket is not None:
            self._socket.close()
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None

    def _run(self) -> None:
        assert self._socket is not None and self._wake_fd is not None
        poller = select.poll()
        poller.register(self._socket.fileno(), select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_fd in ready:
                    return
                self._keep(*receive_available(self._socket))
        except OSError as error:
            # Nothing can catch an error raised in this thread.
            logger.exception("reading seccomp audit records failed")
            with self._arrived:
                self.unavailable = (
                    f"reading the audit netlink socket failed: {error}"
                )
                self._thread = None
                self._arrived.notify_all()

    def _keep(self, records: list[SeccompRecord], overflows: int) -> None:
        with self._arrived:
            self._overflows += overflows
            for record in records:
                if not record.is_kill or record.pid not in self._watched:
                    continue
                # The first record wins, so the kill of a process that
                # reused the pid cannot replace the worker's own.
                if self._watched[record.pid] is None:
                    self._watched[record.pid] = record
                    self._arrived.notify_all()


def violation_fields(
    watcher: SeccompKillWatcher | None, pid: int
) -> dict[str, Any]:
    """Return the policy_violation event's fields for ``pid``'s kill."""
    if watcher is None:
        return {
            "syscall": None,
            "syscall_name": None,
            "unknown_reason": "no seccomp kill watcher was given to the "
            "worker",
        }
    kill = watcher.find_kill(pid)
    if kill is None:
        return {
            "syscall": None,
            "syscall_name": None,
            "unknown_reason": watcher.missing_record_reason(
                RECORD_WAIT_SECONDS
            ),
        }
    return {
        "syscall": kill.syscall,
        "syscall_name": kill.syscall_name,
        "arch": kill.arch,
        "reported_by": "kernel",
    }


# -- seccomp LOG records of one observed worker ------------------------------


class SeccompLogCollector:
    """Seccomp LOG records, read from the group after a worker's calls.

    The socket joins before the worker starts, and its 8 MiB receive
    buffer keeps the records of the run until collect() reads them.
    """

    def __init__(self) -> None:
        self.unavailable: str | None = None
        self.problems: list[str] = []
        self._socket: socket.socket | None = None
        try:
            self._socket = join_audit_group()
        except AuditGroupUnavailable as error:
            self.unavailable = (
                f"{error}: system calls the seccomp program would deny "
                "were not observed"
            )

    def collect(
        self,
        pids: set[int],
        marker_pid: int | None,
        marker_syscall: int,
        timeout: float,
    ) -> list[tuple[int, int]]:
        """Return (pid, syscall) of each LOG record of ``pids``.

        Waits up to ``timeout`` seconds for the record of system call
        ``marker_syscall`` by ``marker_pid``, the last record the worker
        caused, which is left out of the result.
        """
        if self._socket is None:
            return []
        found: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        waiting = marker_pid is not None
        while True:
            for record in self._read_available():
                pair = (record.pid, record.syscall)
                if waiting and pair == (marker_pid, marker_syscall):
                    waiting = False
                elif record.pid in pids:
                    found.append(pair)
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                break
            select.select([self._socket], [], [], remaining)
        if waiting:
            self.problems.append(
                "the kernel's audit records of the worker did not all "
                f"arrive within {timeout:g} s"
            )
        return found

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _read_available(self) -> list[SeccompRecord]:
        assert self._socket is not None
        records, overflows = receive_available(self._socket)
        if overflows:
            self.problems.append(
                "the audit socket overflowed: some system calls the "
                "seccomp program would deny may be missing"
            )
        return [r for r in records if r.code == SECCOMP_RET_LOG]
