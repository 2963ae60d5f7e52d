"""Tests of sandbox.shm: rings in shared memory between real processes,
their checks against a hostile peer, and the worker death monitor.

The hostile peer is either a second mapping of the segment in this process,
which writes control words directly, or a plugin in a real worker that
finds its own mapping and does the same.
"""

from __future__ import annotations

import fcntl
import io
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import HostFactory, PluginWriter
from sandbox import PluginHost, ProtocolError
from sandbox.channel import PeerGone
from sandbox.shm import (
    RingGeometry,
    ShmChannelSegment,
    ShmTransport,
    WorkerDeathMonitor,
    lib,
    shm_available,
)

pytestmark = pytest.mark.skipif(
    not shm_available(), reason="needs memfd sealing and pidfd_open"
)

MAX_BYTES = 16 << 20
SMALL = RingGeometry(64 << 10, 64 << 10)
TINY = RingGeometry(4096, 4096)
# Long enough that a reader spinning in a test never gives up first.
LONG_SPIN_NS = 10 * 10**9
# Bounds for waits that end early when the code works.
PATIENCE = 10.0

# The far end of the rings in a child process, as a worker maps them.
# argv: descriptor, capacity to worker, capacity to host, spin, mode.
PEER_SOURCE = r"""
import os, sys, time
from sandbox.channel import PeerGone
from sandbox.shm import RingGeometry, ShmChannelSegment, ShmTransport

fd, to_worker, to_host, spin = map(int, sys.argv[1:5])
mode = sys.argv[5]
if mode == "unannounced-last-words":
    # Publishes a frame but exits before any FUTEX_WAKE, as a worker
    # killed between the two would.
    import mmap, struct
    view = mmap.mmap(fd, 0)
    time.sleep(0.2)
    data = struct.pack(">I", 10) + b"last words"
    start = DATA_START + to_worker
    view[start:start + len(data)] = data
    struct.pack_into("=Q", view, TO_HOST_PRODUCER, len(data))
    sys.exit(0)
segment = ShmChannelSegment.attach(fd, RingGeometry(to_worker, to_host))
segment.close_fd()
transport = ShmTransport(segment, max_message_bytes=16 << 20, spin_ns=spin)
if mode == "echo":
    while True:
        try:
            frame = transport.recv(None)
        except PeerGone:
            break
        transport.send(frame)
elif mode == "idle":
    time.sleep(3600)
elif mode == "last-words":
    transport.send(b"last words")
elif mode == "close":
    transport.close()
    time.sleep(3600)
elif mode == "count-waits":
    transport.send(b"ready")
    transport.recv(None)
    endpoint = transport.endpoint
    transport.send(b"%d %d" % (endpoint.wait_calls, endpoint.wake_calls))
    time.sleep(3600)
""".replace("DATA_START", str(lib.SANDBOX_RING_DATA_START)).replace(
    "TO_HOST_PRODUCER",
    str(lib.SANDBOX_RING_TO_HOST_CONTROL + lib.SANDBOX_RING_PRODUCER),
)


# -- fixtures -----------------------------------------------------------------


@dataclass
class Peer:
    """A child process on the worker side of a segment."""

    transport: ShmTransport
    process: subprocess.Popen[bytes]
    view: SegmentView

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)


StartPeer = Callable[..., Peer]


@pytest.fixture
def monitor() -> Iterator[WorkerDeathMonitor]:
    watcher = WorkerDeathMonitor()
    yield watcher
    watcher.close()


