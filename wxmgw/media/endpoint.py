"""What the RTMP reader and writer share: counters, reconnect backoff, events.

Both run a session in a greenlet of their own and retry it with
:class:`Backoff` until closed; what happens to a session is reported as an
event (logged, then handed to the leg).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]

BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 8.0
#: How many recent samples a :class:`LatencyWindow` keeps.
LATENCY_SAMPLES: Final = 1000


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset()`` after a success."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass(slots=True)
class RtmpStats:
    """Counters of one reader or writer.

    ``errors`` counts skipped corrupt packets and failed sessions; ``dropped``
    counts writes refused because the writer's queue was full.
    """

    packets: int = 0
    bytes: int = 0
    frames: int = 0
    reconnects: int = 0
    errors: int = 0
    dropped: int = 0
    last_error: str = ""


class RtmpEndpoint:
    """What RTMP readers and writers share: counters, reconnect backoff, events, latency.

    Events reach ``on_event`` logged first. :attr:`latency` keeps, per stream,
    how long each frame spent in the gateway; each side says from where to where.
    """

    def __init__(self, url: str, name: str, on_event: EventCallback) -> None:
        self.url = url
        self.name = name
        self.stats = RtmpStats()
        self._on_event = on_event
        self._closing = False
        self._backoff = Backoff()
        self._sessions = 0
        self.latency = {"video": LatencyWindow(), "audio": LatencyWindow()}

    def latency_ms(self) -> dict[str, list[float] | None]:
        """``[p50, p99]`` of :attr:`latency` per stream, in milliseconds (None before any)."""
        return {kind: window.percentiles_ms() for kind, window in self.latency.items()}

    def _took(self, kind: str, since: float) -> None:
        """One ``kind`` frame's latency: from ``since`` (``time.perf_counter()``) to now."""
        self.latency[kind].add(time.perf_counter() - since)

    def _event(self, kind: str, /, **info: Any) -> None:
        """Log ``kind`` and report it to ``on_event``."""
        level = logging.WARNING if kind in ("disconnected", "unsupported_codec") else logging.INFO
        logger.log(level, "%s %s %s %s", self.name, kind, self.url, info)
        self._on_event(kind, info)

    def _connected(self) -> None:
        if self._sessions:
            self.stats.reconnects += 1
        self._sessions += 1

    def _failed(self, error: BaseException) -> float:
        """Count a failed session and return how long to wait before the next one."""
        self.stats.errors += 1
        self.stats.last_error = str(error) or type(error).__name__
        delay = self._backoff.next()
        self._event("disconnected", error=self.stats.last_error, retry_in=delay)
        return delay


class LatencyWindow:
    """The last ``LATENCY_SAMPLES`` durations of one kind of work, as percentiles."""

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def percentiles_ms(self) -> list[float] | None:
        """``[p50, p99]`` in milliseconds, None before the first sample."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        n = len(ordered)
        return [round(ordered[math.ceil(q * n) - 1] * 1000, 2) for q in (0.5, 0.99)]  # nearest rank
