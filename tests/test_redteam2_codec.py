"""Replies that JSON escapes or long keys make larger than they look.

orjson crashes the process with SIGSEGV when its output buffer cannot
grow, so the worker's encoder bounds a reply's size before orjson runs.
Keys count towards the floor. A reply whose escapes could push it past
max_message_bytes goes to the standard library, which raises
MemoryError instead. A worker near its memory limit must fail the call
with a typed error, never die of SIGSEGV.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from conftest import HostFactory, PluginWriter
from sandbox import SandboxError

RUNNER = """
ballast = []


def reply_near_limit(free_mb, size, kind):
    # Take memory until RLIMIT_AS stops it, then free ``free_mb`` MiB.
    while True:
        try:
            ballast.append(bytearray(1 << 20))
        except MemoryError:
            break
    del ballast[-free_mb:]
    if kind == "key":
        return {"k" * size: 1}
    return "\\x01" * size
"""

# A 6 MiB key, which the floor does not count, and a string just under
# the 1 MiB maximum whose escapes take 6 MiB.
CASES = {
    "dict key": {"free_mb": 12, "size": 6 << 20, "kind": "key"},
    "control characters": {
        "free_mb": 8,
        "size": (1 << 20) - 64,
        "kind": "control",
    },
}


@pytest.mark.parametrize("params", CASES.values(), ids=CASES.keys())
def test_expanding_reply_fails_cleanly(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    params: dict[str, Any],
) -> None:
    write_plugin("expander", RUNNER, ["reply_near_limit"])
    host = make_host(
        {
            "plugins": {
                "expander": {
                    "resources": {"memory_mb": 128},
                    "max_message_bytes": 1 << 20,
                }
            }
        }
    )
    with pytest.raises(SandboxError) as raised:
        host.execute_plugin("expander", "reply_near_limit", params)
    crash_signal = getattr(raised.value, "signal", None)
    assert crash_signal != signal.SIGSEGV, str(raised.value)
