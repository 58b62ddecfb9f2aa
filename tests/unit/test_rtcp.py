from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from wxmgw.errors import ParseError
from wxmgw.rtp.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    compound,
    dlsr_from_seconds,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    unix_from_ntp,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def hex_packets(name: str) -> list[bytes]:
    lines = (DATA / name).read_text().splitlines()
    return [bytes.fromhex(line) for line in lines if line and not line.startswith("#")]


def test_gstreamer_sr_sdes_bye() -> None:
    first, last = (parse_compound(raw) for raw in hex_packets("rtcp_gst.hex"))
    sr, sdes = first
    assert isinstance(sr, SenderReport) and isinstance(sdes, Sdes)
    assert sr.ssrc == 0x62A12EE6 and sr.reports == []
    assert sr.octet_count == sr.packet_count * 160  # PCMA: 160 octets per packet
    assert sdes.cnames == {sr.ssrc: "user758259101@host-f507f4eb"}
    assert sdes.chunks[0].items[1] == (6, b"GStreamer")  # TOOL item kept raw
    assert 2020 < 1970 + unix_from_ntp(sr.ntp_timestamp) / 31_557_600 < 2100
    sr2, _, bye = last
    assert isinstance(sr2, SenderReport) and sr2.packet_count == 300
    assert bye == Bye([sr.ssrc])


def test_round_trip_capture() -> None:
    for raw in hex_packets("rtcp_gst.hex"):
        assert compound(parse_compound(raw)) == raw


SAMPLES: list[RtcpPacket] = [
    SenderReport(1, ntp_from_unix(1_700_000_000.25), 2**32 - 1, 10, 1600, [ReportBlock(2)]),
    ReceiverReport(
        3,
        [ReportBlock(4, 25, -5, 0x1_0005, 80, 0x12345678, 65536),
         ReportBlock(5, 255, 0x7FFFFF, 1, 2, 3, 4)],
    ),
    ReceiverReport(6),
    Sdes.for_cname(7, "wxmgw@gw1"),
    Sdes([SdesChunk(8, [(1, b"abc"), (6, b"tool")]), SdesChunk(9, [])]),
    Bye([10, 11], b"bye"),
    Bye([12]),
    Pli(13, 14),
    Fir(15, [(16, 1), (17, 255)]),
    Nack(18, 19, [7]),
    Nack(20, 21, [65534, 65535, 0, 15, 40]),
]


@pytest.mark.parametrize("pkt", SAMPLES, ids=lambda p: type(p).__name__)
def test_round_trip(pkt: RtcpPacket) -> None:
    raw = bytes(pkt)
    assert len(raw) % 4 == 0
    assert type(pkt).parse(raw) == pkt
    assert parse_compound(raw) == [pkt]


def test_known_layouts() -> None:
    assert bytes(Pli(0x01020304, 0x0A0B0C0D)) == bytes.fromhex("81ce0002010203040a0b0c0d")
    fir = bytes.fromhex("84ce0004" "00000001" "00000000" "00000002" "07000000")
    assert bytes(Fir(1, [(2, 7)])) == fir
    block = bytes(ReportBlock(1, 0x40, -1, 2, 3, 4, 5))
    assert block[4:8] == bytes.fromhex("40ffffff")
    assert ReportBlock.parse(block).packets_lost == -1
    sdes = bytes.fromhex("81ca0003" "00000001" "01026162" "00000000")
    assert bytes(Sdes.for_cname(1, "ab")) == sdes


def test_compound_skips_unknown_types() -> None:
    app = bytes.fromhex("80cc0002" "00000001" "6e616d65")  # APP
    tmmbr = bytes.fromhex("83cd0004" "00000001" "00000000" "00000002" "00000000")  # RTPFB 3
    remb = bytes.fromhex("8fce0002" "00000001" "00000000")  # PSFB FMT 15 (REMB-ish)
    rr = ReceiverReport(1)
    packets = parse_compound(bytes(rr) + app + tmmbr + remb + bytes(Pli(1, 2)))
    assert packets == [rr, Pli(1, 2)]


