"""Calls per second with several threads calling several plugins at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sandbox import PluginHost

from .hosts import worker_pid
from .peers import PAYLOAD
from .settings import RunSettings
from .stats import process_cpu_ns


@dataclass(frozen=True)
class ScalingPoint:
    """Throughput of ``threads`` threads spread over ``plugins`` plugins.

    ``cores_busy`` is the CPU time of this process and of the workers
    divided by the wall-clock time, so 2.0 means two cores fully used.
    """

    transport: str
    threads: int
    plugins: int
    calls: int
    seconds: float
    calls_per_s: float
    cores_busy: float


class CallLoop:
    """Threads that call their plugins' ``echo`` until told to stop."""

    def __init__(self, host: PluginHost, plugins: Sequence[str]) -> None:
        self.host = host
        self.plugins = plugins
        self.stop = threading.Event()
        self.counts: list[int] = []
        self.failures: list[BaseException] = []

    def run(self, threads: int, seconds: float) -> tuple[int, float]:
        """Run ``threads`` threads for ``seconds``; return calls and time.

        Thread i calls plugin i modulo the number of plugins. The time
        runs until the last thread has finished its last call. Raises
        RuntimeError if a call failed.
        """
        self.stop.clear()
        self.counts = [0] * threads
        start_together = threading.Barrier(threads + 1)
        workers = [
            threading.Thread(
                target=self.call_until_stopped,
                args=(index, start_together),
                daemon=True,
            )
            for index in range(threads)
        ]
        for worker in workers:
            worker.start()
        start_together.wait()
        start = time.perf_counter()
        time.sleep(seconds)
        self.stop.set()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
        if self.failures:
            raise RuntimeError("a call failed while scaling") from (
                self.failures[0]
            )
        return sum(self.counts), elapsed

    def call_until_stopped(
        self, index: int, start_together: threading.Barrier
    ) -> None:
        plugin = self.plugins[index % len(self.plugins)]
        start_together.wait()
        try:
            while not self.stop.is_set():
                self.host.execute_plugin(plugin, "echo", PAYLOAD)
                self.counts[index] += 1
        except BaseException as error:
            self.failures.append(error)


def measure_point(
    host: PluginHost,
    plugins: Sequence[str],
    threads: int,
    transport: str,
    settings: RunSettings,
) -> ScalingPoint:
    """Measure one thread count over the given plugins."""
    pids = [worker_pid(host, plugin) for plugin in plugins]
    loop = CallLoop(host, plugins)
    cpu_start = time.process_time_ns() + sum(map(process_cpu_ns, pids))
    calls, seconds = loop.run(threads, settings.scaling_seconds)
    cpu_end = time.process_time_ns() + sum(map(process_cpu_ns, pids))
    return ScalingPoint(
        transport=transport,
        threads=threads,
        plugins=len(plugins),
        calls=calls,
        seconds=seconds,
        calls_per_s=calls / seconds,
        cores_busy=(cpu_end - cpu_start) / 1e9 / seconds,
    )


def measure_scaling(
    host: PluginHost,
    plugin_names: Sequence[str],
    transport: str,
    settings: RunSettings,
) -> list[ScalingPoint]:
    """Measure every thread count over every plugin count."""
    points = []
    for plugin_count in settings.plugin_counts:
        plugins = plugin_names[:plugin_count]
        for threads in settings.thread_counts:
            points.append(
                measure_point(host, plugins, threads, transport, settings)
            )
    return points
