"""Fuzz the frame decoder and the JSON-RPC validators.

    python tests/fuzz/fuzz_decode.py -max_total_time=60 build/fuzz/decode

Each input is one frame payload. codec.decode() must return a dict or
raise ProtocolError, and must do the same with its fast path (orjson and
the C scan) and with the standard library alone: equal values of equal
types, or ProtocolError from both. A decoded message then goes through the
envelope check and validate_request() or validate_response(), which may
raise ProtocolError only, and whose results must have the promised types.
See tests/fuzz/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_common import instrumented, main, optional_atheris

atheris = optional_atheris()
with instrumented(atheris):
    from sandbox import channel, codec
    from sandbox.errors import ProtocolError


def decode_both_ways(data: bytes) -> dict[str, Any] | None:
    """Return the decoded message, or None when both paths reject it."""
    fast = _decode_or_none(data)
    saved = codec._FAST_DECODE
    codec._FAST_DECODE = False
    try:
        plain = _decode_or_none(data)
    finally:
        codec._FAST_DECODE = saved
    if typed(fast) != typed(plain):
        raise AssertionError(
            f"fast path gave {fast!r:.200}, standard library {plain!r:.200}"
        )
    return fast


def _decode_or_none(data: bytes) -> dict[str, Any] | None:
    try:
        message = codec.decode(data)
    except ProtocolError:
        return None
    if type(message) is not dict:
        raise AssertionError(f"decode() returned {type(message).__name__}")
    return message


def typed(value: Any) -> Any:
    """Return ``value`` with every leaf paired with its type, so that 1
    and 1.0 or True and 1 compare unequal."""
    if type(value) is dict:
        return ("object", [(key, typed(item)) for key, item in value.items()])
    if type(value) is list:
        return ("array", [typed(item) for item in value])
    if type(value) is float:
        return ("float", repr(value))
    return (type(value).__name__, value)


def check_validators(message: dict[str, Any]) -> None:
    try:
        channel._check_envelope(message)
    except ProtocolError:
        return
    if channel.is_request(message):
        _check_request(message)
        return
    expected = message.get("id")
    if type(expected) is not int:
        expected = 1
    try:
        response = channel.validate_response(message, expected)
    except ProtocolError:
        return
    if response.id != expected:
        raise AssertionError(f"reply id {response.id!r} accepted")
    if (response.error is None) == ("error" in message):
        raise AssertionError("reply has both or neither result and error")


def _check_request(message: dict[str, Any]) -> None:
    try:
        request = channel.validate_request(message)
    except ProtocolError:
        return
    if type(request.id) is not int or not 0 <= request.id <= channel.MAX_ID:
        raise AssertionError(f"request id {request.id!r} accepted")
    if type(request.method) is not str:
        raise AssertionError(f"method {request.method!r} accepted")
    if type(request.params) not in (dict, list):
        raise AssertionError(f"params {request.params!r:.80} accepted")


def one_input(data: bytes) -> None:
    message = decode_both_ways(data)
    if message is not None:
        check_validators(message)


SEEDS = [
    channel.encode(channel.make_request(7, "echo", {"value": "x"})),
    channel.encode(channel.make_result(7, [1, 2.5, None, True, "é"])),
    channel.encode(channel.make_error(7, -32000, "failed", {"type": "E"})),
    channel.encode(channel.make_error(None, -32600, "bad request")),
    channel.encode(channel.make_result(7, {"blob": b"\x00\xff" * 4})),
    channel.encode(
        channel.make_request(8, "capability.notify", [b"a", {"k": b"b"}])
    ),
    b'{"jsonrpc":"2.0","id":1,"result":"\\ud83d\\ude00"}',
    b'{"a":' * 70 + b"1" + b"}" * 70,
    b'{"jsonrpc":"2.0","id":1,"result":1' + b"0" * 30 + b"}",
]


if __name__ == "__main__":
    main(atheris, one_input, SEEDS)
