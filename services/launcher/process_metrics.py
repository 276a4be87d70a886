"""Per-process Prometheus series for the launcher's ``--metrics-port``: what an operator asks of a
supervisor first -- is each process up, how often was it restarted, how did it last end, what does
it cost (CPU, memory). Read at each scrape from the launcher's own process table and psutil.

    shmpipe_process_up {process, service}                 1 while its process runs
    shmpipe_process_restarts_total {process, service}     restarts by the launcher so far
    shmpipe_process_last_exit_code {process, service}     the code of its last exit (-N: killed by
                                                          signal N); absent until it has exited
    shmpipe_process_cpu_seconds_total {process, service}  user + system CPU of the running process
    shmpipe_process_resident_memory_bytes {process, service}  its resident set size
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ProcessCollector(Collector):
    """``processes()`` returns the launcher's ProcessState objects (read without a lock: each scrape
    sees values at least as fresh as the last supervision pass)."""

    def __init__(self, processes: Callable[[], list[Any]]) -> None:
        self.processes = processes

    def collect(self) -> Iterator[Metric]:
        import psutil

        labels = ["process", "service"]
        up = GaugeMetricFamily("shmpipe_process_up", "1 while the process runs", labels=labels)
        restarts = CounterMetricFamily("shmpipe_process_restarts", "Restarts by the launcher", labels=labels)
        exit_code = GaugeMetricFamily(
            "shmpipe_process_last_exit_code", "Code of its last exit (-N: killed by signal N)", labels=labels
        )
        cpu = CounterMetricFamily("shmpipe_process_cpu_seconds", "User + system CPU seconds", labels=labels)
        rss = GaugeMetricFamily("shmpipe_process_resident_memory_bytes", "Resident set size", labels=labels)
        for state in self.processes():
            values = [state.name, state.spec.service]
            running = state.alive()
            up.add_metric(values, 1 if running else 0)
            restarts.add_metric(values, state.restarts)
            if state.exit_code is not None:
                exit_code.add_metric(values, state.exit_code)
            if not running:
                continue
            try:
                proc = psutil.Process(state.pid)
                with proc.oneshot():
                    times, memory = proc.cpu_times(), proc.memory_info()
            except psutil.Error:
                continue  # it ended between the two looks: up says 1 once more, no cost figures
            cpu.add_metric(values, times.user + times.system)
            rss.add_metric(values, memory.rss)
        yield from (up, restarts, exit_code, cpu, rss)