@pytest.fixture
def start_peer(monitor: WorkerDeathMonitor) -> Iterator[StartPeer]:
    """Start children on the worker side; all end with the test."""
    peers: list[tuple[Peer, int]] = []

    def start(
        mode: str,
        geometry: RingGeometry = SMALL,
        peer_spin_ns: int = 0,
        host_spin_ns: int = 0,
    ) -> Peer:
        segment = ShmChannelSegment.create(geometry)
        argv = [
            sys.executable,
            "-c",
            PEER_SOURCE,
            str(segment.fd),
            str(geometry.to_worker),
            str(geometry.to_host),
            str(peer_spin_ns),
            mode,
        ]
        process = subprocess.Popen(argv, pass_fds=[segment.fd])
        view = SegmentView(segment)
        segment.close_fd()
        pidfd = os.pidfd_open(process.pid)
        transport = ShmTransport(
            segment,
            max_message_bytes=MAX_BYTES,
            spin_ns=host_spin_ns,
            pidfd=pidfd,
            monitor=monitor,
        )
        peer = Peer(transport, process, view)
        peers.append((peer, pidfd))
        return peer

    yield start
    for peer, pidfd in peers:
        peer.transport.close()
        peer.view.close()
        peer.kill()
        peer.process.wait()
        os.close(pidfd)


class SegmentView:
    """A second mapping of a segment that reads and writes raw words."""

    def __init__(self, segment: ShmChannelSegment) -> None:
        self.geometry = segment.geometry
        self._map = mmap.mmap(segment.fd, segment.size)

    def close(self) -> None:
        self._map.close()

    def read_u32(self, offset: int) -> int:
        value: int = struct.unpack_from("=I", self._map, offset)[0]
        return value

    def write_u32(self, offset: int, value: int) -> None:
        struct.pack_into("=I", self._map, offset, value)

    def write_u64(self, offset: int, value: int) -> None:
        struct.pack_into("=Q", self._map, offset, value)

    def read_u64(self, offset: int) -> int:
        value: int = struct.unpack_from("=Q", self._map, offset)[0]
        return value

    def send_to_host(self, position: int, data: bytes) -> None:
        """Write ``data`` at stream ``position`` and publish the end."""
        start = lib.SANDBOX_RING_DATA_START + self.geometry.to_worker
        capacity = self.geometry.to_host
        for index, byte in enumerate(data, position):
            self._map[start + index % capacity] = byte
        self.write_u64(TO_HOST_PRODUCER, position + len(data))


TO_HOST_PRODUCER = lib.SANDBOX_RING_TO_HOST_CONTROL + lib.SANDBOX_RING_PRODUCER
TO_WORKER_CONSUMER = (
    lib.SANDBOX_RING_TO_WORKER_CONTROL + lib.SANDBOX_RING_CONSUMER
)
TO_WORKER_READER_WAITING = (
    lib.SANDBOX_RING_TO_WORKER_CONTROL + lib.SANDBOX_RING_READER_WAITING
)


@pytest.fixture
def hostile() -> Iterator[tuple[ShmTransport, SegmentView]]:
    """Return a host transport and a raw view for the hostile worker."""
    segment = ShmChannelSegment.create(TINY)
    view = SegmentView(segment)
    transport = ShmTransport(segment, max_message_bytes=1024, spin_ns=0)
    yield transport, view
    view.close()
    transport.close()


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# -- round trips between processes --------------------------------------------


@pytest.mark.parametrize(
    "size", [1, 3, 100, 4095, 4096, 65535, 65536, 65537, 300_000]
)
def test_echo_round_trip(start_peer: StartPeer, size: int) -> None:
    peer = start_peer("echo")
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]

    peer.transport.send(payload, timeout=PATIENCE)

    assert peer.transport.recv(PATIENCE) == payload


def test_large_frame_returned_in_owned_bytearray(
    start_peer: StartPeer,
) -> None:
    peer = start_peer("echo")
    first, second = os.urandom(300_000), os.urandom(300_000)

    peer.transport.send(first, timeout=PATIENCE)
    received = peer.transport.recv(PATIENCE)
    assert type(received) is bytearray
    assert received == first
    # The transport keeps no hold on it: the caller may resize it, and
    # the next frame goes to a buffer of its own.
    received.clear()
    peer.transport.send(second, timeout=PATIENCE)

    assert peer.transport.recv(PATIENCE) == second
    assert received == b""


def test_frame_larger_than_ring(start_peer: StartPeer) -> None:
    peer = start_peer("echo", SMALL)
    payload = os.urandom(8 << 20)
    received: list[bytes] = []
    # The echo cannot start before the frame is whole, so the host has to
    # read while it sends.
    reader = threading.Thread(
        target=lambda: received.append(peer.transport.recv(PATIENCE))
    )
    reader.start()

    peer.transport.send(payload, timeout=PATIENCE)
    reader.join(PATIENCE)

    assert len(payload) > 100 * SMALL.to_worker
    assert received == [payload]


