"""The plain-text report: tables of at most 79 columns."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from .results import MEMCPY, Results, Target, call_label, raw_label
from .scaling import ScalingPoint
from .settings import KIB, MIB
from .stats import CallResult

WIDTH = 79
LABEL = 30
CALL_HEADER = (
    f"{'round trip, us':<{LABEL}}{'p50':>9}{'p99':>9}{'mean':>9}"
    f"{'cpu host':>10}{'cpu peer':>10}"
)


def format_size(size: int) -> str:
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= KIB and size % KIB == 0:
        return f"{size // KIB} KiB"
    return f"{size} B"


def format_call_row(row: CallResult) -> str:
    summary = row.latency_us
    return (
        f"{row.label:<{LABEL}}{summary.p50:>9.1f}{summary.p99:>9.1f}"
        f"{summary.mean:>9.1f}{row.host_cpu_us:>10.1f}"
        f"{row.peer_cpu_us:>10.1f}"
    )


def format_calls(results: Results) -> list[str]:
    lines = [CALL_HEADER]
    for group, title in (("ours", "ours"), ("baseline", "baselines")):
        lines.append(f"-- {title}")
        lines += [
            format_call_row(row) for row in results.calls if row.group == group
        ]
    return lines


def throughput_labels(results: Results) -> list[str]:
    labels = []
    for transport in results.transports:
        labels += [call_label(transport), raw_label(transport)]
    labels.append(MEMCPY)
    present = {point.label for point in results.throughput}
    return [label for label in labels if label in present]


def short_label(label: str) -> str:
    """Shorten "call echo [shm]" to "call shm" for a column header."""
    for prefix in ("call echo ", "raw channel "):
        if label.startswith(prefix):
            kind = prefix.split()[0]
            return f"{kind} {label[len(prefix) :].strip('[]')}"
    return label


def format_throughput(results: Results) -> list[str]:
    labels = throughput_labels(results)
    header = f"{'MiB/s':<9}" + "".join(
        f"{short_label(label):>13}" for label in labels
    )
    lines = [header]
    for size in results.settings.payload_sizes:
        cells = [f"{format_size(size):<9}"]
        for label in labels:
            value = results.throughput_at(label, size)
            cells.append(f"{'-':>13}" if value is None else f"{value:>13.1f}")
        lines.append("".join(cells))
    return lines


def format_scaling(results: Results) -> list[str]:
    lines: list[str] = []
    for transport in results.transports:
        points = [p for p in results.scaling if p.transport == transport]
        if points:
            lines += [
                *([""] if lines else []),
                *scaling_table(results, transport, points),
            ]
    if lines:
        lines.append(f"on {results.machine['nproc']} cores (nproc)")
    return lines


def scaling_table(
    results: Results, transport: str, points: list[ScalingPoint]
) -> list[str]:
    counts = results.settings.plugin_counts
    title = f"calls/s (cores busy) [{transport}]"
    header = f"{title:<34}" + "".join(
        f"{plural(count, 'plugin'):>15}" for count in counts
    )
    cells = {(p.threads, p.plugins): p for p in points}
    lines = [header]
    for threads in results.settings.thread_counts:
        row = f"{plural(threads, 'thread'):<34}"
        for count in counts:
            point = cells.get((threads, count))
            cell = (
                "-"
                if point is None
                else f"{point.calls_per_s:.0f} ({point.cores_busy:.1f})"
            )
            row += f"{cell:>15}"
        lines.append(row)
    return lines


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_idle(results: Results) -> list[str]:
    if not results.idle:
        return []
    seconds = results.idle[0].seconds
    lines = [
        f"{f'idle {seconds:.1f} s, % of a core':<34}{'worker':>15}"
        f"{'worker psutil':>15}{'host':>15}"
    ]
    for item in results.idle:
        lines.append(
            f"{item.transport:<34}{item.worker_percent:>15.3f}"
            f"{item.worker_psutil_percent:>15.3f}{item.host_percent:>15.3f}"
        )
    return lines


def format_spawns(results: Results) -> list[str]:
    lines = [f"{'spawn to first call, ms':<{LABEL}}{'p50':>9}{'p99':>9}"]
    lines[0] += f"{'mean':>9}"
    for row in results.spawns:
        summary = row.latency_ms
        lines.append(
            f"{row.label:<{LABEL}}{summary.p50:>9.2f}{summary.p99:>9.2f}"
            f"{summary.mean:>9.2f}"
        )
    return lines


def format_target(target: Target) -> str:
    value = "-" if target.value is None else f"{target.value:.3g}"
    goal = f"{target.comparison} {target.goal:g}"
    return f"{target.name:<44}{value:>10}{goal:>10}{target.status:>8}"


def format_targets(targets: Iterable[Target]) -> list[str]:
    header = f"{'target':<44}{'reached':>10}{'goal':>10}{'result':>8}"
    return [header, *(format_target(target) for target in targets)]


def format_header(results: Results) -> list[str]:
    machine = results.machine
    settings = results.settings
    worker = results.worker
    uid = worker.get("uid")
    worker_uid = uid[0] if isinstance(uid, list) else uid
    return [
        f"cpu: {machine['cpu_model']}, {machine['nproc']} CPUs (nproc), "
        f"{machine['memory_gib']} GiB",
        f"os: Linux {machine['kernel']}, Python {machine['python']}, "
        f"host uid {machine['host_uid']}",
        f"worker: uid {worker_uid}, seccomp mode {worker.get('seccomp')}, "
        f"no_new_privs {worker.get('no_new_privs')}",
        f"transports: {', '.join(results.transports)}",
        f"run: {settings.calls} calls back to back, {settings.gap_calls} "
        f"with {settings.gap_us} us gaps, after {settings.warmup} warm-up"
        + (" (smoke)" if settings.smoke else ""),
        f"placement: {settings.placement.describe()}",
        f"load: other processes used {results.other_load_percent:.0f}% "
        "of the machine's CPU time during the run",
    ]


def format_report(results: Results) -> str:
    """Return the whole report as text."""
    sections = [
        format_header(results),
        format_calls(results),
        format_throughput(results),
        format_scaling(results),
        format_idle(results),
        format_spawns(results),
        format_targets(results.targets()),
        format_footer(results),
    ]
    lines: list[str] = []
    for section in sections:
        if section:
            lines += [*([""] if lines else []), *section]
    return "\n".join(lines)


def format_footer(results: Results) -> list[str]:
    lines = [
        "cpu host, cpu peer: CPU time per call in us of the side that",
        "times the calls and of the process that replies",
        "MiB/s: payload size over the p50 round trip; memcpy copies once",
        "first spawn in this process, not in the rows above: "
        f"{results.first_spawn_ms:.2f} ms",
    ]
    for note in results.notes:
        lines += textwrap.wrap(f"note: {note}", WIDTH, subsequent_indent="  ")
    return lines
