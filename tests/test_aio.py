"""AsyncPluginHost against real sandboxed workers, one event loop per test.

Each test runs its coroutine with asyncio.run, so no pytest plugin is
needed. Many calls in flight must return the right results, and a slow call
must leave the loop running. Errors keep the types of the synchronous API.
A cancelled call ends without harming the next one, and close() leaves no
worker process behind. Secrets, capability schemas, enforcement reports and
plugin uids behave as they do through PluginHost.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import IS_ROOT, HostFactory, PluginWriter
from sandbox import (
    AsyncPluginHost,
    LaunchError,
    PluginCrashed,
    PluginError,
    PluginHost,
    PluginNotFound,
    PluginTimeout,
    Policy,
    ProtocolError,
    SandboxError,
    landlock,
)
from sandbox.broker import Argument
from sandbox.uids import DEFAULT_PLUGIN_UIDS, assign_plugin_uids

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


# -- parity with PluginHost --------------------------------------------------

# PluginHost methods that may start or stop a worker, and so are coroutines
# here, and those that only update the host's tables. interrupt() has no
# counterpart: cancelling the awaiting task ends an async call.
COROUTINE_METHODS = (
    "execute_plugin",
    "worker_status",
    "enforcement_report",
    "close",
)
PLAIN_METHODS = ("register_capability", "provide_secret", "subscribe")


def public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_every_host_method_has_counterpart() -> None:
    expected = {*COROUTINE_METHODS, *PLAIN_METHODS, "interrupt"}
    assert public_methods(PluginHost) == expected


def test_constructor_matches_plugin_host() -> None:
    sync_parameters = inspect.signature(PluginHost.__init__).parameters
    async_parameters = inspect.signature(AsyncPluginHost.__init__).parameters
    assert list(async_parameters) == list(sync_parameters)
    for name, parameter in sync_parameters.items():
        assert async_parameters[name] == parameter, name


@pytest.mark.parametrize("method", COROUTINE_METHODS + PLAIN_METHODS)
def test_method_matches_plugin_host(method: str) -> None:
    sync_method = getattr(PluginHost, method)
    async_method = getattr(AsyncPluginHost, method)
    sync_parameters = inspect.signature(sync_method).parameters
    async_parameters = inspect.signature(async_method).parameters
    assert async_parameters == sync_parameters
    is_coroutine = inspect.iscoroutinefunction(async_method)
    assert is_coroutine is (method in COROUTINE_METHODS)


# -- brokered capabilities ---------------------------------------------------

BROKER_SOURCE = """
    from sandbox.plugin import CapabilityDenied, call_capability, get_secret


    def attempt(capability, params):
        try:
            return {"ok": call_capability(capability, **params)}
        except CapabilityDenied as error:
            return {"denied": str(error)}


    def raise_secret(name):
        raise ValueError("the token is " + get_secret(name))
"""
BROKER_METHODS = ["attempt", "raise_secret"]
SECRET_NAME = "API_TOKEN"


async def attempt(
    host: AsyncPluginHost, plugin: str, capability: str, **params: Any
) -> Any:
    return await host.execute_plugin(
        plugin, "attempt", {"capability": capability, "params": params}
    )


def test_provided_secret_reaches_plugin(
    write_plugin: PluginWriter, make_async_host: AsyncHostFactory
) -> None:
    write_plugin("keeper", BROKER_SOURCE, BROKER_METHODS, ("get_secret",))
    policies = {
        "plugins": {
            "keeper": {
                "capabilities": ["get_secret"],
                "secrets": [SECRET_NAME],
            }
        }
    }
    token = secrets.token_hex(16)

    async def fetch() -> dict[str, Any]:
        async with make_async_host(policies) as host:
            # The worker runs before the secret exists, so the value must
            # reach the broker that serves the running worker.
            before = await attempt(
                host, "keeper", "get_secret", name=SECRET_NAME
            )
            host.provide_secret("keeper", SECRET_NAME, token)
            fetched = await attempt(
                host, "keeper", "get_secret", name=SECRET_NAME
            )
            try:
                await host.execute_plugin(
                    "keeper", "raise_secret", {"name": SECRET_NAME}
                )
            except SandboxError as error:
                raised: object = error
            else:
                raised = None
            return {"before": before, "fetched": fetched, "raised": raised}

    outcome = asyncio.run(fetch())

    assert "has not provided secret" in outcome["before"]["denied"]
    assert outcome["fetched"] == {"ok": token}
    assert isinstance(outcome["raised"], PluginError)
    assert outcome["raised"].message == "the token is [redacted]"
    assert token not in outcome["raised"].traceback


def test_schema_rejects_bad_argument(
    write_plugin: PluginWriter, make_async_host: AsyncHostFactory
) -> None:
    write_plugin("caller", BROKER_SOURCE, BROKER_METHODS, ("shout",))
    policies = {"plugins": {"caller": {"capabilities": ["shout"]}}}
    handled: list[dict[str, Any]] = []

    def shout(plugin: str, params: dict[str, Any]) -> str:
        handled.append(params)
        return str(params["text"]).upper()

    async def call_twice() -> tuple[Any, Any]:
        async with make_async_host(policies) as host:
            host.register_capability(
                "shout", shout, schema={"text": Argument(str, max_length=8)}
            )
            rejected = await attempt(host, "caller", "shout", text=5)
            accepted = await attempt(host, "caller", "shout", text="hi")
            return rejected, accepted

    rejected, accepted = asyncio.run(call_twice())

    assert "denied" in rejected, f"the handler ran: {rejected}"
    assert "must be str, got int" in rejected["denied"]
    assert accepted == {"ok": "HI"}
    assert handled == [{"text": "hi"}]


# -- enforcement report and uids ---------------------------------------------

# The worker imports the plugin's module before it replies to the host, so
# this delay lengthens every worker start of the plugin below.
IMPORT_SECONDS = 0.5
SLOW_IMPORT_SOURCE = f"""
    import os
    import time

    time.sleep({IMPORT_SECONDS})


    def pid():
        return os.getpid()
