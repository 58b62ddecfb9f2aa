"""RFC 6184 (de)packetization of H.264 (:mod:`wxmgw.rtp.h264`).

Media claims are checked by independent decoders: GStreamer decodes what the
packetizer sends, ffprobe decodes what the depacketizer rebuilds from real
GStreamer RTP captures (see tests/data/h264_README.md).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_codecs_h264 import AUD, DATA, PPS, SEI, SPS, _idr, _nal, _slice

from wxmgw.codecs.h264 import AvcConfig, nal_type, split_annexb, to_annexb
from wxmgw.rtp.h264 import NAL_FU_A, NAL_STAP_A, AccessUnit, H264Depacketizer, H264Packetizer


def _feed(
    dep: H264Depacketizer, payloads: Iterable[bytes], ts: int, marker: bool = True
) -> list[AccessUnit]:
    """Push one unit's payloads (marker on the last) and collect what comes out."""
    payloads = list(payloads)
    out = []
    for i, p in enumerate(payloads):
        au = dep.push(p, ts, marker and i == len(payloads) - 1)
        if au is not None:
            out.append(au)
    return out


def _stap_a(nalus: Iterable[bytes]) -> bytes:
    nalus = list(nalus)
    nri = max(n[0] & 0x60 for n in nalus)
    return bytes((nri | NAL_STAP_A,)) + b"".join(struct.pack("!H", len(n)) + n for n in nalus)


# --- NAL helpers -------------------------------------------------------------------------


def test_packetizer_single_nal_units_drop_aud_and_filler() -> None:
    pkt = H264Packetizer()
    au = [AUD, SEI, _slice(), b"\x0c\xff\xff\x80"]
    assert pkt.packetize(au, None, None, keyframe=False) == [SEI, _slice()]
    assert pkt.packetize([AUD], None, None, keyframe=False) == []


def test_packetizer_fu_a_respects_max_payload() -> None:
    pkt = H264Packetizer(max_payload=1200)
    big = _nal(0x65, 12_345)
    payloads = pkt.packetize([big], None, None, keyframe=True)
    assert len(payloads) == 11
    assert all(len(p) <= 1200 for p in payloads)
    assert all(p[0] == (0x60 | NAL_FU_A) for p in payloads)
    assert [p[1] for p in payloads] == [0x85] + [0x05] * 9 + [0x45]
    assert b"".join(p[2:] for p in payloads) == big[1:]
    sizes = [len(p) for p in payloads]
    assert len(set(sizes[:-1])) == 1 and sizes[-1] <= sizes[0]  # one UDP GSO run
    exact = _nal(0x41, 1200)
    assert pkt.packetize([exact], None, None, keyframe=False) == [exact]


