"""Time from a gateway's restart to media back, over repeated SIGKILLs.

Run: ``.venv/bin/python bench/bench_recovery.py [--legs 20] [--crashes 10]``.

One nginx-rtmp and one ffmpeg publisher (as in bench_rtmp2rtp); a gateway
with ``--state-dir`` runs ``--legs`` StartPull legs, each sending to UDP
sinks this script times. Each crash is a SIGKILL, then the same command line
again: nothing calls Thrift after the first StartPulls. For each leg, "media
back" is from the start of the new process to the first RTP packet its sink
receives from it; "ready" is until the new process answers on its status
port. The table gives p50/p99 over every leg of every crash.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import PUBLISH, fmt, kill_all, pct_ms, spawn, tpy  # noqa: E402
from thriftpy2.rpc import make_client  # noqa: E402
from wxmgw_proc import GatewayProcess, free_port_range  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402


class TimedSink:
    """A leg's four UDP ports; remembers when the last packet reached the video port."""

    def __init__(self) -> None:
        lo, _ = free_port_range(4)
        self.audio, self.video = lo, lo + 2
        self.last = 0.0
        self.socks = []
        for port in range(lo, lo + 4):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            self.socks.append(s)
            threading.Thread(target=self._drain, args=(s, port == self.video),
                             daemon=True).start()

    def _drain(self, s: socket.socket, timed: bool) -> None:
        try:
            while True:
                s.recv(65536)
                if timed:
                    self.last = time.monotonic()
        except OSError:
            return

    def close(self) -> None:
        for s in self.socks:
            s.close()


def crash_once(gw: GatewayProcess, sinks: list[TimedSink]) -> tuple[float, list[float]]:
    """Kill and start again: (seconds until ready, each leg's seconds until media back)."""
    gw.kill()
    started = time.monotonic()
    gw.start_again()
    ready = time.monotonic() - started
    deadline = started + 30
    while any(s.last < started for s in sinks) and time.monotonic() < deadline:
        time.sleep(0.01)
    return ready, [s.last - started if s.last >= started else 30.0 for s in sinks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--legs", type=int, default=20)
    parser.add_argument("--crashes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NginxRtmp(Path(tmp) / "nginx") as live:
        url = live.rtmp_url("bench")
        publisher = spawn([*PUBLISH, url])
        gw = GatewayProcess(Path(tmp), rtp_ports=4 * args.legs + 8,
                            extra=["--state-dir", str(Path(tmp) / "state")])
        sinks = [TimedSink() for _ in range(args.legs)]
        try:
            client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
            for i, sink in enumerate(sinks):
                r = client.StartPull(tpy.StartPullReq(
                    uuid=f"bench-{i}", pullUrl=url, ssrc=1000 + i, masIp="127.0.0.1",
                    audioPort=sink.audio, videoPort=sink.video, audioPayloadType=8,
                    audioCodec="PCMA", videoPayloadType=96, VideoCodec="H264",
                    pushAudioUrl="", confId="bench"))
                assert r.code == 0, r.message
            client.close()
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
            kill_all([publisher])
            for sink in sinks:
                sink.close()


if __name__ == "__main__":
    main()
