"""The H.264 bitstream helpers: Annex B, AVCC, NAL types and the avcC record
(:mod:`wxmgw.codecs.h264`), against real records written by FFmpeg."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from wxmgw.codecs.h264 import AvcConfig, nal_type, split_annexb, split_avcc, to_annexb, to_avcc
from wxmgw.errors import ParseError

DATA = Path(__file__).resolve().parent.parent / "data"

SPS = bytes.fromhex("6742c00bd902847e5c0440000003004000000c83c50a92")
PPS = bytes.fromhex("68cb83cb20")
AUD = b"\x09\xf0"
SEI = b"\x06\x05\x01\x00\x80"


def _nal(header: int, size: int, seed: int = 0) -> bytes:
    return bytes((header,)) + random.Random(seed).randbytes(size - 1)


def _idr(size: int = 500, seed: int = 1) -> bytes:
    return _nal(0x65, size, seed)


def _slice(size: int = 300, seed: int = 2) -> bytes:
    return _nal(0x41, size, seed)


def test_split_annexb_three_and_four_byte_start_codes() -> None:
    stream = b"\xff\x00" + b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00"
    stream += b"\x00\x00\x00\x01" + _idr() + b"\x00\x00\x01" + b"\x00\x00\x01" + _slice()
    assert split_annexb(stream) == [SPS, PPS, _idr(), _slice()]
    assert split_annexb(to_annexb([SPS, PPS, _idr()])) == [SPS, PPS, _idr()]
    assert split_annexb(b"") == [] and split_annexb(b"\x00\x00\x00") == []


@pytest.mark.parametrize("length_size", [1, 2, 4])
def test_avcc_round_trip(length_size: int) -> None:
    nalus = [SPS, PPS, _nal(0x65, 200)]
    data = to_avcc(nalus, length_size)
    assert len(data) == sum(len(n) for n in nalus) + 3 * length_size
    assert split_avcc(data, length_size) == nalus


def test_split_avcc_truncated_raises_parse_error() -> None:
    data = to_avcc([SPS, PPS])
    for cut in range(1, len(data)):
        if cut == 4 + len(SPS):
            assert split_avcc(data[:cut]) == [SPS]
            continue
        with pytest.raises(ParseError):
            split_avcc(data[:cut])
    with pytest.raises(OverflowError):
        to_avcc([bytes(300)], 1)


def test_nal_type() -> None:
    assert [nal_type(n) for n in (SPS, PPS, AUD, _idr(), _slice())] == [7, 8, 9, 5, 1]
    with pytest.raises(ParseError):
        nal_type(b"")


def test_nal_parsers_face_random_bytes() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(40))
        split_annexb(data)
        for parse in (split_avcc, AvcConfig.parse):
            with contextlib.suppress(ParseError):
                parse(data)


# --- AvcConfig ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "profile", "ext"),
    [("h264_avcc_baseline.bin", 66, b""), ("h264_avcc_high.bin", 100, b"\xfd\xf8\xf8\x00")],
)
def test_avc_config_parse_real_records(name: str, profile: int, ext: bytes) -> None:
    data = (DATA / name).read_bytes()
    cfg = AvcConfig.parse(data)
    assert (cfg.profile, cfg.length_size, cfg.ext) == (profile, 4, ext)
    assert [nal_type(s) for s in cfg.sps] == [7] and [nal_type(p) for p in cfg.pps] == [8]
    assert cfg.sps[0][1:4] == bytes((cfg.profile, cfg.compat, cfg.level))
    assert bytes(cfg) == data


def test_avc_config_from_parameter_sets_matches_ffmpeg() -> None:
    """FFmpeg's FLV muxer wrote this record from the same SPS/PPS."""
    data = (DATA / "h264_avcc_baseline.bin").read_bytes()
    cfg = AvcConfig.parse(data)
    assert bytes(AvcConfig.from_parameter_sets(cfg.sps[0], cfg.pps[0])) == data
    with pytest.raises(ParseError):
        AvcConfig.from_parameter_sets(PPS, PPS)
    with pytest.raises(ParseError):
        AvcConfig.from_parameter_sets(SPS, b"")


def test_avc_config_truncated_raises_parse_error() -> None:
    data = (DATA / "h264_avcc_high.bin").read_bytes()
    without_ext = data[:-4]
    for cut in range(len(without_ext) - 1):
        with pytest.raises(ParseError):
            AvcConfig.parse(without_ext[:cut])
    with pytest.raises(ParseError):
        AvcConfig.parse(b"\x02" + data[1:])


# --- packetizer --------------------------------------------------------------------------
