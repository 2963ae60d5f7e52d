"""The PNG plot of one run, drawn with matplotlib (the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import format_size
from .results import Results, Target

# Largest score drawn; a target met by a wider margin ends at this edge.
MAX_SCORE = 100.0
GREEN = "#2e7d32"
RED = "#c62828"
GREY = "#9e9e9e"
OURS = "#1565c0"
BASELINE = "#ef6c00"
# One line style per transport, one colour per label or plugin count.
TRANSPORT_STYLES = {"stream": "-", "shm": "--"}
COLOURS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a")


def matplotlib_missing() -> str | None:
    """Return why no plot can be drawn, or None if matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "matplotlib is not installed, so no plot was drawn; "
            "install it with: pip install -e '.[bench]'"
        )
    return None


def write_plot(results: Results, path: Path) -> None:
    """Draw latency, throughput, scaling and targets into one PNG."""
    import matplotlib

    # Agg draws without a display, as on a server or in CI.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(15, 11))
    plot_latency(axes[0][0], results)
    plot_throughput(axes[0][1], results)
    plot_scaling(axes[1][0], results)
    plot_targets(axes[1][1], results.targets())
    machine = results.machine
    figure.suptitle(
        f"sandbox benchmarks, {results.date}: {machine['cpu_model']}, "
        f"{machine['nproc']} CPUs, Linux {machine['kernel']}, placement "
        f"{results.settings.placement.name}"
        + (" (smoke run)" if results.settings.smoke else "")
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_latency(axis: Any, results: Results) -> None:
    rows = list(reversed(results.calls))
    positions = range(len(rows))
    colours = [OURS if row.group == "ours" else BASELINE for row in rows]
    axis.set_axisbelow(True)
    axis.barh(
        positions,
        [row.latency_us.p99 for row in rows],
        color=colours,
        alpha=0.35,
    )
    axis.barh(positions, [row.latency_us.p50 for row in rows], color=colours)
    axis.set_yticks(list(positions), [row.label for row in rows])
    axis.set_xscale("log")
    axis.set_xlabel("round trip, us (log scale): p50 solid, p99 light")
    axis.set_title("Latency: ours (blue) against baselines (orange)")
    axis.grid(axis="x", which="both", alpha=0.3)


def transport_of(label: str) -> str | None:
    """Return the transport named in brackets at the end of ``label``."""
    if not label.endswith("]"):
        return None
    return label.rpartition("[")[2].rstrip("]")


def plot_throughput(axis: Any, results: Results) -> None:
    labels = dict.fromkeys(point.label for point in results.throughput)
    kinds = {"call": COLOURS[0], "raw": COLOURS[1]}
    for label in labels:
        points = [p for p in results.throughput if p.label == label]
        transport = transport_of(label)
        axis.plot(
            [p.size for p in points],
            [p.mib_per_s for p in points],
            marker="o",
            label=label,
            color=kinds.get(label.split()[0], GREY),
            linestyle=TRANSPORT_STYLES.get(transport or "", ":"),
        )
    sizes = list(results.settings.payload_sizes)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xticks(sizes, [format_size(size) for size in sizes])
    axis.set_xlabel("payload size")
    axis.set_ylabel("MiB/s (size / p50 round trip)")
    axis.set_title("Round-trip throughput against memcpy")
    axis.grid(which="both", alpha=0.3)
    axis.legend(fontsize="small")


def plot_scaling(axis: Any, results: Results) -> None:
    cores = results.machine["nproc"]
    for transport in results.transports:
        for index, count in enumerate(results.settings.plugin_counts):
            points = [
                p
                for p in results.scaling
                if p.transport == transport and p.plugins == count
            ]
            if points:
                axis.plot(
                    [p.threads for p in points],
                    [p.calls_per_s for p in points],
                    marker="o",
                    label=f"{count} plugin(s) [{transport}]",
                    color=COLOURS[index % len(COLOURS)],
                    linestyle=TRANSPORT_STYLES.get(transport, ":"),
                )
    axis.axvline(cores, color=GREY, linestyle="--", label=f"{cores} cores")
    threads = list(results.settings.thread_counts)
    axis.set_xscale("log", base=2)
    axis.set_xticks(threads, [str(count) for count in threads])
    axis.set_xlabel("calling threads")
    axis.set_ylabel("calls per second")
    axis.set_title("Threads over plugins, against the number of cores")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def score(target: Target) -> float | None:
    """Return how far a target is met: 1 is the goal, above 1 is better.

    The score is capped at MAX_SCORE, which a value of 0 (an idle worker
    that used no measurable CPU) reaches for an upper bound.
    """
    if target.value is None:
        return None
    if target.comparison == ">=":
        met = target.value / target.goal
    elif target.value > 0:
        met = target.goal / target.value
    else:
        met = MAX_SCORE
    return min(met, MAX_SCORE)


def bar_colour(score_value: float | None) -> str:
    if score_value is None:
        return GREY
    return GREEN if score_value >= 1 else RED


def plot_targets(axis: Any, targets: list[Target]) -> None:
    scored = [(target, score(target)) for target in reversed(targets)]
    positions = list(range(len(scored)))
    axis.set_axisbelow(True)
    axis.barh(
        positions,
        [value or 0 for _, value in scored],
        color=[bar_colour(value) for _, value in scored],
    )

    for position, (target, value) in enumerate(scored):
        reached = "-" if target.value is None else f"{target.value:.3g}"
        axis.text(
            value or 1,
            position,
            f" {reached} ({target.comparison} {target.goal:g})",
            va="center",
            fontsize="small",
        )

    axis.set_yticks(
        positions,
        [f"{t.name} ({t.status})" for t, _ in scored],
        fontsize="small",
    )
    axis.axvline(1, color="black", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlim(right=MAX_SCORE * 30)
    axis.set_xlabel("goal / reached, or reached / goal for minimums (log)")
    axis.set_title("Targets: green meets the goal (right of 1), red misses")
    axis.grid(axis="x", which="both", alpha=0.3)
