"""The program the launcher execs inside the sandbox.

By the time this runs, every kernel restriction of the plugin's policy is
in force. The worker reads its bootstrap from descriptor 4, turns off
dumpability (execve turned it back on), loads the plugin and serves calls
on the channel its bootstrap names until the host closes it. The channel
is a socket at descriptor 3 or rings in a memfd at descriptor 5.

Imports here are the standard library and this package only, so the worker
starts fast and needs nothing the sandbox uid cannot read.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import channel as rpc
from . import codec, procstate
from . import plugin as plugin_api
from .errors import CapabilityDenied, ProtocolError

CHANNEL_FD = 3
BOOTSTRAP_FD = 4
BOOTSTRAP_LIMIT = 1 << 20

# Bounds of an error reply that did not fit max_message_bytes. Even after
# JSON escaping, such a reply fits the smallest limit a policy allows
# (1024 bytes).
_SHORT_MESSAGE_CHARS = 200
_SHORT_TYPE_CHARS = 100

# Exceptions a plugin raises when the kernel enforces one of its limits.
_LIMIT_ERRNOS = {
    errno.EMFILE: "file_descriptors",
    errno.EFBIG: "file_size_mb",
}


def main() -> int:
    """Run one worker: bootstrap, harden, load the plugin, serve."""
    bootstrap = read_bootstrap(BOOTSTRAP_FD)
    sys.path[:0] = [p for p in bootstrap["sys_path"] if p not in sys.path]
    # orjson is importable only now that its folder is on sys.path.
    codec.enable_fast_codec()
    procstate.harden(bootstrap["plugin"]["name"])
    channel = open_channel(
        bootstrap["max_message_bytes"], bootstrap.get("channel", {})
    )
    server = Server(channel, bootstrap)
    plugin_api.install_broker(server.call_host)
    if bootstrap.get("observe"):
        server.recorder = AccessRecorder()
        server.recorder.start()
    server.load_plugin()
    return server.serve()


def read_bootstrap(fd: int) -> dict[str, Any]:
    data = b""
    while len(data) <= BOOTSTRAP_LIMIT:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    bootstrap: dict[str, Any] = json.loads(data)
    return bootstrap


def open_channel(max_message_bytes: int, spec: dict[str, Any]) -> rpc.Channel:
    transport: rpc.Transport
    if spec.get("transport") == "shm":
        transport = _shm_transport(max_message_bytes, spec)
    else:
        fd = spec.get("fd", CHANNEL_FD)
        transport = rpc.StreamTransport(
            fd, fd, max_message_bytes=max_message_bytes
        )
    return rpc.Channel(transport, max_message_bytes=max_message_bytes)


def _shm_transport(
    max_message_bytes: int, spec: dict[str, Any]
) -> rpc.Transport:
    # Imported here: it loads the C extension, which a worker on a socket
    # never needs.
    from . import shm

    geometry = shm.RingGeometry(spec["to_worker"], spec["to_host"])
    segment = shm.ShmChannelSegment.attach(spec["fd"], geometry)
    # The mapping is all the worker needs, so no descriptor is left to it.
    segment.close_fd()
    return shm.ShmTransport(
        segment, max_message_bytes=max_message_bytes, spin_ns=spec["spin_ns"]
    )


class Server:
    """Serves the host's calls and forwards the plugin's capability calls."""

    def __init__(self, channel: rpc.Channel, bootstrap: dict[str, Any]):
        self.channel = channel
        self.manifest: dict[str, Any] = bootstrap["plugin"]
        self.granted = frozenset(bootstrap["capabilities"])
        self.methods = frozenset(self.manifest["methods"])
        self.module: ModuleType | None = None
        self.load_error: BaseException | None = None
        # Set in observe mode only, where the host may ask for its report.
        self.recorder: AccessRecorder | None = None

    def load_plugin(self) -> None:
        """Import the entry module; a failure is reported on first call."""
        folder = self.manifest["folder"]
        sys.path[:0] = [folder, *self.manifest["python_path"]]
        try:
            self.module = importlib.import_module(self.manifest["entry"])
        except Exception as error:  # reported to the host
            self.load_error = error

    def serve(self) -> int:
        while True:
            try:
                request = self.channel.receive_message(None)
            except rpc.PeerGone:
                return 0
            except ProtocolError as error:
                self.channel.send_error(None, rpc.INVALID_REQUEST, str(error))
                continue
            if not isinstance(request, rpc.Request):
                self.channel.send_error(
                    None,
                    rpc.INVALID_REQUEST,
                    f"expected a request, got a reply to id {request.id!r}",
                )
                continue
            if request.method == "sandbox.shutdown":
                self.channel.send_result(request.id, None)
                return 0
            self.answer(request)

    def answer(self, request: rpc.Request) -> None:
        try:
            result = self.dispatch(request.method, request.params)
        except _Reply as reply:
            self.send_error(request.id, *reply.args)
            return
        except Exception as error:  # reported to the host
            self.send_error(request.id, *_describe(error))
            return
        try:
            self.channel.send_result(request.id, result)
        except codec.MessageTooLarge as error:
            # A limit of the channel, not a fault of the plugin's code: the
            # host raises ProtocolError for it.
            data = {"type": "ProtocolError", "limit": "max_message_bytes"}
            self.send_error(request.id, rpc.RESOURCE_LIMIT, str(error), data)
        except ProtocolError as error:
            self.send_error(
                request.id, rpc.PLUGIN_ERROR, str(error), _as_data(error)
            )

    def send_error(
        self, request_id: int, code: int, message: str, data: Any = None
    ) -> None:
        """Send an error reply, cut down if the full one cannot be sent.

        A long message or traceback can exceed max_message_bytes, and a
        message with a lone surrogate cannot be encoded. The cut-down reply
        keeps the code, the error type and the limit that was hit.
        """
        try:
            self.channel.send_error(request_id, code, message, data)
            return
        except ProtocolError:
            pass
        short_data = {}
        if isinstance(data, dict):
            if "type" in data:
                short_data["type"] = _printable(
                    str(data["type"]), _SHORT_TYPE_CHARS
                )
            if "limit" in data:
                short_data["limit"] = _printable(
                    str(data["limit"]), _SHORT_TYPE_CHARS
                )
        short = _printable(message, _SHORT_MESSAGE_CHARS)
        self.channel.send_error(request_id, code, short, short_data or None)

    def dispatch(self, method: str, params: Any) -> Any:
        if method == "sandbox.hello":
            if self.load_error is not None:
                raise self.load_error
            return procstate.report()
        if method == "sandbox.observations" and self.recorder is not None:
            return self.recorder.report()
        function = self.exported(method)
        if not isinstance(params, dict):
            raise _Reply(
                rpc.INVALID_PARAMS, "params must be an object of arguments"
            )
        return function(**params)

    def exported(self, method: str) -> Callable[..., Any]:
        if self.load_error is not None:
            raise self.load_error
        if method not in self.methods or self.module is None:
            raise _Reply(
                rpc.METHOD_NOT_FOUND, f"method {method!r} is not exported"
            )
        function = getattr(self.module, method, None)
        if not callable(function):
            raise _Reply(
                rpc.METHOD_NOT_FOUND,
                f"method {method!r} is not a function of "
                f"module {self.manifest['entry']!r}",
            )
        return function  # type: ignore[no-any-return]

    def call_host(self, capability: str, params: dict[str, Any]) -> Any:
        """Send one capability request to the host and wait for its reply.

        Even a capability missing from this worker's grant goes to the host,
        which decides and records every denial in its audit log.
        """
        request_id = self.channel.send_request(
            f"capability.{capability}", params
        )
        message = self.channel.receive_message(None)
        if isinstance(message, rpc.Request):
            raise ProtocolError(
                f"expected the reply to request {request_id}, got request "
                f"{message.method[:64]!r}"
            )
        reply = rpc.match_response(message, request_id)
        if reply.error is None:
            return reply.result
        if reply.error["code"] == rpc.CAPABILITY_DENIED:
            raise CapabilityDenied(reply.error["message"])
        raise RuntimeError(reply.error["message"])


class _Reply(Exception):
    """An error reply with a JSON-RPC code, raised inside dispatch."""


def _describe(error: BaseException) -> tuple[int, str, dict[str, Any]]:
    data = _as_data(error)
    if isinstance(error, CapabilityDenied):
        return rpc.CAPABILITY_DENIED, str(error), data
    limit = _limit_hit(error)
    if limit is not None:
        data["limit"] = limit
        return rpc.RESOURCE_LIMIT, str(error) or type(error).__name__, data
    return rpc.PLUGIN_ERROR, str(error), data


def _printable(text: str, max_chars: int) -> str:
    """Return ``text`` as printable ASCII of at most ``max_chars``."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    printable = "".join(c if c.isprintable() else "?" for c in escaped)
    if len(printable) <= max_chars:
        return printable
    return printable[: max_chars - 3] + "..."


