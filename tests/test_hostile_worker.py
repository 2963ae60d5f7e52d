"""A hostile worker against the host: faults injected into its own channel.

The hostile plugin runs in a real sandboxed worker and reaches its end of
the channel as native code could. On shared memory it writes the rings'
mapping, which it finds through the worker's own transport object because
Landlock hides /proc. On the stream transport it writes the socket at
descriptor 3. Each test drives one fault by parameter while a
bystander plugin answers a steady stream of echo calls. Every test checks
that the hostile call ends in the expected typed error, that only the
hostile worker was killed and replaced, that the bystander lost no call,
and that the host's descriptors, threads, children, channel mappings,
scratch folders and memory return to their baseline.

Run under both transports with --transport; the ring attacks skip on the
stream transport.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from conftest import HostFactory, PluginWriter
from sandbox import (
    PluginCrashed,
    PluginHost,
    PluginTimeout,
    ProtocolError,
    SandboxError,
)

# Large enough for the requests that must overrun a 1 MiB ring.
HOSTILE_MAX_BYTES = 4 << 20
BIG_PARAM = "p" * (3 << 19)
# Bounds for waits that end early when the code works.
PATIENCE = 10.0
# The call timeout of attacks that are expected to time out.
SHORT = 0.5
# Host memory may grow this much during one attack. An allocation of a
# declared size (2 GiB and more) cannot hide below it.
RSS_SLACK = 32 << 20
TRACED_PEAK_LIMIT = 256 << 10
# orjson 3.13 peaked at 13 times the size of a 600 KB reply it parsed
# (measured with tracemalloc), so a legitimate reply of 600 KB stays far
# below this limit, and a copy of a flipped length of 2 GiB cannot.
TRACED_REPLY_LIMIT = 64 << 20

HOSTILE_SOURCE = r'''
import ctypes
import gc
import json
import os
import select
import struct
import sys
import threading
import time

from sandbox.channel import Channel, encode, make_result

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_FUTEX = {"x86_64": 202, "aarch64": 98}[os.uname().machine]
_FUTEX_WAKE = 1
_STREAM_FD = 3
_LONG = 60.0
# Offsets as csrc/ring.h lays out the segment.
_WORKER_CLOSED = 128
_TO_WORKER_CONTROL = 256
_TO_HOST_CONTROL = 512
_CONSUMER = 64
_DATA_SEQUENCE = 132
_SPACE_SEQUENCE = 196
_DATA_START = 4096
_found = []


def _transport():
    if not _found:
        for thing in gc.get_objects():
            if isinstance(thing, Channel):
                _found.append(thing._transport)
                break
    return _found[0]


def _rings():
    transport = _transport()
    if type(transport).__name__ != "ShmTransport":
        return None
    return _Rings(transport)


class _Rings:
    """The worker's mapping of the segment, written word by word."""

    def __init__(self, transport):
        from sandbox.shm import ffi

        self.endpoint = transport._endpoint
        base = int(ffi.cast("uintptr_t", transport._segment.base))
        self.base = base
        self.to_worker = ctypes.c_uint64.from_address(base + 8).value
        self.to_host = ctypes.c_uint64.from_address(base + 16).value
        self.control = base + _TO_HOST_CONTROL
        self.data = base + _DATA_START + self.to_worker
        self.producer = ctypes.c_uint64.from_address(self.control)
        self.host_consumer = ctypes.c_uint64.from_address(
            self.control + _CONSUMER
        )
        to_worker_control = base + _TO_WORKER_CONTROL
        self.host_producer = ctypes.c_uint64.from_address(to_worker_control)
        self.worker_consumer = ctypes.c_uint64.from_address(
            to_worker_control + _CONSUMER
        )
        self.closed = ctypes.c_uint32.from_address(base + _WORKER_CLOSED)

    def put(self, position, data):
        offset = position % self.to_host
        first = min(len(data), self.to_host - offset)
        ctypes.memmove(self.data + offset, data[:first], first)
        ctypes.memmove(self.data, data[first:], len(data) - first)

    def publish(self, position):
        # The worker's own endpoint follows, so its later frames land
        # after these bytes.
        self.producer.value = position
        self.endpoint.out.own = position
        self.endpoint.out.published = position
        self.wake(self.control + _DATA_SEQUENCE)

    def wake(self, address):
        word = ctypes.c_uint32.from_address(address)
        word.value = (word.value + 1) & 0xFFFFFFFF
        _libc.syscall(
            _FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE, 2**31 - 1, 0
        )

    def write(self, data):
        position = self.endpoint.out.own
        deadline = time.monotonic() + _LONG
        while data:
            room = self.to_host - (position - self.host_consumer.value)
            if room <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the host stopped reading")
                time.sleep(0.001)
                continue
            chunk, data = data[:room], data[room:]
            self.put(position, chunk)
            position += len(chunk)
            self.publish(position)


