"""Send an alert to the host and append it to a log file.

The policy lets this plugin write only into /tmp/notifications.
"""

import os
import time

from sandbox.plugin import notify

LOG_FOLDER = "/tmp/notifications"


def send_alert(message: str, level: str = "info") -> dict:
    notify(message, level=level)
    path = os.path.join(LOG_FOLDER, "alerts.log")
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {level} {message}\n")
    return {"delivered": True, "logged_to": path}
