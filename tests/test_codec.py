"""Tests of the channel codec: the orjson path against the standard-library
path, the JSON scan in C, binary frames and their hostile forms, and bytes
crossing a real worker."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import json
import math
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sandbox._native import lib as native

import sandbox.codec
from conftest import REPO, HostFactory, PluginWriter, run_python
from sandbox.channel import (
    BINARY_FRAME_MARK,
    BINARY_KEY,
    MAX_DEPTH,
    Channel,
    StreamTransport,
    decode,
    encode,
    make_request,
    make_result,
    validate_request,
    validate_response,
)
from sandbox.errors import ProtocolError

SRC = Path(sandbox.codec.__file__).resolve().parents[1]
MIB = 1 << 20

fast_path = pytest.mark.skipif(
    not sandbox.codec._FAST_DECODE,
    reason="orjson or the C extension is missing",
)


def _decode_stdlib(payload: bytes) -> dict[str, Any]:
    """Decode a plain payload with the standard-library path only."""
    return sandbox.codec._decode_stdlib(payload, markers_allowed=False)


def _encode_stdlib(message: Any) -> bytes:
    return sandbox.codec._encode_stdlib(message)


def _outcome(action: Any, argument: Any) -> str:
    """Return the repr of the result, or "rejected" for a ProtocolError.

    Unlike ==, repr distinguishes 1 from 1.0 and True, and 0.0 from -0.0.
    """
    try:
        return repr(action(argument))
    except ProtocolError:
        return "rejected"


def _frame(text: bytes, lengths: list[int], attachments: bytes) -> bytes:
    """Build a binary frame by hand; the table may lie about the rest."""
    table = struct.pack(f">{len(lengths) + 1}I", len(lengths), *lengths)
    return BINARY_FRAME_MARK + table + text + attachments


# -- the JSON scan in C ----------------------------------------------------


def _scan(text: bytes, max_depth: int = MAX_DEPTH) -> int:
    return int(native.sandbox_json_scan(text, len(text), max_depth))


def _reference_scan(text: bytes, max_depth: int) -> int:
    """The scan's contract, one byte at a time."""
    depth = digits = colons = 0
    long_number = False
    in_string = escaped = False
    for byte in text:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char.isdigit():
            digits += 1
            long_number |= digits >= native.SANDBOX_JSON_LONG_DIGITS
            continue
        digits = 0
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return int(native.SANDBOX_JSON_TOO_DEEP)
        elif char in "]}":
            depth = max(0, depth - 1)
        elif char == ":":
            colons += 1
    return int(native.SANDBOX_JSON_LONG_NUMBER) if long_number else colons


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"{}", 0),
        (b'{"a":1,"b":{"c":[1,2]}}', 3),
        (b'{"a:b":"c:d"}', 1),
        (b'{"q\\"":1}', 1),
        (b'{"\\\\":1}', 1),
        (b'{"\\\\\\"::":1}', 1),
        (b'{"a": "unterminated :::', 1),
        (b'"\\', 0),
        (b'{"n":' + b"9" * 18 + b"}", 1),
        (b'{"n":' + b"9" * 19 + b"}", native.SANDBOX_JSON_LONG_NUMBER),
        (b'{"n":-' + b"1" * 30 + b"}", native.SANDBOX_JSON_LONG_NUMBER),
        (b'{"s":"' + b"9" * 40 + b'"}', 1),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, 0),
        (b"[" * (MAX_DEPTH + 1), native.SANDBOX_JSON_TOO_DEEP),
        (b'["' + b"[" * 100 + b'"]', 0),
        (b"]]]]" + b"[" * MAX_DEPTH, 0),
        (b"[" * (MAX_DEPTH + 1) + b"9" * 30, native.SANDBOX_JSON_TOO_DEEP),
    ],
)
def test_scan_known_answers(text: bytes, expected: int) -> None:
    assert _scan(text) == expected
    assert _reference_scan(text, MAX_DEPTH) == expected


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet='[]{}":\\ ,9a\u00e9', max_size=120),
    st.integers(min_value=0, max_value=6),
)
def test_scan_matches_byte_loop(text: str, max_depth: int) -> None:
    data = text.encode()
    assert _scan(data, max_depth) == _reference_scan(data, max_depth)


