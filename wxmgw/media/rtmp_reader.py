"""RTMP pull through PyAV (FFmpeg) in a worker thread: FLV packets to frames.

A reader stamps frames with ``ts`` on the gateway's monotonic clock: the FLV
timeline anchored at the moment its RTMP session started (nginx sends the
first packet right after the play handshake; the first packet *delivered* to
us can be up to a GOP later, because FFmpeg's stream probing buffers until
the video stream shows up), and audio from a sample counter rather than from
the 1 ms FLV timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import av
import av.error
from av.audio.codeccontext import AudioCodecContext
from gevent.threadpool import ThreadPool

from wxmgw.errors import MediaError, ParseError
from wxmgw.media.frames import AUDIO_RATE, AudioFrame, Pcm, VideoFrame
from wxmgw.media.transcode import AudioDecoder, PcmFramer
from wxmgw.media.worker import EventCallback, _Worker
from wxmgw.rtp.h264 import NAL_IDR, NAL_PPS, NAL_SPS, AvcConfig, nal_type, split_avcc

#: An audio timestamp further than this from the sample counter is a gap.
_AUDIO_RESYNC: Final = 0.2
#: Demuxer options. Probing stops as soon as the streams announced by FLV
#: metadata have shown up (``fpsprobesize=0``: no frame-rate estimation),
#: waiting at most ``analyzeduration`` for a video keyframe.
_READER_OPTIONS: Final = {"analyzeduration": "5000000", "fpsprobesize": "0", "rtmp_live": "live"}


class RtmpReader(_Worker):
    """Pulls one RTMP stream and hands out H.264 access units and 20 ms PCM frames.

    Video must be H.264 and audio AAC; another codec is reported once as the
    ``unsupported_codec`` event and its packets are skipped. Each keyframe
    handed out starts with the SPS and PPS (from the FLV sequence header when
    the stream does not repeat them in-band), so any consumer can start on it.

    Events: ``connected``, ``disconnected`` (with ``error`` and ``retry_in``:
    also when the stream is not published yet), ``unsupported_codec``. The
    session is retried with :class:`Backoff` until :meth:`close`. Callbacks
    run on the hub.
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
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__(url, name, on_event, pool)
        self._on_video = on_video
        self._on_audio = on_audio
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._reported: set[tuple[str, str]] = set()

    def _run(self) -> None:
        while not self._closing:
            try:
                self._session()
                error: BaseException = EOFError("end of stream")
            except Exception as e:  # whatever ends a session, it is retried
                error = e
            if self._closing:
                break
            self._wakeup.wait(self._failed(error))

    def _session(self) -> None:
        started = time.monotonic()
        options = {"rw_timeout": str(int(self._read_timeout * 1e6)), **_READER_OPTIONS}
        # No PyAV read timeout: its interrupt callback takes the GIL each time
        # FFmpeg polls it (every socket read, many per packet), which made the
        # worker threads and the hub fight for the GIL. FFmpeg's own rw_timeout
        # bounds each read without Python; PyAV's bounds only the open.
        container = av.open(self.url, options=options, timeout=(self._open_timeout, None))
        try:
            self._connected()
            self._backoff.reset()  # opening probed the streams: media is flowing
            flv = _FlvToFrames(started)
            streams = [s for s in container.streams if self._supported(s)]
            self._event("connected", streams=[f"{s.type}/{s.codec_context.name}" for s in streams])
            for packet in container.demux(streams):
                if self._closing:
                    return
                if packet.size == 0:  # the flush packets PyAV yields at the end
                    continue
                self.stats.packets += 1
                self.stats.bytes += packet.size
                self._convert(flv, packet)
        finally:
            container.close()

    def _supported(self, stream: av.stream.Stream) -> bool:
        wanted = {"video": "h264", "audio": "aac"}.get(stream.type)
        ctx = stream.codec_context
        codec = ctx.codec.canonical_name if ctx is not None else "unknown"
        if codec == wanted:
            return True
        if wanted and (stream.type, codec) not in self._reported:
            self._reported.add((stream.type, codec))
            self._event("unsupported_codec", kind=stream.type, codec=codec)
        return False

    def _convert(self, flv: _FlvToFrames, packet: av.Packet[av.stream.Stream]) -> None:
        try:
            if packet.is_corrupt:
                raise ParseError("packet flagged corrupt by the demuxer")
            if packet.stream.type == "video":
                video = flv.video(packet)
                if video is not None:
                    self.stats.frames += 1
                    self._inbox.post(self._on_video, video)
            else:
                for audio in flv.audio(packet):
                    self.stats.frames += 1
                    self._inbox.post(self._on_audio, audio)
        except (ParseError, MediaError) as e:
            self.stats.errors += 1
            self.stats.last_error = str(e)


