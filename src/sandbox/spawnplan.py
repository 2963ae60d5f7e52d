"""Turn one plugin's policy into a launcher SpawnRequest.

Each step here converts part of the policy into what the kernel enforces:
rlimits, the uid, the Landlock ruleset and the seccomp program. The
descriptors and the scratch folder are created here and owned by the
returned WorkerPlan until the worker stops.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from . import landlock, seccomp
from .errors import PolicyError
from .launcher import Identity, SpawnRequest
from .manifest import PluginManifest
from .policy import Policy, Resources
from .runtime import PACKAGE_DIR, WorkerRuntime

MIB = 1 << 20
WORKER_SCRIPT = os.path.join(PACKAGE_DIR, "_worker_main.py")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything resolved about one plugin before its worker starts."""

    manifest: PluginManifest
    policy: Policy
    resources: Resources
    identity: Identity | None
    runtime: WorkerRuntime
    scratch_root: str


@dataclass
class WorkerPlan:
    """A ready SpawnRequest and the descriptors and folder it owns."""

    request: SpawnRequest
    host_socket: int
    bootstrap_write: int
    log_fd: int
    scratch: str
    landlock_report: landlock.RulesetReport | None
    child_fds: list[int] = field(default_factory=list)

    def close_child_side(self) -> None:
        """Close the descriptors only the child needed."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds.clear()
        if self.request.landlock_fd >= 0:
            os.close(self.request.landlock_fd)


def plan_worker(config: WorkerConfig) -> WorkerPlan:
    """Build the spawn request for one worker of ``config``."""
    scratch = make_scratch(config)
    opened: list[int] = []
    try:
        ruleset_fd, report = build_ruleset(config, scratch)
        opened.append(ruleset_fd)
        host_socket, child_socket = _socketpair()
        opened += [host_socket, child_socket]
        bootstrap_read, bootstrap_write = os.pipe2(os.O_CLOEXEC)
        opened += [bootstrap_read, bootstrap_write]
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        opened.append(devnull)
        log_fd = _log_file()
        opened.append(log_fd)
    except BaseException:
        for fd in opened:
            os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    request = SpawnRequest(
        path=config.runtime.interpreter,
        argv=worker_argv(config),
        env=worker_environment(config.policy),
        cwd=scratch,
        descriptors={
            0: devnull,
            1: log_fd,
            2: log_fd,
            3: child_socket,
            4: bootstrap_read,
        },
        rlimits=worker_rlimits(config.resources),
        identity=config.identity,
        landlock_fd=ruleset_fd,
        seccomp_bpf=seccomp.build_filter(
            seccomp.FilterSpec(network=config.policy.network)
        ).bpf,
    )
    return WorkerPlan(
        request=request,
        host_socket=host_socket,
        bootstrap_write=bootstrap_write,
        log_fd=log_fd,
        scratch=scratch,
        landlock_report=report,
        child_fds=[child_socket, bootstrap_read, devnull],
    )


def worker_argv(config: WorkerConfig) -> list[str]:
    # argv[0] must be the interpreter's path: CPython finds its standard
    # library from it. -I: no environment variables, user site or script
    # folder on sys.path; -S: no site module; -B: no bytecode written.
    return [config.runtime.interpreter, "-I", "-S", "-B", WORKER_SCRIPT]


def worker_environment(policy: Policy) -> dict[str, str]:
    """Return only the variables the policy lists and the host has."""
    return {
        name: os.environ[name] for name in policy.env if name in os.environ
    }


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
    ]


def make_scratch(config: WorkerConfig) -> str:
    """Create the worker's private working folder, owned by its uid."""
    os.makedirs(config.scratch_root, mode=0o755, exist_ok=True)
    scratch = tempfile.mkdtemp(
        prefix=f"{config.manifest.name}-", dir=config.scratch_root
    )
    if config.identity is not None:
        os.chown(scratch, config.identity.uid, config.identity.gid)
    os.chmod(scratch, 0o500 if config.policy.filesystem.readonly else 0o700)
    return scratch


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
    spec = landlock.RulesetSpec(
        read=tuple(dict.fromkeys(read)),
        write=tuple(write),
        restrict_tcp=not config.policy.network,
    )
    try:
        return landlock.build_ruleset(spec)
    except landlock.LandlockError as error:
        raise PolicyError(
            str(error),
            source=config.policy.source,
            plugin=config.manifest.name,
            key="filesystem",
        ) from error


def bootstrap_bytes(config: WorkerConfig, granted: frozenset[str]) -> bytes:
    payload: dict[str, Any] = {
        "plugin": config.manifest.to_dict(),
        "capabilities": sorted(granted),
        "max_message_bytes": config.policy.max_message_bytes,
        "sys_path": list(config.runtime.sys_path),
    }
    return json.dumps(payload).encode()


def _socketpair() -> tuple[int, int]:
    import socket

    host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return host.detach(), child.detach()


def _log_file() -> int:
    # Unlinked at once: the worker's stdout and stderr, read on a crash.
    with tempfile.TemporaryFile(prefix="sandbox-worker-log-") as log:
        return os.dup(log.fileno())
