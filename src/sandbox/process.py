"""One worker process seen from the host: start, call, stop, diagnose.

Calls are serialised by the caller (PluginHost holds a lock per plugin).
stop() may come from another thread, for example when the pool makes room.
It waits for the call in progress, or kills the worker to end that call.
Every way a worker can fail during a call ends in one typed error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from . import channel as rpc
from . import enforcement, kernelaudit
from .audit import AuditLog
from .broker import CapabilityBroker, redact_secrets
from .errors import (
    CapabilityDenied,
    LaunchError,
    PluginCrashed,
    PluginError,
    PluginNotFound,
    PluginTimeout,
    PolicyViolation,
    ProtocolError,
    ResourceLimitExceeded,
    SandboxError,
)
from .launcher import SpawnedProcess, SpawnRequest
from .shm import ShmTransport, WorkerDeathMonitor
from .spawnplan import (
    WorkerConfig,
    WorkerPlan,
    bootstrap_bytes,
    plan_worker,
    remove_tree,
)

logger = logging.getLogger("sandbox.host")

Spawner = Callable[[SpawnRequest], SpawnedProcess]
CapabilityHandler = Callable[[str, dict[str, Any]], Any]

STARTUP_TIMEOUT = 30.0
STOP_GRACE = 1.0
LOG_TAIL_BYTES = 4096
# The worker's output file counts against its RLIMIT_FSIZE, so the host
# empties it before a call once it has grown past LOG_MAX_BYTES.
LOG_MAX_BYTES = 1 << 20
# Bounds the host's work for one call, and the audit events it writes.
MAX_CAPABILITY_REQUESTS_PER_CALL = 4096
# Limit names a worker may report; any other is a plugin error.
REPORTABLE_LIMITS = frozenset(
    {"memory_mb", "file_descriptors", "file_size_mb"}
)
# The limit a worker names when its reply exceeds max_message_bytes; the
# host raises ProtocolError for it, as for an oversized message it reads.
MESSAGE_SIZE_LIMIT = "max_message_bytes"


class WorkerStopped(SandboxError):
    """Another thread stopped the worker before this call began."""


class WorkerProcess:
    """A started worker and its channel; a dead one stays dead."""

    def __init__(
        self,
        config: WorkerConfig,
        granted: frozenset[str],
        broker: CapabilityBroker,
        audit: AuditLog,
        death_monitor: WorkerDeathMonitor | None = None,
        kill_watcher: kernelaudit.SeccompKillWatcher | None = None,
    ) -> None:
        self.config = config
        self.name = config.manifest.name
        self.granted = granted
        self._broker = broker
        self._audit = audit
        # Ends a shared-memory channel's waits when the worker dies.
        self._death_monitor = death_monitor
        self._plan: WorkerPlan | None = None
        self._process: SpawnedProcess | None = None
        self._channel: rpc.Channel | None = None
        # What the worker reports about itself: a plugin can forge it.
        self.status: dict[str, Any] = {}
        # What the kernel reports in /proc/PID/status, read by the host.
        self.kernel_status: dict[str, str] = {}
        # Requested versus enforced, per layer, once the worker started.
        self.enforcement: enforcement.EnforcementReport | None = None
        # Finds the kernel's record of a seccomp kill of this worker.
        self._kill_watcher = kill_watcher
        # The pid registered with the kill watcher, until it is forgotten.
        self._watched_pid: int | None = None
        self.alive = False
        self._last_pid = -1
        self._reaped_pidfd: int | None = None
        # Held for a whole call, so that a stop() from another thread never
        # closes descriptors that the call is still using.
        self._in_call = threading.Lock()
        # Orders a kill from another thread before the reap, so that the
        # signal can never reach a reaped pid that was reused.
        self._reap_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------

    def start(self, spawner: Spawner) -> None:
        """Spawn the worker and wait until it has loaded its plugin."""
        self._plan = plan = plan_worker(self.config)
        try:
            self._check_landlock(plan)
            if self._kill_watcher is not None:
                self._kill_watcher.start()
            self._process = spawner(plan.request)
            self._watch_for_kill(self._process.pid)
        except BaseException:
            plan.close_child_side()
            if self._process is not None:
                # The spawn succeeded, so the child's process group is
                # killed and reaped, because it must not outlive the failure.
                self._kill_and_reap()
            self._release()
            raise
        plan.close_child_side()
        self.alive = True
        try:
            self._send_bootstrap(plan)
            self._channel = self._open_channel(plan)
            status = self.call("sandbox.hello", {}, STARTUP_TIMEOUT)
            if not isinstance(status, dict):
                raise ProtocolError(
                    f"worker of plugin {self.name!r} sent a hello reply "
                    f"that is not an object: {type(status).__name__}"
                )
            self.status = status
            self.kernel_status = read_kernel_status(self.pid)
            self.enforcement = self._read_enforcement(plan)
            self._check_enforcement(self.enforcement)
        except BaseException:
            self.stop()
            raise
        self._audit.emit(
            "worker_started",
            self.name,
            pid=self.pid,
            # The Uid line lists the real, effective, saved and file-system
            # uids; the effective one is the second.
            uid=_status_number(self.kernel_status.get("Uid"), 1),
            seccomp=_status_number(self.kernel_status.get("Seccomp")),
            no_new_privs=_status_number(self.kernel_status.get("NoNewPrivs")),
            landlock_abi=getattr(plan.landlock_report, "abi", 0),
            enforcement=self.enforcement.to_dict(),
        )

    def _read_enforcement(
        self, plan: WorkerPlan
    ) -> enforcement.EnforcementReport:
        facts = enforcement.worker_facts(self.config, plan, self.granted)
        limits = enforcement.read_rlimits(self.pid)
        return enforcement.running_report(
            facts, self.pid, self.kernel_status, limits
        )

    def _check_enforcement(
        self, report: enforcement.EnforcementReport
    ) -> None:
        """Reject, in strict mode, a worker with a requested layer missing.

        The launcher fails the spawn when a step fails, so a gap found
        here means the kernel shows another state than the one set. The
        plugin's module has been imported by then. A Landlock ruleset
        was checked before the spawn, so only a missing one counts here.
        """
        planned_ruleset = (
            self._plan is not None and self._plan.landlock_report is not None
        )
        for layer in report.gaps():
            if layer.layer == enforcement.LANDLOCK and planned_ruleset:
                continue
            self._audit.emit(
                "protection_missing",
                self.name,
                layer=layer.layer,
                gap=layer.gap,
            )
            if self.config.strict:
                raise LaunchError(
                    layer.layer,
                    errno.EOPNOTSUPP,
                    f"{layer.gap}; pass strict=False to PluginHost to run "
                    "plugins with that gap",
                )

    def _check_landlock(self, plan: WorkerPlan) -> None:
        """Reject, in strict mode, a ruleset that leaves rights unhandled."""
        report = plan.landlock_report
        missing = tuple(report.missing) if report is not None else ()
        if report is None or not missing:
            return
        self._audit.emit(
            "protection_missing",
            self.name,
            layer="landlock",
            missing=missing,
            gap=f"ABI {report.abi} lacks {', '.join(missing)}",
        )
        if self.config.strict:
            raise LaunchError(
                "landlock",
                errno.EOPNOTSUPP,
                f"this kernel's Landlock ABI cannot enforce "
                f"{', '.join(missing)}; pass strict=False to PluginHost to "
                "run plugins with that gap",
            )

    def _watch_for_kill(self, pid: int) -> None:
        # The worker runs no plugin code before the host sends the
        # bootstrap, so the plugin's seccomp kills come after this call.
        if self._kill_watcher is not None:
            identity = self.config.identity
            uid = None if identity is None else identity.uid
            self._kill_watcher.register(pid, uid)
            self._watched_pid = pid

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else -1

    def _send_bootstrap(self, plan: WorkerPlan) -> None:
        try:
            os.write(
                plan.bootstrap_write,
                bootstrap_bytes(self.config, self.granted, plan.channel),
            )
        finally:
            os.close(plan.bootstrap_write)

    def _open_channel(self, plan: WorkerPlan) -> rpc.Channel:
        assert self._process is not None
        limit = self.config.policy.max_message_bytes
        pidfd = self._process.pidfd
        transport: rpc.Transport
        if plan.channel_segment is not None:
            transport = ShmTransport(
                plan.channel_segment,
                max_message_bytes=limit,
                pidfd=pidfd,
                monitor=self._death_monitor,
            )
        else:
            assert plan.host_socket is not None
            transport = rpc.StreamTransport(
                plan.host_socket,
                plan.host_socket,
                max_message_bytes=limit,
                wake_fds=[] if pidfd is None else [pidfd],
            )
        return rpc.Channel(transport, max_message_bytes=limit)

    def stop(self, *, interrupt: bool = False) -> None:
        """Ask the worker to exit, kill it if it does not, and clean up.

        A call in progress on another thread is waited for, unless
        ``interrupt`` is set. Then the worker is killed at once, so that
        call raises PluginCrashed.
        """
        if not self._in_call.acquire(blocking=False):
            if interrupt:
                self._kill()
            self._in_call.acquire()
        try:
            self._shut_down()
        finally:
            self._in_call.release()

    def _shut_down(self) -> None:
        if self.alive and self._channel is not None:
            try:
                # Bounded: a worker that stopped reading its channel must
                # not hold up the host's close().
                self._channel.send_request(
                    "sandbox.shutdown", {}, timeout=STOP_GRACE
                )
                self._wait_exit(STOP_GRACE)
            except (SandboxError, rpc.PeerGone, OSError):
                pass
        if self._process is not None:
            self._kill_and_reap()
            self._audit.emit("worker_stopped", self.name, pid=self._last_pid)
        self._release()

    def _wait_exit(self, seconds: float) -> None:
        import select

        assert self._process is not None
        if self._process.pidfd is None:
            time.sleep(0)
            return
        poller = select.poll()
        poller.register(self._process.pidfd, select.POLLIN)
        poller.poll(seconds * 1000)

    def _kill(self) -> None:
        with self._reap_lock:
            if self._process is not None:
                # The worker leads its own session and process group; killing
                # the group takes its children too (not those that left it).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)

    def _kill_and_reap(self) -> tuple[int, Any]:
        assert self._process is not None
        process = self._process
        self._kill()
        with self._reap_lock:
            _, status, usage = os.wait4(process.pid, 0)
            self._process = None
        self.alive = False
        # The channel polls the pidfd, so it closes in _release, after the
        # channel: a number closed first could be reused by another file.
        self._reaped_pidfd, process.pidfd = process.pidfd, None
        self._last_pid = process.pid
        return status, usage

    def _release(self) -> None:
        if self._kill_watcher is not None and self._watched_pid is not None:
            self._kill_watcher.forget(self._watched_pid)
            self._watched_pid = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._reaped_pidfd is not None:
            os.close(self._reaped_pidfd)
            self._reaped_pidfd = None
        plan, self._plan = self._plan, None
        if plan is not None:
            if plan.channel_segment is not None:
                # Already unmapped if a transport was made, else here.
                plan.channel_segment.close()
            os.close(plan.log_fd)
            remove_tree(plan.scratch)
        self.alive = False

    # -- calls -------------------------------------------------------------

    def call(self, method: str, params: Any, timeout: float) -> Any:
        """Run one call; raise a typed error for every kind of failure.

        Raises WorkerStopped, with nothing sent, if another thread stopped
        the worker first.
        """
        with self._in_call:
            if self._channel is None:
                raise WorkerStopped(
                    f"the worker of plugin {self.name!r} was stopped"
                )
            return self._call(method, params, timeout)

    def _call(self, method: str, params: Any, timeout: float) -> Any:
        assert self._channel is not None
        deadline = time.monotonic() + timeout
        # Bytes that came before the request cannot be its reply. Read as
        # the reply, a frame sent ahead would become this call's result.
        if self._channel.pending():
            raise self._worker_fault(
                ProtocolError(
                    f"worker of plugin {self.name!r} sent data that no "
                    "call requested"
                ),
                timeout,
            )
        try:
            # A ProtocolError other than ChannelBroken is about the caller's
            # params and comes before any byte is sent, so the worker is
            # left running.
            call_id = self._channel.send_request(
                method, params, timeout=timeout
            )
        except rpc.PeerGone:
            raise self._death_error() from None
        except (TimeoutError, rpc.ChannelBroken) as error:
            raise self._worker_fault(error, timeout) from None
        except ProtocolError as error:
            raise ProtocolError(
                f"call {method[:64]!r} of plugin {self.name!r}: {error}"
            ) from error
        # After the send, so that it runs while the worker works.
        self._trim_log()
        try:
            reply = self._await_reply(call_id, deadline)
        except (TimeoutError, ProtocolError) as error:
            raise self._worker_fault(error, timeout) from None
        except rpc.PeerGone:
            raise self._death_error() from None
        # Outside the handler above: an error reply, even one that the
        # host raises as ProtocolError, is the worker keeping to the
        # protocol.
        if reply.error is None:
            return reply.result
        raise self._reply_error(reply.error)

    def _worker_fault(
        self, error: TimeoutError | ProtocolError, timeout: float
    ) -> SandboxError:
        """Kill the worker after a timeout or a protocol violation, record
        it and return the error the call raises."""
        self._fail()
        if isinstance(error, TimeoutError):
            self._audit.emit("timeout_kill", self.name, seconds=timeout)
            return PluginTimeout(self.name, timeout)
        reason = self._redact(str(error))
        self._audit.emit("protocol_violation", self.name, reason=reason)
        return error if reason == str(error) else ProtocolError(reason)

    def _await_reply(self, call_id: int, deadline: float) -> rpc.Response:
        assert self._channel is not None
        served = 0
        while True:
            # Checked even when data is waiting: a worker that sends
            # requests without pause must still meet the call's deadline.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            message = self._channel.receive_message(remaining)
            if isinstance(message, rpc.Request):
                served += 1
                if served > MAX_CAPABILITY_REQUESTS_PER_CALL:
                    raise ProtocolError(
                        "worker sent more than "
                        f"{MAX_CAPABILITY_REQUESTS_PER_CALL} capability "
                        "requests in one call"
                    )
                self._serve_capability(message, deadline)
                continue
            return rpc.match_response(message, call_id)

    def _serve_capability(self, request: rpc.Request, deadline: float) -> None:
        assert self._channel is not None
        channel = self._channel
        timeout = max(0.0, deadline - time.monotonic())
        prefix = "capability."
        if not request.method.startswith(prefix):
            raise ProtocolError(
                f"worker sent request {request.method[:64]!r}; only "
                "capability.* requests are allowed"
            )
        capability = request.method[len(prefix) :]
        if not isinstance(request.params, dict):
            channel.send_error(
                request.id,
                rpc.INVALID_PARAMS,
                "params must be an object",
                timeout=timeout,
            )
            return
        try:
            result = self._broker(self.name, capability, request.params)
        except CapabilityDenied as error:
            channel.send_error(
                request.id, rpc.CAPABILITY_DENIED, str(error), timeout=timeout
            )
            return
        except Exception as error:  # a handler bug fails this call only
            # The broker has audited the failure and names only the
            # capability, so no host detail reaches the plugin.
            channel.send_error(
                request.id, rpc.INTERNAL_ERROR, str(error), timeout=timeout
            )
            return
        try:
            channel.send_result(request.id, result, timeout=timeout)
        except rpc.MessageTooLarge as error:
            self._reject_oversized_result(
                request.id, capability, error, timeout
            )

    def _reject_oversized_result(
        self,
        request_id: int,
        capability: str,
        error: rpc.MessageTooLarge,
        timeout: float,
    ) -> None:
        """Deny a capability whose result exceeds max_message_bytes.

        The host's handler made the result, so the worker is not blamed
        and keeps running. The reply, the event and the log give sizes
        only, because the result can contain a secret.
        """
        # The broker granted the request, so the name is a registered one.
        reason = (
            f"the result of capability {capability!r} is larger than the "
            f"plugin's max_message_bytes: {error}"
        )
        self._audit.emit(
            "capability_failed",
            self.name,
            capability=capability,
            reason=reason,
        )
        logger.warning("plugin %r: %s", self.name, reason)
        assert self._channel is not None
        self._channel.send_error(
            request_id, rpc.CAPABILITY_DENIED, reason, timeout=timeout
        )

    def _reply_error(self, error: dict[str, Any]) -> SandboxError:
        code = error["code"]
        # Redacted before printable() cuts the text, which could leave
        # the start of a secret behind.
        message = printable(self._redact(error["message"]), MAX_WORKER_TEXT)
        data = error.get("data")
        if not isinstance(data, dict):
            data = {}
        if code == rpc.CAPABILITY_DENIED:
            return CapabilityDenied(message)
        limit = data.get("limit")
        if code == rpc.RESOURCE_LIMIT and limit == MESSAGE_SIZE_LIMIT:
            # The worker's encoder rejected a reply over max_message_bytes,
            # so nothing broke the channel and the worker keeps running.
            return ProtocolError(f"reply of plugin {self.name!r}: {message}")
        if code == rpc.RESOURCE_LIMIT and limit in REPORTABLE_LIMITS:
            # The worker's own report: the host saw no kernel signal.
            self._audit.emit(
                "limit_hit", self.name, limit=limit, reported_by="worker"
            )
            return ResourceLimitExceeded(self.name, limit, message)
        if code == rpc.METHOD_NOT_FOUND:
            return PluginNotFound(f"plugin {self.name!r}: {message}")
        type_name = self._redact(str(data.get("type", "Error")))
        traceback = self._redact(str(data.get("traceback", "")))
        return PluginError(
            self.name,
            printable(type_name, 100),
            message,
            printable(traceback, 8000, keep_lines=True),
        )

    def _redact(self, text: str) -> str:
        """Replace the secrets provided to this plugin in worker text."""
        return redact_secrets(text, self._broker.secret_forms_of(self.name))

    # -- death ---------------------------------------------------------------

    def _fail(self) -> None:
        if self._process is not None:
            self._kill_and_reap()
        self._release()

    def _death_error(self) -> SandboxError:
        """Reap a worker that died mid-call; return the error to raise."""
        if self._process is None:
            return PluginCrashed(self.name, detail="worker already stopped")
        # The stream ends while an exiting interpreter still runs its
        # cleanup, so killing it at once would hide its exit code.
        self._wait_exit(STOP_GRACE)
        status, usage = self._kill_and_reap()
        log = self._log_tail()
        evidence = None
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS:
            evidence = kernelaudit.examine_sigsys(
                self._kill_watcher, self._last_pid
            )
        self._release()
        error = classify_death(
            self.name,
            status,
            usage,
            self.config,
            log,
            seccomp_ruled_out=evidence is not None
            and evidence.rules_out_seccomp,
        )
        if evidence is not None and isinstance(error, PolicyViolation):
            error = self._report_violation(error, evidence.violation_fields())
        if isinstance(error, ResourceLimitExceeded):
            self._audit.emit(
                "limit_hit",
                self.name,
                limit=error.limit,
                reported_by=_death_witness(status),
                pid=self._last_pid,
            )
        self._audit.emit(
            "worker_crashed", self.name, reason=str(error), pid=self._last_pid
        )
        return error

    def _report_violation(
        self, error: PolicyViolation, fields: dict[str, Any]
    ) -> PolicyViolation:
        """Emit policy_violation; name the system call in the error."""
        self._audit.emit(
            "policy_violation",
            self.name,
            pid=self._last_pid,
            signal="SIGSYS",
            **fields,
        )
        if fields.get("syscall") is None:
            return error
        return PolicyViolation(
            self.name,
            signal=error.signal,
            detail=f"{error.detail}: {fields['syscall_name']} (number "
            f"{fields['syscall']})",
        )

    def _trim_log(self) -> None:
        if self._plan is None:
            return
        fd = self._plan.log_fd
        size = os.fstat(fd).st_size
        # A quarter of the file size limit leaves room for the output of
        # the calls made between two checks.
        file_limit = (self.config.resources.file_size_mb or 0) * (1 << 20)
        threshold = min(LOG_MAX_BYTES, file_limit // 4)
        if size > threshold:
            os.ftruncate(fd, 0)

    def _log_tail(self) -> str:
        """Return the end of the worker's output, its secrets redacted."""
        if self._plan is None:
            return ""
        secrets = self._broker.secret_forms_of(self.name)
        # The window is read wider by the longest secret, then cut after
        # redaction, so that a secret the window start splits is not left
        # half shown.
        margin = max((len(value.encode()) for value in secrets), default=0)
        fd = self._plan.log_fd
        size = os.fstat(fd).st_size
        start = max(0, size - LOG_TAIL_BYTES - margin)
        data = os.pread(fd, LOG_TAIL_BYTES + margin, start)
        text = redact_secrets(data.decode(errors="replace"), secrets)
        return text[margin:] if start > 0 else text


