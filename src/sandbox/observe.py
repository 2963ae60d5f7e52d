"""Observe mode: run a plugin unenforced and suggest its smallest policy.

observe_plugin() starts one worker for the plugin and makes the given
calls. The worker runs as the policy's uid, with no_new_privs and
generous rlimits, but without Landlock, and its seccomp program logs
each call that the default-deny program would reject instead of failing
it. So observe mode gives the plugin NO protection beyond the uid
switch, no_new_privs, the rlimits and the seccomp kill on a foreign
architecture. Use it only on code you are evaluating and would run
unsandboxed, never on hostile code.

Two rules keep denying: setsid() and setpgid() fail with EPERM, as they
do under every policy, and leave no audit record, so every process the
plugin starts stays in the worker's process group, which is killed when
the worker stops. When the worker ran as the plugin's own uid (a root
host with plugin_uids and no policy ``user``), every process of that uid
left after the worker stops is killed as well, whatever its group.
NOTE: that includes the workers of the same plugin that a PluginHost
with the same uids runs at the same time. They start again on their
next call.

What is observed, and by which mechanism:

- system calls the default-deny seccomp program would reject: the
  kernel's audit records (type 1326, SECCOMP_RET_LOG), read from the
  audit netlink socket's read-only multicast group. That needs
  CAP_AUDIT_READ, so only a root host gets them.
- files opened for reading or writing, folders listed, and files
  created, removed or renamed: a Python audit hook in the worker.
- sockets created, addresses connected to or bound, host names resolved
  and commands started: the same hook. Environment variables read: a
  recording os.environ, which notes each name asked for even when the
  worker's environment (the policy's allowlist, as in enforcing mode)
  does not set it. Code that calls libc through ctypes or a C
  extension bypasses both.
- capability calls: the host's capability broker, through its audit
  events.
- peak address space, CPU time, highest descriptor number and task
  count: the host samples /proc and psutil every few milliseconds, so a
  peak shorter than that can be missed. Largest file written: the sizes
  of the written files and of the worker's output file after the calls.

Observation.suggested_policy_toml() renders the result as a
``[plugins.NAME]`` table of the policy file format (sandbox.policy).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import kernelaudit, launcher, seccomp
from .audit import AuditEvent, AuditLog
from .broker import CapabilityBroker, CapabilityHandler
from .errors import PluginNotFound, PolicyError, SandboxError
from .launcher import Identity
from .manifest import PluginManifest, discover_plugins
from .policy import _ENV_NAME, Policy, PolicySet, Resources
from .process import WorkerProcess
from .runtime import (
    check_runtime_readable,
    plan_host_uids,
    resolve_identity,
    resolve_interpreter,
    worker_runtime,
)
from .spawnplan import WORKER_BASE_ENVIRONMENT, WorkerConfig
from .uids import (
    DEFAULT_PLUGIN_UIDS,
    kill_processes_of,
)

__all__ = ["OBSERVE_RESOURCES", "CallRecord", "Observation", "observe_plugin"]

# Limits of the observed worker: high enough that a plugin under
# evaluation does not hit them, low enough that a runaway one still stops.
OBSERVE_RESOURCES = Resources(
    memory_mb=8192,
    cpu_seconds=600,
    file_descriptors=4096,
    processes=512,
    file_size_mb=4096,
    timeout=300.0,
)
OBSERVATIONS_METHOD = "sandbox.observations"
_DEFAULT_MESSAGE_BYTES = Policy(name="*").max_message_bytes
# The report of the worker's recorder can be several megabytes.
_OBSERVE_MESSAGE_BYTES = 16 << 20
_MIB = 1 << 20
_SAMPLE_SECONDS = 0.005

# The kernel sends a record from its kauditd thread shortly after the
# system call; the worker's marker call bounds the wait.
_RECORD_WAIT_SECONDS = 3.0

# The system calls that ``network`` allows.
_SOCKET_SYSCALLS = ("socket", "socketpair")
_SOCK_TYPE_MASK = 0xF
_TCP_PROTOCOLS = (0, socket.IPPROTO_TCP)
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# Folders whose entries name a process: a worker's pid changes with
# every start, so no path rule there stays valid.
_PER_PROCESS_ROOTS = ("/proc",)


@dataclass(frozen=True)
class CallRecord:
    """One observed call: how long it took, its result or its error."""

    method: str
    seconds: float
    error: str | None = None
    result: Any = None


@dataclass(frozen=True)
class Usage:
    """Peaks measured while the calls ran, for the ``resources`` table."""

    memory_mb: float = 0.0
    cpu_seconds: float = 0.0
    file_descriptors: int = 0
    processes: int = 0
    largest_file_bytes: int = 0
    longest_call_seconds: float = 0.0


@dataclass(frozen=True)
class Observation:
    """Record of one plugin's observed calls and the policy they need.

    ``read`` and ``write`` are the folders (or device files) the
    suggested policy grants, outside what every worker may read anyway.
    ``network`` is False, True or a tuple of TCP ports. ``notes`` lists
    what the suggestion cannot grant or could not observe.
    """

    plugin: str
    calls: tuple[CallRecord, ...]
    read: tuple[str, ...]
    write: tuple[str, ...]
    readonly: bool
    network: bool | tuple[int, ...]
    capabilities: tuple[str, ...]
    env: tuple[str, ...]
    secrets: tuple[str, ...]
    denied_syscalls: tuple[str, ...]
    endpoints: tuple[tuple[str, int, str, int], ...]
    commands: tuple[str, ...]
    usage: Usage
    user: str | int | None = None
    max_message_bytes: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        """Whether every observed call returned without an error."""
        return all(call.error is None for call in self.calls)

    def suggested_resources(self) -> Resources:
        """Return the observed peaks with headroom, rounded up.

        The headroom factors are judgement, not measurement: 25% on
        memory and descriptors, 50% (at least 2) on tasks, and twice the
        CPU time and call time.
        """
        usage = self.usage
        return Resources(
            memory_mb=max(16, _round_up(usage.memory_mb * 1.25, 16)),
            cpu_seconds=max(1, math.ceil(usage.cpu_seconds * 2) + 1),
            file_descriptors=max(
                8, _round_up(usage.file_descriptors * 1.25 + 4, 8)
            ),
            processes=usage.processes + max(2, usage.processes // 2),
            file_size_mb=max(
                1, math.ceil(usage.largest_file_bytes * 1.25 / _MIB)
            ),
            timeout=float(math.ceil(usage.longest_call_seconds * 2) + 1),
        )

    def suggested_policy(self) -> dict[str, Any]:
        """Return the suggested ``[plugins.NAME]`` table as a mapping."""
        table: dict[str, Any] = {
            "capabilities": list(self.capabilities),
            "network": (
                list(self.network)
                if isinstance(self.network, tuple)
                else self.network
            ),
            "env": list(self.env),
        }
        if self.secrets:
            table["secrets"] = list(self.secrets)
        if self.user is not None:
            table["user"] = self.user
        if self.max_message_bytes is not None:
            table["max_message_bytes"] = self.max_message_bytes
        filesystem: dict[str, Any] = {"read": list(self.read)}
        if self.readonly:
            filesystem["readonly"] = True
        else:
            filesystem["write"] = list(self.write)
        table["filesystem"] = filesystem
        limits = self.suggested_resources()
        table["resources"] = {
            item.name: getattr(limits, item.name)
            for item in dataclasses.fields(limits)
        }
        return table

    def suggested_policy_toml(self) -> str:
        """Render suggested_policy() as a commented policy file table."""
        return _render_toml(self)


def observe_plugin(
    plugin_dirs: Iterable[str | os.PathLike[str]],
    plugin: str,
    calls: Sequence[tuple[str, Mapping[str, Any]]],
    policies: PolicySet | None = None,
    *,
    python: str | None = None,
    handlers: Mapping[str, CapabilityHandler] | None = None,
    timeout: float | None = None,
    scratch_root: str | None = None,
    plugin_uids: range | None = DEFAULT_PLUGIN_UIDS,
    uid_registry: str | os.PathLike[str] | None = None,
    allow_shared_users: bool = False,
) -> Observation:
    """Make ``calls`` (method, params) to ``plugin`` in observe mode.

    ``policies`` supplies the uid and message size to run with; what the
    policy grants is not used, because the suggestion starts from
    default deny. ``handlers`` serves capabilities beyond the built-in
    ones. ``plugin_uids``, ``uid_registry`` and ``allow_shared_users``
    are PluginHost's options of the same names: a root host runs the
    plugin as the uid its workers would get, and rejects the same
    policy users. A call
    that fails is recorded in Observation.calls, and the
    calls after a worker death are skipped. Raises PluginNotFound,
    PolicyError or LaunchError when the worker cannot start.
    """
    manifests = _find_manifests(plugin_dirs, plugin)
    manifest = manifests[plugin]
    base = (policies or PolicySet.empty()).for_plugin(plugin)
    # The uid PluginHost would give the plugin, so that files the plugin
    # creates here stay usable by its workers later.
    identity, own_uid = _observe_identity(
        manifests,
        plugin,
        policies or PolicySet.empty(),
        plugin_uids,
        uid_registry,
        allow_shared_users,
    )
    config = _observe_config(manifest, base, identity, python, scratch_root)
    audit = AuditLog()
    capability_events: list[AuditEvent] = []
    audit.subscribe(capability_events.append)
    broker = _observe_broker(audit, manifest, base, handlers)
    seconds = timeout or OBSERVE_RESOURCES.timeout or 300.0
    run = _Run(config, broker, audit, seconds, own_uid)
    run.execute(calls)
    return _derive(run, manifest, base, capability_events)


# -- running the worker ------------------------------------------------------


def _find_manifests(
    plugin_dirs: Iterable[str | os.PathLike[str]], plugin: str
) -> dict[str, PluginManifest]:
    errors: dict[str, PolicyError] = {}
    manifests = discover_plugins(plugin_dirs, errors=errors)
    if plugin in manifests:
        return manifests
    if plugin in errors:
        raise errors[plugin]
    known = ", ".join(sorted(manifests)) or "none"
    raise PluginNotFound(f"no plugin named {plugin!r}; known plugins: {known}")


def _observe_identity(
    manifests: Mapping[str, PluginManifest],
    plugin: str,
    policies: PolicySet,
    plugin_uids: range | None,
    uid_registry: str | os.PathLike[str] | None,
    allow_shared_users: bool,
) -> tuple[Identity | None, int | None]:
    """Return the worker's identity, and the plugin's own uid if it uses it.

    Checks the policy users as PluginHost does.
    """
    as_root = os.geteuid() == 0
    plan = plan_host_uids(
        {name: policies.for_plugin(name).user for name in manifests},
        plugin_uids,
        registry=uid_registry,
        source=policies.source,
        allow_shared_users=allow_shared_users,
    )
    user = policies.for_plugin(plugin).user
    own_uid = plan.plugin_uids.get(plugin)
    identity = resolve_identity(user, as_root=as_root, plugin_uid=own_uid)
    if identity is None or user is not None:
        own_uid = None
    return identity, own_uid


def _observe_config(
    manifest: PluginManifest,
    base: Policy,
    identity: Identity | None,
    python: str | None,
    scratch_root: str | None,
) -> WorkerConfig:
    runtime = worker_runtime(resolve_interpreter(python))
    check_runtime_readable(
        runtime, [manifest.folder, *manifest.python_path], identity
    )
    policy = dataclasses.replace(
        base, max_message_bytes=_OBSERVE_MESSAGE_BYTES
    )
    return WorkerConfig(
        manifest=manifest,
        policy=policy,
        resources=OBSERVE_RESOURCES,
        identity=identity,
        runtime=runtime,
        scratch_root=scratch_root
        or os.path.join("/tmp", f"sandbox-scratch-{os.getuid()}"),
        transport="stream",
        # The enforcement report lists Landlock and seccomp as missing,
        # which is the point of observe mode.
        strict=False,
        observe=True,
    )


def _observe_broker(
    audit: AuditLog,
    manifest: PluginManifest,
    base: Policy,
    handlers: Mapping[str, CapabilityHandler] | None,
) -> CapabilityBroker:
    """Return a broker that grants every capability the manifest lists.

    read_env still returns only the variables that ``base`` lists, so no other
    host variable reaches code under evaluation; the names asked for are
    recorded all the same, from the denials.
    """
    policy = Policy(
        name=manifest.name,
        capabilities=frozenset(manifest.capabilities),
        env=base.env,
    )
    broker = CapabilityBroker(
        audit, manifest_of=lambda _: manifest, policy_of=lambda _: policy
    )
    broker.register("notify", lambda plugin, params: None)
    for name, handler in (handlers or {}).items():
        broker.register(name, handler)
    return broker


class _Run:
    """One observed worker: its calls, usage samples and kernel records."""

    def __init__(
        self,
        config: WorkerConfig,
        broker: CapabilityBroker,
        audit: AuditLog,
        timeout: float,
        own_uid: int | None,
    ) -> None:
        self.config = config
        # The plugin's own uid, whose every process ends with the worker.
        self.own_uid = own_uid
        self.broker = broker
        self.audit = audit
        self.timeout = timeout
        self.calls: list[CallRecord] = []
        self.report: dict[str, Any] = {}
        self.kernel_calls: list[tuple[int, int]] = []
        self.sampler: _UsageSampler | None = None
        self.file_bytes = 0
        self.cpu_seconds = 0.0
        self.notes: list[str] = []

    def execute(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Start the worker, make the calls, collect, stop the worker."""
        kernel_log = kernelaudit.SeccompLogCollector()
        if kernel_log.unavailable:
            self.notes.append(kernel_log.unavailable)
        granted = frozenset(self.config.manifest.capabilities)
        worker = WorkerProcess(self.config, granted, self.broker, self.audit)
        pid = None
        try:
            worker.start(launcher.spawn)
            pid = worker.pid
            self.sampler = _UsageSampler(pid)
            self.sampler.start()
            self._make_calls(worker, calls)
            self._collect(worker)
        finally:
            try:
                self._stop(worker, kernel_log, pid)
            finally:
                kernel_log.close()

    def _stop(
        self,
        worker: WorkerProcess,
        kernel_log: kernelaudit.SeccompLogCollector,
        pid: int | None,
    ) -> None:
        """Stop the worker and what it left, then read the kernel records.

        A failure here is noted rather than raised, so that it never
        hides the error that ended the calls.
        """
        if self.sampler is not None:
            self.sampler.stop()
        worker.stop(interrupt=True)
        try:
            self._kill_leftovers()
        except OSError as error:
            self.notes.append(
                f"could not end the processes of uid {self.own_uid}: {error}"
            )
        pids = self.sampler.pids if self.sampler else set()
        self.kernel_calls = kernel_log.collect(
            pids,
            pid if self.report else None,
            _native_number("syslog"),
            _RECORD_WAIT_SECONDS,
        )
        self.notes += kernel_log.problems

    def _kill_leftovers(self) -> None:
        """Kill the processes of the plugin's uid that outlived the worker.

        The seccomp program keeps them in the worker's process group, so
        this is the second line: it also reaches a process that left the
        group by a way the program does not know of.
        """
        if self.own_uid is None:
            return
        if not kill_processes_of(self.own_uid):
            self.notes.append(
                f"processes of uid {self.own_uid} kept killing the helper "
                "that ends them, so some may still run"
            )

    def _make_calls(
        self,
        worker: WorkerProcess,
        calls: Sequence[tuple[str, Mapping[str, Any]]],
    ) -> None:
        for method, params in calls:
            started = time.monotonic()
            error = result = None
            try:
                result = worker.call(method, dict(params), self.timeout)
            except SandboxError as failure:
                error = f"{type(failure).__name__}: {failure}"
            seconds = time.monotonic() - started
            self.calls.append(CallRecord(method, seconds, error, result))
            if not worker.alive:
                self.notes.append(
                    "the worker died; the calls after "
                    f"{method!r} were not made"
                )
                return

    def _collect(self, worker: WorkerProcess) -> None:
        """Read the worker's records and usage while it still runs."""
        if not worker.alive:
            return
        assert self.sampler is not None
        self.sampler.sample()
        self.cpu_seconds = _cpu_seconds(worker.pid)
        self.report = worker.call(OBSERVATIONS_METHOD, {}, self.timeout)
        written = [*self.report["write"], f"/proc/{worker.pid}/fd/1"]
        self.file_bytes = max(_file_size(p) for p in written)


