"""RTMP push on the gevent hub: H.264 and AAC as FLV tags, published by our RTMP client.

The FLV tag bodies are made by :mod:`wxmgw.rtmp.flv`, not by FFmpeg's FLV
muxer: that muxer fixes a publication's streams and sequence headers at its
header, so adding, switching or removing video would end the publication,
and players stop at its end (nginx-rtmp sends them StreamEOF). Written by
hand, a publication lasts: a new video source gets a fresh sequence header
before its first keyframe, and removing video is just sending no more video
tags.

Each tag goes out as one RTMP message through
:class:`~wxmgw.rtmp.client.RtmpClient`, from the caller's greenlet (the FLV
publisher's, which waits on its sources and writes: no queue, no thread, as
mediamtx's ``from_stream.go`` writes from the reader's callback). Every send
has a deadline, so a live server that accepts TCP but stops reading ends the
publication like any other failure. AAC is encoded by FFmpeg (PyAV).
"""

from __future__ import annotations

import time
from typing import Final

import av.error

from wxmgw.codecs.h264 import NAL_PPS, NAL_SPS, AvcConfig, nal_type, to_avcc
from wxmgw.errors import MediaError, ParseError
from wxmgw.media.clock import ClockRules, SampleClock
from wxmgw.media.endpoint import EventCallback, RtmpEndpoint, RtmpStats
from wxmgw.media.frames import AUDIO_RATE, AudioFrame, Pcm, VideoFrame
from wxmgw.media.transcode import AudioEncoder
from wxmgw.rtmp import amf0, flv
from wxmgw.rtmp.chunk import AUDIO, DATA_AMF0, DEFAULT_LIMITS, VIDEO, RtmpLimits
from wxmgw.rtmp.client import RtmpClient, RtmpError
from wxmgw.supervise import CrashReport, Worker

#: An audio timestamp further than this from the sample count moves the count (a gap, a jump).
_AUDIO_RULES: Final = ClockRules(gap=0.2, resync=0.2)
#: What ends a publication (it is retried).
_SESSION_ERRORS: Final = (OSError, RtmpError, ParseError, MediaError, av.error.FFmpegError)
#: onMetaData codec ids (FLV spec E.4.2.1, E.4.3.1).
_AUDIO_METADATA: Final[dict[str, float | bool]] = {
    "audiocodecid": 10.0,  # AAC
    "audiosamplesize": 16.0,
    "stereo": False,
}
_VIDEO_METADATA: Final[dict[str, float | bool]] = {"videocodecid": 7.0}  # AVC


