"""Shared fixtures: plugins written on the fly and hosts that clean up.

pytest's own tmp_path lives under a mode-700 folder, which the workers of a
root host (uid nobody) cannot enter, so plugins go in a world-readable
temporary folder instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sandbox import PluginHost, Policy

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def plugin_root() -> Iterator[Path]:
    """Return a fresh folder, readable by every uid, for test plugins."""
    folder = tempfile.mkdtemp(prefix="sandbox-test-plugins-")
    os.chmod(folder, 0o755)
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


PluginWriter = Callable[..., Path]


@pytest.fixture
def write_plugin(plugin_root: Path) -> PluginWriter:
    """Write a plugin folder; ``source`` is the entry module's code."""

    def write(
        name: str,
        source: str,
        methods: list[str],
        capabilities: tuple[str, ...] = (),
    ) -> Path:
        folder = plugin_root / name
        folder.mkdir()
        module = name.replace("-", "_")
        caps = ", ".join(f'"{c}"' for c in capabilities)
        listed = ", ".join(f'"{m}"' for m in methods)
        (folder / "plugin.toml").write_text(
            f'name = "{name}"\nversion = "1.0"\nentry = "{module}"\n'
            f"methods = [{listed}]\ncapabilities = [{caps}]\n"
        )
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
        for path in (folder, *folder.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        return folder

    return write


HostFactory = Callable[..., PluginHost]


@pytest.fixture
def make_host(plugin_root: Path) -> Iterator[HostFactory]:
    """Build PluginHosts over ``plugin_root``; all are closed afterwards."""
    hosts: list[PluginHost] = []

    def make(
        policies: Mapping[str, Any] | None = None,
        *,
        plugin_dirs: list[str | Path] | None = None,
        **options: Any,
    ) -> PluginHost:
        policy_set = Policy.from_dict(policies) if policies else None
        host = PluginHost(plugin_dirs or [plugin_root], policy_set, **options)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.close()
