"""Length-prefixed JSON-RPC 2.0 messages between the host and a worker.

A frame is a 4-byte big-endian payload length followed by that many bytes.
Each end treats every byte from its peer as hostile. It checks the declared
length before it allocates or reads the body, and parses the JSON strictly
(no NaN, no duplicate keys, bounded nesting). It validates the JSON-RPC
envelope before the caller sees the message.

sandbox.codec encodes and decodes payloads, and its docstring describes
their format. This module re-exports the codec's public names. The
sandboxed worker imports this module, so besides the standard library and
sandbox.codec it imports nothing, and it defers the ``socket`` import until
a socket is used.
"""

from __future__ import annotations

import _thread
import array
import fcntl
import math
import os
import resource
import select
import stat
import struct
import time
from collections.abc import Mapping, Sequence
from itertools import count
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

# Each "name as name" import re-exports a public name of the codec, so
# that callers can keep importing it from this module.
from sandbox.codec import BINARY_FRAME_MARK as BINARY_FRAME_MARK
from sandbox.codec import BINARY_KEY as BINARY_KEY
from sandbox.codec import MAX_DEPTH as MAX_DEPTH
from sandbox.codec import MessageTooLarge as MessageTooLarge
from sandbox.codec import _decode_owned, _json_type, _show
from sandbox.codec import decode as decode
from sandbox.codec import enable_fast_codec as enable_fast_codec
from sandbox.codec import encode as encode
from sandbox.errors import ProtocolError

if TYPE_CHECKING:
    import socket


HEADER = struct.Struct(">I")
MAX_ID = 2**53
MAX_METHOD_LENGTH = 128

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PLUGIN_ERROR = -32000
CAPABILITY_DENIED = -32001
RESOURCE_LIMIT = -32002

_MAX_FRAME_LENGTH = 2 ** (8 * HEADER.size) - 1
_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_RESULT_REPLY_KEYS = frozenset({"jsonrpc", "id", "result"})
_ERROR_REPLY_KEYS = frozenset({"jsonrpc", "id", "error"})
_ERROR_KEYS = frozenset({"code", "message", "data"})


class PeerGone(Exception):
    """The peer closed its end, reset the connection or a wake fd fired."""


class ChannelBroken(ProtocolError):
    """The transport cannot send another frame: the peer corrupted it, or
    an earlier send stopped inside a frame."""


class Transport(Protocol):
    """Moves whole frame payloads between two processes."""

    def send(self, payload: bytes, *, timeout: float | None = None) -> None:
        """Send one frame, raising TimeoutError if it cannot go out in time."""

    def recv(self, timeout: float | None) -> bytes | bytearray:
        """Return the payload of the next whole frame.

        A bytearray must be one that no other code holds, because the
        channel parses it in place.
        """

    def close(self) -> None:
        """Release the transport's descriptors; calling again does nothing."""

    def fileno(self) -> int:
        """Return the descriptor that turns readable when data arrives."""

    def pending(self) -> bool:
        """Return whether bytes have arrived that recv() has not returned."""


class Request(NamedTuple):
    id: int
    method: str
    params: dict[str, Any] | list[Any]


class Response(NamedTuple):
    """A reply; ``error`` is None for a result, ``result`` None for an error.

    ``id`` is None only for an error about a request whose id was unreadable.
    """

    id: int | None
    result: Any
    error: dict[str, Any] | None


# -- JSON-RPC 2.0 messages -------------------------------------------------


def make_request(
    id: int, method: str, params: Mapping[str, Any] | Sequence[Any]
) -> dict[str, Any]:
    """Build a request; other mappings and sequences become dicts and lists.

    A str or bytes value is passed on unchanged for validate_request() to
    reject, rather than split into characters.
    """
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": method,
        "params": _as_json_container(params),
    }


def _as_json_container(params: object) -> object:
    if isinstance(params, (dict, list, str, bytes, bytearray)):
        return params
    if isinstance(params, Mapping):
        return dict(params)
    if isinstance(params, Sequence):
        return list(params)
    return params


