"""Two callroute fronts and two gateways sharing one Redis (issue #13's acceptance).

A real redis-server (the session's ``redis_server``), two ``wxmgw serve
--redis`` registering themselves, two ``callroute serve --redis`` and a real
nginx-rtmp whose ``on_publish``/``on_play`` ask front A only, so every name
issued by front B is checked by the other front. Each message goes to a
random front.

What needs real media and what does not: placement, SSRCs and the live
server's checks are state, so the 20 x 3 conference test has no publisher
(the gateways' pulls play every member's name through nginx, which asks
front A; the other names are asked of both fronts directly as nginx would).
One MAS-less conference is played for real through both fronts, with ffmpeg
publishers and players: each hears the other's tone and sees the other's
video.
"""

from __future__ import annotations

import http.client
import json
import random
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent
import pytest
import redis
from gevent.pool import Pool
from media_checks import wait_for
from test_callroute import FrontProcess, message, video
from wxmgw_proc import GatewayProcess, free_port

from callroute.store import MEMBERS
from wxmgw import cluster
from wxmgw.demo import ALICE, BOB, MiniProgram, play_pair
from wxmgw.nginx import NginxRtmp
from wxmgw.redisd import RedisServer


@dataclass
class Cluster:
    redis_server: RedisServer
    gateways: list[GatewayProcess]
    fronts: list[FrontProcess]
    nginx: NginxRtmp

    def front(self) -> FrontProcess:
        return random.choice(self.fronts)

    def send(self, msg: dict[str, Any], front: FrontProcess | None = None) -> dict[str, Any]:
        result: dict[str, Any] = (front or self.front()).send(msg)["result"]
        return result

    def homes(self, conf: str) -> list[str]:
        """The gateways (their registry names) running a room of ``conf``."""
        return [f"127.0.0.1:{g.thrift_port}" for g in self.gateways
                if any(r["confId"] == conf for r in g.state()["rooms"])]

    def legs(self) -> int:
        return sum(g.state()["load"]["legs"] for g in self.gateways)

    def client(self) -> redis.Redis:
        return cluster.connect(self.redis_server.url)


def notify(front: FrontProcess, call: str, name: str) -> int:
    """What nginx-rtmp asks before a publish or a play (``notify_method post``)."""
    form = urlencode({"call": call, "app": "live", "name": name, "addr": "127.0.0.1",
                      "clientid": "1", "type": "live"})
    return front.request(f"/rtmp/on_{call}", form.encode())[0]


def token(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          redis_server: RedisServer) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    client = cluster.connect(redis_server.url)
    client.flushall()
    gw_flags = ["--redis", redis_server.url, "--advertise-host", "127.0.0.1"]
    gateways = [GatewayProcess(tmp, rtp_ports=20, extra=gw_flags) for _ in range(2)]
    port_a = free_port()
    nginx = NginxRtmp(tmp / "nginx", notify_url=f"http://127.0.0.1:{port_a}/rtmp")
    nginx.start()
    base = nginx.rtmp_url("").rstrip("/")
    flags = ["--redis", redis_server.url, "--lease-ttl", "2"]
    fronts: list[FrontProcess] = []
    try:
        for port in (port_a, free_port()):
            fronts.append(FrontProcess(tmp, gateways, push_base=base, play_base=base,
                                       extra=flags, port=port))
        yield Cluster(redis_server, gateways, fronts, nginx)
    finally:
        for front in fronts:
            front.stop()
        for gw in gateways:
            gw.stop()
        nginx.stop()


def test_twenty_conferences_of_three_through_random_fronts(stack: Cluster) -> None:
    confs = [f"many-{i}" for i in range(20)]
    members = [(conf, f"{conf}-mp{j}") for conf in confs for j in range(3)]
    pool = Pool(30)
    joined = dict(zip(members, pool.map(
        lambda m: stack.send(message("wxjoinconf", m[1], m[0])), members), strict=True))
    assert all("code" not in r for r in joined.values()), joined
    assert stack.legs() == 60
    client = stack.client()
    for conf in confs:
        homes = stack.homes(conf)
        record = json.loads(str(client.get(cluster.conference_key(conf))))
        assert homes == [record["gateway"]], (conf, homes, record)
        ssrcs = {joined[m]["audiossrc"] for m in members if m[0] == conf}
        assert len(ssrcs) == 3, conf
    assert all(any(stack.homes(c) == [f"127.0.0.1:{g.thrift_port}"] for c in confs)
               for g in stack.gateways), "both gateways take conferences"

    def watch_next(m: tuple[str, str]) -> dict[str, Any]:
        conf, uuid = m
        peer = (conf, f"{conf}-mp{(int(uuid[-1]) + 1) % 3}")
        return stack.send(video("wxreqvideo", uuid, conf, joined[peer]["audiossrc"]))

    watched = pool.map(watch_next, members)
    assert all("pullurl" in r for r in watched), watched
    # every name is accepted whichever front is asked ...
    names = [token(r[k]) for r in joined.values() for k in ("pushurl", "pullaudiourl")]
    names += [token(r["pullurl"]) for r in watched]
    checks = pool.map(lambda n: (notify(stack.front(), "publish", n),
                                 notify(stack.front(), "play", n)), names)
    assert set(checks) == {(200, 200)}
    assert notify(stack.fronts[1], "play", "0" * 32) == 403
    # ... and nginx-rtmp itself asked front A for every member's name as the gateways'
    # pulls played them, half of them issued by front B
    front_a = stack.fronts[0]

    def asked() -> set[tuple[str, str]]:
        lines = (json.loads(x) for x in front_a.log_path.read_text().splitlines())
        return {(e["confId"], e["uuid"]) for e in lines
                if e.get("event") == "rtmp_play" and e.get("allowed") and e["kind"] == "member"}

    wait_for(lambda: asked() >= set(members), what="nginx-rtmp's on_play for every member")

    quits = pool.map(lambda m: stack.send(message("wxquitconf", m[1], m[0])), members)
    assert quits == [{}] * 60
    assert stack.legs() == 0
    assert [k for k in client.scan_iter("wxmgw:conf:*")] == [] and client.hlen(MEMBERS) == 0


