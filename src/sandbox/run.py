"""Run any command under a policy with the launcher that starts workers.

``sandbox run`` and run_command() start one command with the same kernel
restrictions as a plugin's worker: rlimits, a uid of its own (as root),
no_new_privs, a Landlock ruleset, the seccomp program and, without
network, an empty network namespace (as root). The choices that differ
from a worker, because a command is not a Python plugin:

- Policy: the caller passes one Policy. The command line takes the table
  of ``--plugin NAME`` from ``--policy FILE``, else the file's
  ``[defaults]``, else the built-in default-deny policy. Capabilities,
  secrets, ``files`` and ``max_message_bytes`` concern the host's broker,
  which a command does not have, so they are ignored.
- Identity: as root, the uid that sandbox.uids gives ``plugin``, or
  without one the uid of RUN_UID_NAME, a name outside the plugin-name
  grammar, so that no plugin shares it. A policy ``user`` comes first.
  Without root the command keeps the caller's uid.
- Reading: the system folders of SYSTEM_READ_PATHS (programs, the
  dynamic loader and shared libraries), SYSTEM_READ_FILES, the command's
  own file and the policy's ``filesystem.read``. Everything else is
  denied, /proc and /home included.
- Writing: a private scratch folder, which is the working folder and is
  removed afterwards, /dev/null, and the policy's ``filesystem.write``.
- Environment: empty apart from PATH=/usr/bin:/bin and the variables of
  the policy's ``env`` that the caller has, which override PATH. The
  command's name is looked up in that PATH, not in the caller's.
- Descriptors: the command inherits the caller's stdin, stdout and
  stderr, and no other descriptor.
- End: when the command exits, or when the wall-clock timeout passes,
  SIGKILL ends its whole process group. Seccomp keeps the command from
  leaving the group (setsid() and setpgid() fail). The caller's SIGHUP,
  SIGINT, SIGQUIT and SIGTERM are forwarded to the group meanwhile.
- Strict: where the platform or the kernel's Landlock ABI cannot
  enforce the whole policy, the command does not start (LaunchError).
  Without root there is no uid switch and no network namespace, as for
  a PluginHost that is not root. Seccomp and Landlock still deny the
  network.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from . import landlock, seccomp
from .errors import LaunchError, PolicyError
from .launcher import Identity, SpawnedProcess, SpawnRequest, spawn
from .platform import unsupported_reason
from .policy import DEFAULT_RESOURCES, Policy, PolicySet, Resources
from .runtime import plan_host_uids, resolve_identity, unreadable_path
from .spawnplan import (
    filter_spec,
    make_scratch_root,
    remove_tree,
    worker_rlimits,
)
from .uids import (
    DEFAULT_PLUGIN_UIDS,
)

# Programs, the dynamic loader and the shared libraries, whatever the
# distribution's layout: merged /usr makes /bin and /lib links into /usr.
SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
# Read by the dynamic loader and by localtime(3). Neither contains secrets.
SYSTEM_READ_FILES = ("/etc/ld.so.cache", "/etc/localtime")
# Shell redirections to /dev/null are common, and it stores nothing.
SYSTEM_WRITE_FILES = ("/dev/null",)
COMMAND_PATH = "/usr/bin:/bin"
# The uid registry's name for commands run without a plugin. Plugin
# names cannot contain a space, so no plugin can take its uid.
RUN_UID_NAME = "sandbox run"
DEFAULT_SCRATCH_ROOT = os.path.join("/tmp", f"sandbox-scratch-{os.getuid()}")
# The exit status of timeout(1) when the command timed out.
TIMEOUT_STATUS = 124
FORWARDED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
)
# How often to check for the command's exit where there is no pidfd.
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class RunResult:
    """The end of a command: its exit status and the signal that ended it.

    ``status`` is the exit status as a shell reports it: the command's
    own, 128 + the signal number when a signal killed it, or
    TIMEOUT_STATUS (124) when the timeout did. ``signal`` is the signal
    that killed the command, or None when it exited.
    """

    status: int
    signal: int | None = None
    timed_out: bool = False

    @property
    def killed_by_seccomp(self) -> bool:
        """Whether SIGSYS, which the seccomp program sends, killed it.

        Another process could have sent SIGSYS too; this cannot tell.
        """
        return self.signal == signal.SIGSYS and not self.timed_out


def run_command(
    argv: Sequence[str],
    policy: Policy,
    resources: Resources,
    *,
    timeout: float,
    plugin: str | None = None,
    scratch_root: str | None = None,
) -> RunResult:
    """Run ``argv`` under ``policy`` and ``resources``; wait for its end.

    ``argv[0]`` is looked up in the command's PATH unless it contains a
    slash. ``plugin`` chooses the uid as described in the module
    docstring. ``resources`` must have every field set, as
    PolicySet.effective_resources returns it, and ``timeout`` is the
    wall-clock limit in seconds.

    Raises LaunchError when the command is missing or not executable
    (stage ``command``), when the platform cannot enforce the policy, and
    for a failed launcher stage. Raises PolicyError for a rule path that
    cannot be opened and for a policy ``user`` that another plugin owns.
    """
    if not argv:
        raise ValueError("argv is empty: expected a command to run")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    _check_platform()
    environment = command_environment(policy)
    path = resolve_command(argv[0], environment["PATH"])
    identity = run_identity(policy, plugin)
    _check_reachable(path, identity)
    scratch = _make_scratch(scratch_root or DEFAULT_SCRATCH_ROOT, identity)
    try:
        # Installed before the spawn, so that no signal between the spawn
        # and the wait takes the default action and leaves the command.
        with _forwarding_signals() as forwarder:
            process = _spawn_command(
                argv, path, policy, resources, identity, scratch, environment
            )
            forwarder.start(process.pid)
            return _wait_for_command(process, timeout, forwarder)
    finally:
        remove_tree(scratch)


def _spawn_command(
    argv: Sequence[str],
    path: str,
    policy: Policy,
    resources: Resources,
    identity: Identity | None,
    scratch: str,
    environment: dict[str, str],
) -> SpawnedProcess:
    """Start the command; close the descriptors only the child needed."""
    # Built first: a program that fails to build leaves nothing open.
    program = seccomp.build_filter(filter_spec(policy))
    opened: list[int] = []
    try:
        descriptors = _standard_descriptors(opened)
        ruleset_fd = _build_ruleset(policy, path, scratch)
        opened.append(ruleset_fd)
        request = SpawnRequest(
            path=path,
            argv=list(argv),
            env=environment,
            cwd=scratch,
            descriptors=descriptors,
            rlimits=worker_rlimits(resources),
            identity=identity,
            # Only root can create one. Seccomp and Landlock deny the
            # network without it.
            new_network_namespace=(
                policy.network is False and identity is not None
            ),
            landlock_fd=ruleset_fd,
            seccomp_bpf=program.bpf,
        )
        return spawn(request)
    finally:
        for fd in opened:
            os.close(fd)


def select_policy(
    policy_file: str | None, plugin: str | None
) -> tuple[Policy, Resources]:
    """Return the policy and the full limits of ``plugin`` or [defaults].

    Without ``policy_file`` the built-in default-deny policy applies.
    Raises PolicyError for an invalid file or plugin name.
    """
    policy_set = Policy.load(policy_file) if policy_file else None
    policy_set = policy_set or PolicySet.empty()
    if plugin is None:
        policy = policy_set.defaults
    else:
        policy = policy_set.for_plugin(plugin)
    return policy, policy.resources.merged_over(DEFAULT_RESOURCES)


def _check_platform() -> None:
    reason = unsupported_reason()
    if reason is None:
        return
    raise LaunchError(
        "platform",
        errno.EOPNOTSUPP,
        f"seccomp, Landlock and no_new_privs are {reason}, so no policy "
        "can be enforced in full here",
    )


def resolve_command(name: str, search_path: str) -> str:
    """Return the real path of the program ``name`` names.

    A name without a slash is looked up in ``search_path``, the command's
    own PATH, as env(1) does, so the command finds the programs its own
    child processes would. Raises LaunchError (stage ``command``) with
    ENOENT when it is not found and EACCES when it is not executable.
    """
    if "/" in name:
        found: str | None = name
    else:
        found = shutil.which(name, path=search_path)
    if found is None or not os.path.isfile(found):
        raise LaunchError(
            "command", errno.ENOENT, f"command {name!r} not found"
        )
    if not os.access(found, os.X_OK):
        raise LaunchError(
            "command", errno.EACCES, f"command {name!r} is not executable"
        )
    return os.path.realpath(found)


def run_identity(policy: Policy, plugin: str | None) -> Identity | None:
    """Return the identity of the command, or None to keep the caller's.

    As root, the uid of ``plugin`` (or of RUN_UID_NAME) is read from the
    uid registry, or assigned and recorded there, as a PluginHost with
    the default plugin_uids would do.
    """
    as_root = os.geteuid() == 0
    name = plugin or RUN_UID_NAME
    uid_plan = plan_host_uids(
        {name: policy.user},
        DEFAULT_PLUGIN_UIDS,
        registry=None,
        source=policy.source,
    )
    return resolve_identity(
        policy.user, as_root=as_root, plugin_uid=uid_plan.plugin_uids.get(name)
    )


def _check_reachable(path: str, identity: Identity | None) -> None:
    # Checked here because execve() returns EACCES without naming the
    # folder that blocks it.
    blocked = unreadable_path(os.path.dirname(path), identity)
    if blocked is None:
        return
    assert identity is not None
    raise LaunchError(
        "command",
        errno.EACCES,
        f"uid {identity.uid}, which runs the command, cannot reach {path} "
        f"(blocked at {blocked}); move the program to a folder that every "
        "user can enter",
    )


def _make_scratch(root: str, identity: Identity | None) -> str:
    """Create the command's working folder, writable by its uid only.

    The name has the form that spawnplan.sweep_scratch_root() expects,
    so a PluginHost removes it if this process is killed before it can.
    """
    make_scratch_root(root)
    scratch = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root)
    if identity is not None:
        os.chown(scratch, identity.uid, identity.gid)
    os.chmod(scratch, 0o700)
    return scratch


def _build_ruleset(policy: Policy, path: str, scratch: str) -> int:
    """Create the Landlock ruleset; raise LaunchError where it falls short."""
    spec = ruleset_spec(policy, path, scratch)
    try:
        ruleset_fd, report = landlock.build_ruleset(spec)
    except landlock.LandlockError as error:
        if error.path is None and error.port is None:
            raise LaunchError("landlock", error.errno, str(error)) from error
        raise PolicyError(
            str(error),
            source=policy.source,
            key="network" if error.port is not None else "filesystem",
        ) from error
    if report.missing:
        os.close(ruleset_fd)
        raise LaunchError(
            "landlock",
            errno.EOPNOTSUPP,
            f"this kernel's Landlock ABI {report.abi} cannot enforce "
            f"{', '.join(report.missing)}, so the policy would not hold "
            "in full",
        )
    return ruleset_fd


def ruleset_spec(
    policy: Policy, path: str, scratch: str
) -> landlock.RulesetSpec:
    """Return the Landlock rules that the module docstring lists."""
    fs = policy.filesystem
    system = [*SYSTEM_READ_PATHS, *SYSTEM_READ_FILES]
    read = [os.path.realpath(p) for p in system if os.path.exists(p)]
    read += [path, *fs.read]
    write = [p for p in SYSTEM_WRITE_FILES if os.path.exists(p)]
    write += fs.write
    (read if fs.readonly else write).append(scratch)
    network = policy.network
    return landlock.RulesetSpec(
        read=tuple(dict.fromkeys(read)),
        write=tuple(dict.fromkeys(write)),
        restrict_tcp=network is not True,
        connect_tcp_ports=network if isinstance(network, tuple) else (),
    )


def command_environment(policy: Policy) -> dict[str, str]:
    """Return PATH and the policy's ``env`` variables that the caller has."""
    listed = {
        name: os.environ[name] for name in policy.env if name in os.environ
    }
    return {"PATH": COMMAND_PATH, **listed}


