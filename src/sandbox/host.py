"""PluginHost: a pool of sandboxed workers, one per plugin.

At most ``max_workers`` workers are alive; starting one more stops the
least recently used, once its call in progress, if any, has ended. Calls
to one plugin are serialised by its lock, and calls to different plugins
run in parallel. Workers are spawned from one long-lived thread because
the kernel's parent-death signal fires when the spawning *thread* exits,
not only the process.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import launcher
from .audit import AuditEvent, AuditLog
from .broker import Argument, CapabilityBroker, Schema
from .errors import (
    CapabilityDenied,
    LaunchError,
    PluginCrashed,
    PluginNotFound,
    PolicyError,
    ProtocolError,
    SandboxError,
)
from .kernelaudit import SeccompKillWatcher
from .launcher import Identity, SpawnedProcess, SpawnRequest
from .manifest import (
    PluginManifest,
    discover_plugins,
    folder_list,
    plugin_folders_in,
)
from .platform import unsupported_reason
from .policy import Policy, PolicySet, Resources
from .process import WorkerProcess, WorkerStopped
from .runtime import (
    check_runtime_readable,
    plan_host_uids,
    resolve_identity,
    resolve_interpreter,
    worker_runtime,
)
from .shm import WorkerDeathMonitor, resolve_transport
from .spawnplan import WorkerConfig, sweep_scratch_root
from .uids import DEFAULT_PLUGIN_UIDS

logger = logging.getLogger("sandbox.host")

CapabilityHandler = Callable[[str, dict[str, Any]], Any]
NOTIFY_LEVELS = ("debug", "info", "warning", "error")
MAX_NOTIFICATION_CHARS = 4096
NOTIFICATIONS_KEPT = 1000
NOTIFICATIONS_PER_PLUGIN = 100
_NOTIFY_SCHEMA: Schema = {
    "message": Argument(str, max_length=MAX_NOTIFICATION_CHARS),
    "level": Argument(str, required=False, max_length=16),
}

# Hosts not closed yet. When the interpreter exits, the parent-death signal
# ends their workers, but only close() removes their scratch folders.
_unclosed_hosts: weakref.WeakSet[PluginHost] = weakref.WeakSet()


@atexit.register
def _close_unclosed_hosts() -> None:
    for host in list(_unclosed_hosts):
        host.close()


def _check_platform(strict: bool) -> None:
    """Raise LaunchError, in strict mode, where workers cannot get seccomp.

    Such a platform (macOS, or a portable build of sandbox._native) lacks
    every mechanism of sandbox.platform.LINUX_ONLY_PROTECTIONS, so no
    policy could be enforced in full there.
    """
    reason = unsupported_reason()
    if reason is None or not strict:
        return
    raise LaunchError(
        "platform",
        errno.EOPNOTSUPP,
        f"seccomp, Landlock, no_new_privs and the capability bounding "
        f"set are {reason}; pass strict=False to PluginHost to run "
        "plugins with rlimits, the uid drop and a new session only",
    )


@dataclass(frozen=True)
class Notification:
    """One ``notify`` capability call, as the host received it."""

    plugin: str
    message: str
    level: str


class PluginHost:
    """Runs plugins from ``plugin_dirs`` in sandboxed worker processes.

    As root, each plugin's workers run as a uid of its own from
    ``plugin_uids`` (see sandbox.uids), with the same gid and no
    supplementary groups, unless its policy names a ``user``. With
    ``plugin_uids=None`` every plugin runs as ``nobody``. A host that is
    not root runs workers as its own uid and ignores ``plugin_uids``.

    A root host with ``plugin_uids`` keeps each plugin's uid in the JSON
    file ``uid_registry`` (None: $SANDBOX_UID_REGISTRY, else
    /var/lib/sandbox/plugin-uids.json), which it reads and updates under
    a lock when
    it starts, so a plugin installed later never takes an installed
    plugin's uid. The file's folder is created if missing and must be
    owned by root and writable by no one else (PermissionError if not).

    A root host raises PolicyError when a policy's ``user`` is the uid
    of another plugin or lies in ``plugin_uids``, and when two plugins'
    policies name the same user, unless ``allow_shared_users`` is true.
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
        if max_workers < 1:
            raise ValueError(
                f"max_workers must be at least 1, got {max_workers}"
            )
        if not worker_timeout > 0:
            raise ValueError(
                f"worker_timeout must be positive, got {worker_timeout}"
            )
        _check_policies(policies)
        # "shm" (rings in shared memory), "stream" (a socketpair) or
        # "auto": shm where this machine supports it.
        self.transport = resolve_transport(transport)
        self.policies = policies if policies is not None else PolicySet.empty()
        plugin_dirs = folder_list(plugin_dirs)
        # Invalid manifests, by folder name: calling one raises its error.
        # discover_plugins logs a warning for each.
        self.plugin_errors: dict[str, PolicyError] = {}
        self.plugins: dict[str, PluginManifest] = discover_plugins(
            plugin_dirs, errors=self.plugin_errors
        )
        # Plugin folders passed in place of the folder that contains them.
        self._plugin_folders_as_dirs = plugin_folders_in(plugin_dirs)
        self.max_workers = max_workers
        self.worker_timeout = worker_timeout
        # Precedence: built-in defaults, then worker_timeout, then the
        # host's resources, then the policy file's defaults and plugin table.
        self._host_defaults = (resources or Resources()).merged_over(
            Resources(timeout=worker_timeout)
        )
        self.interpreter = resolve_interpreter(python)
        self.scratch_root = scratch_root or os.path.join(
            "/tmp", f"sandbox-scratch-{os.getuid()}"
        )
        sweep_scratch_root(self.scratch_root)
        # Raises ValueError for an invalid range, also when not root.
        uid_plan = plan_host_uids(
            {
                name: self.policies.for_plugin(name).user
                for name in self.plugins
            },
            plugin_uids,
            registry=uid_registry,
            source=self.policies.source,
            allow_shared_users=allow_shared_users,
        )
        self._plugin_uids = dict(uid_plan.plugin_uids)
        # False: start plugins even where the kernel cannot enforce part of
        # their policy, and report each gap as a protection_missing event.
        self.strict = strict
        _check_platform(strict)
        self.audit = AuditLog()
        self.notifications: deque[Notification] = deque(
            maxlen=NOTIFICATIONS_KEPT
        )
        self._broker = CapabilityBroker(
            self.audit,
            manifest_of=self._manifest,
            policy_of=self._policy,
            identity_of=self._identity,
        )
        self._broker.register("notify", self._notify, schema=_NOTIFY_SCHEMA)
        self._builtin_capabilities = self._broker.capability_names()
        self._workers: OrderedDict[str, WorkerProcess] = OrderedDict()
        self._call_locks: dict[str, threading.Lock] = {}
        # The worker that each plugin's call in progress has reached, so
        # that interrupt() finds it even after the pool evicted it.
        self._busy_workers: dict[str, WorkerProcess] = {}
        self._pool_lock = threading.Lock()
        self._resource_cache: dict[str, Resources] = {}
        self._policy_cache: dict[str, Policy] = {}
        # Notified whenever a worker slot may have come free or the host
        # closed. Workers being started or stopped still hold their slot.
        self._pool_changed = threading.Condition(self._pool_lock)
        self._starting = 0
        self._stopping = 0
        self._spawner = ThreadPoolExecutor(1, "sandbox-spawner")
        # A futex wait cannot poll a pidfd, so one thread watches them all.
        self._death_monitor = (
            WorkerDeathMonitor() if self.transport == "shm" else None
        )
        # Names the system call of a seccomp kill, and reports the kills
        # of workers' descendants. Its thread starts with the first worker.
        self._kill_watcher = SeccompKillWatcher(self.audit)
        self._closed = False
        _unclosed_hosts.add(self)

    # -- public API ----------------------------------------------------------

    def execute_plugin(
        self,
        plugin: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call ``method`` of ``plugin`` with ``params`` as keyword arguments.

        Raises a SandboxError subclass for every failure: PluginNotFound,
        PluginError, PluginCrashed, PluginTimeout, ResourceLimitExceeded,
        CapabilityDenied, ProtocolError, PolicyError or LaunchError.
        """
        manifest = self._manifest(plugin)
        if method not in manifest.methods:
            raise PluginNotFound(
                f"plugin {plugin!r} exports no method {method!r}; it "
                f"exports {', '.join(manifest.methods)}"
            )
        arguments = _arguments(params)
        seconds = self._call_timeout(plugin, timeout)
        with self._call_lock(plugin):
            while True:
                worker = self._worker(manifest, busy=True)
                try:
                    return worker.call(method, arguments, seconds)
                except WorkerStopped:
                    # Another thread stopped this worker after the lookup
                    # and nothing was sent. Retry, unless interrupt() did.
                    with self._pool_lock:
                        interrupted = plugin not in self._busy_workers
                    if interrupted:
                        raise PluginCrashed(
                            plugin, detail="the call was interrupted"
                        ) from None
                    continue
                finally:
                    with self._pool_lock:
                        self._busy_workers.pop(plugin, None)

    def worker_status(self, plugin: str) -> dict[str, Any]:
        """Return the worker's report of its own credentials and state.

        The report comes from inside the sandbox, so plugin code can forge
        it. Its ``"kernel"`` entry contains what the host itself read from
        /proc/PID/status when the worker started.
        """
        manifest = self._manifest(plugin)
        with self._call_lock(plugin):
            worker = self._worker(manifest)
            return {**worker.status, "kernel": dict(worker.kernel_status)}

    def enforcement_report(self, plugin: str) -> dict[str, Any]:
        """Return what the policy of ``plugin`` requests and what is enforced.

        Starts the worker if none runs, so the report is always that of a
        running worker: its layers come from what the host handed to the
        launcher and from the kernel's /proc view of the process. For a
        report without a worker, see sandbox.enforcement.planned_report.
        """
        manifest = self._manifest(plugin)
        with self._call_lock(plugin):
            worker = self._worker(manifest)
            assert worker.enforcement is not None
            return worker.enforcement.to_dict()

    def interrupt(self, plugin: str) -> bool:
        """Kill the worker that runs a call to ``plugin``, ending the call.

        The interrupted call raises PluginCrashed, and the next call starts
        a new worker. Returns False, and kills nothing, while no call to
        ``plugin`` has reached a worker, for example while one is starting.
        """
        self._manifest(plugin)
        with self._pool_lock:
            worker = self._busy_workers.pop(plugin, None)
        if worker is None:
            return False
        self.audit.emit("call_interrupted", plugin, pid=worker.pid)
        worker.stop(interrupt=True)
        return True

    def register_capability(
        self,
        name: str,
        handler: CapabilityHandler,
        *,
        schema: Schema | None = None,
    ) -> None:
        """Serve capability ``name`` with ``handler(plugin, params)``.

        The handler runs only for plugins whose policy grants ``name``,
        and raising CapabilityDenied rejects one call. ``schema`` maps
        each argument name to a sandbox.broker.Argument. With a schema,
        a call whose arguments do not match it is rejected before the
        handler runs. Without one, the handler gets the params unchecked.
        Raises ValueError for the name of a built-in capability, which
        cannot be replaced.
        """
        if name in self._builtin_capabilities:
            raise ValueError(
                f"capability {name!r} is built in and cannot be replaced; "
                "register the handler under another name"
            )
        self._broker.register(name, handler, schema=schema)

    def provide_secret(self, plugin: str, name: str, value: str) -> None:
        """Give ``plugin`` the secret ``name``, fetched with get_secret().

        The plugin gets it only while its policy lists ``name`` in
        ``secrets`` and grants the ``get_secret`` capability. The value
        never enters the worker's environment or an audit event, and the
        host replaces it with "[redacted]" in the worker's output and in
        the errors of the plugin's calls. Providing a name again replaces
        the value.

        Raises ValueError for a plugin the host did not load. A ``name``
        that the plugin's policy does not list in ``secrets`` is still
        stored, so the value is redacted, but get_secret() denies it, and
        a warning on the ``sandbox.host`` logger names the plugin and the
        secret.
        """
        if plugin not in self.plugins:
            known = ", ".join(sorted(self.plugins)) or "none"
            raise ValueError(
                f"cannot provide secret {name!r}: no plugin named "
                f"{plugin!r}; known plugins: {known}"
            )
        self._broker.provide_secret(plugin, name, value)
        if name not in self._policy(plugin).secrets:
            logger.warning(
                "secret %r provided to plugin %r is not in its policy's "
                "secrets list, so get_secret() will deny it",
                name,
                plugin,
            )

    def subscribe(
        self, callback: Callable[[AuditEvent], None]
    ) -> Callable[[], None]:
        """Receive every audit event; returns a function that unsubscribes."""
        return self.audit.subscribe(callback)

    def close(self) -> None:
        """Stop every worker; safe to call more than once."""
        with self._pool_lock:
            self._closed = True
            # Busy workers that the pool evicted still run their call.
            workers = {
                id(worker): worker
                for worker in [
                    *self._workers.values(),
                    *self._busy_workers.values(),
                ]
            }
            self._workers.clear()
            self._pool_changed.notify_all()
        _unclosed_hosts.discard(self)
        try:
            for worker in workers.values():
                # One worker's failure to stop must not leave the rest.
                try:
                    worker.stop(interrupt=True)
                except Exception:
                    logger.exception("stopping worker %d failed", worker.pid)
        finally:
            self._spawner.shutdown(wait=True)
            if self._death_monitor is not None:
                self._death_monitor.close()
            self._kill_watcher.close()

    def __enter__(self) -> PluginHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- workers -------------------------------------------------------------

    def _manifest(self, plugin: str) -> PluginManifest:
        manifest = self.plugins.get(plugin)
        if manifest is None and plugin in self.plugin_errors:
            raise self.plugin_errors[plugin]
        if manifest is None:
            known = ", ".join(sorted(self.plugins)) or "none"
            raise PluginNotFound(
                f"no plugin named {plugin!r}; known plugins: {known}"
                + self._plugin_dirs_hint()
            )
        return manifest

    def _plugin_dirs_hint(self) -> str:
        """Explain a plugin folder passed where its parent belongs."""
        return "".join(
            f"; {folder} contains a plugin.toml itself, so pass its "
            "parent folder in plugin_dirs"
            for folder in self._plugin_folders_as_dirs
        )

    def _call_lock(self, plugin: str) -> threading.Lock:
        # Locks are never removed, so one that exists is found without
        # taking the pool lock.
        lock = self._call_locks.get(plugin)
        if lock is None:
            with self._pool_lock:
                lock = self._call_locks.setdefault(plugin, threading.Lock())
        return lock

    def _worker(
        self, manifest: PluginManifest, *, busy: bool = False
    ) -> WorkerProcess:
        """Return a live worker for ``manifest``, starting one if needed.

        Called with the plugin's call lock held. Before a start, the least
        recently used worker is stopped until a slot is free, so that at
        most ``max_workers`` are alive even while threads start workers.
        ``busy`` records the worker as the one that runs the plugin's
        call, for interrupt().
        """
        while True:
            with self._pool_lock:
                if self._closed:
                    raise SandboxError("the PluginHost is closed")
                worker = self._workers.get(manifest.name)
                if worker is not None and worker.alive:
                    self._workers.move_to_end(manifest.name)
                    if busy:
                        self._busy_workers[manifest.name] = worker
                    return worker
                self._workers.pop(manifest.name, None)
                if self._slots_in_use() < self.max_workers:
                    self._starting += 1
                    break
                if not self._workers:
                    # Every slot is held by a worker being started or
                    # stopped by another thread.
                    self._pool_changed.wait()
                    continue
                _, victim = self._workers.popitem(last=False)
                self._stopping += 1
            self._stop_pooled(victim)
        worker = self._start_worker(manifest)
        if busy:
            with self._pool_lock:
                self._busy_workers[manifest.name] = worker
        return worker

    def _slots_in_use(self) -> int:
        return len(self._workers) + self._starting + self._stopping

    def _stop_pooled(self, worker: WorkerProcess) -> None:
        """Stop a worker taken out of the pool, after its current call."""
        try:
            worker.stop()
        finally:
            with self._pool_lock:
                self._stopping -= 1
                self._pool_changed.notify_all()

    def _start_worker(self, manifest: PluginManifest) -> WorkerProcess:
        """Start a worker in the slot reserved by _worker() and pool it."""
        try:
            config = self._config(manifest)
            self._watch_plugin_uid(manifest.name, config.identity)
            worker = WorkerProcess(
                config,
                self._granted(manifest),
                self._broker,
                self.audit,
                self._death_monitor,
                self._kill_watcher,
            )
            worker.start(self._spawn)
        except BaseException:
            with self._pool_lock:
                self._starting -= 1
                self._pool_changed.notify_all()
            raise
        with self._pool_lock:
            self._starting -= 1
            closed = self._closed
            if not closed:
                self._workers[manifest.name] = worker
            self._pool_changed.notify_all()
        if closed:
            # close() ran during the start and could not see this worker.
            worker.stop()
            raise SandboxError("the PluginHost is closed")
        return worker

    def _watch_plugin_uid(
        self, plugin: str, identity: Identity | None
    ) -> None:
        """Have the kill watcher report kills under the plugin's own uid.

        Only a uid from plugin_uids names one plugin. ``nobody``, a
        policy's user and the host's uid may be shared, so a kill under
        one of them cannot be attributed to a plugin.
        """
        own_uid = self._plugin_uids.get(plugin)
        if identity is not None and identity.uid == own_uid:
            self._kill_watcher.register_uid(own_uid, plugin)

    def _spawn(self, request: SpawnRequest) -> SpawnedProcess:
        try:
            future = self._spawner.submit(launcher.spawn, request)
        except RuntimeError:
            # The spawner thread was shut down by a close() in between.
            raise SandboxError("the PluginHost is closed") from None
        return future.result()

    def _config(self, manifest: PluginManifest) -> WorkerConfig:
        policy = self._policy(manifest.name)
        identity = self._identity(manifest.name)
        runtime = worker_runtime(self.interpreter)
        check_runtime_readable(
            runtime, [manifest.folder, *manifest.python_path], identity
        )
        return WorkerConfig(
            manifest=manifest,
            policy=policy,
            resources=self._resources(manifest.name),
            identity=identity,
            runtime=runtime,
            scratch_root=self.scratch_root,
            transport=self.transport,
            strict=self.strict,
        )

    def _identity(self, plugin: str) -> Identity | None:
        """Return the identity of the plugin's workers, None for the host's.

        The broker opens files for the plugin with it, too.
        """
        return resolve_identity(
            self._policy(plugin).user,
            as_root=os.geteuid() == 0,
            plugin_uid=self._plugin_uids.get(plugin),
        )

    def _policy(self, plugin: str) -> Policy:
        # Merging the plugin's table over the defaults validates it again,
        # too costly for every capability request; policies never change.
        policy = self._policy_cache.get(plugin)
        if policy is None:
            policy = self.policies.for_plugin(plugin)
            self._policy_cache[plugin] = policy
        return policy

    def _granted(self, manifest: PluginManifest) -> frozenset[str]:
        policy = self._policy(manifest.name)
        return frozenset(policy.capabilities & manifest.capabilities)

    def _call_timeout(self, plugin: str, timeout: float | None) -> float:
        if timeout is not None:
            if not timeout > 0:
                raise ValueError(f"timeout must be positive, got {timeout}")
            return timeout
        seconds = self._resources(plugin).timeout
        assert seconds is not None
        return seconds

    def _resources(self, plugin: str) -> Resources:
        # Policies are immutable, and merging them costs more than a call.
        limits = self._resource_cache.get(plugin)
        if limits is None:
            limits = self.policies.effective_resources(
                plugin, self._host_defaults
            )
            self._resource_cache[plugin] = limits
        return limits

    # -- capabilities --------------------------------------------------------

    def _notify(self, plugin: str, params: dict[str, Any]) -> None:
        message = params["message"]
        level = params.get("level", "info")
        if level not in NOTIFY_LEVELS:
            raise CapabilityDenied(
                f"notify level must be one of {', '.join(NOTIFY_LEVELS)}"
            )
        self._keep_notification(Notification(plugin, message, level))

    def _keep_notification(self, notification: Notification) -> None:
        """Append to the bounded history, at most a share per plugin.

        Without a share, one chatty plugin would push every other plugin's
        notifications out of the history.
        """
        kept = self.notifications
        mine = [n for n in kept if n.plugin == notification.plugin]
        if len(mine) >= NOTIFICATIONS_PER_PLUGIN:
            kept.remove(mine[0])
        kept.append(notification)


def _check_policies(policies: object) -> None:
    """Raise TypeError for policies that are not a PolicySet or None.

    A path or a dict would otherwise fail later with an AttributeError.
    """
    if policies is None or isinstance(policies, PolicySet):
        return
    raise TypeError(
        "policies must be a PolicySet from Policy.load() or "
        f"Policy.from_dict(), got {type(policies).__name__}"
    )


def _arguments(params: object) -> dict[str, Any]:
    if type(params) is dict:
        return dict(params)
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ProtocolError(
            "params must be a mapping of argument names to values or None, "
            f"got {type(params).__name__}"
        )
    return dict(params)
