"""The pull's FLV tag bodies to frames: sequence headers checked, decoded frames as declared.

Issue #12, finding 1: a refused AudioSpecificConfig or avcC stops its track
only, until the next valid header; a decoded frame that is not what the
config declared is dropped and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wxmgw.codecs.h264 import AvcConfig, to_avcc
from wxmgw.errors import ParseError
from wxmgw.media.flvframes import FlvToFrames
from wxmgw.media.frames import AudioFrame, VideoFrame
from wxmgw.media.rtmp_reader import RtmpReader
from wxmgw.media.transcode import AudioEncoder
from wxmgw.rtmp.chunk import AUDIO, VIDEO, Message
from wxmgw.rtmp.flv import (
    MAX_PARAMETER_SET,
    ConfigRefused,
    aac_frame,
    aac_sequence_header,
    avc_config,
)

DATA = Path(__file__).resolve().parents[1] / "data"
AVCC = (DATA / "h264_avcc_baseline.bin").read_bytes()
PCE_27CH = (DATA / "aac_pce_27ch.raw").read_bytes()
IDR = b"\x65\x88\x84\x00\x10"
SPS, PPS = AvcConfig.parse(AVCC).sps[0], AvcConfig.parse(AVCC).pps[0]


def avc_header(record: bytes) -> bytes:
    return b"\x17\x00\x00\x00\x00" + record


def avc_idr() -> bytes:
    return b"\x17\x01\x00\x00\x00" + to_avcc([IDR])


class Pull:
    """A reader fed tag bodies straight, as its session would: what came out."""

    def __init__(self) -> None:
        self.video: list[VideoFrame] = []
        self.audio: list[AudioFrame] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.reader = RtmpReader(
            "rtmp://127.0.0.1/live/x", on_video=self.video.append, on_audio=self.audio.append,
            on_event=lambda kind, info: self.events.append((kind, info)), name="test",
        )
        self.flv = FlvToFrames(48000, 0.1)

    def feed(self, kind: int, *bodies: bytes) -> None:
        for i, body in enumerate(bodies):
            others = self.flv.deliver(self.reader, [Message(kind, 1, 20 * i, body)], 20 * i / 1000)
            assert others == []


def aac_payloads() -> tuple[bytes, list[bytes]]:
    """An AAC-LC 48 kHz mono config and 0.2 s of its frames."""
    encoder = AudioEncoder("AAC")
    return encoder.extradata, encoder.encode(np.zeros(9600, np.int16))


def test_refused_audio_config_stops_audio_only_and_is_reported_once() -> None:
    pull = Pull()
    _, frames = aac_payloads()
    bad = aac_sequence_header(bytes([0x15, 0x80]))  # channelConfiguration 0: a PCE decides
    pull.feed(VIDEO, avc_header(AVCC))
    pull.feed(AUDIO, bad, *map(aac_frame, frames), bad)
    pull.feed(VIDEO, avc_idr(), avc_idr())
    assert not pull.audio and len(pull.video) == 2
    assert [kind for kind, _ in pull.events] == ["track_refused"]
    assert pull.events[0][1]["kind"] == "audio"
    assert "channelConfiguration 0" in pull.events[0][1]["reason"]
    stats = pull.reader.stats
    assert (stats.configs_refused, stats.errors, stats.frames_dropped) == (2, 0, 0)


def test_audio_resumes_at_the_next_valid_config() -> None:
    pull = Pull()
    asc, frames = aac_payloads()
    pull.feed(AUDIO, aac_sequence_header(b"\xff\xff"), aac_frame(frames[0]),
              aac_sequence_header(asc), *map(aac_frame, frames))
    assert len(pull.audio) >= 8


def test_frame_not_as_declared_is_dropped_and_counted() -> None:
    pull = Pull()
    pull.feed(AUDIO, aac_sequence_header(bytes([0x15, 0x90])), aac_frame(PCE_27CH))
    assert not pull.audio
    assert (pull.reader.stats.frames_dropped, pull.reader.stats.errors) == (1, 0)
    assert "27 channels" in pull.reader.stats.last_error


def test_refused_avcc_stops_video_until_a_valid_one() -> None:
    pull = Pull()
    no_pps = bytes(AvcConfig.parse(AVCC))[:-len(PPS) - 3] + b"\x00"
    pull.feed(VIDEO, avc_header(no_pps), avc_idr(), avc_idr())
    assert not pull.video and pull.reader.stats.configs_refused == 1
    assert pull.events[0][1]["kind"] == "video"
    pull.feed(VIDEO, avc_header(AVCC), avc_idr())
    assert len(pull.video) == 1 and pull.video[0].nalus == [SPS, PPS, IDR]
    assert pull.reader.stats.errors == 0


@pytest.mark.parametrize("path", ["h264_avcc_baseline.bin", "h264_avcc_high.bin"])
def test_encoder_avcc_is_taken(path: str) -> None:
    record = (DATA / path).read_bytes()
    assert avc_config(record) == AvcConfig.parse(record)


def record(sps: list[bytes], pps: list[bytes]) -> bytes:
    return bytes(AvcConfig(66, 0xC0, 30, 4, sps, pps))


@pytest.mark.parametrize(("sps", "pps", "why"), [
    ([], [PPS], "0 SPS"),
    ([SPS], [], "0 PPS"),
    ([PPS], [PPS], "among type 7"),             # a PPS in the SPS list
    ([SPS], [SPS], "among type 8"),
    ([SPS[:4]], [PPS], "of 4 bytes"),
    ([SPS + bytes(MAX_PARAMETER_SET)], [PPS], "bytes"),
    ([bytes([SPS[0] | 0x80]) + SPS[1:]], [PPS], "NAL header"),  # forbidden_zero_bit
    ([SPS], [bytes([PPS[0] & 0x1F]) + PPS[1:]], "NAL header"),   # nal_ref_idc 0
])
def test_insane_parameter_sets_are_refused(sps: list[bytes], pps: list[bytes], why: str) -> None:
    with pytest.raises(ConfigRefused, match=why):
        avc_config(record(sps, pps))


def test_unparsable_avcc_is_refused_as_parse_error() -> None:
    with pytest.raises(ParseError):
        avc_config(AVCC[:9])


def test_a_gop_burst_is_caught_up_to_live() -> None:
    """A server's GOP cache: 2 s of media at once when the play starts, then live.

    Audio from behind live is dropped down to ``max_backlog``; video is
    stamped as it arrives, every frame kept; after the burst, media time
    is arrival time.
    """
    asc, frames = aac_payloads()
    flv = FlvToFrames(48000, max_backlog=0.1)
    flv.audio(0, aac_sequence_header(asc), 0.0)
    flv.video(0, avc_header(AVCC), 0.0)
    audio: list[AudioFrame] = []
    video: list[VideoFrame] = []
    for i in range(200):  # 200 AAC frames (4.3 s), a picture every other one
        ms = i * 1024 // 48
        arrival = 10.0 if ms < 2000 else 10.0 + (ms - 2000) / 1000
        audio += flv.audio(ms, aac_frame(frames[i % len(frames)]), arrival)
        if i % 2 == 0:
            picture = flv.video(ms, avc_idr(), arrival)
            assert picture is not None and picture.ts <= arrival + 0.1 + 1e-9  # the tolerance
            video.append(picture)
        if ms > 2100:
            assert audio[-1].ts >= arrival - 0.1 - 0.03
    assert len(video) == 100
    # kept: the backlog target, plus the timeline's tolerance and an AAC frame at most
    assert 0.05 <= 2.0 - flv.audio_dropped <= 0.1 + 0.1 + 0.022
    assert flv.timeline.behind == pytest.approx(2.0, abs=0.1)  # to within the tolerance


def test_a_read_is_delivered_in_order_and_the_rest_handed_back() -> None:
    """One read's messages through ``deliver``: media counted, timed and turned
    into frames; empty bodies skipped; control, commands and data returned in
    order for the session to handle; another codec reported once."""
    pull = Pull()
    asc, frames = aac_payloads()
    control = Message(5, 0, 0, b"\x00\x26\x25\xa0")  # Window Acknowledgement Size
    data = Message(18, 1, 0, b"\x02\x00\x0aonMetaData")
    mp3 = b"\x2f" + bytes(100)
    read = [
        control, Message(AUDIO, 1, 0, aac_sequence_header(asc)), Message(VIDEO, 1, 0, b""),
        Message(VIDEO, 1, 0, avc_header(AVCC)), data,
        *(Message(AUDIO, 1, 21 * i, aac_frame(f)) for i, f in enumerate(frames)),
        Message(VIDEO, 1, 40, avc_idr()), Message(AUDIO, 1, 60, mp3),
        Message(AUDIO, 1, 80, mp3),
    ]
    assert pull.flv.deliver(pull.reader, read, 10.0) == [control, data]
    stats = pull.reader.stats
    media = [m for m in read if m.type_id in (AUDIO, VIDEO) and m.payload]
    assert (stats.packets, stats.bytes) == (len(media), sum(len(m.payload) for m in media))
    assert len(pull.video) == 1 and pull.audio
    assert stats.frames == len(pull.video) + len(pull.audio)
    assert pull.reader.latency["video"].total + pull.reader.latency["audio"].total == len(media)
    assert [kind for kind, _ in pull.events] == ["unsupported_codec"]
    assert pull.events[0][1] == {"kind": "audio", "codec": "mp3"}


def test_caught_up_is_reported_once_audio_flows_again_after_a_burst() -> None:
    pull = Pull()
    asc, frames = aac_payloads()
    burst = [Message(AUDIO, 1, 0, aac_sequence_header(asc))]
    burst += [Message(AUDIO, 1, i * 1024 // 48, aac_frame(frames[i % len(frames)]))
              for i in range(100)]  # 2.1 s of audio, all arrived at once
    pull.flv.deliver(pull.reader, burst, 10.0)
    live = [Message(AUDIO, 1, 2150, aac_frame(frames[0]))]
    pull.flv.deliver(pull.reader, live, 10.05)
    pull.flv.deliver(pull.reader, [Message(AUDIO, 1, 2171, aac_frame(frames[1]))], 10.07)
    caught = [info for kind, info in pull.events if kind == "caught_up"]
    assert len(caught) == 1
    assert caught[0]["audio_dropped_ms"] >= 1500
