"""StartPush legs vs one ffmpeg CLI process per leg: CPU, memory, added latency, continuity.

Run: ``/tmp/venv0/bin/python bench/bench_rtp2rtmp.py [--n 1,10] [--seconds 20]``.

The member's media is made once, in memory: 12 s of H.264 (x264 baseline
~600 kbps, 640x360, 25 fps, an IDR every 30 frames, SPS/PPS in-band) and PCMA
8 kHz, packetized by ``wxmgw.rtp.h264.H264Packetizer`` (1200-byte payloads)
and 20 ms audio packets. One sender thread replays it in a loop to every leg,
paced on the absolute 20 ms grid (a video frame's packets every 40 ms, in one
burst), with per-leg SSRC, sequence numbers and timestamps; the sender's cost
is the same for both sides and is not in their figures. For each N, side by
side in one run, one after the other:

* **wxmgw**: a fresh ``wxmgw serve``; StartPush of N members, each pushed to
  its own stream of one nginx-rtmp; the sender sends to the returned ports.
* **ffmpeg**: the issue's command line, one process per leg, reading an SDP
  file: ``ffmpeg -protocol_whitelist file,udp,rtp -i member.sdp -c:v copy
  -c:a aac -f flv rtmp://…``.

Measured over ``--seconds`` after ``--warmup``: CPU seconds per leg-minute
(user+system from /proc of the gateway / of all ffmpeg processes); RSS per
leg (the gateway's growth over its idle RSS / the ffmpeg processes' RSS).

Latency and continuity are measured from the player side, on two legs (the
first and the last the sender serves), by PyAV demuxing the pushed stream
from nginx in a thread of this script. Each video frame carries an SEI
(user data unregistered, H.264 D.1.6) with the frame's number, added by the
sender as a single NAL unit packet in front of the frame; both sides pass it
through. *Video latency* is the frame's arrival at the player minus the time
the sender sent the frame's last packet, so it includes, beyond the
gateway's (or ffmpeg's) own delay, the nginx relay, two loopback TCP hops
and this script's thread scheduling (switch interval set to 1 ms): an upper
bound of the added latency. Audio latency is not measured from the player
(AAC re-encoding leaves no marker to match). The gateway's own measure is
read from ``/monitor/state`` at the end (``in video``/``in audio``): a video
frame from its last RTP packet out of the jitter buffer to its FLV tag sent,
an audio frame from its arrival to the AAC tags it completes sent; p50 is
the median of the legs' p50s, p99 the worst leg's p99. *Video continuity* is the share of the frames
sent during the window whose SEI number reached the player; *audio* is the
AAC duration received over the window's duration.

The issue's ffmpeg command keeps PCMA's 8 kHz for AAC: 128 ms frames, behind
which ffmpeg's muxer interleaving holds the video (one check with ``-ar 48000``
added brought its p50 from ~440 ms to ~60 ms).

The machine is shared and noisy: absolute figures move from run to run; the
two sides run one after the other under the same sender, so their ratio is
the figure to trust.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import psutil
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import (  # noqa: E402
    FFMPEG,
    Player,
    cpu_seconds,
    fmt,
    kill_all,
    legs_latency,
    pct_ms,
    rss,
    rtp2rtmp_cmd,
    spawn,
    tpy,
)
from wxmgw_proc import GatewayProcess, free_port_range  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402
from wxmgw.rtp.h264 import NAL_AUD, H264Packetizer, nal_type, split_annexb  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "rtp2rtmp.json"
FPS = 25
CLIP_SECONDS = 12  # 300 frames: 10 whole GOPs, so the loop restarts on an IDR
TICK = 0.02  # one PCMA packet; a video frame every second tick
PCMA_PACKET = 160
VIDEO_PT, AUDIO_PT = 96, 8
ENCODE_VIDEO = [
    *FFMPEG, "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={FPS}", "-t", str(CLIP_SECONDS),
    "-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-preset", "veryfast",
    "-b:v", "600k", "-maxrate", "600k", "-bufsize", "600k", "-g", "30", "-keyint_min", "30",
    "-sc_threshold", "0", "-x264-params", "aud=1:repeat-headers=1", "-f", "h264", "-",
]
ENCODE_AUDIO = [
    *FFMPEG, "-f", "lavfi", "-i", "sine=440:sample_rate=8000", "-t", str(CLIP_SECONDS),
    "-c:a", "pcm_alaw", "-f", "alaw", "-",
]
#: The SEI's UUID (no two zero bytes in a row: no emulation prevention needed).
MARK = bytes.fromhex("7778 6d67 7762 656e 6368 6672 616d 6521")
FRAME_DIGITS = 10  # the frame number, as ASCII digits (never a zero byte)


# -- the member's media and its sender ------------------------------------------------------


def frame_sei(number: int) -> bytes:
    """An SEI NAL unit, user data unregistered (payload type 5), carrying ``number``."""
    body = MARK + f"{number:0{FRAME_DIGITS}d}".encode()
    return bytes((0x06, 5, len(body))) + body + b"\x80"


def frame_number(data: bytes) -> int | None:
    """The number of the SEI :func:`frame_sei` put in a video packet, if it is there."""
    at = data.find(MARK)
    if at < 0:
        return None
    return int(data[at + len(MARK):at + len(MARK) + FRAME_DIGITS])


@dataclass(slots=True)
class Clip:
    """RTP payloads of the member's media: per video frame a list, per 20 ms an audio packet."""

    video: list[list[bytes]]
    audio: list[bytes]


