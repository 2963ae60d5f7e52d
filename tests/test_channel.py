"""Tests of sandbox.channel: framing over real sockets and pipes, strict
JSON decoding and JSON-RPC envelope validation."""

from __future__ import annotations

import errno
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_python
from sandbox.channel import (
    HEADER,
    INVALID_REQUEST,
    MAX_DEPTH,
    MAX_ID,
    PARSE_ERROR,
    PLUGIN_ERROR,
    Channel,
    PeerGone,
    Request,
    Response,
    StreamTransport,
    decode,
    encode,
    is_request,
    make_error,
    make_request,
    make_result,
    match_response,
    validate_request,
    validate_response,
)
from sandbox.errors import ProtocolError
from sandbox.worker import Server

MAX_BYTES = 1 << 20
# Child processes import the same copy of the package as the tests do.
KINDS = ["socketpair", "pipes"]


# -- fixtures --------------------------------------------------------------


def _transport_pair(
    kind: str, max_bytes: int = MAX_BYTES
) -> tuple[StreamTransport, StreamTransport]:
    if kind == "socketpair":
        left, right = socket.socketpair()
        a, b = left.detach(), right.detach()
        return (
            StreamTransport(a, a, max_message_bytes=max_bytes),
            StreamTransport(b, b, max_message_bytes=max_bytes),
        )
    a_to_b_read, a_to_b_write = os.pipe()
    b_to_a_read, b_to_a_write = os.pipe()
    return (
        StreamTransport(
            b_to_a_read, a_to_b_write, max_message_bytes=max_bytes
        ),
        StreamTransport(
            a_to_b_read, b_to_a_write, max_message_bytes=max_bytes
        ),
    )


@pytest.fixture(params=KINDS)
def transports(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[StreamTransport, StreamTransport]]:
    a, b = _transport_pair(request.param)
    yield a, b
    a.close()
    b.close()


class RawPeer:
    """The far end of a transport, writing and reading raw bytes."""

    def __init__(self, kind: str, wake_fds: tuple[int, ...] = ()) -> None:
        if kind == "socketpair":
            near, far = socket.socketpair()
            fd = near.detach()
            self.transport = StreamTransport(
                fd, fd, max_message_bytes=MAX_BYTES, wake_fds=wake_fds
            )
            self._socket: socket.socket | None = far
            self._read_fd = self._write_fd = far.fileno()
        else:
            to_near_read, self._write_fd = os.pipe()
            self._read_fd, to_far_write = os.pipe()
            self.transport = StreamTransport(
                to_near_read,
                to_far_write,
                max_message_bytes=MAX_BYTES,
                wake_fds=wake_fds,
            )
            self._socket = None
        self._open = True

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view) :]

    def read(self, size: int) -> bytes:
        return os.read(self._read_fd, size)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._socket is not None:
            self._socket.close()
        else:
            os.close(self._write_fd)
            os.close(self._read_fd)


@pytest.fixture(params=KINDS)
def raw_peer(request: pytest.FixtureRequest) -> Iterator[RawPeer]:
    peer = RawPeer(request.param)
    yield peer
    peer.transport.close()
    peer.close()


