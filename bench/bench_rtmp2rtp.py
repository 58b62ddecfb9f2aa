"""StartPull legs vs one ffmpeg CLI process per leg: CPU per leg-minute and memory per leg.

Run: ``/tmp/venv0/bin/python bench/bench_rtmp2rtp.py [--legs 1 10] [--seconds 20]``.

One nginx-rtmp and one ffmpeg publisher (H.264 320x240 25 fps + AAC 44.1 kHz
mono); every leg pulls that stream and sends H.264 and PCMA RTP to sockets
this script drains. The same work done by the ffmpeg CLI is the issue's
command line, one process per leg. CPU is the processes' user+system time
over ``--seconds`` after a warm-up; memory is the gateway's RSS growth over
its idle RSS per leg, against each ffmpeg process's RSS. Latency is not
measured here.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import thriftpy2
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import cpu_seconds  # noqa: E402
from wxmgw_proc import GatewayProcess, free_port_range  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="bench_rtmp2rtp_thrift")
WARMUP = 5.0
PUBLISH = [  # the mini-program: as in the integration tests
    "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
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




def measure(procs: list[psutil.Process], seconds: float) -> tuple[float, int]:
    """CPU seconds used over ``seconds`` after the warm-up, and the RSS at the end."""
    time.sleep(WARMUP)
    before = cpu_seconds(procs)
    time.sleep(seconds)
    return cpu_seconds(procs) - before, sum(p.memory_info().rss for p in procs)


def gateway_run(gw: GatewayProcess, url: str, legs: int, seconds: float) -> tuple[float, int]:
    client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
    sinks = [Sink() for _ in range(legs)]
    for i, sink in enumerate(sinks):
        r = client.StartPull(tpy.StartPullReq(
            uuid=f"bench-{i}", pullUrl=url, ssrc=1000 + i, masIp="127.0.0.1",
            audioPort=sink.audio, videoPort=sink.video, audioPayloadType=8, audioCodec="PCMA",
            videoPayloadType=96, VideoCodec="H264", pushAudioUrl="", confId="bench"))
        assert r.code == 0, r.message
    try:
        return measure([psutil.Process(gw.proc.pid)], seconds)
    finally:
        for i in range(legs):
            client.StopPull(tpy.StopPullReq(uuid=f"bench-{i}", confId="bench"))
        client.close()
        for sink in sinks:
            for s in sink.socks:
                s.close()


def ffmpeg_run(url: str, legs: int, seconds: float) -> tuple[float, int]:
    procs = []
    sinks = [Sink() for _ in range(legs)]
    for sink in sinks:
        procs.append(subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", url,
             "-map", "0:v", "-c:v", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "rtp",
             f"rtp://127.0.0.1:{sink.video}",
             "-map", "0:a", "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1", "-f", "rtp",
             f"rtp://127.0.0.1:{sink.audio}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        return measure([psutil.Process(p.pid) for p in procs], seconds)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for sink in sinks:
            for s in sink.socks:
                s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, NginxRtmp(Path(tmp) / "nginx") as live:
        url = live.rtmp_url("bench")
        publisher = subprocess.Popen(
            [*PUBLISH, url], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gw = GatewayProcess(Path(tmp), rtp_ports=4 * max(args.legs) + 8)
        try:
            while not live.is_publishing("bench"):
                time.sleep(0.1)
            idle_rss = psutil.Process(gw.proc.pid).memory_info().rss
            print(f"gateway idle RSS {idle_rss / 2**20:.1f} MB; {args.seconds:.0f} s per run")
            print(f"{'legs':>5} {'who':>8} {'CPU s/leg-min':>14} {'RSS MB/leg':>11}")
            per_minute = 60.0 / args.seconds
            for n in args.legs:
                cpu, rss = gateway_run(gw, url, n, args.seconds)
                print(f"{n:>5} {'wxmgw':>8} {cpu / n * per_minute:>14.2f} "
                      f"{(rss - idle_rss) / n / 2**20:>11.1f}")
                cpu, rss = ffmpeg_run(url, n, args.seconds)
                print(f"{n:>5} {'ffmpeg':>8} {cpu / n * per_minute:>14.2f} "
                      f"{rss / n / 2**20:>11.1f}")
        finally:
            gw.stop()
            publisher.kill()
            publisher.wait()


if __name__ == "__main__":
    main()
