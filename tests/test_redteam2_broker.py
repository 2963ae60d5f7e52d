"""Attacks on write_file of a root host, which opens files as the plugin.

The kernel clears the set-user-ID and set-group-ID bits of a file when a
process without CAP_FSETID writes to it, so content that another user
writes never runs with the owner's ids. Each test names the protection
it expects.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IS_ROOT, HostFactory, PluginWriter
from sandbox import PluginHost

RUNNER = """
import os

from sandbox.plugin import CapabilityDenied, call_capability


def attempt(capability, params):
    try:
        return {"ok": call_capability(capability, **params)}
    except CapabilityDenied as error:
        return {"denied": str(error)}


def set_mode(path, mode):
    os.chmod(path, mode)


def rewrite(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, text.encode())
    os.close(fd)
"""

SET_ID_BITS = stat.S_ISUID | stat.S_ISGID


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sandbox-redteam2-"))
    os.chmod(folder, 0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def attempt(
    host: PluginHost, plugin: str, capability: str, **params: Any
) -> Any:
    return host.execute_plugin(
        plugin, "attempt", {"capability": capability, "params": params}
    )


def _writer_host(
    write_plugin: PluginWriter, make_host: HostFactory, folder: Path
) -> PluginHost:
    write_plugin(
        "writer", RUNNER, ["attempt", "set_mode", "rewrite"], ("write_file",)
    )
    return make_host(
        {
            "plugins": {
                "writer": {
                    "capabilities": ["write_file"],
                    "files": {"write": [str(folder)]},
                    "filesystem": {"write": [str(folder)]},
                }
            }
        }
    )


def _set_id_bits(path: Path) -> int:
    return path.stat().st_mode & SET_ID_BITS


@pytest.mark.skipif(not IS_ROOT, reason="per-plugin uids need a root host")
def test_write_file_clears_set_id_bits(
    write_plugin: PluginWriter, make_host: HostFactory, shared_folder: Path
) -> None:
    host = _writer_host(write_plugin, make_host, shared_folder)
    path = shared_folder / "tool"
    created = attempt(
        host, "writer", "write_file", path=str(path), data=b"first"
    )
    assert created == {"ok": 5}
    set_mode = {"path": str(path), "mode": 0o6755}
    # The kernel's rule, shown by a write of the plugin itself.
    host.execute_plugin("writer", "set_mode", set_mode)
    assert _set_id_bits(path) == SET_ID_BITS
    host.execute_plugin("writer", "rewrite", {"path": str(path), "text": "x"})
    assert _set_id_bits(path) == 0
    # The same write through the broker.
    host.execute_plugin("writer", "set_mode", set_mode)
    replaced = attempt(
        host, "writer", "write_file", path=str(path), data=b"second"
    )
    assert replaced == {"ok": 6}
    assert _set_id_bits(path) == 0, oct(path.stat().st_mode)