class RtmpWriter(RtmpEndpoint):
    """Publishes H.264 and AAC-LC (encoded here from PCM) to an RTMP URL, as one publication.

    A writer opens its publication on the first audio, or on the first
    keyframe that comes with (or after) an SPS and a PPS: a stream whose
    video has not come yet plays its audio (silence, from
    :class:`~wxmgw.legs.flvpush.FlvPublisher`), and its video starts at a
    keyframe with a sequence header. The publication then lasts until
    :meth:`close` or a failure: :meth:`set_video` adds, switches or removes
    video inside it (players keep playing). A
    keyframe whose SPS/PPS differ from those last sent gets a new AVC sequence
    header first. ``audio=False`` makes a video-only publication.

    ``write_*`` and :meth:`set_video` send from the caller's greenlet, one
    caller at a time; opening a publication and each send are bounded by
    ``timeout`` (the send deadline), what the server sends by ``limits``.
    Timestamps are the callers' milliseconds, rebased so each publication
    starts at 0 and kept non-decreasing per stream; tags go out in the order
    written (the caller interleaves). A failure ends the publication; writes
    are skipped until the next one may be tried (after a
    :class:`~wxmgw.media.endpoint.Backoff` delay), and it starts again at a
    keyframe with fresh sequence headers. :meth:`close` ends the publication.

    Events: ``connected`` (``video``, ``audio``), ``disconnected`` (``error``,
    ``retry_in``), ``crashed`` (the publication's listener, a
    :class:`~wxmgw.supervise.Worker`).

    :attr:`latency` times frames that came from the network (``arrived``)
    from their arrival to their tag sent: a video frame's own tag; for audio,
    the AAC tags a 20 ms frame completes (the up to one AAC frame of samples
    the encoder waits for before that is not in it).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_event: EventCallback,
        video: bool = True,
        audio: bool = True,
        timeout: float = 10.0,
        aac_rate: int = AUDIO_RATE,
        limits: RtmpLimits = DEFAULT_LIMITS,
    ) -> None:
        if not (video or audio):
            raise ValueError("a writer needs at least one stream")
        super().__init__(url, name, on_event)
        self.audio = audio
        self.video = video
        self.aac_rate = aac_rate
        self.limits = limits
        self._timeout = timeout
        self._publication: _Publication | None = None
        self._retry_at = 0.0
        self._sps: bytes | None = None
        self._pps: bytes | None = None

    def write_video(self, frame: VideoFrame, pts_ms: int) -> None:
        """Send an access unit (SPS and PPS in-band before keyframes) as a video tag."""
        if not self.video or self._closing:
            return
        self._remember_parameter_sets(frame)
        try:
            publication = self._publication
            if publication is None and frame.keyframe and self._sps and self._pps:
                publication = self._open(pts_ms)
            if publication is not None and publication.write_video(
                frame, pts_ms, self._sps, self._pps
            ):
                self._written("video", frame.arrived)
        except _SESSION_ERRORS as e:
            self._lost(e)

    def write_audio(self, frame: AudioFrame, pts_ms: int) -> None:
        """Encode 48 kHz mono PCM and send the AAC tags it completes."""
        if not self.audio or self._closing:
            return
        try:
            publication = self._publication or self._open(pts_ms)
            if publication is not None:
                tags = publication.write_audio(frame.pcm, pts_ms)
                self._written("audio", frame.arrived if tags else 0.0)
        except _SESSION_ERRORS as e:
            self._lost(e)

    def set_video(self, video: bool) -> None:
        """Video from a new source from here on (``True``), or none (``False``).

        The publication goes on. A new source's video starts at its first
        keyframe, with the SPS/PPS it carries as a fresh sequence header; so
        ``set_video(True)`` while video is on switches sources.
        """
        if not (video or self.video) or self._closing:
            return
        self.video = video
        self._sps = self._pps = None
        try:
            if self._publication is not None:
                self._publication.set_video(video)
        except _SESSION_ERRORS as e:
            self._lost(e)

    def close(self) -> None:
        """End the publication; later writes are ignored."""
        self._closing = True
        self._end()

    def _lost(self, error: BaseException) -> None:
        self._end()
        if not self._closing:  # a send that close() cut short is no failure
            self._retry_at = time.monotonic() + self._failed(error)

    def _written(self, kind: str, arrived: float) -> None:
        """A frame is out: count it, and time it when it came from the network."""
        self.stats.frames += 1
        if arrived:
            self._took(kind, arrived)

    def _remember_parameter_sets(self, frame: VideoFrame) -> None:
        for nalu in frame.nalus:
            kind = nal_type(nalu)
            if kind == NAL_SPS:
                self._sps = nalu
            elif kind == NAL_PPS:
                self._pps = nalu

    def _open(self, base_ms: int) -> _Publication | None:
        if time.monotonic() < self._retry_at:
            return None
        encoder = AudioEncoder("AAC", self.aac_rate) if self.audio else None
        client = RtmpClient(self.url, self._timeout, self.limits)
        try:
            client.publish()
            # The server took the publication: a session, even if its first tags fail.
            self._connected()
            self._event("connected", video=self.video, audio=self.audio)
            self._publication = _Publication(
                client, encoder, self.video, base_ms, self.stats, self._crashed
            )
        except BaseException:
            client.close()
            raise
        return self._publication

    def _end(self) -> None:
        publication, self._publication = self._publication, None
        if publication is not None:
            publication.close()


class _Publication:
    """One RTMP publication: the FLV tags written so far and their timestamp state.

    It starts with onMetaData and the AAC sequence header; onMetaData is sent
    again whenever video comes or goes, for players that join later
    (nginx-rtmp keeps the last one for them). A greenlet reads what the
    server says meanwhile (acknowledgements, pings, an error status): a
    failure it sees ends the publication at the next write. So does an
    unexpected exception in it, reported to ``on_crash`` (the listener is
    restarted meanwhile, for a writer that has nothing to write).
    """

    def __init__(
        self,
        client: RtmpClient,
        encoder: AudioEncoder | None,
        video: bool,
        base_ms: int,
        stats: RtmpStats,
        on_crash: CrashReport,
    ) -> None:
        self._client = client
        self._failure: BaseException | None = None
        self._on_crash = on_crash
        self._stats = stats
        self._base = base_ms
        self._encoder = encoder
        self._video = video
        self._avc: tuple[bytes, bytes] | None = None  # SPS/PPS of the last sequence header
        self._last_video = 0
        self._last_audio = 0
        self._audio_clock = SampleClock(AUDIO_RATE, _AUDIO_RULES)
        self._audio_out = 0
        self._metadata(0)
        if encoder is not None:
            self._tag(AUDIO, 0, flv.aac_sequence_header(encoder.extradata))
        # Last: a publication whose first tags fail is never made, and so never
        # closed; a listener of it would read its closed client for ever.
        self._listener = Worker(self._listen, self._listener_crashed)

    def set_video(self, video: bool) -> None:
        """A new video source (its keyframe will bring a sequence header), or none."""
        if video != self._video:
            self._video = video
            self._metadata(max(self._last_audio, self._last_video))
        self._avc = None

    def write_video(
        self, frame: VideoFrame, pts_ms: int, sps: bytes | None, pps: bytes | None
    ) -> bool:
        """Write a video tag, after a sequence header if it is due; False if skipped.

        After a new source (or none yet), frames wait for a keyframe with known SPS/PPS.
        """
        if not self._video:
            return False
        ms = self._last_video = max(pts_ms - self._base, self._last_video)
        if frame.keyframe and sps and pps and self._avc != (sps, pps):
            record = bytes(AvcConfig.from_parameter_sets(sps, pps))
            self._tag(VIDEO, ms, flv.avc_sequence_header(record))
            self._avc = (sps, pps)
        if self._avc is None:
            return False
        self._tag(VIDEO, ms, flv.avc_frame(to_avcc(frame.nalus), frame.keyframe))
        return True

    def write_audio(self, pcm: Pcm, pts_ms: int) -> int:
        """Encode to AAC and write the AAC frames completed; how many.

        AAC packet n carries the samples from packet n-1 on (the encoder's delay).
        """
        assert self._encoder is not None, "audio written to a video-only publication"
        clock = self._audio_clock
        clock.place(pts_ms / 1000)
        clock.advance(len(pcm))
        frames = self._encoder.encode(pcm)
        for data in frames:
            start = clock.time_of((self._audio_out - 1) * self._encoder.frame_samples)
            ms = self._last_audio = max(round(start * 1000) - self._base, self._last_audio)
            self._audio_out += 1
            self._tag(AUDIO, ms, flv.aac_frame(data))
        return len(frames)

    def close(self) -> None:
        self._listener.kill()
        self._client.close()

    def _listener_crashed(self, error: BaseException, retry_in: float) -> None:
        self._failure = RtmpError(f"listener crashed: {type(error).__name__}: {error}")
        self._on_crash(error, retry_in)

    def _listen(self) -> None:
        while True:
            try:
                self._client.read()
            except TimeoutError:
                continue  # the server has nothing to say: fine for a publisher
            except _SESSION_ERRORS as e:
                self._failure = e
                self._client.close()
                return

    def _metadata(self, ms: int) -> None:
        fields: dict[str, float | bool] = {}
        if self._encoder is not None:
            fields.update(_AUDIO_METADATA, audiosamplerate=float(self._encoder.rate))
        if self._video:
            fields.update(_VIDEO_METADATA)
        # As FFmpeg publishes it: the server keeps it for players that join later.
        self._tag(DATA_AMF0, ms, amf0.encode("@setDataFrame") + flv.on_metadata(fields))

    def _tag(self, kind: int, ms: int, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._client.send(kind, ms, data)
        self._stats.packets += 1
        self._stats.bytes += len(data)
