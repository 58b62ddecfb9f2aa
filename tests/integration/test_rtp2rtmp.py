"""Rtp2rtmp end to end: a real nginx-rtmp, a real `wxmgw serve`, driven over Thrift.

GStreamer plays the MAS (x264 video and a tone in each audio codec, sent to
the ports StartPush returns); ffmpeg plays ``pushUrl`` from nginx and is the
independent decoder: it counts the video frames and writes the audio, whose
tone is found by FFT. One nginx and one gateway serve the whole module; the
nginx restart comes last.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import gevent
import numpy as np
import pytest
import thriftpy2
from conftest import ffmpeg_publish_args
from media_checks import dominant_hz, wait_for
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess, free_port

from wxmgw.media.frames import AUDIO_RATE
from wxmgw.rtp import rtcp
from wxmgw.rtp.packet import is_rtcp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_rtp2rtmp_thrift")

PLAY_SECONDS = 3.0
FPS = 30
VIDEO_PT = 96
#: codec -> (payload type, GStreamer sample rate, encoder ! payloader, tone)
AUDIO = {
    "PCMA": (8, 8000, "alawenc ! rtppcmapay", 500),
    "PCMU": (0, 8000, "mulawenc ! rtppcmupay", 700),
    "G722": (9, 16000, "avenc_g722 ! rtpg722pay", 1100),
    "OPUS": (111, 48000, "opusenc ! rtpopuspay", 900),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), rtp_ports=40)
    yield gw
    assert gw.stop() == 0


@pytest.fixture(scope="module")
def mcs(gateway: GatewayProcess) -> Any:
    return make_client(tpy.WxMgw, "127.0.0.1", gateway.thrift_port, timeout=10000)


def start_push(mcs: Any, uuid: str, url: str, codec: str = "PCMA", req: str = "viewer",
               weixin: str = "0", conf: str = "conf1") -> Any:
    pt = AUDIO[codec][0] if codec else 0
    return mcs.StartPush(tpy.StartPushReq(
        uuid=uuid, pushUrl=url, audioPayloadType=pt, audioCodec=codec,
        videoPayloadType=VIDEO_PT if codec else 0, videoCodec="H264" if codec else "",
        confId=conf, reqUuid=req, weixin=weixin))


def stop_push(mcs: Any, uuid: str, conf: str = "conf1") -> Any:
    return mcs.StopPush(tpy.StopPushReq(uuid=uuid, confId=conf))


def gst_video(port: int) -> str:
    return (f"videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate={FPS}/1 "
            "! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast bitrate=300 "
            f"! rtph264pay config-interval=-1 pt={VIDEO_PT} ! udpsink host=127.0.0.1 port={port}")


def gst_audio(codec: str, port: int) -> str:
    pt, rate, enc, tone = AUDIO[codec]
    return (f"audiotestsrc is-live=true freq={tone} samplesperbuffer={rate // 50} "
            f"! audio/x-raw,rate={rate},channels=1 ! audioconvert ! {enc} pt={pt} "
            f"! udpsink host=127.0.0.1 port={port}")


def gst(procs: list[subprocess.Popen[bytes]], *pipelines: str) -> None:
    args = ["gst-launch-1.0", "-q"]
    for p in pipelines:
        args += p.split()
    procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))


def play(url: str, tmp: Path, seconds: float = PLAY_SECONDS) -> tuple[int, int, np.ndarray]:
    """Decode ``seconds`` of ``url`` with ffmpeg: (video frames decoded, frames the span
    from the first to the last of them should hold at ``FPS``, 48 kHz mono PCM)."""
    pcm_path, md5_path = tmp / "out.pcm", tmp / "video.md5"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", url,
         "-t", str(seconds), "-map", "0:a", "-f", "s16le", "-ac", "1", "-ar", str(AUDIO_RATE),
         str(pcm_path), "-t", str(seconds), "-map", "0:v", "-fps_mode", "passthrough",
         "-f", "framemd5", str(md5_path)],
        check=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    lines = md5_path.read_text().splitlines()
    tb = next(Fraction(line.split(":")[1].strip()) for line in lines if line.startswith("#tb"))
    pts = [int(line.split(",")[2]) for line in lines if not line.startswith("#")]
    expected = round((pts[-1] - pts[0]) * tb * FPS) + 1 if pts else 0
    return len(pts), expected, np.fromfile(pcm_path, np.int16)


def leg_state(gw: GatewayProcess, uuid: str) -> dict[str, Any]:
    legs = [x for x in gw.state()["legs"] if x["kind"] == "rtp2rtmp" and x["uuid"] == uuid]
    assert len(legs) == 1
    return legs[0]


@pytest.mark.parametrize("codec", list(AUDIO))
def test_member_media_plays_from_push_url(codec, live, gateway, mcs, procs, tmp_path):
    uuid = f"m-{codec.lower()}"
    url = live.rtmp_url(uuid)
    r = start_push(mcs, uuid, url, codec)
    assert r.code == 0, r.message
    gst(procs, gst_video(r.port.video), gst_audio(codec, r.port.audio))
    wait_for(lambda: live.is_publishing(uuid), what="publication")
    frames, expected, pcm = play(url, tmp_path)
    stats = leg_state(gateway, uuid)["stats"]
    assert stop_push(mcs, uuid).code == 0
    assert expected >= FPS * PLAY_SECONDS / 2 and frames >= 0.9 * expected, stats
    assert len(pcm) >= 0.9 * AUDIO_RATE * PLAY_SECONDS
    tone = AUDIO[codec][3]
    assert abs(dominant_hz(pcm[len(pcm) // 4:]) - tone) < 5, stats
    assert stats["audio"]["frames"] > 0 and stats["video"]["frames"] > 0
    assert stats["video"]["pli_sent"] >= 1
    latency = stats["push"]["added_latency_ms"]  # last RTP packet -> FLV tag sent
    assert latency["video"] and latency["audio"], latency


class LossyPeer:
    """Relays GStreamer's video RTP to the gateway, reordering and dropping some packets.

    It plays the MAS's side of one RTP session: it sends RTP from an even port
    and RTCP (GStreamer's sender reports, relayed) from the next one, so the
    gateway's PLIs come back there (RFC 3550 §11); they are counted and handed
    on to GStreamer's rtpbin, whose encoder answers with a keyframe.
    """

    def __init__(self, target: int, reorder: float, drop: float) -> None:
        self.target = ("127.0.0.1", target)
        self.reorder, self.drop = reorder, drop
        self.rtp_in, self.rtcp_in = udp(), udp()
        self.port, self.rtcp_port = self.rtp_in.getsockname()[1], self.rtcp_in.getsockname()[1]
        self.gst_rtcp = free_port(socket.SOCK_DGRAM)
        self.out, self.rtcp = self._pair()
        self.dropped = self.reordered = 0
        self.plis: list[rtcp.Pli] = []
        self._rng = random.Random(7)
        self._greenlets = [gevent.spawn(self._relay), gevent.spawn(self._relay_rtcp),
                           gevent.spawn(self._feedback)]

    @staticmethod
    def _pair() -> tuple[socket.socket, socket.socket]:
        while True:
            port = free_port(socket.SOCK_DGRAM) & ~1
            try:
                rtp = udp(port)
            except OSError:
                continue
            try:
                return rtp, udp(port + 1)
            except OSError:
                rtp.close()

    def gst_video(self) -> str:
        """GStreamer's side: an RTP session with AVPF feedback, through this peer."""
        return (f"rtpbin name=rb rtp-profile=avpf {gst_video(0).split(' ! udpsink')[0]} "
                f"! rb.send_rtp_sink_0 rb.send_rtp_src_0 ! udpsink host=127.0.0.1 port={self.port} "
                f"rb.send_rtcp_src_0 ! udpsink host=127.0.0.1 port={self.rtcp_port} sync=false "
                f"async=false udpsrc port={self.gst_rtcp} ! rb.recv_rtcp_sink_0")

    def _relay(self) -> None:
        held: bytes | None = None
        while True:
            data = self.rtp_in.recv(65536)
            roll = self._rng.random()
            if roll < self.drop:
                self.dropped += 1
                continue
            if held is None and roll < self.drop + self.reorder:
                held = data  # goes out after the next packet
                self.reordered += 1
                continue
            self.out.sendto(data, self.target)
            if held is not None:
                self.out.sendto(held, self.target)
                held = None

    def _relay_rtcp(self) -> None:
        while True:
            self.rtcp.sendto(self.rtcp_in.recv(65536), (self.target[0], self.target[1] + 1))

    def _feedback(self) -> None:
        while True:
            data = self.rtcp.recv(65536)
            if is_rtcp(data):
                self.plis += [p for p in rtcp.parse_compound(data) if isinstance(p, rtcp.Pli)]
                self.rtcp.sendto(data, ("127.0.0.1", self.gst_rtcp))

    def close(self) -> None:
        gevent.killall(self._greenlets)
        for s in (self.rtp_in, self.rtcp_in, self.out, self.rtcp):
            s.close()


def udp(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    return s


def test_reordered_and_lossy_video_still_plays_and_asks_for_keyframes(
        live, gateway, mcs, procs, tmp_path):
    uuid = "m-lossy"
    url = live.rtmp_url(uuid)
    r = start_push(mcs, uuid, url, "PCMA")
    assert r.code == 0, r.message
    peer = LossyPeer(r.port.video, reorder=0.05, drop=0.02)
    try:
        gst(procs, peer.gst_video(), gst_audio("PCMA", r.port.audio))
        wait_for(lambda: live.is_publishing(uuid), what="publication")
        # A keyframe lost on the way delays the player's start by up to a GOP.
        frames, expected, pcm = play(url, tmp_path, seconds=4.0)
        full = leg_state(gateway, uuid)["stats"]
        stats = full["video"]
        assert stop_push(mcs, uuid).code == 0
    finally:
        peer.close()
    assert peer.dropped > 0 and peer.reordered > 0
    assert stats["reordered"] > 0 and stats["lost"] > 0 and stats["sr_received"] > 0, stats
    assert expected >= 1.5 * FPS and frames >= 0.7 * expected, str((frames, full))
    assert peer.plis, "no PLI reached the sender"
    assert len(pcm) >= 0.9 * AUDIO_RATE * 4.0


def bindable(port: int) -> bool:
    for p in (port, port + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", p))
            except OSError:
                return False
    return True


def test_two_requesters_share_one_push_and_stop_frees_the_ports(live, gateway, mcs, procs):
    uuid = "m-shared"
    url = live.rtmp_url(uuid)
    first = start_push(mcs, uuid, url, "PCMU", req="viewer1")
    second = start_push(mcs, uuid, url, "PCMU", req="viewer2")
    assert first.code == second.code == 0
    assert (first.port.audio, first.port.video) == (second.port.audio, second.port.video)
    ports = (first.port.audio, first.port.video)
    assert not any(bindable(p) for p in ports)
    gst(procs, gst_video(first.port.video), gst_audio("PCMU", first.port.audio))
    wait_for(lambda: live.is_publishing(uuid), what="publication")
    state = gateway.state()
    legs = [x for x in state["legs"] if x["uuid"] == uuid]
    assert len(legs) == 1 and legs[0]["requesters"] == ["viewer1", "viewer2"]
    assert stop_push(mcs, uuid).code == 0
    assert all(bindable(p) for p in ports)
    wait_for(lambda: not live.is_publishing(uuid), what="publication ended")
    assert stop_push(mcs, uuid).code == 404


def test_weixin_member_video_is_republished(live, gateway, mcs, procs, tmp_path):
    uuid = "wx-member"
    source = live.rtmp_url(uuid)
    procs.append(subprocess.Popen(ffmpeg_publish_args(source, fps=FPS), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    pull = mcs.StartPull(tpy.StartPullReq(
        uuid=uuid, pullUrl=source, ssrc=1234, masIp="", audioPort=0, videoPort=0,
        audioPayloadType=8, audioCodec="PCMA", videoPayloadType=VIDEO_PT, VideoCodec="H264",
        pushAudioUrl=live.rtmp_url(f"{uuid}-mix"), confId="conf2"))
    assert pull.code == 0, pull.message
    try:
        target = live.rtmp_url(f"{uuid}-seen")
        r = start_push(mcs, uuid, target, codec="", weixin="1", conf="conf2")
        assert r.code == 0, r.message
        assert (r.port.audio, r.port.video) == (0, 0)
        wait_for(lambda: live.is_publishing(f"{uuid}-seen"), what="republication")
        frames, expected, pcm = play(target, tmp_path)
        stats = leg_state(gateway, uuid)["stats"]
        assert expected >= FPS * PLAY_SECONDS / 2 and frames >= 0.9 * expected, stats
        assert len(pcm) >= 0.9 * AUDIO_RATE * PLAY_SECONDS and not np.abs(pcm).max() > 1
        assert stop_push(mcs, uuid, conf="conf2").code == 0
    finally:
        mcs.StopPull(tpy.StopPullReq(uuid=uuid, confId="conf2"))


def test_weixin_without_local_source_is_refused(mcs):
    r = start_push(mcs, "wx-nobody", "rtmp://127.0.0.1/live/x", codec="", weixin="1")
    assert r.code == 424


def test_push_resumes_after_live_server_restart(live, gateway, mcs, procs, tmp_path):
    uuid = "m-restart"
    url = live.rtmp_url(uuid)
    r = start_push(mcs, uuid, url, "OPUS")
    assert r.code == 0, r.message
    gst(procs, gst_video(r.port.video), gst_audio("OPUS", r.port.audio))
    wait_for(lambda: live.is_publishing(uuid), what="publication")
    live.restart()
    restarted = time.monotonic()
    wait_for(lambda: live.is_publishing(uuid), what="publication after restart")
    resumed = time.monotonic() - restarted
    frames, expected, pcm = play(url, tmp_path)
    stats = leg_state(gateway, uuid)["stats"]["push"]
    assert stop_push(mcs, uuid).code == 0
    assert stats["reconnects"] >= 1
    assert expected >= FPS * PLAY_SECONDS / 2 and frames >= 0.9 * expected, (resumed, stats)
    assert abs(dominant_hz(pcm[len(pcm) // 4:]) - AUDIO["OPUS"][3]) < 5
    print(f"push resumed {resumed:.2f} s after the restart")
