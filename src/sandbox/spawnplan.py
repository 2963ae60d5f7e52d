"""Turn one plugin's policy into a launcher SpawnRequest.

Each step here converts part of the policy into what the kernel enforces:
rlimits, the uid, the Landlock ruleset and the seccomp program. The
descriptors and the scratch folder are created here and owned by the
returned WorkerPlan until the worker stops.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from . import landlock, seccomp
from .errors import PolicyError
from .launcher import Identity, SpawnRequest
from .manifest import PluginManifest
from .platform import has_linux_features
from .policy import Policy, Resources
from .runtime import PACKAGE_DIR, WorkerRuntime
from .shm import ShmChannelSegment, default_spin_ns

logger = logging.getLogger("sandbox.host")

MIB = 1 << 20
WORKER_STACK_BYTES = 8 * MIB
WORKER_SCRIPT = os.path.join(PACKAGE_DIR, "_worker_main.py")
# The worker's channel descriptor: the socket, or the memfd of the rings.
STREAM_FD = 3
SHM_FD = 5


@dataclass(frozen=True)
class WorkerConfig:
    """Everything resolved about one plugin before its worker starts."""

    manifest: PluginManifest
    policy: Policy
    resources: Resources
    identity: Identity | None
    runtime: WorkerRuntime
    scratch_root: str
    # "stream" (a socketpair) or "shm" (rings in shared memory).
    transport: str = "stream"
    # Refuse to start when the kernel cannot enforce part of the policy.
    strict: bool = True
    # Observe mode (sandbox.observe): no Landlock, a seccomp program that
    # logs instead of denying, and a worker that records what the plugin
    # touches. It protects nothing beyond the uid,
    # no_new_privs and rlimits.
    observe: bool = False


@dataclass
class WorkerPlan:
    """A ready SpawnRequest and the descriptors and folder it owns."""

    request: SpawnRequest
    # The host's end of a socketpair channel, or None for shared memory.
    host_socket: int | None
    bootstrap_write: int
    log_fd: int
    scratch: str
    landlock_report: landlock.RulesetReport | None
    child_fds: list[int] = field(default_factory=list)
    channel_segment: ShmChannelSegment | None = None
    # How the worker opens its channel, sent in its bootstrap.
    channel: dict[str, Any] = field(default_factory=dict)

    def close_child_side(self) -> None:
        """Close the descriptors only the child needed."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds.clear()
        if self.channel_segment is not None:
            self.channel_segment.close_fd()
        if self.request.landlock_fd >= 0:
            os.close(self.request.landlock_fd)


def plan_worker(config: WorkerConfig) -> WorkerPlan:
    """Build the spawn request for one worker of ``config``."""
    # Without the Linux mechanisms only a host with strict=False gets
    # here, and its workers go without Landlock and seccomp. What can
    # fail without holding a resource comes before the first one.
    kernel_layers = has_linux_features()
    seccomp_bpf = _worker_seccomp_program(config) if kernel_layers else b""
    environment = worker_environment(config.policy)
    rlimits = worker_rlimits(config.resources)
    scratch = make_scratch(config)
    opened: list[int] = []
    segment = None
    try:
        ruleset_fd = -1
        report: landlock.RulesetReport | None = None
        if kernel_layers and not config.observe:
            ruleset_fd, report = build_ruleset(config, scratch)
            opened.append(ruleset_fd)
        if config.transport == "shm":
            # The segment owns its descriptor, unlike those in ``opened``.
            segment = ShmChannelSegment.create()
            host_socket, child_fd, child_target = None, segment.fd, SHM_FD
            channel = segment.bootstrap(SHM_FD, default_spin_ns())
        else:
            host_socket, child_fd = _socketpair()
            opened += [host_socket, child_fd]
            child_target = STREAM_FD
            channel = {"transport": "stream", "fd": STREAM_FD}
        # os.pipe() descriptors are close-on-exec (PEP 446), and unlike
        # os.pipe2() it exists on macOS.
        bootstrap_read, bootstrap_write = os.pipe()
        opened += [bootstrap_read, bootstrap_write]
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        opened.append(devnull)
        log_fd = _log_file()
        opened.append(log_fd)
    except BaseException:
        for fd in opened:
            os.close(fd)
        if segment is not None:
            segment.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    child_fds = [bootstrap_read, devnull]
    if segment is None:
        child_fds.append(child_fd)
    request = SpawnRequest(
        path=config.runtime.interpreter,
        argv=worker_argv(config),
        env=environment,
        cwd=scratch,
        descriptors={
            0: devnull,
            1: log_fd,
            2: log_fd,
            child_target: child_fd,
            4: bootstrap_read,
        },
        rlimits=rlimits,
        identity=config.identity,
        new_network_namespace=_wants_network_namespace(config),
        landlock_fd=ruleset_fd,
        seccomp_bpf=seccomp_bpf,
    )
    return WorkerPlan(
        request=request,
        host_socket=host_socket,
        bootstrap_write=bootstrap_write,
        log_fd=log_fd,
        scratch=scratch,
        landlock_report=report,
        child_fds=child_fds,
        channel_segment=segment,
        channel=channel,
    )