def make_clip() -> Clip:
    annexb = subprocess.run(ENCODE_VIDEO, capture_output=True, check=True).stdout
    alaw = subprocess.run(ENCODE_AUDIO, capture_output=True, check=True).stdout
    units: list[list[bytes]] = []
    for nalu in split_annexb(annexb):
        if nal_type(nalu) == NAL_AUD:  # x264 starts every access unit with one
            units.append([])
        elif units:
            units[-1].append(nalu)
    packetizer = H264Packetizer()
    video = [packetizer.packetize(unit, None, None, False) for unit in units]
    audio = [alaw[i:i + PCMA_PACKET] for i in range(0, len(alaw), PCMA_PACKET)]
    assert len(video) == FPS * CLIP_SECONDS and len(audio) == 2 * len(video)
    return Clip(video, audio)


_HEADER = struct.Struct("!BBHII")
_SR = struct.Struct("!BBHIIIIII")  # RFC 3550 §6.4.1, no report blocks
NTP_EPOCH = 2208988800  # 1900-01-01 to 1970-01-01, seconds
SR_EVERY = 50  # ticks: one sender report per stream per second


def sender_report(ssrc: int, wall: float, rtp_ts: int, packets: int, octets: int) -> bytes:
    """An RTCP SR (RFC 3550 §6.4.1) mapping ``rtp_ts`` to wall-clock ``wall``."""
    ntp = wall + NTP_EPOCH
    return _SR.pack(0x80, 200, 6, ssrc, int(ntp) & 0xFFFFFFFF, int(ntp % 1 * 2**32),
                    rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF)