def _standard_descriptors(opened: list[int]) -> dict[int, int]:
    """Map the caller's fds 0 to 2 to the same numbers in the command.

    A closed one becomes /dev/null, appended to ``opened``, so that the
    command never opens a file that then takes a standard stream's
    number.
    """
    descriptors = {}
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            mode = os.O_RDONLY if fd == 0 else os.O_WRONLY
            devnull = os.open(os.devnull, mode | os.O_CLOEXEC)
            opened.append(devnull)
            descriptors[fd] = devnull
        else:
            descriptors[fd] = fd
    return descriptors


def _wait_for_command(
    process: SpawnedProcess, timeout: float, forwarder: _SignalForwarder
) -> RunResult:
    """Wait until the command exits or ``timeout`` seconds pass.

    Either way SIGKILL then ends the command's process group, before the
    command itself is reaped, so that the group id cannot belong to
    another process yet.
    """
    reaped = False
    try:
        exited = _wait_for_exit(process, timeout)
        _kill_group(process.pid)
        forwarder.stop()
        _, status = os.waitpid(process.pid, 0)
        reaped = True
    finally:
        if not reaped:
            _kill_group(process.pid)
            forwarder.stop()
            os.waitpid(process.pid, 0)
        if process.pidfd is not None:
            os.close(process.pidfd)
    if not exited:
        return RunResult(TIMEOUT_STATUS, signal.SIGKILL, timed_out=True)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return RunResult(128 + number, number)
    return RunResult(os.waitstatus_to_exitcode(status))