def test_scan_stops_at_depth_limit_of_hostile_input() -> None:
    # Two megabytes of brackets crashed orjson before 3.9.15, so the scan
    # rejects them before any parser runs.
    payload = b"[" * (2 * MIB)
    assert _scan(payload) == native.SANDBOX_JSON_TOO_DEEP
    with pytest.raises(ProtocolError, match="deeper than the maximum"):
        decode(payload)


# -- decoding: the fast path against the standard library ------------------


@fast_path
@pytest.mark.parametrize(
    "payload",
    [
        b'{"x": 99999999999999999999}',
        b'{"x": -9223372036854775809}',
        b'{"x": 18446744073709551616}',
        b'{"x": 1234567890123456789.5}',
    ],
)
def test_long_integers_stay_exact(payload: bytes) -> None:
    # orjson alone turns integers beyond 64 bits into floats.
    assert repr(decode(payload)) == repr(json.loads(payload))


@fast_path
def test_fast_path_checks_depth_before_parsing() -> None:
    with pytest.raises(ProtocolError, match="deeper than the maximum"):
        sandbox.codec._decode_fast(b"[" * 100_000, markers_allowed=False)


@fast_path
@pytest.mark.parametrize(
    "payload",
    [
        b'{"id": 1, "id": 2}',
        b'{"a": {"m": "safe", "m": "admin"}}',
        b'{"a": [{"k": 1}, {"k": 1, "k": 1}]}',
        b'{"a": 1, "\\u0061": 2}',
        b'{"": 1, "": 1}',
    ],
)
def test_fast_path_rejects_duplicate_keys(payload: bytes) -> None:
    assert sandbox.codec._decode_fast(payload, markers_allowed=False) is None
    with pytest.raises(ProtocolError, match="duplicate key"):
        decode(payload)


@fast_path
def test_fast_path_used_for_plain_messages() -> None:
    payload = encode(make_request(5, "m", {"a": [1, 2.5, "x", None, True]}))
    value = sandbox.codec._decode_fast(payload, markers_allowed=False)
    assert value == decode(payload)
    assert value is not None


# JSON punctuation, literal letters, escapes, a lone surrogate, NUL and
# non-ASCII, so that hypothesis reaches every branch of both parsers.
JSON_LIKE_ALPHABET = '[]{}",:\\ 0129-.eEtrufalsnNIu$bytesd8\ud83d\x00é'
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_WITH_BYTES = st.recursive(
    JSON_SCALARS | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=15,
)
# Any key but "$bytes", which marks binary attachments.
PLAIN_KEYS = st.text().filter(lambda key: key != BINARY_KEY)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=JSON_LIKE_ALPHABET, max_size=120))
def test_decode_agrees_with_stdlib_on_json_like_text(text: str) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    if payload.startswith(BINARY_FRAME_MARK):
        payload = b" " + payload
    assert _outcome(decode, payload) == _outcome(_decode_stdlib, payload)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=5))
def test_decode_agrees_with_stdlib_on_valid_json(
    message: dict[str, Any],
) -> None:
    payload = json.dumps(message).encode()
    assert _outcome(decode, payload) == _outcome(_decode_stdlib, payload)


def _dumps_repeating_member(value: Any, target: int, seen: list[int]) -> str:
    """Serialise ``value``, writing the first member of its ``target``-th
    non-empty object (in depth-first order) twice."""
    if isinstance(value, dict):
        members = [
            f"{json.dumps(key)}: {_dumps_repeating_member(item, target, seen)}"
            for key, item in value.items()
        ]
        if members:
            seen.append(0)
            if len(seen) - 1 == target:
                members.append(members[0])
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        items = (_dumps_repeating_member(item, target, seen) for item in value)
        return "[" + ", ".join(items) + "]"
    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=3), JSON_VALUES, min_size=1, max_size=5),
    st.data(),
)
def test_decode_rejects_repeated_member(
    message: dict[str, Any], data: st.DataObject
) -> None:
    objects: list[int] = []
    _dumps_repeating_member(message, -1, objects)
    target = data.draw(st.integers(min_value=0, max_value=len(objects) - 1))
    text = _dumps_repeating_member(message, target, [])
    with pytest.raises(ProtocolError, match="duplicate key"):
        decode(text.encode())


# -- encoding: the fast path against the standard library ------------------


class Colour(enum.Enum):
    RED = 1


class Number(enum.IntEnum):
    ONE = 1


class Text(str):
    pass


class Integer(int):
    pass


class Real(float):
    pass


class Record(dict):  # type: ignore[type-arg]
    pass


Pair = collections.namedtuple("Pair", "left right")


