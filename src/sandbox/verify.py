"""Check, for real, which protections this machine gives sandbox workers.

probe_machine() queries the kernel for each mechanism, then starts one
worker of a small built-in probe plugin through PluginHost. A protection
counts as enforced only when that worker shows it: in its own status
report (seccomp mode, no_new_privs, uid, capability bounding set,
dumpable) or in the outcome of an operation it tries (reading a file
outside its Landlock rules, connecting to an abstract unix socket of the
host).

The probe plugin is written to a fresh world-readable temporary folder
rather than shipped as package data. The worker uid must be able to read
it wherever the package is installed, and the file that the probe must
not read has to sit outside every Landlock read rule of the worker,
which a sibling in that temporary folder does.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import pwd
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from . import landlock, seccomp
from .errors import SandboxError
from .host import PluginHost
from .platform import missing_protections
from .policy import DEFAULT_RESOURCES, Policy, PolicySet, Resources
from .runtime import resolve_interpreter

__all__ = [
    "MachineReport",
    "Protection",
    "missing_for",
    "needed_protections",
    "probe_machine",
    "requirements_for",
]

Status = Literal["enforced", "available", "missing"]

# Protection names, in the order of the report.
SECCOMP = "seccomp"
NO_NEW_PRIVS = "no_new_privs"
LANDLOCK = "landlock"
LANDLOCK_FS_RIGHTS = "landlock_fs_rights"
LANDLOCK_TCP = "landlock_tcp"
LANDLOCK_SIGNAL_SCOPE = "landlock_signal_scope"
LANDLOCK_UNIX_SCOPE = "landlock_unix_scope"
UID_DROP = "uid_drop"
CAPABILITIES = "capabilities"
DUMPABLE_OFF = "dumpable_off"
SETSID = "setsid"
RLIMITS = "rlimits"
PIDFD = "pidfd"
CGROUPS = "cgroups"
PYTHON_PRCTL = "python_prctl"
PROTECTION_NAMES = (
    SECCOMP,
    NO_NEW_PRIVS,
    LANDLOCK,
    LANDLOCK_FS_RIGHTS,
    LANDLOCK_TCP,
    LANDLOCK_SIGNAL_SCOPE,
    LANDLOCK_UNIX_SCOPE,
    UID_DROP,
    CAPABILITIES,
    DUMPABLE_OFF,
    SETSID,
    RLIMITS,
    PIDFD,
    CGROUPS,
    PYTHON_PRCTL,
)

PROBE_PLUGIN = "sandbox-probe"
# A second probe with network allowed: without network, seccomp denies
# socket() before Landlock's abstract unix scope could be seen at work.
PROBE_NET_PLUGIN = "sandbox-probe-net"
_OUTSIDE_FILE = "outside-the-rules.txt"
_PR_GET_NO_NEW_PRIVS = 39
_LANDLOCK_ALL_FS_SINCE_ABI = 5
_LANDLOCK_TCP_SINCE_ABI = 4
_LANDLOCK_SCOPES_SINCE_ABI = 6

_PROBE_MANIFEST = """\
name = "{name}"
version = "1"
entry = "sandbox_probe"
methods = ["probe"]
description = "Tries what a sandboxed worker must not do, for sandbox verify"
"""

# Runs inside the worker. Each outcome is "allowed" or the errno name.
_PROBE_SOURCE = '''\
"""Report what this worker can do, for `sandbox verify`."""

import errno
import os
import resource
import socket


def _outcome(action):
    try:
        action()
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))
    return "allowed"


def _read(path):
    with open(path, "rb") as file:
        file.read(1)


def _connect_abstract(name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect("\\0" + name)


def _open_inet_socket():
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def probe(outside_file, abstract_socket, host_pid, rlimits):
    limits = {}
    for name in rlimits:
        limits[name] = list(resource.getrlimit(getattr(resource, name)))
    return {
        "read_outside_file": _outcome(lambda: _read(outside_file)),
        "connect_abstract_socket": _outcome(
            lambda: _connect_abstract(abstract_socket)
        ),
        # Signal 0 checks permission and delivers nothing.
        "signal_host": _outcome(lambda: os.kill(host_pid, 0)),
        "open_inet_socket": _outcome(_open_inet_socket),
        "session_leader": os.getsid(0) == os.getpid(),
        "rlimits": limits,
    }
'''


@dataclass(frozen=True)
class Protection:
    """One protection and how far this machine gives it to workers.

    ``status`` is "enforced" when the probe worker showed it in force,
    "available" when the kernel offers it but the worker did not show
    it, and "missing" when this machine cannot give it or the worker
    showed it absent. ``checked_in_worker`` is false for a protection
    that the probe cannot observe on this host, for example a Landlock
    TCP rule behind the seccomp filter that denies the socket first.
    """

    name: str
    status: Status
    detail: str
    checked_in_worker: bool = True

    @property
    def in_force(self) -> bool:
        """Whether a policy that needs this protection gets it.

        A protection the probe cannot observe counts when the kernel
        offers it, because kernel support is the only evidence there is.
        """
        if self.status == "enforced":
            return True
        return self.status == "available" and not self.checked_in_worker

    def to_dict(self) -> dict[str, Any]:
        """Return the protection as JSON-compatible types."""
        return {
            "status": self.status,
            "detail": self.detail,
            "checked_in_worker": self.checked_in_worker,
            "in_force": self.in_force,
        }


@dataclass(frozen=True)
class MachineReport:
    """The protections this machine enforces, as probe_machine() found them.

    ``worker_status`` is the probe worker's own report of its state.
    ``probe_error`` contains the reason the probe worker failed, or None.
    """

    protections: tuple[Protection, ...]
    as_root: bool
    interpreter: str
    landlock_abi: int
    worker_status: Mapping[str, Any] | None = None
    probe_error: str | None = None

    def protection(self, name: str) -> Protection:
        """Return the protection called ``name``, or raise KeyError."""
        for protection in self.protections:
            if protection.name == name:
                return protection
        raise KeyError(f"no protection named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible types."""
        return {
            "as_root": self.as_root,
            "interpreter": self.interpreter,
            "landlock_abi": self.landlock_abi,
            "probe_error": self.probe_error,
            "worker_status": dict(self.worker_status or {}),
            "protections": {p.name: p.to_dict() for p in self.protections},
        }


