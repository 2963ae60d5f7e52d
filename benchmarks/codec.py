"""Measure the per-message cost of the channel's JSON codec.

Each row encodes or decodes one message many times and prints the best
per-message time of several repeats, in microseconds. The messages are a
100-byte JSON-RPC request and results of about 10 KiB and 1 MiB (a list of
records with strings, integers, floats, booleans and nulls), plus a 1 MiB
``bytes`` value. Codecs, side by side in one run:

- ``sandbox.channel``: encode() and decode() as the channel calls them,
  with orjson and the C scan when both are available;
- ``stdlib strict``: the channel's standard-library path, which is what
  runs without orjson or the C extension;
- ``orjson, no checks`` and ``json, no checks``: the bare libraries with
  their defaults, a floor that accepts duplicate keys, NaN and deep
  nesting;
- for the binary message, ``stdlib + base64``: the bytes as a base64 string
  inside strict JSON, which is what a plugin had to do before attachments.

Usage: python benchmarks/codec.py [--seconds S] [--smoke]. Needs the
package importable (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox import channel
from sandbox import codec as channel_codec

try:
    import orjson
except ImportError:
    orjson = None  # type: ignore[assignment]

KIB = 1024
MIB = 1024 * KIB
REPEATS = 5


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def stdlib_strict_encode(message: Any) -> bytes:
    return channel_codec._encode_stdlib(message)


def stdlib_strict_decode(payload: bytes) -> Any:
    text, attachments = channel_codec._split_frame(payload)
    message = channel_codec._decode_stdlib(
        text, markers_allowed=bool(attachments)
    )
    if attachments:
        channel_codec._restore_binary(message, attachments)
    return message


def base64_encode(message: dict[str, Any]) -> bytes:
    data = message["result"]["data"]
    as_text = {**message, "result": {"data": base64.b64encode(data).decode()}}
    return channel_codec._encode_stdlib(as_text)


def base64_decode(payload: bytes) -> Any:
    message = stdlib_strict_decode(payload)
    result = message["result"]
    result["data"] = base64.b64decode(result["data"], validate=True)
    return message


def json_encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def codecs_for(binary: bool) -> list[Codec]:
    codecs = [
        Codec("sandbox.channel", channel.encode, channel.decode),
        Codec("stdlib strict", stdlib_strict_encode, stdlib_strict_decode),
    ]
    if binary:
        return [
            *codecs,
            Codec("stdlib + base64", base64_encode, base64_decode),
        ]
    if orjson is not None:
        codecs.append(Codec("orjson, no checks", orjson.dumps, orjson.loads))
    codecs.append(Codec("json, no checks", json_encode, json.loads))
    return codecs


def request_message() -> dict[str, Any]:
    return channel.make_request(
        1, "send_alert", {"message": "Build completed", "level": "info"}
    )


def records_message(size: int) -> dict[str, Any]:
    """Return a result whose compact JSON is just above ``size`` bytes."""
    rows: list[dict[str, Any]] = []
    message = channel.make_result(7, {"rows": rows})
    while len(json_encode(message)) < size:
        for index in range(len(rows), len(rows) + 16):
            rows.append(
                {
                    "id": index,
                    "name": f"item-{index}",
                    "score": index * 0.25 + 0.1,
                    "tags": ["a", "b\u00e9"],
                    "active": index % 2 == 0,
                    "note": None,
                }
            )
    return message


def binary_message(size: int) -> dict[str, Any]:
    return channel.make_result(7, {"data": os.urandom(size)})


def best_microseconds(
    action: Callable[[Any], Any], argument: Any, seconds: float
) -> float:
    """Return the best mean time of one call over REPEATS timed loops."""
    started = time.perf_counter()
    action(argument)
    single = max(time.perf_counter() - started, 1e-7)
    loops = max(1, int(seconds / REPEATS / single))
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(loops):
            action(argument)
        best = min(best, (time.perf_counter() - started) / loops)
    return best * 1e6


def measure(
    label: str, message: dict[str, Any], binary: bool, seconds: float
) -> None:
    payload = channel.encode(message)
    for codec in codecs_for(binary):
        encoded = codec.encode(message)
        if codec.decode(encoded) != message:
            raise SystemExit(f"{codec.name} does not round-trip {label}")
        encode_us = best_microseconds(codec.encode, message, seconds)
        decode_us = best_microseconds(codec.decode, encoded, seconds)
        print_row(label, codec.name, len(encoded), encode_us, decode_us)
    if label == "100 B":
        validate_us = best_microseconds(
            lambda data: channel.validate_request(channel.decode(data)),
            payload,
            seconds,
        )
        print(f"{label:8} {'channel + validate_request':26} "
              f"{len(payload):9d} {'-':>11} {validate_us:11.2f}")  # fmt: skip


def print_row(
    label: str, name: str, size: int, encode_us: float, decode_us: float
) -> None:
    print(f"{label:8} {name:26} {size:9d} {encode_us:11.2f} {decode_us:11.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="time spent per measured operation, in seconds (default 1)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="spend 0.02 s per operation, only to check that it runs",
    )
    args = parser.parse_args(argv)
    seconds = 0.02 if args.smoke else args.seconds
    print(
        f"python {platform.python_version()}, orjson "
        f"{getattr(orjson, '__version__', 'absent')}, "
        f"fast encode {channel_codec._FAST_ENCODE}, "
        f"fast decode {channel_codec._FAST_DECODE}, {platform.machine()}"
    )
    print(f"{'message':8} {'codec':26} {'bytes':>9} {'encode us':>11} "
          f"{'decode us':>11}")  # fmt: skip
    measure("100 B", request_message(), False, seconds)
    measure("10 KiB", records_message(10 * KIB), False, seconds)
    measure("1 MiB", records_message(MIB), False, seconds)
    measure("1 MiB bin", binary_message(MIB), True, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
