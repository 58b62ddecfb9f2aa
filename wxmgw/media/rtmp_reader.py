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
from typing import Final

import gevent

from wxmgw.codecs.h264 import NAL_IDR, NAL_PPS, NAL_SPS, AvcConfig, nal_type, split_avcc
from wxmgw.errors import MediaError, ParseError
from wxmgw.media.clock import AudioFramer, ClockRules, LiveTimeline
from wxmgw.media.endpoint import EventCallback, RtmpEndpoint
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame, Pcm, VideoFrame
from wxmgw.media.transcode import AudioDecoder, DroppedFrame
from wxmgw.rtmp.chunk import AUDIO, DEFAULT_LIMITS, VIDEO, Message, RtmpLimits
from wxmgw.rtmp.client import RtmpClient, RtmpError
from wxmgw.rtmp.flv import (
    END_OF_SEQUENCE,
    SEQUENCE_HEADER,
    AacPacket,
    AvcPacket,
    ConfigRefused,
    audio_codec,
    avc_config,
    video_codec,
)

#: An audio timestamp later than the sample count by more than this is a gap.
AUDIO_GAP: Final = 0.2
#: Media arriving this much later than its FLV timeline says (the timeline
#: jumped back, the server stalled) re-anchors the timeline at its arrival.
MAX_LAG: Final = 0.5
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
        self._on_video = on_video
        self._on_audio = on_audio
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._reported: set[tuple[str, str]] = set()
        self._flv: _FlvToFrames | None = None  # the session's
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
            flv = self._flv = _FlvToFrames(self.audio_rate, self.limits.max_backlog)
            dropping = False
            while True:
                message = client.read()
                if message.type_id not in (AUDIO, VIDEO) or not message.payload:
                    continue
                self.stats.packets += 1
                self.stats.bytes += len(message.payload)
                read = time.perf_counter()
                dropped = flv.audio_dropped
                self._convert(flv, message, time.monotonic())
                self._took("video" if message.type_id == VIDEO else "audio", read)
                if flv.audio_dropped != dropped:
                    dropping = True
                elif dropping and message.type_id == AUDIO:
                    dropping = False
                    self._caught_up(flv)
        finally:
            self._past, self._flv = (self.audio_dropped, self.behind), None
            client.close()

    def _caught_up(self, flv: _FlvToFrames) -> None:
        self._event("caught_up", audio_dropped_ms=round(flv.audio_dropped * 1000),
                    behind_ms=round(flv.timeline.behind * 1000))

    def _supported(self, kind: str, codec: str) -> bool:
        if codec in ("h264", "aac"):
            return True
        if (kind, codec) not in self._reported:
            self._reported.add((kind, codec))
            self._event("unsupported_codec", kind=kind, codec=codec)
        return False

    def _convert(self, flv: _FlvToFrames, message: Message, arrival: float) -> None:
        kind, timestamp, payload = message.type_id, message.timestamp, message.payload
        try:
            if kind == VIDEO:
                codec = video_codec(payload[0])
                if codec is None or not self._supported("video", codec):
                    return
                video = flv.video(timestamp, payload, arrival)
                if video is not None:
                    self.stats.frames += 1
                    self._on_video(video)
            else:
                codec = audio_codec(payload[0])
                if not self._supported("audio", codec):
                    return
                for audio in flv.audio(timestamp, payload, arrival):
                    self.stats.frames += 1
                    self._on_audio(audio)
        except ConfigRefused as e:
            self.stats.configs_refused += 1
            self.stats.last_error = reason = str(e)
            track = "video" if kind == VIDEO else "audio"
            if (track, reason) not in self._reported:
                self._reported.add((track, reason))
                self._on_event("track_refused", {"kind": track, "reason": reason})
        except DroppedFrame as e:
            self.stats.frames_dropped += 1
            self.stats.last_error = str(e)
        except (ParseError, MediaError) as e:
            self.stats.errors += 1
            self.stats.last_error = str(e)


class _FlvToFrames:
    """One RTMP session's tag bodies to frames: timestamps, avcC, AAC decoding.

    A refused sequence header leaves its track without a config: its frames
    are skipped until a valid header comes. Audio behind live by more than
    ``max_backlog`` is dropped (:attr:`audio_dropped`, seconds).
    """

    def __init__(self, audio_rate: int, max_backlog: float) -> None:
        self.timeline = LiveTimeline(MAX_LAG, tolerance=max_backlog)
        self._avc: AvcConfig | None = None
        self._decoder: AudioDecoder | None = None
        self._refused = {"video": False, "audio": False}
        self._rate = audio_rate
        self._framer = AudioFramer(audio_rate * AUDIO_FRAME_SAMPLES // AUDIO_RATE, audio_rate,
                                   ClockRules(gap=AUDIO_GAP, backlog=max_backlog))

    @property
    def audio_dropped(self) -> float:
        return self._framer.clock.backlog_dropped / self._rate

    def video(self, dts_ms: int, body: bytes, arrival: float) -> VideoFrame | None:
        """An AVC tag body (E.4.3.1 AVCVIDEOPACKET): a frame, or None for a header or an end."""
        packet = AvcPacket.parse(body)
        if packet.packet_type == SEQUENCE_HEADER:
            self._avc = None
            self._refused["video"] = True
            self._avc = avc_config(packet.data)
            self._refused["video"] = False
            return None
        if packet.packet_type == END_OF_SEQUENCE:
            return None
        if self._avc is None:
            if self._refused["video"]:
                return None
            raise ParseError("H.264 frame before its sequence header")
        nalus = split_avcc(packet.data, self._avc.length_size)
        types = {nal_type(n) for n in nalus}
        keyframe = NAL_IDR in types
        if keyframe and not {NAL_SPS, NAL_PPS} <= types:
            nalus = [*self._avc.sps, *self._avc.pps, *nalus]
        ts = self.timeline.stamp(dts_ms, arrival) + packet.composition_time / 1000
        return VideoFrame(nalus, ts, keyframe) if nalus else None

    def audio(self, ms: int, body: bytes, arrival: float) -> list[AudioFrame]:
        """An AAC tag body (E.4.2.1 AACAUDIODATA): the 20 ms frames it completes."""
        packet = AacPacket.parse(body)
        if packet.packet_type == SEQUENCE_HEADER:
            self._decoder = None
            self._refused["audio"] = True
            try:
                self._decoder = AudioDecoder("AAC", extradata=packet.data, out_rate=self._rate)
            except (ParseError, MediaError) as e:
                raise ConfigRefused(f"AudioSpecificConfig refused: {e}") from e
            self._refused["audio"] = False
            return []
        if self._decoder is None:
            if self._refused["audio"]:
                return []
            raise ParseError("AAC frame before its AudioSpecificConfig")
        ts = self.timeline.stamp(ms, arrival)
        pcm: Pcm = self._decoder.decode(packet.data)
        return self._framer.push(pcm, ts)
