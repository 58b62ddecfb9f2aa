"""CPU per leg at the load users send: every leg on its own stream, wxmgw vs the ffmpeg CLI.

Run: ``.venv/bin/python bench/bench_legs.py [--kinds rtmp2rtp,rtp2rtmp,twoway]
[--legs 20 50] [--runs 2] [--seconds 20]``.

Every leg carries its own stream at a live pusher's settings
(``common.LIVE_VIDEO``: 640x360 15 fps H.264 ~600 kbps, a keyframe every
2 s; AAC 44.1 kHz mono from a mini-program, PCMA from a MAS):

* **rtmp2rtp**: one ffmpeg publisher per leg loops a pre-encoded FLV into
  nginx-rtmp (``-re -c copy``); wxmgw: StartPull of each stream, PCMA + H.264
  to a MAS peer (this script) that counts what arrives; ffmpeg: the
  Rtmp2rtp issue's command line, one process per leg.
* **rtp2rtmp**: this script is the MAS, sending every member its own RTP
  (the same pre-encoded H.264 FU-A + PCMA, each member with its own SSRCs
  and sequence numbers, spread over the 20 ms packet interval); wxmgw:
  StartPush of each member to its own stream; ffmpeg: the Rtp2rtmp issue's
  command line (SDP in, ``-c:v copy -c:a aac``, FLV out), one per leg.
  RTMP players (PyAV, ``--players`` legs) count what reaches nginx.
* **twoway**: ``bench_capacity.py``'s legs, one run each side: a publisher
  per leg, StartPull with a ``pushAudioUrl`` to a MAS peer that echoes the
  audio and forwards both streams to the StartPush of the same member;
  ffmpeg: one process per direction per leg. Then Thrift StartPush/StopPush
  p99 under the same load.

For each kind and N, the ``--runs`` pairs run back to back: wxmgw then
ffmpeg, under the same publishers or the same MAS. The figures: % of one
core per leg, user and system apart (``/proc`` of the gateway / of every
ffmpeg CLI process; the publishers, nginx and this script are not
counted), their ratio within the pair, RSS per leg (the gateway's growth
over its idle RSS / the ffmpeg processes' RSS), continuity (received ÷
expected over the window: the worst leg at the MAS, the worst played
stream), the gateway's own added latency (``/monitor/state``), and the
1-minute load average at the start of each side (the machine is shared:
the ratio inside one pair is the figure to trust). Results go to
``bench/out/legs.json``.

``--against FLAGS`` pairs the gateway with itself instead: each run is the
gateway with ``--gateway-args``, then with ``FLAGS``, under the same
publishers or MAS, and the ratio is theirs. The machine drifts by ±20 %
between runs; the two sides of a pair, a minute apart, much less.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import bench_capacity  # noqa: E402
from common import (  # noqa: E402
    AUDIO_PT,
    LIVE_FPS,
    VIDEO_PT,
    CountPlayer,
    MasPeer,
    MemberSender,
    PortRanges,
    cpu_times,
    fmt,
    kill_all,
    legs_latency,
    make_live_clip,
    make_member_clip,
    publish_loop,
    rss,
    rtmp2rtp_cmd,
    rtp2rtmp_cmd,
    rtp_continuity,
    spawn,
    start_pulls,
    tpy,
    wait_publishing,
)
from wxmgw_proc import GatewayProcess  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402

OUT = ROOT / "bench" / "out" / "legs.json"


@dataclass
class Result:
    kind: str
    n: int
    run: int
    who: str
    seconds: float
    user_pct: float  # of one core, per leg
    system_pct: float
    rss_mb_per_leg: float
    rtp_continuity: float | None  # worst leg at the MAS peer
    rtmp_continuity: float | None  # worst played stream
    load1: float
    added_ms: str = "-"  # the gateway's own p50/p99, video | audio
    thrift_p99_ms: float | None = None
    notes: str = ""

    @property
    def pct(self) -> float:
        return self.user_pct + self.system_pct


@dataclass
class Setup:
    """What a side started: the processes measured, the peer and the players counting."""

    procs: list[psutil.Process]
    peer: MasPeer | None = None
    players: list[CountPlayer] | None = None
    idle_rss: int = 0
    gateway: GatewayProcess | None = None


def window(kind: str, who: str, n: int, run: int, setup: Setup, args: Namespace) -> Result:
    """Warm up, then measure ``setup`` over ``args.seconds``."""
    load1 = psutil.getloadavg()[0]
    time.sleep(args.warmup)
    peer, players = setup.peer, setup.players or []
    t0, cpu0 = time.monotonic(), cpu_times(setup.procs)
    peer0 = peer.counts() if peer else []
    played0 = [p.counts() for p in players]
    time.sleep(args.seconds)
    secs = time.monotonic() - t0
    user, system = (b - a for a, b in zip(cpu0, cpu_times(setup.procs), strict=True))
    rtp = None
    if peer is not None:
        rtp = rtp_continuity(peer0, peer.counts(), secs)
    rtmp = None
    if players:
        # Over media time when a stream fell behind and catches up: gaps count, not backlog.
        rtmp = min(min((c1[0] - c0[0]) / LIVE_FPS / max(secs, c1[2] - c0[2]),
                       (c1[1] - c0[1]) / max(secs, c1[3] - c0[3]))
                   for c0, c1 in zip(played0, (p.counts() for p in players), strict=True))
    grown = rss(setup.procs) - setup.idle_rss
    result = Result(kind, n, run, who, round(secs, 1), 100 * user / secs / n,
                    100 * system / secs / n, grown / n / 2**20, rtp, rtmp, load1)
    if setup.gateway is not None:
        result.added_ms = added_latency(setup.gateway, kind)
    return result


def added_latency(gw: GatewayProcess, kind: str) -> str:
    """The legs' own added latency, ``video | audio`` as p50/p99 ms (``common.legs_latency``)."""
    legs = [leg for leg in gw.state()["legs"] if leg["kind"] == kind]
    if kind == "rtmp2rtp":
        windows = [leg["stats"]["addedLatencyMs"] for leg in legs]
    else:
        windows = [leg["stats"]["push"]["added_latency_ms"] for leg in legs]
    return " | ".join(legs_latency(w[k] for w in windows) for k in ("video", "audio"))


