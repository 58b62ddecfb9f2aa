"""FLV tag bodies: files made of wxmgw.rtmp.flv's bodies are read back by ffprobe and ffmpeg.

The independent checks: ffprobe lists the packets (types, timestamps, codecs,
picture sizes) and ffmpeg decodes every video frame and the AAC audio of a
file made of our tags, including a second AVC sequence header mid-file; and
an FLV written by ffmpeg parses into tags that serialize back byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
import pytest

from wxmgw.codecs.h264 import NAL_PPS, NAL_SPS, AvcConfig, nal_type, split_annexb, to_avcc
from wxmgw.errors import ParseError
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE
from wxmgw.media.transcode import AudioEncoder
from wxmgw.rtmp import flv

# --- FLV file framing: how these tests put our tag bodies in a file (E.2, E.3, E.4.1) ---

#: TagType (E.4.1).
TAG_AUDIO: Final = 8
TAG_VIDEO: Final = 9
TAG_SCRIPT: Final = 18

#: Tag header (E.4.1) and PreviousTagSize (E.3) lengths.
TAG_HEADER_SIZE: Final = 11
PREVIOUS_TAG_SIZE: Final = 4


def file_header(*, audio: bool = True, video: bool = True) -> bytes:
    """The FLV header (E.2) and PreviousTagSize0: the 13 bytes before the first tag."""
    flags = (0x04 if audio else 0) | (0x01 if video else 0)
    return b"FLV\x01" + bytes((flags,)) + (9).to_bytes(4, "big") + bytes(PREVIOUS_TAG_SIZE)


@dataclass(frozen=True, slots=True)
class FlvTag:
    """One FLV tag with its trailing PreviousTagSize (E.4.1, E.3).

    ``timestamp`` is in milliseconds; it is written as the spec's 24 bits plus
    TimestampExtended, so it wraps at 2**32. StreamID is always 0.
    """

    kind: int
    timestamp: int
    data: bytes

    @classmethod
    def parse(cls, data: bytes) -> FlvTag:
        if len(data) < TAG_HEADER_SIZE + PREVIOUS_TAG_SIZE:
            raise ParseError(f"FLV tag too short ({len(data)} bytes)")
        if data[0] & 0xE0:
            raise ParseError(f"FLV tag with reserved or Filter bits set ({data[0]:#x})")
        size = int.from_bytes(data[1:4], "big")
        if len(data) != TAG_HEADER_SIZE + size + PREVIOUS_TAG_SIZE:
            raise ParseError(f"FLV tag of {size} data bytes in {len(data)} bytes")
        if data[8:11] != b"\x00\x00\x00":
            raise ParseError("FLV tag StreamID is not 0")
        end = TAG_HEADER_SIZE + size
        if int.from_bytes(data[end:], "big") != end:
            raise ParseError("PreviousTagSize does not match the tag")
        timestamp = int.from_bytes(data[4:7], "big") | data[7] << 24
        return cls(data[0], timestamp, bytes(data[TAG_HEADER_SIZE:end]))

    def __bytes__(self) -> bytes:
        size = len(self.data)
        ts = self.timestamp & 0xFFFFFFFF
        header = struct.pack(">B3s3sB3s", self.kind, size.to_bytes(3, "big"),
                             (ts & 0xFFFFFF).to_bytes(3, "big"), ts >> 24, b"\x00\x00\x00")
        return header + self.data + (TAG_HEADER_SIZE + size).to_bytes(PREVIOUS_TAG_SIZE, "big")


FPS = 25


def h264(width: int, height: int, frames: int) -> list[tuple[list[bytes], bool]]:
    """Access units (NAL units, keyframe) of a libx264 baseline clip, a keyframe every 5."""
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, FPS)
    enc.options = {"profile": "baseline", "tune": "zerolatency", "g": "5", "threads": "1"}
    out = []
    for i in range(frames):
        img = np.zeros((height, width, 3), np.uint8)
        img[:, (4 * i) % width:] = 255  # a moving edge: inter frames, no scene cuts
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(split_annexb(bytes(p)), p.is_keyframe) for p in enc.encode(frame)]
    out += [(split_annexb(bytes(p)), p.is_keyframe) for p in enc.encode(None)]
    return out


def sequence_header(nalus: list[bytes]) -> bytes:
    sps = next(n for n in nalus if nal_type(n) == NAL_SPS)
    pps = next(n for n in nalus if nal_type(n) == NAL_PPS)
    return flv.avc_sequence_header(bytes(AvcConfig.from_parameter_sets(sps, pps)))


def ffprobe(path: Path, *entries: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *entries, str(path)],
        check=True, capture_output=True, timeout=30,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


CLIPS = [h264(320, 240, 10), h264(160, 120, 10)]


@pytest.fixture(scope="module")
def switching_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.2 s: AAC tone throughout, 320x240 video for 0.4 s, then 160x120 for 0.4 s, then none."""
    clips = CLIPS
    encoder = AudioEncoder("AAC")
    tags = [FlvTag(TAG_SCRIPT, 0, flv.on_metadata(
                {"audiocodecid": 10.0, "videocodecid": 7.0, "answer": 42.0, "live": True})),
            FlvTag(TAG_AUDIO, 0, flv.aac_sequence_header(encoder.extradata))]
    packets = 0
    for tick in range(30):  # 40 ms each
        ms = tick * 40
        clip = clips[tick // 10] if tick < 20 else None
        if clip is not None:
            nalus, key = clip[tick % 10]
            if tick % 10 == 0:
                assert key
                tags.append(FlvTag(TAG_VIDEO, ms, sequence_header(nalus)))
            tags.append(FlvTag(TAG_VIDEO, ms, flv.avc_frame(to_avcc(nalus), key)))
        for half in (0, 1):
            start = (2 * tick + half) * AUDIO_FRAME_SAMPLES
            t = (np.arange(AUDIO_FRAME_SAMPLES) + start) / AUDIO_RATE
            pcm = (np.sin(2 * np.pi * 1000 * t) * 8000).astype(np.int16)
            for data in encoder.encode(pcm):
                tags.append(FlvTag(TAG_AUDIO, packets * 1024 * 1000 // AUDIO_RATE,
                                       flv.aac_frame(data)))
                packets += 1
    path = tmp_path_factory.mktemp("flv") / "switch.flv"
    path.write_bytes(file_header() + b"".join(bytes(t) for t in tags))
    return path


def test_ffprobe_reads_codecs_and_timestamps(switching_file: Path) -> None:
    info = ffprobe(switching_file, "-show_streams", "-show_packets", "-show_format")
    codecs = {s["codec_type"]: s["codec_name"] for s in info["streams"]}
    assert codecs == {"video": "h264", "audio": "aac"}
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert (audio["sample_rate"], audio["channels"]) == ("48000", 1)  # from the ASC
    video = [p for p in info["packets"] if p["codec_type"] == "video"]
    assert [p["pts"] for p in video] == [i * 40 for i in range(20)]
    keys = [key for clip in CLIPS for _, key in clip]
    assert [p["flags"].startswith("K") for p in video] == keys and keys.count(False) >= 10
    audio_pts = [p["pts"] for p in info["packets"] if p["codec_type"] == "audio"]
    assert audio_pts == [n * 1024 * 1000 // AUDIO_RATE for n in range(len(audio_pts))]
    assert len(audio_pts) >= 30 * 2 * AUDIO_FRAME_SAMPLES // 1024 - 2
    tags = info["format"]["tags"]
    assert (tags["answer"], tags["live"]) == ("42", "true")


def test_ffmpeg_decodes_every_frame_across_a_new_sequence_header(switching_file: Path) -> None:
    frames = ffprobe(switching_file, "-select_streams", "v", "-show_frames",
                     "-show_entries", "frame=width,height")["frames"]
    assert [(f["width"], f["height"]) for f in frames] == [(320, 240)] * 10 + [(160, 120)] * 10
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(switching_file), "-map", "0:a", "-f", "s16le",
         "-ac", "1", "-ar", str(AUDIO_RATE), "-"],
        check=True, capture_output=True, timeout=30,
    ).stdout
    samples = np.frombuffer(pcm, np.int16)[AUDIO_RATE // 10:]
    assert len(samples) >= AUDIO_RATE
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    assert abs(int(np.argmax(spectrum)) * AUDIO_RATE / len(samples) - 1000) < 5


@pytest.fixture(scope="module")
def ffmpeg_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("flv") / "ffmpeg.flv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=1",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:v", "libx264",
         "-pix_fmt", "yuv420p", "-profile:v", "baseline", "-c:a", "aac", "-f", "flv", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    return path.read_bytes()


def split_tags(data: bytes) -> list[bytes]:
    """The tags of an FLV file (each with its PreviousTagSize), by their DataSize fields."""
    out, pos = [], 13
    while pos < len(data):
        end = pos + TAG_HEADER_SIZE + int.from_bytes(data[pos + 1:pos + 4], "big") + 4
        out.append(data[pos:end])
        pos = end
    return out


def test_ffmpeg_written_tags_round_trip(ffmpeg_file: bytes) -> None:
    assert ffmpeg_file[:13] == file_header(audio=True, video=True)
    raw = split_tags(ffmpeg_file)
    tags = [FlvTag.parse(t) for t in raw]
    assert [bytes(t) for t in tags] == raw
    assert tags[0].kind == TAG_SCRIPT and tags[0].data.startswith(b"\x02\x00\x0aonMetaData")
    video = [t for t in tags if t.kind == TAG_VIDEO]
    audio = [t for t in tags if t.kind == TAG_AUDIO]
    assert video[0].data[:5] == b"\x17\x00\x00\x00\x00" and audio[0].data[:2] == b"\xaf\x00"
    assert all(t.data[:2] in (b"\x17\x01", b"\x27\x01") for t in video[1:-1])
    assert video[-1].data == b"\x17\x02\x00\x00\x00"  # ffmpeg ends with AVC end of sequence
    assert all(t.data[:2] == b"\xaf\x01" for t in audio[1:])
    assert [t.timestamp for t in video] == sorted(t.timestamp for t in video)
    assert len(video) == 25 + 2


def test_extended_timestamp_layout() -> None:
    tag = FlvTag(TAG_AUDIO, 0x12345678, b"\xaf\x01ab")
    data = bytes(tag)
    assert data[:11] == bytes([8, 0, 0, 4, 0x34, 0x56, 0x78, 0x12, 0, 0, 0])
    assert data[-4:] == (11 + 4).to_bytes(4, "big")
    assert FlvTag.parse(data) == tag
    assert FlvTag.parse(bytes(FlvTag(TAG_VIDEO, 2**32 + 5, b""))).timestamp == 5


def test_parse_rejects_truncated_and_random_bytes(ffmpeg_file: bytes) -> None:
    tag = split_tags(ffmpeg_file)[1]
    for cut in range(len(tag)):
        with pytest.raises(ParseError):
            FlvTag.parse(tag[:cut])
    rng = random.Random(5)
    for _ in range(2000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(40)))
        with contextlib.suppress(ParseError):
            FlvTag.parse(data)