def _cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(
        times.user + times.system + times.children_user + times.children_system
    )


def _file_size(path: str) -> int:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


class _UsageSampler:
    """Samples the worker's process tree from a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pids: set[int] = {pid}
        self.peak_vm_kib = 0
        self.peak_fd = 0
        self.peak_tasks = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name="sandbox-observe-sampler", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        """Read the tree once; a process that exits meanwhile is skipped."""
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        tasks = 0
        with self._lock:
            for process in tree:
                self.pids.add(process.pid)
                try:
                    tasks += process.num_threads()
                except psutil.Error:
                    continue
                self.peak_vm_kib = max(
                    self.peak_vm_kib, _vm_peak_kib(process.pid)
                )
                self.peak_fd = max(self.peak_fd, _highest_fd(process.pid))
            self.peak_tasks = max(self.peak_tasks, tasks)


def _vm_peak_kib(pid: int) -> int:
    # VmPeak is the kernel's high-water mark of the address space, the
    # quantity RLIMIT_AS limits, so no sample can miss its peak.
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _highest_fd(pid: int) -> int:
    # RLIMIT_NOFILE bounds the descriptor number, not the count.
    try:
        numbers = [int(n) for n in os.listdir(f"/proc/{pid}/fd")]
    except (OSError, ValueError):
        return 0
    return max(numbers, default=-1) + 1


def _native_number(name: str) -> int:
    import pyseccomp

    number: int = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return number


# -- deriving the policy -----------------------------------------------------


@dataclass
class _Paths:
    """Folders to grant, built up from the worker's records."""

    baseline: tuple[str, ...]
    scratch_root: str
    read: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def grant(self, kind: str, path: str, *, folder_of: bool) -> None:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            self.notes.append(f"{_show(path)} is not UTF-8; not granted")
            return
        if path.startswith(_PER_PROCESS_ROOTS):
            self.notes.append(
                f"{_show(path)} names a process, so no path rule can "
                "grant it to a new worker"
            )
            return
        real = os.path.realpath(path)
        if _beneath(real, (self.scratch_root,)):
            return
        if kind == "read" and _beneath(real, self.baseline):
            return
        target = self._target(real, folder_of=folder_of)
        if target is None:
            self.notes.append(f"{_show(path)} no longer exists; not granted")
            return
        if kind == "read" and _beneath(target, self.baseline):
            return
        (self.write if kind == "write" else self.read).add(target)

    def _target(self, real: str, *, folder_of: bool) -> str | None:
        try:
            mode = os.stat(real).st_mode
        except (OSError, ValueError):
            mode = None
        if mode is not None and stat.S_ISCHR(mode):
            # A rule on the device itself, never on /dev.
            return real
        if mode is not None and stat.S_ISDIR(mode) and not folder_of:
            return real
        parent = os.path.dirname(real)
        return parent if os.path.isdir(parent) else None

    def minimal(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        write = _outermost(self.write)
        read = _outermost(self.read)
        read = [p for p in read if not _beneath(p, tuple(write))]
        return tuple(read), tuple(write)


def _beneath(path: str, folders: Iterable[str]) -> bool:
    return any(
        path == folder or path.startswith(folder.rstrip("/") + "/")
        for folder in folders
    )


def _outermost(paths: set[str]) -> list[str]:
    ordered = sorted(paths)
    kept: list[str] = []
    for path in ordered:
        if not _beneath(path, kept):
            kept.append(path)
    return kept


def _derive(
    run: _Run,
    manifest: PluginManifest,
    base: Policy,
    capability_events: list[AuditEvent],
) -> Observation:
    report = run.report
    notes = list(run.notes)
    paths = _Paths(
        baseline=(
            *run.config.runtime.read_paths,
            manifest.folder,
            *manifest.python_path,
        ),
        scratch_root=os.path.realpath(run.config.scratch_root),
    )
    _grant_paths(paths, report)
    read, write = paths.minimal()
    notes += paths.notes
    denied = sorted({seccomp.describe_syscall(n) for _, n in run.kernel_calls})
    capabilities, env, secrets = _capability_needs(capability_events)
    env = sorted(set(env) | _env_needs(report, notes))
    notes += _syscall_notes(denied)
    if report.get("truncated"):
        notes.append("the worker recorded more than it could report")
    usage = _usage(run)
    return Observation(
        plugin=manifest.name,
        calls=tuple(run.calls),
        read=read,
        write=write,
        readonly=not (report.get("write") or report.get("changed")),
        network=_network_need(report, denied),
        capabilities=tuple(
            c for c in capabilities if c in manifest.capabilities
        ),
        env=tuple(env),
        secrets=tuple(secrets),
        denied_syscalls=tuple(denied),
        endpoints=tuple(tuple(e) for e in report.get("endpoints", [])),
        commands=tuple(report.get("commands", [])),
        usage=usage,
        user=base.user,
        max_message_bytes=(
            base.max_message_bytes
            if base.max_message_bytes != _DEFAULT_MESSAGE_BYTES
            else None
        ),
        notes=tuple(dict.fromkeys(notes)),
    )


def _grant_paths(paths: _Paths, report: Mapping[str, Any]) -> None:
    for path in report.get("read", []):
        paths.grant("read", path, folder_of=True)
    for path in report.get("listed", []):
        paths.grant("read", path, folder_of=False)
    for path in [*report.get("write", []), *report.get("changed", [])]:
        paths.grant("write", path, folder_of=True)
    for command in report.get("commands", []):
        executable = shutil.which(command.split()[0]) if command else None
        if executable is not None:
            paths.grant("read", executable, folder_of=True)


def _capability_needs(
    events: list[AuditEvent],
) -> tuple[list[str], list[str], list[str]]:
    capabilities: set[str] = set()
    env: set[str] = set()
    secrets: set[str] = set()
    for event in events:
        if event["event"] not in ("capability_granted", "capability_denied"):
            continue
        capabilities.add(event["capability"])
        if event["capability"] == "read_env" and "name" in event:
            env.add(event["name"])
        if event["capability"] == "get_secret" and "secret" in event:
            secrets.add(event["secret"])
    return sorted(capabilities), sorted(env), sorted(secrets)


def _env_needs(report: Mapping[str, Any], notes: list[str]) -> set[str]:
    names = set()
    for name in report.get("env", []):
        if name in WORKER_BASE_ENVIRONMENT or name not in os.environ:
            continue
        if _ENV_NAME.pattern.fullmatch(name) is None:
            notes.append(f"variable {_show(name)} cannot be listed in env")
            continue
        names.add(name)
    return names


def _syscall_notes(denied: list[str]) -> list[str]:
    other = [name for name in denied if name not in _SOCKET_SYSCALLS]
    if not other:
        return []
    return [
        "no policy key allows these system calls, which fail with EPERM "
        f"under every policy: {', '.join(other)}"
    ]


def _network_need(
    report: Mapping[str, Any], denied: list[str]
) -> bool | tuple[int, ...]:
    """Return False, True or the TCP ports that connect() reached."""
    sockets = [tuple(s) for s in report.get("sockets", [])]
    endpoints = [tuple(e) for e in report.get("endpoints", [])]
    non_unix = [s for s in sockets if s[0] != socket.AF_UNIX]
    kernel_saw = any(name in _SOCKET_SYSCALLS for name in denied)
    unix_endpoints = [e for e in endpoints if e[1] == socket.AF_UNIX]
    if not (kernel_saw or non_unix or unix_endpoints):
        return False
    tcp_only = all(
        s[0] in _INET_FAMILIES
        and s[1] & _SOCK_TYPE_MASK == socket.SOCK_STREAM
        and s[2] in _TCP_PROTOCOLS
        for s in non_unix
    )
    connects_only = all(
        e[0] == "connect" and e[1] in _INET_FAMILIES for e in endpoints
    )
    literal_hosts = all(_is_address(h) for h in report.get("resolved", []))
    ports = sorted({int(e[3]) for e in endpoints})
    if tcp_only and connects_only and literal_hosts and ports:
        return tuple(ports)
    return True


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _usage(run: _Run) -> Usage:
    sampler = run.sampler
    return Usage(
        memory_mb=(sampler.peak_vm_kib / 1024) if sampler else 0.0,
        cpu_seconds=run.cpu_seconds,
        file_descriptors=sampler.peak_fd if sampler else 0,
        processes=sampler.peak_tasks if sampler else 0,
        largest_file_bytes=run.file_bytes,
        longest_call_seconds=max((c.seconds for c in run.calls), default=0),
    )


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


# -- TOML --------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _render_toml(observation: Observation) -> str:
    table = observation.suggested_policy()
    name = _toml_key(observation.plugin)
    lines = _header(observation)
    lines.append(f"[plugins.{name}]")
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    for key, value in table.items():
        if key not in nested:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, values in nested.items():
        lines += ["", f"[plugins.{name}.{key}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _header(observation: Observation) -> list[str]:
    count = len(observation.calls)
    lines = [
        f"# Suggested by observe mode from {count} call(s) of plugin "
        f"{_show(observation.plugin)}.",
        "# It grants only what these calls used; review it before use.",
    ]
    for call in observation.calls:
        outcome = "ok" if call.error is None else _show(call.error)
        lines.append(
            f"#   {_show(call.method)}: {outcome} in {call.seconds:.3f} s"
        )
    for endpoint in observation.endpoints:
        kind, _family, host, port = endpoint
        lines.append(f"#   {kind} {_show(host)} port {port}")
    for command in observation.commands:
        lines.append(f"#   started {_show(command)}")
    lines += [f"# NOTE: {_show(note)}" for note in observation.notes]
    return lines


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as TOML")


def _toml_string(text: str) -> str:
    """Quote ``text`` as a TOML basic string.

    Raises ValueError for a lone surrogate (a file name that is not
    UTF-8), which no TOML string can hold.
    """
    text.encode("utf-8")
    escaped = []
    for char in text:
        if char in ('"', "\\"):
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _show(text: str) -> str:
    """Make text from the worker safe for a one-line TOML comment."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else "?" for c in escaped)[:300]
