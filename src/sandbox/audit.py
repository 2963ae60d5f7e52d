"""Structured security events: JSON lines on a logger, and subscribers.

Each event is one decision or lifecycle change of one worker. Events carry
the plugin name and a timestamp and are built by the host from data it
controls. Text that a plugin sent enters an event only through
printable_text(), so it is never logged verbatim.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("sandbox.audit")

AuditEvent = dict[str, Any]
Subscriber = Callable[[AuditEvent], None]


class AuditLog:
    """Fans each event out to the ``sandbox.audit`` logger and subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with every event; return an unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: str, plugin: str, **fields: Any) -> None:
        record: AuditEvent = {
            "event": event,
            "plugin": plugin,
            "time": time.time(),
            **fields,
        }
        logger.info("%s", json.dumps(record, sort_keys=True, default=str))
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(record)
            except Exception:
                # A subscriber's bug must not break the call it reports.
                logger.exception("audit subscriber %r failed", callback)


# Control characters (C0, DEL, C1), format characters such as the bidi
# overrides, line and paragraph separators, and lone surrogates: each can
# rewrite a terminal line or hide text when a log is shown.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable_text(text: str, limit: int) -> str:
    """Escape unprintable characters in text from a plugin, and bound it.

    Keeps at most ``limit`` characters of ``text`` and writes each
    unprintable one as a ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``
    escape, so an audit event field from plugin text fits on one line.
    """
    kept = text[:limit]
    cleaned = "".join(
        _escaped(char)
        if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES
        else char
        for char in kept
    )
    return cleaned + "..." if len(text) > limit else cleaned


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
