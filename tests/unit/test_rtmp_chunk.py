"""The RTMP chunk stream both ways, and the limits that bound it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from wxmgw.config import Config
from wxmgw.errors import InvalidArgument, ParseError
from wxmgw.rtmp.chunk import (
    ABORT,
    AUDIO,
    COMMAND_AMF0,
    DATA_AMF0,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkWriter,
    Message,
    RtmpLimits,
)
from wxmgw.rtmp.chunkreader import ChunkReader


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


# -- hostile input: every limit is a ParseError (issue #12, findings 2 and 3) -------------------


def _basic(fmt: int, csid: int) -> bytes:
    """A chunk basic header (§5.3.1.1): one byte up to id 63, two up to 319."""
    return bytes([fmt << 6 | csid]) if csid < 64 else bytes([fmt << 6, csid - 64])


def _header(csid: int, length: int, type_id: int = VIDEO) -> bytes:
    return _basic(0, csid) + bytes(3) + length.to_bytes(3, "big") + bytes([type_id]) + bytes(4)


@pytest.mark.parametrize(("limits", "refusal"), [
    (RtmpLimits(), "more than 32 chunk streams"),
    (RtmpLimits(max_chunk_streams=100), "more than 4194304 bytes of partial messages"),
])
def test_many_chunk_streams_of_partial_messages_are_refused(
    limits: RtmpLimits, refusal: str
) -> None:
    """Finding 3: 64 chunk streams, each with 1 MB of a message that never ends."""
    reader = ChunkReader(limits)
    reader.feed(ChunkWriter().chunks(
        Message(SET_CHUNK_SIZE, 0, 0, (64 << 10).to_bytes(4, "big")), 2))
    most = 0
    with pytest.raises(ParseError, match=refusal):
        for piece in range(16):  # 64 KiB of each stream's message at a time
            for csid in range(3, 3 + 64):
                head = _header(csid, 1 << 20) if piece == 0 else _basic(3, csid)
                reader.feed(head + bytes(64 << 10))
                most = max(most, reader.buffered)
    assert most <= limits.max_buffered


def test_chunk_stream_count_is_capped() -> None:
    reader = ChunkReader(RtmpLimits(max_chunk_streams=4))
    for csid in range(3, 7):  # each one's message partial: its first 128-byte chunk
        reader.feed(_header(csid, 200) + bytes(128))
    with pytest.raises(ParseError, match="more than 4 chunk streams"):
        reader.feed(_header(7, 200))


@pytest.mark.parametrize(("type_id", "length", "fits"), [
    (VIDEO, 2 << 20, True),
    (VIDEO, (2 << 20) + 1, False),
    (AUDIO, 3 << 20, False),
    (COMMAND_AMF0, 64 << 10, True),
    (COMMAND_AMF0, (64 << 10) + 1, False),
    (DATA_AMF0, 100_000, False),
    (SET_CHUNK_SIZE, 0xFFFFFF, False),
])
def test_message_size_caps_fire_on_the_header(type_id: int, length: int, fits: bool) -> None:
    """A declared length past its type's cap fails before any of its bytes are kept."""
    reader = ChunkReader()
    if fits:
        assert reader.feed(_header(3, length, type_id)) == []
    else:
        with pytest.raises(ParseError, match=f"message of {length} bytes"):
            reader.feed(_header(3, length, type_id))


def test_abort_releases_what_was_buffered() -> None:
    reader = ChunkReader()
    reader.feed(_header(5, 1000) + bytes(128))
    assert reader.buffered == 128
    abort = ChunkWriter().chunks(Message(ABORT, 0, 0, (5).to_bytes(4, "big")), 2)
    assert reader.feed(abort)[0].type_id == ABORT
    assert reader.buffered == 0


@pytest.mark.parametrize("bad", [
    {"max_media_message": 1 << 24},  # a 24-bit length never exceeds it
    {"max_command_message": 0},
    {"max_buffered": 1 << 20},  # less than the largest media message
    {"max_chunk_streams": 0},
    {"amf0_depth": 0},
    {"max_backlog": 0.0},  # every audio frame would be backlog
])
def test_limits_that_could_never_fire_or_always_do_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        RtmpLimits(**bad)


def test_config_carries_the_rtmp_limits() -> None:
    config = Config(rtmp_max_media_message=1 << 20, rtmp_amf0_depth=8).check()
    assert config.rtmp_limits() == RtmpLimits(max_media_message=1 << 20, amf0_depth=8)
    with pytest.raises(InvalidArgument):
        Config(rtmp_max_media_message=16 << 20).check()


def test_the_wire_modules_pull_in_no_io() -> None:
    """chunk, amf0, commands, flv and url are pure: importing them brings no sockets or gevent."""
    code = ("import sys, wxmgw.rtmp.chunk, wxmgw.rtmp.amf0, wxmgw.rtmp.commands, wxmgw.rtmp.flv,"
            " wxmgw.rtmp.url; print(sorted(m for m in ('gevent', 'av', 'socket', 'ssl', 'logging')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
