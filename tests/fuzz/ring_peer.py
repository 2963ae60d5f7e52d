"""A fake worker that drives a host transport with arbitrary input.

The fake peer writes the worker's side of a real channel in this process:
the words and data of a shared-memory segment, or its end of a socketpair.
A program is a list of operations, some by the peer and some by the host
transport, and run_program() checks every outcome of the host's side:

- recv() returns a frame of 1 to max_message_bytes bytes or raises
  ProtocolError, TimeoutError or PeerGone, and send() returns or raises the
  same errors. Any other exception, or a crash, is a finding.
- No receive buffer grows beyond max_message_bytes.
- After recv() raised ProtocolError, every later recv() raises it too.
- While the peer has only appended bytes and perhaps closed its end, the
  host returns exactly the frames of a reference parse of those bytes,
  and fails where that parse fails.
- The host endpoint's private ring indices never admit more bytes than a
  ring's capacity.

The hypothesis tests in tests/test_transport_fuzz.py and the atheris
harness tests/fuzz/fuzz_ring.py both run programs through this module.
"""

from __future__ import annotations

import mmap
import socket
import struct
import tracemalloc
from collections.abc import Iterable, Sequence
from typing import Any

from sandbox.channel import PeerGone, StreamTransport
from sandbox.errors import ProtocolError
from sandbox.shm import RingGeometry, ShmChannelSegment, ShmTransport, lib

# An operation is (name, argument). The peer's operations:
#   append    bytes, queued and written as far as the ring has room
#   frame     (declared length, pattern): the length word, then the
#             pattern repeated to that length, queued
#   producer, consumer
#             an index written raw (shared memory only): a number, or
#             ("relative", delta)
#   consume   the peer takes what the host sent
#   close     the peer closes its end
# The host's operations: recv, and send with a payload size.
Operation = tuple[str, Any]

FRAME_HEADER = struct.Struct(">I")
MAX_MESSAGE_BYTES = 100_000
# Frames can be larger than a ring and than the transport's reused 64 KiB
# receive buffer, so every path of the receiver is reachable.
GEOMETRY = RingGeometry(4096, 4096)
# What recv() may allocate beyond the frame itself: exceptions, counters.
ALLOCATION_SLACK = 64 << 10

_TO_HOST = lib.SANDBOX_RING_TO_HOST_CONTROL
_TO_WORKER = lib.SANDBOX_RING_TO_WORKER_CONTROL
TO_HOST_PRODUCER = _TO_HOST + lib.SANDBOX_RING_PRODUCER
TO_HOST_CONSUMER = _TO_HOST + lib.SANDBOX_RING_CONSUMER
TO_WORKER_PRODUCER = _TO_WORKER + lib.SANDBOX_RING_PRODUCER
TO_WORKER_CONSUMER = _TO_WORKER + lib.SANDBOX_RING_CONSUMER
WORKER_CLOSED = lib.SANDBOX_RING_WORKER_CLOSED
TO_HOST_DATA = lib.SANDBOX_RING_DATA_START + GEOMETRY.to_worker


class FuzzFinding(AssertionError):
    """The host's side of the channel broke one of the module's rules."""


class ShmPeer:
    """The worker's side of a real segment, written word by word."""

    kind = "shm"

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        segment = ShmChannelSegment.create(GEOMETRY)
        try:
            self._view = mmap.mmap(segment.fd, segment.size)
        except BaseException:
            segment.close()
            raise
        segment.close_fd()
        self.host = ShmTransport(
            segment, max_message_bytes=max_message_bytes, spin_ns=0
        )
        self.max_message_bytes = max_message_bytes
        self._produced = 0
        self._consumed = 0

    def close(self) -> None:
        self.host.close()
        self._view.close()

    def write(self, data: bytes) -> int:
        """Write what fits of ``data`` after the last byte written; return
        how many bytes went in."""
        capacity = GEOMETRY.to_host
        room = capacity - (self._produced - self._read(TO_HOST_CONSUMER))
        count = max(0, min(room, len(data), capacity))
        offset = self._produced % capacity
        first = min(count, capacity - offset)
        start = TO_HOST_DATA + offset
        self._view[start : start + first] = data[:first]
        rest = count - first
        self._view[TO_HOST_DATA : TO_HOST_DATA + rest] = data[first:count]
        self._produced += count
        self._write(TO_HOST_PRODUCER, self._produced)
        return count

    def set_producer(self, value: int | tuple[str, int]) -> None:
        """Write the producer index: a number, or ("relative", delta) to
        the last byte written."""
        if isinstance(value, tuple):
            value = self._produced + value[1]
        self._write(TO_HOST_PRODUCER, value % 2**64)

    def set_consumer(self, value: int | tuple[str, int]) -> None:
        """Write the consumer index: a number, or ("relative", delta) to
        what the host has written."""
        if isinstance(value, tuple):
            value = self._read(TO_WORKER_PRODUCER) + value[1]
        self._write(TO_WORKER_CONSUMER, value % 2**64)

    def consume(self) -> None:
        self._consumed = self._read(TO_WORKER_PRODUCER)
        self._write(TO_WORKER_CONSUMER, self._consumed)

    def close_end(self) -> None:
        struct.pack_into("=I", self._view, WORKER_CLOSED, 1)

    def receive_buffer_bytes(self) -> int:
        large = self.host._large
        return 0 if large is None else len(large)

    def check_host_state(self) -> None:
        """Check the host endpoint's private indices: it must never have
        accepted more unread or unconsumed bytes than a ring's capacity.

        Out of bounds, a copy would read or write past the ring's data, in
        memory that may well be mapped, so no crash would show it.
        """
        endpoint = self.host.endpoint
        incoming = getattr(endpoint, "in")  # a keyword in Python
        unread = (incoming.peer - incoming.own) % 2**64
        unconsumed = (endpoint.out.own - endpoint.out.peer) % 2**64
        if unread > GEOMETRY.to_host or unconsumed > GEOMETRY.to_worker:
            raise FuzzFinding(
                f"host accepted {unread} unread and {unconsumed} "
                "unconsumed bytes"
            )

    def _read(self, offset: int) -> int:
        value: int = struct.unpack_from("=Q", self._view, offset)[0]
        return value

    def _write(self, offset: int, value: int) -> None:
        struct.pack_into("=Q", self._view, offset, value)


