"""RTMP wire pieces: AMF0, the chunk stream both ways, URLs, the AAC config parser."""

from __future__ import annotations

import contextlib
import random

import pytest

from wxmgw.errors import ParseError
from wxmgw.media import amf0
from wxmgw.media.rtmp import (
    AUDIO,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkReader,
    ChunkWriter,
    Message,
    RtmpUrl,
)
from wxmgw.media.rtmp_reader import aac_rate_and_channels


def test_amf0_round_trip() -> None:
    values: list[amf0.Value] = [
        "connect", 1.0, None, True, {"app": "live", "n": 2.0, "o": {"x": [1.0, "y"]}}, "é" * 3
    ]
    assert amf0.decode(amf0.encode(*values)) == values


def test_amf0_ecma_array_and_date() -> None:
    data = bytes([0x08, 0, 0, 0, 1, 0, 1]) + b"k" + amf0.encode(3.0) + b"\x00\x00\x09"
    data += bytes([0x0B]) + amf0.encode(5.0)[1:] + b"\x00\x00"
    assert amf0.decode(data) == [{"k": 3.0}, 5.0]


def test_amf0_garbage_raises_only_parse_error() -> None:
    rng = random.Random(7)
    good = amf0.encode("onStatus", 0.0, None, {"level": "status", "code": "NetStream.Play.Start"})
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(ParseError):
            amf0.decode(bytes(data[: rng.randint(0, len(data))]))


@pytest.mark.parametrize("chunk_size", [128, 4096, 7])
@pytest.mark.parametrize("piece", [1, 13, 100000])
def test_chunks_round_trip_in_any_pieces(chunk_size: int, piece: int) -> None:
    writer = ChunkWriter(chunk_size)
    messages = [
        Message(VIDEO, 1, 40 * i, bytes(range(256)) * (i % 7)) for i in range(20)
    ] + [Message(AUDIO, 1, 0x1000000 + 23 * i, b"a" * 300) for i in range(5)]  # extended
    wire = b"".join(writer.chunks(m, 4 if m.type_id == VIDEO else 5) for m in messages)
    reader = ChunkReader()
    reader.chunk_size = chunk_size
    got: list[Message] = []
    for i in range(0, len(wire), piece):
        got += reader.feed(wire[i : i + piece])
    assert got == messages


def test_set_chunk_size_applies_to_the_next_chunk() -> None:
    wire = ChunkWriter(128).chunks(Message(SET_CHUNK_SIZE, 0, 0, (1000).to_bytes(4, "big")), 2)
    wire += ChunkWriter(1000).chunks(Message(VIDEO, 1, 0, b"v" * 900), 6)
    reader = ChunkReader()
    got = reader.feed(wire)
    assert reader.chunk_size == 1000 and got[1].payload == b"v" * 900


def test_type1_2_3_headers_apply_deltas() -> None:
    # fmt 0 at ts 1000, fmt 1 (+40, new length), fmt 2 (+40), fmt 3 (+40 again).
    wire = bytes([0x04]) + (1000).to_bytes(3, "big") + (2).to_bytes(3, "big") + bytes([VIDEO])
    wire += (1).to_bytes(4, "little") + b"aa"
    wire += bytes([0x44]) + (40).to_bytes(3, "big") + (3).to_bytes(3, "big") + bytes([VIDEO])
    wire += b"bbb"
    wire += bytes([0x84]) + (40).to_bytes(3, "big") + b"ccc"
    wire += bytes([0xC4]) + b"ddd"
    got = ChunkReader().feed(wire)
    assert [(m.timestamp, m.payload, m.stream_id) for m in got] == [
        (1000, b"aa", 1), (1040, b"bbb", 1), (1080, b"ccc", 1), (1120, b"ddd", 1)]


def test_chunk_stream_starting_without_type0_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        ChunkReader().feed(bytes([0x44]) + bytes(7))


@pytest.mark.parametrize(("url", "app", "stream", "port"), [
    ("rtmp://127.0.0.1:1936/live/cam", "live", "cam", 1936),
    ("rtmp://h/live/cam?token=a/b", "live", "cam?token=a/b", 1935),
    ("rtmp://h/app/inst/cam", "app/inst", "cam", 1935),
])
def test_url_split_like_ffmpeg(url: str, app: str, stream: str, port: int) -> None:
    parsed = RtmpUrl.parse(url)
    assert (parsed.app, parsed.stream, parsed.port) == (app, stream, port)
    assert parsed.tc_url == f"rtmp://{parsed.host}:{port}/{app}"


@pytest.mark.parametrize("url", ["http://h/live/x", "rtmp://h/live", "rtmp:///live/x"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ParseError):
        RtmpUrl.parse(url)


@pytest.mark.parametrize(("asc", "expected"), [
    (bytes([0x12, 0x08]), (44100, 1)),   # AAC-LC, 44.1 kHz, mono
    (bytes([0x11, 0x90]), (48000, 2)),   # AAC-LC, 48 kHz, stereo
    (bytes([0x15, 0x88]), (8000, 1)),
])
def test_aac_config(asc: bytes, expected: tuple[int, int]) -> None:
    assert aac_rate_and_channels(asc) == expected


@pytest.mark.parametrize("asc", [b"", b"\x12", bytes([0x16, 0x88])])
def test_bad_aac_config(asc: bytes) -> None:
    with pytest.raises(ParseError):
        aac_rate_and_channels(asc)
