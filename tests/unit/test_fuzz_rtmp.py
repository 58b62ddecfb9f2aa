"""Properties of the RTMP wire code: chunk stream, AMF0, FLV tag bodies (issue #12, item 6).

What a live server sends may only end in :class:`ParseError`, never in
another exception; the chunk reader's result does not depend on how the
bytes were split, and what it holds stays under its limits; what the
gateway writes, it reads back.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wxmgw.codecs.h264 import NAL_IDR, AvcConfig, to_avcc
from wxmgw.errors import ParseError
from wxmgw.media.flvframes import FlvToFrames
from wxmgw.rtmp import amf0, flv
from wxmgw.rtmp.chunk import (
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
from wxmgw.rtmp.commands import Command
from wxmgw.rtmp.flv import AacPacket, AvcPacket

pytestmark = pytest.mark.fuzz

DATA = Path(__file__).resolve().parents[1] / "data"
#: The longest chunk header: 3-byte basic header, 11-byte message header, extended timestamp.
MAX_CHUNK_HEADER = 18
SMALL = RtmpLimits(max_media_message=1500, max_command_message=300, max_buffered=2000,
                   max_chunk_streams=4, amf0_depth=8)

# -- the chunk stream ---------------------------------------------------------------------------

messages = st.builds(
    Message,
    type_id=st.sampled_from([AUDIO, VIDEO, DATA_AMF0, COMMAND_AMF0]),
    stream_id=st.integers(0, 2**32 - 1),
    timestamp=st.one_of(st.integers(0, 0xFFFFFE), st.integers(0xFFFFFF, 2**32 - 1)),
    payload=st.binary(max_size=1200),
)


@st.composite
def wire_and_messages(draw: st.DrawFn) -> tuple[bytes, list[Message]]:
    """What a server sends: messages on chunk streams, maybe after a Set Chunk Size."""
    out = draw(st.lists(messages, max_size=12))
    size = draw(st.sampled_from([None, 1, 7, 128, 4096]))
    wire, writer, got = b"", ChunkWriter(), []
    if size is not None:
        control = Message(SET_CHUNK_SIZE, 0, 0, size.to_bytes(4, "big"))
        wire, writer.chunk_size, got = writer.chunks(control, 2), size, [control]
    for message in out:
        wire += writer.chunks(message, draw(st.integers(3, 63)))
    return wire, got + out


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(reader: ChunkReader, pieces: list[bytes]) -> tuple[list[Message], bool]:
    """The messages ``pieces`` give, and whether the reader raised ParseError."""
    got: list[Message] = []
    try:
        for piece in pieces:
            got += reader.feed(piece)
    except ParseError:
        return got, True
    return got, False


@given(wire_and_messages(), st.lists(st.integers(0, 2**16), max_size=20))
def test_any_split_of_the_input_gives_the_same_messages(
    case: tuple[bytes, list[Message]], cuts: list[int]
) -> None:
    wire, sent = case
    assert feed_all(ChunkReader(), splits(wire, cuts)) == (sent, False)


@st.composite
def raw_chunks(draw: st.DrawFn) -> bytes:
    """Chunk-shaped bytes: any header type, few chunk stream ids, lengths and types, any body."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 12))):
        fmt = draw(st.integers(0, 3))
        csid = draw(st.sampled_from([2, 3, 4, 5, 6, 64, 320]))
        if csid < 64:
            out.append(fmt << 6 | csid)
        elif csid < 320:
            out += bytes([fmt << 6, csid - 64])
        else:
            out += bytes([fmt << 6 | 1]) + (csid - 64).to_bytes(2, "little")
        timestamp = draw(st.sampled_from([0, 40, 0xFFFFFF]))
        header = timestamp.to_bytes(3, "big")
        header += draw(st.integers(0, 3000)).to_bytes(3, "big")
        header += bytes([draw(st.sampled_from([1, 2, 3, 4, 5, 8, 9, 18, 20, 22, 99]))])
        header += draw(st.integers(0, 3)).to_bytes(4, "little")
        out += header[: (11, 7, 3, 0)[fmt]]
        if timestamp == 0xFFFFFF or draw(st.booleans()):
            out += draw(st.binary(min_size=4, max_size=4))
        out += draw(st.binary(max_size=400))
    return bytes(out)


@given(st.one_of(raw_chunks(), st.binary(max_size=2000)), st.lists(st.integers(0, 2**16)))
def test_arbitrary_bytes_only_raise_parse_error_whatever_the_split(
    data: bytes, cuts: list[int]
) -> None:
    whole = feed_all(ChunkReader(SMALL), [data])
    one_by_one = feed_all(ChunkReader(SMALL), [data[i : i + 1] for i in range(len(data))])
    split = feed_all(ChunkReader(SMALL), splits(data, cuts))
    assert whole[1] == one_by_one[1] == split[1]
    if not whole[1]:
        assert whole[0] == one_by_one[0] == split[0]
    else:  # messages completed in the feed that raised are not returned
        assert one_by_one[0][: len(split[0])] == split[0]


@given(raw_chunks(), st.lists(st.integers(1, 700), min_size=1))
def test_what_the_reader_holds_stays_bounded(data: bytes, sizes: list[int]) -> None:
    reader, pos = ChunkReader(SMALL), 0
    with contextlib.suppress(ParseError):
        for size in sizes * (len(data) // sum(sizes) + 1):
            if pos >= len(data):
                break
            reader.feed(data[pos : pos + size])
            pos += size
            assert reader.buffered <= SMALL.max_buffered + MAX_CHUNK_HEADER


# -- AMF0 -----------------------------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(text, inner, max_size=5)),
    max_leaves=25,
)


