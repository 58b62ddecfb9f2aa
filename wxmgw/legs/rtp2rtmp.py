"""Rtp2rtmp: a conference member's RTP from the MAS to an RTMP stream mini-programs play.

Two receive-only :class:`~wxmgw.rtp.session.RtpSession` s, one per allocated
port pair, learn the MAS's address from the first packet. Video is
depacketized (RFC 6184) into access units on the member's video channel;
audio is decoded to 20 ms PCM frames on its audio channel; an
:class:`~wxmgw.legs.flvpush.FlvPublisher` subscribed to both pushes them to
``pushUrl``. Both streams share one :class:`~wxmgw.rtp.session.ClockOffset`,
so the frames' capture times (from the MAS's sender reports, from arrival
before the first one) put audio and video on one timeline.

A keyframe is asked for (PLI + FIR, rate-limited by the session) while the
depacketizer has none to give: when video starts and after a loss broke a
frame, and when a subscriber of the video channel finds no GOP cached.

``weixin``: the member is a mini-program pulled by this gateway. Its own
Rtmp2rtp's video channel is republished as is, with no port and no MAS
round trip. The audio of that stream is silence: the viewer hears the member
in the conference mix already, and would hear it twice otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from wxmgw.errors import MediaError, NoLocalSource
from wxmgw.legs.base import Flow, Leg, LegContext, received
from wxmgw.legs.flvpush import FlvPublisher
from wxmgw.media.clock import RTP_RULES, AudioFramer
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame, VideoFrame
from wxmgw.media.transcode import (
    AAC_NARROW_RATE,
    AudioDecoder,
    DroppedFrame,
    aac_rate,
    audio_codec,
)
from wxmgw.ports import PortPair
from wxmgw.pubsub import Channel, MediaChannels
from wxmgw.requests import RtpTarget, StartPush
from wxmgw.rtp.h264 import H264Depacketizer
from wxmgw.rtp.jitter import Gap
from wxmgw.rtp.session import ClockOffset, LossRepair, Media, ReceiveConfig, RtpSession
from wxmgw.supervise import worst

VIDEO_CLOCK_RATE = 90000


class Rtp2rtmp(Leg):
    kind = "rtp2rtmp"

    def __init__(self, params: StartPush, ctx: LegContext) -> None:
        super().__init__(params.uuid, params.conf_id, ctx)
        self.params = params
        self.requesters: set[str] = set()
        self.audio_pair: PortPair | None = None
        self.video_pair: PortPair | None = None
        self.audio: AudioReceiver | None = None
        self.video: VideoReceiver | None = None
        self.publisher: FlvPublisher | None = None
        self._silence: Channel[AudioFrame] | None = None

    def start(self) -> None:
        p = self.params
        if p.weixin:
            source = self.ctx.channels.get(p.uuid)
            if source is None:
                raise NoLocalSource(f"mini-program {p.uuid} publishes no channels here")
            self._silence = Channel(f"{p.uuid}/silence")
            self.publisher = self._publisher(self._silence, source.video, AAC_NARROW_RATE)
        else:
            self.audio_pair = self.allocate_pair()
            self.video_pair = self.allocate_pair()
            channels = self.ctx.channels.open(p.uuid)
            offset = ClockOffset()
            self.video = VideoReceiver(
                self.video_pair, channels, offset, p.video, self.ctx.loss, self.log,
                self.ctx.max_access_unit,
            )
            self.audio = AudioReceiver(self.audio_pair, channels, offset, p.audio, self.log)
            aac = aac_rate(self.audio.codec.sample_rate)
            self.publisher = self._publisher(channels.audio, channels.video, aac)
            self.video.start()
            self.audio.start()
        self.publisher.start()
        super().start()

    def _publisher(
        self, audio: Channel[AudioFrame], video: Channel[VideoFrame], aac: int
    ) -> FlvPublisher:
        """The push, with AAC at ``aac`` Hz: as wide as the member's audio (silence: narrow)."""
        return FlvPublisher(
            self.params.push_url, audio=audio, video=video, log=self.log,
            name=f"rtp2rtmp/{self.uuid}", aac_rate=aac, limits=self.ctx.rtmp,
        )

    def close_media(self) -> None:
        for part in (self.audio, self.video, self.publisher, self._silence):
            if part is not None:
                part.close()
        if not self.params.weixin:
            self.ctx.channels.close(self.uuid)

    @property
    def rtp_ports(self) -> tuple[int, int]:
        """(audio, video) RTP ports the MAS sends to; (0, 0) for a weixin republish."""
        if self.audio_pair is None or self.video_pair is None:
            return 0, 0
        return self.audio_pair.port, self.video_pair.port

    def health(self) -> str:
        """The push's state and the RTP sessions'."""
        parts = [self.publisher, *(r.session for r in (self.audio, self.video) if r is not None)]
        return worst(part.state for part in parts if part is not None)

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "pushUrl": p.push_url,
            "weixin": p.weixin,
            "audioCodec": p.audio.codec,
            "videoCodec": p.video.codec,
            "requesters": sorted(self.requesters),
        }

    def flows(self) -> list[Flow]:
        out = [part.flow() for part in (self.audio, self.video) if part is not None]
        if self.publisher is not None:
            out.extend(self.publisher.flows())
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.audio is not None:
            out["audio"] = self.audio.stats()
        if self.video is not None:
            out["video"] = self.video.stats()
        if self.publisher is not None:
            out["push"] = self.publisher.stats()
        return out


