"""Fuzz the host's side of both transports with a hostile fake peer.

    python tests/fuzz/fuzz_ring.py -max_total_time=60 build/fuzz/ring

Each input is decoded into a program of peer and host operations (see
ring_peer.decode_program). The peer writes bytes, frames with any
declared length and raw producer and consumer indices into a real
shared-memory segment, or closes its end. The host calls recv() and
send() with a timeout of 0. run_program() checks every outcome, and a
crash or a FuzzFinding is a finding. See tests/fuzz/README.md.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_common import instrumented, main, optional_atheris

atheris = optional_atheris()
with instrumented(atheris):
    import ring_peer

    from sandbox.shm import shm_available

KINDS = ("shm", "stream") if shm_available() else ("stream",)


def one_input(data: bytes) -> None:
    program = ring_peer.decode_program(data)
    for kind in KINDS:
        peer = ring_peer.make_peer(kind)
        try:
            ring_peer.run_program(peer, program)
        finally:
            peer.close()


def _tag(name: str) -> bytes:
    return bytes([ring_peer.TAGS.index(name)])


def _frame(length: int, pattern: bytes) -> bytes:
    # The length selector 1 keeps the length below the maximum.
    return (
        _tag("frame")
        + b"\x01"
        + struct.pack(">I", length)
        + bytes([len(pattern) - 1])
        + pattern
    )


RECV = _tag("recv")
SEEDS = [
    _frame(10, b"{") + RECV,
    _frame(70_000, b"ab") + RECV * 20,
    _tag("append") + b"\x06" + b"\x00\x00\x00\x02hi" + RECV + _tag("close"),
    _tag("producer") + b"\x01\x80\x10" + RECV,
    _tag("send") + b"\x10\x00" + _tag("consumer") + b"\x00" + b"\xff" * 8,
]


if __name__ == "__main__":
    main(atheris, one_input, SEEDS)
