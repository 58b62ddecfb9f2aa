"""What the RTMP reader and writer share (their sessions are in tests/integration)."""

from __future__ import annotations

import logging
import time
from typing import Any

from wxmgw.errors import ParseError
from wxmgw.media.endpoint import LATENCY_SAMPLES, LatencyWindow, RtmpEndpoint
from wxmgw.supervise import RECONNECTING, RUNNING


def test_latency_window_percentiles_over_the_last_samples() -> None:
    window = LatencyWindow()
    assert window.percentiles_ms() is None
    for ms in range(1, 101):
        window.add(ms / 1000)
    assert window.percentiles_ms() == [50.0, 99.0]
    for _ in range(LATENCY_SAMPLES):
        window.add(0.002)
    assert window.percentiles_ms() == [2.0, 2.0]


def test_malformed_sessions_are_counted_and_reported_once_per_burst() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    endpoint = RtmpEndpoint("rtmp://h/live/s", "pull", lambda k, i: events.append((k, i)))
    assert endpoint.state == RUNNING
    for _ in range(5):
        endpoint._failed(ParseError("message of 3000000 bytes (type 9) on chunk stream 6"))
    assert endpoint.stats.malformed == 5 and endpoint.stats.errors == 5
    assert [(k, i["malformed"]) for k, i in events] == [("disconnected", 1)]
    assert endpoint.state == RECONNECTING
    endpoint._failed(OSError("connection refused"))  # not the server's input: reported
    assert len(events) == 2 and endpoint.stats.malformed == 5
    endpoint._connected()
    assert endpoint.state == RUNNING


def test_events_are_logged_as_stable_names_with_fields(caplog: Any) -> None:
    endpoint = RtmpEndpoint("rtmp://h/live/s", "pull mp1", lambda k, i: None)
    caplog.set_level(logging.INFO, logger="wxmgw.media.endpoint")
    endpoint._failed(OSError("connection refused"))
    (record,) = caplog.records
    assert record.getMessage() == "rtmp_disconnected"
    assert record.fields == {"endpoint": "pull mp1", "url": "rtmp://h/live/s",
                             "error": "connection refused", "retry_in": 0.5}


def test_took_keeps_when_each_stream_last_had_media() -> None:
    endpoint = RtmpEndpoint("rtmp://h/live/s", "pull", lambda k, i: None)
    created = endpoint.last_media["video"]
    endpoint._took("video", time.perf_counter())
    assert endpoint.last_media["video"] > created == endpoint.last_media["audio"]
    assert endpoint.latency["video"].total == 1


def test_backoff_starts_over_only_after_a_session_that_lasted() -> None:
    endpoint = RtmpEndpoint("rtmp://127.0.0.1/live/x", "pull x", lambda _kind, _info: None)
    delays = []
    for _ in range(3):  # a server that accepts, then fails at once: it backs off
        endpoint._connected()
        delays.append(endpoint._failed(OSError("reset by peer")))
    endpoint._connected()
    assert endpoint._session_start is not None
    endpoint._session_start -= 60  # a session of a minute: the next retry comes soon
    delays.append(endpoint._failed(OSError("reset by peer")))
    assert delays == [0.5, 1.0, 2.0, 0.5]