class _Receiver:
    """One incoming RTP stream of the member: its session and reception counters."""

    def __init__(
        self,
        pair: PortPair,
        name: str,
        receive: ReceiveConfig,
        offset: ClockOffset,
        log: Callable[..., None],
    ) -> None:
        self.session = RtpSession(
            pair, name, receive=receive, on_media=self._on_media, offset=offset, log=log
        )

    def _on_media(self, media: Media) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.session.start()

    def close(self) -> None:
        self.session.close()

    def flow(self) -> Flow:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Packets, loss, RFC 3550 §A.8 jitter, reordering, and what the session dropped."""
        s = self.session.stats
        out: dict[str, Any] = {
            "packets": s.packets_received,
            "bytes": s.bytes_received,
            "wrong_source": s.wrong_source,
            "wrong_payload_type": s.wrong_payload_type,
            "malformed": s.malformed,
            "sr_received": s.sr_received,
        }
        jitter = self.session.jitter
        if jitter is not None:
            j = jitter.stats
            out.update(
                lost=j.lost,
                jitter_ms=round(j.jitter_seconds * 1000, 2),
                reordered=j.reordered,
                duplicates=j.duplicates,
                late=j.late,
                resets=j.resets,
            )
        return out


class VideoReceiver(_Receiver):
    """H.264 RTP -> access units on the member's video channel."""

    def __init__(
        self,
        pair: PortPair,
        channels: MediaChannels,
        offset: ClockOffset,
        target: RtpTarget,
        loss: LossRepair,
        log: Callable[..., None],
        max_access_unit: int,
    ) -> None:
        super().__init__(
            pair, "video", loss.receive(target.payload_type, VIDEO_CLOCK_RATE), offset, log
        )
        self.channel = channels.video
        self.depacketizer = H264Depacketizer(max_access_unit)
        self._log = log
        self._oversized = 0  # depacketizer.stats.oversized when last looked at
        self._oversize_burst = False  # warned about, no keyframe since
        self.channel.on_keyframe_needed = self._keyframe_needed

    def close(self) -> None:
        self.channel.on_keyframe_needed = None
        super().close()

    def _keyframe_needed(self) -> None:
        self.session.request_keyframe()

    def _on_media(self, media: Media) -> None:
        depacketizer = self.depacketizer
        for item in media:
            if isinstance(item, Gap):
                depacketizer.lost()
                continue
            au = depacketizer.push(item.payload, item.timestamp, item.marker)
            if au is not None:
                ts = self.session.capture_time(au.timestamp)
                self.channel.publish(VideoFrame(au.nalus, ts, au.keyframe, time.perf_counter()))
        if depacketizer.needs_keyframe:
            self.session.request_keyframe()
        self._warn_oversized()

    def _warn_oversized(self) -> None:
        """One warning per burst of frames over ``max_access_unit``: until video resyncs."""
        d = self.depacketizer
        if d.stats.oversized != self._oversized:
            if not self._oversize_burst:
                self._log("video_frame_oversized", logging.WARNING,
                          limit=d.max_access_unit, oversized=d.stats.oversized)
            self._oversized, self._oversize_burst = d.stats.oversized, True
        elif not d.needs_keyframe:
            self._oversize_burst = False

    def flow(self) -> Flow:
        d, s = self.depacketizer.stats, self.session.stats
        return received(self.session, "video", frames=d.access_units,
                        decode_errors=d.dropped_units + d.oversized, dropped=self.channel.dropped,
                        pli=s.pli_sent, fir=s.fir_sent, nack=s.nack_sent)

    def stats(self) -> dict[str, Any]:
        """Frames, keyframe requests, and loss repair: NACKs sent (RTCP packets),
        sequence numbers asked for, packets recovered (``lost`` is what was
        given up on)."""
        d = self.depacketizer.stats
        s = self.session.stats
        assert self.session.jitter is not None
        j = self.session.jitter.stats
        return {
            **super().stats(),
            "frames": d.access_units,
            "dropped_frames": d.dropped_units,
            "oversized_frames": d.oversized,
            "pli_sent": s.pli_sent,
            "fir_sent": s.fir_sent,
            "nack_sent": s.nack_sent,
            "nacked": j.nacked,
            "recovered": j.recovered,
            "rtx_received": s.rtx_received,
        }