def test_indices_wrap_around(start_peer: StartPeer) -> None:
    peer = start_peer("echo", TINY)
    sizes = [1 + (index * 997) % 3000 for index in range(600)]

    for index, size in enumerate(sizes):
        payload = bytes([index % 251]) * size
        peer.transport.send(payload, timeout=PATIENCE)
        assert peer.transport.recv(PATIENCE) == payload

    endpoint = peer.transport.endpoint
    assert endpoint.out.own == sum(sizes) + 4 * len(sizes)
    assert endpoint.out.own > 100 * TINY.to_worker
    assert endpoint.out.own % TINY.to_worker != 0


def test_frames_in_both_directions_at_once(start_peer: StartPeer) -> None:
    peer = start_peer("echo", TINY)
    payloads = [os.urandom(1000 + index) for index in range(200)]
    received: list[bytes] = []

    def read_all() -> None:
        for _ in payloads:
            received.append(peer.transport.recv(PATIENCE))

    reader = threading.Thread(target=read_all)
    reader.start()
    for payload in payloads:
        peer.transport.send(payload, timeout=PATIENCE)
    reader.join(PATIENCE)

    assert received == payloads


def test_wait_releases_the_gil() -> None:
    segment = ShmChannelSegment.create(TINY)
    other = ShmChannelSegment.attach(os.dup(segment.fd), TINY)
    other.close_fd()
    segment.close_fd()
    host = ShmTransport(segment, max_message_bytes=1024, spin_ns=0)
    worker = ShmTransport(other, max_message_bytes=1024, spin_ns=0)
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.append(host.recv(PATIENCE))
    )
    reader.start()
    time.sleep(0.1)

    # This thread needs the GIL to send while the reader waits in C.
    worker.send(b"through")
    reader.join(PATIENCE)
    host.close()
    worker.close()

    assert received == [b"through"]


# -- timeouts -----------------------------------------------------------------


def test_recv_times_out(start_peer: StartPeer) -> None:
    peer = start_peer("idle")
    started = time.monotonic()

    with pytest.raises(TimeoutError, match="waiting for a frame"):
        peer.transport.recv(0.2)

    assert time.monotonic() - started >= 0.2


def test_timeout_keeps_partial_frame(
    hostile: tuple[ShmTransport, SegmentView],
) -> None:
    transport, view = hostile
    data = frame(b"0123456789")
    view.send_to_host(0, data[:7])

    with pytest.raises(TimeoutError):
        transport.recv(0.05)
    view.send_to_host(7, data[7:])

    assert transport.recv(PATIENCE) == b"0123456789"


def test_send_times_out_on_full_ring(start_peer: StartPeer) -> None:
    peer = start_peer("idle", TINY)

    with pytest.raises(TimeoutError, match="sending a frame"):
        peer.transport.send(b"x" * 10_000, timeout=0.2)
    with pytest.raises(ProtocolError, match="out of step"):
        peer.transport.send(b"y", timeout=0.2)


# -- the peer goes away -------------------------------------------------------


def kill_later(peer: Peer, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, peer.kill)
    timer.start()
    return timer


def test_death_ends_blocked_recv(start_peer: StartPeer) -> None:
    peer = start_peer("idle")
    kill_later(peer, 0.2)

    with pytest.raises(PeerGone):
        peer.transport.recv(PATIENCE)


def test_death_ends_blocked_send(start_peer: StartPeer) -> None:
    peer = start_peer("idle", TINY)
    kill_later(peer, 0.2)

    with pytest.raises(PeerGone):
        peer.transport.send(b"x" * 100_000, timeout=PATIENCE)


def test_frame_sent_before_exit_arrives(start_peer: StartPeer) -> None:
    peer = start_peer("last-words")
    peer.process.wait(PATIENCE)

    assert peer.transport.recv(PATIENCE) == b"last words"
    with pytest.raises(PeerGone):
        peer.transport.recv(PATIENCE)