def _limit_hit(error: BaseException) -> str | None:
    if isinstance(error, MemoryError):
        return "memory_mb"
    if isinstance(error, OSError) and error.errno is not None:
        return _LIMIT_ERRNOS.get(error.errno)
    return None


def _as_data(error: BaseException) -> dict[str, Any]:
    text = "".join(
        traceback.format_exception(type(error), error, error.__traceback__)
    )
    return {"type": type(error).__name__, "traceback": text[-8000:]}


# -- observe mode ------------------------------------------------------------

# Bounds of one observation report, which must fit in one reply.
_MAX_RECORDED = 1000
_MAX_RECORDED_CHARS = 1024
# klogctl(SYSLOG_ACTION_SIZE_BUFFER) reads one number and changes nothing.
# The seccomp program denies syslog, so in observe mode the kernel logs
# the call. Once the host has received this record, every earlier record
# of this process has arrived too.
_SYSLOG_ACTION_SIZE_BUFFER = 10
_OPEN_WRITE_FLAGS = (
    os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
)
# Events whose path arguments are created, removed or renamed: the
# folder that contains each one needs write access.
_CHANGE_EVENTS = {
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "os.truncate": (0,),
}
_COMMAND_EVENTS = ("subprocess.Popen", "os.exec", "os.posix_spawn")


