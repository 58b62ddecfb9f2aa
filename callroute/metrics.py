"""The callroute front's Prometheus metrics, served at ``GET /metrics``.

Messages by method and result code and their handling time, nginx-rtmp's
publish/play checks, and, read when scraped: conferences, members and
pushes (:meth:`callroute.rooms.Rooms.counts`), each gateway's health and
legs as the front last polled them. Labels are bounded: a method the
front does not know is counted as ``other``, codes are the front's own
(:class:`~callroute.protocol.ErrorCode`), gateways are the configured ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from callroute.front import Front
from callroute.protocol import CallrouteError, Method

_METHODS: Final = frozenset(m.value for m in Method)


class FrontMetrics:
    def __init__(self, front: Front) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter("callroute_messages", "Messages by method and result code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram(
            "callroute_message_seconds", "Message handling time, gateway calls included",
            ["method"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry)
        self.notify = Counter("callroute_rtmp_notify", "nginx-rtmp publish/play checks",
                              ["call", "allowed"], registry=self.registry)
        self.registry.register(_StateCollector(front))
        ProcessCollector(registry=self.registry)

    def message(self, method: str, code: str, seconds: float) -> None:
        name = method if method in _METHODS else "other"
        self.messages.labels(name, code).inc()
        self.latency.labels(name).observe(seconds)


class _StateCollector:
    def __init__(self, front: Front) -> None:
        self.front = front

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("callroute_gateway_up", "1 if the gateway's last poll succeeded",
                               labels=["gateway"])
        legs = GaugeMetricFamily("callroute_gateway_legs", "Legs the gateway last reported",
                                 labels=["gateway"])
        for g in self.front.gateways.snapshot():
            up.add_metric([g["gateway"]], 1 if g["healthy"] else 0)
            legs.add_metric([g["gateway"]], g["legs"])
        yield from (up, legs)
        try:
            counts = self.front.rooms.counts()
        except CallrouteError:  # the room store is unreachable: no counts this scrape
            return
        for name, value in counts.items():
            yield GaugeMetricFamily(f"callroute_{name}", f"{name.capitalize()} the front holds",
                                    value=value)