@contextmanager
def gateway(tmp: Path, n: int, args: Namespace) -> Iterator[tuple[GatewayProcess, Any]]:
    """A fresh ``wxmgw serve`` (with ``--gateway-args``) and a Thrift client of it."""
    gw = GatewayProcess(tmp, rtp_ports=4 * n + 8, extra=shlex.split(args.gateway_args))
    client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=20000)
    try:
        yield gw, client
    finally:
        client.close()
        gw.stop()


# -- Rtmp2rtp ---------------------------------------------------------------------------------


def rtmp2rtp_wxmgw(tmp: Path, live: NginxRtmp, n: int, run: int, args: Namespace) -> Result:
    peer = MasPeer()
    with gateway(tmp, n, args) as (gw, client):
        try:
            proc = psutil.Process(gw.proc.pid)
            idle = rss([proc])
            start_pulls(client, live, peer, n)
            peer.start()
            return window("rtmp2rtp", "wxmgw", n, run,
                          Setup([proc], peer, idle_rss=idle, gateway=gw), args)
        finally:
            peer.close()


def rtmp2rtp_ffmpeg(tmp: Path, live: NginxRtmp, n: int, run: int, args: Namespace) -> Result:
    peer = MasPeer()
    procs = []
    try:
        for i in range(n):
            audio, video = peer.add().ports
            procs.append(spawn(rtmp2rtp_cmd(live.rtmp_url(f"mp{i}"), audio, video)))
        peer.start()
        result = window("rtmp2rtp", "ffmpeg", n, run,
                        Setup([psutil.Process(p.pid) for p in procs], peer), args)
        return exited(result, procs)
    finally:
        kill_all(procs)
        peer.close()


# -- Rtp2rtmp ---------------------------------------------------------------------------------


def rtp2rtmp_wxmgw(tmp: Path, live: NginxRtmp, n: int, run: int, args: Namespace) -> Result:
    ports, urls = [], []
    with gateway(tmp, n, args) as (gw, client):
        proc = psutil.Process(gw.proc.pid)
        idle = rss([proc])
        for i in range(n):
            urls.append(live.rtmp_url(f"wx{run}-{n}-{i}"))
            r = client.StartPush(tpy.StartPushReq(
                uuid=f"member{i}", pushUrl=urls[-1], audioPayloadType=AUDIO_PT,
                audioCodec="PCMA", videoPayloadType=VIDEO_PT, videoCodec="H264",
                confId=f"c{i}", reqUuid=f"viewer{i}", weixin=""))
            assert r.code == 0, r.message
            ports.append((r.port.audio, r.port.video))
        return played("rtp2rtmp", "wxmgw", n, run, ports, urls,
                      Setup([proc], idle_rss=idle, gateway=gw), args)


