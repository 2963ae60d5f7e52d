"""The ``sandbox`` command: verify, call, run, observe, demo and bench.

Each command is a thin function over the library. The probing behind
``verify`` lives in sandbox.verify and the steps of ``demo`` in
sandbox.demo. Output lines fit in 79 columns, and
text that came from a plugin is escaped before it reaches the terminal.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import platform
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from . import __version__, enforcement, verify
from .errors import LaunchError, PluginError, PolicyError, SandboxError
from .host import PluginHost
from .policy import DEFAULT_RESOURCES, Policy, PolicySet
from .uids import DEFAULT_PLUGIN_UIDS, plan_uids, registry_location

WIDTH = 79
DEFAULT_PLUGIN_DIR = os.path.join("examples", "plugins")
DEFAULT_POLICY = os.path.join("examples", "policies.toml")
# Key of the needs of plugins without a table of their own.
DEFAULTS = "[defaults]"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """An invalid command-line argument, which makes the exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default sys.argv[1:]).

    Returns the exit status: 0 on success, 1 when the command failed and
    2 for invalid arguments.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse exits for --help, --version and its own usage errors.
        return _exit_status(exit_request.code)
    command: Command = args.command
    try:
        return command(args)
    except UsageError as error:
        _print_error(str(error))
        return EXIT_USAGE
    except SandboxError as error:
        _print_error(str(error))
        if isinstance(error, PluginError) and error.traceback:
            traceback = _escape(
                error.traceback, limit=8000, keep_newlines=True
            )
            print(traceback, file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader of stdout went away (`sandbox demo | head`). Point
        # stdout at /dev/null so that the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as error:
        _print_error(str(error))
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every command and option."""
    parser = argparse.ArgumentParser(
        prog="sandbox",
        description="Run untrusted Python plugins in locked-down workers.",
    )
    parser.add_argument(
        "--version", action="version", version=f"sandbox {__version__}"
    )
    commands = parser.add_subparsers(
        dest="command_name", required=True, metavar="COMMAND"
    )
    _add_verify_parser(commands)
    _add_call_parser(commands)
    _add_run_parser(commands)
    _add_demo_parser(commands)
    _add_bench_parser(commands)
    _add_observe_parser(commands)
    return parser


def _add_verify_parser(commands: _Subparsers) -> None:
    verify_parser = commands.add_parser(
        "verify",
        help="check which protections this machine enforces",
        description="Start one probe worker and report each protection as "
        "enforced (the worker showed it), available (the kernel offers "
        "it, no worker showed it) or missing. Exits with 1 when a "
        "protection that the policy needs is not in force.",
    )
    verify_parser.add_argument(
        "--policy",
        metavar="FILE",
        help="also report what each plugin of this policy file needs",
    )
    verify_parser.add_argument(
        "--json", action="store_true", help="print one JSON document"
    )
    verify_parser.add_argument(
        "--python",
        metavar="PATH",
        help="interpreter that workers run (default: this one)",
    )
    verify_parser.set_defaults(command=verify_command)


def _add_call_parser(commands: _Subparsers) -> None:
    call_parser = commands.add_parser(
        "call",
        help="call one plugin method and print the result as JSON",
        description="Start the plugin's worker, call METHOD with the JSON "
        "object as keyword arguments and print the result as JSON.",
    )
    call_parser.add_argument("plugin", metavar="PLUGIN")
    call_parser.add_argument("method", metavar="METHOD")
    call_parser.add_argument(
        "params",
        metavar="JSON",
        nargs="?",
        default="{}",
        help="keyword arguments as a JSON object (default: {})",
    )
    _add_plugin_options(call_parser)
    call_parser.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_seconds,
        help="wall-clock limit of the call in seconds (default: the "
        "policy's timeout)",
    )
    call_parser.set_defaults(command=call_command)


def _add_demo_parser(commands: _Subparsers) -> None:
    demo_parser = commands.add_parser(
        "demo",
        help="run the bundled example plugins and explain what happens",
        description="Run the example plugins, including one that attacks "
        "its own sandbox. Exits with 1 when an attack succeeds, when an "
        "attack is stopped by another mechanism than the one it names, or "
        "when a plugin call fails.",
    )
    _add_plugin_options(demo_parser)
    demo_parser.set_defaults(command=demo_command)


def _add_bench_parser(commands: _Subparsers) -> None:
    bench_parser = commands.add_parser(
        "bench",
        help="run the benchmark suite of a source checkout",
        description="Run benchmarks/suite.py of the source checkout that "
        "this package comes from, or of the current folder: call latency, "
        "throughput, scaling and idle CPU against IPC baselines and C "
        "floors. More options: python benchmarks/suite.py --help.",
    )
    bench_parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny counts that only check that every part runs",
    )
    bench_parser.add_argument(
        "--placement",
        choices=("any", "same", "split"),
        help="CPU placement of the latency rows (default any: unpinned)",
    )
    bench_parser.add_argument(
        "--json", metavar="PATH", help="where to write the JSON results"
    )
    bench_parser.add_argument(
        "--png", metavar="PATH", help="where to write the PNG plot"
    )
    bench_parser.set_defaults(command=bench_command)


def _add_plugin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugins",
        metavar="DIR",
        action="append",
        help=f"plugin folder, repeatable (default: {DEFAULT_PLUGIN_DIR} "
        "if it exists)",
    )
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help=f"policy file (default: {DEFAULT_POLICY} if it exists, "
        "else every plugin gets the default-deny policy)",
    )


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds, got {text!r}"
        ) from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected seconds greater than 0, got {text}"
        )
    return seconds


# -- sandbox verify ----------------------------------------------------------


def verify_command(args: argparse.Namespace) -> int:
    """Probe this machine and print what it enforces."""
    policy_set = Policy.load(args.policy) if args.policy else None
    report = verify.probe_machine(args.python)
    defaults = (policy_set or PolicySet.empty()).defaults
    needs = {
        DEFAULTS: verify.needed_protections(defaults, as_root=report.as_root),
    }
    if policy_set is not None:
        needs |= verify.requirements_for(policy_set, as_root=report.as_root)
    missing = verify.missing_for(report, needs)
    plans = _planned_reports(report, policy_set, needs)
    if args.json:
        document = _verify_document(report, args.policy, needs, missing)
        _add_enforcement(document, plans)
        print(json.dumps(document, indent=2))
    else:
        _print_verify(report, args.policy, needs, missing, plans)
    gaps = any(plan.gaps() for plan in plans.values())
    return EXIT_FAILED if gaps or any(missing.values()) else EXIT_OK


def _planned_reports(
    report: verify.MachineReport,
    policy_set: PolicySet | None,
    needs: Mapping[str, list[str]],
) -> dict[str, enforcement.EnforcementReport]:
    """Return the planned enforcement report of each entry of ``needs``.

    Empty without a policy file. [defaults] stands for the plugins
    without a table. Manifests are not read, so every capability of a
    policy counts as declared. On a root machine, each plugin of the file
    gets the uid a PluginHost with the default plugin_uids would give it,
    which records each new plugin name in the uid registry as starting
    that host would.
    """
    if policy_set is None:
        return {}
    names = [name for name in needs if name != DEFAULTS]
    uid_plan = plan_uids(
        names,
        DEFAULT_PLUGIN_UIDS,
        as_root=report.as_root,
        registry=registry_location(None),
    )
    plans = {}
    for name in needs:
        policy = (
            policy_set.defaults
            if name == DEFAULTS
            else policy_set.for_plugin(name)
        )
        resources = policy.resources.merged_over(DEFAULT_RESOURCES)
        plans[name] = enforcement.planned_report(
            name,
            policy,
            resources,
            report,
            plugin_uid=uid_plan.plugin_uids.get(name),
            uid_range=DEFAULT_PLUGIN_UIDS,
        )
    return plans


def _add_enforcement(
    document: dict[str, Any],
    plans: Mapping[str, enforcement.EnforcementReport],
) -> None:
    for name, plan in plans.items():
        entry = document["defaults" if name == DEFAULTS else "plugins"]
        if name != DEFAULTS:
            entry = entry[name]
        entry["enforcement"] = plan.to_dict()
        document["ok"] = document["ok"] and not plan.gaps()


def _verify_document(
    report: verify.MachineReport,
    policy_path: str | None,
    needs: Mapping[str, list[str]],
    missing: Mapping[str, list[str]],
) -> dict[str, Any]:
    document = {"sandbox_version": __version__, **report.to_dict()}
    document["policy"] = policy_path
    entries = {
        name: {"needs": needs[name], "missing": missing[name]}
        for name in needs
    }
    # Plugins without a table of their own get [defaults].
    document["defaults"] = entries.pop(DEFAULTS)
    document["plugins"] = entries
    document["ok"] = not any(missing.values())
    return document


def _print_verify(
    report: verify.MachineReport,
    policy_path: str | None,
    needs: Mapping[str, list[str]],
    missing: Mapping[str, list[str]],
    plans: Mapping[str, enforcement.EnforcementReport],
) -> None:
    running_as = "root" if report.as_root else f"uid {os.getuid()}"
    print(f"sandbox {__version__}: what this machine enforces on workers")
    _print_wrapped(
        f"host: {platform.system()} {platform.release()}, running as "
        f"{running_as}; workers run {report.interpreter}"
    )
    print()
    rows = [(p.name, p.status, p.detail) for p in report.protections]
    _print_table(("protection", "status", "detail"), rows)
    print()
    _print_wrapped(
        "enforced: a probe worker showed it. available: the kernel offers "
        "it, but no worker showed it. missing: not given here."
    )
    if report.probe_error is not None:
        print()
        _print_wrapped(f"The probe worker failed: {report.probe_error}")
    if policy_path is not None:
        for plugin, plugin_needs in needs.items():
            print()
            _print_needs(report, plugin, plugin_needs, policy_path)
            if plugin in plans:
                _print_enforcement(plans[plugin])
    print()
    _print_wrapped(_verify_summary(missing, policy_path))
    if report.probe_error is not None:
        _print_wrapped(
            "The probe worker failed, so no worker could show a "
            "protection; its error is above."
        )


def _print_needs(
    report: verify.MachineReport,
    plugin: str,
    plugin_needs: Iterable[str],
    policy_path: str,
) -> None:
    if plugin == DEFAULTS:
        _print_wrapped(
            f"plugins without a table ([defaults] of {policy_path}) need:"
        )
    else:
        print(f"plugin {plugin} needs:")
    groups: dict[str, list[str]] = {"enforced": [], "kernel": [], "no": []}
    for name in plugin_needs:
        protection = report.protection(name)
        if protection.status == "enforced":
            groups["enforced"].append(name)
        elif protection.in_force:
            groups["kernel"].append(name)
        else:
            groups["no"].append(name)
    _print_field("enforced", ", ".join(groups["enforced"]) or "none", 11)
    if groups["kernel"]:
        kernel = ", ".join(groups["kernel"])
        _print_field(
            "available",
            f"{kernel} (not observable; kernel support counts)",
            11,
        )
    _print_field("MISSING", ", ".join(groups["no"]) or "none", 11)


def _print_enforcement(plan: enforcement.EnforcementReport) -> None:
    """Print one row per layer: status, then requested -> enforced."""
    rows = []
    for layer in plan.layers:
        detail = f"{layer.requested_summary} -> {layer.enforced_summary}"
        if layer.gap:
            detail += f". GAP: {layer.gap}"
        rows.append(("  " + layer.layer, layer.status, detail))
    _print_table(("  layer", "status", "requested -> enforced"), rows)


def _verify_summary(
    missing: Mapping[str, list[str]], policy_path: str | None
) -> str:
    lacking = {name: names for name, names in missing.items() if names}
    if policy_path is None:
        if not lacking:
            return (
                "Every protection that a default-deny policy needs is in "
                "force."
            )
        return "MISSING for a default-deny policy: " + ", ".join(
            lacking[DEFAULTS]
        )
    if not lacking:
        return (
            f"Every protection that the plugins of {policy_path} need is "
            "in force."
        )
    return (
        "MISSING: needed protections are not in force for "
        f"{', '.join(lacking)}, as listed above."
    )


# -- sandbox call ------------------------------------------------------------


def call_command(args: argparse.Namespace) -> int:
    """Call one plugin method and print its result as JSON."""
    params = parse_params(args.params)
    plugin_dirs = _plugin_dirs(args.plugins)
    policies = _load_policies(args.policy)
    with PluginHost(plugin_dirs, policies, max_workers=1) as host:
        result = host.execute_plugin(
            args.plugin, args.method, params, timeout=args.timeout
        )
    # ASCII escapes keep control characters from the plugin off the
    # terminal, and the output still parses to the same JSON value.
    print(json.dumps(result, indent=2, ensure_ascii=True, default=_as_json))
    return EXIT_OK


def _as_json(value: object) -> object:
    """Show a binary value from a plugin, which JSON cannot hold, as base64."""
    if isinstance(value, bytes):
        return {"$bytes_base64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")


def parse_params(text: str) -> dict[str, Any]:
    """Parse the JSON argument of ``call``, which must be an object.

    Raises UsageError for invalid JSON and for any other JSON value.
    """
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(
            f"invalid JSON argument ({error}); pass an object such as "
            '\'{"message": "hi"}\''
        ) from None
    if not isinstance(params, dict):
        raise UsageError(
            "the JSON argument must be an object of keyword arguments, "
            f"got a JSON {_json_type(params)}"
        )
    return params


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _plugin_dirs(option: list[str] | None) -> list[str]:
    if option:
        return option
    if os.path.isdir(DEFAULT_PLUGIN_DIR):
        return [DEFAULT_PLUGIN_DIR]
    raise UsageError(
        f"no --plugins given and ./{DEFAULT_PLUGIN_DIR} does not exist; "
        "pass --plugins DIR"
    )


def _load_policies(path: str | None) -> PolicySet:
    if path:
        return Policy.load(path)
    if os.path.isfile(DEFAULT_POLICY):
        return Policy.load(DEFAULT_POLICY)
    return PolicySet.empty()


# -- sandbox run -------------------------------------------------------------


def _add_run_parser(commands: _Subparsers) -> None:
    run_parser = commands.add_parser(
        "run",
        usage="%(prog)s [-h] [--policy FILE] [--plugin NAME] [--timeout S] "
        "-- CMD [ARGS...]",
        help="run any command under a policy",
        description="Run CMD with the restrictions of a plugin's worker: "
        "rlimits, a uid of its own as root, Landlock, seccomp and no "
        "network unless the policy allows it. The command reads only "
        "the system folders and the policy's filesystem.read, and writes "
        "to a scratch folder (its working folder, removed afterwards) "
        "and filesystem.write. Exits with the command's status, 128 + N "
        "when signal N killed it, 124 on timeout, 126 or 127 when the "
        "command cannot be run, 1 when the policy cannot be enforced "
        "here and 2 for an invalid policy.",
    )
    run_parser.add_argument(
        "--policy",
        metavar="FILE",
        help="policy file (default: the built-in default-deny policy)",
    )
    run_parser.add_argument(
        "--plugin",
        metavar="NAME",
        help="apply the [plugins.NAME] table and, as root, run as that "
        "plugin's uid (default: [defaults] and a uid kept for sandbox run)",
    )
    run_parser.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_seconds,
        help="wall-clock limit in seconds (default: the policy's timeout)",
    )
    run_parser.add_argument(
        "command_argv",
        metavar="-- CMD [ARGS...]",
        nargs=argparse.REMAINDER,
        help="the command and its arguments",
    )
    run_parser.set_defaults(command=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run one command under a policy; return its exit status."""
    from .run import run_command as run_under_policy
    from .run import select_policy

    argv = list(args.command_argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given; pass it after --")
    try:
        policy, resources = select_policy(args.policy, args.plugin)
        timeout: float = args.timeout or resources.timeout or 0
        # Output this process still buffers must come before the command's.
        sys.stdout.flush()
        sys.stderr.flush()
        result = run_under_policy(
            argv, policy, resources, timeout=timeout, plugin=args.plugin
        )
    except PolicyError as error:
        raise UsageError(str(error)) from None
    except LaunchError as error:
        if error.stage not in ("command", "execve"):
            raise
        _print_error(str(error))
        # The statuses of a shell and of timeout(1).
        return 127 if error.errno == errno.ENOENT else 126
    except ValueError as error:
        _print_error(str(error))
        return EXIT_FAILED
    if result.timed_out:
        _print_error(f"the command timed out after {timeout:g} s; killed")
    elif result.killed_by_seccomp:
        _print_error(
            "the command was killed by SIGSYS, the signal of a seccomp "
            "kill: a system call through a foreign ABI (i386 or x32)"
        )
    return result.status


# -- sandbox observe ---------------------------------------------------------


def _add_observe_parser(commands: _Subparsers) -> None:
    observe_parser = commands.add_parser(
        "observe",
        help="run a plugin unenforced and print the policy it needs",
        description="Call METHOD once in observe mode and print the "
        "smallest [plugins.PLUGIN] policy table that lets the call run. "
        "Observe mode logs what the sandbox would deny instead of "
        "denying it, so the plugin runs with no Landlock and no seccomp "
        "denials: use it only on code you are evaluating, never on "
        "hostile code. Exits with 1 when the call failed.",
    )
    observe_parser.add_argument("plugin", metavar="PLUGIN")
    observe_parser.add_argument("method", metavar="METHOD")
    observe_parser.add_argument(
        "--params",
        metavar="JSON",
        default="{}",
        help="keyword arguments as a JSON object (default: {})",
    )
    observe_parser.add_argument(
        "--plugin-dir",
        "--plugins",
        dest="plugins",
        metavar="DIR",
        action="append",
        help=f"plugin folder, repeatable (default: {DEFAULT_PLUGIN_DIR} "
        "if it exists)",
    )
    observe_parser.add_argument(
        "--policy",
        metavar="FILE",
        help="policy file whose user and max_message_bytes the run uses "
        f"(default: {DEFAULT_POLICY} if it exists)",
    )
    observe_parser.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_seconds,
        help="wall-clock limit of the call in seconds (default: 300)",
    )
    observe_parser.set_defaults(command=observe_command)


def observe_command(args: argparse.Namespace) -> int:
    """Observe one call and print the suggested policy table as TOML."""
    from .observe import observe_plugin

    params = parse_params(args.params)
    observation = observe_plugin(
        _plugin_dirs(args.plugins),
        args.plugin,
        [(args.method, params)],
        _load_policies(args.policy),
        timeout=args.timeout,
    )
    print(observation.suggested_policy_toml(), end="")
    for call in observation.calls:
        if call.error is not None:
            _print_error(f"call {call.method!r} failed: {call.error}")
    return EXIT_OK if observation.succeeded else EXIT_FAILED


# -- sandbox bench -----------------------------------------------------------


def bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark suite in a child interpreter; return its status."""
    suite = find_benchmark_suite()
    forwarded = ["--smoke"] if args.smoke else []
    for option in ("placement", "json", "png"):
        value = getattr(args, option)
        if value is not None:
            forwarded += [f"--{option}", value]
    return subprocess.call([sys.executable, suite, *forwarded])


def find_benchmark_suite() -> str:
    """Return the path of benchmarks/suite.py, which wheels do not ship.

    Raises UsageError when neither the checkout of this package (an
    editable install) nor the current folder has one.
    """
    relative = os.path.join("benchmarks", "suite.py")
    checkout = Path(__file__).resolve().parents[2]
    for root in (checkout, Path.cwd()):
        candidate = root / relative
        if candidate.is_file():
            return str(candidate)
    raise UsageError(
        f"{relative} not found in {checkout} or in the current folder; "
        "the benchmark suite comes with the source checkout, so run "
        "sandbox bench from one"
    )


# -- sandbox demo ------------------------------------------------------------


def demo_command(args: argparse.Namespace) -> int:
    """Run the example plugins and explain each outcome."""
    # Imported here because sandbox.demo imports this module's helpers.
    from .demo import run_demo

    return run_demo(_plugin_dirs(args.plugins), args.policy)


# -- formatting --------------------------------------------------------------


def _escape(
    value: object, *, limit: int = 500, keep_newlines: bool = False
) -> str:
    """Return ``value`` as text with control characters escaped, shortened.

    Plugins choose the text they return, and an escape sequence passed
    through would control the user's terminal.
    """
    text = value if isinstance(value, str) else str(value)
    escaped = "".join(
        char
        if char.isprintable() or (keep_newlines and char == "\n")
        else char.encode("unicode_escape").decode("ascii")
        for char in text
    )
    if len(escaped) > limit:
        escaped = escaped[: limit - 3] + "..."
    return escaped


def _print_field(label: str, text: str, width: int = 8) -> None:
    """Print ``  label: text`` with continuation lines under the text."""
    prefix = f"  {label + ':':<{width}}"
    print(
        textwrap.fill(
            text,
            WIDTH,
            initial_indent=prefix,
            subsequent_indent=" " * len(prefix),
            break_on_hyphens=False,
        )
    )


def _print_wrapped(text: str, *, indent: int = 0, hanging: int = 0) -> None:
    """Print ``text`` wrapped; continuation lines get ``hanging`` more."""
    print(
        textwrap.fill(
            text,
            WIDTH,
            initial_indent=" " * indent,
            subsequent_indent=" " * (indent + hanging),
            break_on_hyphens=False,
        )
    )


def _print_table(
    header: tuple[str, str, str], rows: Iterable[tuple[str, str, str]]
) -> None:
    """Print three columns; the last one wraps within WIDTH."""
    everything = [header, *rows]
    name_width = max(len(row[0]) for row in everything) + 2
    status_width = max(len(row[1]) for row in everything) + 2
    left = name_width + status_width
    for name, status, detail in everything:
        lines = textwrap.wrap(detail, WIDTH - left, break_on_hyphens=False)
        first = lines[0] if lines else ""
        print(f"{name:<{name_width}}{status:<{status_width}}{first}".rstrip())
        for line in lines[1:]:
            print(" " * left + line)


def _print_error(message: str) -> None:
    text = textwrap.fill(
        f"sandbox: error: {_escape(message)}",
        WIDTH,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    print(text, file=sys.stderr)


def _exit_status(code: object) -> int:
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_FAILED
