# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
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

Every pulled AAC frame and every 20 ms audio packet of a leg passes through
here, so the module is typed Cython (``clock.pyi`` gives its types): the
clocks' arithmetic and their counters are C doubles and integers, with no
Python object per call but the frames handed out.
"""


from enum import Enum

import numpy as np

from wxmgw.media.frames import AUDIO_FRAME_SECONDS, NO_SAMPLES, AudioFrame

from libc.math cimport INFINITY



class Placement(Enum):
    """Where a chunk stamped ``ts`` goes on a :class:`SampleClock` (see the module docstring)."""

    NEXT = "next"
    GAP = "gap"
    RESYNC = "resync"
    BACKLOG = "backlog"


cdef object _NEXT = Placement.NEXT
cdef object _GAP = Placement.GAP
cdef object _RESYNC = Placement.RESYNC
cdef object _BACKLOG = Placement.BACKLOG


cdef class ClockRules:
    """How far (seconds) a chunk's timestamp may be from the count before it moves it.

    ``gap``: later than the count by more than this, the count jumps ahead.
    ``resync``: earlier by more than this, the count moves back to it.
    ``backlog``: earlier by more than this (and not past ``resync``), the
    chunk is dropped. Infinity disables a rule. Immutable.
    """

    cdef readonly double gap, resync, backlog

    def __init__(self, double gap, double resync=INFINITY, double backlog=INFINITY):
        self.gap = gap
        self.resync = resync
        self.backlog = backlog

    def __repr__(self):
        return f"ClockRules(gap={self.gap}, resync={self.resync}, backlog={self.backlog})"

    def __eq__(self, other):
        if not isinstance(other, ClockRules):
            return NotImplemented
        o = <ClockRules>other
        return (self.gap, self.resync, self.backlog) == (o.gap, o.resync, o.backlog)

    def __hash__(self):
        return hash((self.gap, self.resync, self.backlog))


#: Audio decoded from RTP (the MAS's mix, a member): it follows the capture
#: times the session maps (RTCP sender reports, arrival) when they are more
#: than half a frame from the count, either way (loss, a new source or mapping).
RTP_RULES = ClockRules(gap=AUDIO_FRAME_SECONDS / 2, resync=AUDIO_FRAME_SECONDS / 2)


cdef class SampleClock:
    """A sample count at ``rate`` on a media timeline: the time of each sample counted.

    ``start`` is the media time of sample 0 and moves when the count jumps or
    follows the source; :attr:`next` is the time of the next sample. Counts
    the jumps (``gaps``, ``resyncs``) and the samples dropped as backlog.
    """

    cdef readonly int rate
    cdef readonly ClockRules rules
    cdef double _start
    cdef bint _started
    cdef public long long count, gaps, resyncs, backlog_dropped

    def __init__(self, int rate, ClockRules rules not None):
        self.rate = rate
        self.rules = rules

    @property
    def start(self):
        """The media time of sample 0, None before the first chunk."""
        return self._start if self._started else None

    @property
    def next(self):
        """The media time of the next sample; only once started."""
        return self.time_of(self.count)

    cpdef double time_of(self, long long sample):
        """The media time of sample number ``sample`` of the count; only once started."""
        assert self._started
        return self._start + <double>sample / self.rate

    cpdef object place(self, double ts, long long samples=0):
        """Where ``samples`` samples stamped ``ts`` go; the count follows a gap or a resync.

        The first chunk starts the clock. A chunk placed as ``BACKLOG``
        must not be counted; its samples are added to ``backlog_dropped``.
        """
        if not self._started:
            self._start = ts - <double>self.count / self.rate
            self._started = True
            return _NEXT
        cdef double off = ts - self.time_of(self.count)
        cdef ClockRules rules = self.rules
        if off > rules.gap:
            self._start += off
            self.gaps += 1
            return _GAP
        if -off > rules.resync:
            self._start += off
            self.resyncs += 1
            return _RESYNC
        if -off > rules.backlog:
            self.backlog_dropped += samples
            return _BACKLOG
        return _NEXT

    cpdef void advance(self, long long samples):
        self.count += samples


cdef class PcmFramer:
    """Accumulates mono PCM of any length and cuts frames of ``size`` samples (20 ms at 48 kHz)."""

    cdef Py_ssize_t _size
    cdef object _pending

    def __init__(self, Py_ssize_t size=960):
        self._size = size
        self._pending = NO_SAMPLES

    @property
    def pending(self):
        """Samples held for the next frame."""
        return len(self._pending)

    cpdef list push(self, pcm):
        """Append ``pcm``; return every complete frame, oldest first.

        The frames are views of one array of the framer's own, never of
        ``pcm``: the caller may reuse its buffer.
        """
        cdef Py_ssize_t size = self._size
        pending = self._pending
        cdef Py_ssize_t held = len(pending), n = held + len(pcm)
        # What np.concatenate does, without its Python dispatcher (a frame per call).
        buf = np.empty(n, pcm.dtype)
        buf[:held] = pending
        buf[held:] = pcm
        cdef Py_ssize_t cut = n - n % size
        self._pending = buf[cut:]
        return [buf[i : i + size] for i in range(0, cut, size)]


cdef class AudioFramer:
    """Decoded PCM stamped with its media time in, ``size``-sample frames stamped by the count out.

    A chunk's samples continue those before it unless the :class:`SampleClock`
    says otherwise; the samples the framer holds move with the count. A chunk
    placed as backlog is dropped whole.
    """

    cdef readonly SampleClock clock
    cdef PcmFramer _framer
    cdef Py_ssize_t _size

    def __init__(self, Py_ssize_t size, int rate, ClockRules rules not None):
        self.clock = SampleClock(rate, rules)
        self._framer = PcmFramer(size)
        self._size = size

    def push(self, pcm, double ts, double arrived=0.0):
        """The frames ``pcm`` (stamped ``ts``) completes, oldest first; none if it is backlog."""
        cdef SampleClock clock = self.clock
        cdef Py_ssize_t n = len(pcm)
        if clock.place(ts, n) is _BACKLOG:
            return []
        clock.advance(n)
        chunks = self._framer.push(pcm)
        if not chunks:
            return []
        cdef Py_ssize_t size = self._size
        cdef long long first = clock.count - len(self._framer._pending) - len(chunks) * size
        return [AudioFrame(chunk, clock.time_of(first + i * size), arrived)
                for i, chunk in enumerate(chunks)]


cdef class LiveTimeline:
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


    cdef double _anchor, _last, _max_lag, _tolerance
    cdef bint _anchored
    cdef public double behind
    cdef public long long reanchors

    def __init__(self, double max_lag, double tolerance=0.0):
        self._max_lag = max_lag
        self._tolerance = tolerance
        self._last = -INFINITY

    cpdef double stamp(self, long long ms, double arrival):
        """The media time of a message of FLV time ``ms`` (its DTS) that arrived at ``arrival``."""
        cdef double media = ms / 1000.0
        cdef double offset = arrival - media
        if not self._anchored:
            self._anchor = offset
            self._anchored = True
        elif offset < self._anchor - self._tolerance:
            self.behind += self._anchor - offset
            self._anchor = offset
        elif offset - self._anchor > self._max_lag:
            self.reanchors += 1
            self._anchor = offset
            self._last = -INFINITY  # a new timeline: it may start before the old one
        cdef double ts = self._anchor + media
        if ts < self._last:
            ts = self._last
        self._last = ts
        return ts
