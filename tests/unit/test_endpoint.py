"""What the RTMP reader and writer share (their sessions are in tests/integration)."""

from __future__ import annotations

from wxmgw.media.endpoint import Backoff


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 0.5
