"""Encoding and strict decoding of the payloads that the channel carries.

The transports in sandbox.channel send each payload as one frame: a 4-byte
big-endian payload length followed by the payload. Each end treats every
byte from its peer as hostile, so decode() parses the JSON strictly (no
NaN, no duplicate keys, bounded nesting) and checks every length in a
binary payload before it slices or allocates.

The first byte of a payload distinguishes its two kinds:

- plain: the UTF-8 JSON text of one object, which never starts with 0x00.
- binary: the byte 0x00, a 4-byte big-endian attachment count n (1 or
  more), n 4-byte big-endian attachment lengths, the UTF-8 JSON text and
  then the n attachments back to back in index order. The JSON text is
  what lies between the length table and the attachments, at least one
  byte. Each bytes, bytearray or memoryview value of the message is
  replaced by the marker object {"$bytes": i}, where i is the index of its
  attachment. Every attachment has exactly one marker, and the receiver
  turns each marker back into bytes.

The key "$bytes" is reserved: any other object that uses it, in either kind
of payload, is a ProtocolError. Attachments count towards a channel's
max_message_bytes like the rest of the payload.

With orjson installed, encode() and decode() use it and add the checks it
lacks. The standard library's json decides every case that this fast path
leaves open, so both accept the same messages. The sandboxed worker imports
this module, so besides the standard library it imports only orjson and the
package's C extension, both optional.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import struct
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from sandbox.errors import ProtocolError

if TYPE_CHECKING:
    import orjson


MAX_DEPTH = 64
# CPython 3.11+ rejects longer int literals by default; 3.10 would parse them
# in quadratic time, so the decoder enforces the same bound everywhere.
_MAX_INT_DIGITS = 4300

BINARY_FRAME_MARK = b"\x00"
BINARY_KEY = "$bytes"
# The mark byte and the attachment count.
_BINARY_HEADER = struct.Struct(">BI")
# An attachment's 4-byte length plus its shortest marker, {"$bytes":0}.
_MIN_ATTACHMENT_COST = 4 + 12
_BytesLike = bytes | bytearray | memoryview
# The length table stores each attachment's length in 4 bytes.
_MAX_ATTACHMENT_LENGTH = 2**32 - 1


class MessageTooLarge(ProtocolError):
    """A message to send is larger than max_message_bytes."""


# -- value display in error messages ---------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlong = 80


def _show(value: object) -> str:
    """Return a repr of ``value`` cut to about 80 characters.

    reprlib bounds the work, so a huge or deeply nested value is safe to show.
    """
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


# -- JSON encoding and strict decoding -------------------------------------

# After escapes are removed, one JSON string or an unterminated one running
# to the end of the text. Because the closing quote is optional, a match
# that starts at a quote cannot fail, so the scan is linear even on text full
# of stray quotes.
_JSON_STRING = re.compile(r'"[^"]*"?')
_BRACKETS_AS_PARENTHESES = bytes.maketrans(b"[{]}", b"(())")
_NON_BRACKET_ASCII = bytes(set(range(128)) - set(b"[]{}"))
# A \uD800-\uDFFF escape, which may be half of a surrogate pair.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_depth(text: str) -> None:
    """Raise ProtocolError if the JSON text nests deeper than MAX_DEPTH.

    This runs before parsing because the parser recurses once per level, and
    a host that raised its recursion limit would overflow the C stack. For
    text the parser accepts, the count equals the real depth. On invalid
    text it is never below the depth the parser reaches before it stops.
    """
    # Text with no more opening brackets than the limit cannot nest deeper,
    # which spares the scan for almost every message.
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    brackets = _brackets_outside_strings(text)
    # Removing every adjacent "()" lowers the maximum nesting by exactly one
    # in balanced text and by at most one otherwise.
    levels = 0
    while b"()" in brackets:
        if levels == MAX_DEPTH:
            raise _too_deep()
        brackets = brackets.replace(b"()", b"")
        levels += 1
    # Without an adjacent pair, all closing brackets come before all opening
    # ones, so only the surplus of opening ones can nest further.
    levels += max(0, brackets.count(b"(") - brackets.count(b")"))
    if levels > MAX_DEPTH:
        raise _too_deep()


def _too_deep() -> ProtocolError:
    return ProtocolError(
        f"JSON nests deeper than the maximum of {MAX_DEPTH} levels"
    )


def _brackets_outside_strings(text: str) -> bytes:
    """Return the text's brackets outside strings, all as "(" and ")"."""
    # Dropping escaped backslashes first leaves every remaining backslash
    # before a quote as the escape of that quote.
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    without_strings = _JSON_STRING.sub("", unescaped)
    # Non-ASCII characters and ASCII other than brackets are dropped, since
    # anything left between two brackets would hide their nesting.
    ascii_only = without_strings.encode("ascii", "ignore")
    return ascii_only.translate(_BRACKETS_AS_PARENTHESES, _NON_BRACKET_ASCII)


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ProtocolError(
                    f"duplicate key in JSON object: {_show(key)}"
                )
            seen.add(key)
    return obj


