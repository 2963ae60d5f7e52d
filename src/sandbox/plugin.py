"""The API a plugin uses to ask the host for privileged operations.

Each call is sent to the host over the worker's channel, checked there
against the plugin's policy and carried out by the host. A capability the
policy does not grant raises CapabilityDenied. The checks in the worker are
a courtesy: the host's check is the one that counts.

    from sandbox.plugin import notify, read_env, CapabilityDenied

    notify("Build completed", level="info")
    home = read_env("HOME")
    token = get_secret("API_TOKEN")
    report = read_file("/srv/data/report.csv")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import CapabilityDenied

__all__ = [
    "CapabilityDenied",
    "call_capability",
    "get_secret",
    "list_files",
    "notify",
    "read_env",
    "read_file",
    "write_file",
]

Broker = Callable[[str, dict[str, Any]], Any]

_broker: Broker | None = None


def install_broker(broker: Broker | None) -> None:
    """Route capability calls through ``broker`` (the worker sets this)."""
    global _broker
    _broker = broker


def call_capability(name: str, /, **params: Any) -> Any:
    """Ask the host to perform capability ``name`` and return its result.

    Raises CapabilityDenied when the host rejects the call, and
    RuntimeError when the host's handler failed. The RuntimeError names
    only the capability: the handler's error stays in the host's audit
    log.
    """
    if _broker is None:
        raise CapabilityDenied(
            f"capability {name!r} is only available inside a sandbox worker"
        )
    return _broker(name, params)


def notify(message: str, level: str = "info") -> None:
    """Send a notification to the host (capability ``notify``)."""
    call_capability("notify", message=message, level=level)


def read_env(name: str) -> str | None:
    """Return a host environment variable that the policy lists.

    Returns None when the host does not have the variable. Needs capability
    ``read_env``; a name outside the policy's ``env`` list raises
    CapabilityDenied.
    """
    value = call_capability("read_env", name=name)
    return value if isinstance(value, str) else None


def get_secret(name: str) -> str:
    """Return the secret ``name`` that the host provided to this plugin.

    Needs capability ``get_secret`` and ``name`` in the policy's
    ``secrets`` list. A name outside it, or one the host has not
    provided, raises CapabilityDenied.
    """
    value = call_capability("get_secret", name=name)
    if not isinstance(value, str):
        raise CapabilityDenied(f"the host sent no string for secret {name!r}")
    return value


def read_file(path: str) -> bytes:
    """Return the content of a file that the host reads for this plugin.

    ``path`` is absolute and lies beneath a folder of the policy's
    ``files.read`` or ``files.write`` list. Needs capability
    ``read_file``. Raises CapabilityDenied for a path that leaves its
    folder (through ``..`` or a symbolic link) and for a file that is not
    a regular file, is larger than one message can carry or, on a root
    host, may not be read by this plugin's uid.
    """
    data = call_capability("read_file", path=path)
    if not isinstance(data, bytes):
        raise CapabilityDenied(f"the host sent no bytes for {path!r}")
    return data


def write_file(path: str, data: bytes) -> int:
    """Create or replace a file through the host; return its length.

    ``path`` is absolute and lies beneath a folder of the policy's
    ``files.write`` list, and its parent folder exists. Needs capability
    ``write_file``. The denials are those of read_file(), for writing.
    On a root host, a new file belongs to this plugin's uid.
    """
    written = call_capability("write_file", path=path, data=bytes(data))
    return written if isinstance(written, int) else 0


def list_files(path: str) -> list[str]:
    """Return the sorted names in a folder, listed by the host.

    ``path`` is a folder of the policy's ``files`` table or lies beneath
    one. Needs capability ``list_files``. A listing larger than one
    message can carry raises CapabilityDenied.
    """
    names = call_capability("list_files", path=path)
    if not isinstance(names, list):
        raise CapabilityDenied(f"the host sent no listing for {path!r}")
    return [name for name in names if isinstance(name, str)]