@given(st.lists(values, max_size=5))
def test_amf0_round_trip(vs: list[amf0.Value]) -> None:
    assert amf0.decode(amf0.encode(*vs)) == vs


def test_amf0_long_string_round_trip() -> None:
    long = "é" * 40000  # 80000 bytes: a long string (AMF0 §2.14)
    assert amf0.encode(long)[0] == 0x0C and amf0.decode(amf0.encode(long)) == [long]


@given(st.binary(max_size=500))
def test_amf0_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        amf0.decode(data, max_depth=SMALL.amf0_depth)


@given(st.lists(values, min_size=1, max_size=3), st.data())
def test_amf0_corrupted_encodings_only_raise_parse_error(
    vs: list[amf0.Value], data: st.DataObject
) -> None:
    wire = bytearray(amf0.encode(*vs))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    with contextlib.suppress(ParseError):
        amf0.decode(bytes(wire[:cut]), max_depth=SMALL.amf0_depth)


@given(st.dictionaries(text, values, max_size=5))
def test_amf0_ecma_arrays_stay_ecma_arrays(fields: dict[str, amf0.Value]) -> None:
    wire = amf0.encode(amf0.EcmaArray(fields))
    (decoded,) = amf0.decode(wire)
    assert isinstance(decoded, amf0.EcmaArray) and decoded == fields
    assert amf0.encode(decoded) == wire


@given(text, st.floats(allow_nan=False), values, st.lists(values, max_size=3))
def test_commands_read_back_as_written(
    name: str, transaction: float, obj: amf0.Value, arguments: list[amf0.Value]
) -> None:
    command = Command(name, transaction, obj, tuple(arguments))
    assert Command.parse(bytes(command)) == command


@given(st.binary(max_size=500))
def test_command_payloads_only_raise_parse_error(payload: bytes) -> None:
    with contextlib.suppress(ParseError):
        Command.parse(payload, max_depth=SMALL.amf0_depth)


# -- FLV tag bodies ---------------------------------------------------------------------------


@given(st.integers(0, 255), st.binary(max_size=100))
def test_aac_packets_read_back_as_written(packet_type: int, data: bytes) -> None:
    packet = AacPacket(packet_type, data)
    assert AacPacket.parse(bytes(packet)) == packet


@given(st.integers(0, 255), st.binary(max_size=100), st.booleans(),
       st.integers(-(2**23), 2**23 - 1))
def test_avc_packets_read_back_as_written(
    packet_type: int, data: bytes, keyframe: bool, composition_time: int
) -> None:
    packet = AvcPacket(packet_type, data, keyframe, composition_time)
    assert AvcPacket.parse(bytes(packet)) == packet


@given(st.binary(max_size=20))
def test_tag_bodies_parse_or_raise_parse_error(body: bytes) -> None:
    for parse in (AacPacket.parse, AvcPacket.parse):
        with contextlib.suppress(ParseError):
            parse(body)
    if body:
        flv.audio_codec(body[0])


@given(st.dictionaries(text, st.one_of(st.booleans(), st.floats(allow_nan=False)), max_size=8))
def test_on_metadata_reads_back_as_written(fields: dict[str, float | bool]) -> None:
    body = amf0.encode("@setDataFrame") + flv.on_metadata(fields)
    assert amf0.decode(body) == ["@setDataFrame", "onMetaData", fields]


AVCC = (DATA / "h264_avcc_baseline.bin").read_bytes()
nalus = st.lists(
    st.builds(lambda kind, ref, body: bytes([ref << 5 | kind]) + body,
              st.sampled_from([1, NAL_IDR, 6, 9]), st.integers(0, 3),
              st.binary(min_size=1, max_size=300)),
    min_size=1, max_size=6,
)


@given(nalus, st.integers(0, 2**31), st.booleans())
def test_avc_tags_read_back_as_written(units: list[bytes], dts: int, keyflag: bool) -> None:
    reader = FlvToFrames(audio_rate=48000, max_backlog=0.1)
    assert reader.video(dts, flv.avc_sequence_header(AVCC), 100.0) is None
    frame = reader.video(dts, flv.avc_frame(to_avcc(units), keyflag), 100.0)
    assert frame is not None
    config = AvcConfig.parse(AVCC)
    keyframe = any(n[0] & 0x1F == NAL_IDR for n in units)
    assert frame.keyframe == keyframe
    assert frame.nalus == ([*config.sps, *config.pps, *units] if keyframe else units)
    assert frame.ts == 100.0


@given(st.binary(max_size=600))
def test_video_tag_bodies_only_raise_parse_error(body: bytes) -> None:
    reader = FlvToFrames(audio_rate=48000, max_backlog=0.1)
    with contextlib.suppress(ParseError):
        reader.video(0, flv.avc_sequence_header(AVCC), 0.0)
        reader.video(40, body, 0.04)
    with contextlib.suppress(ParseError):
        reader.video(80, body, 0.08)  # a body as a sequence header, or after a broken one
    if body:
        flv.video_codec(body[0])  # any first byte names a codec, or none
