"""Run untrusted plugins in locked-down worker processes.

    from sandbox import PluginHost, Policy, Resources

    policies = Policy.load("examples/policies.toml")
    with PluginHost(["examples/plugins"], policies) as host:
        host.execute_plugin("notification", "send_alert", {"message": "hi"})

Names are imported on first use, so the worker, which needs only a few
modules, does not pay for the host's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CapabilityDenied,
    LaunchError,
    PluginCrashed,
    PluginError,
    PluginNotFound,
    PluginTimeout,
    PolicyError,
    PolicyViolation,
    ProtocolError,
    ResourceLimitExceeded,
    SandboxError,
)

if TYPE_CHECKING:
    from .aio import AsyncPluginHost
    from .host import PluginHost
    from .policy import Policy, PolicySet, Resources

# The one place the version is written: pyproject.toml reads it.
__version__ = "0.1.0"

_LAZY = {
    "AsyncPluginHost": "aio",
    "PluginHost": "host",
    "Policy": "policy",
    "PolicySet": "policy",
    "Resources": "policy",
}

__all__ = [
    "AsyncPluginHost",
    "CapabilityDenied",
    "LaunchError",
    "PluginCrashed",
    "PluginError",
    "PluginHost",
    "PluginNotFound",
    "PluginTimeout",
    "Policy",
    "PolicyError",
    "PolicySet",
    "PolicyViolation",
    "ProtocolError",
    "ResourceLimitExceeded",
    "Resources",
    "SandboxError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
