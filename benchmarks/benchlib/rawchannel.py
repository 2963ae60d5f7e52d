"""The raw channel: frames of bytes echoed over each transport.

No JSON-RPC and no sandbox are involved: the child is a plain Python
process that sends every frame back, so these rows show what the
transport itself costs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import ModuleType

from .peers import (
    REPLY_TIMEOUT_S,
    BytesRoundTrip,
    child_environment,
    raw_stream_peer,
    stop_child,
)

RawPeer = Callable[[int], AbstractContextManager[tuple[BytesRoundTrip, int]]]

# The child of the shared-memory rows: it maps the segment at descriptor
# argv[1] as a worker does and echoes every frame until the host closes.
RAW_SHM_CHILD = """
import sys
from sandbox.channel import PeerGone
from sandbox.shm import RingGeometry, ShmChannelSegment, ShmTransport

fd, to_worker, to_host, limit = map(int, sys.argv[1:5])
segment = ShmChannelSegment.attach(fd, RingGeometry(to_worker, to_host))
transport = ShmTransport(segment, max_message_bytes=limit)
while True:
    try:
        frame = transport.recv(None)
    except PeerGone:
        break
    transport.send(frame)
"""


def raw_peers() -> tuple[dict[str, RawPeer], list[str]]:
    """Return a raw peer per transport found, and notes on those missing."""
    peers: dict[str, RawPeer] = {"stream": raw_stream_peer}
    notes: list[str] = []
    shm = shm_module()
    if shm is None:
        return peers, notes
    if shm.shm_available():
        peers["shm"] = raw_shm_peer
    else:
        notes.append(
            "raw channel [shm] not measured: this machine lacks what "
            "sandbox.shm needs (memfd sealing, pidfd_open)"
        )
    return peers, notes


def shm_module() -> ModuleType | None:
    """Return sandbox.shm, or None for a package without that module."""
    try:
        return importlib.import_module("sandbox.shm")
    except ImportError:
        return None


@contextmanager
def raw_shm_peer(
    max_message_bytes: int,
) -> Iterator[tuple[BytesRoundTrip, int]]:
    """Yield a bytes round trip over ShmTransport with a child process.

    The rings have the default geometry, as a PluginHost's channel does,
    so frames larger than a ring pass through in chunks.
    """
    shm = importlib.import_module("sandbox.shm")
    geometry = shm.RingGeometry()
    segment = shm.ShmChannelSegment.create(geometry)
    fd = segment.fd
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RAW_SHM_CHILD,
                str(fd),
                str(geometry.to_worker),
                str(geometry.to_host),
                str(max_message_bytes),
            ],
            pass_fds=(fd,),
            env=child_environment(),
        )
    except BaseException:
        segment.close()
        raise
    # The child has its own copy of the descriptor now.
    segment.close_fd()
    transport = shm.ShmTransport(segment, max_message_bytes=max_message_bytes)

    def round_trip(data: bytes) -> bytes:
        transport.send(data)
        reply: bytes = transport.recv(REPLY_TIMEOUT_S)
        return reply

    try:
        yield round_trip, child.pid
    finally:
        transport.close()
        stop_child(child)