def test_frame_without_wake_arrives_after_exit(start_peer: StartPeer) -> None:
    peer = start_peer("unannounced-last-words")

    # The receiver sleeps until the death monitor wakes it, and still
    # gets the frame published before the exit.
    assert peer.transport.recv(PATIENCE) == b"last words"
    with pytest.raises(PeerGone):
        peer.transport.recv(PATIENCE)


def test_peer_close_gives_peer_gone(start_peer: StartPeer) -> None:
    peer = start_peer("close")

    with pytest.raises(PeerGone, match="closed"):
        peer.transport.recv(PATIENCE)
    assert peer.process.poll() is None


def test_close_ends_wait_in_another_thread(start_peer: StartPeer) -> None:
    peer = start_peer("idle")
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            peer.transport.recv(PATIENCE)
        except BaseException as error:
            outcome.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    peer.transport.close()
    waiter.join(PATIENCE)

    assert len(outcome) == 1
    assert isinstance(outcome[0], PeerGone)
    with pytest.raises(PeerGone, match="closed"):
        peer.transport.send(b"after")


# -- wake-ups -----------------------------------------------------------------


def test_no_wake_call_while_reader_spins(start_peer: StartPeer) -> None:
    peer = start_peer("count-waits", peer_spin_ns=LONG_SPIN_NS)
    assert peer.transport.recv(PATIENCE) == b"ready"
    # The reader is spinning by now, far inside its spin time.
    time.sleep(0.2)

    peer.transport.send(b"go")
    wakes_by_writer = peer.transport.endpoint.wake_calls
    reader_waits, _ = peer.transport.recv(PATIENCE).split()

    assert wakes_by_writer == 0
    assert int(reader_waits) == 0


def test_wake_call_when_reader_sleeps(start_peer: StartPeer) -> None:
    peer = start_peer("count-waits", peer_spin_ns=0)
    assert peer.transport.recv(PATIENCE) == b"ready"
    deadline = time.monotonic() + PATIENCE
    while peer.view.read_u32(TO_WORKER_READER_WAITING) == 0:
        assert time.monotonic() < deadline, "the reader never slept"
        time.sleep(0.01)

    peer.transport.send(b"go")
    wakes_by_writer = peer.transport.endpoint.wake_calls
    reader_waits, _ = peer.transport.recv(PATIENCE).split()

    assert wakes_by_writer == 1
    assert int(reader_waits) >= 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_cpu_words_name_where_each_side_waited(start_peer: StartPeer) -> None:
    host_cpu, peer_cpu = sorted(os.sched_getaffinity(0))[:2]
    allowed = os.sched_getaffinity(0)
    peer = start_peer("echo")
    os.sched_setaffinity(peer.process.pid, {peer_cpu})
    os.sched_setaffinity(0, {host_cpu})
    words: tuple[int, int] = (-1, -1)
    try:
        # A side writes its word when it starts to wait, so the worker's
        # word changes only at the wait after the first round trip here.
        deadline = time.monotonic() + PATIENCE
        while words != (host_cpu, peer_cpu) and time.monotonic() < deadline:
            peer.transport.send(b"ping", timeout=PATIENCE)
            assert peer.transport.recv(PATIENCE) == b"ping"
            time.sleep(0.01)
            words = (
                peer.view.read_u32(lib.SANDBOX_RING_HOST_CPU),
                peer.view.read_u32(lib.SANDBOX_RING_WORKER_CPU),
            )
    finally:
        os.sched_setaffinity(0, allowed)

    assert words == (host_cpu, peer_cpu)


