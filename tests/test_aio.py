"""AsyncPluginHost against real sandboxed workers, one event loop per test.

Each test runs its coroutine with asyncio.run, so no pytest plugin is
needed. Many calls in flight must return the right results, and a slow call
must leave the loop running. Errors keep the types of the synchronous API.
A cancelled call ends without harming the next one, and close() leaves no
worker process behind.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import HostFactory, PluginWriter
from sandbox import (
    AsyncPluginHost,
    PluginCrashed,
    PluginError,
    PluginHost,
    PluginNotFound,
    PluginTimeout,
    Policy,
    ProtocolError,
    SandboxError,
)

PLUGINS = ("alpha", "beta", "gamma")
SOURCE = """
    import os
    import time

    from sandbox.plugin import notify


    def pid():
        return os.getpid()


    def tag(index):
        return [__name__, index, os.getpid()]


    def echo(value):
        return value


    def slow(seconds, value):
        notify("slow call started")
        time.sleep(seconds)
        return value


    def fail(message):
        raise ValueError(message)
"""
METHODS = ["pid", "tag", "echo", "slow", "fail"]
NOTIFY = {"plugins": {name: {"capabilities": ["notify"]} for name in PLUGINS}}
# Far longer than any test waits, so a call that was not ended by its
# cancellation is still running when the test checks.
HANGING_SECONDS = 30

AsyncHostFactory = Callable[..., AsyncPluginHost]


@pytest.fixture
def plugins(write_plugin: PluginWriter) -> list[Path]:
    return [
        write_plugin(name, SOURCE, METHODS, capabilities=("notify",))
        for name in PLUGINS
    ]


@pytest.fixture
def make_async_host(
    plugin_root: Path, plugins: list[Path]
) -> Iterator[AsyncHostFactory]:
    """Build AsyncPluginHosts over ``plugin_root``; all close afterwards."""
    hosts: list[AsyncPluginHost] = []

    def make(
        policies: dict[str, Any] | None = None, **options: Any
    ) -> AsyncPluginHost:
        policy_set = Policy.from_dict(policies) if policies else None
        host = AsyncPluginHost([plugin_root], policy_set, **options)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        asyncio.run(host.close())


def is_running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def wait_for_notifications(
    host: AsyncPluginHost | PluginHost, count: int
) -> None:
    """Wait until ``count`` slow calls have begun in their workers."""
    deadline = time.monotonic() + 10
    while len(host.notifications) < count:
        assert time.monotonic() < deadline, "the slow call never began"
        await asyncio.sleep(0.01)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait, far less than HANGING_SECONDS, for it."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert task in done, "the cancelled call did not end"
    assert task.cancelled()


# -- calls in flight ---------------------------------------------------------


def test_fifty_concurrent_calls_across_plugins(
    make_async_host: AsyncHostFactory,
) -> None:
    async def call_all() -> list[Any]:
        async with make_async_host() as host:
            calls = [
                host.execute_plugin(
                    PLUGINS[index % len(PLUGINS)], "tag", {"index": index}
                )
                for index in range(50)
            ]
            return await asyncio.gather(*calls)

    results = asyncio.run(call_all())

    assert len(results) == 50
    pids: dict[str, set[int]] = {name: set() for name in PLUGINS}
    for index, (module, echoed, pid) in enumerate(results):
        assert module == PLUGINS[index % len(PLUGINS)]
        assert echoed == index
        pids[module].add(pid)
    for name in PLUGINS:
        assert len(pids[name]) == 1, f"{name} changed worker: {pids[name]}"
    assert len(set.union(*pids.values())) == len(PLUGINS)


def test_slow_call_leaves_loop_running(
    make_async_host: AsyncHostFactory,
) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def call_while_ticking() -> tuple[Any, int]:
        async with make_async_host(NOTIFY) as host:
            ticker = asyncio.create_task(tick())
            before = ticks
            result = await host.execute_plugin(
                "alpha", "slow", {"seconds": 0.5, "value": "done"}
            )
            during = ticks - before
            ticker.cancel()
            return result, during

    result, ticks_during_call = asyncio.run(call_while_ticking())

    assert result == "done"
    assert ticks_during_call >= 5


# -- errors ------------------------------------------------------------------

ERROR_CASES = [
    pytest.param("alpha", "fail", {"message": "boom"}, None, PluginError),
    pytest.param(
        "alpha",
        "slow",
        {"seconds": HANGING_SECONDS, "value": 0},
        0.3,
        PluginTimeout,
        id="timeout",
    ),
    pytest.param("missing", "pid", None, None, PluginNotFound),
    pytest.param("alpha", "missing", None, None, PluginNotFound),
    pytest.param("alpha", "echo", [1, 2], None, ProtocolError),
]


@pytest.mark.parametrize(
    ("plugin", "method", "params", "timeout", "expected"), ERROR_CASES
)
def test_errors_match_sync_api(
    make_async_host: AsyncHostFactory,
    make_host: HostFactory,
    plugin: str,
    method: str,
    params: Any,
    timeout: float | None,
    expected: type[SandboxError],
) -> None:
    with pytest.raises(expected) as sync_error:
        make_host(NOTIFY).execute_plugin(
            plugin, method, params, timeout=timeout
        )

    async def call() -> Any:
        async with make_async_host(NOTIFY) as host:
            return await host.execute_plugin(
                plugin, method, params, timeout=timeout
            )

    with pytest.raises(expected) as async_error:
        asyncio.run(call())

    assert type(async_error.value) is type(sync_error.value)
    assert str(async_error.value) == str(sync_error.value)


def test_plugin_error_keeps_fields(make_async_host: AsyncHostFactory) -> None:
    async def call() -> Any:
        async with make_async_host() as host:
            return await host.execute_plugin(
                "beta", "fail", {"message": "boom"}
            )

    with pytest.raises(PluginError) as caught:
        asyncio.run(call())

    assert caught.value.type_name == "ValueError"
    assert caught.value.message == "boom"
    assert "raise ValueError(message)" in caught.value.traceback


# -- cancellation ------------------------------------------------------------


def test_cancelled_call_kills_worker(
    make_async_host: AsyncHostFactory,
) -> None:
    async def cancel_then_call() -> dict[str, Any]:
        async with make_async_host(NOTIFY) as host:
            first_pid = await host.execute_plugin("alpha", "pid")
            slow = asyncio.create_task(
                host.execute_plugin(
                    "alpha",
                    "slow",
                    {"seconds": HANGING_SECONDS, "value": "cancelled"},
                )
            )
            await wait_for_notifications(host, 1)
            await cancel_and_wait(slow)
            first_alive = is_running(first_pid)
            echoed = await host.execute_plugin(
                "alpha", "echo", {"value": "next"}
            )
            return {
                "first_pid": first_pid,
                "first_alive": first_alive,
                "echoed": echoed,
                "next_pid": await host.execute_plugin("alpha", "pid"),
            }

    outcome = asyncio.run(cancel_then_call())

    assert outcome["first_alive"] is False
    assert outcome["echoed"] == "next"
    assert outcome["next_pid"] != outcome["first_pid"]


def test_wait_for_timeout_ends_call(
    make_async_host: AsyncHostFactory,
) -> None:
    async def time_out_then_call() -> tuple[int, bool, Any]:
        async with make_async_host(NOTIFY) as host:
            first_pid = await host.execute_plugin("beta", "pid")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(
                    host.execute_plugin(
                        "beta",
                        "slow",
                        {"seconds": HANGING_SECONDS, "value": "late"},
                    ),
                    0.5,
                )
            first_alive = is_running(first_pid)
            return (
                first_pid,
                first_alive,
                await host.execute_plugin("beta", "echo", {"value": 7}),
            )

    first_pid, first_alive, echoed = asyncio.run(time_out_then_call())

    assert first_alive is False, f"worker {first_pid} still runs"
    assert echoed == 7


def test_cancelled_queued_call_spares_running_call(
    make_async_host: AsyncHostFactory,
) -> None:
    async def cancel_queued() -> tuple[int, Any, int]:
        async with make_async_host(NOTIFY) as host:
            pid_before = await host.execute_plugin("gamma", "pid")
            running = asyncio.create_task(
                host.execute_plugin(
                    "gamma", "slow", {"seconds": 0.5, "value": "first"}
                )
            )
            await wait_for_notifications(host, 1)
            queued = asyncio.create_task(
                host.execute_plugin("gamma", "echo", {"value": "queued"})
            )
            await asyncio.sleep(0.05)
            await cancel_and_wait(queued)
            first = await running
            return pid_before, first, await host.execute_plugin("gamma", "pid")

    pid_before, first, pid_after = asyncio.run(cancel_queued())

    assert first == "first"
    assert pid_after == pid_before


def test_cancel_reaches_worker_evicted_from_pool(
    make_async_host: AsyncHostFactory,
) -> None:
    """The pool evicts the least recently used worker, even a busy one, and
    waits for its call. Cancelling that call must still kill the worker."""

    async def cancel_evicted() -> dict[str, Any]:
        async with make_async_host(NOTIFY, max_workers=2) as host:
            alpha_pid = await host.execute_plugin("alpha", "pid")
            slow = asyncio.create_task(
                host.execute_plugin(
                    "alpha",
                    "slow",
                    {"seconds": HANGING_SECONDS, "value": "cancelled"},
                )
            )
            await wait_for_notifications(host, 1)
            # beta becomes the most recently used, so gamma evicts alpha.
            await host.execute_plugin("beta", "pid")
            gamma = asyncio.create_task(
                host.execute_plugin("gamma", "echo", {"value": "gamma"})
            )
            await asyncio.sleep(0.2)
            gamma_waited = not gamma.done()
            await cancel_and_wait(slow)
            return {
                "alpha_pid": alpha_pid,
                "alpha_alive": is_running(alpha_pid),
                "gamma_waited": gamma_waited,
                "gamma": await asyncio.wait_for(gamma, 10),
            }

    outcome = asyncio.run(cancel_evicted())

    assert outcome["gamma_waited"], "gamma did not wait for the alpha slot"
    assert outcome["alpha_alive"] is False, (
        f"evicted worker {outcome['alpha_pid']} still runs"
    )
    assert outcome["gamma"] == "gamma"


def test_sync_interrupt_ends_call(
    make_host: HostFactory, plugins: list[Path]
) -> None:
    host = make_host(NOTIFY)
    assert host.interrupt("alpha") is False
    errors: list[BaseException] = []

    def call_slow() -> None:
        try:
            host.execute_plugin(
                "alpha", "slow", {"seconds": HANGING_SECONDS, "value": 0}
            )
        except SandboxError as error:
            errors.append(error)

    thread = threading.Thread(target=call_slow, daemon=True)
    thread.start()
    asyncio.run(wait_for_notifications(host, 1))
    assert host.interrupt("alpha") is True
    thread.join(10)

    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], PluginCrashed)
    assert host.execute_plugin("alpha", "echo", {"value": 3}) == 3


# -- closing -----------------------------------------------------------------


def test_close_stops_every_worker(make_async_host: AsyncHostFactory) -> None:
    async def close_with_call_in_flight() -> dict[str, Any]:
        host = make_async_host(NOTIFY)
        pids = await asyncio.gather(
            *(host.execute_plugin(name, "pid") for name in PLUGINS)
        )
        slow = asyncio.create_task(
            host.execute_plugin(
                "alpha", "slow", {"seconds": HANGING_SECONDS, "value": 0}
            )
        )
        await wait_for_notifications(host, 1)
        await host.close()
        children = psutil.Process().children()
        slow_outcome: object = (
            await asyncio.gather(slow, return_exceptions=True)
        )[0]
        try:
            await host.execute_plugin("beta", "pid")
        except SandboxError as error:
            after_close: object = error
        else:
            after_close = None
        return {
            "pids": pids,
            "children": children,
            "slow_outcome": slow_outcome,
            "after_close": after_close,
        }

    outcome = asyncio.run(close_with_call_in_flight())

    assert len(set(outcome["pids"])) == len(PLUGINS)
    assert outcome["children"] == []
    assert [pid for pid in outcome["pids"] if is_running(pid)] == []
    assert isinstance(outcome["slow_outcome"], SandboxError)
    assert isinstance(outcome["after_close"], SandboxError)


def test_worker_status_reports_worker(
    make_async_host: AsyncHostFactory,
) -> None:
    async def status_and_pid() -> tuple[dict[str, Any], Any]:
        async with make_async_host() as host:
            status = await host.worker_status("beta")
            return status, await host.execute_plugin("beta", "pid")

    status, pid = asyncio.run(status_and_pid())

    assert status["pid"] == pid
    assert status["no_new_privs"] == 1
