"""StartPull legs vs one ffmpeg CLI process per leg: CPU, memory, Thrift latency under load.

Run: ``/tmp/venv0/bin/python bench/bench_rtmp2rtp.py [--legs 1 10 50] [--seconds 20]``.

One nginx-rtmp and one ffmpeg publisher (H.264 320x240 25 fps + AAC 44.1 kHz
mono); every leg pulls that stream and sends H.264 and PCMA RTP to sockets
this script drains. The same work done by the ffmpeg CLI is the issue's
command line, one process per leg. CPU is the processes' user+system time
over ``--seconds`` after a warm-up; memory is the gateway's RSS growth over
its idle RSS per leg, against each ffmpeg process's RSS.

During the gateway's window a probe on its own Thrift connection calls
StartPush then StopPush of a throwaway member (pushed to this bench's nginx)
and sleeps 200 ms, again and again; the table gives p50/p99 of every call's
round trip (a failed or timed-out call counts 5 s). The gateway's work for
those calls is inside its CPU figure.

Added latency (RTMP message read -> RTP sent) is the gateway's own measure,
read from ``/monitor/state`` at the end of the window: p50 is the median of
the legs' p50s, p99 the worst leg's p99, each over the leg's last 1000
messages. The ffmpeg CLI has no such measure.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psutil
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import (  # noqa: E402
    FFMPEG,
    Probe,
    cpu_seconds,
    fmt,
    kill_all,
    legs_latency,
    pct_ms,
    push_probe_calls,
    rss,
    rtmp2rtp_cmd,
    spawn,
    tpy,
)
from wxmgw_proc import GatewayProcess, free_port_range  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402

WARMUP = 5.0
PROBE_PAUSE = 0.2
PUBLISH = [  # the mini-program: as in the integration tests
    *FFMPEG, "-re",
    "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
    "-f", "lavfi", "-i", "sine=1000:sample_rate=44100",
    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-profile:v", "baseline",
    "-tune", "zerolatency", "-c:a", "aac", "-ar", "44100", "-ac", "1", "-f", "flv",
]


class Sink:
    """UDP ports that swallow what is sent to them (RTP and RTCP of audio and video)."""

    def __init__(self) -> None:
        lo, _ = free_port_range(4)
        self.audio, self.video = lo, lo + 2
        self.socks = []
        for port in range(lo, lo + 4):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            self.socks.append(s)
            threading.Thread(target=self._drain, args=(s,), daemon=True).start()

    @staticmethod
    def _drain(s: socket.socket) -> None:
        try:
            while True:
                s.recv(65536)
        except OSError:
            return

    def close(self) -> None:
        for s in self.socks:
            s.close()


def measure(procs: list[psutil.Process], seconds: float,
            start_probe: Callable[[], Probe] | None = None) -> tuple[float, int, list[float]]:
    """CPU seconds used over ``seconds`` after the warm-up, the RSS at the end, and the
    durations of the calls made over the window by the probe ``start_probe`` starts."""
    time.sleep(WARMUP)
    before = cpu_seconds(procs)
    probe = None if start_probe is None else start_probe()
    try:
        time.sleep(seconds)
        cpu, mem = cpu_seconds(procs) - before, rss(procs)
        calls = [] if probe is None else list(probe.durations)
    finally:
        if probe is not None:
            probe.stop()
    return cpu, mem, calls


def added_latency(gw: GatewayProcess, kind: str) -> str:
    """``p50/p99`` ms of the legs' added latency for ``kind`` (see the module docstring)."""
    return legs_latency(leg["stats"]["addedLatencyMs"][kind] for leg in gw.state()["legs"]
                        if leg["kind"] == "rtmp2rtp")


def gateway_run(gw: GatewayProcess, live: NginxRtmp, url: str, legs: int,
                seconds: float) -> tuple[float, int, list[float], list[str]]:
    client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
    sinks = [Sink() for _ in range(legs)]
    for i, sink in enumerate(sinks):
        r = client.StartPull(tpy.StartPullReq(
            uuid=f"bench-{i}", pullUrl=url, ssrc=1000 + i, masIp="127.0.0.1",
            audioPort=sink.audio, videoPort=sink.video, audioPayloadType=8, audioCodec="PCMA",
            videoPayloadType=96, VideoCodec="H264", pushAudioUrl="", confId="bench"))
        assert r.code == 0, r.message
    probe = f"probe-{legs}"
    try:
        cpu, mem, calls = measure([psutil.Process(gw.proc.pid)], seconds, partial(
            Probe, gw.thrift_port, push_probe_calls(probe, live.rtmp_url(probe)), PROBE_PAUSE))
        return cpu, mem, calls, [added_latency(gw, kind) for kind in ("video", "audio")]
    finally:
        for i in range(legs):
            client.StopPull(tpy.StopPullReq(uuid=f"bench-{i}", confId="bench"))
        client.close()
        for sink in sinks:
            sink.close()


def ffmpeg_run(url: str, legs: int, seconds: float) -> tuple[float, int, list[float]]:
    sinks = [Sink() for _ in range(legs)]
    procs = [spawn(rtmp2rtp_cmd(url, sink.audio, sink.video)) for sink in sinks]
    try:
        return measure([psutil.Process(p.pid) for p in procs], seconds)
    finally:
        kill_all(procs)
        for sink in sinks:
            sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--legs", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, NginxRtmp(Path(tmp) / "nginx") as live:
        url = live.rtmp_url("bench")
        publisher = spawn([*PUBLISH, url])
        gw = GatewayProcess(Path(tmp), rtp_ports=4 * max(args.legs) + 8)
        try:
            while not live.is_publishing("bench"):
                time.sleep(0.1)
            idle_rss = rss([psutil.Process(gw.proc.pid)])
            print(f"gateway idle RSS {idle_rss / 2**20:.1f} MB; {args.seconds:.0f} s per run; "
                  "thrift = StartPush/StopPush round trip under load (ms); "
                  "added latency p50/p99 (ms)")
            print(f"{'legs':>5} {'who':>8} {'CPU s/leg-min':>14} {'RSS MB/leg':>11} "
                  f"{'thrift p50':>10} {'thrift p99':>10} {'video':>11} {'audio':>11}")
            per_minute = 60.0 / args.seconds
            for n in args.legs:
                cpu, mem, calls, latency = gateway_run(gw, live, url, n, args.seconds)
                print(f"{n:>5} {'wxmgw':>8} {cpu / n * per_minute:>14.2f} "
                      f"{(mem - idle_rss) / n / 2**20:>11.1f} "
                      f"{fmt(pct_ms(calls, 50), '.1f'):>10} {fmt(pct_ms(calls, 99), '.1f'):>10} "
                      f"{latency[0]:>11} {latency[1]:>11}", flush=True)
                cpu, mem, _ = ffmpeg_run(url, n, args.seconds)
                print(f"{n:>5} {'ffmpeg':>8} {cpu / n * per_minute:>14.2f} "
                      f"{mem / n / 2**20:>11.1f} {'-':>10} {'-':>10} {'-':>11} {'-':>11}",
                      flush=True)
        finally:
            gw.stop()
            kill_all([publisher])


if __name__ == "__main__":
    main()