class Sender:
    """Replays the clip to every leg from one thread, in real time, as a MAS would.

    Every second each stream of each leg also gets an RTCP sender report on
    its port + 1, so both sides can map RTP time to wall-clock.
    ``sent[leg][n]`` is when frame ``n``'s last packet left for a watched leg.
    """

    def __init__(self, clip: Clip, legs: list[tuple[int, int]], watched: list[int]) -> None:
        self.clip, self.legs = clip, legs  # (audio port, video port) on 127.0.0.1
        self.sent: dict[int, dict[int, float]] = {leg: {} for leg in watched}
        self._audio = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._video = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq = [[0, 0] for _ in self.legs]  # audio, video
        start, wall = time.monotonic(), time.time()
        tick = 0
        while not self._stop.is_set():
            delay = start + tick * TICK - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if tick % SR_EVERY == 0:
                self._send_reports(wall + tick * TICK, tick, seq)
            audio = self.clip.audio[tick % len(self.clip.audio)]
            ts = tick * PCMA_PACKET & 0xFFFFFFFF
            for i, (port, _) in enumerate(self.legs):
                s = seq[i]
                header = _HEADER.pack(0x80, AUDIO_PT, s[0] & 0xFFFF, ts, 1000 + i)
                self._audio.sendto(header + audio, ("127.0.0.1", port))
                s[0] += 1
            if tick % 2 == 0:
                self._send_frame(tick // 2, seq)
            tick += 1

    def _send_frame(self, n: int, seq: list[list[int]]) -> None:
        payloads = [frame_sei(n), *self.clip.video[n % len(self.clip.video)]]
        ts = n * 90000 // FPS & 0xFFFFFFFF
        last = len(payloads) - 1
        for i, (_, port) in enumerate(self.legs):
            s = seq[i]
            for k, payload in enumerate(payloads):
                b1 = VIDEO_PT | (0x80 if k == last else 0)
                header = _HEADER.pack(0x80, b1, s[1] & 0xFFFF, ts, 2000 + i)
                self._video.sendto(header + payload, ("127.0.0.1", port))
                s[1] += 1
            if i in self.sent:
                self.sent[i][n] = time.monotonic()

    def _send_reports(self, wall: float, tick: int, seq: list[list[int]]) -> None:
        # Octet counts are not used by the receivers; packet counts are exact.
        for i, (audio, video) in enumerate(self.legs):
            self._audio.sendto(sender_report(1000 + i, wall, tick * PCMA_PACKET, seq[i][0], 0),
                               ("127.0.0.1", audio + 1))
            video_ts = tick * 90000 // (2 * FPS)  # two ticks per frame
            self._video.sendto(sender_report(2000 + i, wall, video_ts, seq[i][1], 0),
                               ("127.0.0.1", video + 1))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._audio.close()
        self._video.close()


# -- the player --------------------------------------------------------------------------


class MarkPlayer(Player):
    """Notes when each numbered video frame and each AAC frame reaches the player."""

    def __init__(self, url: str) -> None:
        self.arrivals: dict[int, float] = {}  # frame number -> arrival (monotonic)
        self.audio: list[tuple[float, float]] = []  # (arrival, seconds of AAC)
        self.video_packets = 0  # with or without a frame number
        super().__init__(url)

    def on_packet(self, packet: av.Packet, now: float) -> None:
        if packet.stream.type == "video":
            self.video_packets += 1
            n = frame_number(bytes(packet))
            if n is not None:
                self.arrivals.setdefault(n, now)
        elif packet.stream.type == "audio":
            self.audio.append((now, self.aac_seconds(packet)))


# -- one side, one N --------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    who: str
    n: int
    seconds: float
    cpu_per_leg_minute: float
    rss_mb_per_leg: float
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    latency_ms_min: float | None
    latency_samples: int
    video_continuity: float | None
    audio_continuity: float | None
    per_leg: list[dict[str, float]]
    sender_cpu_per_minute: float
    added_ms: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Side:
    """What a side's runner set up: the processes measured and the legs' ports and URLs."""

    procs: list[psutil.Process]
    ports: list[tuple[int, int]]
    urls: list[str]
    base_rss: int = 0


def measure(side: Side, who: str, clip: Clip, live: NginxRtmp,
            args: argparse.Namespace) -> Result:
    n = len(side.ports)
    watched = sorted({0, n - 1})
    sender = Sender(clip, side.ports, watched)
    players: list[MarkPlayer] = []
    me = psutil.Process()
    try:
        deadline = time.monotonic() + args.warmup
        stream = side.urls[0].rsplit("/", 1)[1]
        while not live.is_publishing(stream) and time.monotonic() < deadline:
            time.sleep(0.2)
        players = [MarkPlayer(side.urls[i]) for i in watched]
        time.sleep(max(0.0, deadline - time.monotonic()))
        t0, cpu0, me0 = time.monotonic(), cpu_seconds(side.procs), cpu_seconds([me])
        time.sleep(args.seconds)
        t1, cpu1, me1 = time.monotonic(), cpu_seconds(side.procs), cpu_seconds([me])
        mem = rss(side.procs) - side.base_rss
        time.sleep(1.0)  # frames sent near the end still on their way
    finally:
        for player in players:
            player.stop()
        sender.close()
    secs = t1 - t0
    latencies: list[float] = []
    video: list[float] = []
    audio: list[float] = []
    per_leg: list[dict[str, float]] = []
    for leg, player in zip(watched, players, strict=True):
        sent = {k: t for k, t in sender.sent[leg].items() if t0 <= t <= t1}
        got = [player.arrivals[k] - t for k, t in sent.items() if k in player.arrivals]
        latencies += got
        video.append(len(got) / len(sent) if sent else 0.0)
        audio.append(sum(d for t, d in player.audio if t0 <= t <= t1) / secs)
        per_leg.append({"leg": leg, "video": video[-1], "audio": audio[-1],
                        "video_packets": player.video_packets})
    return Result(
        who=who, n=n, seconds=round(secs, 1),
        cpu_per_leg_minute=(cpu1 - cpu0) / n * 60 / secs,
        rss_mb_per_leg=mem / n / 2**20,
        latency_ms_p50=pct_ms(latencies, 50),
        latency_ms_p99=pct_ms(latencies, 99),
        latency_ms_min=None if not latencies else 1000 * min(latencies),
        latency_samples=len(latencies),
        video_continuity=min(video) if video else None,
        audio_continuity=min(audio) if audio else None,
        per_leg=per_leg,
        sender_cpu_per_minute=(me1 - me0) * 60 / secs,
    )


def run_wxmgw(tmp: Path, live: NginxRtmp, clip: Clip, n: int,
              args: argparse.Namespace) -> Result:
    gw = GatewayProcess(tmp, rtp_ports=4 * n + 8)
    client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
    proc = psutil.Process(gw.proc.pid)
    side = Side([proc], [], [], base_rss=rss([proc]))
    try:
        for i in range(n):
            url = live.rtmp_url(f"wx{n}-{i}")
            r = client.StartPush(tpy.StartPushReq(
                uuid=f"member-{i}", pushUrl=url, audioPayloadType=AUDIO_PT, audioCodec="PCMA",
                videoPayloadType=VIDEO_PT, videoCodec="H264", confId="bench",
                reqUuid="viewer", weixin=""))
            assert r.code == 0, r.message
            side.ports.append((r.port.audio, r.port.video))
            side.urls.append(url)
        result = measure(side, "wxmgw", clip, live, args)
        pushes = [leg["stats"]["push"]["added_latency_ms"] for leg in gw.state()["legs"]
                  if leg["kind"] == "rtp2rtmp"]
        result.added_ms = {kind: legs_latency(p[kind] for p in pushes)
                           for kind in ("video", "audio")}
        result.notes.append(f"idle RSS {side.base_rss / 2**20:.0f} MB")
        return result
    finally:
        client.close()
        gw.stop()


def run_ffmpeg(tmp: Path, live: NginxRtmp, clip: Clip, n: int,
               args: argparse.Namespace) -> Result:
    procs: list[subprocess.Popen[bytes]] = []
    side = Side([], [], [])
    try:
        for i in range(n):
            lo, _ = free_port_range(4)
            url = live.rtmp_url(f"ff{n}-{i}")
            procs.append(spawn(rtp2rtmp_cmd(tmp / f"member{i}.sdp", url, lo, lo + 2)))
            side.ports.append((lo, lo + 2))
            side.urls.append(url)
        side.procs = [psutil.Process(p.pid) for p in procs]
        result = measure(side, "ffmpeg", clip, live, args)
        dead = sum(p.poll() is not None for p in procs)
        if dead:
            result.notes.append(f"{dead} ffmpeg processes exited early")
        return result
    finally:
        kill_all(procs)


# -- output --------------------------------------------------------------------------------


def print_row(r: Result) -> None:
    print(f"{r.n:>4} {r.who:>7} {r.cpu_per_leg_minute:>9.2f} {r.rss_mb_per_leg:>8.1f} "
          f"{fmt(r.latency_ms_p50, '.0f'):>7} {fmt(r.latency_ms_p99, '.0f'):>7} "
          f"{fmt(r.video_continuity, '.3f'):>7} {fmt(r.audio_continuity, '.3f'):>7} "
          f"{r.sender_cpu_per_minute:>7.2f} {r.added_ms.get('video', '-'):>9} "
          f"{r.added_ms.get('audio', '-'):>9}  {'; '.join(r.notes)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", default="1,10", help="comma-separated leg counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=8.0, help="before the window")
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # the sender and players share this process's GIL

    clip = make_clip()
    results: list[Result] = []
    print(f"{args.seconds:.0f} s per run after {args.warmup:.0f} s warm-up; latency: video, "
          "sender's last packet of a frame -> player (through nginx); in video/audio: "
          "wxmgw's own p50/p99, packet in -> tag sent")
    print(f"{'N':>4} {'who':>7} {'CPU s/lm':>9} {'RSS MB':>8} {'lat p50':>7} {'lat p99':>7} "
          f"{'video':>7} {'audio':>7} {'sender':>7} {'in video':>9} {'in audio':>9}")
    with tempfile.TemporaryDirectory() as tmp, NginxRtmp(Path(tmp) / "nginx") as live:
        for n in (int(x) for x in args.n.split(",")):
            for run in (run_wxmgw, run_ffmpeg):
                results.append(run(Path(tmp), live, clip, n, args))
                print_row(results[-1])
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({
        "args": vars(args),
        "columns": {
            "cpu_per_leg_minute": "CPU seconds per leg per minute (user+system)",
            "rss_mb_per_leg": "wxmgw: RSS growth over idle / N; ffmpeg: sum of RSS / N",
            "latency_ms": "video: sender's last RTP packet of a frame -> FLV tag at a player",
            "video_continuity": "frames sent in the window that reached the player (worst leg)",
            "audio_continuity": "AAC seconds received / window seconds (worst leg)",
            "sender_cpu_per_minute": "this script (sender + players), CPU s per minute",
            "added_ms": "wxmgw's own measure, p50/p99 ms (median leg's p50, worst leg's p99):"
                        " video, a frame's last RTP packet out of the jitter buffer -> its FLV"
                        " tag sent; audio, a 20 ms frame -> the AAC tags it completes sent",
        },
        "results": [asdict(r) for r in results],
        "machine": {"cpus": psutil.cpu_count(), "load": list(psutil.getloadavg())},
    }, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
