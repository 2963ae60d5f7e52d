"""Report the environment visible to this plugin, directly and via the host."""

import os

from sandbox.plugin import CapabilityDenied, read_env


def visible_environment() -> dict:
    return dict(os.environ)


def read_variable(name: str) -> dict:
    try:
        return {"name": name, "value": read_env(name), "denied": False}
    except CapabilityDenied as error:
        return {"name": name, "value": None, "denied": str(error)}
