"""Workers of a build without the Linux-only parts, as on macOS.

These tests run only where sandbox.platform reports the Linux mechanisms
missing: under `make test-portable`, which builds sandbox._native with
SANDBOX_PORTABLE_BUILD=1, and on macOS. There a strict host must reject
the platform, and a host with strict=False must start workers with the
rlimits and the stream transport, and report each missing layer.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PluginWriter
from sandbox import LaunchError, PluginHost
from sandbox.audit import AuditEvent
from sandbox.platform import unsupported_reason
from sandbox.policy import DEFAULT_RESOURCES

pytestmark = pytest.mark.skipif(
    unsupported_reason() is None,
    reason="this build has the Linux parts; make test-portable runs these",
)

PROBE_SOURCE = """
import os
import resource


def limits():
    return {
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "uid": os.getuid(),
        "sid_is_pid": os.getsid(0) == os.getpid(),
    }
"""


@pytest.fixture
def probe_root(write_plugin: PluginWriter, plugin_root: Path) -> Path:
    write_plugin("probe", PROBE_SOURCE, ["limits"])
    return plugin_root


@pytest.fixture
def permissive_host(probe_root: Path) -> Iterator[PluginHost]:
    host = PluginHost([probe_root], strict=False)
    try:
        yield host
    finally:
        host.close()


def test_strict_host_rejects_platform(probe_root: Path) -> None:
    with pytest.raises(LaunchError) as raised:
        PluginHost([probe_root])
    assert raised.value.stage == "platform"
    assert raised.value.errno == errno.EOPNOTSUPP


def test_permissive_host_uses_stream(permissive_host: PluginHost) -> None:
    assert permissive_host.transport == "stream"


def test_worker_gets_rlimits_and_session(
    permissive_host: PluginHost,
) -> None:
    result = permissive_host.execute_plugin("probe", "limits")
    descriptors = DEFAULT_RESOURCES.file_descriptors
    assert result["nofile"] == [descriptors, descriptors]
    assert result["core"] == [0, 0]
    assert result["sid_is_pid"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root host drops uid")
def test_worker_uid_dropped(permissive_host: PluginHost) -> None:
    result = permissive_host.execute_plugin("probe", "limits")
    assert result["uid"] != 0


def test_each_missing_layer_reported(permissive_host: PluginHost) -> None:
    events: list[AuditEvent] = []
    permissive_host.subscribe(events.append)
    permissive_host.execute_plugin("probe", "limits")
    layers = {
        event["layer"]
        for event in events
        if event["event"] == "protection_missing"
    }
    assert {"seccomp", "landlock", "no_new_privs"} <= layers