@given(st.integers(1, 20_000), st.integers(3, 1500))
def test_fu_a_fragments_are_equal_but_a_shorter_last(size: int, max_payload: int) -> None:
    nalu = _nal(0x65, size)
    payloads = H264Packetizer(max_payload).packetize([nalu], None, None, keyframe=False)
    assert all(len(p) <= max_payload for p in payloads)
    if len(nalu) <= max_payload:
        assert payloads == [nalu]
        return
    sizes = [len(p) for p in payloads]
    assert len(set(sizes[:-1])) == 1 and 3 <= sizes[-1] <= sizes[0]
    assert len(payloads) == -(-(len(nalu) - 1) // (max_payload - 2))  # no more than needed
    assert b"".join(p[2:] for p in payloads) == nalu[1:]


def test_packetizer_sends_sps_pps_before_every_idr() -> None:
    pkt = H264Packetizer()
    # FLV: parameter sets come only from the sequence header.
    assert pkt.packetize([AUD, _idr()], SPS, PPS, keyframe=True) == [SPS, PPS, _idr()]
    assert pkt.packetize([_slice()], None, None, keyframe=False) == [_slice()]
    assert pkt.packetize([SEI, _idr(seed=3)], None, None, keyframe=True) == [
        SPS,
        PPS,
        SEI,
        _idr(seed=3),
    ]
    # The flag alone is enough (an IDR the caller knows about), and so is the IDR alone.
    assert pkt.packetize([_idr()], None, None, keyframe=False)[:2] == [SPS, PPS]
    # A unit that carries its own parameter sets is sent as is, and they are learned.
    sps2 = SPS[:-1] + b"\x93"
    assert pkt.packetize([sps2, PPS, _idr()], None, None, True) == [sps2, PPS, _idr()]
    assert pkt.packetize([_idr()], None, None, True) == [sps2, PPS, _idr()]
    # Only one of them in-band: both go in front, in order.
    pps2 = PPS[:-1] + b"\x21"
    assert pkt.packetize([pps2, _idr()], None, None, True) == [sps2, pps2, _idr()]


def test_packetizer_without_parameter_sets_sends_idr_alone() -> None:
    assert H264Packetizer().packetize([_idr()], None, None, True) == [_idr()]
    with pytest.raises(ValueError):
        H264Packetizer(max_payload=2)


# --- depacketizer ------------------------------------------------------------------------


@pytest.mark.parametrize("idr_size", [200, 1200, 15_000, 60_000])
def test_round_trip(idr_size: int) -> None:
    pkt, dep = H264Packetizer(max_payload=1000), H264Depacketizer()
    assert dep.needs_keyframe
    idr_unit = [AUD, SEI, _nal(0x65, idr_size, 4), _nal(0x65, 900, 5)]
    payloads = pkt.packetize(idr_unit, SPS, PPS, keyframe=True)
    assert len(payloads) >= 4 + idr_size // 1000
    [au] = _feed(dep, payloads, ts=90_000)
    assert au == AccessUnit([SPS, PPS, *idr_unit[1:]], 90_000, keyframe=True)
    assert (dep.sps, dep.pps, dep.needs_keyframe) == (SPS, PPS, False)
    p_unit = [_nal(0x41, idr_size // 3 + 1, 6)]
    [au] = _feed(dep, pkt.packetize(p_unit, None, None, False), ts=93_600)
    assert au == AccessUnit(p_unit, 93_600, keyframe=False)
    assert dep.stats.access_units == 2
    assert dep.stats.malformed == dep.stats.dropped_units == 0


def test_stap_a_with_several_nal_units() -> None:
    dep = H264Depacketizer()
    idr = _idr(300)
    [au] = _feed(dep, [_stap_a([SPS, PPS, idr])], ts=1)
    assert au.nalus == [SPS, PPS, idr] and au.keyframe
    assert (dep.sps, dep.pps) == (SPS, PPS)
    stap = _stap_a([AUD, _slice(), _slice(seed=9)])
    assert _feed(dep, [stap], ts=2)[0].nalus == [AUD, _slice(), _slice(seed=9)]


@pytest.mark.parametrize(
    "stap",
    [
        _stap_a([SPS, PPS])[:-1],  # last size runs past the end
        _stap_a([SPS, PPS]) + b"\x00",  # half a size field
        _stap_a([SPS]) + b"\x00\x00",  # zero-length NAL unit
        bytes((NAL_STAP_A,)),  # nothing aggregated
        _stap_a([SPS, b"\x88\x00"]),  # forbidden bit in an aggregated unit
    ],
)
def test_stap_a_truncated_drops_unit(stap: bytes) -> None:
    dep = H264Depacketizer()
    assert _feed(dep, [_stap_a([SPS, PPS, _idr()])], ts=1)
    assert _feed(dep, [_slice(), stap], ts=2) == []
    assert dep.stats.malformed == 1 and dep.stats.dropped_units == 1
    assert dep.needs_keyframe
    [au] = _feed(dep, [_slice()], ts=3)
    assert au.discontinuity and not au.keyframe


def _fu_unit(size: int = 5000) -> list[bytes]:
    payloads = H264Packetizer(max_payload=1000).packetize([_idr(size)], None, None, True)
    assert len(payloads) >= 5
    return payloads


def test_fu_a_missing_middle_reported_by_jitter_buffer() -> None:
    dep = H264Depacketizer()
    fus = _fu_unit()
    assert dep.push(fus[0], 1, False) is None
    assert dep.push(fus[1], 1, False) is None
    dep.lost()  # fus[2]
    assert _feed(dep, fus[3:], ts=1) == []
    assert dep.stats.dropped_units == 1 and dep.stats.losses == 1 and dep.needs_keyframe
    assert dep.stats.malformed == 0  # the orphan fragments are the loss, not garbage
    [au] = _feed(dep, fus, ts=2)
    assert au.nalus == [_idr(5000)] and au.discontinuity and not dep.needs_keyframe


def test_fu_a_missing_start() -> None:
    dep = H264Depacketizer()
    fus = _fu_unit()
    assert _feed(dep, fus[1:], ts=1) == []
    assert dep.stats.malformed == 1 and dep.stats.dropped_units == 1
    [au] = _feed(dep, fus, ts=2)
    assert au.nalus == [_idr(5000)] and au.discontinuity


def test_fu_a_missing_end() -> None:
    dep = H264Depacketizer()
    fus = _fu_unit()
    assert _feed(dep, [_slice(), *fus[:-1]], ts=1, marker=False) == []
    # A new start before the end: the unfinished fragment breaks the unit.
    assert _feed(dep, fus, ts=1) == []
    assert dep.stats.malformed == 1 and dep.stats.dropped_units == 1
    # The end never comes and the timestamp moves on: dropped, never emitted half.
    assert _feed(dep, fus[:-1], ts=2, marker=False) == []
    [au] = _feed(dep, [_slice()], ts=3)
    assert au.nalus == [_slice()] and au.discontinuity
    assert dep.stats.dropped_units == 2


def test_fu_a_duplicate_end_is_ignored() -> None:
    dep = H264Depacketizer()
    fus = _fu_unit()
    [au] = _feed(dep, fus, ts=1)
    assert dep.push(fus[-1], 1, True) is None
    assert dep.stats.duplicates == 1 and dep.stats.malformed == 0
    [au] = _feed(dep, [_slice()], ts=2)
    assert not au.discontinuity


def test_fu_a_header_mismatch_and_too_short() -> None:
    dep = H264Depacketizer()
    fus = _fu_unit()
    other = bytes((fus[1][0], fus[1][1] ^ 0x04)) + fus[1][2:]  # type 5 -> 1 mid-NAL
    assert _feed(dep, [fus[0], other, *fus[2:]], ts=1) == []
    assert _feed(dep, [bytes((0x7C, 0x85))], ts=2) == []
    assert dep.stats.malformed == 2  # mismatch (the orphans that follow are its loss), 2 bytes


def test_unsupported_and_forbidden_packets() -> None:
    dep = H264Depacketizer()
    for t in (0, 25, 26, 27, 29, 30, 31):
        assert dep.push(bytes((0x60 | t, 0x80, 1, 2, 3)), 1, False) is None
    [au] = _feed(dep, [_slice()], ts=1)
    assert dep.stats.unsupported == 7 and au.nalus == [_slice()] and not au.discontinuity
    assert _feed(dep, [_slice(), b"\xe1\x00", b""], ts=2) == []
    assert dep.stats.malformed == 2 and dep.stats.dropped_units == 1


def test_timestamp_change_completes_unit_without_marker() -> None:
    dep = H264Depacketizer()
    assert dep.push(_idr(), 1, False) is None
    [au] = _feed(dep, [_slice()], ts=2, marker=False)
    assert au.timestamp == 1 and au.keyframe
    # Ended by a timestamp change *and* a one-packet unit with marker: one per call.
    first = dep.push(_slice(seed=5), 3, True)
    assert first is not None and first.timestamp == 2
    second = dep.push(_slice(seed=6), 4, False)
    assert second is not None and second.timestamp == 3
    assert dep.stats.access_units == 3


def test_loss_between_units_drops_next_unit() -> None:
    dep = H264Depacketizer()
    _feed(dep, [SPS, PPS, _idr()], ts=1)
    dep.lost()  # after a marker: the lost packets began the next unit
    assert _feed(dep, [_slice()], ts=2) == []
    [au] = _feed(dep, [_slice()], ts=3)
    assert au.discontinuity
    # Loss inside a unit, then its own marker packet: only that unit goes.
    assert dep.push(_slice(seed=1), 4, False) is None
    dep.lost()
    assert dep.push(_slice(seed=2), 4, True) is None
    [au] = _feed(dep, [_slice()], ts=5)
    assert au.discontinuity
    assert dep.stats.dropped_units == 2 and dep.needs_keyframe


def test_loss_of_marker_packet_drops_both_sides_of_the_gap() -> None:
    dep = H264Depacketizer()
    assert dep.push(_slice(seed=1), 1, False) is None
    dep.lost()  # the marker packet of ts 1 and maybe the start of ts 2
    assert _feed(dep, [_slice(seed=2)], ts=2) == []
    assert dep.stats.dropped_units == 2


# --- bounded reassembly (issue #12, finding 4) ---------------------------------------------


def _no_marker_slices(count: int) -> Iterator[bytes]:
    """1200-byte single NAL unit packets, each a new object as from the socket."""
    body = bytes(1195)
    for i in range(count):
        yield b"\x41" + i.to_bytes(4, "big") + body


def _endless_fu_a(count: int) -> Iterator[bytes]:
    """An FU-A of an IDR that starts and never ends, in 1200-byte fragments."""
    body = bytes(1194)
    yield b"\x7c\x85" + bytes(4) + body
    for i in range(1, count):
        yield b"\x7c\x05" + i.to_bytes(4, "big") + body


@pytest.mark.parametrize("packets", [_no_marker_slices, _endless_fu_a])
def test_48_mb_of_one_endless_unit_holds_at_most_the_cap(
    packets: Callable[[int], Iterator[bytes]],
) -> None:
    """One timestamp and no marker, or an FU-A without end: 48 MB of RTP added 37 MB."""
    cap = 1 << 20
    dep = H264Depacketizer(max_access_unit=cap)
    tracemalloc.start()
    try:
        for payload in packets(40_000):  # 48 MB
            assert dep.push(payload, 1000, False) is None
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < cap * 5 // 4 and held < 64 * 1024
    assert dep.stats.oversized == 1 and dep.needs_keyframe
    # The sender moves on: the unit is dropped once and video resyncs at the keyframe.
    [au] = _feed(dep, [SPS, PPS, _idr()], 4000)
    assert au.keyframe and au.discontinuity and not dep.needs_keyframe
    assert dep.stats.dropped_units == 1 and dep.stats.oversized == 1


def test_cap_counts_every_nal_unit_of_the_unit() -> None:
    fus = _fu_unit(5000)
    whole = [SPS, PPS, *fus]
    dep = H264Depacketizer()
    [au] = _feed(dep, whole, 1)
    size = sum(len(n) for n in au.nalus)
    dep = H264Depacketizer(max_access_unit=size + 100)  # room for the objects, not the bytes
    assert _feed(dep, whole, 1) == [] and dep.stats.oversized == 1
    dep = H264Depacketizer(max_access_unit=size + 1000)
    assert _feed(dep, whole, 1) and dep.stats.oversized == 0
    # STAP-A and single NAL units count like fragments; a later unit starts from zero.
    dep = H264Depacketizer(max_access_unit=size + 1000)
    assert _feed(dep, [_stap_a([SPS, PPS]), *fus, _slice(2000)], 2) == []
    [au] = _feed(dep, whole, 3)
    assert au.discontinuity and dep.stats.oversized == 1 and dep.stats.dropped_units == 1
    with pytest.raises(ValueError, match="positive"):
        H264Depacketizer(max_access_unit=0)


def test_depacketizer_faces_random_and_mutated_payloads() -> None:
    rng = random.Random(11)
    dep = H264Depacketizer()
    packets = [p for _, _, _, p in _read_capture("h264_gst_stapa.rtp")]
    packets += [p for _, _, _, p in _read_capture("h264_gst_fua.rtp")]
    for i in range(20_000):
        if i % 3 == 0:
            payload = rng.randbytes(rng.randrange(12))
        else:
            mutated = bytearray(rng.choice(packets))
            for _ in range(rng.randrange(3)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            payload = bytes(mutated[: rng.randrange(1, len(mutated) + 1)])
        if rng.random() < 0.05:
            dep.lost()
        dep.push(payload, rng.randrange(5), rng.random() < 0.3)
    assert dep.stats.packets == 20_000
    assert dep.stats.malformed > 0 and dep.stats.access_units > 0


# --- independent decoders ----------------------------------------------------------------


def _read_capture(name: str) -> Iterator[tuple[int, int, bool, bytes]]:
    """(seq, timestamp, marker, payload) of an RFC 4571 framed capture."""
    data = (DATA / name).read_bytes()
    pos = 0
    while pos < len(data):
        (size,) = struct.unpack_from("!H", data, pos)
        pkt = data[pos + 2 : pos + 2 + size]
        pos += 2 + size
        b0, b1, seq, ts = struct.unpack_from("!BBHI", pkt)
        off = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            off += 4 + 4 * struct.unpack_from("!H", pkt, off + 2)[0]
        end = len(pkt) - (pkt[-1] if b0 & 0x20 else 0)
        yield seq, ts, bool(b1 & 0x80), pkt[off:end]


def _decoded_frame_md5s(path: Path) -> list[str]:
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "h264", "-i", str(path), "-f", "framemd5", "-"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [
        line.rsplit(",", 1)[1].strip()
        for line in out.stdout.splitlines()
        if line and not line.startswith("#")
    ]


@pytest.mark.skipif(
    shutil.which("gst-launch-1.0") is None or shutil.which("ffmpeg") is None,
    reason="needs GStreamer and ffmpeg",
)
@pytest.mark.parametrize("name", ["h264_gst_fua.rtp", "h264_gst_stapa.rtp"])
def test_gstreamer_capture_decodes_like_gstreamer_depayloader(name: str, tmp_path: Path) -> None:
    """FFmpeg decodes our reassembly of a real capture into the very pictures it decodes
    from GStreamer's own rtph264depay output of the same capture."""
    dep = H264Depacketizer()
    units = [au for _, ts, m, p in _read_capture(name) if (au := dep.push(p, ts, m))]
    assert len(units) == 30 and sum(au.keyframe for au in units) == 3
    assert dep.stats.malformed == dep.stats.unsupported == dep.stats.dropped_units == 0
    assert dep.sps is not None and dep.pps is not None
    AvcConfig.from_parameter_sets(dep.sps, dep.pps)
    ours, theirs = tmp_path / "ours.h264", tmp_path / "gst.h264"
    ours.write_bytes(b"".join(to_annexb(au.nalus) for au in units))
    subprocess.run(
        [
            "gst-launch-1.0",
            "-q",
            "filesrc",
            f"location={DATA / name}",
            "!",
            "application/x-rtp-stream,media=video,clock-rate=90000,encoding-name=H264",
            "!",
            "rtpstreamdepay",
            "!",
            "rtph264depay",
            "!",
            "video/x-h264,stream-format=byte-stream,alignment=au",
            "!",
            "filesink",
            f"location={theirs}",
        ],
        check=True,
        timeout=30,
    )
    decoded = _decoded_frame_md5s(ours)
    # >= 30: rtph264pay config-interval=-1 repeats SPS/PPS before the second slice of an
    # IDR picture, which FFmpeg's parser takes for the start of another frame.
    assert len(decoded) >= 30
    assert decoded == _decoded_frame_md5s(theirs)


def _udp_port_bound(port: int) -> bool:
    needle = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == needle for line in f.readlines()[1:])


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(
    shutil.which("gst-launch-1.0") is None or shutil.which("ffmpeg") is None,
    reason="needs GStreamer and ffmpeg",
)
def test_gstreamer_decodes_packetizer_output_without_sdp(tmp_path: Path) -> None:
    """A receiver with no sprop-parameter-sets decodes because SPS/PPS go before each IDR."""
    w, h, frames = 320, 240, 50
    clip = tmp_path / "clip.h264"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size={w}x{h}:rate=25",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "baseline",
            "-g",
            "25",
            "-x264-params",
            "aud=1",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
            str(clip),
        ],
        check=True,
        timeout=60,
    )
    units: list[list[bytes]] = []
    for nalu in split_annexb(clip.read_bytes()):
        if nal_type(nalu) == 9 or not units:
            units.append([])
        units[-1].append(nalu)
    assert len(units) == frames
    # Like FLV: parameter sets out of band, in the sequence header only.
    sps = next(n for n in units[0] if nal_type(n) == 7)
    pps = next(n for n in units[0] if nal_type(n) == 8)
    units = [[n for n in u if nal_type(n) not in (7, 8)] for u in units]

    port = _free_udp_port()
    raw = tmp_path / "out.yuv"
    caps = "application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96"
    gst = subprocess.Popen(
        [
            "gst-launch-1.0",
            "-q",
            "-e",
            "udpsrc",
            "address=127.0.0.1",
            f"port={port}",
            f"caps={caps}",
            "!",
            "rtpjitterbuffer",
            "!",
            "rtph264depay",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "videoconvert",
            "!",
            "video/x-raw,format=I420",
            "!",
            "filesink",
            f"location={raw}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait(lambda: _udp_port_bound(port), time.monotonic() + 10), "udpsrc not ready"
        pkt = H264Packetizer(max_payload=1200)
        seq, sent, fua = 4242, 0, 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i, unit in enumerate(units):
                keyframe = any(nal_type(n) == 5 for n in unit)
                payloads = pkt.packetize(
                    unit, sps if i == 0 else None, pps if i == 0 else None, keyframe
                )
                for j, payload in enumerate(payloads):
                    assert len(payload) <= 1200
                    fua += payload[0] & 0x1F == NAL_FU_A
                    marker = 0x80 if j == len(payloads) - 1 else 0
                    header = struct.pack(
                        "!BBHII",
                        0x80,
                        marker | 96,
                        seq & 0xFFFF,
                        (1000 + 3600 * i) & 0xFFFFFFFF,
                        0x1234,
                    )
                    sock.sendto(header + payload, ("127.0.0.1", port))
                    seq += 1
                    sent += 1
                    if sent % 4 == 0:
                        time.sleep(0.001)
        assert fua > 0  # the keyframes at least are fragmented
        frame_size = w * h * 3 // 2
        _wait(
            lambda: raw.exists() and raw.stat().st_size >= frames * frame_size,
            time.monotonic() + 15,
        )
    finally:
        gst.send_signal(signal.SIGINT)  # -e: EOS flushes the jitter buffer and decoder
        try:
            _, err = gst.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            gst.kill()
            _, err = gst.communicate()
    decoded = os.path.getsize(raw) // frame_size if raw.exists() else 0
    print(f"GStreamer decoded {decoded}/{frames} frames")
    assert decoded >= 0.9 * frames, err.decode(errors="replace")
