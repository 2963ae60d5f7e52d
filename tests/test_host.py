"""PluginHost bookkeeping: notifications, audit events, closing."""

from __future__ import annotations

import pytest

from conftest import HostFactory, PluginWriter
from sandbox import CapabilityDenied
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
