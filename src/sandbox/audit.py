"""Structured security events: JSON lines on a logger, and subscribers.

Each event is one decision or lifecycle change of one worker. Events carry
the plugin name and a timestamp and are built by the host from data it
controls, so nothing the plugin sends is logged verbatim.
"""

from __future__ import annotations

import json
import logging
import threading
import time
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
