"""Prometheus metrics of the media, read from the legs' own counters when scraped.

Nothing here runs per packet. The legs' parts count what they count anyway
(:meth:`~wxmgw.legs.base.Leg.flows` reads them); :class:`MediaCollector`
turns those counters into metric families at each scrape, so a gateway
that nobody scrapes pays nothing, and one scraped every 5 s pays one walk
over its legs. Histograms of the added latency and the A/V offset are built
from the samples the legs keep in their
:class:`~wxmgw.media.endpoint.LatencyWindow` s, taken once each.

Labels: every per-leg series has ``kind`` (rtmp2rtp, rtp2rtmp),
``direction`` (rtmp_in, rtp_out, rtp_in, rtmp_out), ``media`` (audio, video,
av), and ``conf_id`` and ``uuid``. Those two are bounded: a series lives only
while its leg runs, and past ``max_legs`` running legs the others are summed
under ``conf_id="_other", uuid="_other"`` (gauges: the worst of them).
Histograms are labelled by kind, direction and media only.

:class:`HubLag` times how late the gevent hub wakes a sleeping greenlet:
every greenlet of the gateway (RTP, RTMP, Thrift) waits that long too.
:class:`StallWatch` logs ``media_stalled`` and ``media_resumed`` as a
stream goes silent and comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import gevent
from gevent.lock import Semaphore
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from wxmgw.hubloop import in_turns
from wxmgw.legs.base import Flow, Leg
from wxmgw.media.endpoint import LatencyWindow

#: The label of the legs past ``max_legs``.
OTHER: Final = "_other"
LEG_LABELS: Final = ("kind", "conf_id", "uuid")
FLOW_LABELS: Final = (*LEG_LABELS, "direction", "media")

#: Flow counter -> (metric name, help).
COUNTERS: Final = {
    "packets": ("wxmgw_media_packets", "RTP packets, or RTMP media messages"),
    "bytes": ("wxmgw_media_bytes", "Media payload bytes"),
    "frames": ("wxmgw_media_frames", "Frames: access units, 20 ms audio frames, FLV tags"),
    "lost": ("wxmgw_media_lost_packets", "RTP packets given up on as lost (after NACKs)"),
    "reordered": ("wxmgw_media_reordered_packets", "RTP packets that arrived out of order"),
    "decode_errors": ("wxmgw_media_decode_errors",
                      "Frames that could not be decoded, rebuilt or sent on"),
    "dropped": ("wxmgw_media_dropped_frames",
                "Frames lost to full queues: pubsub subscribers, the RTMP writer"),
    "reconnects": ("wxmgw_media_reconnects", "RTMP sessions opened again after a failure"),
}
#: Flow gauge -> (metric name, help).
GAUGES: Final = {
    "jitter": ("wxmgw_media_jitter_seconds", "RFC 3550 interarrival jitter"),
    "silence": ("wxmgw_media_silence_seconds", "Seconds since the last media"),
    "av_offset": ("wxmgw_media_av_offset_seconds",
                  "How much later than the audio the video is presented (last frame)"),
}
#: RTCP feedback: sent for an incoming stream (rtp_in), received for an outgoing one.
FEEDBACK: Final = ("pli", "fir", "nack")
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
AV_OFFSET_BUCKETS: Final = (-0.2, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1, 0.2, 0.5)
HUB_LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Histogram:
    """Cumulative buckets fed from sample windows, each sample taken once."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        # id -> (the window, held so the id is not reused, and its total when last read).
        self._read: dict[int, tuple[LatencyWindow, int]] = {}
        self._seen: set[int] = set()

    def take(self, labels: tuple[str, ...], window: LatencyWindow) -> None:
        key = id(window)
        self._seen.add(key)
        _, total = self._read.get(key, (window, 0))
        samples = window.since(total)
        self._read[key] = (window, window.total)
        counts, total_sum = self.series.setdefault(
            labels, ([0] * (len(self.buckets) + 1), [0.0]))
        for value in samples:
            i = next((i for i, le in enumerate(self.buckets) if value <= le), len(self.buckets))
            counts[i] += 1
            total_sum[0] += value

    def forget_unseen(self) -> None:
        """Drop the windows of legs gone since the last scrape."""
        self._read = {k: v for k, v in self._read.items() if k in self._seen}
        self._seen = set()

    def family(self, name: str, doc: str, labels: tuple[str, ...]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labels)
        for values, (counts, total_sum) in self.series.items():
            cumulative, buckets = 0, []
            for le, count in zip((*map(str, self.buckets), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, total_sum[0])
        return family


class MediaCollector:
    """The per-leg media metrics; see the module docstring."""

    def __init__(self, legs: Callable[[], Iterable[Leg]], max_legs: int) -> None:
        self.legs = legs
        self.max_legs = max_legs
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.av_offset = _Histogram(AV_OFFSET_BUCKETS)
        # The walk over the legs gives the hub turns: a second scrape (two
        # Prometheus servers) waits for the first, which the histograms'
        # "each sample once" bookkeeping needs.
        self._scraping = Semaphore()

    def collect(self) -> Iterator[Metric]:
        with self._scraping:
            families = list(self._families())
        yield from families

    def _families(self) -> Iterator[Metric]:
        counters: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in COUNTERS}
        gauges: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in GAUGES}
        feedback: dict[tuple[str, ...], float] = {}
        states: dict[tuple[str, ...], float] = {}
        for i, leg in enumerate(in_turns(self.legs())):
            named = i < self.max_legs
            who = (leg.kind, leg.conf_id if named else OTHER, leg.uuid if named else OTHER)
            flows = leg.flows()
            key = (*who, leg.media_state(flows))
            states[key] = states.get(key, 0) + 1
            for flow in flows:
                self._flow(flow, (*who, flow.direction, flow.media), counters, gauges, feedback)
        for attr, (name, doc) in COUNTERS.items():
            yield _family(CounterMetricFamily(name, doc, labels=FLOW_LABELS), counters[attr])
        for attr, (name, doc) in GAUGES.items():
            yield _family(GaugeMetricFamily(name, doc, labels=FLOW_LABELS), gauges[attr])
        yield _family(CounterMetricFamily(
            "wxmgw_media_rtcp_feedback", "RTCP feedback (PLI, FIR, NACK): sent for rtp_in, "
            "received for rtp_out", labels=(*FLOW_LABELS, "message")), feedback)
        yield _family(GaugeMetricFamily(
            "wxmgw_leg_media_state", "1 for each leg's state: flowing, stalled, reconnecting, "
            "failed: ...", labels=(*LEG_LABELS, "state")), states)
        yield self.latency.family("wxmgw_media_added_latency_seconds",
                                  "Time a frame spends in the gateway",
                                  ("kind", "direction", "media"))
        yield self.av_offset.family("wxmgw_av_offset_seconds",
                                    "A/V offset of each video frame pushed (positive: video late)",
                                    ("kind", "direction", "media"))
        self.latency.forget_unseen()
        self.av_offset.forget_unseen()

    def _flow(
        self, flow: Flow, labels: tuple[str, ...],
        counters: dict[str, dict[tuple[str, ...], float]],
        gauges: dict[str, dict[tuple[str, ...], float]],
        feedback: dict[tuple[str, ...], float],
    ) -> None:
        for attr, series in counters.items():
            value = getattr(flow, attr)
            if value is not None:
                series[labels] = series.get(labels, 0) + value
        for attr, series in gauges.items():
            value = getattr(flow, attr)
            if value is not None:
                series[labels] = max(series.get(labels, value), value)
        for message in FEEDBACK:
            value = getattr(flow, message)
            if value is not None:
                key = (*labels, message)
                feedback[key] = feedback.get(key, 0) + value
        kind, direction = labels[0], labels[3]
        for media, window in flow.latency.items():
            self.latency.take((kind, direction, media), window)
        if flow.av_offsets is not None:
            self.av_offset.take((kind, direction, flow.media), flow.av_offsets)


