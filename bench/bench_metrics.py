"""What /metrics costs a gateway with 50 legs scraped every 5 s, side by side with none.

Two `wxmgw serve` processes run the same load at the same time: 50 Rtmp2rtp
legs each, pulling one ffmpeg publisher's stream (320x240 25 fps + AAC)
from nginx-rtmp and sending RTP to a MAS socket that never reads. One is
scraped every 5 s, the other not; then the roles swap, so a difference
between the two processes themselves cancels out. Printed: each process's
CPU (percent of one core) in each half, the scraped one's extra CPU, and the
scrape's duration and size.

    .venv/bin/python bench/bench_metrics.py [--legs 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import thriftpy2
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from wxmgw_proc import GatewayProcess  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="bench_metrics_thrift")
PUBLISH = [
    "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
    "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
    "-f", "lavfi", "-i", "sine=1000:sample_rate=44100",
    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-profile:v", "baseline",
    "-tune", "zerolatency", "-c:a", "aac", "-ar", "44100", "-ac", "1", "-f", "flv",
]
SCRAPE_EVERY = 5.0
WARMUP = 10.0


def start_legs(gw: GatewayProcess, url: str, legs: int, sink: socket.socket) -> None:
    client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
    port = sink.getsockname()[1]
    for i in range(legs):
        r = client.StartPull(tpy.StartPullReq(
            uuid=f"mp{i}", pullUrl=url, ssrc=1000 + i, masIp="127.0.0.1", audioPort=port,
            videoPort=port, audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96,
            VideoCodec="H264", confId=f"conf{i // 5}"))
        assert r.code == 0, r.message
    client.close()


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def run_half(scraped: GatewayProcess, others: list[GatewayProcess], seconds: float,
             durations: list[float], sizes: list[int]) -> dict[int, float]:
    """Scrape ``scraped`` every 5 s for ``seconds``: each process's CPU, percent of a core."""
    procs = {gw.status_port: psutil.Process(gw.proc.pid) for gw in (scraped, *others)}
    before = {port: cpu(p) for port, p in procs.items()}
    started = time.monotonic()
    next_scrape = started
    while (now := time.monotonic()) < started + seconds:
        if now >= next_scrape:
            t0 = time.perf_counter()
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{scraped.status_port}/metrics", timeout=10) as r:
                sizes.append(len(r.read()))
            durations.append(time.perf_counter() - t0)
            next_scrape += SCRAPE_EVERY
        time.sleep(min(0.5, max(0.0, next_scrape - time.monotonic())))
    elapsed = time.monotonic() - started
    return {port: 100 * (cpu(p) - before[port]) / elapsed for port, p in procs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="per half")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NginxRtmp(Path(tmp) / "nginx") as nginx:
        url = nginx.rtmp_url("src")
        publisher = subprocess.Popen([*PUBLISH, url], stdin=subprocess.DEVNULL)
        gateways: list[GatewayProcess] = []
        sinks: list[socket.socket] = []
        try:
            while not nginx.is_publishing("src"):
                time.sleep(0.1)
            for name in ("a", "b"):
                gw = GatewayProcess(Path(tmp), rtp_ports=4 * args.legs + 10)
                gateways.append(gw)
                sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sink.bind(("127.0.0.1", 0))
                sinks.append(sink)
                start_legs(gw, url, args.legs, sink)
                print(f"gateway {name}: {args.legs} legs started")
            time.sleep(WARMUP)
            a, b = gateways
            durations: list[float] = []
            sizes: list[int] = []
            first = run_half(a, [b], args.seconds, durations, sizes)
            second = run_half(b, [a], args.seconds, durations, sizes)
        finally:
            for gw in gateways:
                gw.stop()
            for sink in sinks:
                sink.close()
            publisher.kill()
            publisher.wait()
    pa, pb = a.status_port, b.status_port
    on = (first[pa] + second[pb]) / 2
    off = (first[pb] + second[pa]) / 2
    print(f"\n{args.legs} legs per gateway, /metrics every {SCRAPE_EVERY:.0f} s, "
          f"{args.seconds:.0f} s per half")
    print(f"{'half':<8} {'gateway a CPU %':>16} {'gateway b CPU %':>16}  scraped")
    print(f"{'1':<8} {first[pa]:>16.1f} {first[pb]:>16.1f}  a")
    print(f"{'2':<8} {second[pa]:>16.1f} {second[pb]:>16.1f}  b")
    print(f"metrics on {on:.1f} % vs off {off:.1f} % of a core: {on - off:+.2f} points "
          f"({100 * (on - off) / off:+.1f} % of the gateway's CPU)")
    print(f"scrape: p50 {1000 * statistics.median(durations):.1f} ms, "
          f"max {1000 * max(durations):.1f} ms, {statistics.median(sizes) / 1024:.0f} KiB, "
          f"so {100 * statistics.median(durations) / SCRAPE_EVERY:.2f} % of a core at most")
    return 0


if __name__ == "__main__":
    sys.exit(main())
