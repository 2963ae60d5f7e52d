"""Exceptions raised by the sandbox, all derived from SandboxError."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of every error the sandbox raises."""


class PolicyError(SandboxError):
    """A policy or manifest is invalid or requests what cannot be given.

    ``source`` is the file (or ``"<dict>"``), ``plugin`` the plugin name and
    ``key`` the dotted key that was wrong; each may be None when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        plugin: str | None = None,
        key: str | None = None,
    ) -> None:
        self.source = source
        self.plugin = plugin
        self.key = key
        self.reason = message
        super().__init__(_locate(source, plugin, key) + message)


def _locate(source: str | None, plugin: str | None, key: str | None) -> str:
    parts = []
    if source:
        parts.append(source)
    if plugin:
        parts.append(f"plugin {plugin!r}")
    if key:
        parts.append(f"key {key!r}")
    return ": ".join(parts) + ": " if parts else ""


class PluginNotFound(SandboxError):
    """No plugin, or no exported method, of the requested name."""


class PluginError(SandboxError):
    """The plugin raised an exception; its type, message and traceback."""

    def __init__(
        self, plugin: str, type_name: str, message: str, traceback: str
    ) -> None:
        self.plugin = plugin
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(f"plugin {plugin!r} raised {type_name}: {message}")


class PluginCrashed(SandboxError):
    """The worker died during a call: by exit code or by signal."""

    def __init__(
        self,
        plugin: str,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        detail: str = "",
    ) -> None:
        self.plugin = plugin
        self.exit_code = exit_code
        self.signal = signal
        self.detail = detail
        super().__init__(_crash_text(plugin, exit_code, signal, detail))


def _crash_text(
    plugin: str, exit_code: int | None, signal: int | None, detail: str
) -> str:
    import signal as signals

    if signal is not None:
        try:
            outcome = f"killed by {signals.Signals(signal).name}"
        except ValueError:
            outcome = f"killed by signal {signal}"
    elif exit_code is not None:
        outcome = f"exited with code {exit_code}"
    else:
        outcome = "stopped answering"
    text = f"worker of plugin {plugin!r} {outcome}"
    return f"{text}: {detail}" if detail else text


class PolicyViolation(PluginCrashed):
    """The kernel killed the worker for a call its seccomp filter forbids."""


class PluginTimeout(SandboxError):
    """The call's wall-clock time ran out; the worker was killed."""

    def __init__(self, plugin: str, seconds: float) -> None:
        self.plugin = plugin
        self.seconds = seconds
        super().__init__(
            f"plugin {plugin!r} did not answer within {seconds:g} s; "
            "its worker was killed"
        )


class ResourceLimitExceeded(SandboxError):
    """The plugin hit one of its resource limits, named by ``limit``."""

    def __init__(self, plugin: str, limit: str, detail: str = "") -> None:
        self.plugin = plugin
        self.limit = limit
        text = f"plugin {plugin!r} exceeded its {limit} limit"
        super().__init__(f"{text}: {detail}" if detail else text)


class CapabilityDenied(SandboxError):
    """A capability the plugin's policy does not grant was requested."""


class ProtocolError(SandboxError):
    """A message broke the channel protocol (framing, size or shape)."""


class LaunchError(SandboxError):
    """A worker could not start; ``stage`` and ``errno`` locate the failure."""

    def __init__(self, stage: str, errno: int, detail: str = "") -> None:
        import os

        self.stage = stage
        self.errno = errno
        text = f"worker launch failed at stage {stage}: "
        text += f"[Errno {errno}] {os.strerror(errno)}"
        super().__init__(f"{text} ({detail})" if detail else text)