def test_nack_layout_packs_runs_into_pid_and_blp() -> None:
    # RFC 4585 §6.2.1: PID 5 with BLP bits 0 and 2 names 5, 6 and 8.
    raw = bytes.fromhex("81cd0003" "00000001" "00000002" "00050005")
    assert Nack.parse(raw) == Nack(1, 2, [5, 6, 8])
    assert bytes(Nack(1, 2, [5, 6, 8])) == raw
    # 17 after the PID no longer fits its mask; a wrap stays in one entry.
    assert len(bytes(Nack(1, 2, [100, 117]))) == 20
    assert len(bytes(Nack(1, 2, [65535, 0, 1]))) == 16


def test_padding_in_last_packet() -> None:
    raw = bytes(ReceiverReport(1)) + bytes.fromhex("a1ce0003" "00000001" "00000002" "00000004")
    assert parse_compound(raw) == [ReceiverReport(1), Pli(1, 2)]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x80\xc9\x00",
        bytes.fromhex("40c90001" "00000001"),  # version 1
        bytes.fromhex("80c90002" "00000001"),  # length past the end
        bytes.fromhex("81c90001" "00000001"),  # RR claims a block it does not have
        bytes.fromhex("80c80001" "00000001"),  # SR without sender info
        bytes.fromhex("81ca0002" "00000001" "01050000"),  # SDES item past the end
        bytes.fromhex("81ca0002" "00000001" "01006162"),  # SDES chunk never terminated
        bytes.fromhex("82cb0001" "00000001"),  # BYE claims 2 sources, holds 1
        bytes.fromhex("80cb0001" "05616263"),  # BYE reason past the end
        bytes.fromhex("84ce0003" "00000001" "00000000" "00000002"),  # FIR entry cut
        bytes.fromhex("81ce0001" "00000001"),  # PLI without media SSRC
        bytes.fromhex("a1ce0002" "00000001" "00000000"),  # padding count 0
        bytes.fromhex("81cd0002" "00000001" "00000002"),  # NACK without an entry
    ],
)
def test_malformed(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_compound(raw)


def test_single_packet_parse_is_strict() -> None:
    with pytest.raises(ParseError):
        ReceiverReport.parse(bytes(ReceiverReport(1)) + bytes(Pli(1, 2)))
    with pytest.raises(ParseError):
        Pli.parse(bytes(Fir(1, [(2, 3)])))
    with pytest.raises(ParseError):
        SenderReport.parse(bytes(ReceiverReport(1)))


def test_random_and_truncated_bytes_raise_only_parse_error() -> None:
    rng = random.Random(5104)
    samples = [*hex_packets("rtcp_gst.hex"), compound(SAMPLES)]
    for i in range(4000):
        if i % 2:
            raw = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(64)))
            if raw and i % 4 == 1:
                raw[0] = 0x80 | (raw[0] & 0x3F)
                if len(raw) > 3:  # plausible type and length, random body
                    raw[1] = rng.choice((200, 201, 202, 203, 205, 206))
                    raw[2:4] = ((len(raw) // 4) - 1).to_bytes(2, "big")
        else:
            base = rng.choice(samples)
            raw = bytearray(base[: rng.randrange(len(base) + 1)])
            if raw and i % 4 == 2:
                raw[rng.randrange(len(raw))] = rng.getrandbits(8)
        with contextlib.suppress(ParseError):
            parse_compound(bytes(raw))


def test_ntp_helpers() -> None:
    assert ntp_from_unix(0.0) == 2_208_988_800 << 32
    ntp = ntp_from_unix(1_700_000_000.5)
    assert ntp == ((1_700_000_000 + 2_208_988_800) << 32) | (1 << 31)
    assert unix_from_ntp(ntp) == 1_700_000_000.5
    assert abs(unix_from_ntp(ntp_from_unix(1_234_567_890.123456)) - 1_234_567_890.123456) < 1e-6
    assert ntp_middle32(0x1122334455667788) == 0x33445566
    assert dlsr_from_seconds(1.5) == 98304  # 1.5 * 65536 (RFC 3550 §6.4.1)


def test_count_overflow_is_refused() -> None:
    with pytest.raises(ValueError):
        bytes(ReceiverReport(1, [ReportBlock(i) for i in range(32)]))
