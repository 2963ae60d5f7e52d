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
with it. To tell whether a worker's missing kill record could have
been dropped, it also reads the kernel's count of lost records and its
queue length (AUDIT_GET, which needs CAP_AUDIT_CONTROL).
SeccompLogCollector reads the LOG records of one observed worker after
its calls, from a socket with a large receive buffer.

A worker's children and grandchildren have pids the host never learns,
but they keep the worker's real uid, which the record also carries. A
root host that gives each plugin a uid of its own registers that uid, and
the watcher reports a kill under it as a policy_violation of the plugin,
at most DESCENDANT_EVENTS_PER_SECOND per plugin.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import platform
import pwd
import re
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import seccomp
from .audit import AuditLog

__all__ = [
    "DESCENDANT_EVENTS_PER_SECOND",
    "RECORD_WAIT_SECONDS",
    "AuditGroupUnavailable",
    "AuditStatus",
    "SeccompKillWatcher",
    "SeccompLogCollector",
    "SeccompRecord",
    "SigsysEvidence",
    "examine_sigsys",
    "join_audit_group",
    "parse_seccomp_messages",
    "parse_seccomp_text",
    "read_audit_status",
    "receive_available",
    "seccomp_kills_logged",
    "violation_fields",
]

logger = logging.getLogger("sandbox.host")

# linux/netlink.h, linux/audit.h and linux/seccomp.h.
NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_SECCOMP = 1326
AUDIT_GET = 1000
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
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
# Maximum policy_violation events per plugin and second for the kills of
# a worker's descendants. A plugin can fork and kill children as fast as
# it likes, so more would let it flood the audit log. Each event counts
# the kills left out before it in ``suppressed``.
DESCENDANT_EVENTS_PER_SECOND = 10
_EVENT_WINDOW_SECONDS = 1.0
# Worker pids kept per uid, newest last. The kill record of a worker that
# arrives after the host forgot its pid then still counts as the worker's
# own, which its death already reported, and not as a descendant's.
_RECENT_WORKERS_KEPT = 16
_NLMSGHDR = struct.Struct("=IHHII")
# The first fields of struct audit_status: mask, enabled, failure, pid,
# rate_limit, backlog_limit, lost and backlog, each a u32.
_AUDIT_STATUS = struct.Struct("=8I")
_NLMSGERR_ERROR = struct.Struct("=i")
# The interval between AUDIT_GET requests while kauditd's queue drains.
_BACKLOG_POLL_SECONDS = 0.02
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
    # The process's real uid, or None when the record has no valid one.
    uid: int | None = None

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


@dataclass(frozen=True)
class AuditStatus:
    """The kernel's audit counters, from an AUDIT_GET request."""

    # Records dropped since boot: past the backlog or rate limit, or for
    # lack of memory. The kernel only ever increases it.
    lost: int
    # Records still queued for kauditd, which has not yet sent them to
    # the multicast group.
    backlog: int


def read_audit_status() -> AuditStatus:
    """Ask the kernel for its audit counters with an AUDIT_GET request.

    Raises OSError when the request fails. It needs CAP_AUDIT_CONTROL
    and the initial pid namespace, so a host that is not root, or one in
    a container, cannot make it.
    """
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT
    ) as sock:
        sock.settimeout(RECORD_WAIT_SECONDS)
        sock.bind((0, 0))
        sequence = 1
        sock.send(
            _NLMSGHDR.pack(
                _NLMSGHDR.size, AUDIT_GET, NLM_F_REQUEST, sequence, 0
            )
        )
        while True:
            data, address = sock.recvfrom(_DATAGRAM_BYTES)
            status = _parse_status_reply(data, address[0], sequence)
            if status is not None:
                return status


def _parse_status_reply(
    data: bytes, sender_port: int, sequence: int
) -> AuditStatus | None:
    """Return the status in a reply to AUDIT_GET, or None for another message.

    Raises OSError for the kernel's error reply.
    """
    if sender_port != KERNEL_PORT_ID or len(data) < _NLMSGHDR.size:
        return None
    length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(data)
    body = data[_NLMSGHDR.size : length]
    if seq != sequence:
        return None
    if kind == NLMSG_ERROR and len(body) >= _NLMSGERR_ERROR.size:
        (code,) = _NLMSGERR_ERROR.unpack_from(body)
        if code == 0:
            return None  # An acknowledgement, not an error.
        raise OSError(
            -code,
            f"AUDIT_GET failed: {os.strerror(-code)}; it needs "
            "CAP_AUDIT_CONTROL in the initial pid namespace",
        )
    if kind != AUDIT_GET or len(body) < _AUDIT_STATUS.size:
        return None
    fields = _AUDIT_STATUS.unpack_from(body)
    return AuditStatus(lost=fields[6], backlog=fields[7])


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
    signal, uid = fields.get("sig", ""), fields.get("uid", "")
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
        uid=int(uid) if _DECIMAL.fullmatch(uid) else None,
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


