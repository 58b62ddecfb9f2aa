"""What every benchmark here does the same way.

CPU and memory of processes, percentiles, table cells; the issues' ffmpeg
command lines and their processes; a mini-program's media (a live pusher's
clip, looped by one ffmpeg publisher per leg) and a MAS's (a member's RTP
replayed in real time); the MAS peer that counts, echoes and forwards RTP;
RTMP players; timed Thrift probes.
"""

from __future__ import annotations

import multiprocessing
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import psutil
import thriftpy2
from av.audio.codeccontext import AudioCodecContext
from thriftpy2.rpc import make_client
from wxmgw_proc import free_port_range  # tests/integration, on the path of every bench

ROOT = Path(__file__).resolve().parents[1]
tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="bench_thrift")
FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"]
SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s=bench
c=IN IP4 127.0.0.1
t=0 0
"""
SDP_AUDIO = "m=audio {port} RTP/AVP 8\na=rtpmap:8 PCMA/8000\n"
SDP_VIDEO = "m=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 packetization-mode=1\n"
PROBE_TIMEOUT = 5.0

#: What a WeChat live pusher sends by default: 640x360 at 15 fps, ~600 kbps
#: H.264 baseline with a keyframe every 2 s, AAC-LC 44.1 kHz mono.
LIVE_FPS = 15
LIVE_GOP = 2 * LIVE_FPS
LIVE_CLIP_SECONDS = 10  # whole GOPs, so a loop restarts on a keyframe
LIVE_VIDEO = [
    "-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-preset", "veryfast",
    "-b:v", "600k", "-maxrate", "600k", "-bufsize", "600k",
    "-g", str(LIVE_GOP), "-keyint_min", str(LIVE_GOP), "-sc_threshold", "0",
]
#: A mini-program pushing a live-encoded test pattern (320x240 25 fps + AAC 44.1 kHz mono).
PUBLISH = [
    *FFMPEG, "-re",
    "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
    "-f", "lavfi", "-i", "sine=1000:sample_rate=44100",
    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-profile:v", "baseline",
    "-tune", "zerolatency", "-c:a", "aac", "-ar", "44100", "-ac", "1", "-f", "flv",
]


# -- measuring ---------------------------------------------------------------------------------


def cpu_times(procs: list[psutil.Process]) -> tuple[float, float]:
    """User and system CPU seconds of ``procs`` so far (a process that has ended counts 0)."""
    user = system = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += t.user
        system += t.system
    return user, system


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``procs`` so far."""
    return sum(cpu_times(procs))


def rtp_continuity(before: list[tuple[int, int]], after: list[tuple[int, int]],
                   seconds: float) -> float:
    """The worst leg's video frames and PCMA audio received over ``seconds``, as a
    fraction of what a live pusher sends (``MasPeer.counts`` before and after)."""
    return min(min((f1 - f0) / (LIVE_FPS * seconds), (a1 - a0) / PCMA_RATE / seconds)
               for (f0, a0), (f1, a1) in zip(before, after, strict=True))


def rss(procs: list[psutil.Process]) -> int:
    """The resident memory of ``procs`` together, bytes."""
    return sum(p.memory_info().rss for p in procs)