"""


def test_enforcement_report_leaves_loop_running(
    write_plugin: PluginWriter, make_async_host: AsyncHostFactory
) -> None:
    write_plugin("sluggish", SLOW_IMPORT_SOURCE, ["pid"])
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def report_while_ticking() -> tuple[dict[str, Any], int, Any]:
        async with make_async_host() as host:
            ticker = asyncio.create_task(tick())
            before = ticks
            report = await host.enforcement_report("sluggish")
            during = ticks - before
            ticker.cancel()
            return report, during, await host.execute_plugin("sluggish", "pid")

    report, ticks_during_report, pid = asyncio.run(report_while_ticking())

    assert report["plugin"] == "sluggish"
    assert report["variant"] == "running"
    assert report["pid"] == pid
    assert ticks_during_report >= 5


@pytest.fixture
def landlock_abi_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the host plan ABI 3 rulesets, which lack IOCTL_DEV and TCP."""
    if landlock.abi_version() < 5:
        pytest.skip("the kernel lacks the rights an ABI 3 plan leaves out")
    monkeypatch.setattr(landlock, "_query_abi", lambda: (3, 0))


@pytest.mark.usefixtures("landlock_abi_3")
def test_strict_false_reports_gap(
    make_async_host: AsyncHostFactory,
) -> None:
    async def reports() -> tuple[object, dict[str, Any]]:
        async with (
            make_async_host() as strict,
            make_async_host(strict=False) as permissive,
        ):
            try:
                rejected: object = await strict.enforcement_report("alpha")
            except SandboxError as error:
                rejected = error
            return rejected, await permissive.enforcement_report("alpha")

    rejected, report = asyncio.run(reports())

    assert isinstance(rejected, LaunchError)
    assert rejected.stage == "landlock"
    assert report["complete"] is False
    assert report["layers"]["landlock"]["status"] == "not_enforced"
    assert report["layers"]["landlock"]["enforced"]["abi"] == 3


def kernel_ids(status: dict[str, Any], key: str) -> list[int]:
    """Return the real, effective, saved and filesystem ids of ``key``."""
    return [int(value) for value in status["kernel"][key].split()]


@pytest.mark.skipif(not IS_ROOT, reason="only a root host assigns uids")
def test_plugin_uids_none_runs_nobody(
    make_async_host: AsyncHostFactory,
) -> None:
    async def statuses() -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        async with (
            make_async_host(plugin_uids=None) as shared,
            make_async_host() as own,
        ):
            return (
                await shared.worker_status("alpha"),
                await own.worker_status("alpha"),
                list(own.plugins),
            )

    shared, own, names = asyncio.run(statuses())

    assert kernel_ids(shared, "Uid") == [65534] * 4
    assert kernel_ids(shared, "Gid") == [65534] * 4
    own_uid = assign_plugin_uids(names, DEFAULT_PLUGIN_UIDS)["alpha"]
    assert kernel_ids(own, "Uid") == [own_uid] * 4