@dataclass(frozen=True)
class _Observation:
    """The probe worker's reports, or the error that stopped the worker."""

    status: Mapping[str, Any] = field(default_factory=dict)
    outcome: Mapping[str, Any] = field(default_factory=dict)
    expected_rlimits: Mapping[str, tuple[int, int]] = field(
        default_factory=dict
    )
    error: str | None = None


def probe_machine(python: str | None = None) -> MachineReport:
    """Probe the kernel and one real worker, and report every protection.

    ``python`` is the interpreter workers run, as for PluginHost. A
    worker that fails to start is reported in ``probe_error``, and every
    protection only the worker could show is then "available" at best.
    """
    as_root = os.geteuid() == 0
    abi = landlock.abi_version()
    gaps = _landlock_gaps(abi)
    seen = _observe_worker(python)
    protections = (
        _seccomp(seen),
        _no_new_privs(seen),
        _landlock(abi, seen),
        _landlock_fs_rights(abi, gaps),
        _landlock_tcp(abi, gaps),
        _landlock_signal_scope(abi, gaps, seen, as_root),
        _landlock_unix_scope(abi, gaps, seen),
        _uid_drop(seen, as_root),
        _capabilities(seen, as_root),
        _dumpable_off(seen),
        _setsid(seen),
        _rlimits(seen),
        _pidfd(),
        _cgroups(),
        _python_prctl(seen),
    )
    return MachineReport(
        protections=_with_platform_gaps(protections),
        as_root=as_root,
        interpreter=resolve_interpreter(python),
        landlock_abi=abi,
        worker_status=dict(seen.status) if seen.error is None else None,
        probe_error=seen.error,
    )


def _with_platform_gaps(
    protections: tuple[Protection, ...],
) -> tuple[Protection, ...]:
    """Mark missing what this platform or build cannot give workers.

    A portable build on Linux runs on a kernel that offers seccomp and
    Landlock to this process, but its launcher cannot apply them.
    """
    gaps = missing_protections()
    return tuple(
        Protection(item.name, "missing", gaps[item.name], False)
        if item.name in gaps
        else item
        for item in protections
    )