def pct_ms(seconds: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of durations in seconds, in ms; None if empty."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def legs_latency(windows: Iterable[list[float] | None]) -> str:
    """``p50/p99`` ms over legs' ``[p50, p99]`` windows: the median p50, the worst p99."""
    measured = [w for w in windows if w]
    if not measured:
        return "-"
    p50s = sorted(w[0] for w in measured)
    return f"{p50s[len(p50s) // 2]:.1f}/{max(w[1] for w in measured):.1f}"


def fmt(value: float | None, spec: str) -> str:
    """A table cell: ``-`` for what was not measured."""
    return "-" if value is None else format(value, spec)


# -- the ffmpeg CLI side ----------------------------------------------------------------------


def rtmp2rtp_cmd(url: str, audio: int, video: int) -> list[str]:
    """The Rtmp2rtp issue's command: pull ``url``, H.264 and PCMA RTP to 127.0.0.1 ports."""
    return [
        *FFMPEG, "-i", url,
        "-map", "0:v", "-c:v", "copy", "-bsf:v", "h264_mp4toannexb",
        "-f", "rtp", f"rtp://127.0.0.1:{video}",
        "-map", "0:a", "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1",
        "-f", "rtp", f"rtp://127.0.0.1:{audio}",
    ]


def rtp2rtmp_cmd(sdp: Path, url: str, audio: int, video: int | None) -> list[str]:
    """The Rtp2rtmp issue's command, pushing to ``url`` what the SDP it writes at ``sdp`` says.

    PCMA on port ``audio`` and, unless ``video`` is None, H.264 on ``video``.
    """
    text = SDP + SDP_AUDIO.format(port=audio)
    if video is not None:
        text += SDP_VIDEO.format(port=video)
    sdp.write_text(text)
    copy_video = [] if video is None else ["-c:v", "copy"]
    return [*FFMPEG, "-protocol_whitelist", "file,udp,rtp", "-i", str(sdp),
            *copy_video, "-c:a", "aac", "-f", "flv", url]


def make_live_clip(path: Path) -> Path:
    """Encode a live pusher's stream (:data:`LIVE_VIDEO`, AAC 44.1 kHz mono) to FLV at ``path``."""
    subprocess.run([
        *FFMPEG, "-y", "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={LIVE_FPS}",
        "-f", "lavfi", "-i", "sine=440:sample_rate=44100", "-t", str(LIVE_CLIP_SECONDS),
        *LIVE_VIDEO, "-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "1", str(path),
    ], check=True)
    return path


def publish_loop(clip: Path, url: str) -> subprocess.Popen[bytes]:
    """A mini-program: ``clip`` pushed to ``url`` in real time, looped, not re-encoded."""
    return spawn([*FFMPEG, "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
                  "-f", "flv", url])


def wait_publishing(live: Any, streams: list[str], timeout: float = 30.0) -> None:
    """Wait until every stream of ``streams`` is published on ``live`` (a ``NginxRtmp``)."""
    deadline = time.monotonic() + timeout
    while not all(live.is_publishing(s) for s in streams):
        if time.monotonic() > deadline:
            raise RuntimeError("publishers did not start")
        time.sleep(0.2)


class PortRanges:
    """Free even-aligned UDP port ranges that do not overlap one another.

    For processes that bind them later (an ffmpeg reading an SDP): two
    ranges free at the same moment might otherwise be the same ports.
    """

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def take(self, size: int) -> int:
        """The first port of a range of ``size`` free ports none of which was taken before."""
        while True:
            lo, hi = free_port_range(size)
            ports = set(range(lo, hi + 1))
            if not ports & self._taken:
                self._taken |= ports
                return lo


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with no input and its output thrown away."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def kill_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill every process of ``procs``, then reap them all."""
    procs = list(procs)
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


# -- the player side ---------------------------------------------------------------------------


class Player:
    """Plays an RTMP stream in a thread (PyAV demux, no decoding), again when it drops.

    Subclasses say what to do with each non-empty packet in :meth:`on_packet`;
    they set up their own state before calling ``super().__init__``, which
    starts the thread.
    """

    OPTIONS = {"rw_timeout": "3000000"}
    RETRY = 0.3  # seconds before playing again: not published yet, or dropped

    def __init__(self, url: str) -> None:
        self.url = url
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def on_packet(self, packet: av.Packet, now: float) -> None:
        """``packet`` arrived at ``now`` (monotonic)."""
        raise NotImplementedError

    @staticmethod
    def aac_seconds(packet: av.Packet) -> float:
        """The duration of one AAC-LC frame of ``packet``'s stream: 1024 samples."""
        ctx = packet.stream.codec_context
        assert isinstance(ctx, AudioCodecContext)
        return 1024 / (ctx.sample_rate or 1)

    def _run(self) -> None:
        while not self._stop:
            try:
                with av.open(self.url, options=self.OPTIONS, timeout=(10.0, None)) as c:
                    for packet in c.demux():
                        if self._stop:
                            return
                        now = time.monotonic()
                        if packet.size:
                            self.on_packet(packet, now)
            except Exception:
                time.sleep(self.RETRY)

    def stop(self) -> None:
        self._stop = True


# -- probes of the Thrift service -------------------------------------------------------------


def push_probe_calls(uuid: str, url: str) -> list[tuple[str, Any]]:
    """StartPush of a throwaway member ``uuid`` pushed to ``url``, then its StopPush."""
    start = tpy.StartPushReq(
        uuid=uuid, pushUrl=url, audioPayloadType=8, audioCodec="PCMA",
        videoPayloadType=96, videoCodec="H264", confId="probe", reqUuid="probe",
        weixin="false")
    return [("StartPush", start), ("StopPush", tpy.StopPushReq(uuid=uuid, confId="probe"))]


class Probe:
    """Makes Thrift ``calls`` again and again from a process of its own, on its own connection.

    ``pause`` seconds after each round; ``durations`` (filled by :meth:`stop`)
    holds every call's round trip, a call that fails or times out counting as
    ``PROBE_TIMEOUT`` (the gateway is swamped), after which the probe connects
    again. A process, not a thread: in this script's process the probe would
    wait for the GIL behind the MAS peer's and the players' threads, and time
    that wait as the gateway's.
    """

    def __init__(self, port: int, calls: list[tuple[str, Any]], pause: float) -> None:
        self.durations: list[float] = []
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._stop = ctx.Event()
        spec = [(method, type(req).__name__, dict(vars(req))) for method, req in calls]
        self._proc = ctx.Process(target=_probe, args=(port, spec, pause, self._stop, child),
                                 daemon=True)
        self._proc.start()
        if not self._conn.poll(30):  # the probe times from here: imports are done
            self._proc.kill()
            raise RuntimeError("the Thrift probe did not start")
        self._conn.recv()

    def stop(self) -> None:
        if self._proc.pid is None or self._proc.exitcode is not None:
            return
        self._stop.set()
        if self._conn.poll(PROBE_TIMEOUT + 10):
            self.durations = self._conn.recv()
        self._proc.join(5)
        if self._proc.exitcode is None:
            self._proc.kill()


def _probe(port: int, spec: list[tuple[str, str, dict[str, Any]]], pause: float,
           stop: Any, conn: Any) -> None:
    """:class:`Probe`'s process: the calls until ``stop`` is set, then the durations to ``conn``."""
    calls = [(method, getattr(tpy, kind)(**fields)) for method, kind, fields in spec]
    durations: list[float] = []
    client = None
    conn.send("ready")
    while not stop.is_set():
        try:
            if client is None:
                client = make_client(tpy.WxMgw, "127.0.0.1", port,
                                     timeout=int(PROBE_TIMEOUT * 1000))
            for method, req in calls:
                t0 = time.perf_counter()
                getattr(client, method)(req)
                durations.append(time.perf_counter() - t0)
        except Exception:
            durations.append(PROBE_TIMEOUT)
            if client is not None:
                client.close()
            client = None
        stop.wait(pause)
    if client is not None:
        client.close()
    conn.send(durations)


# -- a MAS: members' RTP in, the legs' RTP out ------------------------------------------------


@dataclass(slots=True)
class MemberClip:
    """A member's media as RTP payloads: per video frame a list, per 20 ms a PCMA packet."""

    video: list[list[bytes]]
    audio: list[bytes]


PCMA_RATE = 8000
PCMA_PACKET = PCMA_RATE // 50  # 20 ms
AUDIO_PT, VIDEO_PT = 8, 96


def make_member_clip() -> MemberClip:
    """A MAS member's stream, encoded once: :data:`LIVE_VIDEO` H.264 640x360 (SPS/PPS in
    band, FU-A of at most 1200 bytes) and PCMA 8 kHz, :data:`LIVE_CLIP_SECONDS` long."""
    from wxmgw.codecs.h264 import NAL_AUD, nal_type, split_annexb
    from wxmgw.rtp.h264 import H264Packetizer

    seconds = str(LIVE_CLIP_SECONDS)
    annexb = subprocess.run([
        *FFMPEG, "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={LIVE_FPS}", "-t", seconds,
        *LIVE_VIDEO, "-x264-params", "aud=1:repeat-headers=1", "-f", "h264", "-",
    ], capture_output=True, check=True).stdout
    alaw = subprocess.run([
        *FFMPEG, "-f", "lavfi", "-i", "sine=440:sample_rate=8000", "-t", seconds,
        "-c:a", "pcm_alaw", "-f", "alaw", "-",
    ], capture_output=True, check=True).stdout
    units: list[list[bytes]] = []
    for nalu in split_annexb(annexb):
        if nal_type(nalu) == NAL_AUD:  # x264 starts every access unit with one
            units.append([])
        elif units:
            units[-1].append(nalu)
    packetizer = H264Packetizer()
    video = [packetizer.packetize(unit, None, None, False) for unit in units]
    audio = [alaw[i:i + PCMA_PACKET] for i in range(0, len(alaw), PCMA_PACKET)]
    assert len(video) == LIVE_FPS * LIVE_CLIP_SECONDS, len(video)
    return MemberClip(video, audio)


_RTP = struct.Struct("!BBHII")
_SR = struct.Struct("!BBHIIIIII")  # RFC 3550 §6.4.1, no report blocks
NTP_EPOCH = 2208988800  # 1900-01-01 to 1970-01-01, seconds


def sender_report(ssrc: int, wall: float, rtp_ts: int, packets: int) -> bytes:
    """An RTCP SR (RFC 3550 §6.4.1) mapping ``rtp_ts`` to wall-clock ``wall`` (no octet count)."""
    ntp = wall + NTP_EPOCH
    return _SR.pack(0x80, 200, 6, ssrc, int(ntp) & 0xFFFFFFFF, int(ntp % 1 * 2**32),
                    rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF, 0)


class MemberSender:
    """Replays ``clip`` as every member's RTP, in real time, from one thread, as a MAS would.

    ``legs`` are (audio port, video port) on 127.0.0.1; member ``i`` has its
    own SSRCs and sequence numbers and its packets are offset by ``i / N`` of
    a 20 ms packet, as independent members would be: no leg's media arrives
    in one burst with all the others'. A video frame's packets go together;
    every second each stream also gets a sender report on its port + 1.
    """

    def __init__(self, clip: MemberClip, legs: list[tuple[int, int]]) -> None:
        self.clip, self.legs = clip, legs
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = len(self.legs)
        start, wall = time.monotonic() + 0.1, time.time() + 0.1
        sent = [[0, 0] for _ in self.legs]  # packets: audio, video
        tick = 0  # 20 ms
        while not self._stop.is_set():
            for i, (audio, video) in enumerate(self.legs):
                at = tick * 0.02 + i * 0.02 / n
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if tick % 50 == 0:
                    self._reports(i, wall + at, tick, sent[i])
                header = _RTP.pack(0x80, AUDIO_PT, sent[i][0] & 0xFFFF,
                                   tick * PCMA_PACKET & 0xFFFFFFFF, 1000 + i)
                self._sock.sendto(header + self.clip.audio[tick % len(self.clip.audio)],
                                  ("127.0.0.1", audio))
                sent[i][0] += 1
                frame = tick * LIVE_FPS // 50  # the frame due in this 20 ms, if it is new
                if tick == 0 or frame != (tick - 1) * LIVE_FPS // 50:
                    self._frame(i, video, frame, sent[i])
            tick += 1

    def _frame(self, leg: int, port: int, n: int, sent: list[int]) -> None:
        payloads = self.clip.video[n % len(self.clip.video)]
        ts = n * 90000 // LIVE_FPS & 0xFFFFFFFF
        last = len(payloads) - 1
        for k, payload in enumerate(payloads):
            b1 = VIDEO_PT | (0x80 if k == last else 0)
            self._sock.sendto(_RTP.pack(0x80, b1, sent[1] & 0xFFFF, ts, 2000 + leg) + payload,
                              ("127.0.0.1", port))
            sent[1] += 1

    def _reports(self, leg: int, wall: float, tick: int, sent: list[int]) -> None:
        audio, video = self.legs[leg]
        self._sock.sendto(sender_report(1000 + leg, wall, tick * PCMA_PACKET, sent[0]),
                          ("127.0.0.1", audio + 1))
        self._sock.sendto(sender_report(2000 + leg, wall, tick * 90000 // 50, sent[1]),
                          ("127.0.0.1", video + 1))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@dataclass
class PeerLeg:
    """One leg at the MAS: where its RTP arrives and where the peer sends it on."""

    audio: socket.socket
    video: socket.socket
    echo: bool = False  # the audio back to where it came from (the conference mix)
    push_audio: tuple[str, int] | None = None  # the member's StartPush ports
    push_video: tuple[str, int] | None = None
    mix_to: tuple[str, int] | None = None  # where the echo goes; None: to the source
    frames: int = 0
    audio_bytes: int = 0

    @property
    def ports(self) -> tuple[int, int]:
        return self.audio.getsockname()[1], self.video.getsockname()[1]


class MasPeer:
    """Receives every leg's RTP in one thread, counts it, echoes and forwards it."""

    def __init__(self) -> None:
        self.legs: list[PeerLeg] = []
        self._selector = selectors.DefaultSelector()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, echo: bool = False) -> PeerLeg:
        lo, _ = free_port_range(4)
        socks = []
        for port in (lo, lo + 2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            socks.append(s)
        leg = PeerLeg(socks[0], socks[1], echo)
        self._selector.register(leg.audio, selectors.EVENT_READ, (leg, True))
        self._selector.register(leg.video, selectors.EVENT_READ, (leg, False))
        self.legs.append(leg)
        return leg

    def start(self) -> None:
        self._thread.start()

    def counts(self) -> list[tuple[int, int]]:
        return [(leg.frames, leg.audio_bytes) for leg in self.legs]

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.2):
                leg, is_audio = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                while True:
                    try:
                        data, addr = sock.recvfrom(65536)
                    except (BlockingIOError, OSError):
                        break
                    if len(data) < 12 or 64 <= (data[1] & 0x7F) <= 95:
                        continue  # RTCP
                    try:
                        if is_audio:
                            leg.audio_bytes += len(data) - 12
                            if leg.echo:
                                sock.sendto(data, leg.mix_to or addr)
                            if leg.push_audio:
                                sock.sendto(data, leg.push_audio)
                        else:
                            leg.frames += data[1] >> 7
                            if leg.push_video:
                                sock.sendto(data, leg.push_video)
                    except OSError:
                        pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for leg in self.legs:
            leg.audio.close()
            leg.video.close()


def start_pulls(client: Any, live: Any, peer: MasPeer, n: int) -> None:
    """StartPull (PCMA + H.264) of streams ``mp0``… of ``live`` (a ``NginxRtmp``), each
    to a leg of its own at ``peer``, through ``client`` (the gateway's Thrift)."""
    for i in range(n):
        audio, video = peer.add().ports
        r = client.StartPull(tpy.StartPullReq(
            uuid=f"mp{i}", pullUrl=live.rtmp_url(f"mp{i}"), ssrc=1000 + i,
            masIp="127.0.0.1", audioPort=audio, videoPort=video,
            audioPayloadType=AUDIO_PT, audioCodec="PCMA", videoPayloadType=VIDEO_PT,
            VideoCodec="H264", pushAudioUrl="", confId=f"c{i}"))
        assert r.code == 0, r.message


class CountPlayer(Player):
    """Counts the video frames and AAC audio seconds that arrive, and their media time."""

    # Default probing: a pushed stream's video may start a GOP after
    # its audio, and PyAV's demux() skips streams found after probing.
    OPTIONS = {**Player.OPTIONS, "fpsprobesize": "0"}
    RETRY = 0.5

    def __init__(self, url: str) -> None:
        self.frames = 0
        self.audio_seconds = 0.0
        self.pts = {"video": 0.0, "audio": 0.0}  # latest media time seen, seconds
        super().__init__(url)

    def on_packet(self, packet: av.Packet, now: float) -> None:
        if packet.pts is None:
            return
        kind = packet.stream.type
        if kind in self.pts:
            self.pts[kind] = float(packet.pts * packet.time_base)
        if kind == "video":
            self.frames += 1
        elif kind == "audio":
            self.audio_seconds += self.aac_seconds(packet)

    def counts(self) -> tuple[int, float, float, float]:
        return self.frames, self.audio_seconds, self.pts["video"], self.pts["audio"]
