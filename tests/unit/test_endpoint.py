"""What the RTMP reader and writer share (their sessions are in tests/integration)."""

from __future__ import annotations

from wxmgw.media.endpoint import LATENCY_SAMPLES, Backoff, LatencyWindow


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_latency_window_percentiles_over_the_last_samples() -> None:
    window = LatencyWindow()
    assert window.percentiles_ms() is None
    for ms in range(1, 101):
        window.add(ms / 1000)
    assert window.percentiles_ms() == [50.0, 99.0]
    for _ in range(LATENCY_SAMPLES):
        window.add(0.002)
    assert window.percentiles_ms() == [2.0, 2.0]