@pytest.fixture
def wake_pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _later(delay: float, action: Any, *args: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action(*args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- stream transport: round trips -----------------------------------------


@pytest.mark.parametrize("size", [1, 100, 200_000, MAX_BYTES])
def test_round_trip_both_directions(
    transports: tuple[StreamTransport, StreamTransport], size: int
) -> None:
    a, b = transports
    payload = os.urandom(size)
    # Frames above the kernel buffer only finish while the peer reads.
    sender = _later(0, a.send, payload)
    assert b.recv(timeout=5) == payload
    sender.join()
    sender = _later(0, b.send, payload[::-1])
    assert a.recv(timeout=5) == payload[::-1]
    sender.join()


def test_frames_arriving_together_stay_separate(
    transports: tuple[StreamTransport, StreamTransport],
) -> None:
    a, b = transports
    payloads = [b"first", b"second frame", b"3"]
    for payload in payloads:
        a.send(payload)
    assert [b.recv(timeout=5) for _ in payloads] == payloads


def test_frame_delivered_byte_by_byte(raw_peer: RawPeer) -> None:
    payload = b'{"trickled": true}'

    def trickle() -> None:
        for byte in _frame(payload):
            raw_peer.write(bytes([byte]))
            time.sleep(0.002)

    writer = _later(0, trickle)
    assert raw_peer.transport.recv(timeout=5) == payload
    writer.join()


def test_ready_frame_returned_with_zero_timeout(raw_peer: RawPeer) -> None:
    raw_peer.write(_frame(b"ready"))
    assert raw_peer.transport.recv(timeout=0) == b"ready"


def test_send_writes_header_and_payload(raw_peer: RawPeer) -> None:
    raw_peer.transport.send(b"hello")
    assert raw_peer.read(100) == _frame(b"hello")


def test_fileno_is_read_descriptor(raw_peer: RawPeer) -> None:
    raw_peer.write(_frame(b"x"))
    ready, _, _ = select.select([raw_peer.transport.fileno()], [], [], 5)
    assert ready == [raw_peer.transport.fileno()]


# -- stream transport: declared lengths ------------------------------------


@pytest.mark.parametrize("declared", [2**31, 2**32 - 1, MAX_BYTES + 1])
def test_oversized_length_rejected_before_body(
    raw_peer: RawPeer, declared: int
) -> None:
    raw_peer.write(HEADER.pack(declared))
    tracemalloc.start()
    try:
        # Only the header is ever sent: waiting for the body would end in
        # TimeoutError, allocating it would show in the traced peak.
        with pytest.raises(ProtocolError, match=str(declared)):
            raw_peer.transport.recv(timeout=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_BYTES


def test_stream_stays_rejected_after_bad_length(raw_peer: RawPeer) -> None:
    raw_peer.write(HEADER.pack(2**31))
    with pytest.raises(ProtocolError):
        raw_peer.transport.recv(timeout=5)
    raw_peer.write(_frame(b"valid"))
    with pytest.raises(ProtocolError, match="2147483648"):
        raw_peer.transport.recv(timeout=5)


def test_zero_length_rejected(raw_peer: RawPeer) -> None:
    raw_peer.write(HEADER.pack(0) + _frame(b"next"))
    with pytest.raises(ProtocolError, match="declares 0 payload bytes"):
        raw_peer.transport.recv(timeout=5)


def test_length_equal_to_max_accepted(raw_peer: RawPeer) -> None:
    payload = b"m" * MAX_BYTES
    writer = _later(0, raw_peer.write, _frame(payload))
    assert raw_peer.transport.recv(timeout=5) == payload
    writer.join()


# -- stream transport: end of stream and timeouts --------------------------


def test_truncated_frame_then_eof(raw_peer: RawPeer) -> None:
    raw_peer.write(HEADER.pack(10) + b"abc")
    raw_peer.close()
    with pytest.raises(PeerGone, match="3 of 10"):
        raw_peer.transport.recv(timeout=5)


def test_truncated_header_then_eof(raw_peer: RawPeer) -> None:
    raw_peer.write(b"\x00\x00")
    raw_peer.close()
    with pytest.raises(PeerGone, match="header after 2 of 4"):
        raw_peer.transport.recv(timeout=5)


def test_eof_between_frames(raw_peer: RawPeer) -> None:
    raw_peer.write(_frame(b"last"))
    raw_peer.close()
    assert raw_peer.transport.recv(timeout=5) == b"last"
    with pytest.raises(PeerGone, match="closed the stream"):
        raw_peer.transport.recv(timeout=5)


def test_recv_timeout(raw_peer: RawPeer) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        raw_peer.transport.recv(timeout=0.1)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.1
    assert elapsed < 2


def test_timeout_mid_frame_keeps_partial_frame(raw_peer: RawPeer) -> None:
    frame = _frame(b"0123456789")
    raw_peer.write(frame[:7])
    with pytest.raises(TimeoutError):
        raw_peer.transport.recv(timeout=0.05)
    raw_peer.write(frame[7:] + _frame(b"after"))
    assert raw_peer.transport.recv(timeout=5) == b"0123456789"
    assert raw_peer.transport.recv(timeout=5) == b"after"


def test_recv_survives_signals(raw_peer: RawPeer) -> None:
    interrupts = []

    def count_interrupt(signum: int, frame: object) -> None:
        interrupts.append(signum)

    previous = signal.signal(signal.SIGALRM, count_interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    try:
        writer = _later(0.2, raw_peer.write, _frame(b"despite signals"))
        payload = raw_peer.transport.recv(timeout=5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    writer.join()
    assert payload == b"despite signals"
    assert len(interrupts) > 5


# -- stream transport: wake descriptors ------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_wake_fd_interrupts_recv(
    kind: str, wake_pipe: tuple[int, int]
) -> None:
    wake_read, wake_write = wake_pipe
    peer = RawPeer(kind, wake_fds=(wake_read,))
    try:
        peer.write(HEADER.pack(10) + b"part")
        _later(0.05, os.write, wake_write, b"!")
        started = time.monotonic()
        with pytest.raises(PeerGone, match=f"wake fd {wake_read}"):
            peer.transport.recv(timeout=5)
        assert time.monotonic() - started < 4
    finally:
        peer.transport.close()
        peer.close()


def test_frame_sent_before_wake_is_delivered(
    wake_pipe: tuple[int, int],
) -> None:
    wake_read, wake_write = wake_pipe
    peer = RawPeer("socketpair", wake_fds=(wake_read,))
    try:
        peer.write(_frame(b"final words"))
        os.write(wake_write, b"!")
        assert peer.transport.recv(timeout=5) == b"final words"
        with pytest.raises(PeerGone):
            peer.transport.recv(timeout=5)
    finally:
        peer.transport.close()
        peer.close()


@pytest.mark.skipif(
    not hasattr(os, "pidfd_open"), reason="pidfd_open is Linux-only"
)
def test_pidfd_wakes_recv_when_peer_exits() -> None:
    # The test keeps the far end of the stream open, as a grandchild of a
    # dead worker could, so only the pidfd can report the exit.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(0.1)"]
    )
    pidfd = os.pidfd_open(child.pid)
    peer = RawPeer("socketpair", wake_fds=(pidfd,))
    try:
        with pytest.raises(PeerGone, match="wake fd"):
            peer.transport.recv(timeout=5)
    finally:
        child.wait()
        peer.transport.close()
        peer.close()
        os.close(pidfd)


def test_wake_fd_interrupts_blocked_send(wake_pipe: tuple[int, int]) -> None:
    wake_read, wake_write = wake_pipe
    near, far = socket.socketpair()
    fd = near.detach()
    transport = StreamTransport(
        fd, fd, max_message_bytes=16 << 20, wake_fds=(wake_read,)
    )
    try:
        _later(0.1, os.write, wake_write, b"!")
        # The peer never reads, so a frame far above the socket buffer
        # blocks until the wake fd fires.
        with pytest.raises(PeerGone, match="while sending"):
            transport.send(b"x" * (16 << 20), timeout=5)
    finally:
        transport.close()
        far.close()


# -- stream transport: sending ---------------------------------------------


def test_send_timeout_when_peer_stalls() -> None:
    near, far = socket.socketpair()
    fd = near.detach()
    transport = StreamTransport(fd, fd, max_message_bytes=16 << 20)
    try:
        with pytest.raises(TimeoutError):
            transport.send(b"x" * (16 << 20), timeout=0.1)
        with pytest.raises(ProtocolError, match="out of step"):
            transport.send(b"small", timeout=1)
    finally:
        transport.close()
        far.close()


def test_send_oversize_raises(raw_peer: RawPeer) -> None:
    with pytest.raises(ProtocolError, match=str(MAX_BYTES + 1)):
        raw_peer.transport.send(b"x" * (MAX_BYTES + 1))
    raw_peer.transport.send(b"fits")
    assert raw_peer.read(100) == _frame(b"fits")


def test_send_empty_raises(raw_peer: RawPeer) -> None:
    with pytest.raises(ProtocolError, match="0 bytes"):
        raw_peer.transport.send(b"")


def test_send_after_peer_closed(raw_peer: RawPeer) -> None:
    raw_peer.close()
    with pytest.raises(PeerGone):
        raw_peer.transport.send(b"anyone there?")


def test_socket_send_survives_default_sigpipe() -> None:
    result = run_python(
        """
        import signal, socket
        from sandbox.channel import PeerGone, StreamTransport
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        near, far = socket.socketpair()
        far.close()
        fd = near.detach()
        transport = StreamTransport(fd, fd, max_message_bytes=100)
        try:
            transport.send(b"x")
        except PeerGone:
            print("peer gone")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "peer gone"


# -- stream transport: lifecycle -------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_close_is_idempotent_and_closes_fds(kind: str) -> None:
    peer = RawPeer(kind)
    transport = peer.transport
    fds = {transport._read_fd, transport._write_fd}
    transport.close()
    transport.close()
    for fd in fds:
        with pytest.raises(OSError) as excinfo:
            os.fstat(fd)
        assert excinfo.value.errno == errno.EBADF
    peer.close()


def test_use_after_close_raises_peer_gone(raw_peer: RawPeer) -> None:
    raw_peer.transport.close()
    with pytest.raises(PeerGone, match="closed"):
        raw_peer.transport.recv(timeout=0)
    with pytest.raises(PeerGone, match="closed"):
        raw_peer.transport.send(b"x")


@pytest.mark.parametrize("bad", [0, -1, 2**32, True, 1.5])
def test_max_message_bytes_checked(bad: Any) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(ValueError, match="max_message_bytes"):
            StreamTransport(read_fd, write_fd, max_message_bytes=bad)
    finally:
        os.close(read_fd)
        os.close(write_fd)


# -- encode ----------------------------------------------------------------


def test_encode_is_compact_utf8() -> None:
    message = {"a": [1, "é", None], "b": {"c": True}}
    assert encode(message) == '{"a":[1,"é",null],"b":{"c":true}}'.encode()


def _cycle() -> dict[str, Any]:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    return cycle


def _nested_lists(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "message",
    [
        {"x": math.nan},
        {"x": math.inf},
        {"x": -math.inf},
        {"x": object()},
        {"x": {1, 2}},
        {"x": {1: "int key"}},
        {"x": "\ud800"},
        _cycle(),
        {"x": _nested_lists(MAX_DEPTH)},
        {"x": _nested_lists(100_000)},
        [1, 2],
        "text",
    ],
    ids=[
        "nan", "inf", "-inf", "object", "set", "int-key", "lone-surrogate",
        "cycle", "depth-65", "depth-100000", "array-top", "string-top",
    ],
)  # fmt: skip
def test_encode_rejects(message: Any) -> None:
    with pytest.raises(ProtocolError):
        encode(message)


# -- decode ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"x": NaN}', "NaN"),
        (b'{"x": Infinity}', "Infinity"),
        (b'{"x": -Infinity}', "-Infinity"),
        (b'{"x": 1e400}', "overflows"),
        (b'{"x": -1e400}', "overflows"),
        (b'{"id": 1, "id": 2}', "duplicate key"),
        (b'{"a": {"m": "safe", "m": "admin"}}', "duplicate key"),
        (b'{"a": [{"k": 1, "k": 1}]}', "duplicate key"),
        (b'{"x": "\xff"}', "UTF-8"),
        (b'{"x": "\xc3"}', "UTF-8"),
        (b'{"x": "\xc0\xaf"}', "UTF-8"),
        (b'{"x": "\xed\xa0\x80"}', "UTF-8"),
        (b"\xef\xbb\xbf{}", "JSON"),
        (b'{"x": "\\ud800"}', "lone surrogate"),
        (b'{"x": "\\udc00\\ud800"}', "lone surrogate"),
        (b'{"x": ' + b"9" * 5000 + b"}", "digits"),
        (b"[1, 2]", "got array"),
        (b'"text"', "got string"),
        (b"42", "got number"),
        (b"null", "got null"),
        (b"true", "got boolean"),
        (b"{} {}", "Extra data"),
        (b'{"a": 1} x', "Extra data"),
        (b'{"a": 1,}', "JSON"),
        (b'{"a": 1 // c\n}', "JSON"),
        (b'{"a": "line\nbreak"}', "control character"),
        (b"", "JSON"),
        (b"   ", "JSON"),
        (b'{"a": ', "JSON"),
    ],
)
def test_decode_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(payload)


@pytest.mark.parametrize(
    ("opening", "closing"),
    [("[", "]"), ('{"k":', "}"), ('[{"k":', "}]")],
    ids=["arrays", "objects", "mixed"],
)
def test_decode_rejects_deep_nesting(opening: str, closing: str) -> None:
    levels = 100_000
    payload = '{"k":' + opening * levels + "1" + closing * levels + "}"
    with pytest.raises(ProtocolError, match="deeper than the maximum"):
        decode(payload.encode())


def test_decode_rejects_unterminated_deep_nesting() -> None:
    with pytest.raises(ProtocolError, match="deeper than the maximum"):
        decode(b"[" * 100_000)


def test_deep_nesting_rejected_with_raised_recursion_limit() -> None:
    # Without the depth check the parser would recurse until the C stack
    # overflows, so the run is in a child process.
    result = run_python(
        """
        import sys
        from sandbox.channel import decode
        from sandbox.errors import ProtocolError
        sys.setrecursionlimit(10**7)
        try:
            decode(b'{"k":' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}")
        except ProtocolError as error:
            print(type(error).__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ProtocolError"


def test_long_integer_rejected_without_interpreter_limit() -> None:
    # CPython 3.11+ limits int() itself unless an application turns the
    # limit off; 3.10 has no limit and parses in quadratic time.
    previous = getattr(sys, "get_int_max_str_digits", lambda: None)()
    if previous is not None:
        sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(ProtocolError, match="more than 4300 digits"):
            decode(b'{"x": -' + b"7" * 4301 + b"}")
        assert decode(b'{"x": -' + b"7" * 4300 + b"}")["x"] < 0
    finally:
        if previous is not None:
            sys.set_int_max_str_digits(previous)


def _nested_text(depth: int, kind: str) -> str:
    """Return a JSON object nesting ``depth`` levels, the object included."""
    inner = "1"
    for level in range(depth - 1):
        use_object = kind == "objects" or (kind == "mixed" and level % 2)
        inner = f'{{"k":{inner}}}' if use_object else f"[{inner}]"
    return f'{{"k":{inner}}}'


@pytest.mark.parametrize("kind", ["arrays", "objects", "mixed"])
def test_depth_limit_is_exact(kind: str) -> None:
    assert decode(_nested_text(MAX_DEPTH, kind).encode())
    with pytest.raises(ProtocolError, match="deeper"):
        decode(_nested_text(MAX_DEPTH + 1, kind).encode())


def test_brackets_inside_strings_do_not_nest() -> None:
    noisy = '[{"\\\\' * 200 + '\\"[[' * 200 + '"'
    message = {"s": noisy, "t": ["]"] * 3, "u": "\\"}
    assert decode(json.dumps(message).encode()) == message


def test_escaped_surrogate_pair_accepted() -> None:
    assert decode(b'{"x": "\\ud83d\\ude00"}') == {"x": "\U0001f600"}


def test_decode_accepts_valid_json() -> None:
    payload = b' {"a": [1, -2.5e3, "\\u00e9", true, false, null], "b": {}} '
    assert decode(payload) == {
        "a": [1, -2500.0, "é", True, False, None],
        "b": {},
    }


# JSON punctuation, literal letters, a lone surrogate, NUL and non-ASCII.
JSON_LIKE_ALPHABET = '[]{}",:\\ 01-.eEtrufalsnNI\ud83d\x00é'
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
# "$bytes" is reserved for binary attachment markers.
JSON_KEYS = st.text().filter(lambda key: key != "$bytes")
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(JSON_KEYS, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=5))
def test_encode_decode_round_trip(message: dict[str, Any]) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes(payload: bytes) -> None:
    try:
        result = decode(payload)
    except ProtocolError:
        return
    assert type(result) is dict


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=JSON_LIKE_ALPHABET, max_size=200))
def test_decode_json_like_text(text: str) -> None:
    try:
        result = decode(text.encode("utf-8", "surrogatepass"))
    except ProtocolError:
        return
    assert type(result) is dict


def _wrap(value: Any, containers: list[bool]) -> Any:
    for use_object in containers:
        value = {"k": value} if use_object else [value]
    return value


@settings(max_examples=100, deadline=None)
@given(
    containers=st.lists(
        st.booleans(), min_size=MAX_DEPTH - 4, max_size=MAX_DEPTH + 4
    ),
    noise=st.text(alphabet='[]{}"\\', max_size=30),
)
def test_depth_limit_matches_real_nesting(
    containers: list[bool], noise: str
) -> None:
    # The top-level object adds one level to the wrapped containers.
    message = {"n": noise, "v": _wrap(noise, containers)}
    payload = json.dumps(message).encode()
    if len(containers) + 1 <= MAX_DEPTH:
        assert decode(payload) == message
    else:
        with pytest.raises(ProtocolError, match="deeper"):
            decode(payload)


# -- JSON-RPC messages -----------------------------------------------------


def test_make_messages() -> None:
    assert make_request(3, "add", (1, 2)) == {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "add",
        "params": [1, 2],
    }
    assert make_result(3, None) == {"jsonrpc": "2.0", "id": 3, "result": None}
    assert make_error(None, PARSE_ERROR, "bad") == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": PARSE_ERROR, "message": "bad"},
    }
    assert make_error(4, PLUGIN_ERROR, "boom", {"type": "KeyError"})["error"][
        "data"
    ] == {"type": "KeyError"}


def test_is_request() -> None:
    assert is_request(make_request(1, "m", {}))
    assert not is_request(make_result(1, {}))


_MISSING = object()


def _request(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "run",
        "params": {},
    }
    for key, value in changes.items():
        if value is _MISSING:
            del message[key]
        else:
            message[key] = value
    return message


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (["not", "an", "object"], "must be a JSON object"),
        (_request(jsonrpc=_MISSING), "missing key.*jsonrpc"),
        (_request(id=_MISSING), "missing key.*id"),
        (_request(method=_MISSING), "missing key.*method"),
        (_request(params=_MISSING), "missing key.*params"),
        (_request(extra=1), "unexpected key.*extra"),
        # Four keys, as a valid request has, but one of them misspelled.
        (_request(jsonrpc=_MISSING, jsnrpc="2.0"), "missing key.*jsonrpc"),
        (_request(params=_MISSING, param={}), "missing key.*params"),
        (_request(result=1), "unexpected key.*result"),
        (_request(jsonrpc="1.0"), "jsonrpc"),
        (_request(jsonrpc=2.0), "jsonrpc"),
        (_request(jsonrpc=None), "jsonrpc"),
        (_request(id=True), "id must be an integer.*boolean"),
        (_request(id=False), "id must be an integer.*boolean"),
        (_request(id=-1), "id must be an integer"),
        (_request(id=MAX_ID + 1), "id must be an integer"),
        (_request(id=1.0), "id must be an integer"),
        (_request(id="1"), "id must be an integer"),
        (_request(id=None), "id must be an integer"),
        (_request(id=[1]), "id must be an integer"),
        (_request(method=""), "1 to 128 characters"),
        (_request(method="m" * 129), "1 to 128 characters"),
        (_request(method="read\x00_secret"), "NUL"),
        (_request(method="\x00"), "NUL"),
        (_request(method="rpc.discover"), "reserved"),
        (_request(method=5), "method must be a string"),
        (_request(method=None), "method must be a string"),
        (_request(params="text"), "params must be an object or an array"),
        (_request(params=1), "params must be an object or an array"),
        (_request(params=None), "params must be an object or an array"),
        (_request(params=True), "params must be an object or an array"),
    ],
)
def test_validate_request_rejects(message: Any, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        validate_request(message)


@pytest.mark.parametrize(
    "message",
    [
        _request(),
        _request(id=0),
        _request(id=MAX_ID),
        _request(method="m" * 128),
        _request(method="rpc"),
        _request(method="rpcx.call"),
        _request(params=[]),
        _request(params=[1, "two", None]),
    ],
)
def test_validate_request_accepts(message: dict[str, Any]) -> None:
    assert validate_request(message) == Request(
        message["id"], message["method"], message["params"]
    )


def _result(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "result": None}
    message.update(changes)
    return {k: v for k, v in message.items() if v is not _MISSING}


def _error(**changes: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": PLUGIN_ERROR, "message": "failed"}
    error.update(changes)
    error = {k: v for k, v in error.items() if v is not _MISSING}
    return {"jsonrpc": "2.0", "id": 7, "error": error}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("reply", "must be a JSON object"),
        ({**_result(), "error": _error()["error"]}, "exactly one"),
        ({"jsonrpc": "2.0", "id": 7}, "exactly one"),
        (_result(extra=1), "unexpected key.*extra"),
        (_result(jsonrpc=_MISSING), "missing key.*jsonrpc"),
        (_result(id=_MISSING), "missing key.*id"),
        (_result(jsonrpc="2"), "jsonrpc"),
        (_result(id=True), "id must be an integer.*boolean"),
        (_result(id="7"), "id must be an integer"),
        (_result(id=None), "id must be an integer"),
        (_result(id=-7), "id must be an integer"),
        ({**_error(), "error": "failed"}, "error must be a JSON object"),
        ({**_error(), "error": None}, "error must be a JSON object"),
        (_error(code=_MISSING), "missing key.*code"),
        (_error(message=_MISSING), "missing key.*message"),
        (_error(extra=1), "unexpected key.*extra"),
        (_error(code=True), "code must be an integer"),
        (_error(code=-32000.0), "code must be an integer"),
        (_error(code="-32000"), "code must be an integer"),
        (_error(message=None), "message must be a string"),
        (_error(message=["x"]), "message must be a string"),
        (_result(id=8), "reply to a call never made: id 8"),
        ({**_error(), "id": None}, "never made: id None carries error"),
    ],
)
def test_validate_response_rejects(message: Any, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        validate_response(message, 7)


@pytest.mark.parametrize(
    "message",
    [
        _result(),
        _result(result=[1, {"a": None}]),
        _error(),
        _error(data={"traceback": "..."}),
        _error(data=None),
    ],
)
def test_validate_response_accepts(message: dict[str, Any]) -> None:
    response = validate_response(message, 7)
    assert response.id == 7
    assert response.result == message.get("result")
    assert response.error == message.get("error")


ENVELOPE_KEYS = st.sampled_from(
    ["jsonrpc", "id", "method", "params", "result", "error", "jsnrpc", "x"]
)
ENVELOPE_VALUES = st.one_of(
    st.sampled_from(["2.0", "m", "rpc.m", None, True, [], {}]),
    st.integers(-1, 2**53 + 1),
    st.dictionaries(st.sampled_from(["code", "message", "data"]), JSON_VALUES),
    JSON_VALUES,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(ENVELOPE_KEYS, ENVELOPE_VALUES, max_size=5))
def test_validators_raise_only_protocol_error(message: dict[str, Any]) -> None:
    """Near-miss envelopes get ProtocolError, never another exception."""
    try:
        request = validate_request(message)
    except ProtocolError:
        pass
    else:
        assert set(message) == {"jsonrpc", "id", "method", "params"}
        assert request.id == message["id"]
    try:
        response = validate_response(message, 1)
    except ProtocolError:
        pass
    else:
        assert response.id == 1


def test_error_message_truncates_value() -> None:
    with pytest.raises(ProtocolError) as excinfo:
        validate_request(_request(method="x" * 10_000))
    assert len(str(excinfo.value)) < 200


# -- channel ---------------------------------------------------------------


@pytest.fixture(params=KINDS)
def channels(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Channel, Channel]]:
    a, b = _transport_pair(request.param)
    host = Channel(a, max_message_bytes=MAX_BYTES)
    worker = Channel(b, max_message_bytes=MAX_BYTES)
    yield host, worker
    host.close()
    worker.close()


