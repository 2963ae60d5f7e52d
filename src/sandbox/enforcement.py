"""Per-plugin enforcement reports: what a policy requests, what is enforced.

A report has one entry per layer of the sandbox: the uid and gid drop,
rlimits, no_new_privs, seccomp, Landlock, the network setting, the host's
capability grants and the environment allowlist. Each entry contains what
the policy requested, what is enforced and a status: "enforced",
"not_enforced" (the gap text names what is missing) or "not_requested".

Two variants exist. running_report() describes a started worker, from
what the host handed to the launcher (identity, rlimits, the Landlock
ruleset report, the seccomp program) and what the kernel reports about
the process afterwards (/proc/PID/status and prlimit(2)).
planned_report() describes a plugin before any worker runs, from its
policy and a verify.MachineReport, for ``sandbox verify --policy``.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import landlock, seccomp
from .errors import SandboxError
from .launcher import Identity
from .policy import Policy, Resources
from .runtime import resolve_identity
from .spawnplan import (
    WORKER_BASE_ENVIRONMENT,
    WorkerConfig,
    WorkerPlan,
    filter_spec,
    worker_rlimits,
)

if TYPE_CHECKING:
    from .verify import MachineReport

__all__ = [
    "LAYERS",
    "EnforcementReport",
    "LayerReport",
    "WorkerFacts",
    "planned_report",
    "read_rlimits",
    "running_report",
    "worker_facts",
]

Status = Literal["enforced", "not_enforced", "not_requested"]
Variant = Literal["running", "planned"]

IDENTITY = "uid_gid"
RLIMITS = "rlimits"
NO_NEW_PRIVS = "no_new_privs"
SECCOMP = "seccomp"
LANDLOCK = "landlock"
NETWORK = "network"
CAPABILITIES = "capabilities"
ENV = "env"
LAYERS = (
    IDENTITY,
    RLIMITS,
    NO_NEW_PRIVS,
    SECCOMP,
    LANDLOCK,
    NETWORK,
    CAPABILITIES,
    ENV,
)

_SECCOMP_MODE_FILTER = 2
_ALL_FS_RIGHTS = landlock.FS_READ | landlock.FS_WRITE
_ALL_FS_RIGHTS |= landlock.ACCESS_FS_IOCTL_DEV
_ALL_NET_RIGHTS = landlock.ACCESS_NET_BIND_TCP
_ALL_NET_RIGHTS |= landlock.ACCESS_NET_CONNECT_TCP
_ALL_SCOPES = landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
_RLIMIT_NAMES = {
    getattr(resource, name): name
    for name in sorted(dir(resource))
    # RLIMIT_OFILE is the BSD name of RLIMIT_NOFILE.
    if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"
}
# Row labels of /proc/PID/limits (fs/proc/base.c, lnames[]).
_PROC_LIMIT_ROWS = {
    "Max cpu time": resource.RLIMIT_CPU,
    "Max file size": resource.RLIMIT_FSIZE,
    "Max data size": resource.RLIMIT_DATA,
    "Max stack size": resource.RLIMIT_STACK,
    "Max core file size": resource.RLIMIT_CORE,
    "Max resident set": resource.RLIMIT_RSS,
    "Max processes": resource.RLIMIT_NPROC,
    "Max open files": resource.RLIMIT_NOFILE,
    "Max locked memory": resource.RLIMIT_MEMLOCK,
    "Max address space": resource.RLIMIT_AS,
    "Max msgqueue size": resource.RLIMIT_MSGQUEUE,
}


@dataclass(frozen=True)
class LayerReport:
    """One layer: what the policy requested and what is enforced.

    ``requested`` and ``enforced`` contain JSON-compatible values, and
    ``*_summary`` is one short line for each. ``gap`` names what is missing
    when ``status`` is "not_enforced" and is empty otherwise.
    """

    layer: str
    status: Status
    requested: Mapping[str, Any]
    enforced: Mapping[str, Any]
    requested_summary: str
    enforced_summary: str
    gap: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the layer as JSON-compatible types."""
        return {
            "status": self.status,
            "requested": dict(self.requested),
            "enforced": dict(self.enforced),
            "summary": {
                "requested": self.requested_summary,
                "enforced": self.enforced_summary,
            },
            "gap": self.gap,
        }


