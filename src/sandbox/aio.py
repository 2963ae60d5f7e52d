"""AsyncPluginHost: PluginHost for asyncio, with many calls in flight.

Every blocking step of a call (starting a worker, waiting for its reply,
stopping workers) runs on a thread pool, so the event loop never waits for
a plugin. Calls to one plugin queue on an asyncio.Lock in arrival order and
reach the thread pool one at a time. Calls to different plugins run in
parallel.

Cancelling the task that awaits a call ends the call. A call still queued
is dropped before anything reaches the worker. A call that has reached its
worker ends the way a timeout ends it: the worker is killed, and the next
call to that plugin starts a new one. Letting the call finish in its thread
and dropping the result would be simpler. But the plugin could then run
until its timeout, and keep calling host capabilities, for a caller that is
gone, and every later call to that plugin would wait behind it. The
plugin's next call starts only after the cancelled call has ended. The
cancelled task finishes then too, unless it is cancelled a second time
while it waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .audit import AuditEvent
from .broker import Schema
from .errors import SandboxError
from .host import CapabilityHandler, Notification, PluginHost
from .manifest import PluginManifest
from .policy import PolicySet, Resources
from .uids import DEFAULT_PLUGIN_UIDS

T = TypeVar("T")

# How long to wait between interrupts of a cancelled call that has not
# reached a worker yet, for example because the worker is still starting.
INTERRUPT_RETRY_SECONDS = 0.02


class AsyncPluginHost:
    """Runs plugins like PluginHost, with coroutines for an event loop.

    Use one instance from one event loop. The constructor takes the same
    arguments as PluginHost and reads the plugin manifests at once. Capability
    handlers and audit subscribers run on the call threads, not on the loop.

    Methods that may start or stop a worker are coroutines that run the
    PluginHost method on a thread: execute_plugin, worker_status,
    enforcement_report and close. Methods that only update the host's
    tables are plain methods that return at once: register_capability,
    provide_secret and subscribe.
    """

    def __init__(
        self,
        plugin_dirs: Iterable[str | os.PathLike[str]],
        policies: PolicySet | None = None,
        *,
        max_workers: int = 4,
        worker_timeout: float = 30.0,
        resources: Resources | None = None,
        python: str | None = None,
        scratch_root: str | None = None,
        transport: str = "auto",
        strict: bool = True,
        plugin_uids: range | None = DEFAULT_PLUGIN_UIDS,
        uid_registry: str | os.PathLike[str] | None = None,
        allow_shared_users: bool = False,
    ) -> None:
        self._host = PluginHost(
            plugin_dirs,
            policies,
            max_workers=max_workers,
            worker_timeout=worker_timeout,
            resources=resources,
            python=python,
            scratch_root=scratch_root,
            transport=transport,
            strict=strict,
            plugin_uids=plugin_uids,
            uid_registry=uid_registry,
            allow_shared_users=allow_shared_users,
        )
        # At most max_workers workers are alive and each runs one call at a
        # time, so more call threads than that would only wait in the host.
        threads = max(1, min(max_workers, len(self._host.plugins)))
        self._call_threads = ThreadPoolExecutor(threads, "sandbox-aio-call")
        # Interrupts and close() get threads of their own, so that they never
        # queue behind the calls they are meant to end.
        self._stop_threads = ThreadPoolExecutor(
            threads + 1, "sandbox-aio-stop"
        )
        self._plugin_locks = {
            name: asyncio.Lock() for name in self._host.plugins
        }
        self._endings: set[asyncio.Task[None]] = set()
        self._close_task: asyncio.Task[None] | None = None

    # -- public API ----------------------------------------------------------

    async def execute_plugin(
        self,
        plugin: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call ``method`` of ``plugin`` with ``params`` as keyword arguments.

        Takes the arguments and raises the errors of
        PluginHost.execute_plugin, and SandboxError once the host is
        closed. Cancelling the awaiting task ends the call and, if the call
        had reached its worker, kills that worker.
        """
        call = functools.partial(
            self._host.execute_plugin, plugin, method, params, timeout=timeout
        )
        return await self._run_in_turn(plugin, call)

    async def worker_status(self, plugin: str) -> dict[str, Any]:
        """Return the worker's report of its own credentials and state."""
        status = functools.partial(self._host.worker_status, plugin)
        return await self._run_in_turn(plugin, status)

    async def enforcement_report(self, plugin: str) -> dict[str, Any]:
        """Return what the policy of ``plugin`` requests and what is enforced.

        Starts the worker if none runs, like PluginHost.enforcement_report,
        and waits for its turn behind earlier calls to ``plugin``.
        """
        report = functools.partial(self._host.enforcement_report, plugin)
        return await self._run_in_turn(plugin, report)

    @property
    def plugins(self) -> Mapping[str, PluginManifest]:
        """The manifests found in ``plugin_dirs``, by plugin name."""
        return self._host.plugins

    @property
    def notifications(self) -> deque[Notification]:
        """The latest ``notify`` capability calls, oldest first."""
        return self._host.notifications

    def register_capability(
        self,
        name: str,
        handler: CapabilityHandler,
        *,
        schema: Schema | None = None,
    ) -> None:
        """Serve capability ``name`` with ``handler(plugin, params)``.

        Takes the arguments of PluginHost.register_capability. The handler
        runs on a call thread while the plugin waits for it, and only for
        arguments that match ``schema``, if one is given.
        """
        self._host.register_capability(name, handler, schema=schema)

    def provide_secret(self, plugin: str, name: str, value: str) -> None:
        """Give ``plugin`` the secret ``name``, fetched with get_secret().

        Takes effect for the next get_secret() of the plugin, also in a
        call in progress. See PluginHost.provide_secret for the policy
        that the plugin needs and where the value is redacted.
        """
        self._host.provide_secret(plugin, name, value)

    def subscribe(
        self, callback: Callable[[AuditEvent], None]
    ) -> Callable[[], None]:
        """Receive every audit event; returns a function that unsubscribes."""
        return self._host.subscribe(callback)

    async def close(self) -> None:
        """Stop every worker; safe to call more than once.

        Calls in progress raise PluginCrashed or SandboxError, and later
        calls raise SandboxError. Cancelling the task that awaits close()
        does not stop the closing.
        """
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def __aenter__(self) -> AsyncPluginHost:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- calls ---------------------------------------------------------------

    async def _run_in_turn(self, plugin: str, work: Callable[[], T]) -> T:
        """Run ``work`` on a call thread after earlier calls to ``plugin``."""
        lock = self._plugin_locks.get(plugin)
        if lock is None:
            # The host raises PluginNotFound before it starts anything, so
            # there is no worker to share and no call to end.
            self._check_open()
            return await asyncio.wrap_future(self._call_threads.submit(work))
        await lock.acquire()
        try:
            self._check_open()
            future = self._call_threads.submit(work)
        except BaseException:
            lock.release()
            raise
        return await self._await_call(plugin, lock, future)

    async def _await_call(
        self,
        plugin: str,
        lock: asyncio.Lock,
        future: concurrent.futures.Future[T],
    ) -> T:
        """Await a submitted call; end it if the awaiting task is cancelled.

        Releases ``lock`` once the call has ended.
        """
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            ending = self._start_ending(plugin, lock, future)
            # A task cancelled again while it waits leaves at once, but the
            # ending goes on, and close() waits for it.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(ending)
            raise
        except BaseException:
            lock.release()
            raise
        lock.release()
        return result

    def _start_ending(
        self,
        plugin: str,
        lock: asyncio.Lock,
        future: concurrent.futures.Future[Any],
    ) -> asyncio.Task[None]:
        ending = asyncio.create_task(self._end_call(plugin, lock, future))
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)
        return ending

    async def _end_call(
        self,
        plugin: str,
        lock: asyncio.Lock,
        future: concurrent.futures.Future[Any],
    ) -> None:
        """Interrupt a cancelled call until it ends, then release ``lock``."""
        try:
            # A call still queued for a thread was cancelled with the task
            # and is done already.
            if not future.done():
                await asyncio.get_running_loop().run_in_executor(
                    self._stop_threads,
                    self._interrupt_until_done,
                    plugin,
                    future,
                )
        finally:
            lock.release()

    def _interrupt_until_done(
        self, plugin: str, future: concurrent.futures.Future[Any]
    ) -> None:
        # The plugin lock is held, so any call to this plugin that the host
        # is running is the cancelled one. Until that call reaches a worker,
        # interrupt() finds nothing to kill, so it is repeated.
        while not future.done():
            self._host.interrupt(plugin)
            concurrent.futures.wait([future], INTERRUPT_RETRY_SECONDS)

    def _check_open(self) -> None:
        if self._close_task is not None:
            raise SandboxError("the AsyncPluginHost is closed")

    # -- closing -------------------------------------------------------------

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._stop_threads, self._close_host)
        while self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)
        # Every stop thread is idle now and exits as soon as it reads the
        # shutdown from its queue, so there is nothing to wait for.
        self._stop_threads.shutdown(wait=False)

    def _close_host(self) -> None:
        self._host.close()
        # PluginHost.close() stops the pooled workers only. A worker that
        # the pool evicted while it ran a call still runs that call.
        for plugin in self._host.plugins:
            self._host.interrupt(plugin)
        # Every call ends promptly now that its worker is gone and the
        # host refuses to start new ones.
        self._call_threads.shutdown(wait=True)