def needed_protections(policy: Policy, *, as_root: bool) -> list[str]:
    """Return the protections a worker under ``policy`` relies on.

    Every worker gets seccomp, no_new_privs, the Landlock ruleset with
    all filesystem rights and both scopes (ABI 6), a new session,
    dumpable off and rlimits. A policy without network or with a TCP
    port allowlist adds Landlock's TCP rules (ABI 4), and a root host
    adds the uid drop and the empty capability bounding set.
    """
    needs = {
        SECCOMP,
        NO_NEW_PRIVS,
        LANDLOCK,
        LANDLOCK_FS_RIGHTS,
        LANDLOCK_SIGNAL_SCOPE,
        LANDLOCK_UNIX_SCOPE,
        DUMPABLE_OFF,
        SETSID,
        RLIMITS,
    }
    # Only network = true leaves TCP to the kernel's defaults.
    if policy.network is not True:
        needs.add(LANDLOCK_TCP)
    if as_root:
        needs |= {UID_DROP, CAPABILITIES}
    return [name for name in PROTECTION_NAMES if name in needs]


def requirements_for(
    policy_set: PolicySet, *, as_root: bool | None = None
) -> dict[str, list[str]]:
    """Return the protections each plugin table of ``policy_set`` needs.

    ``as_root`` defaults to whether this process runs as root.
    """
    root = os.geteuid() == 0 if as_root is None else as_root
    return {
        name: needed_protections(policy_set.for_plugin(name), as_root=root)
        for name in policy_set.names()
    }


def missing_for(
    report: MachineReport, requirements: Mapping[str, list[str]]
) -> dict[str, list[str]]:
    """Return, per plugin, the needed protections that are not in force.

    Every plugin of ``requirements`` appears, with an empty list when
    nothing is missing.
    """
    return {
        plugin: [
            name for name in needs if not report.protection(name).in_force
        ]
        for plugin, needs in requirements.items()
    }


# -- the probe worker --------------------------------------------------------


def _observe_worker(python: str | None) -> _Observation:
    expected = _expected_rlimits(DEFAULT_RESOURCES)
    with _probe_folder() as folder, _abstract_listener() as socket_name:
        params = {
            "outside_file": os.path.join(folder, _OUTSIDE_FILE),
            "abstract_socket": socket_name,
            "host_pid": os.getpid(),
            "rlimits": sorted(expected),
        }
        try:
            with PluginHost(
                [os.path.join(folder, "plugins")],
                Policy.from_dict(
                    {"plugins": {PROBE_NET_PLUGIN: {"network": True}}}
                ),
                max_workers=2,
                resources=DEFAULT_RESOURCES,
                python=python,
            ) as host:
                outcome = host.execute_plugin(PROBE_PLUGIN, "probe", params)
                status = host.worker_status(PROBE_PLUGIN)
                networked = host.execute_plugin(
                    PROBE_NET_PLUGIN, "probe", params
                )
            if isinstance(outcome, dict) and isinstance(networked, dict):
                outcome["connect_abstract_socket"] = networked.get(
                    "connect_abstract_socket"
                )
        except SandboxError as error:
            return _Observation(expected_rlimits=expected, error=str(error))
    if not isinstance(outcome, dict):
        return _Observation(
            expected_rlimits=expected,
            error=f"the probe plugin returned {type(outcome).__name__}",
        )
    return _Observation(status, outcome, expected)