def worker_argv(config: WorkerConfig) -> list[str]:
    # argv[0] must be the interpreter's path: CPython finds its standard
    # library from it. -I: no environment variables, user site or script
    # folder on sys.path; -S: no site module; -B: no bytecode written.
    return [config.runtime.interpreter, "-I", "-S", "-B", WORKER_SCRIPT]


# glibc reserves 64 MiB of address space per malloc arena, one per thread
# by default, which would make RLIMIT_AS end a plugin at a few threads.
WORKER_BASE_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}


def worker_environment(policy: Policy) -> dict[str, str]:
    """Return only the variables the policy lists and the host has."""
    listed = {
        name: os.environ[name] for name in policy.env if name in os.environ
    }
    return {**WORKER_BASE_ENVIRONMENT, **listed}


def worker_rlimits(limits: Resources) -> list[tuple[int, int, int]]:
    """Return (resource, soft, hard) for every limit in ``limits``."""
    assert limits.memory_mb is not None and limits.cpu_seconds is not None
    assert limits.file_descriptors is not None
    assert limits.processes is not None and limits.file_size_mb is not None
    memory = limits.memory_mb * MIB
    cpu = limits.cpu_seconds
    return [
        (resource.RLIMIT_AS, memory, memory),
        # The soft limit sends SIGXCPU; a plugin that catches it meets the
        # hard limit, and SIGKILL, one second later.
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (
            resource.RLIMIT_NOFILE,
            limits.file_descriptors,
            limits.file_descriptors,
        ),
        (resource.RLIMIT_NPROC, limits.processes, limits.processes),
        (
            resource.RLIMIT_FSIZE,
            limits.file_size_mb * MIB,
            limits.file_size_mb * MIB,
        ),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_CORE, 0, 0),
        # Fixed, not inherited: the host's hard limits may be unlimited.
        (resource.RLIMIT_STACK, WORKER_STACK_BYTES, WORKER_STACK_BYTES),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]


def make_scratch(config: WorkerConfig) -> str:
    """Create the worker's private working folder, owned by its uid.

    The name carries the host's pid, so that a later host can remove the
    folders of a host that was killed before it could clean up.
    """
    make_scratch_root(config.scratch_root)
    scratch = tempfile.mkdtemp(
        prefix=f"{config.manifest.name}-{os.getpid()}-",
        dir=config.scratch_root,
    )
    if config.identity is not None:
        os.chown(scratch, config.identity.uid, config.identity.gid)
    os.chmod(scratch, 0o500 if config.policy.filesystem.readonly else 0o700)
    return scratch


def make_scratch_root(root: str) -> None:
    """Create the folder of scratch folders: workers may enter, not list.

    Without read access, a worker cannot learn the names of the other
    workers' scratch folders.
    """
    try:
        os.mkdir(root, 0o711)
    except FileExistsError:
        return
    os.chmod(root, 0o711)