@dataclasses.dataclass
class Point:
    x: int


# Values the standard library encodes, so both paths must accept them.
ACCEPTED = {
    "tuple": (1, 2),
    "namedtuple": Pair(1, 2),
    "str subclass": Text("t"),
    "int subclass": Integer(3),
    "float subclass": Real(1.5),
    "IntEnum": Number.ONE,
    "dict subclass": Record(a=1),
    "int beyond 64 bits": 2**70,
    "negative int beyond 64 bits": -(2**70),
    "str subclass key": {Text("k"): 1},
    "negative zero": -0.0,
}
# Values that are not JSON, so both paths must reject them.
REJECTED = {
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "nan in tuple": (1, math.nan),
    "inf as float subclass": Real("inf"),
    "enum": Colour.RED,
    "uuid": uuid.UUID(int=1),
    "orjson fragment": orjson.Fragment(b'{"a":1,"a":2}'),
    "date": datetime.date(2024, 1, 1),
    "dataclass": Point(1),
    "set": {1},
    "object": object(),
    "int key": {1: "one"},
    "None key": {None: 1},
    "tuple key": {(1,): 1},
    "reserved key": {BINARY_KEY: 0},
    "nested reserved key": [{"a": {BINARY_KEY: 0, "b": 1}}],
    "lone surrogate": "\ud800",
    "lone surrogate key": {"\udc00": 1},
}


@pytest.mark.parametrize("value", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_encode_accepts_what_stdlib_accepts(value: Any) -> None:
    message = {"v": value}
    assert encode(message) == _encode_stdlib(message)
    assert decode(encode(message)) == json.loads(json.dumps(message))


@pytest.mark.parametrize("value", REJECTED.values(), ids=REJECTED.keys())
def test_encode_rejects_non_json(value: Any) -> None:
    for message in ({"v": value}, {"v": [{"w": value}]}):
        with pytest.raises(ProtocolError):
            encode(message)
        with pytest.raises(ProtocolError):
            _encode_stdlib(message)


@fast_path
@pytest.mark.parametrize(
    "value",
    [v for k, v in REJECTED.items() if "key" not in k and "surr" not in k],
)
def test_fast_walk_leaves_non_json_to_stdlib(value: Any) -> None:
    assert sandbox.codec._count_binary_if_plain({"v": [value]}) is None


@fast_path
@pytest.mark.parametrize(
    "value", ["x" * 4096, b"x" * 4096, ["x" * 2048, b"x" * 2048]]
)
def test_encode_rejects_size_floor_over_limit(value: Any) -> None:
    # 4096 characters or bytes, and the key "v".
    with pytest.raises(ProtocolError, match="at least 4097 bytes"):
        encode({"v": value}, max_bytes=4000)


@fast_path
@pytest.mark.parametrize(
    ("text", "to_orjson"),
    [("a" * 3900, True), ('"' * 2000, False), ("\x01" * 700, False)],
)
def test_fast_encode_only_below_size_ceiling(
    text: str, to_orjson: bool
) -> None:
    # Past the ceiling the standard library encodes, which raises
    # MemoryError where orjson would crash the process.
    payload = sandbox.codec._encode_fast({"v": text}, 4000)
    assert (payload is not None) is to_orjson


def test_encode_reports_nan_as_stdlib_does() -> None:
    with pytest.raises(ProtocolError, match="not JSON compliant"):
        encode({"x": [1.0, math.nan]})


def test_encode_rejects_reserved_key_by_name() -> None:
    with pytest.raises(ProtocolError, match="reserved"):
        encode({"a": [{BINARY_KEY: 0}]})


def test_encode_rejects_int_key_by_name() -> None:
    with pytest.raises(ProtocolError, match="keys must be str"):
        encode({"a": {1: "one"}})


def _nested(depth: int, leaf: Any) -> dict[str, Any]:
    """Return an object nesting ``depth`` levels, ``leaf`` innermost."""
    value = leaf
    for _ in range(depth - 1):
        value = [value]
    return {"k": value}


def test_encode_depth_limit_is_exact() -> None:
    assert decode(encode(_nested(MAX_DEPTH, 1))) == _nested(MAX_DEPTH, 1)
    with pytest.raises(ProtocolError, match="deeper"):
        encode(_nested(MAX_DEPTH + 1, 1))


def test_binary_marker_counts_as_a_level() -> None:
    inner = _nested(MAX_DEPTH - 1, b"x")
    assert decode(encode(inner)) == inner
    with pytest.raises(ProtocolError, match="deeper"):
        encode(_nested(MAX_DEPTH, b"x"))


EXOTIC_VALUES = st.sampled_from(
    [*ACCEPTED.values(), *REJECTED.values(), b"", b"\x00\xff", bytearray(3)]
)
ENCODE_INPUTS = st.recursive(
    JSON_SCALARS | EXOTIC_VALUES | st.just(math.nan),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=3), ENCODE_INPUTS, max_size=4))
