"""Run a probe function in a forked child under real seccomp filters.

The child turns off core dumps, sets no_new_privs, installs each filter
with seccomp(SECCOMP_SET_MODE_FILTER), runs the probe and sends
one JSON record back through a pipe before it calls os._exit().  The test
process itself is never filtered.  A child that the kernel kills, for
example with SIGSYS, sends nothing, and the outcome carries the signal.

For the few calls that the kernel never shows to a seccomp program,
filter_errno() runs the program as a socket filter instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyseccomp

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
# Not in the os module: wait for children whatever their exit signal.
WAIT_ALL = 0x40000000
SO_ATTACH_FILTER = 26
# SECCOMP_RET_ERRNO and the masks of a return value, from linux/seccomp.h.
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF
# Longer than any SECCOMP_RET_ERRNO value, so that a datagram cut to the
# filter's return value keeps the errno in its length.
VERDICT_DATAGRAM_BYTES = SECCOMP_RET_ERRNO + SECCOMP_RET_DATA + 1
# struct seccomp_data: int nr, __u32 arch, __u64 instruction_pointer and
# __u64 args[6], in native byte order.
_SECCOMP_DATA = "=iIQ6Q"
_SECCOMP_DATA_WORDS = struct.calcsize(_SECCOMP_DATA) // 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


class SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class SockFprog(ctypes.Structure):
    _fields_ = (
        ("len", ctypes.c_ushort),
        ("filter", ctypes.POINTER(SockFilter)),
    )


@dataclass(frozen=True)
class ProbeOutcome:
    """How a probe ended: its JSON value, its errno or a signal."""

    value: Any = None
    error: int | None = None
    signal: int | None = None
    exit_code: int | None = None


class ProbeFailed(Exception):
    """The child could not install a filter or the probe raised."""


def syscall_number(name: str) -> int:
    """Return the native number of system call ``name``."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if number < 0:
        raise LookupError(f"no system call {name!r} on this architecture")
    return int(number)


