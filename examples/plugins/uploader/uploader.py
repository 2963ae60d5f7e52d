"""Summarise input files into a report and upload it over TCP.

The host carries out every file operation through the file capabilities
and passes the upload token through get_secret(). The worker itself
cannot open the input and report folders, and the token is never in its
environment. Its policy lets it connect to one TCP port.

The probes (read_path, connect_port, send_datagram) try what the policy
does not allow, and return the error they got instead of raising.
"""

import errno
import http.client
import socket
from collections.abc import Callable

from sandbox.plugin import (
    CapabilityDenied,
    get_secret,
    list_files,
    read_file,
    write_file,
)

LOOPBACK = "127.0.0.1"
TOKEN_NAME = "UPLOAD_TOKEN"


def write_report(source: str, report: str) -> dict:
    """Write one line per file of folder ``source`` into file ``report``."""
    lines = []
    read_bytes = 0
    for name in list_files(source):
        data = read_file(f"{source}/{name}")
        read_bytes += len(data)
        line_count = data.count(b"\n")
        lines.append(f"{name}: {line_count} lines, {len(data)} bytes")
    text = "\n".join(lines) + "\n"
    written = write_file(report, text.encode())
    return {"files": len(lines), "read_bytes": read_bytes, "written": written}


def upload(report: str, port: int) -> dict:
    """PUT file ``report`` to the loopback server with the upload token."""
    data = read_file(report)
    headers = {"Authorization": f"Bearer {get_secret(TOKEN_NAME)}"}
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        connection.request("PUT", "/reports/summary", data, headers)
        response = connection.getresponse()
        reply = response.read(200).decode(errors="replace")
    finally:
        connection.close()
    return {"status": response.status, "reply": reply, "sent": len(data)}


def fail_with_token() -> None:
    """Raise an error that contains the token, as a careless plugin might."""
    token = get_secret(TOKEN_NAME)
    raise RuntimeError(f"the server rejected token {token}")


def read_path(path: str) -> dict:
    """Ask the host to read ``path``, which may lie outside files.read."""
    return _attempt(lambda: f"read {len(read_file(path))} bytes")


def connect_port(port: int) -> dict:
    """Open a TCP connection to ``port`` on loopback."""

    def connect() -> str:
        with socket.create_connection((LOOPBACK, port), timeout=2):
            return f"connected to port {port}"

    return _attempt(connect)


def send_datagram(port: int) -> dict:
    """Send one UDP datagram to ``port`` on loopback."""

    def send() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            sent = udp.sendto(b"ping", (LOOPBACK, port))
        return f"sent {sent} bytes"

    return _attempt(send)


def _attempt(function: Callable[[], str]) -> dict:
    """Run ``function`` and return whether it worked and the error it got."""
    try:
        detail = function()
    except CapabilityDenied as error:
        return {"succeeded": False, "error": f"CapabilityDenied: {error}"}
    except OSError as error:
        name = errno.errorcode.get(error.errno or 0, type(error).__name__)
        return {"succeeded": False, "error": f"{name}: {error.strerror}"}
    return {"succeeded": True, "error": None, "detail": detail}