def test_encode_agrees_with_stdlib(message: dict[str, Any]) -> None:
    try:
        expected = decode(_encode_stdlib(message))
    except ProtocolError:
        with pytest.raises(ProtocolError):
            encode(message)
        return
    assert repr(decode(encode(message))) == repr(expected)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(PLAIN_KEYS, JSON_VALUES, max_size=5))
def test_encode_output_is_plain_json(message: dict[str, Any]) -> None:
    payload = encode(message)
    assert json.loads(payload) == message
    assert repr(decode(payload)) == repr(decode(_encode_stdlib(message)))


# -- binary frames ---------------------------------------------------------


def test_bytes_round_trip_as_attachments() -> None:
    data = os.urandom(1000)
    message = make_result(3, {"blob": data, "parts": [b"", b"a", {"b": data}]})
    payload = encode(message)
    assert payload[:1] == BINARY_FRAME_MARK
    # Raw bytes, neither base64 nor JSON escapes.
    assert data in payload
    assert len(payload) < 2 * len(data) + 200
    assert decode(payload) == message


@pytest.mark.parametrize(
    "value",
    [
        bytearray(b"mutable"),
        memoryview(b"view"),
        memoryview(b"0123456789")[::3],
        memoryview(bytes(range(24))).cast("B", (2, 3, 4)),
        memoryview(struct.pack("3i", 1, 2, 3)).cast("i"),
    ],
    ids=["bytearray", "view", "strided", "3-d", "int-items"],
)
def test_bytes_like_values_arrive_as_bytes(value: Any) -> None:
    received = decode(encode({"v": value, "w": [value]}))
    expected = bytes(value)
    assert received == {"v": expected, "w": [expected]}
    assert type(received["v"]) is bytes


def test_stdlib_path_writes_same_binary_frame() -> None:
    message = make_request(1, "m", {"data": b"\x00\x01", "more": [b"z"]})
    assert _encode_stdlib(message) == encode(message)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_decode_accepts_buffer_payload(kind: Any) -> None:
    payload = encode({"a": [1, b"\x00"]})
    assert decode(kind(payload)) == {"a": [1, b"\x00"]}


def test_plain_message_has_no_frame_mark() -> None:
    assert encode({"a": "bytes"}) == b'{"a":"bytes"}'


def test_request_with_bytes_params_validates() -> None:
    message = decode(encode(make_request(9, "store", {"data": b"\xff"})))
    assert validate_request(message).params == {"data": b"\xff"}


@settings(max_examples=200, deadline=None)
@given(JSON_WITH_BYTES)
def test_binary_round_trip(value: Any) -> None:
    message = {"v": value}
    assert decode(encode(message)) == message
    assert decode(_encode_stdlib(message)) == message


def _marker_text(*indexes: int, padding: int = 0) -> bytes:
    markers = ",".join(f'{{"{BINARY_KEY}":{i}}}' for i in indexes)
    return f'{{"v":[{markers}]}}'.encode() + b" " * padding


def test_hand_built_frame_decodes() -> None:
    payload = _frame(_marker_text(1, 0), [2, 3], b"ab" + b"cde")
    assert decode(payload) == {"v": [b"cde", b"ab"]}


