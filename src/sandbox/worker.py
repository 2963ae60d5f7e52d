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
from . import plugin as plugin_api
from . import procstate
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
    rpc.enable_fast_codec()
    procstate.harden(bootstrap["plugin"]["name"])
    channel = open_channel(
        bootstrap["max_message_bytes"], bootstrap.get("channel", {})
    )
    server = Server(channel, bootstrap)
    plugin_api.install_broker(server.call_host)
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
