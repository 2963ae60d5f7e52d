"""PluginHost bookkeeping: notifications, audit events, closing."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import IS_ROOT, HostFactory, PluginWriter
from sandbox import (
    AsyncPluginHost,
    CapabilityDenied,
    LaunchError,
    PluginError,
    PluginHost,
    PluginNotFound,
    PolicyError,
    ProtocolError,
)
from sandbox.host import NOTIFICATIONS_PER_PLUGIN

NOTIFIER = """
from sandbox.plugin import notify

def shout(count, text):
    for _ in range(count):
        notify(text)
    return count
"""


def test_chatty_plugin_keeps_only_its_share(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("quiet", NOTIFIER, ["shout"], capabilities=("notify",))
    write_plugin("chatty", NOTIFIER, ["shout"], capabilities=("notify",))
    grant = {"capabilities": ["notify"]}
    host = make_host({"plugins": {"quiet": grant, "chatty": grant}})
    host.execute_plugin("quiet", "shout", {"count": 1, "text": "disk full"})
    host.execute_plugin("chatty", "shout", {"count": 500, "text": "spam"})
    kept = list(host.notifications)
    assert [n.message for n in kept if n.plugin == "quiet"] == ["disk full"]
    chatty = [n for n in kept if n.plugin == "chatty"]
    assert len(chatty) == NOTIFICATIONS_PER_PLUGIN


def test_denied_capability_is_audited(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("asker", NOTIFIER, ["shout"], capabilities=("notify",))
    host = make_host()
    events: list[dict[str, object]] = []
    host.subscribe(events.append)
    with pytest.raises(CapabilityDenied):
        host.execute_plugin("asker", "shout", {"count": 1, "text": "hi"})
    denied = [e for e in events if e["event"] == "capability_denied"]
    assert len(denied) == 1
    assert denied[0]["capability"] == "notify"
    assert "policy does not grant" in str(denied[0]["reason"])


# -- constructor and lookup errors --------------------------------------------

ECHO = """
def echo(value):
    return value
"""


@pytest.mark.parametrize("policies", ["policy.toml", {"plugins": {}}])
def test_policies_not_policy_set_raise_type_error(
    plugin_root: Path, policies: object
) -> None:
    expected = type(policies).__name__
    for host_class in (PluginHost, AsyncPluginHost):
        with pytest.raises(TypeError) as caught:
            host_class([plugin_root], policies)  # type: ignore[arg-type]
        message = str(caught.value)
        assert "Policy.load() or Policy.from_dict()" in message
        assert message.endswith(f"got {expected}")


def test_plugin_folder_as_plugin_dir_hints_parent(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    folder = write_plugin("echo", ECHO, ["echo"])
    host = make_host(plugin_dirs=[folder])
    with pytest.raises(PluginNotFound) as caught:
        host.execute_plugin("echo", "echo", {"value": 1})
    message = str(caught.value)
    assert f"{folder} contains a plugin.toml itself" in message
    assert "pass its parent folder" in message


def test_plugin_dir_hint_absent_for_parent(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("echo", ECHO, ["echo"])
    host = make_host()
    with pytest.raises(PluginNotFound) as caught:
        host.execute_plugin("missing", "echo", {"value": 1})
    assert "plugin.toml itself" not in str(caught.value)


def test_missing_interpreter_reports_enoent(plugin_root: Path) -> None:
    missing = "/usr/bin/nonexistent-python"
    with pytest.raises(LaunchError) as caught:
        PluginHost([plugin_root], python=missing)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.stage == "interpreter"
    message = str(caught.value)
    assert f"interpreter {missing} not found" in message
    assert "Exec format error" not in message


def test_invalid_manifest_logged_at_start(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    plugin_root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_plugin("echo", ECHO, ["echo"])
    broken = plugin_root / "broken"
    broken.mkdir()
    (broken / "plugin.toml").write_text('name = "broken"\n')
    with caplog.at_level(logging.WARNING, logger="sandbox.manifest"):
        host = make_host()
    records = [r for r in caplog.records if r.name == "sandbox.manifest"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert f"skipped plugin folder {broken}" in message
    assert "missing required key" in message
    assert "\n" not in message
    assert host.execute_plugin("echo", "echo", {"value": 1}) == 1
    with pytest.raises(PolicyError):
        host.execute_plugin("broken", "echo", {"value": 1})


# -- worker_started -----------------------------------------------------------


def test_worker_started_fields_are_numbers(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("echo", ECHO, ["echo"])
    host = make_host()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    assert host.execute_plugin("echo", "echo", {"value": 1}) == 1
    [started] = [e for e in events if e["event"] == "worker_started"]
    identity = started["enforcement"]["layers"]["uid_gid"]["requested"]
    expected_uid = identity["uid"] if IS_ROOT else os.geteuid()
    assert type(started["uid"]) is int
    assert started["uid"] == expected_uid
    # Mode 2 is a seccomp filter.
    assert started["seccomp"] == 2
    assert started["no_new_privs"] == 1


# -- oversized replies --------------------------------------------------------

# The worker's encoder rejects a reply over max_message_bytes, and the
# host expects the worker's error reply to be RESOURCE_LIMIT with the limit
# max_message_bytes. This plugin wraps its own worker's send_error to
# send that reply, so the test covers the host whatever the worker sends.
OVERSIZED = """
import gc

from sandbox import channel as rpc
from sandbox.worker import Server


def _name_size_limit(server):
    send_error = server.send_error

    def send(request_id, code, message, data=None):
        rejected = (
            code == rpc.PLUGIN_ERROR
            and isinstance(data, dict)
            and data.get("type") == "ProtocolError"
            and "exceeds the maximum" in message
        )
        if rejected:
            code = rpc.RESOURCE_LIMIT
            data = {"type": "ProtocolError", "limit": "max_message_bytes"}
        send_error(request_id, code, message, data)

    server.send_error = send


for _thing in gc.get_objects():
    if isinstance(_thing, Server):
        _name_size_limit(_thing)


def text(size):
    return "x" * size


def pid():
    import os
    return os.getpid()
"""
REPLY_LIMIT = 4096


def test_oversized_reply_raises_protocol_error(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("big", OVERSIZED, ["text", "pid"])
    host = make_host({"plugins": {"big": {"max_message_bytes": REPLY_LIMIT}}})
    worker_pid = host.execute_plugin("big", "pid")
    with pytest.raises(ProtocolError) as caught:
        host.execute_plugin("big", "text", {"size": REPLY_LIMIT * 2})
    assert not isinstance(caught.value, PluginError)
    assert "exceeds the maximum of 4096" in str(caught.value)
    assert "plugin 'big'" in str(caught.value)
    # The worker rejected its own reply, so it keeps serving.
    assert host.execute_plugin("big", "pid") == worker_pid