def _wait_for_exit(process: SpawnedProcess, timeout: float) -> bool:
    """Return whether the command exited within ``timeout``, unreaped."""
    if process.pidfd is not None:
        # select() retries after a signal handler, with the time left.
        readable, _, _ = select.select([process.pidfd], [], [], timeout)
        return bool(readable)
    deadline = time.monotonic() + timeout
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, process.pid, flags) is not None:
            return True
        time.sleep(_POLL_SECONDS)
    return os.waitid(os.P_PID, process.pid, flags) is not None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class _SignalForwarder:
    """Signal handler that sends each signal on to the command's group.

    Signals that arrive before start() wait for it. Signals that arrive
    after stop(), once the group id may be free for reuse, are dropped,
    and so are those of a command that never started.
    """

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.pending: list[int] = []
        self.stopped = False

    def handle(self, number: int, frame: object) -> None:
        if self.stopped:
            return
        if self.pgid is None:
            self.pending.append(number)
            return
        _signal_group(self.pgid, number)

    def start(self, pgid: int) -> None:
        self.pgid = pgid
        for number in self.pending:
            _signal_group(pgid, number)
        self.pending.clear()

    def stop(self) -> None:
        self.stopped = True


def _signal_group(pgid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, number)


@contextlib.contextmanager
def _forwarding_signals() -> Iterator[_SignalForwarder]:
    """Send the caller's termination signals on to the command's group.

    The launcher gives the command a session of its own, so a Ctrl-C in
    the terminal reaches only this process. Python lets only the main
    thread set handlers, so a call from another thread forwards nothing.
    """
    forwarder = _SignalForwarder()
    if threading.current_thread() is not threading.main_thread():
        yield forwarder
        return
    previous = {
        number: signal.signal(number, forwarder.handle)
        for number in FORWARDED_SIGNALS
    }
    try:
        yield forwarder
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
