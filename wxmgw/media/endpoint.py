"""What the RTMP reader and writer share: counters, reconnect backoff, events.

Both run a session in a :class:`~wxmgw.supervise.Worker` of their own and
retry it with :class:`~wxmgw.supervise.Backoff` until closed; what happens
to a session is reported as an event (logged, then handed to the leg).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from wxmgw.errors import ParseError
from wxmgw.logs import event
from wxmgw.supervise import RECONNECTING, RUNNING, Backoff, Worker

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]

#: How many recent samples a :class:`LatencyWindow` keeps.
LATENCY_SAMPLES: Final = 1000
#: Sessions ended by malformed or oversized input are reported at most once per this many seconds.
MALFORMED_REPORT_INTERVAL: Final = 30.0
_LEVELS: Final = {"disconnected": logging.WARNING, "unsupported_codec": logging.WARNING,
                  "crashed": logging.ERROR}


@dataclass(slots=True)
class RtmpStats:
    """Counters of one reader or writer.

    ``errors`` counts skipped corrupt packets and failed sessions;
    ``malformed`` the sessions ended by what the server sent (a
    :class:`~wxmgw.errors.ParseError`: garbage, or past the
    :class:`~wxmgw.rtmp.chunk.RtmpLimits`); ``crashes`` the unexpected
    exceptions that restarted a worker. A reader also counts
    ``configs_refused``, the sequence headers outside what a mini-program
    sends, and ``frames_dropped``, the decoded frames not as declared.
    """

    packets: int = 0
    bytes: int = 0
    frames: int = 0
    reconnects: int = 0
    errors: int = 0
    malformed: int = 0
    crashes: int = 0
    configs_refused: int = 0
    frames_dropped: int = 0
    last_error: str = ""


class RtmpEndpoint:
    """What RTMP readers and writers share: counters, reconnect backoff, events, latency.

    Events reach ``on_event`` logged first; ``disconnected`` by malformed
    input at most once per :data:`MALFORMED_REPORT_INTERVAL` (with the count
    so far), ``crashed`` (``error``, ``retry_in``, ``exc``) for each
    unexpected exception. :attr:`latency` keeps, per stream, how long each
    frame spent in the gateway; each side says from where to where, and
    :attr:`last_media` when the last timed frame of each stream was done
    (``time.perf_counter()``; the endpoint's creation before the first).
    """

    def __init__(self, url: str, name: str, on_event: EventCallback) -> None:
        self.url = url
        self.name = name
        self.stats = RtmpStats()
        self._on_event = on_event
        self._closing = False
        self._backoff = Backoff()
        self._sessions = 0
        self._session_start: float | None = None
        self._down = False
        self._malformed_reported = float("-inf")
        self._worker: Worker | None = None
        self.latency = {"video": LatencyWindow(), "audio": LatencyWindow()}
        self.last_media = dict.fromkeys(self.latency, time.perf_counter())

    def latency_ms(self) -> dict[str, list[float] | None]:
        """``[p50, p99]`` of :attr:`latency` per stream, in milliseconds (None before any)."""
        return {kind: window.percentiles_ms() for kind, window in self.latency.items()}

    def _took(self, kind: str, since: float) -> None:
        """One ``kind`` frame's latency: from ``since`` (``time.perf_counter()``) to now."""
        now = time.perf_counter()
        self.latency[kind].add(now - since)
        self.last_media[kind] = now

    @property
    def state(self) -> str:
        """``running``, ``reconnecting`` or ``failed: why`` (:mod:`wxmgw.supervise`)."""
        if self._worker is not None and self._worker.failure:
            return self._worker.state
        return RECONNECTING if self._down else RUNNING

    def _spawn(self, target: Callable[[], None]) -> Worker:
        return Worker(target, self._crashed)

    def _crashed(self, error: BaseException, retry_in: float) -> None:
        """A worker's unexpected exception: counted, reported with its traceback."""
        self.stats.crashes += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        self._event("crashed", error=self.stats.last_error, retry_in=retry_in, exc=error)

    def _event(self, kind: str, /, **info: Any) -> None:
        """Log ``kind`` (as the event ``rtmp_<kind>``) and report it to ``on_event``."""
        event(logger, f"rtmp_{kind}", _LEVELS.get(kind, logging.INFO), endpoint=self.name,
              url=self.url, **info)
        self._on_event(kind, info)

    def _connected(self) -> None:
        if self._sessions:
            self.stats.reconnects += 1
        self._sessions += 1
        self._session_start = time.monotonic()
        self._down = False

    def _failed(self, error: BaseException) -> float:
        """Count a failed session and return how long to wait before the next one."""
        self.stats.errors += 1
        self.stats.last_error = str(error) or type(error).__name__
        self._down = True
        started, self._session_start = self._session_start, None
        if started is not None and time.monotonic() - started > self._backoff.maximum:
            self._backoff.reset()  # it ran a good while: retry soon; one that flaps backs off
        delay = self._backoff.next()
        if not isinstance(error, ParseError):
            self._event("disconnected", error=self.stats.last_error, retry_in=delay)
            return delay
        self.stats.malformed += 1
        now = time.monotonic()
        if now - self._malformed_reported >= MALFORMED_REPORT_INTERVAL:
            self._malformed_reported = now
            self._event("disconnected", error=self.stats.last_error, retry_in=delay,
                        malformed=self.stats.malformed)
        return delay


class LatencyWindow:
    """The last ``LATENCY_SAMPLES`` durations of one kind of work, as percentiles.

    :attr:`total` counts every sample ever added, so a reader that remembers
    it can take only the samples added since (:meth:`since`).
    """

    __slots__ = ("_samples", "total")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.total = 0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.total += 1

    def since(self, total: int) -> list[float]:
        """The samples added after :attr:`total` was ``total`` (the kept ones only)."""
        kept = len(self._samples)
        new = min(self.total - total, kept)
        return list(itertools.islice(self._samples, kept - new, None)) if new > 0 else []

    def percentiles_ms(self) -> list[float] | None:
        """``[p50, p99]`` in milliseconds, None before the first sample."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        n = len(ordered)
        return [round(ordered[math.ceil(q * n) - 1] * 1000, 2) for q in (0.5, 0.99)]  # nearest rank
