"""A Prometheus exporter for the rings and service counters on this host (needs the ``services``
extra: prometheus_client, psutil).

    server = start_metrics_server(9464)              # every ring; port 0 picks a free port
    server.port; server.close()

Each scrape surveys the rings afresh (shmpipe.inventory: nothing is attached, no role is taken)
and every ``shmpipe.stats`` publisher. Metrics (counters end in ``_total``):

ring, labels {ring}:
    shmpipe_ring_written_total, shmpipe_ring_lost_total, shmpipe_ring_evictions_total,
    shmpipe_ring_full_waits_total                       counters from the ring header
    shmpipe_ring_fill, shmpipe_ring_capacity            records (gauges)
    shmpipe_ring_itemsize_bytes, shmpipe_ring_in_use    gauges (in_use: any live process holds it)
    shmpipe_ring_producer_alive {ring, pid}             1 while the producer role is held
consumer, labels {ring, slot, pid}:
    shmpipe_ring_consumer_lag                           records published and not yet read
    shmpipe_ring_consumer_position                      the next record it reads
    shmpipe_ring_consumer_lost_total                    records it missed (lossy / evicted)
    shmpipe_ring_consumer_alive                         1 while its slot's role is held
segments that are not readable rings, labels {ring, condition}:
    shmpipe_segment_unreadable                          1 (condition: half-created, foreign, ...)
stats publishers, labels {service, pid}:
    shmpipe_service_up                                  1 while the publisher lives
    shmpipe_service_updated_timestamp_seconds           when it last published
    shmpipe_service_<field>                             each published field: a gauge where the
                                                        publisher says the field is a level
                                                        (capture's latency_p99_us), untyped
                                                        otherwise (its messages: a counter, whose
                                                        name has no _total, so it stays untyped)

``services=[NAME, ...]`` limits the stats publishers to those named NAME or NAME.<anything> (the
launcher passes its pipeline's service names, so another job's publishers on the same host stay
out), as ``rings=`` limits the rings.
"""
from __future__ import annotations

import errno
import re
import socket
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from . import inventory
from .errors import ShmpipeError


class MetricsServerError(ShmpipeError, OSError):
    """The metrics server could not listen (port in use, unknown host, no permission)."""


class ShmpipeCollector(Collector):
    """At each scrape: every ring on the host (or the named ones) and every stats publisher."""

    def __init__(self, rings: list[str] | None = None, services: list[str] | None = None) -> None:
        self.rings = list(rings) if rings is not None else None
        self.services = list(services) if services is not None else None

    def wanted(self, publisher: str) -> bool:
        """Whether a stats publisher's name is in scope: one of ``services`` or under one."""
        if self.services is None:
            return True
        return any(publisher == s or publisher.startswith(s + ".") for s in self.services)

    def collect(self) -> Iterator[Metric]:
        ring_labels, consumer_labels = ["ring"], ["ring", "slot", "pid"]
        counters = {key: CounterMetricFamily(f"shmpipe_ring_{key}", help_text, labels=ring_labels)
                    for key, help_text in (
                        ("written", "Records the producer has published over the ring's life"),
                        ("lost", "Records consumers missed (lossy overruns, evictions), summed"),
                        ("evictions", "Consumers the producer evicted (dead or silent)"),
                        ("full_waits", "Times the producer found the ring full and waited"))}
        fill = GaugeMetricFamily("shmpipe_ring_fill", "Records held for the slowest active consumer",
                                 labels=ring_labels)
        capacity = GaugeMetricFamily("shmpipe_ring_capacity", "Records the ring holds", labels=ring_labels)
        itemsize = GaugeMetricFamily("shmpipe_ring_itemsize_bytes", "Bytes per record", labels=ring_labels)
        in_use = GaugeMetricFamily("shmpipe_ring_in_use", "1 while any live process holds the segment",
                                   labels=ring_labels)
        producer_alive = GaugeMetricFamily("shmpipe_ring_producer_alive", "1 while the producer role is held",
                                           labels=["ring", "pid"])
        lag = GaugeMetricFamily("shmpipe_ring_consumer_lag", "Records published and not yet read",
                                labels=consumer_labels)
        position = GaugeMetricFamily("shmpipe_ring_consumer_position", "Sequence number of the next record "
                                     "the consumer reads", labels=consumer_labels)
        consumer_lost = CounterMetricFamily("shmpipe_ring_consumer_lost", "Records this consumer missed",
                                            labels=consumer_labels)
        consumer_alive = GaugeMetricFamily("shmpipe_ring_consumer_alive", "1 while the consumer's slot is held",
                                           labels=consumer_labels)
        unreadable = GaugeMetricFamily("shmpipe_segment_unreadable", "1 for a /dev/shm/shmpipe.* segment that "
                                       "is not a readable ring", labels=["ring", "condition"])
        for info in inventory.survey(self.rings):
            if info.ring is None:
                unreadable.add_metric([info.name, info.condition], 1)
                continue
            r, name = info.ring, [info.name]
            for key, family in counters.items():
                family.add_metric(name, r[key])
            fill.add_metric(name, r["fill"])
            capacity.add_metric(name, r["capacity"])
            itemsize.add_metric(name, r["itemsize"])
            in_use.add_metric(name, 1 if info.in_use else 0)
            producer_alive.add_metric([info.name, str(r["producer"]["pid"])], 1 if r["producer"]["alive"] else 0)
            for c in r["consumers"]:
                labels = [info.name, str(c["slot"]), str(c["pid"])]
                lag.add_metric(labels, c["lag"])
                position.add_metric(labels, c["position"])
                consumer_lost.add_metric(labels, c["lost"])
                consumer_alive.add_metric(labels, 1 if c["alive"] else 0)
        yield from counters.values()
        yield from (fill, capacity, itemsize, in_use, producer_alive, lag, position, consumer_lost,
                    consumer_alive, unreadable)
        yield from _service_metrics([p for p in inventory.survey_stats() if self.wanted(p.name)])


