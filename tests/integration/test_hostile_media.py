"""Hostile media from a mini-program, end to end (issue #12, finding 1).

A mini-program's AAC reaches the gateway through the live server untouched:
an AudioSpecificConfig for AAC-LC 8 kHz stereo, then raw frames of which
some open with a program_config_element declaring 27 channels
(tests/data/aac_README.md). FFmpeg's decoder made of such a frame one PyAV
read past its planes, and the process died with SIGSEGV. Published with
``ffmpeg -re -c copy`` through nginx-rtmp to a running ``wxmgw serve``, the
frames must be dropped and counted while the process stays up and the
video goes on reaching the MAS.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from media_checks import UdpSink, wait_for
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess

from wxmgw.nginx import NginxRtmp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_hostile_media_thrift")

PCE_27CH = (ROOT / "tests" / "data" / "aac_pce_27ch.raw").read_bytes()
_AUDIO_TAG, _FLV_HEADER = 8, 13  # FLV tag type; the file header with PreviousTagSize0


def flv_tags(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(tag type, 11-byte tag header, body) of each tag of an FLV file (FLV spec E.4.1)."""
    pos = _FLV_HEADER
    while pos + 11 <= len(data):
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        yield data[pos] & 0x1F, data[pos : pos + 11], data[pos + 11 : pos + 11 + size]
        pos += 11 + size + 4


def with_hostile_frames(data: bytes, every: int, skip: int) -> tuple[bytes, int]:
    """``data`` with every ``every``-th raw AAC frame after the first ``skip`` made PCE_27CH."""
    out = bytearray(data[:_FLV_HEADER])
    frames = replaced = 0
    for kind, header, body in flv_tags(data):
        if kind == _AUDIO_TAG and body[1] == 1:  # AACPacketType 1: a raw frame
            frames += 1
            if frames > skip and frames % every == 0:
                body, replaced = body[:2] + PCE_27CH, replaced + 1
        size = len(body)
        out += header[:1] + size.to_bytes(3, "big") + header[4:] + body
        out += (11 + size).to_bytes(4, "big")
    return bytes(out), replaced


@pytest.fixture
def sink() -> Iterator[UdpSink]:
    s = UdpSink()
    yield s
    s.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path, extra=["--stats-interval", "1"])
    yield gw
    assert gw.stop() == 0


def leg_stats(gw: GatewayProcess, uuid: str) -> dict[str, Any]:
    legs = [leg for leg in gw.state()["legs"] if leg["uuid"] == uuid]
    assert legs, f"no leg {uuid}"
    stats: dict[str, Any] = legs[0]["stats"]
    return stats


def test_aac_frames_of_27_channels_are_dropped_and_video_flows(
    live: NginxRtmp, gateway: GatewayProcess, sink: UdpSink, tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    clean, hostile = tmp_path / "clean.flv", tmp_path / "hostile.flv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
         "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=40",
         "-f", "lavfi", "-i", "sine=frequency=700:sample_rate=8000:duration=40",
         "-c:v", "libx264", "-profile:v", "baseline", "-g", "25", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-ar", "8000", "-ac", "2", str(clean)],
        check=True, timeout=120,
    )
    # AAC at 8 kHz makes about 8 frames a second: a hostile one every half second from 2 s on.
    data, replaced = with_hostile_frames(clean.read_bytes(), every=4, skip=16)
    assert replaced > 50
    hostile.write_bytes(data)
    procs.append(subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-i", str(hostile),
         "-c", "copy", "-f", "flv", live.rtmp_url("hostile")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    wait_for(lambda: live.is_publishing("hostile"), what="publishing")

    client = make_client(tpy.WxMgw, "127.0.0.1", gateway.thrift_port, timeout=10000)
    try:
        r = client.StartPull(tpy.StartPullReq(
            uuid="mini", pullUrl=live.rtmp_url("hostile"), ssrc=0x1234ABCD, masIp="127.0.0.1",
            audioPort=sink.port("audio"), videoPort=sink.port("video"), audioPayloadType=8,
            audioCodec="PCMA", videoPayloadType=96, VideoCodec="H264", pushAudioUrl="",
            confId="conf-hostile",
        ))
        assert r.code == 0, r.message
        wait_for(lambda: leg_stats(gateway, "mini")["framesDropped"] >= 3, timeout=30,
                 what="hostile frames dropped")
        video = sink.counts["video"]
        wait_for(lambda: sink.counts["video"] > video + 50, what="video after the drops")
        audio = sink.counts["audio"]
        wait_for(lambda: sink.counts["audio"] > audio + 50, what="audio after the drops")
        assert gateway.proc.poll() is None
        stats = leg_stats(gateway, "mini")
        assert stats["configsRefused"] == 0 and stats["crashes"] == 0
        assert "27 channels" in stats["lastError"]
        assert client.StopPull(tpy.StopPullReq(uuid="mini", confId="conf-hostile")).code == 0
    finally:
        client.close()
