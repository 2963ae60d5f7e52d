"""Property tests of the transports' receive and send paths, fed by a fake
peer that writes arbitrary bytes, lengths and ring indices.

The peer and the rules every outcome must follow are in
tests/fuzz/ring_peer.py, shared with the longer atheris run (make fuzz).
Host calls use a timeout of 0, so a program never waits.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.ring_peer import (
    GEOMETRY,
    MAX_MESSAGE_BYTES,
    FuzzFinding,
    Operation,
    Peer,
    ShmPeer,
    decode_program,
    make_peer,
    run_program,
)
from sandbox.shm import shm_available

KINDS = ["shm", "stream"] if shm_available() else ["stream"]

LENGTHS = st.one_of(
    st.integers(0, 300),
    st.integers(MAX_MESSAGE_BYTES - 2, MAX_MESSAGE_BYTES + 2),
    st.sampled_from([4095, 4096, 4097, 65535, 65536, 65537]),
    st.sampled_from([2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
INDICES = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 4096, 4097, 2**63, 2**64 - 1]),
    st.tuples(st.just("relative"), st.integers(-5000, 5000)),
)
APPEND = st.tuples(st.just("append"), st.binary(max_size=64))
FRAME = st.tuples(
    st.just("frame"), st.tuples(LENGTHS, st.binary(min_size=1, max_size=4))
)
RECV_NOW: Operation = ("recv", None)
RECV = st.just(RECV_NOW)
CLOSE = st.tuples(st.just("close"), st.none())
CONSUME = st.tuples(st.just("consume"), st.none())
SEND = st.tuples(st.just("send"), st.integers(1, 6000))
WELL_BEHAVED = st.lists(
    st.one_of(APPEND, FRAME, RECV, RECV, CLOSE), max_size=40
)
HOSTILE = st.lists(
    st.one_of(
        APPEND,
        FRAME,
        RECV,
        RECV,
        CLOSE,
        CONSUME,
        SEND,
        st.tuples(st.just("producer"), INDICES),
        st.tuples(st.just("consumer"), INDICES),
    ),
    max_size=40,
)
FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def traced() -> Iterator[None]:
    """Trace allocations, so that run_program() checks each recv()."""
    tracemalloc.start()
    yield
    tracemalloc.stop()


def run(kind: str, program: list[Operation]) -> list[str]:
    peer: Peer = make_peer(kind)
    try:
        return run_program(peer, program)
    finally:
        peer.close()


@pytest.mark.usefixtures("traced")
@pytest.mark.parametrize("kind", KINDS)
@FUZZ_SETTINGS
@given(program=WELL_BEHAVED)
def test_frames_match_reference_parse(
    kind: str, program: list[Operation]
) -> None:
    run(kind, [*program, ("recv", None)])


@pytest.mark.usefixtures("traced")
@pytest.mark.parametrize("kind", KINDS)
@FUZZ_SETTINGS
@given(program=HOSTILE)
def test_hostile_peer_gets_typed_errors(
    kind: str, program: list[Operation]
) -> None:
    outcomes = run(kind, program)
    assert set(outcomes) <= {"frame", "timeout", "protocol", "gone", "sent"}


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_as_program(kind: str, data: bytes) -> None:
    run(kind, decode_program(data))


# -- the rules themselves -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_reference_check_fires(kind: str) -> None:
    """A frame the reference parse never saw counts as a finding."""
    peer = make_peer(kind)
    try:
        peer.write(b"\x00\x00\x00\x02hi")
        with pytest.raises(FuzzFinding, match="reference"):
            run_program(peer, [("recv", None)])
    finally:
        peer.close()


@pytest.mark.parametrize("kind", KINDS)
def test_small_frame_and_bad_lengths(kind: str) -> None:
    too_long = ("frame", (MAX_MESSAGE_BYTES + 1, b"x"))
    assert run(kind, [("frame", (5, b"x")), RECV_NOW]) == ["frame"]
    assert run(kind, [too_long, RECV_NOW, RECV_NOW]) == ["protocol"] * 2
    assert run(kind, [("frame", (0, b"x")), RECV_NOW]) == ["protocol"]


@pytest.mark.parametrize("kind", KINDS)
def test_half_header_then_close(kind: str) -> None:
    program = [("append", b"\x00\x00"), RECV_NOW, ("close", None), RECV_NOW]
    assert run(kind, program) == ["timeout", "gone"]


def test_frame_larger_than_ring_arrives_in_chunks() -> None:
    size = 90_000
    chunks = -(-(size + 4) // GEOMETRY.to_host)
    program: list[Operation] = [("frame", (size, b"ab")), *[RECV_NOW] * 30]
    peer = ShmPeer()
    try:
        outcomes = run_program(peer, program)
    finally:
        peer.close()
    # The peer writes one ring's worth before each recv() after the first.
    expected = ["timeout"] * (chunks - 1) + ["frame"]
    assert outcomes == expected + ["timeout"] * (30 - chunks)
