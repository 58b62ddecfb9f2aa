"""Capacity: N two-way mini-program legs in one wxmgw vs the same legs done by the ffmpeg CLI.

Run: ``/tmp/venv0/bin/python bench/bench_capacity.py [--n 1,10,25,50] [--seconds 20]``.

Each leg is a mini-program: an ffmpeg publisher looping a pre-encoded FLV
at a live pusher's settings (``common.LIVE_VIDEO``: H.264 baseline 600 kbps
640x360 15 fps, a keyframe every 2 s, + AAC 44.1 kHz mono) with ``-re
-stream_loop -1 -c copy``. For each N, side by side in one run:

* **wxmgw**: StartPull of the leg's stream to a MAS peer (this script), with a
  ``pushAudioUrl``; the peer echoes the audio RTP to where it came from (the
  conference mix, symmetric RTP) and forwards the leg's audio and video RTP to
  the ports a StartPush of the leg's member returned (the app-member
  direction), which wxmgw pushes back to RTMP.
* **ffmpeg**: the same work by one ffmpeg CLI process per direction per leg:
  RTMP to RTP (the Rtmp2rtp issue's command), the echoed mix from RTP to RTMP,
  the member's RTP to RTMP (the Rtp2rtmp issue's command).

Measured over ``--seconds`` after ``--warmup``: CPU seconds per leg-minute of
the gateway process / of the ffmpeg processes (user+system, from /proc; the
system share is kept apart in the JSON); RSS
per leg (gateway growth over its idle RSS / ffmpeg processes' RSS); media
continuity, received ÷ expected at the far end: the MAS peer counts the RTP
video frames (marker bits, 25 fps expected) and audio seconds (PCMA bytes ÷
8000) of every leg, and RTMP players (PyAV demux in threads, a sample of
``--players`` legs to keep the load low) count the pushed streams' video
frames and AAC audio seconds (over the media time elapsed, or the wall time
when a stream fell behind). Then, for ``--probe-seconds`` under the same
load (its own CPU is not in the figures above): Thrift StartPush/StopPush
p99 of a probe member started and stopped every 0.25 s.

Hub lag is not exposed by the gateway; it is measured from outside as the
round trip of a StopPush for an unknown uuid every 50 ms during the probes (a reply that needs
nothing but a free hub), so it includes one loopback Thrift round trip.
Added latency is not measured here (bench_rtmp2rtp.py's job).

The machine is shared: absolute figures are noisy; the two sides run one
after the other for each N, so their ratio is the figure to trust.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import (  # noqa: E402
    LIVE_FPS,
    PCMA_RATE,
    CountPlayer,
    MasPeer,
    PortRanges,
    Probe,
    cpu_times,
    fmt,
    kill_all,
    make_live_clip,
    pct_ms,
    publish_loop,
    push_probe_calls,
    rss,
    rtmp2rtp_cmd,
    rtp2rtmp_cmd,
    spawn,
    tpy,
    wait_publishing,
)
from wxmgw_proc import GatewayProcess  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402

FPS = LIVE_FPS


# -- one side of one N -----------------------------------------------------------------------


@dataclass
class Result:
    who: str
    n: int
    cpu_per_leg_minute: float
    system_per_leg_minute: float  # the kernel's share of cpu_per_leg_minute
    rss_mb_per_leg: float
    rtp_video: float  # continuity at the MAS: mean over legs, and the worst leg
    rtp_audio: float
    rtp_worst: float
    rtmp_video: float  # continuity at the players (sampled legs): member video/audio, mix audio
    rtmp_audio: float
    rtmp_mix: float
    players: int
    thrift_p99_ms: float | None = None
    hub_lag_p50_ms: float | None = None
    hub_lag_p99_ms: float | None = None
    bench_cpu_per_minute: float = 0.0  # this script (MAS peer, players, probes)
    notes: list[str] = field(default_factory=list)

    @property
    def continuity(self) -> float:
        return min(self.rtp_worst, self.rtmp_video, self.rtmp_audio, self.rtmp_mix)


class Window:
    """CPU and far-end counts between ``open()`` and ``close()``."""

    def __init__(self, procs: list[psutil.Process], peer: MasPeer,
                 players: list[CountPlayer]) -> None:
        self.procs, self.peer, self.players = procs, peer, players
        self.me = psutil.Process()

    def open(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = cpu_times(self.procs)
        self.me0 = sum(cpu_times([self.me]))
        self.peer0 = self.peer.counts()
        self.players0 = [p.counts() for p in self.players]

    def close(self, who: str, n: int, rss_per_leg: float) -> Result:
        secs = time.monotonic() - self.t0
        user, system = (t1 - t0 for t1, t0 in zip(cpu_times(self.procs), self.cpu0, strict=True))
        me = sum(cpu_times([self.me])) - self.me0
        video, audio = [], []
        for (f0, a0), (f1, a1) in zip(self.peer0, self.peer.counts(), strict=True):
            video.append((f1 - f0) / (FPS * secs))
            audio.append((a1 - a0) / PCMA_RATE / secs)
        # Media received over media time elapsed, or over wall time when the
        # stream fell behind: a player catching up on a backlog counts gaps only.
        played = [((p1[0] - p0[0]) / FPS / max(secs, p1[2] - p0[2]),
                   (p1[1] - p0[1]) / max(secs, p1[3] - p0[3]))
                  for p0, p1 in zip(self.players0, (p.counts() for p in self.players), strict=True)]
        members, mixes = played[0::2], played[1::2]
        return Result(
            who=who, n=n,
            cpu_per_leg_minute=(user + system) / n * 60 / secs,
            system_per_leg_minute=system / n * 60 / secs,
            rss_mb_per_leg=rss_per_leg / 2**20,
            rtp_video=statistics.fmean(video), rtp_audio=statistics.fmean(audio),
            rtp_worst=min(min(video), min(audio)),
            rtmp_video=statistics.fmean(v for v, _ in members),
            rtmp_audio=statistics.fmean(a for _, a in members),
            rtmp_mix=statistics.fmean(a for _, a in mixes),
            players=len(members),
            bench_cpu_per_minute=me * 60 / secs,
        )


def run_wxmgw(tmp: Path, live: NginxRtmp, n: int, args: argparse.Namespace) -> Result:
    """``n`` two-way legs over ``args.gateways`` processes, leg i on gateway i mod K."""
    gateways = [GatewayProcess(tmp, rtp_ports=8 * n + 32)
                for k in range(args.gateways)]
    gw = gateways[0]  # the probes' gateway
    peer = MasPeer()
    clients = [make_client(tpy.WxMgw, "127.0.0.1", g.thrift_port, timeout=20000)
               for g in gateways]
    probes: list[Probe] = []
    players: list[CountPlayer] = []
    try:
        procs = [psutil.Process(g.proc.pid) for g in gateways]
        idle = rss(procs)
        for i in range(n):
            client = clients[i % len(clients)]
            leg = peer.add(echo=True)
            audio, video = leg.ports
            r = client.StartPush(tpy.StartPushReq(
                uuid=f"app{i}", pushUrl=live.rtmp_url(f"wx-member{i}"), audioPayloadType=8,
                audioCodec="PCMA", videoPayloadType=96, videoCodec="H264", confId=f"c{i}",
                reqUuid=f"mp{i}", weixin="false"))
            assert r.code == 0, r.message
            leg.push_audio = ("127.0.0.1", r.port.audio)
            leg.push_video = ("127.0.0.1", r.port.video)
            r = client.StartPull(tpy.StartPullReq(
                uuid=f"mp{i}", pullUrl=live.rtmp_url(f"mp{i}"), ssrc=1000 + i,
                masIp="127.0.0.1", audioPort=audio, videoPort=video, audioPayloadType=8,
                audioCodec="PCMA", videoPayloadType=96, VideoCodec="H264",
                pushAudioUrl=live.rtmp_url(f"wx-mix{i}"), confId=f"c{i}"))
            assert r.code == 0, r.message
        peer.start()
        for i in range(min(n, args.players)):
            players += [CountPlayer(live.rtmp_url(f"wx-member{i}")),
                        CountPlayer(live.rtmp_url(f"wx-mix{i}"))]
        time.sleep(args.warmup)
        window = Window(procs, peer, players)
        window.open()
        time.sleep(args.seconds)
        who = "wxmgw" if len(gateways) == 1 else f"wxmgw/{len(gateways)}"
        result = window.close(who, n, (rss(procs) - idle) / n)
        # The probes cost CPU of their own (a StartPush connects to the live
        # server): they run after the measured window, under the same load.
        # A StartPush/StopPush of a probe member every 0.25 s; a StopPush of
        # nobody every 50 ms, whose reply needs nothing but a free hub.
        push = Probe(gw.thrift_port, push_probe_calls("probe", live.rtmp_url("wx-probe")), 0.25)
        nobody = tpy.StopPushReq(uuid="nobody", confId="probe")
        lag = Probe(gw.thrift_port, [("StopPush", nobody)], 0.05)
        probes = [push, lag]
        time.sleep(args.probe_seconds)
        for probe in probes:
            probe.stop()
        result.thrift_p99_ms = pct_ms(push.durations, 99)
        result.hub_lag_p50_ms = pct_ms(lag.durations, 50)
        result.hub_lag_p99_ms = pct_ms(lag.durations, 99)
        return result
    finally:
        for probe in probes:
            probe.stop()
        for p in players:
            p.stop()
        for client in clients:
            client.close()
        for g in gateways:
            g.stop()
        peer.close()


def run_ffmpeg(tmp: Path, live: NginxRtmp, n: int, args: argparse.Namespace) -> Result:
    peer = MasPeer()
    procs: list[subprocess.Popen[bytes]] = []
    players: list[CountPlayer] = []
    ranges = PortRanges()
    try:
        for i in range(n):
            leg = peer.add(echo=True)
            audio, video = leg.ports
            member_lo = ranges.take(4)
            mix_lo = ranges.take(2)
            leg.push_audio = ("127.0.0.1", member_lo)
            leg.push_video = ("127.0.0.1", member_lo + 2)
            leg.mix_to = ("127.0.0.1", mix_lo)
            procs += [
                spawn(rtp2rtmp_cmd(tmp / f"member{i}.sdp", live.rtmp_url(f"ff-member{i}"),
                                   member_lo, member_lo + 2)),
                spawn(rtp2rtmp_cmd(tmp / f"mix{i}.sdp", live.rtmp_url(f"ff-mix{i}"),
                                   mix_lo, None)),
                spawn(rtmp2rtp_cmd(live.rtmp_url(f"mp{i}"), audio, video)),
            ]
        peer.start()
        for i in range(min(n, args.players)):
            players += [CountPlayer(live.rtmp_url(f"ff-member{i}")),
                        CountPlayer(live.rtmp_url(f"ff-mix{i}"))]
        time.sleep(args.warmup)
        ps = [psutil.Process(p.pid) for p in procs]
        window = Window(ps, peer, players)
        window.open()
        time.sleep(args.seconds)
        result = window.close("ffmpeg", n, rss(ps) / n)
        dead = sum(proc.poll() is not None for proc in procs)
        if dead:
            result.notes.append(f"{dead} ffmpeg processes exited early")
        return result
    finally:
        for player in players:
            player.stop()
        kill_all(procs)
        peer.close()


# -- output ------------------------------------------------------------------------------------


def print_row(r: Result) -> None:
    print(f"{r.n:>4} {r.who:>7} {r.cpu_per_leg_minute:>9.2f} {r.rss_mb_per_leg:>8.1f} "
          f"{r.rtp_video:>7.1%} {r.rtp_audio:>7.1%} {r.rtp_worst:>7.1%} "
          f"{r.rtmp_video:>7.1%} {r.rtmp_audio:>7.1%} {r.rtmp_mix:>7.1%} "
          f"{fmt(r.thrift_p99_ms, '>8.1f')} {fmt(r.hub_lag_p50_ms, '>6.1f')} "
          f"{fmt(r.hub_lag_p99_ms, '>6.1f')} {r.bench_cpu_per_minute:>6.1f} {' '.join(r.notes)}",
          flush=True)


HEADER = (f"{'N':>4} {'who':>7} {'CPU s/lm':>9} {'RSS MB':>8} {'rtp v':>7} {'rtp a':>7} "
          f"{'rtp min':>7} {'rtmp v':>7} {'rtmp a':>7} {'mix a':>7} {'thr p99':>8} "
          f"{'lag50':>6} {'lag99':>6} {'bench':>6}")


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cpu_ax, cont_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for who in dict.fromkeys(r.who for r in results):
        style = "s--" if who == "ffmpeg" else "o-"
        rs = [r for r in results if r.who == who]
        ns = [r.n for r in rs]
        cpu_ax.plot(ns, [r.cpu_per_leg_minute for r in rs], style, label=who)
        cont_ax.plot(ns, [100 * r.continuity for r in rs], style, label=who)
    cpu_ax.set(xlabel="two-way legs (N)", ylabel="CPU s per leg-minute",
               title="CPU per leg (lower is better)")
    cont_ax.axhline(99, color="grey", lw=0.8, ls=":")
    cont_ax.set(xlabel="two-way legs (N)", ylabel="worst continuity %",
                title="media continuity at the far end")
    for ax in (cpu_ax, cont_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("wxmgw vs ffmpeg CLI, 2 shared cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,10,25,50",
                        help="leg counts; 100 is added when 50 holds 99%% continuity")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--probe-seconds", type=float, default=8.0)
    parser.add_argument("--players", type=int, default=3, help="legs whose RTMP output is played")
    parser.add_argument("--gateways", type=int, default=1,
                        help="wxmgw processes sharing the legs (one per core: 2 here)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "capacity.png")
    args = parser.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    results: list[Result] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmpdir, NginxRtmp(Path(tmpdir) / "nginx") as live:
        tmp = Path(tmpdir)
        clip = tmp / "clip.flv"
        make_live_clip(clip)
        print(f"{args.seconds:.0f} s per side after {args.warmup:.0f} s warm-up; continuity = "
              f"received / expected; CPU s/lm = CPU s per leg-minute; lag = hub lag (ms)")
        print("rtp = at the MAS peer (all legs), rtmp/mix = at the players "
              f"({args.players} legs), thr p99 = StartPush/StopPush (ms)")
        print(HEADER)
        queue = list(ns)
        while queue:
            n = queue.pop(0)
            publishers = [publish_loop(clip, live.rtmp_url(f"mp{i}")) for i in range(n)]
            try:
                wait_publishing(live, [f"mp{i}" for i in range(n)])
                for run in (run_wxmgw, run_ffmpeg):
                    result = run(tmp, live, n, args)
                    results.append(result)
                    print_row(result)
            finally:
                kill_all(publishers)
            if n == 50 and 100 not in ns and results[-2].continuity >= 0.99:
                queue.append(100)
    print(f"total {time.monotonic() - started:.0f} s")

    summary: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": args.seconds,
        "cpus": psutil.cpu_count(),
        "load_average": list(psutil.getloadavg()),
        "results": [asdict(r) | {"continuity": r.continuity} for r in results],
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (args.out / f"capacity-{stamp}.json", args.out / "capacity.json"):
        path.write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.png)
    print(f"wrote {args.out / 'capacity.json'} and {args.png}")


if __name__ == "__main__":
    main()
