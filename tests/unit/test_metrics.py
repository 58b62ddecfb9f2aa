"""The media metrics read at scrape time, the stall watch and the leg's media state."""

from __future__ import annotations

import logging

import gevent
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wxmgw.legs.base import FLOWING, STALLED, BitrateMeter, Flow, Leg, LegContext, media_state
from wxmgw.media.endpoint import LatencyWindow
from wxmgw.metrics import OTHER, MediaCollector, StallWatch
from wxmgw.ports import PortAllocator
from wxmgw.supervise import RECONNECTING, RUNNING


class FakeLeg(Leg):
    kind = "rtp2rtmp"

    def __init__(self, uuid: str, flows: list[Flow], stall_after: float = 5.0) -> None:
        ctx = LegContext(PortAllocator(40000, 40010, "127.0.0.1"), "127.0.0.1",
                         stall_after=stall_after)
        super().__init__(uuid, "conf1", ctx)
        self._flows = flows
        self.health_value = RUNNING
        self.start()

    def flows(self) -> list[Flow]:
        return self._flows

    def health(self) -> str:
        return self.health_value


def scrape(legs: list[Leg], max_legs: int = 500) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    registry.register(MediaCollector(lambda: legs, max_legs))
    return samples(registry)


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def labels(uuid: str, direction: str, media: str, **more: str) -> frozenset:
    return frozenset({"kind": "rtp2rtmp", "conf_id": "conf1", "uuid": uuid,
                      "direction": direction, "media": media, **more}.items())


def test_flows_become_labelled_counters_and_gauges() -> None:
    leg = FakeLeg("a", [Flow("rtp_in", "video", packets=100, bytes=9000, lost=3, pli=2,
                             jitter=0.004, silence=1.5)])
    got = scrape([leg])
    assert got[("wxmgw_media_packets_total", labels("a", "rtp_in", "video"))] == 100
    assert got[("wxmgw_media_lost_packets_total", labels("a", "rtp_in", "video"))] == 3
    assert got[("wxmgw_media_silence_seconds", labels("a", "rtp_in", "video"))] == 1.5
    assert got[("wxmgw_media_rtcp_feedback_total",
                labels("a", "rtp_in", "video", message="pli"))] == 2
    assert ("wxmgw_media_reconnects_total", labels("a", "rtp_in", "video")) not in got
    state = frozenset({"kind": "rtp2rtmp", "conf_id": "conf1", "uuid": "a",
                       "state": FLOWING}.items())
    assert got[("wxmgw_leg_media_state", state)] == 1


def test_legs_past_the_cap_share_one_label_set() -> None:
    legs: list[Leg] = [FakeLeg(u, [Flow("rtp_in", "audio", packets=10, silence=s)])
                       for u, s in (("a", 1.0), ("b", 7.0), ("c", 2.0))]
    got = scrape(legs, max_legs=1)
    other = frozenset({"kind": "rtp2rtmp", "conf_id": OTHER, "uuid": OTHER,
                       "direction": "rtp_in", "media": "audio"}.items())
    assert got[("wxmgw_media_packets_total", labels("a", "rtp_in", "audio"))] == 10
    assert got[("wxmgw_media_packets_total", other)] == 20
    assert got[("wxmgw_media_silence_seconds", other)] == 7.0  # the worst of them
    assert not any(dict(k[1]).get("uuid") == "b" for k in got)


def test_histograms_take_each_sample_once() -> None:
    window = LatencyWindow()
    leg = FakeLeg("a", [Flow("rtmp_out", "av", latency={"video": window})])
    registry = CollectorRegistry()
    registry.register(MediaCollector(lambda: [leg], 500))
    hist = frozenset({"kind": "rtp2rtmp", "direction": "rtmp_out", "media": "video"}.items())
    window.add(0.003)
    window.add(0.2)
    assert samples(registry)[("wxmgw_media_added_latency_seconds_count", hist)] == 2
    window.add(0.004)
    got = samples(registry)
    assert got[("wxmgw_media_added_latency_seconds_count", hist)] == 3
    le_5ms = frozenset({*hist, ("le", "0.005")})
    assert got[("wxmgw_media_added_latency_seconds_bucket", le_5ms)] == 2
    assert got[("wxmgw_media_added_latency_seconds_sum", hist)] == pytest.approx(0.207)


def test_concurrent_scrapes_take_each_sample_once() -> None:
    """Two Prometheus servers at once: the walk over the legs takes turns, not the scrapes."""
    windows = [LatencyWindow() for _ in range(3)]
    legs: list[Leg] = [FakeLeg(f"u{i}", [Flow("rtmp_out", "av", latency={"video": w})])
                       for i, w in enumerate(windows)]
    registry = CollectorRegistry()
    registry.register(MediaCollector(lambda: legs, 500))
    for window in windows:
        window.add(0.003)
    count = ("wxmgw_media_added_latency_seconds_count",
             frozenset({"kind": "rtp2rtmp", "direction": "rtmp_out", "media": "video"}.items()))
    both = [gevent.spawn(samples, registry) for _ in range(2)]
    gevent.joinall(both, raise_error=True)
    assert [g.value[count] for g in both] == [3, 3]
    assert samples(registry)[count] == 3


def test_latency_window_since_gives_only_new_kept_samples() -> None:
    window = LatencyWindow()
    for i in range(5):
        window.add(i)
    assert window.since(3) == [3, 4]
    assert window.since(5) == []
    assert len(window.since(-10_000)) == 5


def test_media_state() -> None:
    quiet = [Flow("rtp_in", "audio", silence=6.0), Flow("rtp_in", "video", silence=0.1)]
    assert media_state(RUNNING, quiet, 5.0) == STALLED
    assert media_state(RUNNING, quiet, 10.0) == FLOWING
    assert media_state(RECONNECTING, quiet, 5.0) == RECONNECTING
    assert media_state(RUNNING, [Flow("rtmp_out", "av")], 5.0) == FLOWING


def test_stall_watch_logs_a_stall_once_and_its_end(caplog: pytest.LogCaptureFixture) -> None:
    flow = Flow("rtp_in", "audio", silence=1.0)
    leg = FakeLeg("a", [flow])
    watch = StallWatch(lambda: [leg])
    caplog.set_level(logging.INFO, logger="wxmgw.leg")
    caplog.clear()
    watch.check(100.0)
    flow.silence = 6.0
    watch.check(105.0)
    flow.silence = 7.0
    watch.check(106.0)
    flow.silence = 0.5
    watch.check(110.0)
    events = [(r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert [name for name, _ in events] == ["media_stalled", "media_resumed"]
    stalled, resumed = events[0][1], events[1][1]
    assert stalled["direction"] == "rtp_in" and stalled["silentS"] == 6.0
    assert stalled["confId"] == "conf1" and stalled["uuid"] == "a"
    assert resumed["silentS"] == 10.5  # silent from 99 to 109.5


def test_bitrate_meter_measures_windows_of_a_second_at_least() -> None:
    meter = BitrateMeter()
    flow = Flow("rtp_in", "audio", bytes=0)
    meter.measure([flow], 10.0)
    assert flow.kbps is None
    flow.bytes = 8000
    meter.measure([flow], 10.5)  # too soon: no rate yet
    assert flow.kbps is None
    flow.bytes = 16000
    meter.measure([flow], 12.0)
    assert flow.kbps == 64.0
    flow.bytes = 16100
    meter.measure([flow], 12.1)  # the last window's rate stays until the next one ends
    assert flow.kbps == 64.0