def make_result(id: int, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def make_error(
    id: int | None, code: int, message: str, data: Any = None
) -> dict[str, Any]:
    """Build an error reply; ``data`` is left out when it is None."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def is_request(msg: Mapping[str, Any]) -> bool:
    return "method" in msg


def validate_request(msg: Mapping[str, Any]) -> Request:
    """Return the request's fields, or raise ProtocolError naming the fault.

    The message must hold exactly jsonrpc "2.0", an integer id in
    0..MAX_ID, a method name and params that are an object or an array.
    """
    request = _plain_request(msg)
    if request is not None:
        return request
    _check_object("request", msg)
    _check_keys("request", msg, required=_REQUEST_KEYS)
    _check_version(msg)
    request_id = msg["id"]
    _check_id("request", request_id)
    method = msg["method"]
    _check_method(method)
    params = msg["params"]
    if not isinstance(params, (dict, list)):
        raise ProtocolError(
            "request params must be an object or an array, got "
            f"{_json_type(params)}: {_show(params)}"
        )
    return Request(request_id, method, params)


def _plain_request(msg: Mapping[str, Any]) -> Request | None:
    """Return the request if it passes every check of validate_request()
    in its most common form, else None.

    Each condition is that of a check below or a stricter one (exact
    types), so a message that fails here still gets the full checks and
    the error message they give. The helper calls that this inlines took
    about half of validate_request()'s 0.7 us on a 2-vCPU AMD EPYC VM.
    """
    if type(msg) is not dict or len(msg) != 4:
        return None
    try:
        version = msg["jsonrpc"]
        request_id = msg["id"]
        method = msg["method"]
        params = msg["params"]
    except KeyError:
        # Four keys, but not these four: the full checks name the fault.
        return None
    if (
        type(version) is str
        and version == "2.0"
        and type(request_id) is int
        and 0 <= request_id <= MAX_ID
        and type(method) is str
        and 0 < len(method) <= MAX_METHOD_LENGTH
        and "\x00" not in method
        and not method.startswith("rpc.")
        and (type(params) is dict or type(params) is list)
    ):
        return Request(request_id, method, params)
    return None


def validate_response(msg: Mapping[str, Any], expected_id: int) -> Response:
    """Return the reply to call ``expected_id``, or raise ProtocolError.

    Beyond the shape rules of a reply, the id must equal ``expected_id``:
    a reply with any other id, null included, matches no call in progress.
    """
    return match_response(_check_response_shape(msg), expected_id)


def match_response(response: Response, expected_id: int) -> Response:
    """Return ``response`` if it is the reply to call ``expected_id``.

    Raises ProtocolError for any other id, null included, since such a
    reply matches no call in progress. ``response`` must come from
    Channel.receive_message() or validate_response(), which check its
    shape.
    """
    if response.id != expected_id:
        reason = f"reply to a call never made: id {_show(response.id)}"
        if response.error is not None:
            reason += f" carries error {_show(response.error)}"
        raise ProtocolError(f"{reason}, expected id {expected_id}")
    return response


def _check_response_shape(msg: Mapping[str, Any]) -> Response:
    """Check a reply's fields without matching its id to a call."""
    # The common case, a result, inlined as in _plain_request(): exactly
    # these three keys, so no "error", and the same version and id checks.
    if (
        type(msg) is dict
        and len(msg) == 3
        and "result" in msg
        and "id" in msg
        and "jsonrpc" in msg
    ):
        version = msg["jsonrpc"]
        response_id = msg["id"]
        if (
            type(version) is str
            and version == "2.0"
            and type(response_id) is int
            and 0 <= response_id <= MAX_ID
        ):
            return Response(response_id, msg["result"], None)
    _check_object("response", msg)
    has_result = "result" in msg
    has_error = "error" in msg
    if has_result == has_error:
        raise ProtocolError(
            f"response must hold exactly one of result and error: {_show(msg)}"
        )
    required = _RESULT_REPLY_KEYS if has_result else _ERROR_REPLY_KEYS
    _check_keys("response", msg, required=required)
    _check_version(msg)
    response_id = msg["id"]
    if response_id is not None or has_result:
        _check_id("response", response_id)
    if has_result:
        return Response(response_id, msg["result"], None)
    return Response(response_id, None, _check_error_object(msg["error"]))


def _check_error_object(error: Any) -> dict[str, Any]:
    _check_object("response error", error)
    _check_keys(
        "response error",
        error,
        required={"code", "message"},
        allowed=_ERROR_KEYS,
    )
    code = error["code"]
    if type(code) is not int:
        raise ProtocolError(
            f"error code must be an integer, got {_json_type(code)}: "
            f"{_show(code)}"
        )
    message = error["message"]
    if not isinstance(message, str):
        raise ProtocolError(
            f"error message must be a string, got {_json_type(message)}: "
            f"{_show(message)}"
        )
    return dict(error)


def _check_envelope(msg: dict[str, Any]) -> None:
    if is_request(msg):
        validate_request(msg)
    else:
        _check_response_shape(msg)


def _check_object(label: str, value: Any) -> None:
    # An exact dict, as decode() returns, skips the slower ABC check.
    if type(value) is dict:
        return
    if not isinstance(value, Mapping):
        raise ProtocolError(
            f"{label} must be a JSON object, got {_json_type(value)}: "
            f"{_show(value)}"
        )


def _check_keys(
    label: str,
    msg: Mapping[Any, Any],
    *,
    required: frozenset[str] | set[str],
    allowed: frozenset[str] | set[str] | None = None,
) -> None:
    keys = msg.keys()
    if len(keys) == len(required) and keys >= required:
        return
    missing = required - keys
    if missing:
        raise ProtocolError(
            f"{label} is missing key(s) {_show(sorted(missing))}: {_show(msg)}"
        )
    unexpected = keys - (required if allowed is None else allowed)
    if unexpected:
        raise ProtocolError(
            f"{label} has unexpected key(s) "
            f"{_show(sorted(unexpected, key=repr))}"
        )


def _check_version(msg: Mapping[str, Any]) -> None:
    version = msg["jsonrpc"]
    if type(version) is not str or version != "2.0":
        raise ProtocolError(f'jsonrpc must be "2.0", got {_show(version)}')


def _check_id(label: str, value: Any) -> None:
    # bool is a subclass of int, so the type is compared exactly.
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise ProtocolError(
            f"{label} id must be an integer in 0..{MAX_ID}, got "
            f"{_json_type(value)}: {_show(value)}"
        )


def _check_method(method: Any) -> None:
    if not isinstance(method, str):
        raise ProtocolError(
            f"method must be a string, got {_json_type(method)}: "
            f"{_show(method)}"
        )
    if not 1 <= len(method) <= MAX_METHOD_LENGTH:
        raise ProtocolError(
            f"method name must be 1 to {MAX_METHOD_LENGTH} characters, got "
            f"{len(method)}: {_show(method)}"
        )
    if "\x00" in method:
        raise ProtocolError(f"method name contains NUL: {_show(method)}")
    if method.startswith("rpc."):
        raise ProtocolError(
            f"method names starting with 'rpc.' are reserved: {_show(method)}"
        )


# -- stream transport ------------------------------------------------------


def _check_max_message_bytes(value: int) -> None:
    if type(value) is not int or not 1 <= value <= _MAX_FRAME_LENGTH:
        raise ValueError(
            f"max_message_bytes must be an integer in 1..{_MAX_FRAME_LENGTH},"
            f" got {_show(value)}"
        )


class _Deadline:
    __slots__ = ("_end", "_timeout")

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def poll_milliseconds(self, activity: str) -> int | None:
        """Return the poll() timeout left, or raise TimeoutError."""
        if self._end is None:
            return None
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"timed out after {self._timeout:g} s {activity}"
            )
        # Rounding down would let poll() return before the deadline and spin.
        return math.ceil(remaining * 1000)


