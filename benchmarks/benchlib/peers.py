"""Echo peers in child processes: the raw channel and Python baselines.

Each peer is a context manager that starts a child process, yields a
function that makes one round trip with it together with the child's pid,
and stops the child on exit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import sandbox
from sandbox.channel import StreamTransport

# A small request of about 100 bytes of JSON that uses every JSON type.
PAYLOAD: dict[str, Any] = {
    "user": "alice",
    "action": "render",
    "items": [1, 2, 3],
    "scale": 0.5,
    "draft": False,
    "note": "hi",
}
PAYLOAD_JSON = json.dumps(PAYLOAD).encode()
HEADER = struct.Struct(">I")
# Children import the same copy of the package as this process.
SANDBOX_SRC = Path(sandbox.__file__).resolve().parents[1]

# A raw reply that takes longer means the echo child failed.
REPLY_TIMEOUT_S = 60.0

BytesRoundTrip = Callable[[bytes], bytes]
ObjectRoundTrip = Callable[[], object]

# The child of the raw-channel rows: it echoes every frame it receives on
# the stream transport at descriptor argv[1] until the host closes it.
RAW_STREAM_CHILD = """
import sys
from sandbox.channel import PeerGone, StreamTransport

fd, limit = int(sys.argv[1]), int(sys.argv[2])
transport = StreamTransport(fd, fd, max_message_bytes=limit)
while True:
    try:
        frame = transport.recv(None)
    except PeerGone:
        break
    transport.send(frame)
"""

# The child of the JSON baselines: it reads a 4-byte big-endian length and
# that many bytes of JSON, decodes them and sends them back the same way,
# until its input reaches end of file.
JSON_ECHO_CHILD = """
import json, os, struct, sys

header = struct.Struct(">I")
read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])


def read_exact(count):
    chunks = []
    while count:
        chunk = os.read(read_fd, count)
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


while True:
    head = read_exact(header.size)
    if head is None:
        break
    body = read_exact(header.unpack(head)[0])
    if body is None:
        break
    reply = json.dumps(json.loads(body)).encode()
    os.write(write_fd, header.pack(len(reply)) + reply)
"""


def child_environment() -> dict[str, str]:
    """Return this environment with the package's source first on the path."""
    environment = dict(os.environ)
    inherited = environment.get("PYTHONPATH")
    paths = [str(SANDBOX_SRC), *([inherited] if inherited else [])]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Wait for a child whose input was closed, killing it if it hangs."""
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


# -- raw channel -------------------------------------------------------------


@contextmanager
def raw_stream_peer(
    max_message_bytes: int,
) -> Iterator[tuple[BytesRoundTrip, int]]:
    """Yield a bytes round trip over StreamTransport and a socketpair."""
    host_end, child_end = socket.socketpair()
    child_fd = child_end.fileno()
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RAW_STREAM_CHILD,
                str(child_fd),
                str(max_message_bytes),
            ],
            pass_fds=(child_fd,),
            env=child_environment(),
        )
    except BaseException:
        host_end.close()
        raise
    finally:
        child_end.close()
    host_fd = host_end.detach()
    transport = StreamTransport(
        host_fd, host_fd, max_message_bytes=max_message_bytes
    )

    def round_trip(data: bytes) -> bytes:
        transport.send(data)
        return transport.recv(REPLY_TIMEOUT_S)

    try:
        yield round_trip, child.pid
    finally:
        transport.close()
        stop_child(child)


# -- Python baselines --------------------------------------------------------


def echo_connection(connection: Connection) -> None:
    """Send every object received on ``connection`` back, until None."""
    while True:
        message = connection.recv()
        if message is None:
            break
        connection.send(message)


@contextmanager
def mp_pipe_peer() -> Iterator[tuple[ObjectRoundTrip, int]]:
    """Yield a round trip of PAYLOAD over multiprocessing.Pipe."""
    # spawn, so that the child inherits no fork of this process's threads,
    # locks or memory.
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(
        target=echo_connection, args=(child_end,), daemon=True
    )
    child.start()
    child_end.close()

    def round_trip() -> object:
        parent_end.send(PAYLOAD)
        return parent_end.recv()

    try:
        assert child.pid is not None
        yield round_trip, child.pid
    finally:
        with suppress(OSError):
            parent_end.send(None)
        parent_end.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()


def read_exact(fd: int, count: int) -> bytes:
    """Read exactly ``count`` bytes from ``fd``.

    Raises EOFError if the writer closes its end first.
    """
    chunks = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise EOFError("the echo child closed its end")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def start_json_child(read_fd: int, write_fd: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-c",
            JSON_ECHO_CHILD,
            str(read_fd),
            str(write_fd),
        ],
        pass_fds=tuple(dict.fromkeys((read_fd, write_fd))),
    )


def json_round_trip(read_fd: int, write_fd: int) -> ObjectRoundTrip:
    """Return a round trip of PAYLOAD as length-prefixed JSON."""

    def round_trip() -> object:
        body = json.dumps(PAYLOAD).encode()
        os.write(write_fd, HEADER.pack(len(body)) + body)
        (length,) = HEADER.unpack(read_exact(read_fd, HEADER.size))
        return json.loads(read_exact(read_fd, length))

    return round_trip


@contextmanager
def os_pipe_peer() -> Iterator[tuple[ObjectRoundTrip, int]]:
    """Yield a round trip of framed JSON over two os.pipe pairs."""
    to_child_read, to_child_write = os.pipe()
    from_child_read, from_child_write = os.pipe()
    child = start_json_child(to_child_read, from_child_write)
    os.close(to_child_read)
    os.close(from_child_write)
    try:
        yield json_round_trip(from_child_read, to_child_write), child.pid
    finally:
        os.close(to_child_write)
        os.close(from_child_read)
        stop_child(child)


@contextmanager
def socketpair_peer() -> Iterator[tuple[ObjectRoundTrip, int]]:
    """Yield a round trip of framed JSON over a Unix socketpair."""
    host_end, child_end = socket.socketpair()
    child = start_json_child(child_end.fileno(), child_end.fileno())
    child_end.close()
    try:
        fd = host_end.fileno()
        yield json_round_trip(fd, fd), child.pid
    finally:
        host_end.close()
        stop_child(child)