class StreamPeer:
    """The worker's end of a real socketpair."""

    kind = "stream"

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        host_end, self._peer = socket.socketpair()
        self._peer.setblocking(False)
        fd = host_end.detach()
        self.host = StreamTransport(
            fd, fd, max_message_bytes=max_message_bytes
        )
        self.max_message_bytes = max_message_bytes

    def close(self) -> None:
        self.host.close()
        self._peer.close()

    def write(self, data: bytes) -> int:
        if not data:
            return 0
        try:
            return self._peer.send(data)
        except (BlockingIOError, BrokenPipeError):
            return 0

    def set_producer(self, value: int | tuple[str, int]) -> None:
        pass

    def set_consumer(self, value: int | tuple[str, int]) -> None:
        pass

    def consume(self) -> None:
        try:
            while self._peer.recv(1 << 16):
                pass
        except BlockingIOError:
            pass

    def close_end(self) -> None:
        self._peer.shutdown(socket.SHUT_WR)

    def receive_buffer_bytes(self) -> int:
        body = self.host._body
        return 0 if body is None else len(body.data)

    def check_host_state(self) -> None:
        """Nothing to check: the kernel keeps a socket's bounds."""


Peer = ShmPeer | StreamPeer


def make_peer(kind: str) -> Peer:
    return ShmPeer() if kind == "shm" else StreamPeer()


class ReferenceParser:
    """Frames of the bytes a peer wrote, parsed the plain way."""

    def __init__(self, max_message_bytes: int) -> None:
        self.stream = bytearray()
        self.position = 0
        self.max_message_bytes = max_message_bytes

    def next_outcome(self, closed: bool) -> tuple[str, bytes]:
        """Return ("frame", payload), ("protocol", b""), ("gone", b"")
        or ("timeout", b"") for the next recv()."""
        available = len(self.stream) - self.position
        waiting = ("gone", b"") if closed else ("timeout", b"")
        if available < FRAME_HEADER.size:
            return waiting
        (length,) = FRAME_HEADER.unpack_from(self.stream, self.position)
        if not 1 <= length <= self.max_message_bytes:
            return ("protocol", b"")
        if available < FRAME_HEADER.size + length:
            return waiting
        start = self.position + FRAME_HEADER.size
        return ("frame", bytes(self.stream[start : start + length]))

    def take(self, payload: bytes) -> None:
        self.position += FRAME_HEADER.size + len(payload)


def run_program(peer: Peer, program: Iterable[Operation]) -> list[str]:
    """Run ``program`` against ``peer``; return the outcome of each host
    operation, and raise FuzzFinding for a broken rule."""
    run = _ProgramRun(peer)
    for name, argument in program:
        run.step(name, argument)
    return run.outcomes


class _ProgramRun:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.reference = ReferenceParser(peer.max_message_bytes)
        self.backlog = bytearray()
        # False once the peer wrote an index, which the reference cannot
        # follow.
        self.modeled = True
        self.closed = False
        self.recv_failed = False
        self.outcomes: list[str] = []

    def step(self, name: str, argument: Any) -> None:
        self._peer_operation(name, argument)
        if self.backlog and not self.closed:
            written = self.peer.write(bytes(self.backlog))
            self.reference.stream += self.backlog[:written]
            del self.backlog[:written]
        if name == "recv":
            self._recv()
        elif name == "send":
            self.outcomes.append(_host_send(self.peer, argument))
        self.peer.check_host_state()

    def _peer_operation(self, name: str, argument: Any) -> None:
        peer = self.peer
        if name in ("append", "frame"):
            self.backlog += _queued_bytes(name, argument)
        elif name in ("producer", "consumer") and peer.kind == "shm":
            self.modeled = False
            if name == "producer":
                peer.set_producer(argument)
            else:
                peer.set_consumer(argument)
        elif name == "consume":
            peer.consume()
        elif name == "close":
            self.closed = True
            peer.close_end()

    def _recv(self) -> None:
        outcome, payload = _host_recv(self.peer)
        _check_recv(self.peer, outcome, payload, self.recv_failed)
        self.recv_failed = self.recv_failed or outcome == "protocol"
        if self.modeled:
            _check_against_reference(
                self.reference, outcome, payload, self.closed
            )
        self.outcomes.append(outcome)


