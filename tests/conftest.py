"""Shared fixtures: plugins written on the fly and hosts that clean up.

pytest's own tmp_path lives under a mode-700 folder, which the workers of a
root host (uid nobody) cannot enter, so plugins go in a world-readable
temporary folder instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import sandbox
from sandbox import PluginHost, Policy

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IS_ROOT = os.geteuid() == 0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--transport",
        choices=("auto", "shm", "stream"),
        default="auto",
        help="channel of the hosts that make_host builds: shared-memory "
        "rings, a socketpair, or auto (rings where supported); "
        "default: auto",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "uses_host: starts workers through make_host, so --transport "
        "applies (set on every such test)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "make_host" in getattr(item, "fixturenames", ()):
            item.add_marker("uses_host")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports the same sandbox."""
    package_parent = Path(sandbox.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


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
def make_host(
    plugin_root: Path, pytestconfig: pytest.Config
) -> Iterator[HostFactory]:
    """Build PluginHosts over ``plugin_root`` and close them afterwards.

    The hosts use the transport that --transport names unless a test
    passes its own.
    """
    hosts: list[PluginHost] = []
    transport = pytestconfig.getoption("--transport")

    def make(
        policies: Mapping[str, Any] | None = None,
        *,
        plugin_dirs: list[str | Path] | None = None,
        **options: Any,
    ) -> PluginHost:
        policy_set = Policy.from_dict(policies) if policies else None
        options.setdefault("transport", transport)
        host = PluginHost(plugin_dirs or [plugin_root], policy_set, **options)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.close()