class _FlvToFrames:
    """One RTMP session's packets to frames: timestamps, avcC, AAC decoding."""

    def __init__(self, started: float) -> None:
        self._anchor = started
        self._dts0: int | None = None
        self._avc: AvcConfig | None = None
        self._decoder: AudioDecoder | None = None
        self._framer = PcmFramer()
        self._audio_start = 0.0
        self._audio_in = 0
        self._audio_out = 0

    def _ts(self, packet: av.Packet[av.stream.Stream]) -> float:
        dts = packet.dts if packet.dts is not None else packet.pts
        if dts is None:
            raise ParseError("packet without timestamp")
        if self._dts0 is None:
            self._dts0 = dts
        pts = packet.pts if packet.pts is not None else dts
        return self._anchor + float((pts - self._dts0) * packet.time_base)

    @staticmethod
    def _sequence_header(packet: av.Packet[av.stream.Stream], first: bool) -> bytes | None:
        """The codec configuration a packet brings: the stream's for the first, then changes."""
        if packet.has_sidedata("new_extradata"):
            return bytes(packet.get_sidedata("new_extradata"))
        return bytes(packet.stream.codec_context.extradata or b"") if first else None

    def video(self, packet: av.Packet[av.stream.Stream]) -> VideoFrame | None:
        header = self._sequence_header(packet, self._avc is None)
        if header:
            self._avc = AvcConfig.parse(header)
        if self._avc is None:
            raise ParseError("H.264 packet before its sequence header")
        nalus = split_avcc(bytes(packet), self._avc.length_size)
        types = {nal_type(n) for n in nalus}
        keyframe = NAL_IDR in types
        if keyframe and not {NAL_SPS, NAL_PPS} <= types:
            nalus = [*self._avc.sps, *self._avc.pps, *nalus]
        return VideoFrame(nalus, self._ts(packet), keyframe) if nalus else None

    def audio(self, packet: av.Packet[av.stream.Stream]) -> list[AudioFrame]:
        ts = self._ts(packet)
        header = self._sequence_header(packet, self._decoder is None)
        if header is not None:
            ctx = packet.stream.codec_context
            assert isinstance(ctx, AudioCodecContext)
            self._decoder = AudioDecoder(
                "AAC", sample_rate=ctx.sample_rate, channels=ctx.channels, extradata=header
            )
        assert self._decoder is not None
        pcm: Pcm = self._decoder.decode(bytes(packet))
        counted = self._audio_start + self._audio_in / AUDIO_RATE
        if self._audio_in == 0 or abs(counted - ts) > _AUDIO_RESYNC:
            # First audio, or a gap or jump in the FLV timeline: follow the timeline.
            self._audio_start = ts - self._audio_in / AUDIO_RATE
        self._audio_in += len(pcm)
        frames = []
        for chunk in self._framer.push(pcm):
            frames.append(AudioFrame(chunk, self._audio_start + self._audio_out / AUDIO_RATE))
            self._audio_out += len(chunk)
        return frames