@dataclass
class _Watch:
    """The watcher's state for one registered pid."""

    # The socket's overflow count when the pid was registered.
    overflows_before: int
    # The kernel's count of lost records then, or why it was not read.
    lost_before: int | str
    # The pid's kill record, None until one arrives.
    record: SeccompRecord | None = None


@dataclass(frozen=True)
class SigsysEvidence:
    """The audit records' evidence about a worker's death by SIGSYS."""

    # The kill record of the worker's pid, if one arrived.
    record: SeccompRecord | None
    # The reason the record could be missing though a seccomp program
    # killed the worker, or None when every record reached the host.
    gap: str | None

    @property
    def rules_out_seccomp(self) -> bool:
        """Whether the records show that no seccomp program killed it."""
        return self.record is None and self.gap is None

    def violation_fields(self) -> dict[str, Any]:
        """Return the policy_violation event's fields for the death."""
        if self.record is None:
            return {
                "syscall": None,
                "syscall_name": None,
                "unknown_reason": self.gap or _NO_KILL_RECORD,
            }
        return {
            "syscall": self.record.syscall,
            "syscall_name": self.record.syscall_name,
            "arch": self.record.arch,
            "reported_by": "kernel",
        }


_NO_KILL_RECORD = (
    "the kernel wrote no seccomp kill record of the worker, and the host "
    "missed none of its audit records"
)


@dataclass(frozen=True)
class _DescendantKill:
    """A kill record under a plugin's uid, of a pid that is no worker."""

    plugin: str
    record: SeccompRecord
    # The plugin's registered worker when the record arrived, if any.
    worker_pid: int | None

    def event_fields(self, suppressed: int) -> dict[str, Any]:
        """Return the policy_violation event's fields for the kill."""
        fields: dict[str, Any] = {
            "pid": self.record.pid,
            "signal": "SIGSYS",
            "syscall": self.record.syscall,
            "syscall_name": self.record.syscall_name,
            "arch": self.record.arch,
            "reported_by": "kernel",
            "process": "descendant",
            "suppressed": suppressed,
        }
        if self.worker_pid is not None:
            fields["worker_pid"] = self.worker_pid
        return fields


@dataclass
class _UidOwner:
    """The plugin that a registered uid names, and its event budget."""

    plugin: str
    worker_pid: int | None = None
    recent_workers: deque[int] = field(
        default_factory=lambda: deque(maxlen=_RECENT_WORKERS_KEPT)
    )
    # The start (time.monotonic()) of the current one-second window and
    # the events reported in it.
    window_start: float = -math.inf
    reported: int = 0
    # Kills left out since the last event, and the latest of them, which
    # is reported once the window ends if no other kill comes first.
    suppressed: int = 0
    latest_suppressed: _DescendantKill | None = None


