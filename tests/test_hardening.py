"""Host defences against workers that abuse the protocol or the host."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import HostFactory, PluginWriter
from sandbox import (
    PluginError,
    PluginHost,
    PluginTimeout,
    ProtocolError,
    SandboxError,
    seccomp,
)
from sandbox.uids import DEFAULT_PLUGIN_UIDS, assign_plugin_uids

IS_ROOT = os.geteuid() == 0


def run_bounded(function: Any, seconds: float) -> Any:
    """Run function in a thread; fail the test if it has not ended in time."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_capability_flood_ends_the_call(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "flooder",
        """
        from sandbox.plugin import notify

        def flood():
            while True:
                notify("again")

        def ping():
            return "pong"
        """,
        ["flood", "ping"],
        capabilities=("notify",),
    )
    host = make_host({"plugins": {"flooder": {"capabilities": ["notify"]}}})
    with pytest.raises((ProtocolError, PluginTimeout)):
        run_bounded(
            lambda: host.execute_plugin("flooder", "flood", timeout=5), 60
        )
    assert host.execute_plugin("flooder", "ping") == "pong"


def test_deep_scratch_folder_is_removed(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "digger",
        """
        import os

        def dig(levels):
            for _ in range(levels):
                os.mkdir("d")
                os.chdir("d")
            return levels
        """,
        ["dig"],
    )
    host = make_host()
    assert host.execute_plugin("digger", "dig", {"levels": 3000}) == 3000
    root = host.scratch_root
    host.close()
    assert [name for name in os.listdir(root) if "digger" in name] == []


def test_failed_spawn_plan_leaks_nothing(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_plugin("plain", "def ping():\n    return 'pong'\n", ["ping"])
    host = make_host()

    def fail(spec: object) -> None:
        raise RuntimeError("no seccomp program today")

    monkeypatch.setattr(seccomp, "build_filter", fail)
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(RuntimeError, match="no seccomp program"):
            host.execute_plugin("plain", "ping")
    assert len(os.listdir("/proc/self/fd")) == descriptors
    root = host.scratch_root
    assert [name for name in os.listdir(root) if "plain" in name] == []
    assert psutil.Process().children() == []


def test_forged_hello_reply_leaks_no_worker(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "liar",
        """
        import sandbox.procstate

        sandbox.procstate.report = lambda: []

        def ping():
            return "pong"
        """,
        ["ping"],
    )
    host = make_host()
    for _ in range(3):
        with pytest.raises(ProtocolError):
            host.execute_plugin("liar", "ping")
    assert psutil.Process().children() == []


@pytest.mark.skipif(not IS_ROOT, reason="the uid drop needs a root host")
def test_kernel_view_ignores_forged_report(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "forger",
        """
        import sandbox.procstate

        real = sandbox.procstate.report
        sandbox.procstate.report = lambda: {**real(), "uid": [0, 0, 0]}

        def ping():
            return "pong"
        """,
        ["ping"],
    )
    host = make_host()
    status = host.worker_status("forger")
    uid = assign_plugin_uids(host.plugins, DEFAULT_PLUGIN_UIDS)["forger"]
    assert status["uid"] == [0, 0, 0]
    assert status["kernel"]["Uid"].split() == [str(uid)] * 4
    assert status["kernel"]["Seccomp"] == "2"


def test_escape_sequences_from_plugin_are_escaped(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "painter",
        """
        def paint():
            raise ValueError("\\x1b[2J\\x1b]0;owned\\x07 cleared")
        """,
        ["paint"],
    )
    with pytest.raises(PluginError) as caught:
        make_host().execute_plugin("painter", "paint")
    assert "\x1b" not in str(caught.value)
    assert "\x07" not in str(caught.value)
    assert "\\x1b[2J" in caught.value.message


def test_stale_scratch_of_dead_host_is_swept(
    write_plugin: PluginWriter, plugin_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "scratch"
    root.mkdir()
    dead = psutil.Process().pid
    while psutil.pid_exists(dead):
        dead += 7919
    stale = root / f"gone-{dead}-abcdef12"
    stale.mkdir()
    (stale / "leftover").write_text("x")
    mine = root / f"live-{os.getpid()}-abcdef12"
    mine.mkdir()
    PluginHost([plugin_root], scratch_root=str(root)).close()
    assert not stale.exists()
    assert mine.exists()


def test_many_threads_fit_default_memory_limit(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "threaded",
        """
        import threading

        def spawn(count):
            done = []
            threads = [
                threading.Thread(target=done.append, args=(i,))
                for i in range(count)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return len(done)
        """,
        ["spawn"],
    )
    host = make_host()
    assert host.execute_plugin("threaded", "spawn", {"count": 12}) == 12


def test_closed_host_rejects_calls(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("late", "def ping():\n    return 1\n", ["ping"])
    host = make_host()
    host.close()
    with pytest.raises(SandboxError):
        host.execute_plugin("late", "ping")
