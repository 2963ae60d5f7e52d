"""Plugin hosts for the suite, on each transport that PluginHost offers."""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox import PluginHost, Policy, PolicySet

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "examples" / "plugins"
ECHO_PLUGIN = "echo"
# Transports to measure when PluginHost takes a ``transport`` argument.
TRANSPORTS = ("stream", "shm")
# The name of the socketpair channel that PluginHost uses when it takes
# no ``transport`` argument.
DEFAULT_TRANSPORT = "stream"

# Limits wide enough for 16 MiB payloads and for a worker that serves
# calls for the whole run. The defaults (1 MiB messages, 256 MiB of
# address space, 10 s of CPU) would stop the payload and scaling parts.
# RLIMIT_NPROC counts every process of the workers' uid on the machine,
# the workers of other hosts included, so it is raised too.
BENCHMARK_POLICY = {
    "defaults": {
        "max_message_bytes": 64 << 20,
        "resources": {
            "memory_mb": 1024,
            "cpu_seconds": 3600,
            "processes": 256,
            "timeout": 300,
        },
    }
}


def host_takes_transport() -> bool:
    """Return whether this PluginHost has a ``transport`` parameter."""
    return "transport" in inspect.signature(PluginHost).parameters


def transports_to_measure() -> tuple[str, ...]:
    """Return the transports of PluginHost, or the one it always uses."""
    return TRANSPORTS if host_takes_transport() else (DEFAULT_TRANSPORT,)


def benchmark_policies() -> PolicySet:
    return Policy.from_dict(BENCHMARK_POLICY, source="<benchmark policy>")


def open_host(
    transport: str,
    plugin_dirs: Sequence[str | os.PathLike[str]] = (PLUGIN_DIR,),
    max_workers: int = 4,
) -> PluginHost:
    """Return a PluginHost over ``plugin_dirs`` that uses ``transport``.

    The argument is passed only to a PluginHost that takes it, so the
    suite runs on hosts with a single, socketpair channel too.
    """
    if host_takes_transport():
        # Passed through a dict because older PluginHost signatures, which
        # mypy may see, have no such parameter.
        options: dict[str, Any] = {"transport": transport}
        return PluginHost(
            plugin_dirs,
            benchmark_policies(),
            max_workers=max_workers,
            **options,
        )
    return PluginHost(
        plugin_dirs, benchmark_policies(), max_workers=max_workers
    )


def worker_pid(host: PluginHost, plugin: str) -> int:
    """Return the pid of the running worker of ``plugin``, starting it."""
    return int(host.worker_status(plugin)["pid"])


@contextmanager
def echo_copies(count: int) -> Iterator[tuple[Path, list[str]]]:
    """Yield a folder with ``count`` copies of the echo plugin and names.

    The folder is readable by every user, because a root host runs its
    workers as ``nobody``; pytest's and mkdtemp's folders are mode 700.
    """
    root = Path(tempfile.mkdtemp(prefix="sandbox-bench-plugins-"))
    try:
        os.chmod(root, 0o755)
        names = [write_echo_copy(root, index) for index in range(count)]
        yield root, names
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_echo_copy(root: Path, index: int) -> str:
    """Copy the echo plugin into ``root`` under a numbered name."""
    name = f"{ECHO_PLUGIN}-{index + 1}"
    folder = root / name
    folder.mkdir(mode=0o755)
    source = PLUGIN_DIR / ECHO_PLUGIN
    shutil.copy(source / "echo.py", folder / "echo.py")
    manifest = (source / "plugin.toml").read_text()
    (folder / "plugin.toml").write_text(
        manifest.replace(f'name = "{ECHO_PLUGIN}"', f'name = "{name}"', 1)
    )
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    return name
