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
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import gevent
import numpy as np
import pytest
import thriftpy2
from conftest import ffmpeg_publish_args
from media_checks import dominant_hz, play_audio, wait_for
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


def play(url: str, tmp: Path, seconds: float = PLAY_SECONDS,
         ) -> tuple[list[float], int, np.ndarray]:
    """Decode ``seconds`` of ``url`` with ffmpeg: (the decoded video frames' times in
    seconds, frames the span from the first to the last of them should hold at ``FPS``,
    48 kHz mono PCM)."""
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
    return [float(p * tb) for p in pts], expected, np.fromfile(pcm_path, np.int16)


def leg_state(gw: GatewayProcess, uuid: str) -> dict[str, Any]:
    legs = [x for x in gw.state()["legs"] if x["kind"] == "rtp2rtmp" and x["uuid"] == uuid]
    assert len(legs) == 1
    return legs[0]


@pytest.mark.parametrize(("live", "codec"), [
    *(("nginx-rtmp", codec) for codec in AUDIO), ("node-media-server", "OPUS"),
], indirect=["live"])
def test_member_media_plays_from_push_url(codec, live, gateway, mcs, procs, tmp_path):
    uuid = f"m-{codec.lower()}-{live.rtmp_port}"
    url = live.rtmp_url(uuid)
    r = start_push(mcs, uuid, url, codec)
    assert r.code == 0, r.message
    gst(procs, gst_video(r.port.video), gst_audio(codec, r.port.audio))
    wait_for(lambda: live.is_publishing(uuid), what="publication")
    times, expected, pcm = play(url, tmp_path)
    stats = leg_state(gateway, uuid)["stats"]
    assert stop_push(mcs, uuid).code == 0
    assert expected >= FPS * PLAY_SECONDS / 2 and len(times) >= 0.9 * expected, stats
    assert len(pcm) >= 0.9 * AUDIO_RATE * PLAY_SECONDS
    tone = AUDIO[codec][3]
    assert abs(dominant_hz(pcm[len(pcm) // 4:]) - tone) < 5, stats
    assert stats["audio"]["frames"] > 0 and stats["video"]["frames"] > 0
    assert stats["video"]["pli_sent"] >= 1
    latency = stats["push"]["added_latency_ms"]  # last RTP packet -> FLV tag sent
    assert latency["video"] and latency["audio"], latency


#: What a loss plan does with the n-th video packet (from 0) and its bytes.
SEND, DROP, HOLD = "send", "drop", "hold"
LossPlan = Callable[[int, bytes], str]


def seeded_loss(seed: int, drop: float, reorder: float, clean_start: int = 30) -> LossPlan:
    """Random loss and reordering, the same decisions for the same seed; the first
    ``clean_start`` packets pass, so the stream starts as a MAS's would."""
    rng = random.Random(seed)

    def plan(n: int, _data: bytes) -> str:
        roll = rng.random()
        if n < clean_start:
            return SEND
        if roll < drop:
            return DROP
        return HOLD if roll < drop + reorder else SEND

    return plan


def is_idr_start(payload: bytes) -> bool:
    """The first RTP packet of an IDR picture (single NAL unit or FU-A start, RFC 6184)."""
    nal_type = payload[0] & 0x1F
    if nal_type == 28:
        return len(payload) > 1 and payload[1] & 0x80 != 0 and payload[1] & 0x1F == 5
    return nal_type == 5


def keyframe_loss(keyframes: set[int]) -> LossPlan:
    """Lose the first packet of the given keyframes (counted from 1 as they come)."""
    seen = 0

    def plan(_n: int, data: bytes) -> str:
        nonlocal seen
        if is_idr_start(data[12:]):  # GStreamer's RTP: no CSRC, no extension
            seen += 1
            if seen in keyframes:
                return DROP
        return SEND

    return plan


class LossyPeer:
    """Relays GStreamer's video RTP to the gateway, losing and reordering as a plan says.

    It plays the MAS's side of one RTP session: it sends RTP from an even port
    and RTCP (GStreamer's sender reports, relayed) from the next one, so the
    gateway's feedback comes back there (RFC 3550 §11). PLIs are counted and
    handed on to GStreamer's rtpbin, whose encoder answers with a keyframe;
    with ``retransmit``, NACKs are answered as many MASes do, by sending the
    named packets again as they were (never lost).
    """

    def __init__(self, target: int, plan: LossPlan, retransmit: bool) -> None:
        self.target = ("127.0.0.1", target)
        self.plan, self.retransmit = plan, retransmit
        self.rtp_in, self.rtcp_in = udp(), udp()
        self.port, self.rtcp_port = self.rtp_in.getsockname()[1], self.rtcp_in.getsockname()[1]
        self.gst_rtcp = free_port(socket.SOCK_DGRAM)
        self.out, self.rtcp = self._pair()
        self.dropped = self.reordered = self.resent = 0
        self.plis: list[rtcp.Pli] = []
        self.nacks: list[rtcp.Nack] = []
        self._history: dict[int, bytes] = {}
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
        n = 0
        while True:
            data = self.rtp_in.recv(65536)
            seq = int.from_bytes(data[2:4], "big")
            self._history[seq] = data
            self._history.pop((seq - 2048) & 0xFFFF, None)
            action = self.plan(n, data)
            n += 1
            if action == DROP:
                self.dropped += 1
                continue
            if action == HOLD and held is None:
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
            if not is_rtcp(data):
                continue
            for packet in rtcp.parse_compound(data):
                if isinstance(packet, rtcp.Pli):
                    self.plis.append(packet)
                elif isinstance(packet, rtcp.Nack):
                    self.nacks.append(packet)
                    if self.retransmit:
                        self._resend(packet.lost)
            self.rtcp.sendto(data, ("127.0.0.1", self.gst_rtcp))

    def _resend(self, lost: list[int]) -> None:
        for seq in lost:
            data = self._history.get(seq)
            if data is not None:
                self.out.sendto(data, self.target)
                self.resent += 1

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


def run_lossy(mcs: Any, live: Any, gateway: GatewayProcess, procs: list[subprocess.Popen[bytes]],
              tmp: Path, uuid: str, plan: LossPlan, retransmit: bool, seconds: float,
              ) -> tuple[LossyPeer, list[float], int, np.ndarray, dict[str, Any]]:
    """A member's video through a :class:`LossyPeer`, played for ``seconds``: (the peer,
    decoded frames' times, frames expected between the first and the last, PCM, stats)."""
    url = live.rtmp_url(uuid)
    r = start_push(mcs, uuid, url, "PCMA")
    assert r.code == 0, r.message
    peer = LossyPeer(r.port.video, plan, retransmit)
    try:
        gst(procs, peer.gst_video(), gst_audio("PCMA", r.port.audio))
        wait_for(lambda: live.is_publishing(uuid), what="publication")
        times, expected, pcm = play(url, tmp, seconds)
        stats = leg_state(gateway, uuid)["stats"]
        assert stop_push(mcs, uuid).code == 0
    finally:
        peer.close()
    return peer, times, expected, pcm, stats


def test_lossy_video_is_repaired_by_nack_and_plays_whole(live, gateway, mcs, procs, tmp_path):
    """2 % loss and 5 % reordering, from a MAS that resends what a NACK names: every
    loss is recovered inside the jitter window, no frame is dropped, the player
    decodes at least 95 % of the frames."""
    peer, times, expected, pcm, full = run_lossy(
        mcs, live, gateway, procs, tmp_path, "m-lossy-nack",
        seeded_loss(7, drop=0.02, reorder=0.05), retransmit=True, seconds=4.0)
    video = full["video"]
    assert peer.dropped > 0 and peer.reordered > 0 and peer.resent >= peer.dropped, video
    # A held-back packet opens a hole too: it is NACKed, and counts as recovered when it comes.
    assert video["nack_sent"] > 0 and video["recovered"] >= peer.dropped, video
    assert video["lost"] == 0 and video["dropped_frames"] == 0, video
    assert expected >= 3 * FPS and len(times) >= 0.95 * expected, (len(times), expected, full)
    assert len(pcm) >= 0.9 * AUDIO_RATE * 4.0


def test_lost_keyframes_without_retransmission_recover_by_keyframe_request(
        live, gateway, mcs, procs, tmp_path):
    """The worst case without retransmission: a packet lost in two consecutive
    keyframes. Each broken picture is dropped with what depends on it, a PLI
    brings a fresh keyframe, and the video plays whole again from there."""
    peer, times, _, pcm, full = run_lossy(
        mcs, live, gateway, procs, tmp_path, "m-lossy-idr", keyframe_loss({2, 3}),
        retransmit=False, seconds=6.0)
    video = full["video"]
    assert peer.dropped == 2 and peer.resent == 0
    assert video["lost"] == 2 and video["recovered"] == 0 and peer.nacks, video
    assert video["dropped_frames"] > 0 and video["pli_sent"] >= 1 and peer.plis, video
    tail = [t for t in times if t >= times[-1] - 2.0]
    assert len(times) >= 2 * FPS and len(tail) >= 0.9 * 2.0 * FPS, (len(times), len(tail), video)
    assert len(pcm) >= 0.9 * AUDIO_RATE * 6.0


def test_a_silent_member_s_push_plays_silence_from_the_start(live, gateway, mcs, tmp_path):
    """A member whose MAS sends nothing yet: its pushUrl is published at once and a
    player gets continuous silence (video joins at its first keyframe)."""
    uuid = "m-silent"
    url = live.rtmp_url(uuid)
    r = start_push(mcs, uuid, url, "PCMA")
    assert r.code == 0, r.message
    started = time.monotonic()
    try:
        wait_for(lambda: live.is_publishing(uuid), what="publication with no media from the MAS")
        published = time.monotonic() - started
        pcm = play_audio(url, 2.0, tmp_path / "silent.pcm")
    finally:
        assert stop_push(mcs, uuid).code == 0
    assert len(pcm) >= 0.9 * AUDIO_RATE * 2.0
    assert np.abs(pcm.astype(np.int32)).max() < 300
    print(f"published {published:.2f} s after StartPush with no RTP")


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
        times, expected, pcm = play(target, tmp_path)
        stats = leg_state(gateway, uuid)["stats"]
        assert expected >= FPS * PLAY_SECONDS / 2 and len(times) >= 0.9 * expected, stats
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
    times, expected, pcm = play(url, tmp_path)
    stats = leg_state(gateway, uuid)["stats"]["push"]
    assert stop_push(mcs, uuid).code == 0
    assert stats["reconnects"] >= 1
    assert expected >= FPS * PLAY_SECONDS / 2 and len(times) >= 0.9 * expected, (resumed, stats)
    assert abs(dominant_hz(pcm[len(pcm) // 4:]) - AUDIO["OPUS"][3]) < 5
    print(f"push resumed {resumed:.2f} s after the restart")
