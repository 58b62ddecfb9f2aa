"""RTMP push through PyAV (FFmpeg) in a worker thread: frames to FLV.

A writer takes its callers' millisecond timestamps and rebases them so each
publication starts at 0.
"""

from __future__ import annotations

import io
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import av
import av.error
from gevent.threadpool import ThreadPool

from wxmgw.errors import MediaError, ParseError
from wxmgw.media.frames import AUDIO_RATE, AudioFrame, Pcm, VideoFrame
from wxmgw.media.transcode import AudioEncoder
from wxmgw.media.worker import EventCallback, RtmpStats, _Worker
from wxmgw.rtp.h264 import NAL_PPS, NAL_SPS, AvcConfig, nal_type, to_avcc

_MS: Final = Fraction(1, 1000)
#: An audio timestamp further than this from the sample counter is a gap.
_AUDIO_RESYNC: Final = 0.2
#: Muxer options: no seek back to patch duration at the end (RTMP can't), and
#: at most 0.5 s of interleaving buffer so a stalled stream delays the other little.
_WRITER_OPTIONS: Final = {"flvflags": "no_duration_filesize", "max_interleave_delta": "500000"}


@dataclass(slots=True)
class _Video:
    frame: VideoFrame
    pts_ms: int


@dataclass(slots=True)
class _Audio:
    pcm: Pcm
    pts_ms: int


@dataclass(slots=True)
class _Streams:
    video: bool


_CLOSE: Final = object()