class AccessRecorder:
    """Records what plugin code reaches through Python, for observe mode.

    An audit hook (PEP 578) receives only calls made through Python's audited
    functions. Code that calls libc through ctypes, or a C extension,
    bypasses it, so this is an observer for code under evaluation and
    never a boundary. Paths beneath the folders already on sys.path when
    recording starts are left out: every worker may read them.
    """

    def __init__(self) -> None:
        self.records: dict[str, set[Any]] = {
            key: set()
            for key in (
                "read",
                "write",
                "changed",
                "listed",
                "sockets",
                "endpoints",
                "resolved",
                "commands",
                "env",
            )
        }
        self.truncated = False
        self.hook_errors = 0
        self._known = tuple(os.path.join(p, "") for p in sys.path if p)

    def start(self) -> None:
        """Install the hook and start recording environment reads."""
        os.environ.__class__ = _make_recording_environ(self)
        sys.addaudithook(self._hook)

    def add(self, key: str, value: Any) -> None:
        entries = self.records[key]
        if len(entries) >= _MAX_RECORDED:
            self.truncated = True
        elif value not in entries:
            entries.add(value)

    def report(self) -> dict[str, Any]:
        """Return the records as JSON lists, then mark the kernel log."""
        result: dict[str, Any] = {
            key: sorted(values, key=repr)
            for key, values in self.records.items()
        }
        result["truncated"] = self.truncated
        result["hook_errors"] = self.hook_errors
        _mark_kernel_log()
        return result

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        # An exception here would fail the plugin's own call.
        try:
            self._record(event, args)
        except Exception:
            self.hook_errors += 1

    def _record(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            key = "write" if _opens_for_write(args[1], args[2]) else "read"
            self._add_path(key, args[0])
        elif event in ("os.listdir", "os.scandir"):
            self._add_path("listed", "." if args[0] is None else args[0])
        elif event in _CHANGE_EVENTS:
            for index in _CHANGE_EVENTS[event]:
                self._add_path("changed", args[index])
        elif event == "socket.__new__":
            self.add("sockets", tuple(args[1:4]))
        elif event in ("socket.connect", "socket.bind", "socket.sendto"):
            self.add("endpoints", _endpoint(event, args[0], args[1]))
        elif event == "socket.getaddrinfo":
            self.add("resolved", str(args[0])[:_MAX_RECORDED_CHARS])
        elif event in _COMMAND_EVENTS or event == "os.system":
            self.add("commands", os.fsdecode(args[0])[:_MAX_RECORDED_CHARS])
        elif event == "ctypes.dlopen" and args[0]:
            self._add_path("read", args[0])

    def _add_path(self, key: str, path: Any) -> None:
        if isinstance(path, int):
            return
        text = os.path.abspath(os.fsdecode(path))
        if len(text) > _MAX_RECORDED_CHARS:
            self.truncated = True
        elif not text.startswith(self._known):
            self.add(key, text)


def _opens_for_write(mode: Any, flags: Any) -> bool:
    if isinstance(flags, int) and flags & _OPEN_WRITE_FLAGS:
        return True
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def _endpoint(event: str, sock: Any, address: Any) -> tuple[Any, ...]:
    kind = event.rpartition(".")[2]
    family = int(getattr(sock, "family", -1))
    if isinstance(address, tuple) and len(address) >= 2:
        return (kind, family, str(address[0]), int(address[1]))
    text = os.fsdecode(address) if isinstance(address, bytes) else address
    return (kind, family, str(text)[:_MAX_RECORDED_CHARS], 0)


def _make_recording_environ(recorder: AccessRecorder) -> type:
    """Return a subclass of os.environ's class that records reads.

    get(), getenv(), ``in`` and copy() all go through __getitem__.
    """
    base = type(os.environ)

    class RecordingEnviron(base):  # type: ignore[valid-type, misc]
        def __getitem__(self, key: Any) -> Any:
            recorder.add("env", str(key)[:_MAX_RECORDED_CHARS])
            return super().__getitem__(key)

    return RecordingEnviron


def _mark_kernel_log() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.klogctl(_SYSLOG_ACTION_SIZE_BUFFER, None, 0)
