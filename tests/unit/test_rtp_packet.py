from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from wxmgw.errors import ParseError
from wxmgw.rtp.packet import HeaderExtension, RtpPacket, fixed_header, is_rtcp

DATA = Path(__file__).resolve().parent.parent / "data"


def hex_packets(name: str) -> list[bytes]:
    lines = (DATA / name).read_text().splitlines()
    return [bytes.fromhex(line) for line in lines if line and not line.startswith("#")]


def test_gstreamer_pcma_capture() -> None:
    packets = [RtpPacket.parse(raw) for raw in hex_packets("rtp_pcma_gst.hex")]
    assert len(packets) == 5
    first = packets[0]
    assert first.payload_type == 8 and first.marker  # RFC 3551: marker on the first packet
    assert not any(p.marker for p in packets[1:])
    assert {p.ssrc for p in packets} == {first.ssrc}
    for a, b in itertools.pairwise(packets):
        assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
        assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160
    assert all(len(p.payload) == 160 and not p.csrcs and p.extension is None for p in packets)


def test_round_trip_capture() -> None:
    for raw in hex_packets("rtp_pcma_gst.hex"):
        assert bytes(RtpPacket.parse(raw)) == raw


def test_round_trip_all_fields() -> None:
    pkt = RtpPacket(
        payload_type=96,
        sequence_number=65535,
        timestamp=2**32 - 1,
        ssrc=0xDEADBEEF,
        payload=b"\x65\x88\x84",
        marker=True,
        csrcs=(1, 2, 3),
        extension=HeaderExtension(0xBEDE, b"\x10\xff\x00\x00"),
        padding=3,
    )
    raw = bytes(pkt)
    assert len(raw) == 12 + 12 + 8 + 3 + 3
    assert raw[0] == 0x80 | 0x20 | 0x10 | 3 and raw[1] == 0x80 | 96
    assert raw[-3:] == b"\x00\x00\x03"
    assert RtpPacket.parse(raw) == pkt
    assert bytes(RtpPacket.parse(raw)) == raw


def test_fixed_header_and_payload_are_the_whole_plain_packet() -> None:
    """What a sending session builds with no RtpPacket is the packet, byte for byte."""
    for raw in hex_packets("rtp_pcma_gst.hex"):
        p = RtpPacket.parse(raw)
        header = fixed_header(p.payload_type, p.marker, p.sequence_number, p.timestamp, p.ssrc)
        assert header + p.payload == raw == bytes(p)
    rng = random.Random(17)
    for _ in range(200):
        p = RtpPacket(rng.randrange(128), rng.randrange(1 << 16), rng.randrange(1 << 32),
                      rng.randrange(1 << 32), rng.randbytes(rng.randrange(20)), rng.random() < 0.5)
        header = fixed_header(p.payload_type, p.marker, p.sequence_number, p.timestamp, p.ssrc)
        assert header + p.payload == bytes(p)


def test_padding_is_stripped() -> None:
    raw = bytes.fromhex("a00000010000000200000003") + b"abc" + b"\x09\x09\x03"
    pkt = RtpPacket.parse(raw)
    assert pkt.payload == b"abc" and pkt.padding == 3
    assert bytes(pkt) == raw[:15] + b"\x00\x00\x03"  # padding octets come back zeroed


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x80\x00",
        bytes(12),  # version 0
        bytes.fromhex("c0000001000000020000000341"),  # version 3
        bytes.fromhex("82000001000000020000000300000001"),  # 2 CSRCs, 1 present
        bytes.fromhex("90000001000000020000000301"),  # extension header cut
        bytes.fromhex("900000010000000200000003bede0002") + bytes(4),  # extension body cut
        bytes.fromhex("a00000010000000200000003") + b"\x00",  # padding count 0
        bytes.fromhex("a00000010000000200000003") + b"\x05",  # padding past header
    ],
)
def test_malformed(raw: bytes) -> None:
    with pytest.raises(ParseError):
        RtpPacket.parse(raw)


def test_random_and_truncated_bytes_raise_only_parse_error() -> None:
    rng = random.Random(3550)
    samples = hex_packets("rtp_pcma_gst.hex")
    ext = HeaderExtension(1, bytes(8))
    samples.append(bytes(RtpPacket(96, 1, 2, 3, b"xyz", True, (7,), ext, padding=2)))
    for i in range(4000):
        if i % 2:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(40)))
            raw = bytes([0x80 | (raw[0] & 0x3F)]) + raw[1:] if raw and i % 4 == 1 else raw
        else:
            base = rng.choice(samples)
            raw = base[: rng.randrange(len(base) + 1)]
        try:
            pkt = RtpPacket.parse(raw)
        except ParseError:
            continue
        if not pkt.padding:
            assert bytes(pkt) == raw


def test_serialize_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        bytes(RtpPacket(128, 0, 0, 0))
    with pytest.raises(ValueError):
        bytes(RtpPacket(0, 0, 0, 0, csrcs=tuple(range(16))))
    with pytest.raises(ValueError):
        bytes(RtpPacket(0, 0, 0, 0, extension=HeaderExtension(1, b"abc")))


def test_is_rtcp() -> None:
    assert not any(is_rtcp(raw) for raw in hex_packets("rtp_pcma_gst.hex"))
    assert all(is_rtcp(raw) for raw in hex_packets("rtcp_gst.hex"))
    assert is_rtcp(bytes.fromhex("81ce0002")) and is_rtcp(bytes.fromhex("80df"))
    assert not is_rtcp(bytes.fromhex("80e0"))  # PT 96 with marker (second byte 224)
    assert not is_rtcp(bytes.fromhex("807f")) and not is_rtcp(b"\x80")