def _family(
    family: CounterMetricFamily | GaugeMetricFamily, series: dict[tuple[str, ...], float]
) -> CounterMetricFamily | GaugeMetricFamily:
    for labels, value in series.items():
        family.add_metric(list(labels), value)
    return family


class HubLag:
    """How late the hub wakes a greenlet that slept ``interval``: ``wxmgw_hub_lag_seconds``."""

    def __init__(self, registry: CollectorRegistry, interval: float = 0.1) -> None:
        self.interval = interval
        self.histogram = Histogram("wxmgw_hub_lag_seconds",
                                   "How late the gevent hub wakes a sleeping greenlet",
                                   buckets=HUB_LAG_BUCKETS, registry=registry)

    def run(self) -> None:
        while True:
            asleep = time.perf_counter()
            gevent.sleep(self.interval)
            self.histogram.observe(max(0.0, time.perf_counter() - asleep - self.interval))


class StallWatch:
    """Logs ``media_stalled`` when a leg's stream has been silent ``stall_after`` seconds,
    ``media_resumed`` (with how long it was silent) when media comes back."""

    def __init__(self, legs: Callable[[], Iterable[Leg]], interval: float = 1.0) -> None:
        self.legs = legs
        self.interval = interval
        # (leg, direction, media) -> since when (monotonic) the stream is silent.
        self.stalled: dict[tuple[Leg, str, str], float] = {}

    def check(self, now: float) -> None:
        still: dict[tuple[Leg, str, str], float] = {}
        for leg in in_turns(self.legs()):
            for flow in leg.flows():
                if flow.silence is None:
                    continue
                key = (leg, flow.direction, flow.media)
                since = self.stalled.get(key)
                if flow.silence >= leg.ctx.stall_after:
                    if since is None:
                        since = now - flow.silence
                        leg.log("media_stalled", logging.WARNING, direction=flow.direction,
                                media=flow.media, silentS=round(flow.silence, 1))
                    still[key] = since
                elif since is not None:
                    leg.log("media_resumed", direction=flow.direction, media=flow.media,
                            silentS=round(now - since - flow.silence, 1))
        self.stalled = still

    def run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.check(time.monotonic())