@dataclass(frozen=True)
class EnforcementReport:
    """Every layer of one plugin's sandbox, in the order of LAYERS.

    ``pid`` is the worker's pid in a "running" report and None in a
    "planned" one.
    """

    plugin: str
    variant: Variant
    pid: int | None
    layers: tuple[LayerReport, ...]

    def layer(self, name: str) -> LayerReport:
        """Return the layer called ``name``, or raise KeyError."""
        for layer in self.layers:
            if layer.layer == name:
                return layer
        raise KeyError(f"no layer named {name!r}")

    def gaps(self) -> list[LayerReport]:
        """Return the requested layers that are not enforced."""
        return [
            layer for layer in self.layers if layer.status == "not_enforced"
        ]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible types."""
        return {
            "plugin": self.plugin,
            "variant": self.variant,
            "pid": self.pid,
            "complete": not self.gaps(),
            "layers": {layer.layer: layer.to_dict() for layer in self.layers},
        }


@dataclass(frozen=True)
class WorkerFacts:
    """Settings the host requested of the kernel and broker for a worker."""

    plugin: str
    policy: Policy
    identity: Identity | None
    rlimits: tuple[tuple[int, int, int], ...]
    landlock: landlock.RulesetReport | None
    seccomp_bpf: bytes
    env_names: tuple[str, ...]
    granted: frozenset[str]
    network_namespace: bool = False


def worker_facts(
    config: WorkerConfig, plan: WorkerPlan, granted: frozenset[str]
) -> WorkerFacts:
    """Collect the facts of a worker from its config and spawn plan."""
    request = plan.request
    return WorkerFacts(
        plugin=config.manifest.name,
        policy=config.policy,
        identity=request.identity,
        rlimits=tuple(request.rlimits),
        landlock=plan.landlock_report,
        seccomp_bpf=request.seccomp_bpf,
        env_names=tuple(sorted(request.env)),
        granted=granted,
        network_namespace=request.new_network_namespace,
    )


def read_rlimits(pid: int) -> dict[int, tuple[int, int]]:
    """Return the kernel's (soft, hard) rlimits of process ``pid``.

    Read from /proc/PID/limits, which every user may read, where
    prlimit(2) would need the same uid or CAP_SYS_RESOURCE. Returns an
    empty mapping when the process is gone; RLIM_INFINITY stands for
    "unlimited".
    """
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii") as file:
            lines = file.read().splitlines()
    except OSError:
        return {}
    limits: dict[int, tuple[int, int]] = {}
    for line in lines[1:]:
        for label, which in _PROC_LIMIT_ROWS.items():
            if line.startswith(label + " "):
                values = line[len(label) :].split()
                if len(values) >= 2:
                    limits[which] = (_rlimit(values[0]), _rlimit(values[1]))
    return limits


def _rlimit(text: str) -> int:
    return resource.RLIM_INFINITY if text == "unlimited" else int(text)


def running_report(
    facts: WorkerFacts,
    pid: int,
    kernel_status: Mapping[str, str],
    kernel_rlimits: Mapping[int, tuple[int, int]],
) -> EnforcementReport:
    """Build the report of a started worker.

    ``kernel_status`` contains the fields of /proc/PID/status that
    process.read_kernel_status() reads and ``kernel_rlimits`` the output
    of read_rlimits(), both read after the worker started. The kernel
    offers no read-back of a process's Landlock domain, so the Landlock
    layer reports the ruleset that the launcher enforced. The launch
    fails when landlock_restrict_self fails.
    """
    policy = facts.policy
    socket_rules = _socket_rules(facts.seccomp_bpf, policy)
    seccomp_mode = _int_field(kernel_status.get("Seccomp"))
    in_force = seccomp_mode == _SECCOMP_MODE_FILTER
    layers = (
        _running_identity(facts.identity, kernel_status),
        _running_rlimits(facts.rlimits, kernel_rlimits),
        _running_no_new_privs(kernel_status),
        _seccomp_layer(
            policy,
            in_force=in_force,
            mode=seccomp_mode,
            # struct sock_filter is 8 bytes.
            instructions=len(facts.seccomp_bpf) // 8,
            socket_rules=socket_rules,
        ),
        _landlock_layer(policy, facts.landlock, in_force=True),
        _network_layer(
            policy,
            socket_rules if in_force else "none",
            facts.landlock,
            _own_network_namespace(pid) if facts.network_namespace else None,
        ),
        _capability_layer(policy, facts.granted),
        _env_layer(policy, facts.env_names),
    )
    return EnforcementReport(facts.plugin, "running", pid, layers)


def planned_report(
    plugin: str,
    policy: Policy,
    resources: Resources,
    machine: MachineReport,
    declared_capabilities: Iterable[str] | None = None,
    *,
    plugin_uid: int | None = None,
    uid_range: range | None = None,
) -> EnforcementReport:
    """Build the report of ``plugin`` before any worker runs.

    What is enforced comes from ``machine`` (verify.probe_machine()), and
    the Landlock layer from a ruleset built, and closed again, for the
    machine's ABI. ``declared_capabilities`` are those the plugin's
    manifest lists; None grants every capability of the policy.

    On a root machine, a policy without ``user`` runs as ``plugin_uid``,
    the plugin's own uid (sandbox.uids.plan_uids). Without one, the
    report shows a uid of its own from ``uid_range`` (for a policy that
    stands for many plugins), and without a range, ``nobody``.
    """
    from . import verify

    program = _planned_program(policy)
    seccomp_on = machine.protection(verify.SECCOMP).in_force
    socket_rules = _socket_rules(program.bpf if program else b"", policy)
    ruleset, ruleset_error = _planned_ruleset(policy, machine.landlock_abi)
    declared = set(
        policy.capabilities
        if declared_capabilities is None
        else declared_capabilities
    )
    layers = (
        _planned_identity(policy, machine, plugin_uid, uid_range),
        _planned_rlimits(resources, machine),
        _planned_no_new_privs(machine),
        _seccomp_layer(
            policy,
            in_force=seccomp_on and program is not None,
            mode=None,
            instructions=program.instruction_count if program else 0,
            socket_rules=socket_rules,
        ),
        _landlock_layer(
            policy,
            ruleset,
            in_force=machine.protection(verify.LANDLOCK).in_force,
            error=ruleset_error,
        ),
        _network_layer(
            policy, socket_rules if seccomp_on else "none", ruleset
        ),
        _capability_layer(policy, frozenset(policy.capabilities & declared)),
        _env_layer(policy, tuple(sorted(policy.env))),
    )
    return EnforcementReport(plugin, "planned", None, layers)


# -- layers of a running worker ----------------------------------------------


def _running_identity(
    identity: Identity | None, kernel: Mapping[str, str]
) -> LayerReport:
    uids = _int_list(kernel.get("Uid"))
    gids = _int_list(kernel.get("Gid"))
    groups = _int_list(kernel.get("Groups"))
    cap_effective = _hex_field(kernel.get("CapEff"))
    cap_bounding = _hex_field(kernel.get("CapBnd"))
    enforced = {
        "uid": uids,
        "gid": gids,
        "groups": groups,
        "cap_effective": cap_effective,
        "cap_bounding": cap_bounding,
    }
    summary = (
        f"uid {_ids(uids)}, gid {_ids(gids)}, groups {_ids(groups)}, "
        f"CapEff {cap_effective:#x}, CapBnd {cap_bounding:#x}"
        if cap_effective is not None and cap_bounding is not None
        else "not readable"
    )
    if identity is None:
        return _not_requested(
            IDENTITY,
            {"uid": None, "reason": "the host is not root"},
            enforced,
            "the host's own uid (not root, so no switch)",
            summary,
        )
    requested = {
        "uid": identity.uid,
        "gid": identity.gid,
        "groups": sorted(identity.groups),
        "capabilities": [],
    }
    lacking = []
    if not uids or any(uid != identity.uid for uid in uids):
        lacking.append(f"uid is {_ids(uids)}, not {identity.uid}")
    if not gids or any(gid != identity.gid for gid in gids):
        lacking.append(f"gid is {_ids(gids)}, not {identity.gid}")
    if groups != sorted(identity.groups):
        lacking.append(f"groups are {_ids(groups)}")
    if cap_effective != 0 or cap_bounding != 0:
        lacking.append("capability sets are not empty")
    return _layer(
        IDENTITY,
        requested,
        enforced,
        f"uid {identity.uid}, gid {identity.gid}, no groups, no capabilities",
        summary,
        lacking,
    )


def _running_rlimits(
    requested_limits: Sequence[tuple[int, int, int]],
    kernel: Mapping[int, tuple[int, int]],
) -> LayerReport:
    requested: dict[str, Any] = {}
    enforced: dict[str, Any] = {}
    lacking = []
    for which, soft, hard in requested_limits:
        name = _RLIMIT_NAMES.get(which, f"rlimit {which}")
        requested[name] = [soft, hard]
        current = kernel.get(which)
        enforced[name] = list(current) if current is not None else None
        # A worker may lower its limits or raise a soft limit up to its
        # hard limit, so only the hard limit must not exceed the request.
        if current is None:
            lacking.append(f"{name} not readable")
        elif _exceeds(current[1], hard):
            lacking.append(
                f"{name} hard limit is {_limit(current[1])}, requested "
                f"{_limit(hard)}"
            )
    count = len(requested_limits)
    return _layer(
        RLIMITS,
        requested,
        enforced,
        f"{count} limits",
        f"{count - len(lacking)} of {count} hard limits at or below the "
        "request",
        lacking,
    )


def _running_no_new_privs(kernel: Mapping[str, str]) -> LayerReport:
    value = _int_field(kernel.get("NoNewPrivs"))
    lacking = [] if value == 1 else [f"the kernel reports {value}"]
    return _layer(
        NO_NEW_PRIVS,
        {"no_new_privs": 1},
        {"no_new_privs": value},
        "set",
        f"NoNewPrivs {value}",
        lacking,
    )


# -- layers of a planned worker -----------------------------------------------


def _planned_identity(
    policy: Policy,
    machine: MachineReport,
    plugin_uid: int | None,
    uid_range: range | None,
) -> LayerReport:
    from . import verify

    if not machine.as_root:
        return _not_requested(
            IDENTITY,
            {"uid": None, "reason": "the host is not root"},
            {},
            "the host's own uid (not root, so no switch)",
            "no switch",
        )
    try:
        identity = resolve_identity(
            policy.user, as_root=True, plugin_uid=plugin_uid
        )
    except SandboxError as error:
        return _layer(
            IDENTITY, {"user": policy.user}, {}, "?", "none", [str(error)]
        )
    assert identity is not None
    requested: dict[str, Any] = {
        "uid": identity.uid,
        "gid": identity.gid,
        "capabilities": [],
    }
    summary = f"uid {identity.uid}, gid {identity.gid}, no capabilities"
    if policy.user is None and plugin_uid is None and uid_range is not None:
        first, last = uid_range.start, uid_range[-1]
        requested = {
            "uid": None,
            "uid_range": [first, last],
            "capabilities": [],
        }
        summary = (
            f"each plugin its own uid in {first:#x}-{last:#x}, no capabilities"
        )
    uid_drop = machine.protection(verify.UID_DROP)
    capabilities = machine.protection(verify.CAPABILITIES)
    lacking = [
        f"{p.name}: {p.detail}"
        for p in (uid_drop, capabilities)
        if not p.in_force
    ]
    return _layer(
        IDENTITY,
        requested,
        {"uid_drop": uid_drop.status, "capabilities": capabilities.status},
        summary,
        f"uid drop {uid_drop.status}, bounding set {capabilities.status}",
        lacking,
    )


def _planned_rlimits(
    resources: Resources, machine: MachineReport
) -> LayerReport:
    from . import verify

    limits = worker_rlimits(resources)
    requested = {
        _RLIMIT_NAMES.get(which, f"rlimit {which}"): [soft, hard]
        for which, soft, hard in limits
    }
    probe = machine.protection(verify.RLIMITS)
    lacking = [] if probe.in_force else [probe.detail]
    return _layer(
        RLIMITS,
        requested,
        {"probe": probe.status},
        f"{len(limits)} limits",
        f"probe worker: {probe.status}",
        lacking,
    )


def _planned_no_new_privs(machine: MachineReport) -> LayerReport:
    from . import verify

    probe = machine.protection(verify.NO_NEW_PRIVS)
    lacking = [] if probe.in_force else [probe.detail]
    return _layer(
        NO_NEW_PRIVS,
        {"no_new_privs": 1},
        {"probe": probe.status},
        "set",
        f"probe worker: {probe.status}",
        lacking,
    )


def _planned_program(policy: Policy) -> seccomp.SeccompProgram | None:
    try:
        return seccomp.build_filter(filter_spec(policy))
    except SandboxError:
        return None


def _planned_ruleset(
    policy: Policy, abi: int
) -> tuple[landlock.RulesetReport | None, str]:
    """Build and close the ruleset a worker would get under ABI ``abi``.

    Creating it makes the kernel itself accept every handled right.
    """
    if abi < 1:
        return None, "the kernel has no Landlock"
    network = policy.network
    spec = landlock.RulesetSpec(
        restrict_tcp=network is not True,
        connect_tcp_ports=network if isinstance(network, tuple) else (),
    )
    try:
        fd, report = landlock.build_ruleset(spec, abi=abi)
    except landlock.LandlockError as error:
        return None, str(error)
    os.close(fd)
    return report, ""


# -- layers of both variants --------------------------------------------------


def _seccomp_layer(
    policy: Policy,
    *,
    in_force: bool,
    mode: int | None,
    instructions: int,
    socket_rules: str,
) -> LayerReport:
    sockets = _requested_socket_rules(policy)
    enforced_sockets = socket_rules
    requested = {"mode": _SECCOMP_MODE_FILTER, "sockets": sockets}
    enforced = {
        "mode": mode,
        "instructions": instructions,
        "sockets": enforced_sockets,
    }
    lacking = []
    if not in_force:
        lacking.append(
            "no seccomp filter in force"
            if mode is None
            else f"the kernel reports seccomp mode {mode}"
        )
    if enforced_sockets != sockets:
        lacking.append(
            f"the program's socket rules are {enforced_sockets!r}, not "
            f"{sockets!r}"
        )
    shown_mode = "filter" if mode is None else f"mode {mode}"
    sockets_text = _SOCKET_SUMMARY[sockets]
    enforced_text = _SOCKET_SUMMARY[enforced_sockets]
    return _layer(
        SECCOMP,
        requested,
        enforced,
        f"filter, {sockets_text}",
        f"{shown_mode}, {instructions} instructions, {enforced_text}",
        lacking,
    )


def _landlock_layer(
    policy: Policy,
    ruleset: landlock.RulesetReport | None,
    *,
    in_force: bool,
    error: str = "",
) -> LayerReport:
    net_rights = 0 if policy.network is True else _ALL_NET_RIGHTS
    requested: dict[str, list[str]] = {
        "fs": landlock.access_names(_ALL_FS_RIGHTS, "fs"),
        "net": landlock.access_names(net_rights, "net"),
        "scopes": landlock.access_names(_ALL_SCOPES, "scope"),
    }
    requested_summary = (
        f"{len(requested['fs'])} fs rights, {len(requested['net'])} TCP "
        f"rights, {len(requested['scopes'])} scopes"
    )
    if ruleset is None:
        return _layer(
            LANDLOCK,
            requested,
            {"abi": 0},
            requested_summary,
            "none",
            [error or "no Landlock ruleset"],
        )
    fs = landlock.access_names(ruleset.handled_fs, "fs")
    net = landlock.access_names(ruleset.handled_net, "net")
    scopes = landlock.access_names(ruleset.scoped, "scope")
    enforced = {
        "abi": ruleset.abi,
        "fs": fs,
        "net": net,
        "scopes": scopes,
        "missing": list(ruleset.missing),
    }
    lacking = []
    if ruleset.missing:
        lacking.append(f"ABI {ruleset.abi} lacks {', '.join(ruleset.missing)}")
    if not in_force:
        lacking.append("the probe worker did not show Landlock in force")
    return _layer(
        LANDLOCK,
        requested,
        enforced,
        requested_summary,
        f"ABI {ruleset.abi}: {len(fs)} fs, {len(net)} TCP, "
        f"{len(scopes)} scopes",
        lacking,
    )


def _own_network_namespace(pid: int) -> bool:
    """Return whether ``pid`` is in another network namespace than ours."""
    try:
        theirs = os.readlink(f"/proc/{pid}/ns/net")
        ours = os.readlink("/proc/self/ns/net")
    except OSError:
        return False
    return theirs != ours


def _network_layer(
    policy: Policy,
    socket_rules: str,
    ruleset: landlock.RulesetReport | None,
    own_namespace: bool | None = None,
) -> LayerReport:
    """Name the mechanisms that enforce the policy's ``network`` setting.

    Without network, seccomp alone denies every socket and Landlock's TCP
    rules are a second line. With a port allowlist, seccomp admits only
    TCP sockets and only Landlock limits their ports, so both must be
    in force. ``own_namespace`` is None when no network namespace was
    requested (a host that is not root, or network allowed), else
    whether the worker runs in one of its own.
    """
    network = policy.network
    if network is True:
        return _not_requested(
            NETWORK,
            {"network": True},
            {"mechanisms": []},
            "network allowed",
            "no restriction",
        )
    ports = network if isinstance(network, tuple) else None
    tcp = ruleset is not None and ruleset.handled_net == _ALL_NET_RIGHTS
    mechanisms = []
    lacking = []
    if socket_rules == _requested_socket_rules(policy):
        mechanisms.append(f"seccomp: {_SOCKET_RULE_TEXT[socket_rules]}")
    else:
        lacking.append("no seccomp socket rules in force")
    if tcp and ports is not None:
        mechanisms.append(
            f"landlock: TCP bind denied, connect to ports {_ports(ports)}"
        )
    elif tcp:
        mechanisms.append("landlock: TCP bind and connect denied")
    elif ports is not None:
        lacking.append("Landlock cannot limit TCP ports (needs ABI 4)")
    if own_namespace:
        mechanisms.append("netns: an empty network namespace")
    elif own_namespace is False:
        lacking.append("the worker shares the host's network namespace")
    return _layer(
        NETWORK,
        {"network": list(ports) if ports is not None else False},
        {"mechanisms": mechanisms},
        f"TCP ports {_ports(ports)}" if ports is not None else "no network",
        " + ".join(m.split(":", 1)[0] for m in mechanisms) or "nothing",
        lacking,
    )


def _capability_layer(policy: Policy, granted: frozenset[str]) -> LayerReport:
    requested = sorted(policy.capabilities)
    return _layer(
        CAPABILITIES,
        {"capabilities": requested},
        {"granted": sorted(granted), "mechanism": "host broker"},
        ", ".join(requested) or "none",
        f"broker grants {', '.join(sorted(granted)) or 'none'}",
        [],
    )


def _env_layer(policy: Policy, env_names: Sequence[str]) -> LayerReport:
    passed = [n for n in env_names if n not in WORKER_BASE_ENVIRONMENT]
    extra = sorted(set(passed) - set(policy.env))
    lacking = [f"variables outside the allowlist: {', '.join(extra)}"]
    return _layer(
        ENV,
        {"names": sorted(policy.env)},
        {"names": list(env_names)},
        ", ".join(sorted(policy.env)) or "none",
        f"passes {', '.join(passed) or 'none'}",
        lacking if extra else [],
    )


# -- helpers ----------------------------------------------------------------


def _layer(
    name: str,
    requested: Mapping[str, Any],
    enforced: Mapping[str, Any],
    requested_summary: str,
    enforced_summary: str,
    lacking: Sequence[str],
) -> LayerReport:
    return LayerReport(
        name,
        "not_enforced" if lacking else "enforced",
        requested,
        enforced,
        requested_summary,
        enforced_summary,
        "; ".join(lacking),
    )


def _not_requested(
    name: str,
    requested: Mapping[str, Any],
    enforced: Mapping[str, Any],
    requested_summary: str,
    enforced_summary: str,
) -> LayerReport:
    return LayerReport(
        name,
        "not_requested",
        requested,
        enforced,
        requested_summary,
        enforced_summary,
    )


_SOCKET_RULE_TEXT = {
    "deny_all": "socket() denied",
    "tcp_only": "socket() limited to TCP, listen() denied",
    "none": "no socket rules",
}


_SOCKET_SUMMARY = {
    "deny_all": "no sockets",
    "tcp_only": "TCP sockets only",
    "none": "sockets unfiltered",
}


def _requested_socket_rules(policy: Policy) -> str:
    if policy.network is True:
        return "none"
    return "tcp_only" if isinstance(policy.network, tuple) else "deny_all"


def _socket_rules(bpf: bytes, policy: Policy) -> str:
    """Return the socket rules of program ``bpf`` for the policy.

    ``bpf`` is compared with the program built for the policy, which
    build_filter() caches, so the result comes from the bytes handed to
    the launcher. Any other program counts as having no socket rules.
    """
    expected_rules = _requested_socket_rules(policy)
    if expected_rules == "none":
        return "none"
    try:
        expected = seccomp.build_filter(filter_spec(policy))
    except SandboxError:
        return "none"
    return expected_rules if bpf == expected.bpf else "none"


def _ports(ports: Sequence[int]) -> str:
    return ", ".join(str(port) for port in ports)


def _int_field(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _hex_field(value: str | None) -> int | None:
    try:
        return int(value, 16) if value is not None else None
    except ValueError:
        return None


def _int_list(value: str | None) -> list[int]:
    if value is None:
        return []
    return [int(part) for part in value.split() if part.isdigit()]


def _ids(values: Sequence[int]) -> str:
    unique = sorted(set(values))
    return "/".join(str(v) for v in unique) if unique else "none"


def _exceeds(current: int, requested: int) -> bool:
    infinity = resource.RLIM_INFINITY
    if requested == infinity:
        return False
    return current == infinity or current > requested


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)