HOSTILE_FRAMES = {
    "header only": BINARY_FRAME_MARK,
    "short header": BINARY_FRAME_MARK + b"\x00\x00\x01",
    "no attachments": _frame(b"{}", [], b""),
    "count beyond the payload": BINARY_FRAME_MARK
    + struct.pack(">I", 2**32 - 1)
    + b"{}",
    "table cut short": BINARY_FRAME_MARK + struct.pack(">II", 3, 1) + b"x",
    "index out of range": _frame(_marker_text(1), [1], b"x"),
    "negative index": _frame(_marker_text(-1), [1], b"x"),
    "lengths beyond the payload": _frame(_marker_text(0), [2**32 - 1], b"x"),
    # Summed modulo 2**32, the lengths would match the 3 bytes sent.
    "lengths that wrap at 32 bits": _frame(
        _marker_text(0, 1), [2**32 - 1, 4], b"abc"
    ),
    # Python slices with a negative start would still find the JSON text.
    "length one past the payload": _frame(
        _marker_text(0), [len(_frame(_marker_text(0), [0], b"x")) + 1], b"x"
    ),
    "no room for JSON": _frame(b"", [1], b"x"),
    "length reaching into JSON": _frame(_marker_text(0), [14], b"x"),
    "index twice": _frame(_marker_text(0, 0), [1, 1], b"xy"),
    "index twice, one attachment": _frame(_marker_text(0, 0), [1], b"x"),
    "attachment never referenced": _frame(
        _marker_text(0, padding=16), [1, 1], b"xy"
    ),
    "bool index": _frame(b'{"v":{"$bytes":true}}', [1], b"x"),
    "float index": _frame(b'{"v":{"$bytes":0.0}}', [1], b"x"),
    "string index": _frame(b'{"v":{"$bytes":"0"}}', [1], b"x"),
    "marker with extra key": _frame(b'{"v":{"$bytes":0,"len":1}}', [1], b"x"),
    "message is a marker": _frame(b'{"$bytes":0}', [1], b"x"),
    "invalid JSON": _frame(b'{"v":{"$bytes":0}', [1], b"x"),
    "duplicate key in marker": _frame(
        b'{"v":{"$bytes":0,"$bytes":0}}', [1], b"x"
    ),
    "plain frame with reserved key": b'{"v":{"$bytes":0}}',
    "plain frame with escaped reserved key": b'{"v":{"\\u0024bytes":0}}',
    "plain frame with reserved key at top": b'{"$bytes":0}',
}


@pytest.mark.parametrize(
    "payload", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys()
)
def test_hostile_frames_rejected(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (HOSTILE_FRAMES["index out of range"], "out of range"),
        (HOSTILE_FRAMES["lengths that wrap at 32 bits"], "attachment bytes"),
        (HOSTILE_FRAMES["count beyond the payload"], "4294967295"),
        (HOSTILE_FRAMES["index twice, one attachment"], "twice"),
        (HOSTILE_FRAMES["length one past the payload"], "attachment bytes"),
        (HOSTILE_FRAMES["message is a marker"], "itself be a binary marker"),
        (HOSTILE_FRAMES["attachment never referenced"], "never referenced"),
        (HOSTILE_FRAMES["bool index"], "marker must be"),
        (HOSTILE_FRAMES["plain frame with reserved key"], "reserved"),
        (HOSTILE_FRAMES["plain frame with escaped reserved key"], "reserved"),
    ],
)
def test_hostile_frame_errors_name_the_fault(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(payload)


def test_key_ending_in_reserved_name_accepted() -> None:
    # Its canonical text contains '"$bytes":' after an escaped quote.
    message = {'x"$bytes': 1, "$bytesx": 2, "v": "$bytes"}
    assert decode(encode(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_arbitrary_binary_frames(tail: bytes) -> None:
    try:
        result = decode(BINARY_FRAME_MARK + tail)
    except ProtocolError:
        return
    assert type(result) is dict


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=5), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=5),
    st.lists(st.integers(min_value=-2, max_value=5), max_size=5),
)
def test_mangled_tables_and_markers(
    attachments: list[bytes], lengths: list[int], indexes: list[int]
) -> None:
    payload = _frame(_marker_text(*indexes), lengths, b"".join(attachments))
    try:
        result = decode(payload)
    except ProtocolError:
        return
    # Accepted only when every attachment has one marker. The attachments
    # are then the payload's last bytes, cut at the lengths in the table.
    assert sorted(indexes) == list(range(len(lengths)))
    in_table_order = [
        result["v"][indexes.index(i)] for i in range(len(lengths))
    ]
    assert [len(item) for item in in_table_order] == lengths
    assert b"".join(in_table_order) == payload[len(payload) - sum(lengths) :]


@pytest.mark.parametrize(
    "payload", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys()
)
def test_hostile_frames_rejected_in_place(payload: bytes) -> None:
    # Transports hand large frames over in a bytearray, parsed in place.
    with pytest.raises(ProtocolError):
        sandbox.codec._decode_owned(bytearray(payload))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.booleans())