class AudioReceiver(_Receiver):
    """RTP audio (PCMA, PCMU, G.722, Opus) -> 20 ms PCM frames on the member's audio channel.

    Frames are stamped from the RTP timeline: the samples continue the
    previous ones unless a packet's capture time is more than half a frame
    away from where the count puts it (loss, a new source), then the count
    restarts there (:data:`~wxmgw.media.clock.RTP_RULES`).
    """

    def __init__(
        self,
        pair: PortPair,
        channels: MediaChannels,
        offset: ClockOffset,
        target: RtpTarget,
        log: Callable[..., None],
    ) -> None:
        self.codec = audio_codec(target.codec)
        super().__init__(
            pair, "audio", ReceiveConfig(target.payload_type, self.codec.clock_rate), offset, log
        )
        self.channel = channels.audio
        self.decoder = AudioDecoder(self.codec.name)
        self.framer = AudioFramer(AUDIO_FRAME_SAMPLES, AUDIO_RATE, RTP_RULES)
        self.frames = 0
        self.decode_errors = 0
        self.dropped_frames = 0  # decoded, but not what the codec declares (never converted)

    def _on_media(self, media: Media) -> None:
        for item in media:
            if isinstance(item, Gap):
                continue
            try:
                pcm = self.decoder.decode(item.payload)
            except DroppedFrame:
                self.dropped_frames += 1
                continue
            except MediaError:
                self.decode_errors += 1
                continue
            ts = self.session.capture_time(item.timestamp)
            for frame in self.framer.push(pcm, ts, time.perf_counter()):
                self.channel.publish(frame)
                self.frames += 1

    def flow(self) -> Flow:
        return received(self.session, "audio", frames=self.frames,
                        decode_errors=self.decode_errors + self.dropped_frames,
                        dropped=self.channel.dropped)

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "codec": self.codec.name,
            "frames": self.frames,
            "decode_errors": self.decode_errors,
            "dropped_frames": self.dropped_frames,
        }

