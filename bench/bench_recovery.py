"""Time from a gateway's restart to media back, over repeated SIGKILLs.

Run: ``.venv/bin/python bench/bench_recovery.py [--legs 20] [--crashes 10] [--calls 200]``.

One nginx-rtmp and one ffmpeg publisher (as in bench_rtmp2rtp); a gateway
with ``--state-dir`` runs ``--legs`` StartPull legs, each sending to UDP
sinks this script times. Each crash is a SIGKILL, then the same command line
again: nothing calls Thrift after the first StartPulls. For each leg, "media
back" is from the start of the new process to the first RTP packet its sink
receives from it; "ready" is until the new process answers on its status
port. The table gives p50/p99 over every leg of every crash.

What the journal costs: three gateways, with no journal, a file journal and
a Redis journal, each running ``--legs`` pulls; ``--calls`` rounds in which
each in turn gets a StartPull then a StopPull of a throwaway leg, the
StartPull timed at the client (each call rewrites the whole journal, so its
size grows with the legs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import PUBLISH, fmt, kill_all, pct_ms, spawn, tpy  # noqa: E402
from media_checks import UdpSink  # noqa: E402
from thriftpy2.rpc import make_client  # noqa: E402
from wxmgw_proc import GatewayProcess  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402
from wxmgw.redisd import RedisServer  # noqa: E402


def crash_once(gw: GatewayProcess, sinks: list[UdpSink]) -> tuple[float, list[float]]:
    """Kill and start again: (seconds until ready, each leg's seconds until media back)."""
    gw.kill()
    started = time.monotonic()
    gw.start_again()
    ready = time.monotonic() - started
    deadline = started + 30
    while any(s.last["video"] < started for s in sinks) and time.monotonic() < deadline:
        time.sleep(0.01)
    return ready, [s.last["video"] - started if s.last["video"] >= started else 30.0 for s in sinks]


def call_times(gateways: dict[str, GatewayProcess], url: str, calls: int,
               ) -> dict[str, list[float]]:
    """Seconds of each StartPull of a throwaway leg (each followed by its StopPull), the
    gateways taking turns call by call so that all see the same load."""
    clients = {m: make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
               for m, gw in gateways.items()}
    sink = UdpSink()
    times: dict[str, list[float]] = {m: [] for m in gateways}
    try:
        for _ in range(calls):
            for mode, client in clients.items():
                started = time.perf_counter()
                r = client.StartPull(pull_req("probe", url, sink))
                times[mode].append(time.perf_counter() - started)
                assert r.code == 0, r.message
                client.StopPull(tpy.StopPullReq(uuid="probe", confId="bench"))
    finally:
        for client in clients.values():
            client.close()
        sink.close()
    return times


def pull_req(uuid: str, url: str, sink: UdpSink) -> object:
    return tpy.StartPullReq(
        uuid=uuid, pullUrl=url, ssrc=1000, masIp="127.0.0.1", audioPort=sink.audio,
        videoPort=sink.video, audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96,
        VideoCodec="H264", pushAudioUrl="", confId="bench")


def start_pulls(gw: GatewayProcess, url: str, sinks: list[UdpSink]) -> None:
    """One pull of ``url`` per sink, ``bench-N``."""
    client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
    try:
        for i, sink in enumerate(sinks):
            r = client.StartPull(pull_req(f"bench-{i}", url, sink))
            assert r.code == 0, r.message
    finally:
        client.close()


def journal_cost(tmp: Path, url: str, legs: int, calls: int) -> None:
    """StartPull p50/p99 with no journal, a file one and a Redis one (see the docstring)."""
    with RedisServer(tmp / "redis") as redis_server:
        modes = {"none": [], "file": ["--state-dir", str(tmp / "journal")],
                 "redis": ["--redis", redis_server.url]}
        gateways: dict[str, GatewayProcess] = {}
        sinks: list[UdpSink] = []
        try:
            for mode, flags in modes.items():
                gateways[mode] = GatewayProcess(tmp, rtp_ports=4 * legs + 16, extra=flags)
                mode_sinks = [UdpSink() for _ in range(legs)]
                sinks += mode_sinks
                start_pulls(gateways[mode], url, mode_sinks)
            times = call_times(gateways, url, calls)
        finally:
            for gw in gateways.values():
                gw.stop()
            for sink in sinks:
                sink.close()
    print(f"{'journal':>8} {'legs':>5} {'StartPull p50':>14} {'StartPull p99':>14}  (ms)")
    for mode, seconds in times.items():
        print(f"{mode:>8} {legs:>5} {fmt(pct_ms(seconds, 50), '.2f'):>14} "
              f"{fmt(pct_ms(seconds, 99), '.2f'):>14}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--legs", type=int, default=20)
    parser.add_argument("--crashes", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NginxRtmp(Path(tmp) / "nginx") as live:
        url = live.rtmp_url("bench")
        publisher = spawn([*PUBLISH, url])
        gw = GatewayProcess(Path(tmp), rtp_ports=4 * args.legs + 8,
                            extra=["--state-dir", str(Path(tmp) / "state")])
        sinks = [UdpSink() for _ in range(args.legs)]
        try:
            start_pulls(gw, url, sinks)
            time.sleep(3)
            readies: list[float] = []
            backs: list[float] = []
            for _ in range(args.crashes):
                ready, back = crash_once(gw, sinks)
                readies.append(ready)
                backs += back
                time.sleep(1)
            print(f"{'legs':>5} {'crashes':>8} {'ready p50':>10} {'ready p99':>10} "
                  f"{'media back p50':>15} {'media back p99':>15}  (ms)")
            print(f"{args.legs:>5} {args.crashes:>8} {fmt(pct_ms(readies, 50), '.0f'):>10} "
                  f"{fmt(pct_ms(readies, 99), '.0f'):>10} {fmt(pct_ms(backs, 50), '.0f'):>15} "
                  f"{fmt(pct_ms(backs, 99), '.0f'):>15}")
        finally:
            gw.stop()
            for sink in sinks:
                sink.close()
        try:
            journal_cost(Path(tmp), url, args.legs, args.calls)
        finally:
            kill_all([publisher])


if __name__ == "__main__":
    main()
