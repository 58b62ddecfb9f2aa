"""`make demo-cluster`: Redis, two callroute fronts and two gateways on this machine.

Everything runs as its own process on free loopback ports (logs in
``.run/demo-cluster/``): a redis-server (append-only), two ``wxmgw serve
--redis`` that register themselves, two ``callroute serve --redis`` sharing
the conferences, and nginx-rtmp whose ``on_publish``/``on_play`` ask front A
only. Messages go to front A and front B in turn:

1. ``--conferences`` conferences of three mini-programs join, each member
   asking for the next one's video; the demo prints where each conference
   landed (the gateway in its ``wxmgw:conf:{confId}`` record, and the
   gateways whose ``/monitor/state`` has its room) and which front placed it.
2. Alice (red, 500 Hz) joins through front A and bob (blue, 1300 Hz) through
   front B; each asks the *other* front for the other's video with the mix
   (``wxreqavsync``) and publishes with ffmpeg; their players report whose
   video and tone they got (:func:`wxmgw.demo.play_pair`), and each quits
   through the front it did not join through.

The verdict is OK when every conference ran on exactly one gateway, the one
its record names, alice and bob each saw and heard only the other, and both
gateways are back to zero legs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from wxmgw import cluster
from wxmgw.demo import ALICE, BOB, MiniProgram, call, free_rtp_ports, play_pair, wait_until
from wxmgw.nginx import NginxRtmp, free_port
from wxmgw.procs import terminate
from wxmgw.redisd import RedisServer
from wxmgw.run import ROOT

MEMBERS = 3


def _state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        state: dict[str, Any] = json.load(resp)
    return state


class Cluster:
    """The processes of the demo; a context manager that stops them all."""

    def __init__(self, workdir: Path, exit_stack: ExitStack) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.redis = exit_stack.enter_context(RedisServer(workdir / "redis"))
        self.client = cluster.connect(self.redis.url)
        self.front_ports = [free_port(), free_port()]
        self.fronts = [f"http://127.0.0.1:{p}/" for p in self.front_ports]
        self.nginx = exit_stack.enter_context(
            NginxRtmp(workdir / "nginx", notify_url=f"{self.fronts[0]}rtmp"))
        self.procs: list[subprocess.Popen[bytes]] = []
        exit_stack.callback(self.stop)
        self.gateways: dict[str, str] = {}
        """registry name -> /monitor/state URL"""
        for n in range(2):
            thrift, status = free_port(), free_port()
            self.gateways[f"127.0.0.1:{thrift}"] = f"http://127.0.0.1:{status}/monitor/state"
            self._spawn("wxmgw.cli", f"wxmgw-{n + 1}.log", "--redis", self.redis.url,
                        "--advertise-host", "127.0.0.1", "--thrift-host", "127.0.0.1",
                        "--thrift-port", str(thrift), "--status-port", str(status),
                        "--rtp-ports", free_rtp_ports(), "--media-ip", "127.0.0.1")
        base = self.nginx.rtmp_url("").rstrip("/")
        for n, port in enumerate(self.front_ports):
            self._spawn("callroute.cli", f"callroute-{'AB'[n]}.log", "--redis", self.redis.url,
                        "--host", "127.0.0.1", "--port", str(port), "--rtmp-push-base", base,
                        "--poll-interval", "0.5")
        for front in self.fronts:
            wait_until(lambda f=front: sum(g["healthy"] for g in _state(f"{f}monitor/state")
                                           ["gateways"]) == 2, 20, "every front sees both gateways")

    def _spawn(self, module: str, log: str, *args: str) -> None:
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", module, "serve", *args, "--log-file",
             str(self.workdir / log)], cwd=ROOT, stdin=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            terminate(proc)

    def homes(self, conf_id: str) -> list[str]:
        """The gateways whose state has a room of ``conf_id``."""
        return [name for name, url in self.gateways.items()
                if any(r["confId"] == conf_id for r in _state(url)["rooms"])]

    def placed(self, conf_id: str) -> str | None:
        text = self.client.get(cluster.conference_key(conf_id))
        return None if text is None else str(json.loads(str(text))["gateway"])

    def legs(self) -> int:
        return sum(_state(url)["load"]["legs"] for url in self.gateways.values())


def _ok(result: dict[str, Any], what: str) -> dict[str, Any]:
    if "code" in result:
        raise RuntimeError(f"{what}: {result}")
    return result


def placement(c: Cluster, conferences: int) -> bool:
    """Conferences of three through alternating fronts; True if each is on one gateway."""
    joined: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(conferences):
        conf = f"conf-{i + 1}"
        for j in range(MEMBERS):
            uuid = f"{conf}-mp{j + 1}"
            joined[conf, uuid] = _ok(call(c.fronts[(i + j) % 2], "wxjoinconf", uuid, conf),
                                     f"{uuid} join")
        for j in range(MEMBERS):
            peer = joined[conf, f"{conf}-mp{(j + 1) % MEMBERS + 1}"]
            _ok(call(c.fronts[(i + j + 1) % 2], "wxreqvideo", f"{conf}-mp{j + 1}", conf,
                     antissrc=peer["audiossrc"], seq="1", type="1"), "wxreqvideo")
    ok = True
    print(f"{'conference':<12} {'placed by':<10} {'record says':<18} {'rooms on':<18} ok")
    for i in range(conferences):
        conf = f"conf-{i + 1}"
        homes, placed = c.homes(conf), c.placed(conf)
        good = homes == [placed]
        ok &= good
        first = "front " + "AB"[i % 2]
        print(f"{conf:<12} {first:<10} {placed or '-':<18} {','.join(homes) or '-':<18} "
              f"{'yes' if good else 'NO'}")
    spread = {c.placed(f"conf-{i + 1}") for i in range(conferences)}
    print(f"{len(spread)} gateway(s) used, {c.legs()} legs running")
    for n, (conf, uuid) in enumerate(joined):
        _ok(call(c.fronts[(n + 1) % 2], "wxquitconf", uuid, conf), f"{uuid} quit")
    return ok


def media(c: Cluster, seconds: float) -> bool:
    """Alice joins through front A and bob through B; everything else goes to the other."""
    joins_at = {ALICE: 0, BOB: 1}

    def route(mp: MiniProgram, method: str) -> str:
        return c.fronts[joins_at[mp] if method == "wxjoinconf" else 1 - joins_at[mp]]

    return play_pair(route, c.nginx, "duo", seconds, c.workdir, lip_sync=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wxmgw.demo_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conferences", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="seconds of the media conference (its players listen 4 s less)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run" / "demo-cluster")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        c = Cluster(args.workdir.resolve(), stack)
        print(f"cluster up (logs: {c.workdir}/*.log): redis {c.redis.url}, fronts A "
              f"{c.fronts[0]} and B {c.fronts[1]}, gateways {', '.join(c.gateways)}")
        ok = placement(c, args.conferences)
        ok &= media(c, args.seconds)
        wait_until(lambda: c.legs() == 0, 10, "both gateways back to zero legs")
        left = [k for k in c.client.scan_iter(cluster.conference_key("*"))]
        ok &= not left
        print(f"everyone quit: 0 legs, {len(left)} conference records left in Redis")
    print("DEMO-CLUSTER OK" if ok else "DEMO-CLUSTER FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except redis.RedisError as exc:
        sys.exit(f"redis: {exc}")