def classify_death(
    name: str,
    status: int,
    usage: Any,
    config: WorkerConfig,
    log: str,
    *,
    seccomp_ruled_out: bool = False,
) -> SandboxError:
    """Map a wait status to the error a caller should see.

    ``seccomp_ruled_out`` is True when the kernel's audit records show
    no seccomp kill of the worker (see _sigsys_death).
    """
    limits = config.resources
    cpu_used = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSYS:
            return _sigsys_death(name, seccomp_ruled_out)
        cpu_limit = limits.cpu_seconds or 0
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and cpu_used >= cpu_limit
        ):
            return ResourceLimitExceeded(
                name, "cpu_seconds", f"used {cpu_used:.1f} s of CPU"
            )
        if sig == signal.SIGXFSZ:
            return ResourceLimitExceeded(name, "file_size_mb")
        return PluginCrashed(name, signal=sig, detail=_last_line(log))
    code = os.WEXITSTATUS(status)
    if "MemoryError" in log:
        return ResourceLimitExceeded(name, "memory_mb", _last_line(log))
    return PluginCrashed(name, exit_code=code, detail=_last_line(log))


def _sigsys_death(name: str, seccomp_ruled_out: bool) -> PluginCrashed:
    """Return the error for a death by SIGSYS.

    A seccomp kill and a SIGSYS that the plugin sent itself (kill(), a
    timer, F_SETSIG) end the worker alike. Only the kernel's audit record
    distinguishes them. A root host whose kill watcher missed no record
    while the worker ran, and got none for its pid, concludes that no seccomp
    program acted. Without that proof (a host that is not root, or
    records that may have been dropped) the filter may have acted, so
    the death counts as a violation, and the policy_violation event's
    unknown_reason gives the reason the record is missing.
    """
    if seccomp_ruled_out:
        return PluginCrashed(
            name,
            signal=signal.SIGSYS,
            detail="the kernel wrote no seccomp audit record of the worker, "
            "so the signal did not come from its seccomp filter",
        )
    return PolicyViolation(
        name, signal=signal.SIGSYS, detail="a system call its filter forbids"
    )