def _queued_bytes(name: str, argument: Any) -> bytes:
    if name == "append":
        return bytes(argument)
    length, pattern = argument
    length %= 2**32
    # Declared lengths beyond the maximum are sent with a short body.
    size = min(length, MAX_MESSAGE_BYTES + 1)
    pattern = bytes(pattern) or b"{"
    body = (pattern * (size // len(pattern) + 1))[:size]
    return FRAME_HEADER.pack(length) + body


def _host_recv(peer: Peer) -> tuple[str, bytes]:
    if not tracemalloc.is_tracing():
        return _host_recv_untraced(peer)
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    outcome = _host_recv_untraced(peer)
    grown = tracemalloc.get_traced_memory()[1] - before
    # Room for the frame's buffer, the payload copied out of it and slack.
    if grown > 2 * peer.max_message_bytes + ALLOCATION_SLACK:
        raise FuzzFinding(f"recv() allocated {grown} bytes at its peak")
    return outcome


def _host_recv_untraced(peer: Peer) -> tuple[str, bytes]:
    try:
        return "frame", peer.host.recv(0)
    except TimeoutError:
        return "timeout", b""
    except ProtocolError:
        return "protocol", b""
    except PeerGone:
        return "gone", b""


def _host_send(peer: Peer, size: int) -> str:
    try:
        peer.host.send(b"s" * size, timeout=0)
    except TimeoutError:
        return "timeout"
    except ProtocolError:
        return "protocol"
    except PeerGone:
        return "gone"
    return "sent"


def _check_recv(
    peer: Peer, outcome: str, payload: bytes, recv_failed: bool
) -> None:
    limit = peer.max_message_bytes
    if outcome == "frame" and not 1 <= len(payload) <= limit:
        raise FuzzFinding(f"frame of {len(payload)} bytes returned")
    if peer.receive_buffer_bytes() > limit:
        raise FuzzFinding(
            f"receive buffer of {peer.receive_buffer_bytes()} bytes"
        )
    if recv_failed and outcome != "protocol":
        raise FuzzFinding(f"recv() gave {outcome} after a ProtocolError")


def _check_against_reference(
    reference: ReferenceParser, outcome: str, payload: bytes, closed: bool
) -> None:
    expected, expected_payload = reference.next_outcome(closed)
    if outcome != expected or payload != expected_payload:
        raise FuzzFinding(
            f"recv() gave {outcome} ({len(payload)} bytes), the reference "
            f"parse {expected} ({len(expected_payload)} bytes)"
        )
    if outcome == "frame":
        reference.take(payload)


def decode_program(data: bytes) -> list[Operation]:
    """Turn arbitrary bytes into a program, for a fuzzer without its own
    structured input: each operation takes a tag byte and its argument."""
    program: list[Operation] = []
    reader = _ByteReader(data)
    while reader.remaining():
        program.append(_decode_operation(reader))
    return program


TAGS: Sequence[str] = (
    "append",
    "frame",
    "producer",
    "consumer",
    "consume",
    "close",
    "recv",
    "recv",
    "send",
)


def _decode_operation(reader: _ByteReader) -> Operation:
    name = TAGS[reader.byte() % len(TAGS)]
    if name == "append":
        return name, reader.take(reader.byte())
    if name == "frame":
        length = reader.length(MAX_MESSAGE_BYTES)
        return name, (length, reader.take(1 + reader.byte() % 8))
    if name in ("producer", "consumer"):
        if reader.byte() % 2:
            return name, ("relative", reader.u16() - 32768)
        return name, reader.u64()
    if name == "send":
        return name, 1 + reader.u16() % 6000
    return name, None


class _ByteReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def remaining(self) -> int:
        return len(self._data) - self._position

    def take(self, count: int) -> bytes:
        chunk = self._data[self._position : self._position + count]
        self._position += len(chunk)
        return chunk

    def byte(self) -> int:
        chunk = self.take(1)
        return chunk[0] if chunk else 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def length(self, limit: int) -> int:
        """Return a frame length: mostly valid, sometimes any 32 bits."""
        choice = self.byte() % 4
        if choice == 0:
            return int.from_bytes(self.take(4), "big")
        return int.from_bytes(self.take(4), "big") % (limit + 2)
