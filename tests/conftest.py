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
from sandbox.platform import unsupported_reason
from sandbox.uids import REGISTRY_ENVIRONMENT

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IS_ROOT = os.geteuid() == 0

# What needs the Linux build of sandbox._native on a Linux kernel, and is
# skipped elsewhere (macOS, or SANDBOX_PORTABLE_BUILD=1): every test that
# starts a sandboxed worker, since a worker's policy always requests
# seccomp and Landlock, and the tests of the Linux mechanisms themselves.
# A test outside these tables that starts a worker without the fixtures
# below needs @pytest.mark.linux.
WORKER_FIXTURES = ("make_host", "make_async_host")
LINUX_MODULES = frozenset(
    {
        "test_bench_smoke.py",
        "test_hardening.py",
        "test_hostile_worker.py",
        "test_isolation.py",
        "test_landlock.py",
        "test_lifecycle.py",
        "test_network.py",
        "test_observe.py",
        "test_seccomp.py",
    }
)
# Modules whose import itself needs Linux (pyseccomp, or a table of Linux
# system call numbers keyed by os.uname().machine), so another kernel
# cannot even collect them.
LINUX_IMPORT_MODULES = LINUX_MODULES | {"test_shm.py"}
# Test name prefixes per module, for modules that also hold portable tests.
LINUX_TESTS = {
    "test_cli.py": ("test_verify_", "test_call_", "test_demo_"),
    "test_enforcement.py": (
        "test_planned_report_of_this_machine",
        "test_verify_",
        "test_demo_",
    ),
    "test_launcher.py": (
        # Landlock and seccomp stages, the capability bounding set,
        # glibc's reserved signals and the parent-death signal.
        "test_failed_stage_raises_launch_error",
        "test_identity_switch_not_permitted",
        "test_signal_dispositions_reset",
        "test_child_dies_with_parent",
    ),
    "test_uids.py": ("test_unprivileged_host_ignores_plugin_uids",),
}


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
    # Root hosts record plugin uids in a registry that is never pruned, so
    # tests, and the hosts they start in subprocesses, use a throwaway one
    # instead of the machine's.
    if REGISTRY_ENVIRONMENT not in os.environ:
        folder = tempfile.mkdtemp(prefix="sandbox-test-uids-")
        os.environ[REGISTRY_ENVIRONMENT] = os.path.join(folder, "uids.json")
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    config.addinivalue_line(
        "markers",
        "uses_host: starts workers through make_host, so --transport "
        "applies (set on every such test)",
    )
    config.addinivalue_line(
        "markers",
        "linux: needs the Linux build of sandbox._native on a Linux "
        "kernel; skipped elsewhere (set from the tables in conftest.py)",
    )


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if sys.platform.startswith("linux"):
        return None
    return collection_path.name in LINUX_IMPORT_MODULES or None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = unsupported_reason()
    for item in items:
        if "make_host" in getattr(item, "fixturenames", ()):
            item.add_marker("uses_host")
        if needs_linux(item):
            item.add_marker("linux")
            if missing is not None:
                reason = f"seccomp, Landlock and the rest are {missing}"
                item.add_marker(pytest.mark.skip(reason=reason))


def needs_linux(item: pytest.Item) -> bool:
    """Return whether ``item`` is marked, in the tables or starts workers."""
    if item.get_closest_marker("linux") is not None:
        return True
    fixtures = getattr(item, "fixturenames", ())
    if any(name in fixtures for name in WORKER_FIXTURES):
        return True
    module = item.path.name
    if module in LINUX_MODULES:
        return True
    name = getattr(item, "originalname", item.name)
    return name.startswith(LINUX_TESTS.get(module, ()))


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


def run_script_as_nobody(
    folder: Path, name: str, source: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Write ``source`` to ``folder``/``name`` and run it as user nobody.

    It runs with this interpreter, from ``folder``, and imports the same
    sandbox package, so a test can start a host that is not root.
    """
    script = folder / name
    script.write_text(textwrap.dedent(source))
    os.chmod(script, 0o644)
    package_parent = Path(sandbox.__file__).resolve().parents[1]
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
        env=dict(os.environ, PYTHONPATH=str(package_parent)),
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


@pytest.fixture(scope="session")
def example_folders() -> None:
    """Create the folders that examples/policies.toml names.

    The policy loads only when they exist, and ``sandbox demo`` is what
    creates them on a fresh machine.
    """
    from sandbox import demo

    demo.prepare_notification_folder()
    demo.prepare_files_folders()