class RtmpWriter(_Worker):
    """Muxes H.264 and AAC-LC to FLV and publishes it to an RTMP URL.

    The streams of a publication are declared up front: ``video`` (H.264,
    sequence header built from the SPS/PPS seen in-band) and/or ``audio``
    (AAC-LC 48 kHz mono, encoded here from the PCM given). A publication with
    video opens on the first keyframe that comes with (or after) an SPS and a
    PPS, and audio written before it is dropped; an audio-only one opens on
    the first audio. :meth:`set_video` re-declares the streams: the current
    publication ends and the next one opens under the new declaration (players
    see the stream restart), which is how a mix stream gains or loses video.

    ``write_*`` never block: they queue for the worker thread, and when the
    queue is full (the live server is slow) the write is dropped and counted,
    and video resumes at the next keyframe. Timestamps are the callers'
    milliseconds, rebased so each publication starts at 0; each stream's are
    kept non-decreasing, and FFmpeg interleaves the two by timestamp. Frames
    are muxed with dts = pts (no B-frames). If the server drops the
    publication, the next one is tried with :class:`Backoff`, starting again
    at a keyframe with fresh sequence headers; a keyframe with new SPS/PPS
    also starts a new publication. :meth:`close` flushes what is queued and
    ends the publication.

    Events: ``connected``, ``disconnected`` (``error``, ``retry_in``).

    Limitation: PyAV opens an output's I/O with ``avio_open()`` and no
    options or interrupt callback, so FFmpeg's ``rw_timeout`` cannot be set on
    the RTMP connection: a server that accepts TCP but stops reading blocks
    the worker until the kernel gives up on the connection.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_event: EventCallback,
        video: bool = True,
        audio: bool = True,
        queue_size: int = 256,
        pool: ThreadPool | None = None,
    ) -> None:
        if not (video or audio):
            raise ValueError("a writer needs at least one stream")
        super().__init__(url, name, on_event, pool)
        self.audio = audio
        self.video = video
        self._queue: deque[object] = deque()
        self._queue_size = queue_size
        self._video_gap = False
        self._session: _FlvSession | None = None
        self._retry_at = 0.0
        self._sps: bytes | None = None
        self._pps: bytes | None = None

    # --- hub side -------------------------------------------------------------

    def write_video(self, frame: VideoFrame, pts_ms: int) -> None:
        """Queue an access unit for the FLV video stream."""
        if not self.video:
            return
        if self._video_gap and not frame.keyframe:
            self.stats.dropped += 1
            return
        self._video_gap = not self._put(_Video(frame, pts_ms))

    def write_audio(self, frame: AudioFrame, pts_ms: int) -> None:
        """Queue 48 kHz mono PCM for the AAC stream."""
        if self.audio:
            self._put(_Audio(frame.pcm, pts_ms))

    def set_video(self, video: bool) -> None:
        """Declare whether the next publication carries video (ends the current one)."""
        if video != self.video:
            self.video = video
            self._queue.append(_Streams(video))
            self._wakeup.set()

    def close(self) -> None:
        """Flush what is queued, end the publication, stop the worker."""
        if not self._closing:
            self._queue.append(_CLOSE)
        super().close()

    def _put(self, item: object) -> bool:
        if self._closing:
            return False
        if len(self._queue) >= self._queue_size:
            self.stats.dropped += 1
            return False
        self._queue.append(item)
        self._wakeup.set()
        return True

    # --- worker side ----------------------------------------------------------

    def _run(self) -> None:
        video = self.video
        try:
            while True:
                while not self._queue:
                    self._wakeup.wait()
                item = self._queue.popleft()
                if item is _CLOSE:
                    return
                if isinstance(item, _Streams):
                    video = item.video
                    self._end()
                    continue
                try:
                    self._write(item, video)
                except (av.error.FFmpegError, OSError, MediaError, ParseError) as e:
                    self._end()
                    self._retry_at = time.monotonic() + self._failed(e)
        finally:
            self._end()

    def _write(self, item: object, video: bool) -> None:
        if isinstance(item, _Video):
            self._remember_parameter_sets(item.frame)
            session = self._session
            if session is not None and item.frame.keyframe and not session.has_config(
                self._sps, self._pps
            ):
                self._end()  # new SPS/PPS: a new publication with the new sequence header
                session = None
            if session is None and item.frame.keyframe:
                session = self._open(video, item.pts_ms, item.frame)
            if session is not None and session.video is not None:
                session.write_video(item.frame, item.pts_ms)
                self.stats.frames += 1
                self._backoff.reset()
        elif isinstance(item, _Audio):
            session = self._session
            if session is None and not video:
                session = self._open(video, item.pts_ms)
            if session is not None and session.audio is not None:
                session.write_audio(item.pcm, item.pts_ms)
                self.stats.frames += 1
                self._backoff.reset()

    def _remember_parameter_sets(self, frame: VideoFrame) -> None:
        for nalu in frame.nalus:
            kind = nal_type(nalu)
            if kind == NAL_SPS:
                self._sps = nalu
            elif kind == NAL_PPS:
                self._pps = nalu

    def _open(
        self, video: bool, base_ms: int, keyframe: VideoFrame | None = None
    ) -> _FlvSession | None:
        if time.monotonic() < self._retry_at:
            return None
        avc, size = None, (0, 0)
        if video:
            if self._sps is None or self._pps is None or keyframe is None:
                return None
            avc = AvcConfig.from_parameter_sets(self._sps, self._pps)
            size = _picture_size(avc, keyframe)
        container = av.open(self.url, "w", format="flv", options=_WRITER_OPTIONS)
        self._session = _FlvSession(
            container, avc, size, AudioEncoder("AAC") if self.audio else None, base_ms, self.stats
        )
        self._connected()
        self._event("connected", video=video, audio=self.audio)
        return self._session

    def _end(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except (av.error.FFmpegError, OSError) as e:
                self.stats.last_error = str(e)


def _picture_size(avc: AvcConfig, keyframe: VideoFrame) -> tuple[int, int]:
    """Width and height of a keyframe, which FFmpeg's FLV muxer wants for onMetaData.

    FFmpeg's H.264 decoder reads them from the SPS; decoding one keyframe per
    publication costs a few milliseconds and needs no SPS parser of our own.
    """
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = bytes(avc)
    decoder.thread_count = 1
    try:
        frames = [*decoder.decode(av.Packet(to_avcc(keyframe.nalus))), *decoder.decode(None)]
    except av.error.FFmpegError as e:
        raise MediaError(f"undecodable keyframe: {e}") from e
    if not frames:
        raise MediaError("keyframe decodes to no picture")
    frame = frames[0]
    assert isinstance(frame, av.VideoFrame)
    return frame.width, frame.height


class _FlvSession:
    """One publication: an FLV output container and its timestamp state.

    PyAV creates a stream's codec parameters from a codec context, and opens
    that context (an encoder) before writing the header unless the stream was
    made from a template; so the streams are made from templates of an unopened
    throwaway FLV container, and their sequence headers set on them.
    """

    def __init__(
        self,
        container: av.container.OutputContainer,
        avc: AvcConfig | None,
        size: tuple[int, int],
        encoder: AudioEncoder | None,
        base_ms: int,
        stats: RtmpStats,
    ) -> None:
        self._container = container
        self._stats = stats
        self._base = base_ms
        self._avc = avc
        self._encoder = encoder
        self._last_video = 0
        self._last_audio = 0
        self._audio_anchor: int | None = None
        self._audio_in = 0
        self._audio_out = 0
        template = av.open(io.BytesIO(), "w", format="flv")
        self.video: av.stream.Stream | None = None
        self.audio: av.stream.Stream | None = None
        if avc is not None:
            self.video = container.add_stream_from_template(template.add_stream("h264"))
            ctx = self.video.codec_context
            ctx.extradata = bytes(avc)
            ctx.width, ctx.height = size
            self.video.time_base = _MS
        if encoder is not None:
            self.audio = container.add_stream_from_template(
                template.add_stream("aac", rate=AUDIO_RATE)
            )
            actx = self.audio.codec_context
            actx.extradata = encoder.extradata
            actx.layout = "mono"
            self.audio.time_base = _MS

    def has_config(self, sps: bytes | None, pps: bytes | None) -> bool:
        return self._avc is None or (self._avc.sps == [sps] and self._avc.pps == [pps])

    def _mux(self, stream: av.stream.Stream, data: bytes, ms: int, key: bool) -> None:
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = _MS
        packet.pts = packet.dts = ms
        packet.is_keyframe = key
        self._container.mux(packet)
        self._stats.packets += 1
        self._stats.bytes += len(data)

    def write_video(self, frame: VideoFrame, pts_ms: int) -> None:
        assert self.video is not None
        self._last_video = max(pts_ms - self._base, self._last_video)
        self._mux(self.video, to_avcc(frame.nalus), self._last_video, frame.keyframe)

    def write_audio(self, pcm: Pcm, pts_ms: int) -> None:
        """Encode to AAC; packet n carries the samples from n-1 on (the encoder's delay)."""
        assert self.audio is not None and self._encoder is not None
        counted = (self._audio_anchor or 0) + self._audio_in * 1000 // AUDIO_RATE
        if self._audio_anchor is None or abs(pts_ms - counted) > _AUDIO_RESYNC * 1000:
            self._audio_anchor = pts_ms - self._audio_in * 1000 // AUDIO_RATE
        self._audio_in += len(pcm)
        for data in self._encoder.encode(pcm):
            start = (self._audio_out - 1) * self._encoder.frame_samples * 1000 // AUDIO_RATE
            ms = max(self._audio_anchor + start - self._base, self._last_audio, 0)
            self._last_audio = ms
            self._audio_out += 1
            self._mux(self.audio, data, ms, True)

    def close(self) -> None:
        self._container.close()