class SeccompKillWatcher:
    """Kill records of registered pids, read by a thread as they arrive.

    start() joins the group and starts the thread, once. Where it cannot
    join, ``unavailable`` contains the reason and find_kill() returns None
    at once. Register a pid right after its spawn and forget it once its
    death has been reported.

    With an ``audit`` log, the thread also emits a policy_violation event
    for each kill of a process that runs as a uid given to register_uid()
    but is no registered pid, that is, a descendant of a worker. It emits
    at most ``events_per_second`` of them per plugin.
    """

    def __init__(
        self,
        audit: AuditLog | None = None,
        *,
        events_per_second: int = DESCENDANT_EVENTS_PER_SECOND,
    ) -> None:
        if events_per_second < 1:
            raise ValueError(
                f"events_per_second must be at least 1, got "
                f"{events_per_second}"
            )
        self._audit = audit
        self._events_per_second = events_per_second
        self.unavailable: str | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        # Held while records are read from the socket and kept, so that
        # a drain by another thread finds no record half handled.
        self._reading = threading.Lock()
        self._started = False
        self._closed = False
        self._socket: socket.socket | None = None
        self._wake_fd: int | None = None
        self._thread: threading.Thread | None = None
        # Each registered pid in registration order, for MAX_WATCHED_PIDS.
        self._watched: dict[int, _Watch] = {}
        self._overflows = 0
        self._uid_owners: dict[int, _UidOwner] = {}
        # Descendant kills and their suppressed counts, which the thread
        # emits outside the locks, so that a subscriber may call back in.
        self._reportable: list[tuple[_DescendantKill, int]] = []

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

    def register(self, pid: int, uid: int | None = None) -> None:
        """Keep the kill record of ``pid``, a worker running as ``uid``.

        When register_uid() was given ``uid``, the policy_violation
        events of that uid's descendant kills name ``pid`` as worker_pid.
        """
        # NOTE: kauditd sends records asynchronously, so the kill record
        # of an earlier process with this pid that arrives after this
        # call would count as the new process's own.
        if self._thread is None:
            return
        lost = _lost_count()
        with self._lock:
            if self._thread is None:
                return
            self._watched.pop(pid, None)
            self._watched[pid] = _Watch(self._overflows, lost)
            while len(self._watched) > MAX_WATCHED_PIDS:
                del self._watched[next(iter(self._watched))]
            owner = None if uid is None else self._uid_owners.get(uid)
            if owner is not None:
                owner.worker_pid = pid
                owner.recent_workers.append(pid)

    def forget(self, pid: int) -> None:
        """Stop keeping records of ``pid``, whose number may be reused."""
        with self._lock:
            self._watched.pop(pid, None)
            for owner in self._uid_owners.values():
                if owner.worker_pid == pid:
                    owner.worker_pid = None

    def register_uid(self, uid: int, plugin: str) -> None:
        """Report the seccomp kills of processes running as ``uid``.

        ``uid`` must name ``plugin`` alone: no other plugin's workers and
        no process outside the sandbox may run as it. The watcher keeps
        it until close(), because a descendant can outlive its worker.
        Raises ValueError for root, the host's own uids, ``nobody`` and
        a uid registered for another plugin.
        """
        # NOTE: the watcher receives the records of the whole machine. A
        # second host whose plugin runs as the same uid, such as one
        # with a registry or uid range that overlaps this host's, has
        # its descendants' kills reported here too.
        if uid in _shared_uids():
            raise ValueError(
                f"uid {uid} is root, the host's own uid or nobody, which "
                f"other processes share, so it cannot name plugin "
                f"{plugin!r}: register a uid from plugin_uids"
            )
        with self._lock:
            owner = self._uid_owners.get(uid)
            if owner is not None and owner.plugin != plugin:
                raise ValueError(
                    f"uid {uid} is registered for plugin {owner.plugin!r}, "
                    f"so it cannot also name plugin {plugin!r}"
                )
            if owner is None and not self._closed:
                self._uid_owners[uid] = _UidOwner(plugin)

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
                lambda: self._record_of(pid) is not None or self._closed,
                timeout,
            )
            return self._record_of(pid)

    def examine(
        self, pid: int, timeout: float = RECORD_WAIT_SECONDS
    ) -> SigsysEvidence:
        """Find the kill record of registered ``pid``, which has died.

        Waits up to ``timeout`` for the record. Without one, the gap of
        the result explains why the record could be missing though a seccomp
        program killed the process. The gap is None when every record
        that the kernel wrote since the registration reached the watcher,
        so no seccomp program killed it.
        """
        record = self.find_kill(pid, timeout)
        if record is not None:
            return SigsysEvidence(record, None)
        gap = self._record_gap(pid, timeout)
        # The drain in _record_gap() may have kept the record after all.
        with self._lock:
            record = self._record_of(pid)
        if record is not None:
            return SigsysEvidence(record, None)
        return SigsysEvidence(None, gap)

    def _record_of(self, pid: int) -> SeccompRecord | None:
        watch = self._watched.get(pid)
        return None if watch is None else watch.record

    def _record_gap(self, pid: int, timeout: float) -> str | None:
        """Return why a kill record of dead ``pid`` could be missing.

        A seccomp program logs the kill before the process dies, so by
        now the record is lost, which the kernel counts, or queued for
        kauditd, or sent to the group and waiting in the socket.
        """
        with self._lock:
            watch = self._watched.get(pid)
            if self._thread is None or self._closed or watch is None:
                return self._missing_reason(timeout, pid)
        if isinstance(watch.lost_before, str):
            return watch.lost_before
        # actions_logged may have changed since the watcher started.
        reason = seccomp_kills_logged()
        if reason is not None:
            return reason
        try:
            status = _await_empty_backlog(timeout)
        except OSError as error:
            return f"the kernel's audit counters could not be read: {error}"
        if status.backlog:
            return (
                f"{status.backlog} audit records were still queued in the "
                f"kernel after {timeout:g} s, so the worker's record may "
                "be among them"
            )
        # The counter is a u32, so it may wrap.
        dropped = (status.lost - watch.lost_before) % 2**32
        if dropped:
            return (
                f"the kernel dropped {dropped} audit "
                "record(s) while the worker ran (past its backlog or rate "
                "limit), so the worker's record may be among them"
            )
        # NOTE: kauditd sends a record to the group right after taking it
        # off the queue, so a record taken off just before the backlog
        # read could still be on its way. An audit exclude rule for
        # AUDIT_SECCOMP also removes records without counting them.
        try:
            self._drain()
        except OSError as error:
            return f"reading the audit netlink socket failed: {error}"
        with self._lock:
            if self._thread is None or self._closed:
                return self._missing_reason(timeout, pid)
            if self._overflows != watch.overflows_before:
                return self._missing_reason(timeout, pid)
        return None

    def _drain(self) -> None:
        """Keep the records already waiting in the socket's buffer."""
        with self._reading:
            if self._socket is not None:
                self._keep(*receive_available(self._socket))

    def missing_record_reason(self, timeout: float) -> str:
        """Explain why find_kill() returned None."""
        with self._lock:
            return self._missing_reason(timeout)

    def _missing_reason(self, timeout: float, pid: int | None = None) -> str:
        if self.unavailable is not None:
            return self.unavailable
        if self._closed:
            return "the host was closed"
        watch = None if pid is None else self._watched.get(pid)
        overflows = self._overflows
        if watch is not None:
            overflows -= watch.overflows_before
        if overflows:
            return (
                "the audit netlink socket was full and dropped records "
                f"{overflows} time(s), so the worker's record may be among "
                "them"
            )
        if pid is not None and watch is None:
            return f"pid {pid} was not registered with the kill watcher"
        return (
            f"no seccomp audit record of the worker arrived within "
            f"{timeout:g} s. The kernel writes none when booted with "
            "audit=0 or when an audit exclude rule drops AUDIT_SECCOMP, "
            "and drops records past its backlog limit"
        )

    def close(self) -> None:
        """Stop the thread and close the socket. Safe to call twice.

        Kills that the thread has not reported yet are dropped.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._uid_owners.clear()
            self._reportable.clear()
            self._arrived.notify_all()
        if thread is not None:
            assert self._wake_fd is not None
            os.eventfd_write(self._wake_fd, 1)
            # A subscriber that closes the host runs in the thread itself,
            # which then stops at its next check of _closed.
            if thread is not threading.current_thread():
                thread.join()
        with self._reading:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None

    def _run(self) -> None:
        assert self._socket is not None and self._wake_fd is not None
        poller = select.poll()
        poller.register(self._socket.fileno(), select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        try:
            while not self._is_closed():
                ready = {fd for fd, _ in poller.poll(self._poll_timeout())}
                if self._wake_fd in ready:
                    os.eventfd_read(self._wake_fd)
                self._drain()
                self._report_descendant_kills()
        except OSError as error:
            # Nothing can catch an error raised in this thread.
            logger.exception("reading seccomp audit records failed")
            with self._arrived:
                self.unavailable = (
                    f"reading the audit netlink socket failed: {error}"
                )
                self._thread = None
                self._arrived.notify_all()

    def _is_closed(self) -> bool:
        with self._lock:
            return self._closed

    def _keep(self, records: list[SeccompRecord], overflows: int) -> None:
        now = time.monotonic()
        with self._arrived:
            self._overflows += overflows
            for record in records:
                if not record.is_kill:
                    continue
                watch = self._watched.get(record.pid)
                if watch is None:
                    self._admit_descendant_kill(record, now)
                # The first record wins, so the kill of a process that
                # reused the pid cannot replace the worker's own.
                elif watch.record is None:
                    watch.record = record
                    self._arrived.notify_all()
            if self._reportable and not self._in_thread():
                # Only the thread emits events, so wake it to report the
                # kills that a drain by examine() found.
                assert self._wake_fd is not None
                os.eventfd_write(self._wake_fd, 1)

    def _in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _admit_descendant_kill(
        self, record: SeccompRecord, now: float
    ) -> None:
        """Queue the event of a descendant's kill, or count it suppressed."""
        if self._audit is None or record.uid is None:
            return
        owner = self._uid_owners.get(record.uid)
        if owner is None or record.pid in owner.recent_workers:
            return
        kill = _DescendantKill(owner.plugin, record, owner.worker_pid)
        if now - owner.window_start >= _EVENT_WINDOW_SECONDS:
            owner.window_start, owner.reported = now, 0
        if owner.reported < self._events_per_second:
            owner.reported += 1
            self._reportable.append((kill, owner.suppressed))
            owner.suppressed, owner.latest_suppressed = 0, None
        else:
            owner.suppressed += 1
            owner.latest_suppressed = kill

    def _release_suppressed(self, now: float) -> None:
        """Report the latest suppressed kill of each window that ended.

        Without it, a plugin that floods once and then stops would keep
        the suppressed count out of the audit log.
        """
        for owner in self._uid_owners.values():
            kill = owner.latest_suppressed
            ended = now - owner.window_start >= _EVENT_WINDOW_SECONDS
            if kill is None or not ended:
                continue
            owner.window_start, owner.reported = now, 1
            # The released kill is one of the suppressed ones.
            self._reportable.append((kill, owner.suppressed - 1))
            owner.suppressed, owner.latest_suppressed = 0, None

    def _poll_timeout(self) -> int | None:
        """Return the milliseconds until a window with suppressed kills ends.

        Returns None, so that poll() waits for a record, when no window
        has suppressed kills.
        """
        with self._lock:
            window_ends = [
                owner.window_start + _EVENT_WINDOW_SECONDS
                for owner in self._uid_owners.values()
                if owner.latest_suppressed is not None
            ]
        if not window_ends:
            return None
        seconds = min(window_ends) - time.monotonic()
        return max(0, math.ceil(seconds * 1000))

    def _report_descendant_kills(self) -> None:
        """Emit the queued events, from the thread and outside the locks."""
        with self._lock:
            self._release_suppressed(time.monotonic())
            reportable, self._reportable = self._reportable, []
        if self._audit is None:
            return
        for kill, suppressed in reportable:
            # An error here must not end the thread, which the death of
            # every worker depends on.
            try:
                self._audit.emit(
                    "policy_violation",
                    kill.plugin,
                    **kill.event_fields(suppressed),
                )
            except Exception:
                logger.exception(
                    "reporting the seccomp kill of pid %d failed",
                    kill.record.pid,
                )


