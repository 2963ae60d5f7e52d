"""Read the kernel's seccomp audit records from /dev/kmsg.

A worker's seccomp filter kills it with SECCOMP_RET_KILL_PROCESS, and the
kernel then writes an audit record of type 1326 (AUDIT_SECCOMP) with the
pid and the system call number. Without a running auditd, and when
/proc/sys/kernel/seccomp/actions_logged lists kill_process, that record
goes to the kernel log, which /dev/kmsg serves one record per read(2).
Reading it needs CAP_SYSLOG while kernel.dmesg_restrict is 1, so in
practice only a root host gets the number.

A watch seeks to the end of the log when it opens, so it reads only the
records written after the worker it belongs to started.
"""

from __future__ import annotations

import errno
import os
import platform
import re
import select
import time
from dataclasses import dataclass
from typing import Any

from . import seccomp

__all__ = ["KernelLogWatch", "SeccompKill", "seccomp_kills_logged"]

KMSG_PATH = "/dev/kmsg"
ACTIONS_LOGGED_PATH = "/proc/sys/kernel/seccomp/actions_logged"
AUDIT_SECCOMP = 1326
# The kernel hands the audit record to its log from the kauditd thread,
# shortly after the system call; the host waits this long for it.
RECORD_WAIT_SECONDS = 1.0
# One record with its continuation lines; the kernel fails a read with
# EINVAL when the buffer is smaller than the next record.
_READ_SIZE = 16384
_LOG_KERN = 0
# AUDIT_ARCH_* of the native architecture as the audit record prints it.
_NATIVE_AUDIT_ARCH = {"x86_64": "c000003e", "aarch64": "c00000b7"}
# A field starts after a space. The kernel quotes or hex-encodes the
# strings a process chooses (comm, exe), so none of them can start one.
_FIELD = re.compile(r"(?<= )(pid|syscall|arch|sig)=([0-9a-f]+)(?= |$)")


@dataclass(frozen=True)
class SeccompKill:
    """One seccomp kill, as the kernel's audit record reports it."""

    pid: int
    syscall: int
    # AUDIT_ARCH_* in hex, for example "c000003e" for x86_64.
    arch: str
    signal: int | None

    @property
    def syscall_name(self) -> str:
        """The system call's name, when its number is a native one."""
        native = _NATIVE_AUDIT_ARCH.get(platform.machine())
        if self.arch != native:
            return f"syscall {self.syscall} of audit arch {self.arch}"
        return seccomp.describe_syscall(self.syscall)


def seccomp_kills_logged(path: str = ACTIONS_LOGGED_PATH) -> str | None:
    """Return why kill_process records are not logged, or None if they are."""
    try:
        with open(path, encoding="ascii") as file:
            actions = file.read().split()
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    if "kill_process" not in actions:
        return f"{path} does not list kill_process"
    return None


class KernelLogWatch:
    """Seccomp kill records written to /dev/kmsg since this watch opened.

    ``unavailable`` contains the reason no record can be read, or None.
    """

    def __init__(self, path: str = KMSG_PATH) -> None:
        self._fd: int | None = None
        self.unavailable: str | None = seccomp_kills_logged()
        if self.unavailable is not None:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            self.unavailable = (
                f"cannot open {path} ({error.strerror}); reading the "
                "kernel log needs CAP_SYSLOG while kernel.dmesg_restrict "
                "is 1, so a host that is not root gets no number"
            )
            return
        try:
            os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def find_seccomp_kill(
        self, pid: int, timeout: float = RECORD_WAIT_SECONDS
    ) -> SeccompKill | None:
        """Return the record of ``pid``'s seccomp kill, waiting ``timeout``.

        Returns None when no record came in time: see ``unavailable`` and
        missing_record_reason().
        """
        if self._fd is None:
            return None
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while True:
            for record in self._read_available():
                kill = parse_seccomp_record(record)
                if kill is not None and kill.pid == pid:
                    return kill
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            poller.poll(remaining * 1000)

    def missing_record_reason(self, timeout: float) -> str:
        """Explain why find_seccomp_kill() returned None."""
        if self.unavailable is not None:
            return self.unavailable
        return (
            f"no seccomp audit record for the worker within {timeout:g} s; "
            "the kernel sends audit records to auditd instead of its log "
            "while auditd runs, and rate-limits those it logs"
        )

    def _read_available(self) -> list[str]:
        assert self._fd is not None
        records: list[str] = []
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except OSError as error:
                if error.errno == errno.EPIPE:
                    # Older records were overwritten; the next read
                    # continues with the oldest one still kept.
                    continue
                if error.errno == errno.EAGAIN:
                    return records
                raise
            if not data:
                return records
            records.append(data.decode("utf-8", errors="replace"))

    def close(self) -> None:
        """Close the log; safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def parse_seccomp_record(record: str) -> SeccompKill | None:
    """Parse one /dev/kmsg record; None unless the kernel's seccomp record.

    Records that a process writes to /dev/kmsg never carry facility 0
    (LOG_KERN), so a worker cannot forge one.
    """
    header, _, message = record.partition(";")
    priority = header.split(",", 1)[0]
    if not priority.isdigit() or int(priority) >> 3 != _LOG_KERN:
        return None
    first_line = message.split("\n", 1)[0]
    if f"type={AUDIT_SECCOMP} " not in first_line:
        return None
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(first_line):
        fields.setdefault(key, value)
    pid, syscall = fields.get("pid", ""), fields.get("syscall", "")
    if not pid.isdigit() or not syscall.isdigit():
        return None
    signal = fields.get("sig", "")
    return SeccompKill(
        pid=int(pid),
        syscall=int(syscall),
        arch=fields.get("arch", ""),
        signal=int(signal) if signal.isdigit() else None,
    )


def violation_fields(watch: KernelLogWatch | None, pid: int) -> dict[str, Any]:
    """Return the policy_violation event's fields for ``pid``'s kill."""
    if watch is None:
        return {"syscall": None, "syscall_name": None, "unknown_reason": ""}
    kill = watch.find_seccomp_kill(pid)
    if kill is None:
        return {
            "syscall": None,
            "syscall_name": None,
            "unknown_reason": watch.missing_record_reason(RECORD_WAIT_SECONDS),
        }
    return {
        "syscall": kill.syscall,
        "syscall_name": kill.syscall_name,
        "arch": kill.arch,
        "reported_by": "kernel",
    }
