"""Recovery end to end: a gateway killed with SIGKILL comes back with its legs.

A real nginx-rtmp and a real `wxmgw serve` with ``--state-dir``. A MAS
conference runs: a mini-program published by ffmpeg and pulled to a socket
MAS that answers the mix, a member's media sent by GStreamer to a StartPush,
and that member's video AvSynced into the mini-program's mix stream. The
gateway is killed and started again with the same flags; with no Thrift call
from anyone, the MAS gets the mini-program's RTP again (same SSRC, same
ports), and the member's stream and the mix stream play again, decoded by
ffmpeg.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from conftest import ffmpeg_publish_args
from media_checks import dominant_hz, wait_for
from test_rtmp2rtp import MasPeer
from test_rtp2rtmp import AUDIO, FPS, gst, gst_audio, gst_video, play
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess

from wxmgw.media.frames import AUDIO_RATE
from wxmgw.nginx import NginxRtmp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_recovery_thrift")

CONF = "conf-crash"
SSRC = 0x1234ABCD
MIX_HZ = 600
VIDEO_PT = 96


@pytest.fixture(params=["state-dir", "redis"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway journaling in a local file, or in Redis (a cluster member)."""
    if request.param == "redis":
        journal = ["--redis", request.getfixturevalue("redis_url")]
    else:
        journal = ["--state-dir", str(tmp_path / "state")]
    gw = GatewayProcess(tmp_path, rtp_ports=24, extra=[*journal, "--stats-interval", "1"])
    yield gw
    gw.stop()


def client(gw: GatewayProcess) -> Any:
    return make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)


def test_killed_gateway_restores_its_legs_with_no_call(
        live: NginxRtmp, gateway: GatewayProcess, procs: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    mini, member, mix = "mp-crash", "m-crash", "mp-crash-mix"
    procs.append(subprocess.Popen(ffmpeg_publish_args(live.rtmp_url(mini), seconds=120),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    wait_for(lambda: live.is_publishing(mini), what="mini-program published")
    mas = MasPeer()
    try:
        mcs = client(gateway)
        pull = mcs.StartPull(tpy.StartPullReq(
            uuid=mini, pullUrl=live.rtmp_url(mini), ssrc=SSRC, masIp="127.0.0.1",
            audioPort=mas.audio.port, videoPort=mas.video.port, audioPayloadType=8,
            audioCodec="PCMA", videoPayloadType=VIDEO_PT, VideoCodec="H264",
            pushAudioUrl=live.rtmp_url(mix), confId=CONF))
        assert pull.code == 0, pull.message
        wait_for(lambda: mas.audio.source is not None, what="audio RTP at the MAS")
        answer = mas.answer("PCMA", MIX_HZ)
        push = mcs.StartPush(tpy.StartPushReq(
            uuid=member, pushUrl=live.rtmp_url(member), audioPayloadType=8, audioCodec="PCMA",
            videoPayloadType=VIDEO_PT, videoCodec="H264", confId=CONF, reqUuid=mini,
            weixin="0"))
        assert push.code == 0, push.message
        gst(procs, gst_video(push.port.video), gst_audio("PCMA", push.port.audio))
        wait_for(lambda: live.is_publishing(member), what="member published")
        assert mcs.AvSync(tpy.AvSyncReq(uuid=mini, confId=CONF, syncUuid=member)).code == 0
        wait_for(lambda: live.is_publishing(mix), what="mix published")
        mcs.close()
        wait_for(lambda: len(mas.video.packets) > 10, what="video RTP at the MAS")
        source = mas.video.source

        gateway.kill()
        wait_for(lambda: not live.is_publishing(member), what="push gone with the gateway")
        before = len(mas.video.packets)
        restarted = time.monotonic()
        gateway.start_again()
        wait_for(lambda: len(mas.video.packets) > before + 10, what="video RTP again")
        rtp_back = time.monotonic() - restarted
        wait_for(lambda: live.is_publishing(member) and live.is_publishing(mix),
                 what="member and mix published again")
        streams_back = time.monotonic() - restarted

        again = mas.video.packets[before:] + mas.audio.packets[-20:]
        assert {p.ssrc for p in again} == {SSRC}
        assert mas.video.source == source  # from the same gateway port, to the same MAS port
        restored = gateway.events("journal_restored")
        assert restored and restored[-1]["legs"] == 2 and restored[-1]["failed"] == 0

        times, expected, pcm = play(live.rtmp_url(member), tmp_path)
        assert expected >= FPS and len(times) >= 0.9 * expected, (len(times), expected)
        assert abs(dominant_hz(pcm[len(pcm) // 4:]) - AUDIO["PCMA"][3]) < 5
        mix_times, _, mix_pcm = play(live.rtmp_url(mix), tmp_path)
        assert len(mix_times) >= FPS, "the AvSynced video is back in the mix stream"
        assert len(mix_pcm) >= 0.9 * AUDIO_RATE * 3.0
        assert abs(dominant_hz(mix_pcm[len(mix_pcm) // 4:]) - MIX_HZ) < 10
        print(f"after restart: RTP at the MAS in {rtp_back:.2f} s, "
              f"member and mix published in {streams_back:.2f} s")

        mcs = client(gateway)
        assert mcs.StopPush(tpy.StopPushReq(uuid=member, confId=CONF)).code == 0
        assert mcs.StopPull(tpy.StopPullReq(uuid=mini, confId=CONF)).code == 0
        mcs.close()
        answer.kill()
    finally:
        mas.close()


def test_a_corrupt_journal_is_set_aside_and_the_gateway_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "legs.json").write_text('{"version": 1, "pulls": [')
    gw = GatewayProcess(tmp_path, rtp_ports=8, extra=["--state-dir", str(state)])
    try:
        assert gw.state()["legs"] == []
        assert gw.events("journal_unreadable")
        assert (state / "legs.json.corrupt").exists()
    finally:
        assert gw.stop() == 0