def test_channel_call_round_trip(channels: tuple[Channel, Channel]) -> None:
    host, worker = channels
    call_id = host.send_request("echo", {"text": "héllo"})
    request = validate_request(worker.receive(timeout=5))
    assert request == Request(call_id, "echo", {"text": "héllo"})
    worker.send_result(request.id, request.params)
    response = validate_response(host.receive(timeout=5), call_id)
    assert response.result == {"text": "héllo"}
    assert response.error is None


def test_channel_error_round_trip(channels: tuple[Channel, Channel]) -> None:
    host, worker = channels
    call_id = host.send_request("fail", [])
    worker.send_error(call_id, PLUGIN_ERROR, "boom", {"type": "KeyError"})
    response = validate_response(host.receive(timeout=5), call_id)
    assert response.error == {
        "code": PLUGIN_ERROR,
        "message": "boom",
        "data": {"type": "KeyError"},
    }


def test_request_ids_are_unique(channels: tuple[Channel, Channel]) -> None:
    host, worker = channels
    ids = [host.send_request("m", []) for _ in range(5)]
    received = [worker.receive(timeout=5)["id"] for _ in ids]
    assert received == ids
    assert len(set(ids)) == len(ids)


def test_send_request_validates_before_sending(
    channels: tuple[Channel, Channel],
) -> None:
    host, worker = channels
    with pytest.raises(ProtocolError, match="reserved"):
        host.send_request("rpc.discover", {})
    with pytest.raises(ProtocolError, match="object or an array"):
        host.send_request("m", "params as text")
    with pytest.raises(ProtocolError, match="not JSON compliant"):
        host.send_request("m", {"x": math.nan})
    with pytest.raises(TimeoutError):
        worker.receive(timeout=0.05)