def test_masless_conference_through_two_fronts(stack: Cluster, tmp_path: Path) -> None:
    """Alice joins through front A, bob through B, and each asks the other front for the
    other's video with the mix: each player hears the other's tone and sees its video
    (:func:`wxmgw.demo.play_pair`, ffmpeg publishers and players)."""
    joins_at = {ALICE: 0, BOB: 1}

    def route(mp: MiniProgram, method: str) -> str:
        return stack.fronts[joins_at[mp] if method == "wxjoinconf" else 1 - joins_at[mp]].url()

    assert play_pair(route, stack.nginx, "duo", 10.0, tmp_path, lip_sync=False)
    wait_for(lambda: stack.legs() == 0, what="no legs left")


def test_a_killed_front_loses_nothing(stack: Cluster) -> None:
    """kill -9 front B while requests go through it: front A serves every conference,
    and B restarted carries on where it stopped."""
    a, b = stack.fronts
    confs = [f"kill-{i}" for i in range(4)]
    joined = {(conf, uuid): stack.send(message("wxjoinconf", uuid, conf), front)
              for conf in confs for uuid, front in ((f"{conf}-x", a), (f"{conf}-y", b))}
    assert all("code" not in r for r in joined.values())
    def join_late(i: int) -> int | None:
        """A join through B: answered before the kill, or cut (None)."""
        try:
            return b.request("/", json.dumps(message("wxjoinconf", f"late-{i}",
                                                     confs[i % 4])).encode())[0]
        except (OSError, http.client.HTTPException):  # refused, reset, or a reply cut short
            return None

    burst = Pool(16).map_async(join_late, range(16))
    gevent.sleep(0.05)
    b.kill()
    assert set(burst.get()) <= {200, None}
    for conf in confs:
        x, y = (conf, f"{conf}-x"), (conf, f"{conf}-y")
        pullurl = stack.send(video("wxreqvideo", x[1], conf, joined[y]["audiossrc"]), a)
        assert "pullurl" in pullurl, pullurl
        for name in (token(joined[y]["pushurl"]), token(pullurl["pullurl"])):
            assert notify(a, "play", name) == 200
        assert stack.send(message("wxquitconf", y[1], conf), a) == {}
    b.start()
    for conf in confs:
        assert stack.send(message("wxquitconf", f"{conf}-x", conf), b) == {}
    # whatever the cut requests left (a member joined, perhaps no leg), a quit clears it
    client = stack.client()
    for cut, where in client.hgetall(MEMBERS).items():
        assert str(cut).startswith("late-"), cut
        assert stack.send(message("wxquitconf", str(cut), str(where))) == {}
    assert stack.legs() == 0 and client.hlen(MEMBERS) == 0


def test_redis_restart_and_outage(stack: Cluster) -> None:
    """Conferences go on through a redis-server restart (its data kept); while it is away
    the fronts answer 117 and the media runs on."""
    a, b = stack.fronts
    joined = {uuid: stack.send(message("wxjoinconf", uuid, "outage"), front)
              for uuid, front in (("o-x", a), ("o-y", b))}
    stack.redis_server.restart()
    reply = stack.send(video("wxreqvideo", "o-x", "outage", joined["o-y"]["audiossrc"]), b)
    assert "pullurl" in reply, reply

    running = stack.legs()
    stack.redis_server.stop()
    try:
        for front in (a, b):
            got = front.send(message("wxquitconf", "o-y", "outage"))
            assert got["uuid"] == "o-y" and got["result"]["code"] == "117", got
        assert notify(a, "play", token(joined["o-x"]["pushurl"])) == 403
        assert stack.legs() == running == 3       # two pulls and a push: media untouched
    finally:
        stack.redis_server.start()
    wait_for(lambda: a.healthy() == b.healthy() == 2, what="gateways registered again")
    assert stack.send(message("wxjoinconf", "o-z", "outage"), a)["pullaudiourl"]
    for uuid in ("o-x", "o-y", "o-z"):
        assert stack.send(message("wxquitconf", uuid, "outage")) == {}
    assert stack.legs() == 0


def test_front_state_reads_the_shared_store(stack: Cluster) -> None:
    stack.send(message("wxjoinconf", "st-x", "state"), stack.fronts[0])
    states = [f.state() for f in stack.fronts]
    assert [s["members"] for s in states] == [1, 1] and states[0]["conferences"] == 1
    with urllib.request.urlopen(stack.fronts[1].url("/monitor/state"), timeout=5) as resp:
        assert json.load(resp)["gateways"][0]["bootId"]
    assert stack.send(message("wxquitconf", "st-x", "state"), stack.fronts[1]) == {}