@pytest.mark.parametrize("claimed", ["this CPU", 0, 2**32 - 1])
def test_false_cpu_hint_changes_only_how_host_waits(
    claimed: str | int,
) -> None:
    segment = ShmChannelSegment.create(TINY)
    view = SegmentView(segment)
    transport = ShmTransport(segment, max_message_bytes=1024, spin_ns=10**9)
    try:
        with pytest.raises(TimeoutError):
            transport.recv(0.01)
        own = view.read_u32(lib.SANDBOX_RING_HOST_CPU)
        value = own if claimed == "this CPU" else int(claimed)
        view.write_u32(lib.SANDBOX_RING_WORKER_CPU, value)

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            transport.recv(0.2)
        waited = time.monotonic() - started
        view.send_to_host(0, frame(b"still heard"))

        assert transport.recv(PATIENCE) == b"still heard"
        assert 0.2 <= waited < PATIENCE
    finally:
        view.close()
        transport.close()


# -- a hostile peer -----------------------------------------------------------


@pytest.mark.parametrize(
    "producer",
    [TINY.to_host + 1, 2**63, 2**64 - 1],
    ids=["past-capacity", "half-range", "max"],
)
def test_corrupt_producer_index(
    hostile: tuple[ShmTransport, SegmentView], producer: int
) -> None:
    transport, view = hostile
    view.write_u64(TO_HOST_PRODUCER, producer)

    with pytest.raises(ProtocolError, match="index"):
        transport.recv(PATIENCE)
    # Only a new channel can recover.
    view.write_u64(TO_HOST_PRODUCER, 0)
    with pytest.raises(ProtocolError, match="index"):
        transport.recv(PATIENCE)


def test_producer_index_moving_back(
    hostile: tuple[ShmTransport, SegmentView],
) -> None:
    transport, view = hostile
    view.send_to_host(0, frame(b"x" * 100)[:10])
    with pytest.raises(TimeoutError):
        transport.recv(0.05)

    view.write_u64(TO_HOST_PRODUCER, 5)

    with pytest.raises(ProtocolError, match="index"):
        transport.recv(PATIENCE)


@pytest.mark.parametrize("case", ["past-producer", "max", "moving-back"])
def test_corrupt_consumer_index(
    hostile: tuple[ShmTransport, SegmentView], case: str
) -> None:
    transport, view = hostile
    transport.send(b"a" * 100)
    if case == "past-producer":
        view.write_u64(TO_WORKER_CONSUMER, 105)
    elif case == "max":
        view.write_u64(TO_WORKER_CONSUMER, 2**64 - 1)
    else:
        view.write_u64(TO_WORKER_CONSUMER, 104)
        transport.send(b"b" * 100)
        view.write_u64(TO_WORKER_CONSUMER, 50)

    with pytest.raises(ProtocolError, match="index"):
        transport.send(b"c" * 100)


@pytest.mark.parametrize(
    "length", [0, 1025, 2**31, 2**32 - 1], ids=lambda n: f"{n}"
)
def test_bad_declared_length(
    hostile: tuple[ShmTransport, SegmentView], length: int
) -> None:
    transport, view = hostile
    view.send_to_host(0, struct.pack(">I", length) + b"{}")

    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=f"declares {length} "):
            transport.recv(PATIENCE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 64 << 10
    with pytest.raises(ProtocolError, match="declares"):
        transport.recv(PATIENCE)


def test_segment_is_sealed_against_resizing() -> None:
    segment = ShmChannelSegment.create(TINY)
    script = (
        "import errno, fcntl, os, sys\n"
        "fd = int(sys.argv[1])\n"
        "for attempt in (lambda: os.ftruncate(fd, 0),\n"
        "                lambda: os.ftruncate(fd, 1 << 30),\n"
        "                lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS,\n"
        "                                    fcntl.F_SEAL_WRITE)):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('done')\n"
        "    except OSError as error:\n"
        "        print(errno.errorcode[error.errno])\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, str(segment.fd)],
            pass_fds=[segment.fd],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            check=True,
        )
        size = os.fstat(segment.fd).st_size
        seals = fcntl.fcntl(segment.fd, fcntl.F_GET_SEALS)
    finally:
        segment.close()

    assert result.stdout.split() == ["EPERM", "EPERM", "EPERM"]
    assert size == TINY.segment_bytes
    assert seals & fcntl.F_SEAL_SHRINK
    assert seals & fcntl.F_SEAL_GROW
    assert seals & fcntl.F_SEAL_SEAL


def test_attach_rejects_unsealed_descriptor() -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, TINY.segment_bytes)
        with pytest.raises(ProtocolError, match="seals"):
            ShmChannelSegment.attach(fd, TINY)
    finally:
        os.close(fd)