def metric_name(field: str) -> str:
    """A published field's name as a Prometheus metric name part ([a-zA-Z0-9_])."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", field)
    return name if name and not name[0].isdigit() else "_" + name


def _service_metrics(publishers: list[inventory.StatsInfo]) -> Iterator[Metric]:
    labels = ["service", "pid"]
    up = GaugeMetricFamily("shmpipe_service_up", "1 while the stats publisher lives", labels=labels)
    updated = GaugeMetricFamily("shmpipe_service_updated_timestamp_seconds",
                                "When the publisher last published (Unix time)", labels=labels)
    publishers = [p for p in publishers if not p.problem]
    # A family has one type: a gauge only where every publisher of that field says it is one.
    not_gauge = {metric_name(f) for p in publishers for f in p.counters if f not in p.gauges}
    fields: dict[str, Metric] = {}
    for pub in publishers:
        values = [pub.name, str(pub.pid)]
        up.add_metric(values, 1 if pub.live else 0)
        updated.add_metric(values, pub.updated_ns / 1e9)
        for field, value in pub.counters.items():
            name = f"shmpipe_service_{metric_name(field)}"
            if name not in fields:
                family = UnknownMetricFamily if metric_name(field) in not_gauge else GaugeMetricFamily
                fields[name] = family(name, f"The {field!r} field of shmpipe.stats publishers", labels=labels)
            fields[name].add_metric(values, value)
    yield up
    yield updated
    # A field name that would shadow one of the fixed names is left out rather than clash.
    yield from (f for name, f in fields.items() if name not in ("shmpipe_service_up",
                                                                "shmpipe_service_updated_timestamp_seconds"))


class MetricsServer:
    """An HTTP server answering Prometheus scrapes on a daemon thread."""

    def __init__(self, httpd, thread: threading.Thread, host: str, registry: CollectorRegistry) -> None:
        self._httpd, self._thread = httpd, thread
        self.host = host
        self.port: int = httpd.server_address[1]
        self.registry = registry
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_metrics_server(port: int, host: str = "127.0.0.1", rings: list[str] | None = None,
                         services: list[str] | None = None) -> MetricsServer:
    """Serve /metrics on host:port (port 0: a free one, see ``.port``) from a private registry
    (``.registry``: register more collectors there). ``rings``/``services`` scope what is
    exported (default: everything on the host). Raises MetricsServerError (one line naming the
    port) when it cannot listen."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MetricsServerError(f"metrics port must be an int from 0 to 65535, not {port!r}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShmpipeCollector(rings, services))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as exc:
        raise MetricsServerError(f"cannot serve metrics on {host}:{port}: unknown host ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetricsServerError(f"port {port} on {host} is already in use") from None
        raise MetricsServerError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return MetricsServer(httpd, thread, host, registry)


__all__ = ["MetricsServer", "MetricsServerError", "ShmpipeCollector", "metric_name", "start_metrics_server"]