def _stream_write(data):
    view = memoryview(data)
    while view:
        try:
            sent = os.write(_STREAM_FD, view)
        except BlockingIOError:
            select.select([], [_STREAM_FD], [])
            continue
        view = view[sent:]


def _raw_write(data):
    rings = _rings()
    if rings is None:
        _stream_write(data)
    else:
        rings.write(data)


def _frame(payload):
    return struct.pack(">I", len(payload)) + payload


def _json(message):
    return json.dumps(message, separators=(",", ":")).encode()


def _request_id():
    # The request in progress is the local "request" of Server.answer().
    frame = sys._getframe()
    while frame is not None:
        request = frame.f_locals.get("request")
        if hasattr(request, "id"):
            return request.id
        frame = frame.f_back
    raise RuntimeError("no request in progress")


def _in_background(target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def echo(value):
    return value


def write_and_wait(data_hex):
    _raw_write(bytes.fromhex(data_hex))
    time.sleep(_LONG)


def trickle(interval):
    # This call's reply, a byte at a time.
    reply = _frame(encode(make_result(_request_id(), "slow")))
    for byte in reply:
        _raw_write(bytes([byte]))
        time.sleep(interval)
    time.sleep(_LONG)


def corrupt_producer(mode):
    rings = _rings()
    own = rings.endpoint.out.own
    if mode == "past-capacity":
        rings.producer.value = own + rings.to_host + 1
    elif mode == "half-range":
        rings.producer.value = 2**63
    else:
        # Let the host take part of a frame, then move the index back.
        rings.write(_frame(b"x" * 100)[:14])
        deadline = time.monotonic() + _LONG
        while rings.host_consumer.value != own + 14:
            if time.monotonic() > deadline:
                raise TimeoutError("the host never took the bytes")
            time.sleep(0.001)
        rings.producer.value = own + 5
    rings.wake(rings.control + _DATA_SEQUENCE)
    time.sleep(_LONG)


def close_own_end():
    rings = _rings()
    if rings is None:
        _libc.shutdown(_STREAM_FD, 1)
    else:
        rings.closed.value = 1
        rings.wake(rings.control + _DATA_SEQUENCE)
    time.sleep(_LONG)


def _never_return(*args, **kwargs):
    time.sleep(_LONG)


def stop_reading(consumer):
    # The worker's main loop finds this in place of the transport's recv
    # once it has sent this call's reply.
    _transport().recv = _never_return
    rings = _rings()
    if consumer == "ahead":
        value = rings.host_producer.value + 2 * rings.to_worker
        rings.worker_consumer.value = value
    elif consumer == "backwards":
        rings.worker_consumer.value = 0
    elif consumer == "half-range":
        rings.worker_consumer.value = 2**63
    return "stopped"


def forge_after_reply(kind):
    transport = _transport()

    def send_with_forgery(payload, *, timeout=None):
        del transport.send
        reply_id = json.loads(bytes(payload))["id"]
        forged = {
            "next-id": {"jsonrpc": "2.0", "id": reply_id + 1, "result": 0},
            "same-id": {"jsonrpc": "2.0", "id": reply_id, "result": 0},
            "request": {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "capability.notify",
                "params": {"message": "forged"},
            },
        }
        if kind == "instead":
            data = _frame(_json(forged["next-id"]))
        else:
            data = _frame(bytes(payload)) + _frame(_json(forged[kind]))
        # One write, so the host finds both frames once it has the first.
        _raw_write(data)

    transport.send = send_with_forgery
    return "ok"


def _length_words(length):
    values = (length, 2**32 - 1, 2**31, 1, length - 1)
    return [struct.pack(">I", value) for value in values]


def flip_length_in_flight(size):
    # Flips the length word of this call's reply, from before the worker
    # writes the frame until the host has taken all of it.
    value = "x" * size
    length = len(encode(make_result(_request_id(), value)))
    rings = _rings()
    position = rings.endpoint.out.own
    end = position + 4 + length
    words = _length_words(length)
    deadline = time.monotonic() + 5.0

    def flip():
        index = 0
        while rings.host_consumer.value < end:
            if time.monotonic() > deadline:
                return
            rings.put(position, words[index % len(words)])
            index += 1

    _in_background(flip)
    return value


def _write_and_wait_taken(rings, data):
    rings.write(data)
    end = rings.endpoint.out.own
    deadline = time.monotonic() + _LONG
    while rings.host_consumer.value != end:
        if time.monotonic() > deadline:
            raise TimeoutError("the host stopped reading")
        time.sleep(0.001)


def flip_length_mid_frame(size, seconds):
    # Sends this call's reply in pieces, each once the host has taken the
    # one before. After the first half, the length word keeps changing.
    transport = _transport()
    rings = _rings()

    def send_in_pieces(payload, *, timeout=None):
        del transport.send
        data = _frame(bytes(payload))
        position = rings.endpoint.out.own
        half = 4 + len(payload) // 2
        _write_and_wait_taken(rings, data[:half])
        words = _length_words(len(payload))[1:]
        until = time.monotonic() + seconds
        index = 0
        while time.monotonic() < until:
            rings.put(position, words[index % len(words)])
            index += 1
        for start in range(half, len(data), 65536):
            rings.put(position, words[index % len(words)])
            index += 1
            _write_and_wait_taken(rings, data[start:start + 65536])

    transport.send = send_in_pieces
    return "x" * size


def wake_storm(seconds, reply_after):
    rings = _rings()
    addresses = (
        rings.control + _DATA_SEQUENCE,
        rings.base + _TO_WORKER_CONTROL + _SPACE_SEQUENCE,
    )
    deadline = time.monotonic() + seconds

    def storm():
        while time.monotonic() < deadline:
            for address in addresses:
                rings.wake(address)

    _in_background(storm)
    time.sleep(_LONG if reply_after is None else reply_after)
    return "after the storm"


def tiny_frames(count):
    _raw_write(_frame(b"1") * count)
    time.sleep(_LONG)


def capability_flood(count):
    transport = _transport()

    def drain():
        while True:
            transport.recv(None)

    # The host's replies go unread by the plugin, but are drained, so the
    # host never waits for room to send them.
    _in_background(drain)
    requests = b"".join(
        _frame(
            _json(
                {
                    "jsonrpc": "2.0",
                    "id": index,
                    "method": "capability.flood",
                    "params": {},
                }
            )
        )
        for index in range(count)
    )
    _raw_write(requests)
    time.sleep(_LONG)
'''
HOSTILE_METHODS = [
    "echo",
    "write_and_wait",
    "trickle",
    "corrupt_producer",
    "close_own_end",
    "stop_reading",
    "forge_after_reply",
    "flip_length_in_flight",
    "flip_length_mid_frame",
    "wake_storm",
    "tiny_frames",
    "capability_flood",
]
BYSTANDER_SOURCE = """
def echo(value):
    return value
"""


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# -- host vitals --------------------------------------------------------------


@dataclass(frozen=True)
class Vitals:
    """Resources of the host process that a hostile worker could leak."""

    fds: int
    threads: int
    children: int
    channel_mappings: int
    scratch_folders: int
    rss: int


def read_vitals(host: PluginHost) -> Vitals:
    me = psutil.Process()
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        mappings = sum("sandbox-channel" in line for line in maps)
    prefix = f"hostile-{os.getpid()}-"
    try:
        names = os.listdir(host.scratch_root)
    except OSError:
        names = []
    return Vitals(
        fds=me.num_fds(),
        threads=me.num_threads(),
        children=len(me.children()),
        channel_mappings=mappings,
        scratch_folders=sum(name.startswith(prefix) for name in names),
        rss=me.memory_info().rss,
    )


def settled_vitals(host: PluginHost, before: Vitals) -> Vitals:
    """Return the vitals once the counts match ``before``, or after a
    second: join() returns just before the thread's OS thread exits."""
    deadline = time.monotonic() + 1.0
    while True:
        after = read_vitals(host)
        counts = (after.fds, after.threads, after.children)
        if counts == (before.fds, before.threads, before.children):
            return after
        if time.monotonic() > deadline:
            return after
        time.sleep(0.01)


# -- the bystander ------------------------------------------------------------


@dataclass
class Bystander:
    """Echo calls to another plugin, in a thread, while an attack runs."""

    host: PluginHost
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(PATIENCE)
        assert not self._thread.is_alive(), "a bystander call hung"

    def _run(self) -> None:
        while not self._stop.is_set():
            value = f"call {self.calls}"
            try:
                result = self.host.execute_plugin(
                    "bystander", "echo", {"value": value}, timeout=PATIENCE
                )
            except Exception as error:
                self.failures.append(f"{value}: {error!r}")
            else:
                if result != value:
                    self.failures.append(f"{value}: got {result!r}")
            self.calls += 1
            # Leaves CPU time to the attack on a machine with few CPUs.
            time.sleep(0.001)


# -- the arena ----------------------------------------------------------------


@dataclass
class Outcome:
    """How one hostile call ended and what the host looked like after."""

    result: Any
    error: Exception | None
    seconds: float
    hostile_pid: int
    replacement_pid: int
    replacement_echo: Any
    bystander: Bystander
    bystander_pids: tuple[int, int]
    events: list[dict[str, Any]]
    before: Vitals
    after: Vitals
    traced_peak: int | None


Prelude = tuple[str, dict[str, Any], Any]


class Arena:
    """A host running the hostile plugin next to a bystander plugin."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        self.events: list[dict[str, Any]] = []
        host.subscribe(self.events.append)

    def call(
        self, method: str, timeout: float = PATIENCE, **params: Any
    ) -> Any:
        return self.host.execute_plugin(
            "hostile", method, params, timeout=timeout
        )

    def pid(self, plugin: str) -> int:
        pid: int = self.host.worker_status(plugin)["pid"]
        return pid

    def _bounded_call(
        self, method: str, timeout: float, params: dict[str, Any]
    ) -> tuple[Any, Exception | None]:
        """Make the hostile call on a thread; fail the test, rather than
        hang it, when the call outlives its timeout.

        Any exception is returned, so that one of the wrong type fails the
        test's check of the error.
        """
        ended: list[tuple[Any, Exception | None]] = []

        def run() -> None:
            try:
                ended.append((self.call(method, timeout, **params), None))
            except Exception as error:
                ended.append((None, error))

        caller = threading.Thread(target=run, daemon=True)
        caller.start()
        caller.join(timeout + PATIENCE)
        hung = caller.is_alive()
        if hung:
            self.host.interrupt("hostile")
            caller.join(PATIENCE)
        assert not hung, f"{method} outlived its {timeout} s timeout"
        return ended[0]

    def attack(
        self,
        method: str,
        timeout: float = PATIENCE,
        *,
        prelude: Prelude | None = None,
        trace_memory: bool = False,
        **params: Any,
    ) -> Outcome:
        """Run one hostile call beside the bystander and record the
        aftermath.

        ``prelude`` is a call (method, params, expected result) that
        prepares the attack, made once the bystander runs.
        """
        assert self.call("echo", value="warm") == "warm"
        hostile_pid = self.pid("hostile")
        bystander_pid = self.pid("bystander")
        before = read_vitals(self.host)
        self.events.clear()
        bystander = Bystander(self.host)
        bystander.start()
        if prelude is not None:
            prepare, prepare_params, prepared = prelude
            assert self.call(prepare, **prepare_params) == prepared
        peak = None
        started = time.monotonic()
        if trace_memory:
            tracemalloc.start()
        try:
            result, error = self._bounded_call(method, timeout, params)
        finally:
            if trace_memory:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        seconds = time.monotonic() - started
        bystander.stop()
        replacement_echo = self.call("echo", value="after")
        return Outcome(
            result=result,
            error=error,
            seconds=seconds,
            hostile_pid=hostile_pid,
            replacement_pid=self.pid("hostile"),
            replacement_echo=replacement_echo,
            bystander=bystander,
            bystander_pids=(bystander_pid, self.pid("bystander")),
            events=list(self.events),
            before=before,
            after=settled_vitals(self.host, before),
            traced_peak=peak,
        )


@pytest.fixture
def arena(write_plugin: PluginWriter, make_host: HostFactory) -> Arena:
    write_plugin("hostile", HOSTILE_SOURCE, HOSTILE_METHODS)
    write_plugin("bystander", BYSTANDER_SOURCE, ["echo"])
    host = make_host(
        {"plugins": {"hostile": {"max_message_bytes": HOSTILE_MAX_BYTES}}}
    )
    return Arena(host)


@pytest.fixture
def shm_arena(arena: Arena) -> Arena:
    """An arena on shared-memory rings; skipped on the stream transport."""
    if arena.host.transport != "shm":
        pytest.skip("attacks the shared-memory rings")
    return arena


def check_contained(outcome: Outcome, expected: type[SandboxError]) -> None:
    """Check that the attack failed as ``expected`` and left no trace."""
    assert isinstance(outcome.error, expected), outcome.error
    assert not psutil.pid_exists(outcome.hostile_pid)
    assert outcome.replacement_echo == "after"
    assert outcome.replacement_pid != outcome.hostile_pid
    check_kill_recorded(outcome, expected)
    check_bystander_and_vitals(outcome)


def check_kill_recorded(
    outcome: Outcome, expected: type[SandboxError]
) -> None:
    event = {
        ProtocolError: "protocol_violation",
        PluginTimeout: "timeout_kill",
        PluginCrashed: "worker_crashed",
    }[expected]
    kills = [e for e in outcome.events if e["event"] == event]
    assert [e["plugin"] for e in kills] == ["hostile"]


def check_bystander_and_vitals(outcome: Outcome) -> None:
    bystander = outcome.bystander
    assert bystander.failures == []
    assert bystander.calls > 0
    first, last = outcome.bystander_pids
    assert first == last
    before, after = outcome.before, outcome.after
    assert after.fds == before.fds
    assert after.threads == before.threads
    assert after.children == before.children
    assert after.channel_mappings == before.channel_mappings
    assert after.scratch_folders == before.scratch_folders
    assert after.rss - before.rss < RSS_SLACK


# -- ring indices and flags (shared memory) -----------------------------------


@pytest.mark.parametrize("mode", ["past-capacity", "backwards", "half-range"])
def test_producer_index_rewritten(shm_arena: Arena, mode: str) -> None:
    outcome = shm_arena.attack("corrupt_producer", mode=mode)
    check_contained(outcome, ProtocolError)
    assert "index" in str(outcome.error)


@pytest.mark.parametrize("consumer", ["ahead", "backwards", "half-range"])
def test_consumer_index_rewritten(shm_arena: Arena, consumer: str) -> None:
    # A request larger than the ring makes the host read the consumer
    # index, first while the worker still reads, so the host has seen it
    # move, then after the attack.
    assert shm_arena.call("echo", value=BIG_PARAM) == BIG_PARAM

    outcome = shm_arena.attack(
        "echo",
        prelude=("stop_reading", {"consumer": consumer}, "stopped"),
        value=BIG_PARAM,
    )

    check_contained(outcome, ProtocolError)
    assert "index" in str(outcome.error)


def test_length_flipped_mid_frame(shm_arena: Arena) -> None:
    """The host reads the length word once, so changing it while the host
    waits for the rest of the body changes nothing."""
    size = 600_000
    outcome = shm_arena.attack(
        "flip_length_mid_frame", trace_memory=True, size=size, seconds=0.1
    )
    assert outcome.error is None
    assert outcome.result == "x" * size
    assert outcome.replacement_pid == outcome.hostile_pid
    assert outcome.traced_peak is not None
    assert outcome.traced_peak < TRACED_REPLY_LIMIT
    check_bystander_and_vitals(outcome)


def test_length_flipped_in_flight(shm_arena: Arena) -> None:
    """Whichever length the host reads, it copies no more than it checked:
    the call returns the whole reply or fails with ProtocolError."""
    size = 600_000
    errors = []
    for _ in range(3):
        outcome = shm_arena.attack(
            "flip_length_in_flight", trace_memory=True, size=size
        )
        check_bystander_and_vitals(outcome)
        assert outcome.replacement_echo == "after"
        assert outcome.traced_peak is not None
        assert outcome.traced_peak < TRACED_REPLY_LIMIT
        if outcome.error is None:
            assert outcome.result == "x" * size
        else:
            errors.append(outcome.error)
    for error in errors:
        assert isinstance(error, ProtocolError)


@pytest.mark.parametrize(
    ("reply_after", "expected"),
    [(None, PluginTimeout), (0.3, None)],
    ids=["no-reply", "reply-during-storm"],
)
def test_futex_wake_storm(
    shm_arena: Arena,
    reply_after: float | None,
    expected: type[SandboxError] | None,
) -> None:
    outcome = shm_arena.attack(
        "wake_storm", SHORT * 2, seconds=SHORT * 2, reply_after=reply_after
    )
    if expected is None:
        assert outcome.error is None
        assert outcome.result == "after the storm"
        check_bystander_and_vitals(outcome)
    else:
        check_contained(outcome, expected)
        assert outcome.seconds < SHORT * 2 + 2.0


# -- either transport ---------------------------------------------------------


def test_own_end_closed(arena: Arena) -> None:
    outcome = arena.attack("close_own_end")
    check_contained(outcome, PluginCrashed)


def test_reader_stalled(arena: Arena) -> None:
    """A worker that stops reading cannot hold a request's send forever."""
    outcome = arena.attack(
        "echo",
        SHORT,
        prelude=("stop_reading", {"consumer": None}, "stopped"),
        value=BIG_PARAM,
    )

    check_contained(outcome, PluginTimeout)
    assert outcome.seconds < SHORT + 2.0


DECLARED_SIZES = {
    "zero": struct.pack(">I", 0) + b"{}",
    "max-plus-one": struct.pack(">I", HOSTILE_MAX_BYTES + 1) + b"{}",
    "2**31": struct.pack(">I", 2**31) + b"{}",
    "2**32-1": struct.pack(">I", 2**32 - 1) + b"{}",
    "attachment-count": frame(b"\x00" + struct.pack(">I", 2**32 - 1) + b"{}"),
    "attachment-length": frame(
        b"\x00" + struct.pack(">II", 1, 2**32 - 1) + b'{"v":{"$bytes":0}}'
    ),
}


@pytest.mark.parametrize("case", DECLARED_SIZES)
def test_huge_declared_size(arena: Arena, case: str) -> None:
    outcome = arena.attack(
        "write_and_wait",
        trace_memory=True,
        data_hex=DECLARED_SIZES[case].hex(),
    )
    check_contained(outcome, ProtocolError)
    assert outcome.traced_peak is not None
    assert outcome.traced_peak < TRACED_PEAK_LIMIT


MALFORMED_MESSAGES = {
    # Four keys, as a request has, one of them misspelled.
    "misspelled-key": frame(
        b'{"jsnrpc":"2.0","id":1,"method":"capability.notify","params":{}}'
    ),
    "reply-and-error": frame(
        b'{"jsonrpc":"2.0","id":3,"result":1,"error":{"code":1,"message":"m"}}'
    ),
}


@pytest.mark.parametrize("case", MALFORMED_MESSAGES)
def test_malformed_message(arena: Arena, case: str) -> None:
    outcome = arena.attack(
        "write_and_wait", data_hex=MALFORMED_MESSAGES[case].hex()
    )
    check_contained(outcome, ProtocolError)


UNFINISHED_FRAMES = {
    "half-header": struct.pack(">I", 100)[:2],
    "half-body": frame(b"x" * 100)[:54],
}


@pytest.mark.parametrize("case", UNFINISHED_FRAMES)
def test_unfinished_frame(arena: Arena, case: str) -> None:
    outcome = arena.attack(
        "write_and_wait", SHORT, data_hex=UNFINISHED_FRAMES[case].hex()
    )
    check_contained(outcome, PluginTimeout)
    assert outcome.seconds < SHORT + 2.0


def test_frame_trickled(arena: Arena) -> None:
    """A reply that arrives a byte at a time still meets the deadline."""
    outcome = arena.attack("trickle", SHORT, interval=0.05)
    check_contained(outcome, PluginTimeout)
    assert outcome.seconds < SHORT + 2.0


@pytest.mark.parametrize("kind", ["next-id", "same-id", "request"])
def test_data_before_request(arena: Arena, kind: str) -> None:
    """Bytes sent before a request cannot be taken as its reply."""
    outcome = arena.attack(
        "echo",
        prelude=("forge_after_reply", {"kind": kind}, "ok"),
        value="real",
    )

    check_contained(outcome, ProtocolError)
    assert "no call requested" in str(outcome.error)


def test_reply_with_other_id(arena: Arena) -> None:
    outcome = arena.attack("forge_after_reply", kind="instead")
    check_contained(outcome, ProtocolError)
    assert "never made" in str(outcome.error)


def test_tiny_frame_flood(arena: Arena) -> None:
    outcome = arena.attack("tiny_frames", count=100_000)
    check_contained(outcome, ProtocolError)


def test_capability_request_flood(arena: Arena) -> None:
    outcome = arena.attack("capability_flood", count=5000)
    check_contained(outcome, ProtocolError)
    assert "capability requests" in str(outcome.error)
    denials = [e for e in outcome.events if e["event"] == "capability_denied"]
    assert len(denials) == 4096
