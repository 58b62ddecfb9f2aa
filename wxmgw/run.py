"""`make run`: the embedded local stack in the foreground.

nginx-rtmp (the project's config, loopback), `wxmgw serve` and the callroute
front in MAS-less mode, each its own process, all stopped by Ctrl-C or
SIGTERM. Prints how to join a conference with curl and ffmpeg.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from wxmgw.nginx import NginxRtmp

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
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = f"rtmp://127.0.0.1:{args.rtmp_port}/live"
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    nginx = NginxRtmp(work / "nginx", rtmp_port=args.rtmp_port, http_port=args.stat_port,
                      notify_url=f"http://127.0.0.1:{args.front_port}/rtmp")
    try:
        nginx.start()
        gateway = subprocess.Popen([
            sys.executable, "-m", "wxmgw.cli", "serve", "--thrift-host", "127.0.0.1",
            "--thrift-port", str(args.thrift_port), "--status-port", str(args.status_port),
            "--rtp-ports", args.rtp_ports, "--media-ip", "127.0.0.1",
            "--log-file", str(work / "wxmgw.log"),
        ])
        procs.append(gateway)
        _wait_http(f"http://127.0.0.1:{args.status_port}/monitor/state", gateway)
        front = subprocess.Popen([
            sys.executable, "-m", "callroute.cli", "serve", "--host", "127.0.0.1",
            "--port", str(args.front_port),
            "--wxmgw", f"127.0.0.1:{args.thrift_port}@{args.status_port}",
            "--rtmp-push-base", base, "--rtmp-play-base", base,
            "--log-file", str(work / "callroute.log"),
        ])
        procs.append(front)
        _wait_http(f"http://127.0.0.1:{args.front_port}/monitor/state", front)
        print(HOWTO.format(work=work, rtmp=args.rtmp_port, stat=args.stat_port,
                           thrift=args.thrift_port, status=args.status_port,
                           front=args.front_port), flush=True)
        while not stopping and all(p.poll() is None for p in procs) and nginx.running:
            time.sleep(0.2)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        nginx.stop()
    failed = [p.args for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    sys.exit(main())