def test_attach_rejects_other_geometry() -> None:
    segment = ShmChannelSegment.create(RingGeometry(8192, 4096))
    other = ShmChannelSegment(
        os.dup(segment.fd), RingGeometry(4096, 8192), lib.SANDBOX_RING_WORKER
    )
    try:
        with pytest.raises(ProtocolError, match="header"):
            ShmTransport(other, max_message_bytes=1024)
    finally:
        other.close()
        segment.close()


@pytest.mark.parametrize("capacity", [0, 63, 4097, 3 << 20, 2**31])
def test_geometry_rejects_bad_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingGeometry(capacity, 4096)


def test_fileno_is_unsupported(
    hostile: tuple[ShmTransport, SegmentView],
) -> None:
    transport, _ = hostile
    with pytest.raises(io.UnsupportedOperation):
        transport.fileno()


# -- the death monitor --------------------------------------------------------


def start_sleeper() -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(["sleep", "3600"])
    return process, os.pidfd_open(process.pid)


def test_monitor_runs_callback_on_exit(monitor: WorkerDeathMonitor) -> None:
    process, pidfd = start_sleeper()
    fired = threading.Event()
    monitor.watch(pidfd, fired.set)
    assert not fired.wait(0.1)

    process.kill()

    assert fired.wait(PATIENCE)
    process.wait()
    os.close(pidfd)


def test_monitor_forgets_unwatched(monitor: WorkerDeathMonitor) -> None:
    process, pidfd = start_sleeper()
    fired = threading.Event()
    monitor.watch(pidfd, fired.set)

    monitor.unwatch(pidfd)
    process.kill()
    process.wait()

    assert not fired.wait(0.5)
    os.close(pidfd)


# -- through a real worker ----------------------------------------------------

# A plugin that attacks its own channel: it finds the rings' mapping, as
# native code could, writes into the host-bound ring and wakes the host.
ATTACK_SOURCE = """
import ctypes
import gc
import os
import time

from sandbox.shm import ShmTransport, ffi

_libc = ctypes.CDLL(None, use_errno=True)
_FUTEX = {"x86_64": 202, "aarch64": 98}[os.uname().machine]


def _base():
    for thing in gc.get_objects():
        if type(thing) is ShmTransport:
            return int(ffi.cast("uintptr_t", thing._segment.base))
    raise RuntimeError("no shared-memory channel")


def _wake_host(control):
    ctypes.c_uint32.from_address(control + 132).value += 1
    _libc.syscall(_FUTEX, ctypes.c_void_p(control + 132), 1, 2**31 - 1, 0)


def corrupt_index(value):
    control = _base() + 512
    ctypes.c_uint64.from_address(control).value = value
    _wake_host(control)
    time.sleep(60)


def echo(value):
    return value
"""


@pytest.fixture
def attacker(write_plugin: PluginWriter) -> None:
    write_plugin("attacker", ATTACK_SOURCE, ["corrupt_index", "echo"])


@pytest.mark.usefixtures("attacker")
@pytest.mark.parametrize("value", [2**64 - 1, 1 << 40])
def test_worker_corrupting_index_is_killed(
    make_host: HostFactory, value: int
) -> None:
    host = make_host(transport="shm")
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    first = host.worker_status("attacker")["pid"]

    with pytest.raises(ProtocolError, match="index"):
        host.execute_plugin(
            "attacker", "corrupt_index", {"value": value}, timeout=PATIENCE
        )

    violations = [e for e in events if e["event"] == "protocol_violation"]
    assert [e["plugin"] for e in violations] == ["attacker"]
    assert not psutil.pid_exists(first)
    assert host.execute_plugin("attacker", "echo", {"value": 7}) == 7
    assert host.worker_status("attacker")["pid"] != first


def test_host_rejects_unknown_transport(plugin_root: Path) -> None:
    with pytest.raises(ValueError, match="transport"):
        PluginHost([plugin_root], transport="pipes")