def test_send_result_validates_before_sending(
    channels: tuple[Channel, Channel],
) -> None:
    host, worker = channels
    with pytest.raises(ProtocolError, match="id must be an integer"):
        worker.send_result(True, 1)
    with pytest.raises(ProtocolError, match="code must be an integer"):
        worker.send_error(1, "bad", "message")  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        host.receive(timeout=0.05)


def test_channel_rejects_oversize_message(
    channels: tuple[Channel, Channel],
) -> None:
    host, _ = channels
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        host.send_request("m", {"blob": "x" * MAX_BYTES})


def test_receive_rejects_bad_envelope(raw_peer: RawPeer) -> None:
    channel_end = Channel(raw_peer.transport, max_message_bytes=MAX_BYTES)
    raw_peer.write(_frame(b'{"jsonrpc":"2.0","id":1}'))
    with pytest.raises(ProtocolError, match="exactly one"):
        channel_end.receive(timeout=5)
    raw_peer.write(_frame(b'{"jsonrpc":"2.0","id":1,"method":"rpc.x",'
                          b'"params":{}}'))  # fmt: skip
    with pytest.raises(ProtocolError, match="reserved"):
        channel_end.receive(timeout=5)


def test_forged_reply_ids_rejected(channels: tuple[Channel, Channel]) -> None:
    host, worker = channels
    call_id = host.send_request("m", {})
    worker.send_result(call_id + 1, "forged")
    with pytest.raises(ProtocolError, match="never made"):
        validate_response(host.receive(timeout=5), call_id)
    worker.send_error(None, PARSE_ERROR, "unreadable request")
    with pytest.raises(ProtocolError, match="unreadable request"):
        validate_response(host.receive(timeout=5), call_id)


