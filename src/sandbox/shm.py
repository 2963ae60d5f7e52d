"""Shared-memory channel: two byte rings in one sealed memfd per worker.

The host creates the segment (ShmChannelSegment.create), seals its size
and maps it. The worker maps the descriptor it inherits
(ShmChannelSegment.attach). Copying, index validation and futex waits are C
(csrc/ring.c). This module sizes, seals and maps the segment, turns
timeouts into nanoseconds and the C status codes into exceptions, and
watches the workers' pidfds, since a futex wait cannot poll a pidfd.

The worker imports this module only for a shared-memory channel. It uses
the standard library and sandbox._native only, and no threads.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import functools
import importlib
import io
import os
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .channel import PeerGone
from .errors import ProtocolError

if TYPE_CHECKING:
    import threading

_native = importlib.import_module("sandbox._native")
ffi: Any = _native.ffi
lib: Any = _native.lib

TRANSPORTS = ("auto", "shm", "stream")
DEFAULT_RING_BYTES = 1 << 20
# How long a worker polls for the next request before it sleeps: long
# enough for a host that calls again at once, since a no-op call took 15
# to 30 us on a 2-vCPU AMD EPYC VM. The host then needs no FUTEX_WAKE.
# A spin costs the worker up to this much CPU time, which it pays from its
# RLIMIT_CPU budget, so it stays short.
DEFAULT_SPIN_NS = 50_000
# How long the host polls for a reply. On the same VM, a no-op call after
# a 1 ms idle gap took 50 to 130 us, most of it waking the worker, which
# outlasted DEFAULT_SPIN_NS. A host that sleeps as well adds a second
# wake-up of that length. The host pays the spin from its own CPU time.
HOST_SPIN_NS = 200_000
# Frames up to this size are received into one reused buffer, and larger
# ones into a buffer of their own size.
RECEIVE_BUFFER_BYTES = 64 << 10
# The length prefix is 4 bytes.
_MAX_FRAME_LENGTH = 2**32 - 1
_SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")
_SEGMENT_NAME = "sandbox-channel"


# -- availability ------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def shm_available() -> bool:
    """Return True where this machine can run shared-memory channels.

    That needs Linux, a build of sandbox._native with futex waits,
    memfd_create with sealing, and pidfd_open, through which the host
    learns at once that a worker died.
    """
    # Imported here: the worker imports this module and never calls this.
    from .platform import has_linux_features

    if not has_linux_features():
        return False
    if not hasattr(os, "memfd_create") or not hasattr(os, "pidfd_open"):
        return False
    try:
        segment = ShmChannelSegment.create(RingGeometry(4096, 4096))
        segment.close()
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def resolve_transport(name: str) -> str:
    """Return "shm" or "stream" for a transport name a host was given.

    "auto" is "shm" where shm_available(), else "stream". Raises
    ValueError for an unknown name or for "shm" where it is unavailable.
    """
    if name not in TRANSPORTS:
        raise ValueError(
            f"transport must be one of {', '.join(TRANSPORTS)}, got {name!r}"
        )
    if name == "stream":
        return name
    if shm_available():
        return "shm"
    if name == "shm":
        raise ValueError(
            "transport 'shm' needs Linux with memfd_create, file sealing "
            "and pidfd_open, which this machine lacks; use 'auto' or "
            "'stream'"
        )
    return "stream"


def default_spin_ns(*, host: bool = False) -> int:
    """Return DEFAULT_SPIN_NS, or HOST_SPIN_NS for ``host``, or 0 on a
    machine with one CPU.

    There the peer cannot run while this process spins. The machine's
    count, not this process's affinity, decides, because the peer may run
    on a CPU this process may not use. When the peer last waited on this
    process's CPU, the C side hands the CPU over while it spins.
    """
    if (os.cpu_count() or 1) < 2:
        return 0
    return HOST_SPIN_NS if host else DEFAULT_SPIN_NS


# -- the segment -------------------------------------------------------------


class RingGeometry:
    """The capacities of the two rings in bytes, each a power of two."""

    # A plain class: dataclasses would add milliseconds to worker start-up.
    __slots__ = ("to_host", "to_worker")

    def __init__(
        self,
        to_worker: int = DEFAULT_RING_BYTES,
        to_host: int = DEFAULT_RING_BYTES,
    ) -> None:
        self.to_worker = _checked_capacity("to_worker", to_worker)
        self.to_host = _checked_capacity("to_host", to_host)

    def __repr__(self) -> str:
        return (
            f"RingGeometry(to_worker={self.to_worker}, to_host={self.to_host})"
        )

    @property
    def segment_bytes(self) -> int:
        size: int = lib.sandbox_ring_segment_size(self.to_worker, self.to_host)
        return size


def _checked_capacity(name: str, value: object) -> int:
    low, high = lib.SANDBOX_RING_MIN_CAPACITY, lib.SANDBOX_RING_MAX_CAPACITY
    if (
        type(value) is not int
        or not low <= value <= high
        or value & (value - 1)
    ):
        raise ValueError(
            f"ring capacity {name} must be a power of two from {low} to "
            f"{high}, got {value!r}"
        )
    return value


class ShmChannelSegment:
    """A memfd holding one channel's rings, mapped into this process.

    The segment owns its descriptor ``fd`` until close_fd() and its
    mapping until close(). The host's segment is sealed against shrinking
    and growing, so a worker cannot truncate it and make the host fault.
    """

    def __init__(self, fd: int, geometry: RingGeometry, side: int) -> None:
        """Map ``fd``. Use create() or attach() rather than this."""
        size = geometry.segment_bytes
        base = lib.sandbox_ring_map(fd, size)
        if base == ffi.NULL:
            code = ffi.errno
            raise OSError(
                code,
                f"mmap of the channel segment failed: {os.strerror(code)}",
            )
        self.fd = fd
        self._fd_open = True
        self.geometry = geometry
        self.side = side
        self.base: Any = base
        self.size = size

    @classmethod
    def create(cls, geometry: RingGeometry | None = None) -> ShmChannelSegment:
        """Create, size, seal and map a new segment, as the host does."""
        import fcntl

        geometry = geometry or RingGeometry()
        fd = os.memfd_create(
            _SEGMENT_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        )
        try:
            os.ftruncate(fd, geometry.segment_bytes)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _seal_flags())
            segment = cls(fd, geometry, lib.SANDBOX_RING_HOST)
        except BaseException:
            os.close(fd)
            raise
        lib.sandbox_ring_format(
            segment.base, geometry.to_worker, geometry.to_host
        )
        return segment

    @classmethod
    def attach(cls, fd: int, geometry: RingGeometry) -> ShmChannelSegment:
        """Map the segment the host created, as the worker does.

        Raises ProtocolError when the descriptor's size or seals are not
        what the host promised, which would mean a mismatched launch.
        """
        import fcntl

        size = os.fstat(fd).st_size
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        required = _seal_flags()
        if size != geometry.segment_bytes or seals & required != required:
            raise ProtocolError(
                f"channel descriptor {fd} is not the segment the host "
                f"created: it has {size} bytes and seals {seals:#x}, "
                f"expected {geometry.segment_bytes} bytes and seals "
                f"{required:#x}"
            )
        return cls(fd, geometry, lib.SANDBOX_RING_WORKER)

    def close_fd(self) -> None:
        """Close the descriptor, keeping the mapping until close()."""
        if self._fd_open:
            self._fd_open = False
            os.close(self.fd)

    def close(self) -> None:
        """Unmap the segment and close the descriptor if still open.

        No C call on this segment may be in progress.
        """
        self.close_fd()
        base, self.base = self.base, None
        if base is not None:
            lib.sandbox_ring_unmap(base, self.size)

    def bootstrap(self, fd: int, spin_ns: int) -> dict[str, Any]:
        """Return the bootstrap entry a worker attaches with.

        ``fd`` is the segment's descriptor number in the worker.
        """
        return {
            "transport": "shm",
            "fd": fd,
            "to_worker": self.geometry.to_worker,
            "to_host": self.geometry.to_host,
            "spin_ns": spin_ns,
        }


def _seal_flags() -> int:
    import fcntl

    flags = 0
    for name in _SEALS:
        flags |= getattr(fcntl, name)
    return flags


# -- the transport -----------------------------------------------------------


_monotonic_ns = time.monotonic_ns
_ring_recv = lib.sandbox_ring_recv
_ring_send = lib.sandbox_ring_send
_unpack = ffi.unpack
_OK = lib.SANDBOX_RING_OK
_INTERRUPTED = lib.SANDBOX_RING_INTERRUPTED
_NEED_BUFFER = lib.SANDBOX_RING_NEED_BUFFER


def _timeout_ns(timeout: float | None) -> int:
    """Return ``timeout`` in nanoseconds as the C calls take it, -1 for
    none."""
    return -1 if timeout is None else max(0, int(timeout * 1e9))


class _Deadline:
    """The end of a wait that takes more than one C call.

    The first call of a wait gets _timeout_ns() and needs no deadline
    object, which saves a tenth of a microsecond on most frames.
    """

    __slots__ = ("_end", "timeout")

    def __init__(self, timeout: float | None, started_ns: int) -> None:
        self.timeout = timeout
        self._end = (
            -1 if timeout is None else started_ns + _timeout_ns(timeout)
        )

    def remaining_ns(self) -> int:
        """Return the nanoseconds left, at least 0, or -1 for no limit."""
        if self._end < 0:
            return -1
        return max(0, self._end - _monotonic_ns())


class ShmTransport:
    """Frames over one end of a ShmChannelSegment.

    The transport owns the segment and unmaps it in close(). ``spin_ns``
    is how long a wait polls before it sleeps (when None, default_spin_ns()
    for the segment's side). On the host, ``pidfd`` and ``monitor`` make a
    worker's death end every wait at once with PeerGone.

    One thread may send while another receives. abort() and close() may
    come from any thread: both end the waits in progress with PeerGone,
    and close() waits for them to return before it unmaps.
    """

    def __init__(
        self,
        segment: ShmChannelSegment,
        *,
        max_message_bytes: int,
        spin_ns: int | None = None,
        pidfd: int | None = None,
        monitor: WorkerDeathMonitor | None = None,
    ) -> None:
        if (
            type(max_message_bytes) is not int
            or not 1 <= max_message_bytes <= _MAX_FRAME_LENGTH
        ):
            raise ValueError(
                "max_message_bytes must be an integer in "
                f"1..{_MAX_FRAME_LENGTH}, got {max_message_bytes!r}"
            )
        self._segment = segment
        self._max_message_bytes = max_message_bytes
        self._endpoint = ffi.new("struct sandbox_ring_endpoint *")
        if spin_ns is None:
            spin_ns = default_spin_ns(
                host=segment.side == lib.SANDBOX_RING_HOST
            )
        self._attach(spin_ns)
        self._small = ffi.new("char[]", RECEIVE_BUFFER_BYTES)
        self._large: bytearray | None = None
        self._large_pointer: Any = None
        self._length = ffi.new("uint64_t *")
        self._sent = ffi.new("uint64_t *")
        # _thread locks avoid importing threading into the worker.
        self._recv_lock = _thread.allocate_lock()
        self._send_lock = _thread.allocate_lock()
        self._state_lock = _thread.allocate_lock()
        self._recv_fault: str | None = None
        self._send_fault: str | None = None
        self._closed = False
        self._pidfd = pidfd
        self._monitor = monitor
        if monitor is not None and pidfd is not None:
            monitor.watch(pidfd, self.abort)

    def _attach(self, spin_ns: int) -> None:
        segment = self._segment
        geometry = segment.geometry
        error = lib.sandbox_ring_attach(
            self._endpoint,
            segment.base,
            segment.size,
            segment.side,
            geometry.to_worker,
            geometry.to_host,
            self._max_message_bytes,
            spin_ns,
        )
        if error == -errno.EPROTO:
            raise ProtocolError(
                "channel segment header does not match the geometry "
                f"{geometry}"
            )
        if error != 0:
            raise OSError(
                -error,
                f"cannot attach to the channel segment: {os.strerror(-error)}",
            )

    @property
    def endpoint(self) -> Any:
        """The C endpoint, whose counters (wake_calls, wait_calls) tests
        and benchmarks read."""
        return self._endpoint

    def fileno(self) -> int:
        """Raise io.UnsupportedOperation, because no descriptor signals data.

        A futex, not a descriptor, wakes a reader. Wait in recv() on a
        thread of its own instead.
        """
        raise io.UnsupportedOperation(
            "a shared-memory transport has no descriptor that turns "
            "readable; call recv() from a thread instead"
        )

    def pending(self) -> bool:
        """Return whether the peer published bytes that recv() has not
        returned.

        It reads one index from the segment and makes no system call.
        Raises PeerGone after close().
        """
        with self._recv_lock:
            self._check_open()
            return bool(lib.sandbox_ring_pending(self._endpoint))

    def abort(self) -> None:
        """End every wait, now and later, with PeerGone.

        Bytes the peer sent before are still delivered.
        """
        with self._state_lock:
            if not self._closed:
                lib.sandbox_ring_abort(self._endpoint)

    def close(self) -> None:
        """Mark this end closed, wake the peer and unmap the segment.

        Calling it again does nothing.
        """
        if self._monitor is not None and self._pidfd is not None:
            self._monitor.unwatch(self._pidfd)
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            lib.sandbox_ring_close(self._endpoint)
            lib.sandbox_ring_abort(self._endpoint)
        with self._send_lock, self._recv_lock:
            self._segment.close()

    def __enter__(self) -> ShmTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- receiving

    def recv(self, timeout: float | None) -> bytes | bytearray:
        """Return the payload of the next frame.

        A frame longer than RECEIVE_BUFFER_BYTES comes back in a bytearray
        that the caller owns, which saves copying it once more. Raises
        TimeoutError when ``timeout`` seconds pass first, and keeps the
        bytes received so far for the next call. Raises PeerGone when the
        peer closed its end or the transport was aborted, and
        ProtocolError when the peer corrupted its ring index or declared
        a length of 0 or above max_message_bytes, after which every
        recv() raises it again.
        """
        with self._recv_lock:
            if self._closed:
                raise PeerGone("transport is closed")
            if self._recv_fault is not None:
                raise ProtocolError(self._recv_fault)
            started_ns = 0 if timeout is None else _monotonic_ns()
            if self._large is not None:
                deadline = _Deadline(timeout, started_ns)
                return self._recv_rest(deadline, _timeout_ns(timeout))
            # Most frames take this one C call.
            status = _ring_recv(
                self._endpoint,
                self._small,
                RECEIVE_BUFFER_BYTES,
                _timeout_ns(timeout),
                self._length,
            )
            if status == _OK:
                payload: bytes = _unpack(self._small, self._length[0])
                return payload
            deadline = _Deadline(timeout, started_ns)
            self._continue_after(status, deadline)
            return self._recv_rest(deadline, deadline.remaining_ns())

    def _recv_rest(
        self, deadline: _Deadline, wait_ns: int
    ) -> bytes | bytearray:
        """Receive the rest of a frame that one C call did not finish."""
        while True:
            large = self._large
            buffer = self._small if large is None else self._large_pointer
            size = RECEIVE_BUFFER_BYTES if large is None else len(large)
            status: int = _ring_recv(
                self._endpoint, buffer, size, wait_ns, self._length
            )
            if status == _OK:
                return self._take_payload()
            self._continue_after(status, deadline)
            wait_ns = deadline.remaining_ns()

    def _continue_after(self, status: int, deadline: _Deadline) -> None:
        """Prepare the next C call after ``status``, or raise its error."""
        if status == _NEED_BUFFER:
            self._large = bytearray(self._length[0])
            self._large_pointer = ffi.from_buffer(self._large)
        elif status != _INTERRUPTED:
            raise self._recv_error(status, deadline)

    def _take_payload(self) -> bytes | bytearray:
        large = self._large
        if large is None:
            payload: bytes = _unpack(self._small, self._length[0])
            return payload
        # Dropping the cffi buffer first lets the caller resize it.
        self._large = self._large_pointer = None
        return large

    def _recv_error(self, status: int, deadline: _Deadline) -> Exception:
        if status == lib.SANDBOX_RING_TIMEOUT:
            return TimeoutError(
                f"timed out after {deadline.timeout:g} s waiting for a frame"
            )
        if status == lib.SANDBOX_RING_CORRUPT:
            self._recv_fault = "peer moved its ring index out of bounds"
        elif status == lib.SANDBOX_RING_BAD_LENGTH:
            self._recv_fault = (
                f"frame declares {self._declared_length()} payload bytes; "
                f"allowed are 1 to {self._max_message_bytes}"
            )
        if self._recv_fault is not None:
            return ProtocolError(self._recv_fault)
        return _common_error(status)

    def _declared_length(self) -> int:
        return int.from_bytes(bytes(self._endpoint.recv_header), "big")

    # -- sending

    def send(self, payload: bytes, *, timeout: float | None = None) -> None:
        """Send ``payload`` as one frame.

        Raises ProtocolError when the payload is empty or longer than
        max_message_bytes, PeerGone when the peer closed its end or the
        transport was aborted, and TimeoutError when ``timeout`` seconds
        pass first. After a timeout in the middle of a frame every send()
        raises ProtocolError, because the ring cannot be brought back in
        step.
        """
        with self._send_lock:
            if self._closed:
                raise PeerGone("transport is closed")
            if self._send_fault is not None:
                raise ProtocolError(self._send_fault)
            size = len(payload)
            if not 0 < size <= self._max_message_bytes:
                raise ProtocolError(
                    f"payload of {size} bytes cannot be sent; allowed are 1 "
                    f"to {self._max_message_bytes}"
                )
            data = (
                payload if type(payload) is bytes else ffi.from_buffer(payload)
            )
            status = self._send_frame(data, size, timeout)
            if status != _OK:
                raise self._send_error(status, size, timeout)

    def _send_frame(self, data: Any, size: int, timeout: float | None) -> int:
        endpoint = self._endpoint
        started_ns = 0 if timeout is None else _monotonic_ns()
        try:
            status: int = _ring_send(
                endpoint, data, size, _timeout_ns(timeout), self._sent
            )
            if status == _INTERRUPTED:
                deadline = _Deadline(timeout, started_ns)
            while status == _INTERRUPTED:
                status = _ring_send(
                    endpoint, data, size, deadline.remaining_ns(), self._sent
                )
        except BaseException:
            # A signal handler that raised between two calls left the
            # frame half sent. Every other way out of the calls above
            # leaves send_done at 0.
            if endpoint.send_done != 0:
                endpoint.send_done = 0
                self._send_fault = (
                    "an earlier send was interrupted inside a frame, so "
                    "the ring is out of step"
                )
            raise
        return status

    def _send_error(
        self, status: int, size: int, timeout: float | None
    ) -> Exception:
        sent = self._sent[0]
        if status == lib.SANDBOX_RING_TIMEOUT:
            if sent:
                self._send_fault = (
                    f"an earlier send timed out after {sent} of {size + 4} "
                    "frame bytes, so the ring is out of step"
                )
            return TimeoutError(
                f"timed out after {timeout:g} s sending a frame"
            )
        if status == lib.SANDBOX_RING_CORRUPT:
            self._send_fault = "peer moved its ring index out of bounds"
            return ProtocolError(self._send_fault)
        return _common_error(status)

    def _check_open(self) -> None:
        if self._closed:
            raise PeerGone("transport is closed")


def _common_error(status: int) -> Exception:
    if status == lib.SANDBOX_RING_ABORTED:
        return PeerGone("the peer process exited or the transport closed")
    if status == lib.SANDBOX_RING_PEER_CLOSED:
        return PeerGone("peer closed the channel")
    if status == lib.SANDBOX_RING_SYSTEM_ERROR:
        code = ffi.errno
        return OSError(code, f"futex wait failed: {os.strerror(code)}")
    return ProtocolError(f"ring call returned unknown status {status}")


# -- worker deaths -----------------------------------------------------------


class WorkerDeathMonitor:
    """One thread that runs a callback when a watched process exits.

    A pidfd turns readable when its process exits. ShmTransport registers
    its abort() here, so a host blocked in recv() or send() returns
    PeerGone at once when the worker dies. The thread starts with the
    first watch(). After close(), watch() watches nothing, because a
    closed host stops any worker that finishes starting afterwards.
    """

    def __init__(self) -> None:
        import threading

        self._epoll = select.epoll()
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        self._epoll.register(self._stop_read, select.EPOLLIN)
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, pidfd: int, on_exit: Callable[[], None]) -> None:
        """Run ``on_exit()`` on the monitor thread once ``pidfd`` fires."""
        import threading

        with self._lock:
            if self._closed:
                return
            self._callbacks[pidfd] = on_exit
            self._epoll.register(pidfd, select.EPOLLIN)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-death-monitor", daemon=True
                )
                self._thread.start()

    def unwatch(self, pidfd: int) -> None:
        """Forget ``pidfd``. Once this returns, its callback never runs."""
        with self._lock:
            if self._callbacks.pop(pidfd, None) is not None:
                self._unregister(pidfd)

    def close(self) -> None:
        """Stop the thread and close the descriptors, once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._stop_write, b"x")
        if self._thread is not None:
            self._thread.join()
        self._epoll.close()
        os.close(self._stop_read)
        os.close(self._stop_write)

    def _run(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                if fd == self._stop_read:
                    return
                self._fire(fd)

    def _fire(self, pidfd: int) -> None:
        with self._lock:
            callback = self._callbacks.get(pidfd)
            # The number may have been unwatched, closed and reused for a
            # live process since epoll reported it.
            if callback is None or not _has_exited(pidfd):
                return
            del self._callbacks[pidfd]
            self._unregister(pidfd)
            try:
                callback()
            except Exception:
                # No caller to raise to, and the thread must go on
                # watching the other workers.
                import logging

                logging.getLogger("sandbox.host").exception(
                    "death callback for pidfd %d failed", pidfd
                )

    def _unregister(self, pidfd: int) -> None:
        # Closing the last descriptor of a file removes it from epoll.
        with contextlib.suppress(OSError):
            self._epoll.unregister(pidfd)


def _has_exited(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return any(events & select.POLLIN for _, events in poller.poll(0))
