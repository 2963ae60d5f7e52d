"""The API a plugin uses to ask the host for privileged operations.

Each call is sent to the host over the worker's channel, checked there
against the plugin's policy and carried out by the host. A capability the
policy does not grant raises CapabilityDenied. The checks in the worker are
a courtesy: the host's check is the one that counts.

    from sandbox.plugin import notify, read_env, CapabilityDenied

    notify("Build completed", level="info")
    home = read_env("HOME")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import CapabilityDenied

__all__ = ["CapabilityDenied", "call_capability", "notify", "read_env"]

Broker = Callable[[str, dict[str, Any]], Any]

_broker: Broker | None = None


def install_broker(broker: Broker | None) -> None:
    """Route capability calls through ``broker`` (the worker sets this)."""
    global _broker
    _broker = broker


def call_capability(name: str, /, **params: Any) -> Any:
    """Ask the host to perform capability ``name`` and return its result."""
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
