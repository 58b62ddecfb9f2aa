"""Rtmp2rtp end to end: a real live server, a real `wxmgw serve`, driven over Thrift.

ffmpeg publishes the mini-program's stream; a socket peer plays the MAS: it
records what the gateway sends, relays it to GStreamer receivers that have no
SDP (the independent decoders), and answers the audio symmetrically with the
conference mix; ffmpeg plays ``pushAudioUrl``. One live server (nginx-rtmp,
and node-media-server for the core tests) and one gateway serve the whole module.
"""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import numpy as np
import pytest
import thriftpy2
from conftest import LIVE_SERVERS, LiveServer, ffmpeg_publish_args
from media_checks import dominant_hz, play_audio, signal_live, wait_for
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess, free_port, free_port_range

from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE
from wxmgw.media.transcode import AudioEncoder, audio_codec
from wxmgw.nms import NodeMediaServer
from wxmgw.rtp import rtcp
from wxmgw.rtp.packet import RtpPacket, is_rtcp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_rtmp2rtp_thrift")

TONE_HZ = 1000  # what the mini-program sends
MIX_HZ = 600  # what the MAS answers
CAPTURE = 3.0  # seconds of media each receiver gets
PAYLOAD_TYPES = {"PCMA": 8, "PCMU": 0, "G722": 9, "OPUS": 111}
GST_AUDIO = {
    "PCMA": "rtppcmadepay ! alawdec",
    "PCMU": "rtppcmudepay ! mulawdec",
    "G722": "rtpg722depay ! avdec_g722",
    "OPUS": "rtpopusdepay ! opusdec",
}
VIDEO_PT = 96
NAL_IDR = 5


# -- the live side ----------------------------------------------------------------------


class Publisher:
    """An ffmpeg publisher of one stream, restartable."""

    def __init__(self, live: LiveServer, stream: str, **kwargs: Any) -> None:
        self.live = live
        self.stream = stream
        self.url = live.rtmp_url(stream)
        self.kwargs = kwargs
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Publisher:
        self.proc = subprocess.Popen(
            ffmpeg_publish_args(self.url, seconds=600, tone_hz=TONE_HZ, **self.kwargs),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.live.is_publishing(self.stream), what=f"publishing {self.stream}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def stream(live: LiveServer) -> Iterator[Publisher]:
    """The mini-program: H.264 baseline + AAC 44.1 kHz mono carrying TONE_HZ."""
    pub = Publisher(live, "mini").start()
    yield pub
    pub.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), extra=["--stats-interval", "2"])
    yield gw
    assert gw.stop() == 0


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[Any]:
    c = make_client(tpy.WxMgw, "127.0.0.1", gateway.thrift_port, timeout=10000)
    yield c
    c.close()


# -- the MAS side ------------------------------------------------------------------------


@dataclass
class Stream:
    """One RTP stream as the peer sees it: packets, its RTCP, and where it came from."""

    rtp: socket.socket
    ctrl: socket.socket  # RTCP, on the RTP port + 1
    relay_to: int | None = None
    packets: list[RtpPacket] = field(default_factory=list)
    rtcp_in: list[rtcp.RtcpPacket] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each packet
    source: tuple[str, int] | None = None
    rtcp_source: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        return int(self.rtp.getsockname()[1])


