"""Rtmp2rtp: a mini-program's RTMP stream to the MAS as RTP, and its mix back to RTMP.

Glue only (MISSION §3): an :class:`~wxmgw.media.rtmp_reader.RtmpReader` pulls
``pullUrl`` and publishes its frames on the uuid's video and audio channels;
two senders packetize H.264 (RFC 6184) and transcode the audio to the MAS
codec, each over its own :class:`~wxmgw.rtp.session.RtpSession`. The senders
are the channels' first consumers and need no queue of their own: the
reader's greenlet calls them as each frame is demuxed, then publishes the
frame for the other subscribers. A frame costs no greenlet switch on its way
to the MAS. The MAS answers the audio
symmetrically with this member's conference mix; the audio session receives
it, and it is decoded onto the leg's :attr:`Rtmp2rtp.mix` channel, which a
:class:`~wxmgw.legs.flvpush.FlvPublisher` pushes to ``pushAudioUrl``.

AvSync adds a member's video channel to that stream. Lip sync holds because
both the mix and the video carry capture times on our monotonic clock: the
mix's from the MAS's RTCP sender reports (RFC 3550 §6.4.1) once one has
arrived, a member's video from its own (Rtp2rtmp), a mini-program's video
from its FLV timeline; the publisher stamps each frame from that time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import av.error
import gevent

from wxmgw.errors import WxmgwError
from wxmgw.legs.base import Flow, Leg, LegContext, received
from wxmgw.legs.flvpush import FlvPublisher
from wxmgw.media._dsp import rate_converter
from wxmgw.media.clock import RTP_RULES, AudioFramer, ClockRules, Placement, SampleClock
from wxmgw.media.frames import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_RATE,
    AudioFrame,
    VideoFrame,
)
from wxmgw.media.rtmp_reader import RtmpReader
from wxmgw.media.transcode import (
    AudioDecoder,
    AudioEncoder,
    CodecInfo,
    DroppedFrame,
    aac_rate,
    audio_codec,
)
from wxmgw.ports import PortPair
from wxmgw.pubsub import Channel, MediaChannels
from wxmgw.requests import StartPull
from wxmgw.rtp import rtcp
from wxmgw.rtp.h264 import H264Packetizer
from wxmgw.rtp.jitter import Gap
from wxmgw.rtp.session import Media, ReceiveConfig, RtpSession, SendConfig
from wxmgw.supervise import worst

#: RFC 6184 §8.2.1: H.264 RTP timestamps run at 90 kHz.
VIDEO_CLOCK: Final = 90000
#: Largest RTP payload sent: RTP/UDP/IP headers stay well inside a 1500-byte MTU.
MAX_RTP_PAYLOAD: Final = 1200
#: Audio arriving this much later than the sample count expects is a gap in the source.
AUDIO_GAP: Final = 0.2
#: Audio this much earlier than the sample count is dropped: RTP time stays at live.
AUDIO_BACKLOG: Final = 0.1

F = TypeVar("F", VideoFrame, AudioFrame)
#: What a sender may raise on one bad frame: skipped and counted, the leg stays up.
_FRAME_ERRORS: Final = (WxmgwError, av.error.FFmpegError, ValueError)


class VideoSender:
    """Access units to RTP on the MAS video port (RFC 6184 packetization-mode 1).

    Timestamps are the frames' capture times (the FLV timeline) at 90 kHz
    from the first frame sent, which is a keyframe: what comes before it
    cannot be decoded. The packetizer puts the SPS and PPS in front of every
    IDR; after a PLI or FIR from the MAS (RFC 4585 §6.3.1, RFC 5104 §4.3.1)
    they also go in front of the next access unit, since a mini-program
    cannot be asked for a keyframe. Each access unit gets a later timestamp
    than the one before (RFC 6184 §5.1: one timestamp per access unit), even
    in a live server's burst, whose frames are stamped as they arrive.
    """

    def __init__(self, session: RtpSession) -> None:
        self.session = session
        self.frames = 0
        self.skipped = 0
        self.keyframe_requests = 0
        self._packetizer = H264Packetizer(MAX_RTP_PAYLOAD)
        self._start: float | None = None
        self._timestamp = -1
        self._resend = False

    def send(self, frame: VideoFrame) -> None:
        if self._start is None:
            if not frame.keyframe:
                self.skipped += 1
                return
            self._start = frame.ts
        payloads = self._packetizer.packetize(
            frame.nalus, None, None, frame.keyframe or self._resend
        )
        self._resend = False
        timestamp = self._timestamp = max(
            round((frame.ts - self._start) * VIDEO_CLOCK), self._timestamp + 1
        )
        self.session.send_run(payloads, timestamp, True, frame.ts)
        self.frames += 1

    def request_parameter_sets(self) -> bool:
        """Re-send SPS/PPS with the next access unit; False if one is already pending."""
        self.keyframe_requests += 1
        pending, self._resend = self._resend, True
        return not pending


class AudioSender:
    """20 ms PCM frames at the MAS codec's own rate to RTP on the MAS audio port, encoded.

    Timestamps count samples (RFC 3550 §5.1: the sampling instant), one
    packet's worth (``frame_samples_at_clock``) at a time, not arrival times
    (:class:`~wxmgw.media.clock.SampleClock`). When the source's timeline
    jumps ahead (a reconnect, a gap in the stream), the count jumps with it so
    RTP time stays on media time, and the marker bit starts the new talkspurt
    (RFC 3551 §4.1); a frame from behind the count by more than
    ``AUDIO_BACKLOG`` is dropped (``backlog``), so RTP time never runs ahead
    of the media.
    """

    def __init__(self, session: RtpSession, codec: CodecInfo) -> None:
        self.session = session
        self.frames = 0
        self.backlog = 0
        self._encoder = AudioEncoder(codec.name, source_rate=codec.sample_rate)
        self._step = codec.frame_samples_at_clock
        self._clock = SampleClock(codec.clock_rate, ClockRules(AUDIO_GAP, backlog=AUDIO_BACKLOG))
        self._origin: float | None = None
        self._marker = True

    def send(self, frame: AudioFrame) -> None:
        clock = self._clock
        placement = clock.place(frame.ts)
        if placement is Placement.BACKLOG:
            self.backlog += 1
            return
        if self._origin is None:
            self._origin = clock.next
        self._marker |= placement is Placement.GAP
        for payload in self._encoder.encode(frame.pcm):
            timestamp = round((clock.next - self._origin) * clock.rate)
            self.session.send_run((payload,), timestamp, self._marker, frame.ts)
            clock.advance(self._step)
            self._marker = False
        self.frames += 1


class MixReceiver:
    """The conference mix the MAS sends back, decoded to 20 ms frames on a channel.

    The session has already reordered the packets (its jitter buffer) and
    reports losses as gaps; a lost or undecodable packet is simply missing,
    the FLV side fills what is missing with silence; a packet that decodes to
    a frame the codec does not declare is ``dropped``. The first packet the
    codec cannot take (another codec than agreed) is logged once,
    ``mix_undecodable`` with the codec expected and the error; a packet of
    another payload type never gets here (the session counts and logs it).
    Frames carry the
    packets' capture times as the session's timeline maps them: from the
    MAS's sender reports once one has arrived (:attr:`sr_mapped`), from
    arrival before.
    """

    def __init__(self, codec: CodecInfo, out: Channel[AudioFrame]) -> None:
        self.out = out
        self.session: RtpSession | None = None
        self.packets = 0
        self.lost = 0
        self.undecodable = 0
        self.dropped = 0
        self._codec = codec.name
        self._decoder = AudioDecoder(codec.name)
        self._framer = AudioFramer(AUDIO_FRAME_SAMPLES, AUDIO_RATE, RTP_RULES)

    def on_media(self, media: Media) -> None:
        assert self.session is not None
        for item in media:
            if isinstance(item, Gap):
                self.lost += item.count
                continue
            self.packets += 1
            try:
                pcm = self._decoder.decode(item.payload)
            except DroppedFrame:
                self.dropped += 1
                continue
            except WxmgwError as e:
                self.undecodable += 1
                if self.undecodable == 1:
                    self.session.log("mix_undecodable", logging.WARNING, expected=self._codec,
                                     payload_type=item.payload_type, error=str(e))
                continue
            ts = self.session.capture_time(item.timestamp)
            for frame in self._framer.push(pcm, ts, time.perf_counter()):
                self.out.publish(frame)

    def flow(self) -> Flow:
        assert self.session is not None
        return received(self.session, "audio", decode_errors=self.undecodable + self.dropped,
                        dropped=self.out.dropped)

    @property
    def sr_mapped(self) -> bool:
        """Whether the mix's capture times come from the MAS's sender reports."""
        timeline = self.session.timeline if self.session is not None else None
        return timeline is not None and timeline.synced


class Rtmp2rtp(Leg):
    """One mini-program in a conference: its stream to the MAS, the mix back to it.

    With an empty ``masIp`` no RTP is sent: the stream is only published on
    the uuid's channels, for the room's own mixer and for viewers on this
    gateway. ``sync_uuid`` is the member whose video AvSync adds to the mix
    stream (:meth:`av_sync`). :attr:`mix` is the audio pushed to
    ``pushAudioUrl``: the MAS's mix decoded, or what a room mixer publishes
    on it.

    Toward a MAS, the pulled AAC is decoded straight to the MAS codec's rate
    (one libswresample call, no way through 48 kHz); the uuid's audio channel
    then gets it widened to 48 kHz only while someone subscribes, and it
    carries the codec's band, as the conference hears it.
    """

    kind = "rtmp2rtp"

    def __init__(self, params: StartPull, ctx: LegContext) -> None:
        super().__init__(params.uuid, params.conf_id, ctx)
        self.params = params
        self.sync_uuid = ""
        self.audio_pair: PortPair | None = None
        self.video_pair: PortPair | None = None
        self.channels: MediaChannels | None = None
        self.video_out: VideoSender | None = None
        self.audio_out: AudioSender | None = None
        self.mix: Channel[AudioFrame] = Channel(f"{params.uuid}/mix")
        self.mix_in: MixReceiver | None = None
        self._mix_out: FlvPublisher | None = None
        self._reader: RtmpReader | None = None
        self._audio_rate = AUDIO_RATE if params.mas_less else audio_codec(
            params.audio.codec).sample_rate
        self._widen = rate_converter(self._audio_rate, AUDIO_RATE)
        self._frames_in = {"video": 0, "audio": 0}
        self._frame_errors = 0
        self.last_error = ""

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        p = self.params
        self.channels = self.ctx.channels.open(p.uuid)
        if not p.mas_less:
            self.audio_pair = self.allocate_pair()
            self.video_pair = self.allocate_pair()
            self._start_senders(self.channels, self.audio_pair, self.video_pair)
        if p.push_audio_url:
            # The room's mix is wideband; the MAS's is as wide as its codec.
            aac = aac_rate(self._audio_rate)
            self._mix_out = FlvPublisher(
                p.push_audio_url, audio=self.mix, video=None, log=self.log,
                name=f"mix {p.uuid}", aac_rate=aac, limits=self.ctx.rtmp,
            )
            self._mix_out.start()
        self._reader = RtmpReader(
            p.pull_url,
            on_video=self._on_video,
            on_audio=self._on_audio,
            on_event=self._on_reader_event,
            name=f"pull {p.uuid}",
            audio_rate=self._audio_rate,
            limits=self.ctx.rtmp,
        )
        self._reader.start()
        super().start()

    def _start_senders(self, channels: MediaChannels, audio: PortPair, video: PortPair) -> None:
        p = self.params
        codec = audio_codec(p.audio.codec)
        receive = None
        if p.push_audio_url:
            self.mix_in = MixReceiver(codec, self.mix)
            receive = ReceiveConfig(p.audio.payload_type, codec.clock_rate)
        video_session = RtpSession(
            video,
            f"{p.uuid}/video",
            remote=(p.mas_ip, p.video_port),
            send=SendConfig(p.ssrc, p.video.payload_type, VIDEO_CLOCK, self.ctx.loss.history),
            on_feedback=self._on_video_feedback,
            log=self.log,
            cname=p.uuid,
        )
        audio_session = RtpSession(
            audio,
            f"{p.uuid}/audio",
            remote=(p.mas_ip, p.audio_port),
            send=SendConfig(p.ssrc, p.audio.payload_type, codec.clock_rate),
            receive=receive,
            on_media=self.mix_in.on_media if self.mix_in else None,
            log=self.log,
            cname=p.uuid,
        )
        if self.mix_in is not None:
            self.mix_in.session = audio_session
        self.video_out = VideoSender(video_session)
        self.audio_out = AudioSender(audio_session, codec)
        for session in (video_session, audio_session):
            session.start()

    def close_media(self) -> None:
        """Stop both directions: RTP first (nothing leaves after StopPull's reply)."""
        for sender in (self.video_out, self.audio_out):
            if sender is not None:
                sender.session.close()
        if self._reader is not None:
            self._reader.close()
            gevent.spawn(self._reader.join)  # the worker ends within its I/O timeout
        if self._mix_out is not None:
            self._mix_out.close()
        self.mix.close()
        self.ctx.channels.close(self.uuid)

    def av_sync(self, sync_uuid: str, video: Channel[VideoFrame] | None, **why: Any) -> None:
        """Show ``video`` (``sync_uuid``'s) in the mix stream, or no video when None.

        The stream goes on; the new video starts at its channel's cached
        keyframe. Without a ``pushAudioUrl`` there is no stream: only the
        choice is kept.
        """
        self.sync_uuid = sync_uuid
        if self._mix_out is not None:
            self._mix_out.set_video(video)
        self.log("av_sync", syncUuid=sync_uuid, **why)

    # -- the pulled stream -----------------------------------------------------------

    def _on_video(self, frame: VideoFrame) -> None:
        assert self.channels is not None
        self._frames_in["video"] += 1
        if self.video_out is not None:
            self._send(self.video_out.send, frame)
        self.channels.video.publish(frame)

    def _on_audio(self, frame: AudioFrame) -> None:
        assert self.channels is not None
        self._frames_in["audio"] += 1
        if self.audio_out is not None:
            self._send(self.audio_out.send, frame)
        channel = self.channels.audio
        if self._widen is None:
            channel.publish(frame)
        elif channel.subscribers:
            channel.publish(AudioFrame(self._widen(frame.pcm), frame.ts, frame.arrived))

    def _on_reader_event(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "connected":
            self.log("pull_connected", **info)
        elif kind == "disconnected":
            self.last_error = str(info.get("error", ""))
            self.log("pull_disconnected", logging.WARNING, **info)
        elif kind == "unsupported_codec":
            self.last_error = f"unsupported {info.get('kind')} codec {info.get('codec')}"
            self.log("unsupported_codec", logging.ERROR, **info)
        elif kind == "caught_up":
            self.log("pull_caught_up", **info)
        elif kind == "track_refused":
            self.last_error = str(info.get("reason", ""))
            self.log("track_refused", logging.WARNING, **info)
        elif kind == "crashed":
            self.last_error = str(info.get("error", ""))
            self.log("pull_crashed", logging.ERROR, **info)

    def _send(self, send: Callable[[F], None], frame: F) -> None:
        try:
            send(frame)
        except _FRAME_ERRORS as e:
            self._frame_errors += 1
            self.last_error = str(e) or type(e).__name__

    # -- RTCP from the MAS -------------------------------------------------------------

    def _on_video_feedback(self, packet: rtcp.RtcpPacket) -> None:
        if self.video_out is None or not isinstance(packet, rtcp.Pli | rtcp.Fir):
            return
        if self.video_out.request_parameter_sets():
            self.log(
                "keyframe_requested",
                by=type(packet).__name__.upper(),
                action="resend SPS/PPS",
                requests=self.video_out.keyframe_requests,
            )

    # -- reporting ---------------------------------------------------------------------

    def health(self) -> str:
        """The pull's state, the mix push's and the RTP sessions'."""
        sessions = (s.session for s in (self.video_out, self.audio_out) if s is not None)
        parts = (self._reader, self._mix_out, *sessions)
        return worst(part.state for part in parts if part is not None)

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "pullUrl": p.pull_url,
            "pushAudioUrl": p.push_audio_url,
            "mas": f"{p.mas_ip}:{p.audio_port}/{p.video_port}" if p.mas_ip else "",
            "ssrc": p.ssrc,
            "audioCodec": p.audio.codec,
            "videoCodec": p.video.codec,
            "syncUuid": self.sync_uuid,
        }

    def flows(self) -> list[Flow]:
        """The pull (per media: frames, silence), RTP to the MAS, the mix back and its push."""
        out: list[Flow] = []
        reader, channels = self._reader, self.channels
        if reader is not None and channels is not None:
            r, now = reader.stats, time.perf_counter()
            out.append(Flow("rtmp_in", "av", packets=r.packets, bytes=r.bytes,
                            reconnects=r.reconnects,
                            decode_errors=r.frames_dropped + self._frame_errors))
            for media, channel in (("video", channels.video), ("audio", channels.audio)):
                out.append(Flow("rtmp_in", media, frames=self._frames_in[media],
                                dropped=channel.dropped, silence=now - reader.last_media[media]))
        for media, sender in (("video", self.video_out), ("audio", self.audio_out)):
            if sender is not None:
                s = sender.session.stats
                out.append(Flow("rtp_out", media, packets=s.packets_sent, bytes=s.bytes_sent,
                                frames=sender.frames, pli=s.pli_received, fir=s.fir_received,
                                nack=s.nack_received,
                                latency={media: reader.latency[media]} if reader else {}))
        if self.mix_in is not None and self.mix_in.session is not None:
            out.append(self.mix_in.flow())
        if self._mix_out is not None:
            out.extend(self._mix_out.flows())
        return out

    def stats(self) -> dict[str, Any]:
        """Frames in, RTP out, reconnects, RTCP seen, errors, added latency and the A/V offset.

        ``addedLatencyMs`` is ``[p50, p99]`` per stream over the last frames,
        from RTMP message read to RTP sent.

        ``avOffsetMs`` is how much later than the mix the synced video is
        presented, for frames captured at the same time (None without AvSync
        video).
        """
        out: dict[str, Any] = {"framesIn": dict(self._frames_in)}
        if self._reader is not None:
            r = self._reader.stats
            out.update(reconnects=r.reconnects, readErrors=r.errors, malformed=r.malformed,
                       crashes=r.crashes)
            out.update(configsRefused=r.configs_refused, framesDropped=r.frames_dropped)
            out["caughtUp"] = {"audioDroppedMs": round(self._reader.audio_dropped * 1000),
                               "behindMs": round(self._reader.behind * 1000)}
            out["addedLatencyMs"] = self._reader.latency_ms()
        mix_out = self._mix_out.stats() if self._mix_out is not None else None
        offset = None
        if mix_out is not None and self.sync_uuid and mix_out["video_frames"]:
            offset = mix_out["av_offset_ms"]
        out["avOffsetMs"] = offset
        for name, sender in (("video", self.video_out), ("audio", self.audio_out)):
            if sender is not None:
                s = sender.session.stats
                out[f"{name}Rtp"] = {
                    "frames": sender.frames,
                    "packets": s.packets_sent,
                    "bytes": s.bytes_sent,
                    "rtcpIn": s.rtcp_received,
                    "pli": s.pli_received,
                    "fir": s.fir_received,
                    "nack": s.nack_received,
                    "resent": s.resent,
                    "resendMissed": s.resend_missed,
                }
        if self.mix_in is not None:
            m = self.mix_in
            out["mixIn"] = {
                "packets": m.packets,
                "lost": m.lost,
                "undecodable": m.undecodable,
                "dropped": m.dropped,
                "wrongPayloadType": m.session.stats.wrong_payload_type if m.session else 0,
                "srMapped": m.sr_mapped,
            }
        if mix_out is not None:
            out["mixOut"] = mix_out
        out["frameErrors"] = self._frame_errors
        reader_error = self._reader.stats.last_error if self._reader else ""
        out["lastError"] = self.last_error or reader_error
        return out
