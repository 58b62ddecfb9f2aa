"""`make run`: the embedded local stack in the foreground.

nginx-rtmp (the project's config, loopback), one `wxmgw serve` per core and
the callroute front in MAS-less mode, each its own process, all stopped by
Ctrl-C or SIGTERM. A gateway runs on one gevent hub, so one core at most; the
front gives each new conference to the least-loaded gateway, and a conference
never spans two processes. Prints how to join a conference with curl and
ffmpeg. `make demo` (:mod:`wxmgw.demo`) starts the same :class:`Stack` with
one gateway.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from wxmgw.errors import InvalidArgument
from wxmgw.nginx import NginxRtmp
from wxmgw.ports import parse_port_range
from wxmgw.procs import terminate

ROOT = Path(__file__).resolve().parent.parent

HOWTO = """
wxmgw is running (logs: {work}/*.log).
  live server     rtmp://127.0.0.1:{rtmp}/live   (stat: http://127.0.0.1:{stat}/stat)
{gateways}
  callroute front http://127.0.0.1:{front}/, places each conference on one gateway

Join conference 123 as a mini-program:
  curl -s http://127.0.0.1:{front}/ -d '{{"id":"1","uuid":"alice","method":"wxjoinconf",
      "params":{{"confId":"123","crgwid":"53001"}}}}'
Publish as the mini-program to the reply's "pushurl":
  ffmpeg -re -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=f=440 \\
      -c:v libx264 -profile:v baseline -tune zerolatency -g 25 -pix_fmt yuv420p \\
      -c:a aac -ar 44100 -ac 1 -f flv <pushurl>
Hear the conference at the reply's "pullaudiourl":
  ffplay <pullaudiourl>        (or: ffmpeg -i <pullaudiourl> -f null -)
Ask for another member's video with its "audiossrc" (wxreqvideo / wxreqavsync):
  curl -s http://127.0.0.1:{front}/ -d '{{"id":"2","uuid":"alice","method":"wxreqavsync",
      "params":{{"confId":"123","antissrc":"<ssrc>","seq":"1","type":"1"}}}}'
Leave:
  curl -s http://127.0.0.1:{front}/ -d '{{"id":"3","uuid":"alice","method":"wxquitconf",
      "params":{{"confId":"123"}}}}'
Ctrl-C stops everything.
"""


@dataclass(frozen=True, slots=True)
class GatewayPorts:
    """Where one `wxmgw serve` listens, and its RTP port range."""

    thrift: int = 9090
    status: int = 9091
    rtp: str = "30000-39999"

    @property
    def state_url(self) -> str:
        return f"http://127.0.0.1:{self.status}/monitor/state"


def gateway_ports(first: GatewayPorts, count: int) -> tuple[GatewayPorts, ...]:
    """``count`` gateways from ``first``: each next one listens on Thrift and status ports 2
    above the previous one's, and each takes its own of ``count`` equal, even-aligned parts
    of ``first``'s RTP range."""
    lo, hi = parse_port_range(first.rtp)
    pairs = (hi - lo + 1) // 2 // count
    if pairs < 1:
        raise InvalidArgument(f"port range {first.rtp!r} holds fewer than {count} RTP pairs")
    return tuple(
        GatewayPorts(first.thrift + 2 * i, first.status + 2 * i,
                     f"{lo + 2 * pairs * i}-{lo + 2 * pairs * (i + 1) - 1}")
        for i in range(count))


@dataclass(frozen=True, slots=True)
class StackPorts:
    rtmp: int = 1935
    stat: int = 8088
    front: int = 8800
    gateways: tuple[GatewayPorts, ...] = (GatewayPorts(),)

    def __post_init__(self) -> None:
        if not self.gateways:
            raise ValueError("a stack needs at least one gateway")
        tcp = [self.rtmp, self.stat, self.front,
               *(port for g in self.gateways for port in (g.thrift, g.status))]
        if len(set(tcp)) != len(tcp):
            raise ValueError(f"the stack's TCP ports collide: {sorted(tcp)}")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited early, before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s")


class Stack:
    """nginx-rtmp guarded by the front's notify hooks, `wxmgw serve` and `callroute serve`
    (MAS-less) as child processes, logging under ``workdir``; a context manager."""

    def __init__(self, ports: StackPorts, workdir: Path) -> None:
        self.ports = ports
        self.workdir = workdir.resolve()
        self.base = f"rtmp://127.0.0.1:{ports.rtmp}/live"
        self.front_url = f"http://127.0.0.1:{ports.front}/"
        self.state_urls = [g.state_url for g in ports.gateways]
        self.nginx = NginxRtmp(self.workdir / "nginx", rtmp_port=ports.rtmp,
                               http_port=ports.stat, notify_url=f"{self.front_url}rtmp")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        p, work = self.ports, self.workdir
        work.mkdir(parents=True, exist_ok=True)
        try:
            self.nginx.start()
            for n, g in enumerate(p.gateways, 1):
                self.procs.append(subprocess.Popen([
                    sys.executable, "-m", "wxmgw.cli", "serve", "--thrift-host", "127.0.0.1",
                    "--thrift-port", str(g.thrift), "--status-port", str(g.status),
                    "--rtp-ports", g.rtp, "--media-ip", "127.0.0.1",
                    "--log-file", str(work / f"wxmgw-{n}.log"),
                ]))
            for url, gateway in zip(self.state_urls, self.procs, strict=True):
                _wait_http(url, gateway)
            spec = ",".join(f"127.0.0.1:{g.thrift}@{g.status}" for g in p.gateways)
            front = subprocess.Popen([
                sys.executable, "-m", "callroute.cli", "serve", "--host", "127.0.0.1",
                "--port", str(p.front), "--wxmgw", spec,
                "--rtmp-push-base", self.base, "--rtmp-play-base", self.base,
                "--log-file", str(work / "callroute.log"),
            ])
            self.procs.append(front)
            _wait_http(f"{self.front_url}monitor/state", front)
        except BaseException:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs) and self.nginx.running

    def stop(self) -> list[subprocess.Popen[bytes]]:
        """Stop everything (SIGTERM, then kill); the processes that did not end cleanly."""
        for proc in reversed(self.procs):
            terminate(proc)
        self.nginx.stop()
        return [p for p in self.procs if p.returncode not in (0, -signal.SIGTERM)]

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wxmgw.run", description=__doc__)
    parser.add_argument("--rtmp-port", type=int, default=1935)
    parser.add_argument("--stat-port", type=int, default=8088)
    parser.add_argument("--gateways", type=int, default=len(os.sched_getaffinity(0)),
                        help="wxmgw processes, one per core (default: the cores this process "
                             "may run on, %(default)s here)")
    parser.add_argument("--thrift-port", type=int, default=9090,
                        help="the first gateway's Thrift port; each next gateway takes 2 more "
                             "(9090, 9092, ...)")
    parser.add_argument("--status-port", type=int, default=9091,
                        help="the first gateway's status port; each next gateway takes 2 more "
                             "(9091, 9093, ...), so none collide while it is --thrift-port + 1; "
                             "colliding ports are refused")
    parser.add_argument("--front-port", type=int, default=8800)
    parser.add_argument("--rtp-ports", default="30000-39999",
                        help="split into equal, even-aligned parts, one per gateway")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run")
    args = parser.parse_args(argv)
    if args.gateways < 1:
        parser.error("--gateways must be at least 1")
    try:
        gateways = gateway_ports(GatewayPorts(args.thrift_port, args.status_port, args.rtp_ports),
                                 args.gateways)
        ports = StackPorts(args.rtmp_port, args.stat_port, args.front_port, gateways)
    except (InvalidArgument, ValueError) as exc:
        parser.error(str(exc))
    stack = Stack(ports, args.workdir)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
        lines = "\n".join(
            f"  {f'wxmgw {n}':<16}thrift 127.0.0.1:{g.thrift}, state {g.state_url}, RTP {g.rtp}"
            for n, g in enumerate(gateways, 1))
        print(HOWTO.format(work=stack.workdir, rtmp=ports.rtmp, stat=ports.stat,
                           gateways=lines, front=ports.front), flush=True)
        while not stopping and stack.running:
            time.sleep(0.2)
    finally:
        failed = stack.stop()
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    sys.exit(main())