def sweep_scratch_root(root: str) -> list[str]:
    """Remove scratch folders left by hosts that are no longer running.

    Returns the removed paths. A folder whose host pid is alive stays,
    even when the pid was reused by another process.
    """
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        parts = name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if _process_exists(int(parts[1])):
            continue
        path = os.path.join(root, name)
        remove_tree(path)
        removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: str) -> None:
    """Delete a scratch folder, however deep the worker made it.

    shutil.rmtree recurses once per level and raises RecursionError on a
    folder a few thousand levels deep, so rm(1) finishes the job.
    """
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except (OSError, RecursionError):
        pass
    try:
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", path],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("could not remove scratch folder %s: %s", path, error)


def _wants_network_namespace(config: WorkerConfig) -> bool:
    """Return whether the worker gets an empty network namespace.

    Only without network, and only where the launcher can create one: a
    host that drops the uid is root. It is a third layer under seccomp's
    socket rules and Landlock's TCP rules, each of which denies the
    network alone.
    """
    return (
        config.policy.network is False
        and config.identity is not None
        and not config.observe
        and has_linux_features()
    )


def _worker_seccomp_program(config: WorkerConfig) -> bytes:
    """Return the seccomp program of the worker of ``config``."""
    if config.observe:
        return observe_program()
    return seccomp.build_filter(filter_spec(config.policy)).bpf


def filter_spec(policy: Policy) -> seccomp.FilterSpec:
    """Return the seccomp options for the policy's ``network`` setting.

    A port allowlist keeps socket() to TCP over IPv4 and IPv6 here. The
    ports themselves are Landlock rules (see build_ruleset).
    """
    network = policy.network
    return seccomp.FilterSpec(
        network=network is not False, tcp_only=isinstance(network, tuple)
    )


def build_ruleset(
    config: WorkerConfig, scratch: str
) -> tuple[int, landlock.RulesetReport]:
    fs = config.policy.filesystem
    read = [
        *config.runtime.read_paths,
        config.manifest.folder,
        *config.manifest.python_path,
        *fs.read,
    ]
    write = list(fs.write)
    (read if fs.readonly else write).append(scratch)
    network = config.policy.network
    spec = landlock.RulesetSpec(
        read=tuple(dict.fromkeys(read)),
        write=tuple(write),
        # false and a port allowlist both handle TCP bind and connect.
        restrict_tcp=network is not True,
        connect_tcp_ports=network if isinstance(network, tuple) else (),
    )
    try:
        return landlock.build_ruleset(spec)
    except landlock.LandlockError as error:
        raise PolicyError(
            str(error),
            source=config.policy.source,
            plugin=config.manifest.name,
            key="network" if error.port is not None else "filesystem",
        ) from error


def bootstrap_bytes(
    config: WorkerConfig, granted: frozenset[str], channel: dict[str, Any]
) -> bytes:
    payload: dict[str, Any] = {
        "plugin": config.manifest.to_dict(),
        "capabilities": sorted(granted),
        "max_message_bytes": config.policy.max_message_bytes,
        "sys_path": list(config.runtime.sys_path),
        "channel": channel,
        "observe": config.observe,
    }
    return json.dumps(payload).encode()


def observe_program() -> bytes:
    """Return observe mode's seccomp program.

    The program logs each call that the default-deny program would
    reject. The environment stays the policy's allowlist: the worker
    records the names the plugin reads whether or not they are set, so
    no host variable needs to reach code under evaluation. The caller
    builds no Landlock ruleset.
    """
    return seccomp.build_filter(seccomp.FilterSpec(log_only=True)).bpf


def _socketpair() -> tuple[int, int]:
    import socket

    host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return host.detach(), child.detach()


def _log_file() -> int:
    """Open an unlinked file for the worker's stdout and stderr.

    O_APPEND makes every write land at the current end, so that the host
    can truncate the file and the worker's writes start again from zero.
    """
    with tempfile.TemporaryFile(prefix="sandbox-worker-log-") as log:
        fd = os.dup(log.fileno())
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
    return fd
