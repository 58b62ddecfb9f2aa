"""The gateway's audio timing rules, in one place: sample clocks, framers, live timelines.

Audio is counted, not stamped: RTP timestamps are sampling instants (RFC 3550
§5.1) and an FLV stream's AAC frames follow each other without holes, so a
stream's media time advances by its samples, not by the timestamps that come
with them (1 ms FLV timestamps, capture times mapped from RTCP, arrival).
Those timestamps only say when the count has lost its way. Every place that
frames or stamps audio (the RTMP pull, the RTP senders and receivers, the FLV
muxer's interleaver and its publication) asks a :class:`SampleClock` where a
chunk stamped ``ts`` belongs, with :class:`ClockRules` that say how far off
it may be:

* within the rules, the chunk **continues** the count (a timestamp's jitter
  moves nothing);
* later than ``gap``: a **gap** in the source (loss, a pause, a reconnect):
  the count jumps to it;
* earlier than ``resync``: the source's timeline **jumped back** (a new
  source, a new RTCP mapping): the count follows it;
* earlier than ``backlog``: the chunk is **backlog**, audio from before where
  the count already is (a live server's burst, a clock that runs fast): it is
  dropped, so audio older than live is not kept as latency.

:class:`LiveTimeline` puts an RTMP session's FLV timestamps on the gateway's
clock so that media is never stamped later than it arrived: a live server that
replays its GOP cache when a player joins (node-media-server, SRS with
``gop_cache on``, most cloud live services: the seconds since the last
keyframe, in one burst) or an uplink that catches up after a stall delivers
old media fast, and taking its FLV timeline as it comes would put every later
frame that far ahead of real time for the rest of the session.

Everything here is pure: times are passed in, nothing reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Final

import numpy as np

from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_FRAME_SECONDS, AudioFrame, Pcm

_NO_SAMPLES: Final[Pcm] = np.zeros(0, np.int16)


class Placement(Enum):
    """Where a chunk stamped ``ts`` goes on a :class:`SampleClock` (see the module docstring)."""

    NEXT = "next"
    GAP = "gap"
    RESYNC = "resync"
    BACKLOG = "backlog"


@dataclass(frozen=True, slots=True)
class ClockRules:
    """How far (seconds) a chunk's timestamp may be from the count before it moves it.

    ``gap``: later than the count by more than this, the count jumps ahead.
    ``resync``: earlier by more than this, the count moves back to it.
    ``backlog``: earlier by more than this (and not past ``resync``), the
    chunk is dropped. Infinity disables a rule.
    """

    gap: float
    resync: float = math.inf
    backlog: float = math.inf


#: Audio decoded from RTP (the MAS's mix, a member): it follows the capture
#: times the session maps (RTCP sender reports, arrival) when they are more
#: than half a frame from the count, either way (loss, a new source or mapping).
RTP_RULES: Final = ClockRules(gap=AUDIO_FRAME_SECONDS / 2, resync=AUDIO_FRAME_SECONDS / 2)


class SampleClock:
    """A sample count at ``rate`` on a media timeline: the time of each sample counted.

    ``start`` is the media time of sample 0 and moves when the count jumps or
    follows the source; :attr:`next` is the time of the next sample. Counts
    the jumps (``gaps``, ``resyncs``) and the samples dropped as backlog.
    """

    __slots__ = ("backlog_dropped", "count", "gaps", "rate", "resyncs", "rules", "start")

    def __init__(self, rate: int, rules: ClockRules) -> None:
        self.rate = rate
        self.rules = rules
        self.start: float | None = None
        self.count = 0
        self.gaps = 0
        self.resyncs = 0
        self.backlog_dropped = 0

    @property
    def next(self) -> float:
        """The media time of the next sample; only once started."""
        assert self.start is not None
        return self.start + self.count / self.rate

    def time_of(self, sample: int) -> float:
        """The media time of sample number ``sample`` of the count."""
        assert self.start is not None
        return self.start + sample / self.rate

    def place(self, ts: float, samples: int = 0) -> Placement:
        """Where ``samples`` samples stamped ``ts`` go; the count follows a gap or a resync.

        The first chunk starts the clock. A chunk placed as ``BACKLOG``
        must not be counted; its samples are added to ``backlog_dropped``.
        """
        if self.start is None:
            self.start = ts - self.count / self.rate
            return Placement.NEXT
        off = ts - self.next
        rules = self.rules
        if off > rules.gap:
            self.start += off
            self.gaps += 1
            return Placement.GAP
        if -off > rules.resync:
            self.start += off
            self.resyncs += 1
            return Placement.RESYNC
        if -off > rules.backlog:
            self.backlog_dropped += samples
            return Placement.BACKLOG
        return Placement.NEXT

    def advance(self, samples: int) -> None:
        self.count += samples


class PcmFramer:
    """Accumulates mono PCM of any length and cuts frames of ``size`` samples (20 ms at 48 kHz)."""

    __slots__ = ("_pending", "_size")

    def __init__(self, size: int = AUDIO_FRAME_SAMPLES) -> None:
        self._size = size
        self._pending: Pcm = _NO_SAMPLES

    @property
    def pending(self) -> int:
        """Samples held for the next frame."""
        return len(self._pending)

    def push(self, pcm: Pcm) -> list[Pcm]:
        """Append ``pcm``; return every complete frame, oldest first.

        The frames are views of one array of the framer's own, never of
        ``pcm``: the caller may reuse its buffer.
        """
        size = self._size
        pending = self._pending
        buf = np.concatenate((pending, pcm)) if len(pending) else pcm.copy()
        cut = len(buf) - len(buf) % size
        self._pending = buf[cut:]
        return [buf[i : i + size] for i in range(0, cut, size)]


class AudioFramer:
    """Decoded PCM stamped with its media time in, ``size``-sample frames stamped by the count out.

    A chunk's samples continue those before it unless the :class:`SampleClock`
    says otherwise; the samples the framer holds move with the count. A chunk
    placed as backlog is dropped whole.
    """

    __slots__ = ("_framer", "_size", "clock")

    def __init__(self, size: int, rate: int, rules: ClockRules) -> None:
        self.clock = SampleClock(rate, rules)
        self._framer = PcmFramer(size)
        self._size = size

    def push(self, pcm: Pcm, ts: float, arrived: float = 0.0) -> list[AudioFrame]:
        """The frames ``pcm`` (stamped ``ts``) completes, oldest first; none if it is backlog."""
        clock = self.clock
        if clock.place(ts, len(pcm)) is Placement.BACKLOG:
            return []
        clock.advance(len(pcm))
        chunks = self._framer.push(pcm)
        if not chunks:
            return []
        first = clock.count - self._framer.pending - len(chunks) * self._size
        return [AudioFrame(chunk, clock.time_of(first + i * self._size), arrived)
                for i, chunk in enumerate(chunks)]


class LiveTimeline:
    """One RTMP session's FLV timeline on the gateway's clock, at live.

    A message of FLV time ``ms`` that arrived at ``arrival`` is stamped
    ``anchor + ms / 1000``. The anchor starts at the first message's
    ``arrival - ms / 1000`` and moves back, to a message's own, when that
    message came more than ``tolerance`` earlier than the anchor says: media a
    server replays in a burst (its GOP cache when a player joins, an uplink
    catching up) is stamped as it arrives, compressed, instead of ahead of
    real time. Within ``tolerance`` the anchor stays: audio and video come
    with different delays (the publisher's AAC encoder and interleaving hold
    audio some tens of milliseconds), and an anchor that followed the most
    timely message would move the video against the counted audio. So no
    message is stamped more than ``tolerance`` after it arrived.

    A message later than the anchor says by more than ``max_lag`` (the FLV
    timeline jumped back, or the server stalled that long) re-anchors at its
    arrival: the stall is not kept as latency either (``reanchors`` counts
    those). Otherwise stamps never go back: when a burst moves the anchor back,
    what follows is held at the last stamp until the timeline reaches it.
    :attr:`behind` adds up how far the anchor moved back: how far behind live
    the media that came in bursts was.
    """

    __slots__ = ("_anchor", "_last", "_max_lag", "_tolerance", "behind", "reanchors")

    def __init__(self, max_lag: float, tolerance: float = 0.0) -> None:
        self._max_lag = max_lag
        self._tolerance = tolerance
        self._anchor: float | None = None
        self._last = -math.inf
        self.behind = 0.0
        self.reanchors = 0

    def stamp(self, ms: int, arrival: float) -> float:
        """The media time of a message of FLV time ``ms`` (its DTS) that arrived at ``arrival``."""
        offset = arrival - ms / 1000
        anchor = self._anchor
        if anchor is None:
            anchor = self._anchor = offset
        elif offset < anchor - self._tolerance:
            self.behind += anchor - offset
            anchor = self._anchor = offset
        elif offset - anchor > self._max_lag:
            self.reanchors += 1
            anchor = self._anchor = offset
            self._last = -math.inf  # a new timeline: it may start before the old one
        ts = self._last = max(anchor + ms / 1000, self._last)
        return ts
