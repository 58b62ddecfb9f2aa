"""Rtmp2rtp end to end: a real nginx-rtmp, a real `wxmgw serve`, driven over Thrift.

ffmpeg publishes the mini-program's stream; a socket peer plays the MAS: it
records what the gateway sends, relays it to GStreamer receivers that have no
SDP (the independent decoders), and answers the audio symmetrically with the
conference mix; ffmpeg plays ``pushAudioUrl``. One nginx and one gateway
serve the whole module.
"""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import numpy as np
import pytest
import thriftpy2
from conftest import ffmpeg_publish_args
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess, free_port, free_port_range

from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE
from wxmgw.media.transcode import AudioEncoder, audio_codec
from wxmgw.nginx import NginxRtmp
from wxmgw.rtp import rtcp
from wxmgw.rtp.packet import RtpPacket, is_rtcp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_rtmp2rtp_thrift")

TONE_HZ = 1000  # what the mini-program sends
MIX_HZ = 600  # what the MAS answers
WAIT = 20.0
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


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not in time: {what}"
        gevent.sleep(0.05)


def dominant_hz(pcm: np.ndarray, rate: int = AUDIO_RATE) -> float:
    """The strongest frequency of ``pcm``, checking that it stands out."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    peak = int(np.argmax(spectrum))
    assert spectrum[peak] > 20 * np.median(spectrum), "no clear tone"
    return peak * rate / len(pcm)


# -- the live side ----------------------------------------------------------------------


class Publisher:
    """An ffmpeg publisher of one stream, restartable."""

    def __init__(self, live: NginxRtmp, stream: str, **kwargs: Any) -> None:
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
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxRtmp]:
    with NginxRtmp(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="module")
def stream(live: NginxRtmp) -> Iterator[Publisher]:
    """The mini-program: H.264 baseline + AAC 44.1 kHz mono carrying TONE_HZ."""
    pub = Publisher(live, "mini").start()
    yield pub
    pub.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"))
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
            stream.packets.append(RtpPacket.parse(data))
            if stream.relay_to is not None:
                sock.sendto(data, ("127.0.0.1", stream.relay_to))

    def answer(self, codec: str, tone_hz: float | None) -> gevent.Greenlet:
        """Send the mix back from the audio port to where the audio comes from, every 20 ms."""
        return gevent.spawn(self._answer, codec, tone_hz)

    def _answer(self, codec: str, tone_hz: float | None) -> None:
        info = audio_codec(codec)
        encoder = AudioEncoder(codec)
        seq, ts, n = 1000, 5000, 0
        start = time.monotonic()
        while True:
            t = (np.arange(AUDIO_FRAME_SAMPLES) + n * AUDIO_FRAME_SAMPLES) / AUDIO_RATE
            amplitude = 8000 if tone_hz else 0
            pcm = (amplitude * np.sin(2 * np.pi * (tone_hz or 0) * t)).astype(np.int16)
            for payload in encoder.encode(pcm):
                pkt = RtpPacket(PAYLOAD_TYPES[codec], seq, ts, 0x4D4153, payload)
                assert self.audio.source is not None
                self.audio.rtp.sendto(bytes(pkt), self.audio.source)
                seq, ts = (seq + 1) & 0xFFFF, ts + info.frame_samples_at_clock
            n += 1
            gevent.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

    def send_pli(self, sender_ssrc: int = 0x4D4153) -> None:
        assert self.video.rtcp_source is not None or self.video.source is not None
        media_ssrc = self.video.packets[-1].ssrc
        host, port = self.video.source or ("127.0.0.1", 0)
        self.video.ctrl.sendto(
            rtcp.compound([rtcp.Pli(sender_ssrc, media_ssrc)]), (host, port + 1)
        )

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


def frames_after_first_idr(packets: list[RtpPacket]) -> int:
    """Access units sent from the first one carrying an IDR (single NAL or FU-A start)."""
    first = None
    for i, p in enumerate(packets):
        kind = p.payload[0] & 0x1F
        if kind == NAL_IDR or (kind == 28 and p.payload[1] & 0x80 and p.payload[1] & 0x1F == 5):
            first = i
            break
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
    """StopPull; right after the reply the leg's ports can be bound (its sockets are
    closed, so nothing can leave them), and no more packets arrive."""
    ports = leg_state(gw, uuid)["ports"]
    assert len(ports) == 2
    r = client.StopPull(tpy.StopPullReq(uuid=uuid, confId="conf1"))
    assert r.code == 0, r.message
    for port in ports:
        for p in (port, port + 1):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("0.0.0.0", p))
    gevent.sleep(0.2)  # what was in flight before the reply
    counts = len(mas.video.packets), len(mas.audio.packets)
    gevent.sleep(1.0)
    assert (len(mas.video.packets), len(mas.audio.packets)) == counts


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMA", "PCMU", "G722", "OPUS"])
def test_pull_to_rtp_decodes_without_sdp(codec: str, stream: Publisher, gateway: GatewayProcess,
                                         client: Any, mas: MasPeer, tmp_path: Path) -> None:
    video, audio = gst_video(tmp_path / "v.yuv"), gst_audio(tmp_path / "a.raw", codec)
    mas.video.relay_to, mas.audio.relay_to = video.port, audio.port
    uuid = f"mp-{codec.lower()}"
    start_pull(client, uuid, stream.url, mas, codec)
    wait_for(lambda: len(mas.audio.packets) >= CAPTURE / 0.02, what="audio RTP")
    wait_for(lambda: frames_after_first_idr(mas.video.packets) >= 25 * CAPTURE
             if mas.video.packets else False, what="video RTP")
    stop_pull_and_check_silence(client, gateway, uuid, mas)

    decoded = len(video.finish()) // (320 * 240 * 3 // 2)
    expected = frames_after_first_idr(mas.video.packets)
    assert decoded >= 0.9 * expected, (decoded, expected)
    pcm = np.frombuffer(audio.finish(), np.int16)
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