def test_receive_message_returns_request_and_reply(
    channels: tuple[Channel, Channel],
) -> None:
    host, worker = channels
    call_id = host.send_request("echo", {"n": 1})
    request = worker.receive_message(timeout=5)
    assert request == Request(call_id, "echo", {"n": 1})
    worker.send_result(call_id, [1, 2])
    reply = host.receive_message(timeout=5)
    assert reply == Response(call_id, [1, 2], None)
    assert match_response(reply, call_id) is reply


def test_receive_message_rejects_bad_envelope(raw_peer: RawPeer) -> None:
    channel_end = Channel(raw_peer.transport, max_message_bytes=MAX_BYTES)
    raw_peer.write(_frame(b'{"jsonrpc":"2.0","id":1}'))
    with pytest.raises(ProtocolError, match="exactly one"):
        channel_end.receive_message(timeout=5)
    raw_peer.write(_frame(b'{"jsonrpc":"2.0","id":1,"method":"rpc.x",'
                          b'"params":{}}'))  # fmt: skip
    with pytest.raises(ProtocolError, match="reserved"):
        channel_end.receive_message(timeout=5)
    raw_peer.write(_frame(b'{"jsonrpc":"2.0","id":-1,"result":1}'))
    with pytest.raises(ProtocolError, match="id must be an integer"):
        channel_end.receive_message(timeout=5)