def rtp2rtmp_ffmpeg(tmp: Path, live: NginxRtmp, n: int, run: int, args: Namespace) -> Result:
    ports, urls, procs = [], [], []
    ranges = PortRanges()
    try:
        for i in range(n):
            lo = ranges.take(4)
            urls.append(live.rtmp_url(f"ff{run}-{n}-{i}"))
            procs.append(spawn(rtp2rtmp_cmd(tmp / f"member{i}.sdp", urls[-1], lo, lo + 2)))
            ports.append((lo, lo + 2))
        result = played("rtp2rtmp", "ffmpeg", n, run, ports, urls,
                        Setup([psutil.Process(p.pid) for p in procs]), args)
        return exited(result, procs)
    finally:
        kill_all(procs)


def played(kind: str, who: str, n: int, run: int, ports: list[tuple[int, int]],
           urls: list[str], setup: Setup, args: Namespace) -> Result:
    """Measure ``setup`` while the MAS sends to ``ports`` and players play a sample of ``urls``."""
    sender = MemberSender(args.member_clip, ports)
    setup.players = [CountPlayer(url) for url in urls[::max(1, n // args.players)]]
    try:
        return window(kind, who, n, run, setup, args)
    finally:
        for player in setup.players:
            player.stop()
        sender.close()


# -- two-way ----------------------------------------------------------------------------------


def twoway(who: str) -> Callable[[Path, NginxRtmp, int, int, Namespace], Result]:
    """A side of ``bench_capacity.py`` for one N, as a :class:`Result`."""
    runner = bench_capacity.run_wxmgw if who == "wxmgw" else bench_capacity.run_ffmpeg

    def run_side(tmp: Path, live: NginxRtmp, n: int, run: int, args: Namespace) -> Result:
        load1 = psutil.getloadavg()[0]
        r = runner(tmp, live, n, args)
        system = r.system_per_leg_minute / 60 * 100
        return Result("twoway", n, run, who, args.seconds, r.cpu_per_leg_minute / 60 * 100
                      - system, system, r.rss_mb_per_leg, r.rtp_worst,
                      min(r.rtmp_video, r.rtmp_audio, r.rtmp_mix), load1,
                      thrift_p99_ms=r.thrift_p99_ms, notes=" ".join(r.notes))

    return run_side


def exited(result: Result, procs: list[Any]) -> Result:
    dead = sum(p.poll() is not None for p in procs)
    if dead:
        result.notes = f"{dead} ffmpeg processes exited early"
    return result


SIDES: dict[str, tuple[Callable[..., Result], Callable[..., Result]]] = {
    "rtmp2rtp": (rtmp2rtp_wxmgw, rtmp2rtp_ffmpeg),
    "rtp2rtmp": (rtp2rtmp_wxmgw, rtp2rtmp_ffmpeg),
    "twoway": (twoway("wxmgw"), twoway("ffmpeg")),
}
#: Kinds whose legs pull a mini-program's stream: publishers run for both sides.
PUBLISHED = {"rtmp2rtp", "twoway"}


def sides(kind: str, args: Namespace) -> tuple[Callable[..., Result], Callable[..., Result]]:
    """What a pair runs: the gateway, then the ffmpeg CLI or the gateway ``--against``."""
    gateway_side, cli_side = SIDES[kind]
    if not args.against:
        return gateway_side, cli_side

    def other(tmp: Path, live: NginxRtmp, n: int, run: int, args: Namespace) -> Result:
        result = gateway_side(tmp, live, n, run, Namespace(**{**vars(args),
                                                               "gateway_args": args.against}))
        result.who = "other"
        return result

    return gateway_side, other


# -- output -----------------------------------------------------------------------------------


def print_row(r: Result, ratio: float | None) -> None:
    print(f"{r.kind:>8} {r.n:>3} {r.run:>3} {r.who:>6} {r.user_pct:>6.3f} {r.system_pct:>6.3f} "
          f"{r.pct:>6.3f} {fmt(ratio, '.2f'):>5} {r.rss_mb_per_leg:>7.1f} "
          f"{fmt(r.rtp_continuity, '.1%'):>6} {fmt(r.rtmp_continuity, '.1%'):>6} "
          f"{r.load1:>5.1f} {fmt(r.thrift_p99_ms, '.1f'):>6} {r.added_ms:>19} {r.notes}",
          flush=True)


def summary(results: list[Result], against: str) -> None:
    """Per kind and N: the median over runs of each pair's ratio, and its range."""
    other = f"wxmgw {against}" if against else "ffmpeg CLI"
    print(f"\nratio wxmgw / {other}, CPU per leg (median of the pairs, [min, max]):")
    pairs: dict[tuple[str, int], list[float]] = {}
    for wx, ff in zip(results[0::2], results[1::2], strict=True):
        pairs.setdefault((wx.kind, wx.n), []).append(wx.pct / ff.pct)
    for (kind, n), ratios in pairs.items():
        print(f"  {kind:>8} N={n:<3} {statistics.median(ratios):.2f}x "
              f"[{min(ratios):.2f}, {max(ratios):.2f}] over {len(ratios)} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kinds", default="rtmp2rtp,rtp2rtmp,twoway")
    parser.add_argument("--legs", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--runs", type=int, default=2, help="wxmgw/ffmpeg pairs per kind and N")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per side")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--players", type=int, default=3, help="pushed streams played per side")
    parser.add_argument("--probe-seconds", type=float, default=8.0, help="twoway: Thrift probes")
    parser.add_argument("--gateway-args", default="",
                        help="more `wxmgw serve` flags, e.g. '--io-collect 0' (not twoway)")
    parser.add_argument("--against", default="",
                        help="pair the gateway with these flags against itself with "
                             "--gateway-args, in place of the ffmpeg CLI: the machine drifts "
                             "between runs, the rounds of a pair do not (not twoway)")
    args = parser.parse_args()
    if args.against and "twoway" in args.kinds:
        parser.error("--against compares Rtmp2rtp and Rtp2rtmp legs only")
    args.gateways = 1  # bench_capacity's setting
    kinds = args.kinds.split(",")
    sys.setswitchinterval(0.001)  # the sender, peer and players share this process's GIL

    results: list[Result] = []
    print(f"{args.seconds:.0f} s per side after {args.warmup:.0f} s warm-up, {args.runs} pairs; "
          "% of one core per leg; ratio = wxmgw / ffmpeg within the pair; continuity = worst "
          "leg at the MAS (rtp) / worst played stream (rtmp); load = 1-min load average; "
          "added = gateway's own p50/p99 ms, video | audio")
    print(f"{'kind':>8} {'N':>3} {'run':>3} {'who':>6} {'user':>6} {'sys':>6} {'total':>6} "
          f"{'ratio':>5} {'RSS MB':>7} {'rtp':>6} {'rtmp':>6} {'load':>5} {'thr99':>6} "
          f"{'added':>19}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmpdir, NginxRtmp(Path(tmpdir) / "nginx") as live:
        tmp = Path(tmpdir)
        clip = make_live_clip(tmp / "clip.flv")
        args.member_clip = make_member_clip() if "rtp2rtmp" in kinds else None
        for kind in kinds:
            for n in args.legs:
                publishers = []
                if kind in PUBLISHED:
                    publishers = [publish_loop(clip, live.rtmp_url(f"mp{i}")) for i in range(n)]
                    wait_publishing(live, [f"mp{i}" for i in range(n)])
                try:
                    for run in range(1, args.runs + 1):
                        pair = [side(tmp, live, n, run, args) for side in sides(kind, args)]
                        for r in pair:
                            print_row(r, pair[0].pct / pair[1].pct if r.who == "wxmgw" else None)
                        results += pair
                finally:
                    kill_all(publishers)
    summary(results, args.against)
    print(f"total {time.monotonic() - started:.0f} s")
    OUT.parent.mkdir(exist_ok=True)
    args.member_clip = None
    OUT.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "args": vars(args),
        "cpus": psutil.cpu_count(),
        "results": [asdict(r) | {"pct": r.pct} for r in results],
    }, indent=2, default=str) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
