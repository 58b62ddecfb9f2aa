"""Properties of the H.264 wire code: Annex B, AVCC, avcC and the RFC 6184 depacketizer.

Parsers of untrusted bytes return or raise ``ParseError``, writers round trip,
and the depacketizer never raises, emits only whole units within its cap and
holds no more than the cap for the unit it is building, whatever arrives.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wxmgw.codecs.h264 import AvcConfig, nal_type, split_annexb, split_avcc, to_annexb, to_avcc
from wxmgw.errors import ParseError
from wxmgw.rtp.h264 import NAL_FU_A, NAL_STAP_A, AccessUnit, H264Depacketizer, H264Packetizer

pytestmark = pytest.mark.fuzz


def emulation_prevention(rbsp: bytes) -> bytes:
    """H.264 §7.4.1.1: 0x03 after two zero bytes that a byte 0x00-0x03 follows."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def nal_units(
    min_type: int = 1, max_type: int = 23, max_size: int = 300,
) -> st.SearchStrategy[bytes]:
    """NAL units as an encoder makes them: forbidden bit clear, no start code emulated
    inside (§7.4.1.1), never ending with 0x00 (the RBSP trailing bits)."""
    header = st.tuples(st.integers(0, 3), st.integers(min_type, max_type)).map(
        lambda nri_type: bytes(((nri_type[0] << 5) | nri_type[1],)))
    body = st.binary(max_size=max_size).map(lambda b: emulation_prevention(b.rstrip(b"\x00")))
    return st.tuples(header, body).map(lambda hb: hb[0] + hb[1])


# --- Annex B, AVCC, NAL header -----------------------------------------------------------


@given(st.binary(max_size=500))
def test_split_annexb_of_any_bytes(data: bytes) -> None:
    for nalu in split_annexb(data):
        assert nalu and not nalu.endswith(b"\x00") and b"\x00\x00\x01" not in nalu


@given(st.lists(nal_units(), max_size=8))
def test_annexb_round_trip(nalus: list[bytes]) -> None:
    assert split_annexb(to_annexb(nalus)) == nalus


@given(st.binary(max_size=500), st.sampled_from([1, 2, 4]))
def test_split_avcc_of_any_bytes(data: bytes, length_size: int) -> None:
    try:
        nalus = split_avcc(data, length_size)
    except ParseError:
        return
    assert all(nalus) and sum(len(n) for n in nalus) <= len(data)


@given(st.lists(st.binary(max_size=300), max_size=8), st.sampled_from([2, 4]))
def test_avcc_round_trip(nalus: list[bytes], length_size: int) -> None:
    assert split_avcc(to_avcc(nalus, length_size), length_size) == [n for n in nalus if n]


@given(st.binary(max_size=4))
def test_nal_type_of_any_bytes(data: bytes) -> None:
    try:
        assert 0 <= nal_type(data) <= 31
    except ParseError:
        assert not data


# --- avcC (ISO/IEC 14496-15 §5.2.4.1) ---------------------------------------------------


@given(st.binary(max_size=300))
def test_avc_config_of_any_bytes(data: bytes) -> None:
    try:
        config = AvcConfig.parse(data)
    except ParseError:
        return
    assert AvcConfig.parse(bytes(config)) == config


avc_configs = st.builds(
    AvcConfig,
    profile=st.integers(0, 255), compat=st.integers(0, 255), level=st.integers(0, 255),
    length_size=st.sampled_from([1, 2, 4]),
    sps=st.lists(nal_units(7, 7, 100), max_size=3), pps=st.lists(nal_units(8, 8, 20), max_size=3),
    ext=st.binary(max_size=8),
)


@given(avc_configs)
def test_avc_config_round_trip(config: AvcConfig) -> None:
    data = bytes(config)
    assert AvcConfig.parse(data) == config and bytes(AvcConfig.parse(data)) == data


@given(st.binary(max_size=30), st.binary(max_size=10))
def test_avc_config_from_any_parameter_sets(sps: bytes, pps: bytes) -> None:
    try:
        config = AvcConfig.from_parameter_sets(sps, pps)
    except ParseError:
        return
    assert AvcConfig.parse(bytes(config)) == config


# --- RFC 6184 packetizer and depacketizer -----------------------------------------------


@given(st.lists(nal_units(1, 4, 3000), min_size=1, max_size=6), st.integers(3, 1500))
def test_packetizer_depacketizer_round_trip(nalus: list[bytes], max_payload: int) -> None:
    payloads = H264Packetizer(max_payload).packetize(nalus, None, None, False)
    assert all(len(p) <= max_payload for p in payloads)
    dep = H264Depacketizer()
    units = [dep.push(p, 7, i == len(payloads) - 1) for i, p in enumerate(payloads)]
    assert units[:-1] == [None] * (len(units) - 1)
    assert units[-1] == AccessUnit(nalus, 7, keyframe=False)


def fu_a(body: bytes, start: bool, end: bool, nal_type_: int) -> bytes:
    return bytes((0x60 | NAL_FU_A, (start << 7) | (end << 6) | nal_type_)) + body


def stap_a(nalus: list[bytes], skew: int) -> bytes:
    """A STAP-A whose first size field is off by ``skew`` (0: well formed)."""
    out = bytearray((0x60 | NAL_STAP_A,))
    for i, n in enumerate(nalus):
        out += (max(0, len(n) + (skew if i == 0 else 0)) & 0xFFFF).to_bytes(2, "big") + n
    return bytes(out)


payloads = st.one_of(
    st.binary(max_size=40),
    nal_units(max_size=200),
    st.builds(fu_a, st.binary(max_size=200), st.booleans(), st.booleans(), st.integers(0, 31)),
    st.builds(stap_a, st.lists(nal_units(max_size=60), min_size=1, max_size=4),
              st.sampled_from([0, 0, 0, -1, 1, 1000])),
)

# (payload, timestamp, marker, a loss reported before it)
packets = st.tuples(payloads, st.integers(0, 3), st.booleans(), st.booleans())


@given(st.lists(packets, max_size=60), st.integers(50, 2000))
def test_depacketizer_of_any_packets_is_bounded(
    sequence: list[tuple[bytes, int, bool, bool]], cap: int,
) -> None:
    dep = H264Depacketizer(max_access_unit=cap)
    emitted = 0
    for payload, timestamp, marker, lost in sequence:
        if lost:
            dep.lost()
        au = dep.push(payload, timestamp, marker)
        # White box: what the unit under construction holds stays within the cap.
        held = sum(len(n) for n in dep._nalus) + len(dep._fu or b"")
        assert held <= cap
        if au is not None:
            emitted += 1
            assert au.nalus and all(n and not n[0] & 0x80 for n in au.nalus)
            assert sum(len(n) for n in au.nalus) <= cap
            assert au.keyframe == any(n[0] & 0x1F == 5 for n in au.nalus)
    s = dep.stats
    assert s.packets == len(sequence) and s.oversized <= s.dropped_units + 1  # + the open one
    assert emitted <= s.access_units <= emitted + 1  # one may wait for the next push