@pytest.mark.parametrize("reply_id", [6, 8, None])
def test_match_response_rejects_other_ids(reply_id: int | None) -> None:
    error = None if reply_id is not None else {"code": 1, "message": "m"}
    with pytest.raises(ProtocolError, match="never made"):
        match_response(Response(reply_id, None, error), 7)


def test_large_frame_returned_in_owned_bytearray(
    transports: tuple[StreamTransport, StreamTransport],
) -> None:
    a, b = transports
    first, second = os.urandom(200_000), os.urandom(200_000)
    sender = _later(0, a.send, first)
    received = b.recv(timeout=5)
    sender.join()
    assert type(received) is bytearray
    assert received == first
    # The transport keeps no hold on it: the caller may resize it, and
    # the next frame goes to a buffer of its own.
    received.clear()
    sender = _later(0, a.send, second)
    assert b.recv(timeout=5) == second
    sender.join()
    assert received == b""


def test_small_frame_returned_as_bytes(
    transports: tuple[StreamTransport, StreamTransport],
) -> None:
    a, b = transports
    a.send(b"small")
    assert type(b.recv(timeout=5)) is bytes


def test_channel_parses_large_frame_in_place(
    channels: tuple[Channel, Channel],
) -> None:
    host, worker = channels
    blob = os.urandom(300_000)
    sender = _later(0, host.send_request, "store", {"blob": blob, "n": 1})
    request = worker.receive_message(timeout=5)
    sender.join()
    assert isinstance(request, Request)
    assert request.params == {"blob": blob, "n": 1}
    assert type(request.params["blob"]) is bytes