def _object_without_marker(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _object_from_pairs(pairs)
    if BINARY_KEY in obj:
        raise _reserved_key_used()
    return obj


def _reserved_key_used() -> ProtocolError:
    return ProtocolError(
        f"JSON object key {BINARY_KEY!r} is reserved for binary attachments"
    )


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"JSON constant {name} is not allowed")


def _finite_float(literal: str) -> float:
    value = float(literal)
    # A literal such as 1e400 overflows to infinity without any constant.
    if not math.isfinite(value):
        raise ProtocolError(f"JSON number overflows a float: {_show(literal)}")
    return value


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        raise ProtocolError(
            f"JSON integer has more than {_MAX_INT_DIGITS} digits: "
            f"{_show(literal)}"
        )
    return int(literal)


def _strict_decoder(
    object_pairs_hook: Callable[[list[tuple[str, Any]]], dict[str, Any]],
) -> json.JSONDecoder:
    return json.JSONDecoder(
        object_pairs_hook=object_pairs_hook,
        parse_float=_finite_float,
        parse_int=_bounded_int,
        parse_constant=_reject_constant,
        strict=True,
    )


# Markers are only valid in a binary frame, where _restore_binary() checks
# and replaces them after parsing.
_DECODER = _strict_decoder(_object_without_marker)
_BINARY_FRAME_DECODER = _strict_decoder(_object_from_pairs)


class _BinaryValue(Exception):
    """The message contains bytes, which need an encoder that collects them."""


def _no_binary(value: object) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise _BinaryValue
    raise TypeError(
        f"Object of type {type(value).__name__} is not JSON serializable"
    )


def _stdlib_encoder(default: Callable[[Any], Any]) -> json.JSONEncoder:
    return json.JSONEncoder(
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
        default=default,
    )


_ENCODER = _stdlib_encoder(_no_binary)
_STR_ONLY = frozenset({str})
_EXACT_SCALARS = frozenset({str, int, float, bool, type(None)})


def encode(message: Mapping[str, Any], max_bytes: int | None = None) -> bytes:
    """Encode a message as one frame payload: compact UTF-8 JSON, followed
    by binary attachments when the message contains bytes-like values.

    Raises ProtocolError for values JSON cannot carry: NaN and infinities,
    lone surrogates, keys that are not strings, the reserved key "$bytes",
    non-JSON types, cycles and nesting deeper than MAX_DEPTH (a binary
    marker counts as one level). With ``max_bytes``, a message whose
    strings, keys and bytes alone exceed it is rejected before any
    encoding.
    """
    if type(message) is dict:
        if _FAST_ENCODE:
            payload = _encode_fast(message, max_bytes)
            if payload is not None:
                return payload
    elif not isinstance(message, Mapping):
        raise ProtocolError(
            f"message must be a JSON object, got {_json_type(message)}: "
            f"{_show(message)}"
        )
    return _encode_stdlib(message)


def _encode_stdlib(message: Mapping[str, Any]) -> bytes:
    """Encode with the standard library, which decides every case that
    _encode_fast() leaves to it and words its errors."""
    attachments: list[_BytesLike] = []
    try:
        try:
            text = _ENCODER.encode(message)
        except _BinaryValue:
            encoder = _stdlib_encoder(partial(_attach, attachments))
            text = encoder.encode(message)
        _check_depth(text)
        _check_keys_are_plain(message)
        data = text.encode("utf-8")
    except (ValueError, TypeError, RecursionError) as error:
        # UnicodeEncodeError (a lone surrogate) is a ValueError as well.
        raise ProtocolError(
            f"message cannot be encoded as JSON: {error}"
        ) from error
    return _binary_frame(data, attachments) if attachments else data


