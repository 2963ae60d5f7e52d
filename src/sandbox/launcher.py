"""Python face of the C launcher: convert, spawn, decode the error record.

Everything the child needs is converted to flat C arrays here, before the
fork, so that the C side never allocates between fork and execve.
"""

from __future__ import annotations

import enum
import errno as errnos
import importlib
import os
import resource
import signal
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LaunchError

try:
    _native = importlib.import_module("sandbox._native")
except ImportError as error:  # pragma: no cover - depends on the build
    raise ImportError(
        "sandbox's C launcher (sandbox._native) is not built. Install the "
        "package with a C compiler and the Python headers available "
        "(`pip install .`, or `make demo` in a source checkout)."
    ) from error

ffi: Any = _native.ffi
lib: Any = _native.lib

_FAILURE = struct.Struct("=ii")


class Stage(enum.IntEnum):
    """Launcher stages, numbered as enum sandbox_stage in launcher.h."""

    SIGNALS = 1
    SETSID = 2
    PDEATHSIG = 3
    DESCRIPTORS = 4
    CHDIR = 5
    RLIMITS = 6
    CAPBSET = 7
    SETGROUPS = 8
    SETRESGID = 9
    SETRESUID = 10
    CHECK_DROP = 11
    REARM_PDEATHSIG = 12
    NO_NEW_PRIVS = 13
    LANDLOCK = 14
    SECCOMP = 15
    EXECVE = 16
    NETNS = 17


@dataclass(frozen=True)
class Identity:
    """The uid, gid and supplementary groups a worker runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class SpawnRequest:
    """Everything one spawn needs, already resolved and validated."""

    path: str
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None = None
    # Child descriptor number -> descriptor in this process.
    descriptors: Mapping[int, int] = field(default_factory=dict)
    # (resource, soft, hard), e.g. (resource.RLIMIT_AS, n, n).
    rlimits: Sequence[tuple[int, int, int]] = ()
    identity: Identity | None = None
    # A new, empty network namespace: root only.
    new_network_namespace: bool = False
    landlock_fd: int = -1
    seccomp_bpf: bytes = b""


@dataclass
class SpawnedProcess:
    """A started child: its pid and, where the kernel has one, a pidfd."""

    pid: int
    pidfd: int | None


def spawn(request: SpawnRequest) -> SpawnedProcess:
    """Fork and exec request.path with every restriction applied first.

    Raises LaunchError naming the failed stage and its errno; the child is
    reaped before the error is raised.
    """
    keep_alive: list[Any] = []
    args = _build_args(request, keep_alive)
    # Close-on-exec by default (PEP 446); os.pipe2() is missing on macOS.
    read_end, write_end = os.pipe()
    try:
        args.error_fd = write_end
        pid = lib.sandbox_spawn(args)
    finally:
        os.close(write_end)
    try:
        if pid < 0:
            raise LaunchError("fork", -pid)
        try:
            pidfd = _open_pidfd(pid)
        except OSError:
            _raise_for_failure(read_end, pid, None)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        _raise_for_failure(read_end, pid, pidfd)
    finally:
        os.close(read_end)
    return SpawnedProcess(pid, pidfd)


def _build_args(request: SpawnRequest, keep_alive: list[Any]) -> Any:
    def hold(value: Any) -> Any:
        keep_alive.append(value)
        return value

    def c_strings(items: Sequence[str]) -> Any:
        strings = [hold(ffi.new("char[]", os.fsencode(s))) for s in items]
        return hold(ffi.new("char *[]", [*strings, ffi.NULL]))

    args = hold(ffi.new("struct sandbox_spawn_args *"))
    args.path = hold(ffi.new("char[]", os.fsencode(request.path)))
    args.argv = c_strings(list(request.argv))
    args.envp = c_strings([f"{k}={v}" for k, v in request.env.items()])
    if request.cwd is not None:
        args.cwd = hold(ffi.new("char[]", os.fsencode(request.cwd)))
    targets = list(request.descriptors)
    args.fd_targets = hold(ffi.new("int[]", targets))
    args.fd_sources = hold(
        ffi.new("int[]", [request.descriptors[t] for t in targets])
    )
    args.fd_count = len(targets)
    limits = hold(ffi.new("struct sandbox_rlimit[]", len(request.rlimits)))
    for slot, (which, soft, hard) in zip(limits, request.rlimits, strict=True):
        slot.resource, slot.soft, slot.hard = which, soft, hard
    args.rlimits = limits
    args.rlimit_count = len(request.rlimits)
    _set_identity(args, request.identity, hold)
    args.new_netns = int(request.new_network_namespace)
    args.landlock_fd = request.landlock_fd
    if request.seccomp_bpf:
        args.seccomp_filter = hold(ffi.from_buffer(request.seccomp_bpf))
        args.seccomp_len = len(request.seccomp_bpf) // 8
    args.parent_pid = os.getpid()
    return args


def _set_identity(args: Any, identity: Identity | None, hold: Any) -> None:
    if identity is None:
        args.change_ids = 0
        return
    args.change_ids = 1
    args.uid = identity.uid
    args.gid = identity.gid
    args.groups = hold(ffi.new("unsigned int[]", list(identity.groups)))
    args.group_count = len(identity.groups)


def _open_pidfd(pid: int) -> int | None:
    # Safe from pid reuse: the child cannot be reaped before this point.
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError as error:
        if error.errno in (errnos.ENOSYS, errnos.EINVAL):
            return None
        raise
    os.set_inheritable(fd, False)
    return fd


def _raise_for_failure(read_end: int, pid: int, pidfd: int | None) -> None:
    report = _read_all(read_end, 64)
    if not report:
        return
    os.waitpid(pid, 0)
    if pidfd is not None:
        os.close(pidfd)
    if len(report) != _FAILURE.size:
        raise LaunchError(
            "unknown", errnos.EPROTO, f"malformed failure record {report!r}"
        )
    stage_number, error = _FAILURE.unpack(report)
    try:
        stage = Stage(stage_number).name.lower()
    except ValueError:
        stage = f"stage {stage_number}"
    raise LaunchError(stage, error, _hint(stage_number, error))


def _read_all(fd: int, limit: int) -> bytes:
    chunks = b""
    while len(chunks) < limit:
        try:
            chunk = os.read(fd, limit - len(chunks))
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks += chunk
    return chunks


def _hint(stage: int, error: int) -> str:
    if stage == Stage.CHECK_DROP:
        return "the privilege drop did not hold; uid 0 was still reachable"
    if stage == Stage.EXECVE and error == errnos.EACCES:
        return (
            "the worker interpreter is not executable by the worker's uid "
            "or not covered by its Landlock rules"
        )
    if stage == Stage.PDEATHSIG and error == errnos.ESRCH:
        return "the host exited while the worker was starting"
    return ""


RLIMIT_NAMES = {
    "memory_mb": resource.RLIMIT_AS,
    "cpu_seconds": resource.RLIMIT_CPU,
    "file_descriptors": resource.RLIMIT_NOFILE,
    "processes": resource.RLIMIT_NPROC,
    "file_size_mb": resource.RLIMIT_FSIZE,
}