# -- the worker's end -----------------------------------------------------


def _server(channel: Channel) -> Server:
    # No plugin is loaded: these tests never reach a plugin method.
    return Server(channel, {"plugin": {"methods": []}, "capabilities": []})


def test_worker_rejects_stray_reply(
    channels: tuple[Channel, Channel],
) -> None:
    host, worker = channels
    serving = threading.Thread(target=_server(worker).serve)
    serving.start()
    host.send_result(5, "never asked for")
    reply = host.receive_message(timeout=5)
    call_id = host.send_request("sandbox.shutdown", {})
    shutdown = host.receive_message(timeout=5)
    serving.join(5)

    assert isinstance(reply, Response)
    assert reply.id is None
    assert reply.error is not None
    assert reply.error["code"] == INVALID_REQUEST
    assert "got a reply to id 5" in reply.error["message"]
    assert match_response(shutdown, call_id).result is None
    assert not serving.is_alive()


def test_worker_capability_call_rejects_request(
    channels: tuple[Channel, Channel],
) -> None:
    host, worker = channels
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            _server(worker).call_host("notify", {"message": "hi"})
        except ProtocolError as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    request = host.receive_message(timeout=5)
    host.send_request("sandbox.hello", {})
    caller.join(5)

    assert isinstance(request, Request)
    assert request.method == "capability.notify"
    assert len(outcome) == 1
    assert "expected the reply to request" in str(outcome[0])


def test_channel_receive_reports_peer_gone(
    channels: tuple[Channel, Channel],
) -> None:
    host, worker = channels
    worker.close()
    with pytest.raises(PeerGone):
        host.receive(timeout=5)


def test_module_imports_only_declared_dependencies() -> None:
    # orjson is a runtime dependency; _cffi_backend loads sandbox._native.
    result = run_python(
        """
        import sys
        before = set(sys.modules)
        import sandbox.channel
        added = {name.partition(".")[0] for name in set(sys.modules) - before}
        stdlib = set(sys.stdlib_module_names)
        print(sorted(added - stdlib - {"sandbox"}))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['_cffi_backend', 'orjson']"
