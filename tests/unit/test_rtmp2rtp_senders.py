"""Rtmp2rtp's senders and mix receiver with a recording stand-in for the RTP session.

Decoding by independent peers (GStreamer, ffmpeg) is in
``tests/integration/test_rtmp2rtp.py``; here: timestamps, markers, gaps and
the SPS/PPS re-send.
"""

from gevent import monkey

monkey.patch_all()

import numpy as np  # noqa: E402

from wxmgw.legs.rtmp2rtp import (  # noqa: E402
    VIDEO_CLOCK,
    AudioSender,
    MixReceiver,
    VideoSender,
)
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AudioFrame, VideoFrame  # noqa: E402
from wxmgw.media.transcode import AudioEncoder, audio_codec  # noqa: E402
from wxmgw.pubsub import Channel  # noqa: E402
from wxmgw.rtp.jitter import Gap  # noqa: E402
from wxmgw.rtp.packet import RtpPacket  # noqa: E402

SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xD9, 0x00])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65]) + bytes(3000)
SLICE = bytes([0x41]) + bytes(100)


class FakeSession:
    def __init__(self):
        self.sent = []

    def send(self, payload, timestamp, marker, media_time):
        self.sent.append((payload, timestamp, marker, media_time))

    def send_run(self, payloads, timestamp, marker, media_time):
        for i, payload in enumerate(payloads):
            self.send(payload, timestamp, marker and i == len(payloads) - 1, media_time)

    def capture_time(self, timestamp):
        return 100.0 + timestamp / 8000


def test_video_starts_on_a_keyframe_with_90khz_timestamps_and_markers():
    session = FakeSession()
    sender = VideoSender(session)
    sender.send(VideoFrame([SLICE], 9.96, False))  # not decodable without what came before
    sender.send(VideoFrame([SPS, PPS, IDR], 10.0, True))
    sender.send(VideoFrame([SLICE], 10.04, False))
    assert sender.skipped == 1 and sender.frames == 2
    first = [s for s in session.sent if s[1] == 0]
    assert first[0][0] == SPS and first[1][0] == PPS
    assert all(len(p) <= 1200 for p, *_ in session.sent)
    assert [m for _, _, m, _ in first] == [False] * (len(first) - 1) + [True]
    assert session.sent[-1][1:] == (round(0.04 * VIDEO_CLOCK), True, 10.04)


def test_pli_puts_sps_and_pps_in_front_of_the_next_picture_once():
    session = FakeSession()
    sender = VideoSender(session)
    sender.send(VideoFrame([SPS, PPS, IDR], 0.0, True))
    assert sender.request_parameter_sets() is True
    assert sender.request_parameter_sets() is False  # already pending: one re-send
    session.sent.clear()
    sender.send(VideoFrame([SLICE], 0.04, False))
    sender.send(VideoFrame([SLICE], 0.08, False))
    assert [p for p, *_ in session.sent] == [SPS, PPS, SLICE, SLICE]
    assert sender.keyframe_requests == 2


def pcm_frames(count, rate=48000):
    size = rate // 50
    t = np.arange(count * size) / rate
    pcm = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    return pcm.reshape(count, size)


def test_audio_timestamps_count_samples_and_follow_a_gap():
    session = FakeSession()
    sender = AudioSender(session, audio_codec("PCMA"))
    frames = pcm_frames(6, 8000)  # the codec's rate, as the leg's reader decodes to
    # Arrival jitter does not move the timestamps; a 1 s hole in the source does.
    for i, pcm in enumerate(frames[:3]):
        sender.send(AudioFrame(pcm, 5.0 + i * 0.02 + (0.005 if i == 1 else 0)))
    for i, pcm in enumerate(frames[3:]):
        sender.send(AudioFrame(pcm, 6.06 + i * 0.02))
    stamps = [ts for _, ts, _, _ in session.sent]
    markers = [m for _, _, m, _ in session.sent]
    assert stamps[:3] == [0, 160, 320]
    assert stamps[3:] == [8480, 8640, 8800]  # 1.06 s after the start, at 8 kHz
    assert markers == [True, False, False, True, False, False]
    assert all(len(p) == 160 for p, *_ in session.sent)


def test_mix_receiver_decodes_to_20ms_frames_and_skips_gaps():
    out = Channel("mix")
    sub = out.subscribe()
    receiver = MixReceiver(audio_codec("PCMA"), out)
    receiver.session = FakeSession()
    encoder = AudioEncoder("PCMA")
    payloads = [p for pcm in pcm_frames(5) for p in encoder.encode(pcm)]
    packets = [RtpPacket(8, seq, seq * 160, 1, p) for seq, p in enumerate(payloads)]
    receiver.on_media([*packets[:4], Gap(1)])
    assert (receiver.packets, receiver.lost) == (4, 1)
    frames = []
    while (f := sub.get(0)) is not None:
        frames.append(f)
    assert len(frames) >= 3 and all(len(f.pcm) == AUDIO_FRAME_SAMPLES for f in frames)
    # Frame times follow the samples, not the packet a frame was completed by.
    assert abs(frames[0].ts - 100.0) < 0.005  # less the resampler's delay
    assert np.allclose(np.diff([f.ts for f in frames]), 0.02)