def _check_keys_are_plain(message: Mapping[str, Any]) -> None:
    """Raise for object keys json converts (1 becomes "1") or reserves.

    It runs after a successful encoding, so the message is a tree no deeper
    than MAX_DEPTH.
    """
    stack: list[Any] = [message]
    while stack:
        container = stack.pop()
        values = container
        if isinstance(container, dict):
            if not _STR_ONLY.issuperset(map(type, container)):
                _check_key_types(container)
            if BINARY_KEY in container:
                raise _reserved_key_used()
            values = container.values()
        for value in values:
            if type(value) in _EXACT_SCALARS:
                continue
            if isinstance(value, (dict, list, tuple)):
                stack.append(value)


def _check_key_types(container: dict[Any, Any]) -> None:
    for key in container:
        if not isinstance(key, str):
            raise TypeError(
                f"keys must be strings, got {_json_type(key)}: {_show(key)}"
            )


def _attach(attachments: list[_BytesLike], value: object) -> dict[str, int]:
    """Append a bytes-like value to ``attachments``; return its marker."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"Object of type {type(value).__name__} is not JSON serializable"
        )
    if type(value) is bytes:
        attachments.append(value)
    else:
        # A view keeps a bytearray from resizing until the frame is built,
        # so the length table matches the bytes written.
        view = memoryview(value)
        attachments.append(
            view.cast("B") if view.c_contiguous else view.tobytes()
        )
    return {BINARY_KEY: len(attachments) - 1}


def _binary_frame(text: bytes, attachments: list[_BytesLike]) -> bytes:
    count = len(attachments)
    try:
        table = struct.pack(f">{count + 1}I", count, *map(len, attachments))
    except struct.error as error:
        raise ProtocolError(
            f"binary attachment of more than {_MAX_ATTACHMENT_LENGTH} bytes "
            "cannot be sent"
        ) from error
    return b"".join((BINARY_FRAME_MARK, table, text, *attachments))


# Set by enable_fast_codec(): whether encode() uses orjson, and whether
# decode() uses orjson and the C scan.
_FAST_ENCODE = False
_FAST_DECODE = False
_ORJSON_OPTIONS = 0
_json_scan: Callable[[Any, int, int], int]
_buffer_of: Callable[[bytes | bytearray], Any]
_SCAN_TOO_DEEP = -1


def enable_fast_codec() -> bool:
    """Switch encode() to orjson, and decode() to orjson and the C scan, if
    they can be imported now; return whether decode() switched.

    This module calls it once when it is imported. The worker calls it
    again after its bootstrap has put the installed packages on sys.path.
    """
    global _FAST_ENCODE, _FAST_DECODE, _ORJSON_OPTIONS
    global orjson, _json_scan, _buffer_of, _SCAN_TOO_DEEP
    try:
        import orjson
    except ImportError:  # the standard library's json covers every case
        return False
    # Without these options, orjson serialises such values itself instead of
    # passing them to default, and so to the standard-library path.
    _ORJSON_OPTIONS = (
        orjson.OPT_PASSTHROUGH_DATACLASS
        | orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_SUBCLASS
    )
    _FAST_ENCODE = True
    try:
        from sandbox._native import ffi, lib

        _json_scan = lib.sandbox_json_scan
        _buffer_of = ffi.from_buffer
        _SCAN_TOO_DEEP = lib.SANDBOX_JSON_TOO_DEEP
    except (ImportError, AttributeError):  # no C extension, or an old one
        return False
    _FAST_DECODE = True
    return True


enable_fast_codec()

_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})
_CONTAINERS = frozenset({dict, list, tuple})
_BINARY_TYPES = frozenset({bytes, bytearray, memoryview})


def _encode_fast(
    message: dict[str, Any], max_bytes: int | None
) -> bytes | None:
    """Encode with orjson, or return None to leave the message to
    _encode_stdlib().

    orjson writes NaN as null, serialises enums, UUIDs and its own Fragment
    without calling ``default``, and rejects what the standard library
    accepts (int subclasses, integers beyond 64 bits). So a walk first
    admits only plain JSON values, and only MAX_DEPTH levels of them
    before orjson recurses.

    orjson 3.13 crashes the process with SIGSEGV when its output buffer
    cannot grow, as under a worker's RLIMIT_AS. So the walk also bounds
    the payload's size from below and above. A message whose floor
    exceeds ``max_bytes`` is rejected before anything is allocated. One
    whose ceiling exceeds it goes to the standard library, which raises
    MemoryError where orjson would crash.
    """
    plain = _count_binary_if_plain(message, sized=max_bytes is not None)
    if plain is None:
        return None
    binary_count, size_floor, size_ceiling = plain
    if max_bytes is not None and size_floor > max_bytes:
        raise MessageTooLarge(
            f"message of at least {size_floor} bytes exceeds the maximum "
            f"of {max_bytes}"
        )
    if (
        max_bytes is not None
        and size_ceiling > max_bytes
        and _escaped_size_ceiling(message) > max_bytes
    ):
        return None
    try:
        if binary_count == 0:
            return orjson.dumps(message, option=_ORJSON_OPTIONS)
        attachments: list[_BytesLike] = []
        text = orjson.dumps(
            message,
            default=partial(_attach, attachments),
            option=_ORJSON_OPTIONS,
        )
    except orjson.JSONEncodeError:
        return None
    return _binary_frame(text, attachments)


# Bytes the JSON text may spend on one value beyond its characters: a
# float's digits, quotes, a separator and a colon.
_VALUE_OVERHEAD = 32


def _text_ceiling(text: str) -> int:
    """Return the most bytes that JSON spends on ``text``, found by scans.

    Printable text takes its UTF-8 bytes (one a character in ASCII, at
    most four otherwise) plus a backslash before each quote and
    backslash. A control character may take six (a \\u escape).
    """
    length = len(text)
    if not text.isprintable():
        return 6 * length + _VALUE_OVERHEAD
    escaped = text.count('"') + text.count("\\")
    utf8_bytes = length if text.isascii() else 4 * length
    return utf8_bytes + escaped + _VALUE_OVERHEAD


def _escaped_size_ceiling(message: dict[str, Any]) -> int:
    """Return a tighter upper bound of a plain message's payload size.

    The scans cost about 3 ms a MiB of text, so this runs only when the
    quick bound of _count_binary_if_plain() is over the limit.
    """
    ceiling = 0
    pending: list[Any] = [message]
    while pending:
        container = pending.pop()
        values = container
        if type(container) is dict:
            ceiling += sum(_text_ceiling(key) for key in container)
            values = container.values()
        for value in values:
            kind = type(value)
            if kind is str:
                ceiling += _text_ceiling(value)
            elif kind in _CONTAINERS:
                pending.append(value)
            elif kind in _BINARY_TYPES:
                ceiling += memoryview(value).nbytes + _VALUE_OVERHEAD
            else:
                ceiling += _VALUE_OVERHEAD
    return ceiling


def _count_binary_if_plain(
    message: dict[str, Any], sized: bool = False
) -> tuple[int, int, int] | None:
    """Return the number of bytes-like values in ``message`` and, when
    ``sized``, the lower and upper bound of its payload's size (else 0).

    Returns None unless ``message`` is a tree of exact JSON types with
    finite floats, no reserved key and at most MAX_DEPTH levels of
    nesting. Summing the sizes costs about half a microsecond for a
    small message (measured with timeit), so it is done only when
    ``sized`` is true.
    """
    binary_count = 0
    # Characters of keys and strings plus bytes of attachments.
    size_floor = 0
    item_count = 0
    level: list[Any] = [message]
    for depth in range(1, MAX_DEPTH + 1):
        nested: list[Any] = []
        for container in level:
            values = container
            if type(container) is dict:
                if BINARY_KEY in container:
                    return None
                if sized:
                    try:
                        size_floor += sum(map(len, container))
                    except TypeError:  # a key orjson rejects anyway
                        return None
                values = container.values()
            if sized:
                item_count += len(container)
            for value in values:
                kind = type(value)
                if kind in _PLAIN_SCALARS:
                    if sized and kind is str:
                        size_floor += len(value)
                    continue
                if kind is float:
                    # inf - inf and nan - nan are nan, unequal to 0.0.
                    if value - value != 0.0:
                        return None
                elif kind in _CONTAINERS:
                    nested.append(value)
                elif kind in _BINARY_TYPES and depth < MAX_DEPTH:
                    # The marker object that replaces it is one level more.
                    binary_count += 1
                    if sized:
                        size_floor += memoryview(value).nbytes
                else:
                    return None
        if not nested:
            # Six bytes a character covers any \u escape.
            ceiling = 6 * size_floor + _VALUE_OVERHEAD * (item_count + 1)
            return binary_count, size_floor, ceiling
        level = nested
    return None


def decode(payload: bytes) -> dict[str, Any]:
    """Parse one frame payload strictly into a JSON object.

    The payload must be plain or a well-formed binary payload. Its JSON
    text must be valid UTF-8 with exactly one object, and without NaN,
    infinities, duplicate keys, lone surrogates, integers of more than 4300
    digits or nesting deeper than MAX_DEPTH. Anything else raises
    ProtocolError. Binary markers come back as bytes.
    """
    if type(payload) is not bytes:
        # A bytearray the caller still uses could change under the parser.
        payload = bytes(payload)
    return _decode_owned(payload)


def _decode_owned(payload: bytes | bytearray) -> dict[str, Any]:
    """Do what decode() does, to a payload that no other code holds.

    A bytearray is parsed in place: the transports return large frames
    in one, and copying them again would cost as much as receiving them.
    """
    if type(payload) is not bytes and type(payload) is not bytearray:
        payload = bytes(payload)
    text, attachments = _split_frame(payload)
    markers_allowed = bool(attachments)
    message = None
    if _FAST_DECODE:
        message = _decode_fast(text, markers_allowed=markers_allowed)
    if message is None:
        message = _decode_stdlib(text, markers_allowed=markers_allowed)
    if attachments:
        _restore_binary(message, attachments)
    return message


def _decode_stdlib(
    text: bytes | bytearray, *, markers_allowed: bool
) -> dict[str, Any]:
    try:
        string = text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(
            f"payload is not valid UTF-8: {error.reason} at byte "
            f"{error.start}: {_show(text[error.start : error.start + 8])}"
        ) from error
    _check_depth(string)
    decoder = _BINARY_FRAME_DECODER if markers_allowed else _DECODER
    try:
        value = decoder.decode(string)
    except (ValueError, RecursionError) as error:
        raise ProtocolError(_parse_failure_message(string, error)) from error
    if type(value) is not dict:
        raise _not_an_object(value)
    if _SURROGATE_ESCAPE.search(string):
        _check_no_lone_surrogates(value)
    return value


def _not_an_object(value: object) -> ProtocolError:
    return ProtocolError(
        f"message must be a JSON object, got {_json_type(value)}: "
        f"{_show(value)}"
    )


def _parse_failure_message(text: str, error: Exception) -> str:
    if isinstance(error, RecursionError):
        return f"payload nests too deeply to parse: {_show(text)}"
    # JSONDecodeError gives the offset; other ValueErrors (an int over
    # sys.get_int_max_str_digits()) do not.
    position = getattr(error, "pos", 0)
    near = text[max(0, position - 20) : position + 40]
    return f"payload is not valid JSON: {error}, near {_show(near)}"


def _check_no_lone_surrogates(value: dict[str, Any]) -> None:
    # Escaped surrogate pairs are valid and common, so only re-encoding
    # distinguishes a lone surrogate. This runs only when an escape is found.
    try:
        _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError as error:
        raise ProtocolError(
            "JSON string contains a lone surrogate: "
            f"{_show(error.object[error.start : error.end])}"
        ) from error


def _decode_fast(
    text: bytes | bytearray, *, markers_allowed: bool
) -> dict[str, Any] | None:
    """Parse with orjson, or return None to leave the text to
    _decode_stdlib(), which then raises with the precise reason.

    orjson keeps the last of duplicate keys and turns integers beyond 64
    bits into floats, so the scan in csrc/jsonscan.c runs first: it bounds
    the depth before orjson recurses, counts the members the text declares
    and flags long integers. Re-encoding the result and scanning it again
    counts the members orjson kept, which is lower when a key repeats.
    """
    # cffi passes bytes as char * itself; a bytearray needs a buffer.
    scanned = text if type(text) is bytes else _buffer_of(text)
    members = _json_scan(scanned, len(text), MAX_DEPTH)
    if members == _SCAN_TOO_DEEP:
        raise _too_deep()
    if members < 0:  # a long integer, which orjson may turn into a float
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict:
        raise _not_an_object(value)
    if members == 0:
        return value
    canonical = orjson.dumps(value)
    # Text that orjson wrote, as every peer of this package does, comes
    # back byte for byte, and so with the same members.
    if (
        canonical != text
        and _json_scan(canonical, len(canonical), MAX_DEPTH) != members
    ):
        return None
    # Canonical output writes the key unescaped; a key that merely ends in
    # an escaped quote and "$bytes" is sent to the exact check as well.
    # Looking for "$" first is a memchr(): the search for the whole key
    # took 0.3 ms on a 1 MiB string of one repeated letter.
    if not markers_allowed and b"$" in canonical and b'"$bytes":' in canonical:
        return None
    return value


# -- binary frames ---------------------------------------------------------


def _split_frame(
    payload: bytes | bytearray,
) -> tuple[bytes | bytearray, list[bytes]]:
    """Return a payload's JSON text and its attachments, checking bounds
    before anything is sliced or allocated."""
    if not payload or payload[0] != BINARY_FRAME_MARK[0]:
        return payload, []
    size = len(payload)
    if size < _BINARY_HEADER.size:
        raise ProtocolError(
            f"binary frame of {size} bytes is shorter than its "
            f"{_BINARY_HEADER.size}-byte header"
        )

    count: int = _BINARY_HEADER.unpack_from(payload)[1]
    if not 1 <= count <= (size - _BINARY_HEADER.size) // _MIN_ATTACHMENT_COST:
        raise ProtocolError(
            f"binary frame of {size} bytes declares {count} attachments; "
            "each needs a 4-byte length and a marker of at least 12 bytes"
        )

    table_end = _BINARY_HEADER.size + 4 * count
    lengths = struct.unpack_from(f">{count}I", payload, _BINARY_HEADER.size)
    text_end = size - sum(lengths)
    if text_end <= table_end:
        raise ProtocolError(
            f"binary frame declares {sum(lengths)} attachment bytes, but "
            f"only {size - table_end} bytes follow its length table, and "
            "the JSON text needs at least one"
        )

    # Each attachment is copied once, into bytes, from a bytearray too.
    view = memoryview(payload)
    attachments = []
    offset = text_end
    for length in lengths:
        attachments.append(view[offset : offset + length].tobytes())
        offset += length
    return payload[table_end:text_end], attachments


def _restore_binary(message: dict[str, Any], attachments: list[bytes]) -> None:
    """Replace every marker in ``message`` by its attachment, in place.

    Each attachment must be referenced by exactly one marker, and a marker
    is an object of the one key "$bytes" with an integer index.
    """
    if BINARY_KEY in message:
        raise ProtocolError("a message cannot itself be a binary marker")
    used = [False] * len(attachments)
    stack: list[Any] = [message]
    while stack:
        container = stack.pop()
        slots = (
            container.items()
            if type(container) is dict
            else enumerate(container)
        )
        for slot, value in slots:
            if type(value) is dict and BINARY_KEY in value:
                container[slot] = _attachment_for(value, attachments, used)
            elif type(value) is dict or type(value) is list:
                stack.append(value)
    if not all(used):
        raise ProtocolError(
            f"binary attachment {used.index(False)} is never referenced"
        )


def _attachment_for(
    marker: dict[str, Any], attachments: list[bytes], used: list[bool]
) -> bytes:
    index = marker[BINARY_KEY]
    if len(marker) != 1 or type(index) is not int:
        raise ProtocolError(
            f'binary marker must be {{"{BINARY_KEY}": index}}, got '
            f"{_show(marker)}"
        )
    if not 0 <= index < len(attachments):
        raise ProtocolError(
            f"binary marker index {index} is out of range: the frame has "
            f"{len(attachments)} attachments"
        )
    if used[index]:
        raise ProtocolError(f"binary attachment {index} is referenced twice")
    used[index] = True
    return attachments[index]