# Frames up to this size are returned as bytes, which the C scan reads
# without a buffer object. Copying a larger frame would cost as much as
# reading it.
_COPIED_FRAME_BYTES = 64 << 10


class _Buffer:
    __slots__ = ("data", "filled")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.filled = 0

    def missing(self) -> int:
        return len(self.data) - self.filled


def _socket_for(fd: int) -> socket.socket | None:
    """Wrap ``fd`` in a socket object if it is a socket, else return None."""
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        return None
    # Imported here because the module costs milliseconds and a worker on a
    # pipe or shared memory never needs it.
    import socket

    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def _no_signal_flag() -> int:
    """Return MSG_NOSIGNAL, or 0 where the platform (macOS) lacks it."""
    import socket

    flag: int = getattr(socket, "MSG_NOSIGNAL", 0)
    return flag


class StreamTransport:
    """Frames over a connected SOCK_STREAM socket or a pair of pipes.

    The transport owns ``read_fd`` and ``write_fd`` (which may be the same
    socket) and closes them in close(); it never closes ``wake_fds``. Both
    descriptors are switched to non-blocking mode. A wake fd, such as the
    peer's pidfd, that turns readable while recv() or send() waits ends the
    wait with PeerGone, because the peer's stream may be held open by a
    process other than the peer.

    One thread may send while another receives. Interrupted system calls
    are retried by Python itself (PEP 475). close() must not run while
    another thread is inside send() or recv(); use a wake fd to end those.
    """

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        *,
        max_message_bytes: int,
        wake_fds: Sequence[int] = (),
    ) -> None:
        _check_max_message_bytes(max_message_bytes)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._max_message_bytes = max_message_bytes
        self._wake_fds = frozenset(wake_fds)
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._socket = _socket_for(write_fd)
        self._send_flags = 0 if self._socket is None else _no_signal_flag()
        self._recv_poller = self._poller(read_fd, select.POLLIN)
        self._send_poller = self._poller(write_fd, select.POLLOUT)
        # _thread locks avoid importing threading into the worker.
        self._recv_lock = _thread.allocate_lock()
        self._send_lock = _thread.allocate_lock()
        self._header = _Buffer(HEADER.size)
        self._body: _Buffer | None = None
        self._recv_fault: str | None = None
        self._send_fault: str | None = None
        self._closed = False
        # FIONREAD, looked up at the first pending(): importing termios
        # costs a worker, which never calls it, about 0.4 ms at start-up.
        self._fionread = 0
        self._readable = array.array("i", [0])

    def _poller(self, fd: int, event: int) -> select.poll:
        poller = select.poll()
        poller.register(fd, event)
        for wake_fd in self._wake_fds:
            poller.register(wake_fd, select.POLLIN)
        return poller

    def fileno(self) -> int:
        return self._read_fd

    def pending(self) -> bool:
        """Return whether the peer sent bytes that recv() has not returned.

        It reads nothing and makes one system call, an ioctl. End of stream
        is not pending, so a peer that exited is left to recv() and send().
        """
        if self._header.filled or self._body is not None:
            return True
        if not self._fionread:
            import termios

            self._fionread = termios.FIONREAD
        fcntl.ioctl(self._read_fd, self._fionread, self._readable)
        return self._readable[0] != 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._socket is not None:
            # The loop below closes the descriptor itself.
            self._socket.detach()
        for fd in dict.fromkeys((self._read_fd, self._write_fd)):
            os.close(fd)

    def __enter__(self) -> StreamTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- receiving

    def recv(self, timeout: float | None) -> bytes | bytearray:
        """Return the payload of the next frame.

        A frame longer than _COPIED_FRAME_BYTES comes back in the bytearray
        it was read into, which the caller then owns. Raises TimeoutError
        when ``timeout`` seconds pass first. The bytes read so far are
        kept, so the next call continues the same frame.
        Raises PeerGone on end of stream or when a wake fd fires, and
        ProtocolError when the declared length is 0 or above
        max_message_bytes, after which every recv() raises it again.
        """
        with self._recv_lock:
            self._check_open()
            if self._recv_fault is not None:
                raise ProtocolError(self._recv_fault)
            deadline = _Deadline(timeout)
            if self._body is None:
                self._fill(self._header, deadline)
                self._body = _Buffer(self._declared_length())
            self._fill(self._body, deadline)
            data = self._body.data
            self._header.filled = 0
            self._body = None
            return data if len(data) > _COPIED_FRAME_BYTES else bytes(data)

    def _declared_length(self) -> int:
        length: int = HEADER.unpack(self._header.data)[0]
        if 0 < length <= self._max_message_bytes:
            return length
        # The body is never read, so the stream has lost its frame boundary.
        self._recv_fault = (
            f"frame declares {length} payload bytes; allowed are 1 to "
            f"{self._max_message_bytes}"
        )
        raise ProtocolError(self._recv_fault)

    def _fill(self, buffer: _Buffer, deadline: _Deadline) -> None:
        while buffer.missing():
            view = memoryview(buffer.data)[buffer.filled :]
            try:
                received = os.readv(self._read_fd, [view])
            except BlockingIOError:
                self._wait(
                    self._recv_poller,
                    self._read_fd,
                    deadline,
                    "waiting for a frame",
                )
                continue
            except ConnectionResetError as error:
                raise PeerGone("peer reset the connection") from error
            if received == 0:
                raise PeerGone(self._end_of_stream_message())
            buffer.filled += received

    def _end_of_stream_message(self) -> str:
        if self._body is None and self._header.filled == 0:
            return "peer closed the stream"
        if self._body is None:
            return (
                "peer closed the stream inside a frame header after "
                f"{self._header.filled} of {HEADER.size} bytes"
            )
        return (
            "peer closed the stream inside a frame after "
            f"{self._body.filled} of {len(self._body.data)} payload bytes"
        )

    # -- sending

    def send(self, payload: bytes, *, timeout: float | None = None) -> None:
        """Send ``payload`` as one frame.

        Raises ProtocolError when the payload is empty or longer than
        max_message_bytes, PeerGone when the peer closed its end or a wake
        fd fires, and TimeoutError when ``timeout`` seconds pass first. After
        a timeout in the middle of a frame every send() raises ProtocolError,
        because the stream cannot be brought back in step.
        """
        with self._send_lock:
            self._check_open()
            if self._send_fault is not None:
                raise ProtocolError(self._send_fault)
            size = len(payload)
            if not 0 < size <= self._max_message_bytes:
                raise ProtocolError(
                    f"payload of {size} bytes cannot be sent; allowed are 1 "
                    f"to {self._max_message_bytes}"
                )
            self._write_all(HEADER.pack(size) + payload, _Deadline(timeout))

    def _write_all(self, frame: bytes, deadline: _Deadline) -> None:
        view = memoryview(frame)
        sent = 0
        while sent < len(frame):
            try:
                sent += self._write(view[sent:])
            except BlockingIOError:
                self._wait_writable(deadline, sent, len(frame))
            except (BrokenPipeError, ConnectionResetError) as error:
                raise PeerGone(
                    f"peer closed its end while a frame was sent: {error}"
                ) from error

    def _write(self, data: memoryview) -> int:
        if self._socket is None:
            # Python ignores SIGPIPE, so a closed pipe raises EPIPE.
            return os.write(self._write_fd, data)
        # MSG_NOSIGNAL keeps a process that restored SIGPIPE alive. Without
        # it (macOS) this relies on Python ignoring SIGPIPE.
        return self._socket.send(data, self._send_flags)

    def _wait_writable(
        self, deadline: _Deadline, sent: int, size: int
    ) -> None:
        try:
            self._wait(
                self._send_poller, self._write_fd, deadline, "sending a frame"
            )
        except TimeoutError:
            if sent:
                self._send_fault = (
                    f"an earlier send timed out after {sent} of {size} frame "
                    "bytes, so the stream is out of step"
                )
            raise

    # -- shared

    def _wait(
        self,
        poller: select.poll,
        io_fd: int,
        deadline: _Deadline,
        activity: str,
    ) -> None:
        """Wait until ``io_fd`` is ready or the timeout passes.

        Raises PeerGone when a wake fd is ready and ``io_fd`` is not, so
        data the peer sent before it went away is still delivered.
        """
        events = poller.poll(deadline.poll_milliseconds(activity))
        ready = {fd for fd, _ in events}
        if io_fd in ready:
            return
        woken = ready & self._wake_fds
        if woken:
            raise PeerGone(
                f"wake fd {min(woken)} became ready while {activity}"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise PeerGone("transport is closed")


# -- channel ---------------------------------------------------------------


class Channel:
    """One endpoint: JSON-RPC messages checked both ways over a transport.

    Outgoing messages are validated before they are sent, so a bad method
    name fails at the sender. Incoming ones are decoded strictly and must be
    a valid request or a validly shaped reply. The caller matches a reply's
    id to its call with match_response() or validate_response().
    """

    def __init__(
        self, transport: Transport, *, max_message_bytes: int
    ) -> None:
        _check_max_message_bytes(max_message_bytes)
        self._transport = transport
        self._max_message_bytes = max_message_bytes
        self._ids = count(1)
        # Under an address-space limit (a worker) orjson could run out of
        # memory, and it crashes when it does, so the size of each message
        # is bounded before it is encoded (see codec._encode_fast).
        address_space, _ = resource.getrlimit(resource.RLIMIT_AS)
        self._encode_limit: int | None = None
        if address_space != resource.RLIM_INFINITY:
            self._encode_limit = max_message_bytes

    def send_request(
        self,
        method: str,
        params: Mapping[str, Any] | Sequence[Any],
        *,
        timeout: float | None = None,
    ) -> int:
        """Send a request and return the id it was given."""
        request_id = next(self._ids)
        message = make_request(request_id, method, params)
        validate_request(message)
        self._send(message, timeout)
        return request_id

    def send_result(
        self, id: int, result: Any, *, timeout: float | None = None
    ) -> None:
        message = make_result(id, result)
        _check_response_shape(message)
        self._send(message, timeout)

    def send_error(
        self,
        id: int | None,
        code: int,
        message: str,
        data: Any = None,
        *,
        timeout: float | None = None,
    ) -> None:
        reply = make_error(id, code, message, data)
        _check_response_shape(reply)
        self._send(reply, timeout)

    def receive(self, timeout: float | None) -> dict[str, Any]:
        """Return the next message, decoded and envelope-checked.

        Raises ProtocolError for a malformed or oversized message, PeerGone
        when the peer is gone and TimeoutError when ``timeout`` passes.
        """
        message = self._receive_decoded(timeout)
        _check_envelope(message)
        return message

    def receive_message(self, timeout: float | None) -> Request | Response:
        """Return the next message as a checked Request or Response.

        It runs the checks of receive() once, where receive() followed by
        validate_request() or validate_response() runs them twice. Raises
        what receive() raises.
        """
        message = self._receive_decoded(timeout)
        if is_request(message):
            return validate_request(message)
        return _check_response_shape(message)

    def _receive_decoded(self, timeout: float | None) -> dict[str, Any]:
        payload = self._transport.recv(timeout)
        if len(payload) > self._max_message_bytes:
            raise ProtocolError(
                f"received message of {len(payload)} bytes exceeds the "
                f"maximum of {self._max_message_bytes}"
            )
        # The transport hands over the payload, so it is parsed in place.
        return _decode_owned(payload)

    def pending(self) -> bool:
        """Return whether the peer sent bytes not yet received."""
        return self._transport.pending()

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, message: dict[str, Any], timeout: float | None) -> None:
        payload = encode(message, self._encode_limit)
        if len(payload) > self._max_message_bytes:
            # The text gives only the sizes, because the message can carry
            # a secret and this text reaches audit events, logs and callers.
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds the maximum of "
                f"{self._max_message_bytes}"
            )
        try:
            self._transport.send(payload, timeout=timeout)
        except ProtocolError as error:
            # The payload passed every check above, so the fault is the
            # transport's, and no later send can succeed either.
            raise ChannelBroken(str(error)) from error