def _death_witness(status: int) -> str:
    """Name who showed the limit: a kernel signal, or the worker's output.

    RLIMIT_AS sends no signal; the kernel fails the allocation, and only
    the MemoryError that the worker printed before it exited shows it.
    """
    return "kernel" if os.WIFSIGNALED(status) else "worker_output"


def _last_line(log: str) -> str:
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return printable(lines[-1], 200) if lines else ""


MAX_WORKER_TEXT = 2000
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(32), 127)}
_CONTROL_KEEP_LINES = {
    code: text for code, text in _CONTROL.items() if code not in (9, 10)
}


def printable(text: str, limit: int, *, keep_lines: bool = False) -> str:
    """Escape control characters in text from a worker, and bound it.

    Worker text ends up in exception messages and logs, where an escape
    sequence could rewrite a terminal.
    """
    table = _CONTROL_KEEP_LINES if keep_lines else _CONTROL
    cleaned = text[:limit].translate(table)
    return cleaned + "..." if len(text) > limit else cleaned


def _status_number(value: str | None, index: int = 0) -> int | None:
    """Return field ``index`` of a /proc/PID/status value as an int."""
    fields = (value or "").split()
    if index < len(fields) and fields[index].isdigit():
        return int(fields[index])
    return None


def read_kernel_status(pid: int) -> dict[str, str]:
    """Return the security fields of /proc/PID/status, read by the host."""
    fields = ("Uid", "Gid", "Groups", "CapEff", "CapBnd", "NoNewPrivs")
    wanted = (*fields, "Seccomp")
    status: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key in wanted:
                    status[key] = value.strip()
    except OSError:
        return {}
    return status