def _shared_uids() -> set[int]:
    """Return the uids that processes other than one plugin's run as."""
    uids = {0, os.getuid(), os.geteuid()}
    with contextlib.suppress(KeyError):
        uids.add(pwd.getpwnam("nobody").pw_uid)
    return uids


def _lost_count() -> int | str:
    """Return the kernel's count of lost audit records, or why it failed."""
    try:
        return read_audit_status().lost
    except OSError as error:
        return f"the kernel's audit counters could not be read: {error}"


def _await_empty_backlog(timeout: float) -> AuditStatus:
    """Read the audit status until kauditd's queue is empty or time is up."""
    deadline = time.monotonic() + timeout
    status = read_audit_status()
    while status.backlog and time.monotonic() < deadline:
        time.sleep(_BACKLOG_POLL_SECONDS)
        status = read_audit_status()
    return status


def examine_sigsys(
    watcher: SeccompKillWatcher | None, pid: int
) -> SigsysEvidence:
    """Return what the audit records show about ``pid``'s death by SIGSYS."""
    if watcher is None:
        return SigsysEvidence(
            None, "no seccomp kill watcher was given to the worker"
        )
    return watcher.examine(pid)


def violation_fields(
    watcher: SeccompKillWatcher | None, pid: int
) -> dict[str, Any]:
    """Return the policy_violation event's fields for ``pid``'s kill."""
    return examine_sigsys(watcher, pid).violation_fields()


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