@contextmanager
def _probe_folder() -> Iterator[str]:
    """Write the probe plugin and a file outside its rules, then remove both.

    mkdtemp makes the folder 0700, so it is opened up for the worker uid.
    """
    folder = tempfile.mkdtemp(prefix="sandbox-verify-")
    try:
        os.chmod(folder, 0o755)
        plugins = os.path.join(folder, "plugins")
        os.mkdir(plugins)
        os.chmod(plugins, 0o755)
        for name in (PROBE_PLUGIN, PROBE_NET_PLUGIN):
            plugin = os.path.join(plugins, name)
            os.mkdir(plugin)
            os.chmod(plugin, 0o755)
            _write_readable(
                os.path.join(plugin, "plugin.toml"),
                _PROBE_MANIFEST.format(name=name),
            )
            _write_readable(
                os.path.join(plugin, "sandbox_probe.py"), _PROBE_SOURCE
            )
        # Readable by every uid, so only Landlock can deny the probe it.
        _write_readable(
            os.path.join(folder, _OUTSIDE_FILE), "not for plugins\n"
        )
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_readable(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(path, 0o644)


@contextmanager
def _abstract_listener() -> Iterator[str]:
    """Listen on an abstract unix socket and yield its name without NUL."""
    name = f"sandbox-verify-{os.getpid()}-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        try:
            listener.bind("\0" + name)
            listener.listen(1)
        except OSError:
            # Abstract sockets exist only on Linux, and Landlock scopes
            # with them, so the probe's connect then fails either way.
            pass
        yield name


def _expected_rlimits(limits: Resources) -> dict[str, tuple[int, int]]:
    """Return (soft limit, highest hard limit) per rlimit of ``limits``.

    Converted from the policy's units here, not by the launcher's own
    conversion, so that a wrong or dropped limit shows up. The CPU hard
    limit may be one second above the soft one, which sends SIGXCPU
    first.
    """
    memory = _mib(limits.memory_mb)
    cpu = limits.cpu_seconds or 0
    descriptors = limits.file_descriptors or 0
    processes = limits.processes or 0
    file_size = _mib(limits.file_size_mb)
    return {
        "RLIMIT_AS": (memory, memory),
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_NOFILE": (descriptors, descriptors),
        "RLIMIT_NPROC": (processes, processes),
        "RLIMIT_FSIZE": (file_size, file_size),
        "RLIMIT_MEMLOCK": (0, 0),
        "RLIMIT_CORE": (0, 0),
    }


def _mib(value: int | None) -> int:
    return (value or 0) << 20


# -- one function per protection ---------------------------------------------


def _not_verified(name: str, kernel_detail: str) -> Protection:
    return Protection(
        name,
        "available",
        f"{kernel_detail}; not verified because the probe worker failed",
    )


def _seccomp(seen: _Observation) -> Protection:
    if not seccomp.seccomp_available():
        return Protection(
            SECCOMP, "missing", "the kernel has no seccomp filter mode"
        )
    if seen.error is not None:
        return _not_verified(SECCOMP, "filter mode available")
    mode = seen.status.get("seccomp")
    inet = seen.outcome.get("open_inet_socket")
    if mode == 2 and inet == "EPERM":
        return Protection(
            SECCOMP,
            "enforced",
            "worker in filter mode (2); its AF_INET socket was denied (EPERM)",
        )
    return Protection(
        SECCOMP,
        "missing",
        f"worker reports seccomp mode {mode}; AF_INET socket: {inet}",
    )


def _no_new_privs(seen: _Observation) -> Protection:
    if _prctl(_PR_GET_NO_NEW_PRIVS) < 0:
        return Protection(
            NO_NEW_PRIVS, "missing", "the kernel has no no_new_privs"
        )
    if seen.error is not None:
        return _not_verified(NO_NEW_PRIVS, "prctl option available")
    value = seen.status.get("no_new_privs")
    if value == 1:
        return Protection(NO_NEW_PRIVS, "enforced", "worker reports 1")
    return Protection(NO_NEW_PRIVS, "missing", f"worker reports {value}")


def _landlock(abi: int, seen: _Observation) -> Protection:
    if abi < 1:
        return Protection(
            LANDLOCK,
            "missing",
            "the kernel has no Landlock (Linux 5.13 or later with "
            "landlock in the lsm= boot option)",
        )
    if seen.error is not None:
        return _not_verified(LANDLOCK, f"Landlock ABI {abi}")
    outcome = seen.outcome.get("read_outside_file")
    if outcome == "EACCES":
        return Protection(
            LANDLOCK,
            "enforced",
            f"Landlock ABI {abi}; worker denied a world-readable file "
            "outside its rules (EACCES)",
        )
    return Protection(
        LANDLOCK,
        "missing",
        f"Landlock ABI {abi}, but reading a file outside the worker's "
        f"rules gave {outcome}",
    )


def _landlock_gaps(abi: int) -> frozenset[str] | None:
    """Return the rights and scopes a worker's ruleset requests but lacks.

    Builds (and closes) the ruleset a worker without network gets, so
    the kernel itself confirms each handled right. None means Landlock
    is absent or rejected that ruleset.
    """
    if abi < 1:
        return None
    try:
        fd, report = landlock.build_ruleset(landlock.RulesetSpec())
    except landlock.LandlockError:
        return None
    os.close(fd)
    return frozenset(report.missing)


def _landlock_fs_rights(abi: int, gaps: frozenset[str] | None) -> Protection:
    every_right = landlock.FS_READ | landlock.FS_WRITE
    every_right |= landlock.ACCESS_FS_IOCTL_DEV
    names = set(landlock.access_names(every_right, "fs"))
    lacking = _lacking(gaps, names)
    if lacking is not None:
        return Protection(
            LANDLOCK_FS_RIGHTS,
            "missing",
            _needs_abi(_LANDLOCK_ALL_FS_SINCE_ABI, abi, lacking),
            checked_in_worker=False,
        )
    return Protection(
        LANDLOCK_FS_RIGHTS,
        "available",
        f"ABI {abi} handles all {len(names)} filesystem rights",
        checked_in_worker=False,
    )


def _landlock_tcp(abi: int, gaps: frozenset[str] | None) -> Protection:
    lacking = _lacking(gaps, {"BIND_TCP", "CONNECT_TCP"})
    if lacking is not None:
        return Protection(
            LANDLOCK_TCP,
            "missing",
            _needs_abi(_LANDLOCK_TCP_SINCE_ABI, abi, lacking),
            checked_in_worker=False,
        )
    return Protection(
        LANDLOCK_TCP,
        "available",
        f"ABI {abi} denies TCP bind and connect; not observable, because "
        "seccomp denies the AF_INET socket first",
        checked_in_worker=False,
    )


def _landlock_signal_scope(
    abi: int, gaps: frozenset[str] | None, seen: _Observation, as_root: bool
) -> Protection:
    name = LANDLOCK_SIGNAL_SCOPE
    lacking = _lacking(gaps, {"SCOPE_SIGNAL"})
    if lacking is not None:
        return Protection(
            name,
            "missing",
            _needs_abi(_LANDLOCK_SCOPES_SINCE_ABI, abi, lacking),
        )
    if as_root:
        # kill(2) checks the uids before asking Landlock, so a worker
        # with another uid is denied either way.
        return Protection(
            name,
            "available",
            f"ABI {abi}; not observable as root, because the uid drop "
            "denies signals to the host first",
            checked_in_worker=False,
        )
    if seen.error is not None:
        return _not_verified(name, f"Landlock ABI {abi}")
    return _denied_in_worker(name, seen.outcome.get("signal_host"), "signal")


def _landlock_unix_scope(
    abi: int, gaps: frozenset[str] | None, seen: _Observation
) -> Protection:
    name = LANDLOCK_UNIX_SCOPE
    lacking = _lacking(gaps, {"SCOPE_ABSTRACT_UNIX_SOCKET"})
    if lacking is not None:
        return Protection(
            name,
            "missing",
            _needs_abi(_LANDLOCK_SCOPES_SINCE_ABI, abi, lacking),
        )
    if seen.error is not None:
        return _not_verified(name, f"Landlock ABI {abi}")
    outcome = seen.outcome.get("connect_abstract_socket")
    return _denied_in_worker(name, outcome, "abstract unix connect")


def _lacking(
    gaps: frozenset[str] | None, wanted: set[str]
) -> list[str] | None:
    """Return the names of ``wanted`` this kernel lacks, or None if none."""
    if gaps is None:
        return sorted(wanted)
    lacking = sorted(wanted & gaps)
    return lacking or None


def _needs_abi(since: int, abi: int, lacking: list[str]) -> str:
    if abi < 1:
        return f"needs Landlock ABI {since}; the kernel has no Landlock"
    return (
        f"needs Landlock ABI {since}, the kernel has ABI {abi} (lacks "
        f"{', '.join(lacking)})"
    )


def _denied_in_worker(
    name: str, outcome: object, operation: str
) -> Protection:
    """Report a scope as enforced when the worker got EPERM for it."""
    if outcome == "EPERM":
        return Protection(
            name, "enforced", f"worker's {operation} to the host: EPERM"
        )
    return Protection(
        name, "missing", f"worker's {operation} to the host: {outcome}"
    )


def _uid_drop(seen: _Observation, as_root: bool) -> Protection:
    if not as_root:
        return Protection(
            UID_DROP,
            "missing",
            f"the host is not root, so workers keep uid {os.getuid()}",
            checked_in_worker=False,
        )
    if seen.error is not None:
        return _not_verified(UID_DROP, "root can switch uid")
    uids = seen.status.get("uid")
    gids = seen.status.get("gid")
    groups = seen.status.get("groups")
    if _all_nonzero(uids) and _all_nonzero(gids) and groups == []:
        assert isinstance(uids, list) and isinstance(gids, list)
        return Protection(
            UID_DROP,
            "enforced",
            f"worker runs as uid {uids[0]} ({_user_name(uids[0])}), "
            f"gid {gids[0]}, no supplementary groups",
        )
    return Protection(
        UID_DROP,
        "missing",
        f"worker reports uid {uids}, gid {gids}, groups {groups}",
    )


def _all_nonzero(ids: object) -> bool:
    return isinstance(ids, list) and bool(ids) and 0 not in ids


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no passwd entry"


def _capabilities(seen: _Observation, as_root: bool) -> Protection:
    if not as_root:
        return Protection(
            CAPABILITIES,
            "missing",
            "the host is not root, so the launcher cannot empty the "
            "bounding set",
            checked_in_worker=False,
        )
    if seen.error is not None:
        return _not_verified(CAPABILITIES, "root can drop capabilities")
    bounding = seen.status.get("capability_bounding_set")
    if bounding == []:
        return Protection(
            CAPABILITIES, "enforced", "worker's bounding set is empty"
        )
    return Protection(
        CAPABILITIES,
        "missing",
        f"worker's bounding set holds capabilities {bounding}",
    )


def _dumpable_off(seen: _Observation) -> Protection:
    if seen.error is not None:
        return _not_verified(DUMPABLE_OFF, "prctl available")
    value = seen.status.get("dumpable")
    if value == 0:
        return Protection(DUMPABLE_OFF, "enforced", "worker reports 0")
    return Protection(DUMPABLE_OFF, "missing", f"worker reports {value}")


def _setsid(seen: _Observation) -> Protection:
    if seen.error is not None:
        return _not_verified(SETSID, "setsid available")
    if seen.outcome.get("session_leader") is True:
        return Protection(
            SETSID,
            "enforced",
            "worker leads a new session, without a controlling terminal",
        )
    return Protection(
        SETSID, "missing", "worker shares a session with another process"
    )


def _rlimits(seen: _Observation) -> Protection:
    if seen.error is not None:
        return _not_verified(RLIMITS, "setrlimit available")
    reported = seen.outcome.get("rlimits")
    if not isinstance(reported, dict):
        return Protection(RLIMITS, "missing", "worker reported no rlimits")
    for name, (soft, highest_hard) in seen.expected_rlimits.items():
        if not _limit_matches(reported.get(name), soft, highest_hard):
            return Protection(
                RLIMITS,
                "missing",
                f"worker's {name} is {reported.get(name)}, expected "
                f"soft {soft} and hard at most {highest_hard}",
            )
    short = ", ".join(n.removeprefix("RLIMIT_") for n in seen.expected_rlimits)
    return Protection(RLIMITS, "enforced", f"worker's {short} as set")


def _limit_matches(reported: object, soft: int, highest_hard: int) -> bool:
    if not isinstance(reported, list) or len(reported) != 2:
        return False
    return bool(reported[0] == soft and soft <= reported[1] <= highest_hard)


def _pidfd() -> Protection:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return Protection(
            PIDFD,
            "missing",
            "os.pidfd_open is missing (Linux 5.3 or later)",
            checked_in_worker=False,
        )
    try:
        fd = pidfd_open(os.getpid())
    except OSError as error:
        return Protection(
            PIDFD,
            "missing",
            f"pidfd_open failed: {error.strerror}",
            checked_in_worker=False,
        )
    os.close(fd)
    return Protection(
        PIDFD,
        "available",
        "pidfd_open works; the host watches workers through pidfds",
        checked_in_worker=False,
    )


def _cgroups() -> Protection:
    versions = cgroup_versions()
    if not versions:
        return Protection(
            CGROUPS,
            "missing",
            "none mounted; not used yet",
            checked_in_worker=False,
        )
    return Protection(
        CGROUPS,
        "available",
        f"{' and '.join(versions)} detected, not used yet",
        checked_in_worker=False,
    )


def cgroup_versions(mounts: str = "/proc/self/mounts") -> list[str]:
    """Return "v1", "v2" or both for the cgroup filesystems in ``mounts``."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return []
    types = {line.split()[2] for line in lines if len(line.split()) > 2}
    versions = []
    if "cgroup" in types:
        versions.append("v1")
    if "cgroup2" in types:
        versions.append("v2")
    return versions


def _python_prctl(seen: _Observation) -> Protection:
    try:
        version = importlib.metadata.version("python-prctl")
    except importlib.metadata.PackageNotFoundError:
        return Protection(
            PYTHON_PRCTL,
            "missing",
            "not installed (optional extra 'prctl'); the worker calls "
            "prctl(2) through ctypes instead",
            checked_in_worker=False,
        )
    detail = f"version {version} installed"
    if seen.error is None:
        used = seen.status.get("prctl_module") is True
        detail += "; the worker " + ("uses it" if used else "uses ctypes")
    return Protection(
        PYTHON_PRCTL,
        "available",
        detail,
        checked_in_worker=False,
    )


def _prctl(option: int) -> int:
    """Return prctl(option, 0, 0, 0, 0), or -1 where it fails or is absent."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no prctl outside Linux
        return -1
    result: int = prctl(option, 0, 0, 0, 0)
    return result
