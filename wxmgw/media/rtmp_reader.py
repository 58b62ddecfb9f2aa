"""RTMP pull on the gevent hub: FLV audio and video messages to frames.

The session is :class:`~wxmgw.rtmp.client.RtmpClient`'s, in a greenlet: no
thread per stream. The messages carry FLV tag bodies (FLV spec E.4.2, E.4.3,
read by :mod:`wxmgw.rtmp.flv`): the AVC sequence header (avcC) and NAL units,
the AAC AudioSpecificConfig and raw AAC frames; AAC is decoded by FFmpeg (PyAV).

A reader stamps frames with ``ts`` on the gateway's monotonic clock: the FLV
timeline kept at live by a :class:`~wxmgw.media.clock.LiveTimeline` (a live
server may send a live stream as it comes, as nginx-rtmp does, or start a
play with a burst of its GOP cache, as node-media-server does), and audio
from a sample count rather than from the 1 ms FLV timestamps. Audio that a
burst brings from further behind live than ``limits.max_backlog`` is dropped
(:mod:`wxmgw.media.clock`); video is stamped as it arrives, so a burst's
frames go out at once, decodable from its keyframe, and what follows is live.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent

from wxmgw.errors import ParseError
from wxmgw.media.endpoint import EventCallback, RtmpEndpoint
from wxmgw.media.flvframes import AUDIO_GAP, MAX_LAG, FlvToFrames
from wxmgw.media.frames import AUDIO_RATE, AudioFrame, VideoFrame
from wxmgw.media.transcode import DroppedFrame
from wxmgw.rtmp.chunk import DEFAULT_LIMITS, RtmpLimits
from wxmgw.rtmp.client import RtmpClient, RtmpError
from wxmgw.rtmp.flv import ConfigRefused

__all__ = ["AUDIO_GAP", "MAX_LAG", "RtmpReader"]


class RtmpReader(RtmpEndpoint):
    """Pulls one RTMP stream and hands out H.264 access units and 20 ms PCM frames.

    The PCM is at ``audio_rate``: 48 kHz, as channels carry it, unless the
    caller only re-encodes it to a narrower codec and asks for that codec's rate.

    Video must be H.264 and audio AAC; another codec is reported once as the
    ``unsupported_codec`` event and its messages are skipped. A sequence
    header outside what a mini-program sends (:class:`ConfigRefused`) refuses
    its track until the next valid one, while the other track goes on: it is
    counted in ``stats.configs_refused`` and reported once per reason as the
    ``track_refused`` event (``kind``, ``reason``), which is left to the owner
    to log, with its confId/uuid. A decoded audio frame that is not what its
    config declared is dropped and counted in ``stats.frames_dropped``.

    Each keyframe handed out starts with the SPS and PPS (from the sequence
    header when the stream does not repeat them in-band), so any consumer can
    start on it.

    Events: ``connected``, ``disconnected`` (with ``error`` and ``retry_in``:
    also when the stream is not published yet), ``unsupported_codec``,
    ``crashed``, and ``caught_up`` when audio flows again after a burst whose
    backlog was dropped (``audio_dropped_ms``, ``behind_ms``: how far behind
    live the burst's media was). :attr:`audio_dropped` and :attr:`behind`
    add those up over the sessions, in seconds. The session is retried with
    :class:`~wxmgw.supervise.Backoff` until :meth:`close`; the delays start
    over after a session that lasted longer than the longest delay (a server
    that accepts and then fails at once backs off). A server past ``limits`` ends its
    session like any malformed input. Every callback runs in the reader's
    greenlet, a :class:`~wxmgw.supervise.Worker`.

    :attr:`latency` times each message from the moment it is read to the
    moment its frames' callbacks have returned (for a leg, when their RTP is
    sent): the latency the gateway adds, but for the up to 20 ms of audio the
    framer holds to cut 20 ms frames.
    """

    def __init__(
        self,
        url: str,
        *,
        on_video: Callable[[VideoFrame], None],
        on_audio: Callable[[AudioFrame], None],
        on_event: EventCallback,
        name: str,
        open_timeout: float = 10.0,
        read_timeout: float = 3.0,
        audio_rate: int = AUDIO_RATE,
        limits: RtmpLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(url, name, on_event)
        self.audio_rate = audio_rate
        self.limits = limits
        self.on_video = on_video
        self.on_audio = on_audio
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._reported: set[tuple[str, str]] = set()
        self._flv: FlvToFrames | None = None  # the session's
        self._past = (0.0, 0.0)  # audio_dropped, behind of the sessions before

    @property
    def audio_dropped(self) -> float:
        """Seconds of audio dropped as backlog, over the sessions."""
        return self._past[0] + (self._flv.audio_dropped if self._flv else 0.0)

    @property
    def behind(self) -> float:
        """Seconds the sessions' media came from behind live, in bursts."""
        return self._past[1] + (self._flv.timeline.behind if self._flv else 0.0)

    def start(self) -> None:
        if self._worker is None:
            self._worker = self._spawn(self._run)

    def close(self) -> None:
        """Stop at once: the session's socket is closed as the greenlet ends."""
        self._closing = True
        if self._worker is not None:
            self._worker.kill()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the reader has stopped; True if it has."""
        return self._worker is None or self._worker.join(timeout)

    def _run(self) -> None:
        while not self._closing:
            try:
                self._session()
                error: BaseException = EOFError("end of stream")
            except (OSError, RtmpError, ParseError) as e:
                error = e  # whatever ends a session, it is retried
            gevent.sleep(self._failed(error))

    def _session(self) -> None:
        client = RtmpClient(self.url, self._open_timeout, self.limits)
        try:
            client.play(self._read_timeout)
            self._connected()
            self._event("connected")
            flv = self._flv = FlvToFrames(self.audio_rate, self.limits.max_backlog)
            while True:
                for message in flv.deliver(self, client.receive(), time.monotonic()):
                    client.handle(message)
        finally:
            self._past, self._flv = (self.audio_dropped, self.behind), None
            client.close()

    # -- what FlvToFrames.deliver calls (its FrameOwner) -------------------------------

    def caught_up(self, flv: FlvToFrames) -> None:
        self._event("caught_up", audio_dropped_ms=round(flv.audio_dropped * 1000),
                    behind_ms=round(flv.timeline.behind * 1000))

    def unsupported(self, kind: str, codec: str) -> None:
        """A message of a codec other than H.264 or AAC: reported once per codec."""
        if (kind, codec) not in self._reported:
            self._reported.add((kind, codec))
            self._event("unsupported_codec", kind=kind, codec=codec)

    def skipped(self, kind: str, error: Exception) -> None:
        """A message whose conversion failed: counted by why, a refused config reported once."""
        self.stats.last_error = reason = str(error)
        if isinstance(error, ConfigRefused):
            self.stats.configs_refused += 1
            if (kind, reason) not in self._reported:
                self._reported.add((kind, reason))
                self._on_event("track_refused", {"kind": kind, "reason": reason})
        elif isinstance(error, DroppedFrame):
            self.stats.frames_dropped += 1
        else:
            self.stats.errors += 1
