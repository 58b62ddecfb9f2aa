"""`make run`: the embedded local stack in the foreground.

nginx-rtmp (the project's config, loopback), `wxmgw serve` and the callroute
front in MAS-less mode, each its own process, all stopped by Ctrl-C or
SIGTERM. Prints how to join a conference with curl and ffmpeg. `make demo`
(:mod:`wxmgw.demo`) starts the same :class:`Stack`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from wxmgw.nginx import NginxRtmp
from wxmgw.procs import terminate

ROOT = Path(__file__).resolve().parent.parent

HOWTO = """
wxmgw is running (logs: {work}/*.log).
  live server     rtmp://127.0.0.1:{rtmp}/live   (stat: http://127.0.0.1:{stat}/stat)
  wxmgw           thrift 127.0.0.1:{thrift}, state http://127.0.0.1:{status}/monitor/state
  callroute front http://127.0.0.1:{front}/

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
class StackPorts:
    rtmp: int = 1935
    stat: int = 8088
    thrift: int = 9090
    status: int = 9091
    front: int = 8800
    rtp: str = "30000-39999"


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
        self.state_url = f"http://127.0.0.1:{ports.status}/monitor/state"
        self.nginx = NginxRtmp(self.workdir / "nginx", rtmp_port=ports.rtmp,
                               http_port=ports.stat, notify_url=f"{self.front_url}rtmp")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        p, work = self.ports, self.workdir
        work.mkdir(parents=True, exist_ok=True)
        try:
            self.nginx.start()
            gateway = subprocess.Popen([
                sys.executable, "-m", "wxmgw.cli", "serve", "--thrift-host", "127.0.0.1",
                "--thrift-port", str(p.thrift), "--status-port", str(p.status),
                "--rtp-ports", p.rtp, "--media-ip", "127.0.0.1",
                "--log-file", str(work / "wxmgw.log"),
            ])
            self.procs.append(gateway)
            _wait_http(self.state_url, gateway)
            front = subprocess.Popen([
                sys.executable, "-m", "callroute.cli", "serve", "--host", "127.0.0.1",
                "--port", str(p.front), "--wxmgw", f"127.0.0.1:{p.thrift}@{p.status}",
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
    parser.add_argument("--thrift-port", type=int, default=9090)
    parser.add_argument("--status-port", type=int, default=9091)
    parser.add_argument("--front-port", type=int, default=8800)
    parser.add_argument("--rtp-ports", default="30000-39999")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run")
    args = parser.parse_args(argv)
    ports = StackPorts(args.rtmp_port, args.stat_port, args.thrift_port, args.status_port,
                       args.front_port, args.rtp_ports)
    stack = Stack(ports, args.workdir)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
        print(HOWTO.format(work=stack.workdir, rtmp=ports.rtmp, stat=ports.stat,
                           thrift=ports.thrift, status=ports.status, front=ports.front),
              flush=True)
        while not stopping and stack.running:
            time.sleep(0.2)
    finally:
        failed = stack.stop()
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    sys.exit(main())