def test_decode_in_place_agrees_with_decode(tail: bytes, binary: bool) -> None:
    payload = BINARY_FRAME_MARK + tail if binary else b'{"v":' + tail + b"}"
    in_place = _outcome(sandbox.codec._decode_owned, bytearray(payload))
    assert in_place == _outcome(decode, payload)


@settings(max_examples=200, deadline=None)
@given(JSON_WITH_BYTES)
def test_binary_round_trip_in_place(value: Any) -> None:
    message = {"v": value}
    decoded = sandbox.codec._decode_owned(bytearray(encode(message)))
    assert decoded == message
    assert not _holds_bytearray(decoded)


def _holds_bytearray(value: Any) -> bool:
    if type(value) is bytearray:
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list) and any(map(_holds_bytearray, value))


def _channel_pair(max_bytes: int) -> tuple[Channel, Channel]:
    left, right = os.pipe(), os.pipe()
    near = StreamTransport(right[0], left[1], max_message_bytes=max_bytes)
    far = StreamTransport(left[0], right[1], max_message_bytes=max_bytes)
    return (
        Channel(near, max_message_bytes=max_bytes),
        Channel(far, max_message_bytes=max_bytes),
    )


def test_attachments_count_towards_message_limit() -> None:
    host, worker = _channel_pair(4096)
    try:
        with pytest.raises(ProtocolError, match="exceeds the maximum"):
            host.send_request("m", {"data": b"x" * 4096})
        call_id = host.send_request("m", {"data": b"x" * 3000})
        request = validate_request(worker.receive(timeout=5))
        assert request.params == {"data": b"x" * 3000}
        worker.send_result(call_id, [b"y" * 100])
        reply = validate_response(host.receive(timeout=5), call_id)
        assert reply.result == [b"y" * 100]
    finally:
        host.close()
        worker.close()


# -- fallbacks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocked", "fast_encode", "fast_decode"),
    [("orjson", False, False), ("sandbox._native", True, False)],
)
def test_codec_works_without_optional_module(
    blocked: str, fast_encode: bool, fast_decode: bool
) -> None:
    result = run_python(
        f"""
        import sys
        sys.modules[{blocked!r}] = None
        from sandbox import channel, codec
        from sandbox.errors import ProtocolError
        print(codec._FAST_ENCODE, codec._FAST_DECODE)
        message = {{"a": [1, 2.5, None, "é"], "b": b"\\x00\\xff"}}
        print(channel.decode(channel.encode(message)) == message)
        accepted = []
        for payload in (b'{{"a":1,"a":2}}', b'{{"x":NaN}}', b'[' * 99999,
                        b'{{"$bytes":0}}', b'{{"x":' + b'9' * 5000 + b'}}'):
            try:
                channel.decode(payload)
                accepted.append(payload[:10])
            except ProtocolError:
                pass
        print(accepted)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{fast_encode} {fast_decode}"
    assert lines[1] == "True"
    assert lines[2] == "[]"


# -- bytes through a real worker -------------------------------------------

BINARY_SOURCE = """
    import sandbox.codec


    def echo(data):
        return {"data": data, "length": len(data), "type": type(data).__name__}


    def codec():
        return [sandbox.codec._FAST_ENCODE, sandbox.codec._FAST_DECODE]
"""


@pytest.fixture
def binary_host(make_host: HostFactory, write_plugin: PluginWriter) -> Any:
    write_plugin("binary", BINARY_SOURCE, ["echo", "codec"])
    return make_host({"defaults": {"max_message_bytes": 4 * MIB}})


def test_megabyte_of_bytes_through_worker(binary_host: Any) -> None:
    data = os.urandom(MIB)
    result = binary_host.execute_plugin("binary", "echo", {"data": data})
    assert result == {"data": data, "length": MIB, "type": "bytes"}


def test_worker_uses_fast_codec(binary_host: Any) -> None:
    expected = [sandbox.codec._FAST_ENCODE, sandbox.codec._FAST_DECODE]
    assert binary_host.execute_plugin("binary", "codec") == expected


def test_worker_path_holds_orjson_parent_folder() -> None:
    from sandbox import runtime

    package = os.path.dirname(os.path.realpath(orjson.__file__))
    paths = runtime._package_paths()
    assert os.path.dirname(package) in paths
    assert package not in paths


# -- benchmark -------------------------------------------------------------


def test_codec_benchmark_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "codec.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert len(rows) >= 13
    for row in rows:
        timings = [float(cell) for cell in row[-2:] if cell != "-"]
        assert timings
        assert min(timings) > 0