class MasPeer:
    """Plays the MAS: records a leg's RTP, relays it to receivers, answers the audio."""

    def __init__(self) -> None:
        lo, _ = free_port_range(4)
        self.video = self._stream(lo)
        self.audio = self._stream(lo + 2)
        self._greenlets = [
            gevent.spawn(self._read, s, sock)
            for s in (self.video, self.audio)
            for sock in (s.rtp, s.ctrl)
        ]

    @staticmethod
    def _stream(port: int) -> Stream:
        pair = []
        for p in (port, port + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", p))
            pair.append(sock)
        return Stream(pair[0], pair[1])

    def _read(self, stream: Stream, sock: socket.socket) -> None:
        while True:
            data, addr = sock.recvfrom(65536)
            if sock is stream.ctrl or is_rtcp(data):
                stream.rtcp_source = addr
                stream.rtcp_in += rtcp.parse_compound(data)
                continue
            stream.source = addr
            stream.arrivals.append(time.monotonic())
            stream.packets.append(RtpPacket.parse(data))
            if stream.relay_to is not None:
                sock.sendto(data, ("127.0.0.1", stream.relay_to))

    def answer(self, codec: str, tone_hz: float | None,
               payload_type: int | None = None) -> gevent.Greenlet:
        """Send the mix back from the audio port to where the audio comes from, every 20 ms
        (in ``payload_type``: the codec's unless told)."""
        return gevent.spawn(self._answer, codec, tone_hz, payload_type)

    def _answer(self, codec: str, tone_hz: float | None, payload_type: int | None) -> None:
        info = audio_codec(codec)
        encoder = AudioEncoder(codec)
        seq, ts, n = 1000, 5000, 0
        start = time.monotonic()
        while True:
            t = (np.arange(AUDIO_FRAME_SAMPLES) + n * AUDIO_FRAME_SAMPLES) / AUDIO_RATE
            amplitude = 8000 if tone_hz else 0
            pcm = (amplitude * np.sin(2 * np.pi * (tone_hz or 0) * t)).astype(np.int16)
            for payload in encoder.encode(pcm):
                pt = PAYLOAD_TYPES[codec] if payload_type is None else payload_type
                pkt = RtpPacket(pt, seq, ts, 0x4D4153, payload)
                assert self.audio.source is not None
                self.audio.rtp.sendto(bytes(pkt), self.audio.source)
                seq, ts = (seq + 1) & 0xFFFF, ts + info.frame_samples_at_clock
            n += 1
            gevent.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

    def send_pli(self, sender_ssrc: int = 0x4D4153) -> None:
        self.send_video_feedback(rtcp.Pli(sender_ssrc, self.video.packets[-1].ssrc))

    def send_video_feedback(self, packet: rtcp.RtcpPacket) -> None:
        """One RTCP packet to the RTCP port of the gateway's video (RTP port + 1)."""
        assert self.video.source is not None
        host, port = self.video.source
        self.video.ctrl.sendto(rtcp.compound([packet]), (host, port + 1))

    def close(self) -> None:
        gevent.killall(self._greenlets)
        for s in (self.video, self.audio):
            s.rtp.close()
            s.ctrl.close()


@pytest.fixture
def mas() -> Iterator[MasPeer]:
    peer = MasPeer()
    yield peer
    peer.close()


# -- independent decoders ------------------------------------------------------------------


class Gst:
    """A gst-launch receiver on a free UDP port, decoding to raw media in a file."""

    def __init__(self, out: Path, caps: str, chain: str, raw_caps: str) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.out = out
        pipeline = (
            f'udpsrc port={self.port} caps="{caps}" ! rtpjitterbuffer latency=200 ! {chain} '
            f"! {raw_caps} ! filesink location={out}"
        )
        self.proc = subprocess.Popen(
            ["gst-launch-1.0", "-e", *shlex.split(pipeline)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # udpsrc is bound once the pipeline goes to PLAYING
            if b"Setting pipeline to PLAYING" in line:
                break
        else:
            raise AssertionError("gst-launch did not start")

    def finish(self) -> bytes:
        """End of stream: flush the decoders and return what was written."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.out.read_bytes() if self.out.exists() else b""


def gst_video(out: Path) -> Gst:
    return Gst(
        out,
        f"application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload={VIDEO_PT}",
        "rtph264depay ! h264parse ! avdec_h264 ! videoconvert",
        "video/x-raw,format=I420",
    )


def gst_audio(out: Path, codec: str) -> Gst:
    info = audio_codec(codec)
    return Gst(
        out,
        f"application/x-rtp,media=audio,clock-rate={info.clock_rate},encoding-name={codec},"
        f"payload={PAYLOAD_TYPES[codec]}",
        f"{GST_AUDIO[codec]} ! audioconvert ! audioresample",
        f"audio/x-raw,format=S16LE,rate={AUDIO_RATE},channels=1",
    )


def is_idr(p: RtpPacket) -> bool:
    """Whether an RTP payload carries (the start of) an IDR slice (RFC 6184 §5.6, §5.8)."""
    kind = p.payload[0] & 0x1F
    return kind == NAL_IDR or (kind == 28 and p.payload[1] & 0x9F == 0x80 | NAL_IDR)


def frames_after_first_idr(packets: list[RtpPacket]) -> int:
    """Access units sent from the first one carrying an IDR (single NAL or FU-A start)."""
    first = next((i for i, p in enumerate(packets) if is_idr(p)), None)
    assert first is not None, "no IDR sent"
    # The whole access unit: back up over the packets of the same timestamp (SPS/PPS).
    while first > 0 and packets[first - 1].timestamp == packets[first].timestamp:
        first -= 1
    return len({p.timestamp for p in packets[first:]})


# -- driving the gateway -------------------------------------------------------------------


def start_pull(client: Any, uuid: str, pull_url: str, mas: MasPeer, codec: str = "PCMA",
               push_audio_url: str = "", conf: str = "conf1") -> None:
    req = tpy.StartPullReq(
        uuid=uuid, pullUrl=pull_url, ssrc=0x1234ABCD, masIp="127.0.0.1",
        audioPort=mas.audio.port, videoPort=mas.video.port,
        audioPayloadType=PAYLOAD_TYPES[codec], audioCodec=codec,
        videoPayloadType=VIDEO_PT, VideoCodec="H264", pushAudioUrl=push_audio_url, confId=conf,
    )
    r = client.StartPull(req)
    assert r.code == 0, r.message


def leg_state(gw: GatewayProcess, uuid: str) -> dict[str, Any]:
    legs = [leg for leg in gw.state()["legs"] if leg["uuid"] == uuid]
    assert legs, f"no leg {uuid}"
    return legs[0]


def stop_pull_and_check_silence(client: Any, gw: GatewayProcess, uuid: str,
                                mas: MasPeer) -> None:
    stop_pulls_and_check_silence(client, gw, {uuid: mas})


def stop_pulls_and_check_silence(client: Any, gw: GatewayProcess,
                                 legs: dict[str, MasPeer]) -> None:
    """StopPull; right after each reply the leg's ports can be bound (its sockets are
    closed, so nothing can leave them), and no more packets arrive."""
    for uuid in legs:
        ports = leg_state(gw, uuid)["ports"]
        assert len(ports) == 2
        r = client.StopPull(tpy.StopPullReq(uuid=uuid, confId="conf1"))
        assert r.code == 0, r.message
        for port in ports:
            for p in (port, port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("0.0.0.0", p))
    gevent.sleep(0.2)  # what was in flight before the replies
    counts = [(len(m.video.packets), len(m.audio.packets)) for m in legs.values()]
    gevent.sleep(1.0)
    assert [(len(m.video.packets), len(m.audio.packets)) for m in legs.values()] == counts


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("live", "codec"), [
    *(("nginx-rtmp", codec) for codec in ("PCMA", "PCMU", "G722", "OPUS")),
    ("node-media-server", "OPUS"),
], indirect=["live"])
def test_pull_to_rtp_decodes_without_sdp(codec: str, stream: Publisher, gateway: GatewayProcess,
                                         client: Any, mas: MasPeer, tmp_path: Path) -> None:
    video = gst_video(tmp_path / "v.yuv")
    audio = gst_audio(tmp_path / "a.raw", codec)
    try:
        mas.video.relay_to, mas.audio.relay_to = video.port, audio.port
        uuid = f"mp-{codec.lower()}"
        start_pull(client, uuid, stream.url, mas, codec)
        wait_for(lambda: len(mas.audio.packets) >= CAPTURE / 0.02, what="audio RTP")
        wait_for(lambda: frames_after_first_idr(mas.video.packets) >= 25 * CAPTURE
                 if mas.video.packets else False, what="video RTP")
        stop_pull_and_check_silence(client, gateway, uuid, mas)
    finally:
        yuv, raw = video.finish(), audio.finish()

    decoded = len(yuv) // (320 * 240 * 3 // 2)
    expected = frames_after_first_idr(mas.video.packets)
    assert decoded >= 0.9 * expected, (decoded, expected)
    pcm = np.frombuffer(raw, np.int16)
    assert len(pcm) >= AUDIO_RATE
    assert abs(dominant_hz(pcm[-AUDIO_RATE:]) - TONE_HZ) < 10

    sent = mas.video.packets + mas.audio.packets
    assert {p.ssrc for p in sent} == {0x1234ABCD}
    assert {p.payload_type for p in mas.audio.packets} == {PAYLOAD_TYPES[codec]}
    assert max(len(p.payload) for p in mas.video.packets) <= 1200
    step = audio_codec(codec).frame_samples_at_clock
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF
             for a, b in zip(mas.audio.packets, mas.audio.packets[1:], strict=False)}
    assert steps == {step}  # a sample counter: 20 ms per packet, whatever the arrival


def has_sender_report(stream: Stream) -> bool:
    return any(isinstance(p, rtcp.SenderReport) for p in stream.rtcp_in)


def has_packets(stream: Stream, count: int) -> bool:
    return len(stream.packets) > count


def access_units(packets: list[RtpPacket]) -> list[list[RtpPacket]]:
    units: list[list[RtpPacket]] = []
    for p in packets:
        if units and units[-1][-1].timestamp == p.timestamp:
            units[-1].append(p)
        else:
            units.append([p])
    return units


@pytest.mark.parametrize("live", LIVE_SERVERS, indirect=True)
def test_mix_comes_back_to_push_audio_url(stream: Publisher, live: LiveServer,
                                          gateway: GatewayProcess, client: Any, mas: MasPeer,
                                          tmp_path: Path) -> None:
    uuid, mix = "mp-mix", "mix-of-mp"
    start_pull(client, uuid, stream.url, mas, "PCMA", push_audio_url=live.rtmp_url(mix))
    wait_for(lambda: mas.audio.source is not None, what="audio RTP")
    answer = mas.answer("PCMA", MIX_HZ)
    wait_for(lambda: live.is_publishing(mix), what="mix stream published")

    heard = play_audio(live.rtmp_url(mix), 2.0, tmp_path / "mix.raw")
    assert len(heard) >= 1.9 * AUDIO_RATE
    assert abs(dominant_hz(heard[-AUDIO_RATE:]) - MIX_HZ) < 10

    answer.kill()  # the MAS goes quiet: the player still gets a continuous stream, of silence
    quiet = play_audio(live.rtmp_url(mix), 2.0, tmp_path / "quiet.raw")
    assert len(quiet) >= 1.9 * AUDIO_RATE
    assert np.abs(quiet[AUDIO_RATE // 2:].astype(np.int32)).max() < 300
    stats = leg_state(gateway, uuid)["stats"]
    assert stats["mixIn"]["packets"] > 50 and stats["mixOut"]["silence_frames"] > 50

    # RTCP: a PLI brings SPS/PPS with the next access unit; sender reports on port + 1.
    sent_before = len(mas.video.packets)
    mas.send_pli()
    wait_for(lambda: any(e["uuid"] == uuid for e in gateway.events("keyframe_requested")),
             what="PLI handled")
    wait_for(lambda: len(access_units(mas.video.packets[sent_before:])) >= 4, what="more video")
    units = access_units(mas.video.packets[sent_before:])[:4]
    assert any(u[0].payload[0] & 0x1F == 7 and not any(is_idr(p) for p in u)
               for u in units), "no SPS in front of a non-IDR picture after the PLI"
    assert leg_state(gateway, uuid)["stats"]["videoRtp"]["pli"] == 1
    for s in (mas.video, mas.audio):
        wait_for(partial(has_sender_report, s), timeout=10, what="sender report")
        sr = next(p for p in s.rtcp_in if isinstance(p, rtcp.SenderReport))
        assert sr.ssrc == 0x1234ABCD and sr.packet_count > 0

    logged = [e for e in gateway.events("leg_stats") if e["uuid"] == uuid]
    assert logged and logged[-1]["audioRtp"]["packets"] > 0
    assert logged[-1].get("avOffsetMs") is None  # no AvSync video: no A/V offset

    stop_pull_and_check_silence(client, gateway, uuid, mas)
    wait_for(lambda: not live.is_publishing(mix), what="mix publication closed")


def test_live_server_restart_resumes_without_new_start_pull(
        stream: Publisher, live: LiveServer, gateway: GatewayProcess, client: Any,
        mas: MasPeer) -> None:
    uuid = "mp-restart"
    start_pull(client, uuid, stream.url, mas)
    wait_for(lambda: len(mas.audio.packets) > 25 and len(mas.video.packets) > 25, what="media")
    live.restart()  # kills every RTMP session, the publisher's too
    restarted = time.monotonic()
    stream.stop()
    stream.start()
    gevent.sleep(0.1)
    counts = len(mas.video.packets), len(mas.audio.packets)
    wait_for(lambda: len(mas.video.packets) > counts[0] + 25
             and len(mas.audio.packets) > counts[1] + 25, what="media after the restart")
    resumed = time.monotonic() - restarted
    assert resumed < 5.0, f"media resumed {resumed:.1f} s after the restart"
    assert leg_state(gateway, uuid)["stats"]["reconnects"] >= 1
    stop_pull_and_check_silence(client, gateway, uuid, mas)


def test_mas_nack_gets_the_named_video_packets_resent(stream: Publisher,
                                                     gateway: GatewayProcess, client: Any,
                                                     mas: MasPeer) -> None:
    uuid = "mp-nack"
    start_pull(client, uuid, stream.url, mas, "PCMA")
    wait_for(partial(has_packets, mas.video, 60), what="video RTP")
    first = mas.video.packets[0]
    recent = mas.video.packets[-20:]
    named = [recent[0], recent[1], recent[7]]
    mas.send_video_feedback(rtcp.Nack(0x4D4153, first.ssrc, [p.sequence_number for p in named]))

    def resent() -> list[RtpPacket]:
        numbers = {n.sequence_number for n in named}
        return [p for p in mas.video.packets if p.sequence_number in numbers]

    wait_for(lambda: len(resent()) >= 2 * len(named), what="named packets resent")
    for n in named:  # on the wire: the very packet again, same SSRC, number and payload
        copies = [p for p in resent() if p.sequence_number == n.sequence_number]
        assert copies == [n, n], (n.sequence_number, len(copies))
    rtp_stats = leg_state(gateway, uuid)["stats"]["videoRtp"]
    assert rtp_stats["nack"] == 1 and rtp_stats["resent"] == len(named), rtp_stats
    # A packet older than the history (1 s) is not resent.
    wait_for(lambda: mas.video.packets[-1].timestamp - first.timestamp > 2 * 90000
             if mas.video.packets else False, what="two seconds of video")
    mas.send_video_feedback(rtcp.Nack(0x4D4153, first.ssrc, [first.sequence_number]))
    wait_for(lambda: leg_state(gateway, uuid)["stats"]["videoRtp"]["resendMissed"] == 1,
             what="stale NACK refused")
    assert leg_state(gateway, uuid)["stats"]["videoRtp"]["resent"] == len(named)
    stop_pull_and_check_silence(client, gateway, uuid, mas)


def test_bad_media_is_reported_and_the_rest_flows(live: LiveServer, gateway: GatewayProcess,
                                                  client: Any) -> None:
    # stream: (publisher options, what must flow, the unsupported codec reported)
    cases: dict[str, tuple[dict[str, Any], str, str | None]] = {
        "h264-mp3": (dict(acodec="libmp3lame"), "video", "mp3"),
        "flv1-aac": (dict(vcodec="flv"), "audio", "flv1"),
        "audio-only": (dict(video=False), "audio", None),
        "video-only": (dict(audio=False), "video", None),
    }
    pubs = [Publisher(live, name, **opts).start() for name, (opts, _, _) in cases.items()]
    peers = {name: MasPeer() for name in cases}
    try:
        for name in cases:
            start_pull(client, f"mp-{name}", live.rtmp_url(name), peers[name])
        for name, (_, flows, _) in cases.items():
            got: Stream = getattr(peers[name], flows)
            wait_for(partial(has_packets, got, 25), what=f"{flows} of {name}")
        reported = {(e["uuid"], e["codec"]) for e in gateway.events("unsupported_codec")}
        for name, (_, _, codec) in cases.items():
            if codec:
                assert (f"mp-{name}", codec) in reported
            leg = leg_state(gateway, f"mp-{name}")
            assert leg["state"] == "running"
        assert "unsupported" in leg_state(gateway, "mp-h264-mp3")["stats"]["lastError"]
        stop_pulls_and_check_silence(client, gateway, {f"mp-{n}": peers[n] for n in cases})
    finally:
        for pub in pubs:
            pub.stop()
        for peer in peers.values():
            peer.close()


def rtp_lead(stream: Stream, clock_rate: int, after: float) -> float:
    """How far RTP media time runs ahead of arrival at the MAS, at worst, over the
    packets that arrived ``after`` seconds past the first; both counted from the first
    packet, as a MAS whose playout follows RTP timestamps counts them."""
    p0, a0 = stream.packets[0], stream.arrivals[0]
    return max(((p.timestamp - p0.timestamp) & 0xFFFFFFFF) / clock_rate - (a - a0)
               for p, a in zip(stream.packets, stream.arrivals, strict=True) if a - a0 > after)


@pytest.mark.parametrize("live", LIVE_SERVERS, indirect=True)
def test_rtp_stays_at_live_after_a_gop_burst_and_a_stall(
        live: LiveServer, gateway: GatewayProcess, client: Any, mas: MasPeer,
        tmp_path: Path) -> None:
    """A live server with a GOP cache (node-media-server) sends the seconds since the last
    keyframe in one burst when the play starts; a stalled server, what it held when it
    comes back. RTP media time stays within 0.3 s of arrival either way, and the video
    is decodable from its first keyframe."""
    pub = Publisher(live, "gop", gop=50).start()  # a keyframe every 2 s
    video = gst_video(tmp_path / "v.yuv")
    try:
        gevent.sleep(3.7)  # the GOP cache fills: almost a whole GOP, the second one
        mas.video.relay_to = video.port
        uuid = f"mp-gop-{live.rtmp_port}"
        start_pull(client, uuid, pub.url, mas, "PCMA")
        wait_for(lambda: len(mas.audio.packets) > 3 / 0.02, what="3 s of audio")
        audio_lead, video_lead = rtp_lead(mas.audio, 8000, 1.0), rtp_lead(mas.video, 90000, 1.0)
        print(f"{type(live).__name__}: RTP ahead of arrival after the play-start burst: "
              f"audio {audio_lead:.3f} s, video {video_lead:.3f} s")
        assert audio_lead <= 0.3 and video_lead <= 0.3

        stalled = len(mas.audio.packets)
        signal_live(live, signal.SIGSTOP)  # past the pull's read timeout: it reconnects
        gevent.sleep(4.0)
        signal_live(live, signal.SIGCONT)
        wait_for(lambda: leg_state(gateway, uuid)["stats"]["reconnects"] >= 1, what="reconnect")
        wait_for(lambda: len(mas.audio.packets) > stalled + 3 / 0.02, what="audio again")
        audio_lead, video_lead = rtp_lead(mas.audio, 8000, 0), rtp_lead(mas.video, 90000, 0)
        print(f"{type(live).__name__}: after the stall and the reconnect: "
              f"audio {audio_lead:.3f} s, video {video_lead:.3f} s")
        assert audio_lead <= 0.3 and video_lead <= 0.3
        caught_up = leg_state(gateway, uuid)["stats"]["caughtUp"]
        stop_pull_and_check_silence(client, gateway, uuid, mas)
    finally:
        yuv = video.finish()
        pub.stop()
    decoded = len(yuv) // (320 * 240 * 3 // 2)
    expected = frames_after_first_idr(mas.video.packets)
    assert decoded >= 0.9 * expected, (decoded, expected)
    if isinstance(live, NodeMediaServer):  # its burst's audio backlog was dropped, and logged
        assert caught_up["audioDroppedMs"] > 1000, caught_up
        assert any(e["uuid"] == uuid for e in gateway.events("pull_caught_up"))


def test_mix_stream_plays_from_start_pull_whatever_the_mas_sends(
        stream: Publisher, live: LiveServer, gateway: GatewayProcess, client: Any,
        mas: MasPeer, tmp_path: Path) -> None:
    """pushAudioUrl is published at StartPull, silence until the MAS sends: a MAS that
    says nothing, or answers in another payload type than agreed (logged once, naming
    both), leaves the mini-program a stream to play all the same."""
    uuid, mix = "mp-silent-mas", "mix-of-silent-mas"
    started = time.monotonic()
    start_pull(client, uuid, stream.url, mas, "PCMA", push_audio_url=live.rtmp_url(mix))
    wait_for(lambda: live.is_publishing(mix), what="mix stream published")
    assert time.monotonic() - started < 2.0
    quiet = play_audio(live.rtmp_url(mix), 2.0, tmp_path / "never.raw")
    assert len(quiet) >= 1.9 * AUDIO_RATE
    assert np.abs(quiet.astype(np.int32)).max() < 300

    answer = mas.answer("PCMA", MIX_HZ, payload_type=PAYLOAD_TYPES["PCMU"])
    try:
        wait_for(lambda: bool(gateway.events("rtp_wrong_payload_type")), what="wrong PT logged")
        wrong = play_audio(live.rtmp_url(mix), 2.0, tmp_path / "wrong.raw")
    finally:
        answer.kill()
    assert len(wrong) >= 1.9 * AUDIO_RATE
    logged = [e for e in gateway.events("rtp_wrong_payload_type") if e["uuid"] == uuid]
    assert len(logged) == 1, logged
    assert (logged[0]["seen"], logged[0]["expected"]) == (PAYLOAD_TYPES["PCMU"], 8)
    assert leg_state(gateway, uuid)["stats"]["mixIn"]["wrongPayloadType"] > 50
    stop_pull_and_check_silence(client, gateway, uuid, mas)