def raw_syscall(number: int, *args: int) -> int:
    """Call system call ``number``; raise OSError when it returns -1."""
    c_args = [ctypes.c_ulong(arg & 0xFFFFFFFFFFFFFFFF) for arg in args]
    result = int(_libc.syscall(ctypes.c_long(number), *c_args))
    if result == -1:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def _prctl(option: int, *args: int) -> None:
    c_args = [ctypes.c_ulong(arg) for arg in args]
    c_args += [ctypes.c_ulong(0)] * (4 - len(c_args))
    if _libc.prctl(option, *c_args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def install_filter(bpf: bytes) -> None:
    """Install ``bpf`` (struct sock_filter array) on the calling thread.

    Through seccomp() rather than prctl(), so that a filter installed
    earlier may deny prctl().
    """
    count = len(bpf) // ctypes.sizeof(SockFilter)
    instructions = (SockFilter * count).from_buffer_copy(bpf)
    program = SockFprog(count, instructions)
    address = ctypes.addressof(program)
    raw_syscall(syscall_number("seccomp"), SECCOMP_SET_MODE_FILTER, 0, address)


def _prepare_child(filters: tuple[bytes, ...]) -> None:
    # A process killed by SIGSYS would otherwise leave a core file.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    for bpf in filters:
        install_filter(bpf)


def _child_record(
    probe: Callable[[], Any], filters: tuple[bytes, ...]
) -> dict[str, Any]:
    try:
        _prepare_child(filters)
    except BaseException:
        return {"setup_failed": traceback.format_exc()}
    try:
        return {"value": probe()}
    except OSError as error:
        return {"errno": error.errno}
    except BaseException:
        return {"raised": traceback.format_exc()}


def _run_child(
    probe: Callable[[], Any],
    filters: tuple[bytes, ...],
    read_end: int,
    write_end: int,
) -> None:
    exit_code = 1
    try:
        os.close(read_end)
        record = _child_record(probe, filters)
        data = json.dumps(record).encode()
        while data:
            data = data[os.write(write_end, data) :]
        exit_code = 0
    finally:
        os._exit(exit_code)


def _read_record(read_end: int, pid: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([read_end], [], [], max(remaining, 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, WAIT_ALL)
            raise TimeoutError(f"probe child {pid} ran over {timeout} s")
        chunk = os.read(read_end, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _outcome(data: bytes, status: int) -> ProbeOutcome:
    if os.WIFSIGNALED(status):
        return ProbeOutcome(signal=os.WTERMSIG(status))
    record = json.loads(data) if data else {}
    if "setup_failed" in record:
        raise ProbeFailed("filter setup failed:\n" + record["setup_failed"])
    if "raised" in record:
        raise ProbeFailed("probe raised:\n" + record["raised"])
    exit_code = os.waitstatus_to_exitcode(status)
    if "errno" in record:
        return ProbeOutcome(error=record["errno"], exit_code=exit_code)
    if "value" in record:
        return ProbeOutcome(value=record["value"], exit_code=exit_code)
    raise ProbeFailed(f"child sent no record and exited with {exit_code}")


def run_probe(
    probe: Callable[[], Any], *filters: bytes, timeout: float = 30.0
) -> ProbeOutcome:
    """Run ``probe`` in a child under ``filters``, installed in that order.

    The probe returns a JSON-serialisable value.  With no filters the
    child runs unfiltered, which shows what the kernel itself returns.
    """
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            _run_child(probe, filters, read_end, write_end)
        os.close(write_end)
        write_end = -1
        data = _read_record(read_end, pid, timeout)
        _, status = os.waitpid(pid, WAIT_ALL)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    return _outcome(data, status)


def filter_errno(
    bpf: bytes, number: int, args: Sequence[int] = (), *, arch: int
) -> int | None:
    """Return the errno that program ``bpf`` sets for a call, or None.

    None means that the program returns an action other than
    SECCOMP_RET_ERRNO.  The kernel runs the program as a socket filter on
    one datagram: the kernel's classic BPF engine, as for seccomp, but
    for a call that no process makes.  The datagram holds struct
    seccomp_data for ``number``, ``args`` (missing ones are 0) and
    ``arch`` (an AUDIT_ARCH value), each 32-bit word big-endian, because
    a socket filter loads words in network byte order where seccomp loads
    them in native order.  The kernel cuts the datagram to the filter's
    return value, so its length is the return value.
    """
    data = struct.pack(_SECCOMP_DATA, number, arch, 0, *_six_args(args))
    words = struct.unpack(f"={_SECCOMP_DATA_WORDS}I", data)
    datagram = struct.pack(f">{_SECCOMP_DATA_WORDS}I", *words)
    datagram += bytes(VERDICT_DATAGRAM_BYTES - len(datagram))
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sender, receiver:
        sender.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, VERDICT_DATAGRAM_BYTES
        )
        _attach_socket_filter(receiver, bpf)
        sender.send(datagram)
        receiver.setblocking(False)
        try:
            result = len(receiver.recv(VERDICT_DATAGRAM_BYTES))
        except BlockingIOError:
            # A return value of 0 (SECCOMP_RET_KILL_THREAD) drops it.
            return None
    if result & SECCOMP_RET_ACTION_FULL != SECCOMP_RET_ERRNO:
        return None
    return result & SECCOMP_RET_DATA


def _six_args(args: Sequence[int]) -> list[int]:
    if len(args) > 6:
        raise ValueError(f"a system call takes at most 6 arguments: {args}")
    return [arg & 0xFFFFFFFFFFFFFFFF for arg in args] + [0] * (6 - len(args))


def _attach_socket_filter(sock: socket.socket, bpf: bytes) -> None:
    count = len(bpf) // ctypes.sizeof(SockFilter)
    instructions = (SockFilter * count).from_buffer_copy(bpf)
    program = SockFprog(count, instructions)
    # setsockopt() copies the program before it returns, while
    # ``instructions`` is still alive.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(program))
