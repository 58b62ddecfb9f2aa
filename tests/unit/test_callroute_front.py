"""The front's flows against a fake gateway: calls made, rollbacks, cleanup.

Every flow runs on both stores (``store`` of test_callroute_rooms: in process and Redis).
"""

from __future__ import annotations

import itertools
from typing import Any

import gevent
import pytest
from test_callroute_rooms import store_fixture  # noqa: F401  (both stores)

from callroute.config import GatewayAddress, MasAddress
from callroute.front import Front, FrontConfig
from callroute.gateways import Gateways
from callroute.protocol import (
    AlreadyJoined,
    CallrouteError,
    GatewayError,
    GatewayUnavailable,
    Method,
    NotJoined,
    NotWatching,
    Request,
    StoreUnavailable,
    UnknownConference,
    UnknownMember,
    VideoRef,
)
from callroute.rooms import Conference, Rooms, Store
from callroute.store import MemoryStore, RedisStore
from wxmgw import cluster
from wxmgw.redisd import RedisServer

PUSH, PLAY = "rtmp://10.0.0.9:1935/live", "rtmp://cdn.example/live"
GW1, GW2 = GatewayAddress("10.0.0.1", 9090, 9091), GatewayAddress("10.0.0.2", 9090, 9091)


class FakeGateway:
    """Keeps legs like wxmgw; ``fail[call]`` raises (after starting the leg if ``ambiguous``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.pulls: set[str] = set()
        self.pushes: dict[str, str] = {}
        self.avsync: dict[str, str] = {}
        self.fail: dict[str, CallrouteError] = {}
        self.ambiguous = False

    def _enter(self, call: str, kw: dict[str, Any]) -> CallrouteError | None:
        self.calls.append((call, kw))
        error = self.fail.get(call)
        if error is not None and not self.ambiguous:
            raise error
        return error

    def start_pull(self, **kw: Any) -> None:
        error = self._enter("StartPull", kw)
        self.pulls.add(kw["uuid"])
        if error:
            raise error

    def stop_pull(self, **kw: Any) -> None:
        self._enter("StopPull", kw)
        self.pulls.discard(kw["uuid"])
        self.avsync.pop(kw["uuid"], None)

    def start_push(self, **kw: Any) -> tuple[int, int]:
        error = self._enter("StartPush", kw)
        self.pushes[kw["uuid"]] = kw["push_url"]
        if error:
            raise error
        return (30000, 30002)

    def stop_push(self, **kw: Any) -> None:
        self._enter("StopPush", kw)
        self.pushes.pop(kw["uuid"], None)

    def av_sync(self, **kw: Any) -> None:
        error = self._enter("AvSync", kw)
        if error:
            raise error
        if kw["sync_uuid"]:
            self.avsync[kw["uuid"]] = kw["sync_uuid"]
        else:
            self.avsync.pop(kw["uuid"], None)

    def names(self) -> list[str]:
        return [call for call, _ in self.calls]


class Harness:
    def __init__(self, mas: MasAddress | None = None, store: Store | None = None) -> None:
        self.gw = {GW1.name: FakeGateway(), GW2.name: FakeGateway()}
        self.load = {GW1.name: 5, GW2.name: 3}
        self.gateways = Gateways([GW1, GW2], fetch=lambda a, _t: {
            "resultCode": 10000, "load": {"legs": self.load[a.name]}})
        self.gateways.poll_once()
        ssrcs = itertools.count(1000)
        self.rooms = Rooms(store or MemoryStore(), ssrc_factory=lambda: next(ssrcs))
        self.front = Front(FrontConfig(PUSH, PLAY, mas), self.rooms, self.gateways,
                           lambda address: self.gw[address.name])

    def send(self, method: Method, uuid: str, conf: str = "c", ssrc: int | None = None) -> Any:
        video = None if ssrc is None else VideoRef(ssrc, "seq-1", "1")
        return self.front.handle(Request(method, uuid, conf, "53001", video))

    def join(self, uuid: str, conf: str = "c") -> int:
        return int(self.send(Method.JOIN, uuid, conf)["audiossrc"])

    def conf(self, conf_id: str = "c") -> Conference:
        conf = self.rooms.get(conf_id)
        assert conf is not None
        return conf


@pytest.fixture
def h(store: Store) -> Harness:
    return Harness(store=store)


def test_join_goes_to_least_loaded_and_keeps_affinity(h: Harness) -> None:
    result = h.send(Method.JOIN, "a")
    gw = h.gw[GW2.name]
    assert gw.names() == ["StartPull"] and h.gw[GW1.name].calls == []
    token = result["pushurl"].rsplit("/", 1)[1]
    mix = result["pullaudiourl"].rsplit("/", 1)[1]
    assert result == {
        "audiossrc": "1000", "videossrc": "1000",
        "pushurl": f"{PUSH}/{token}", "pullurl": f"{PLAY}/{token}",
        "pullaudiourl": f"{PLAY}/{mix}",
        "audioip": "10.0.0.2", "audiortpport": "0", "videoip": "10.0.0.2", "videortpport": "0",
    }
    assert len(token) == len(mix) == 32 and token != mix
    assert gw.calls[0][1] == {
        "uuid": "a", "conf_id": "c", "ssrc": 1000, "pull_url": f"{PUSH}/{token}",
        "mas_ip": "", "audio_port": 0, "video_port": 0, "push_audio_url": f"{PUSH}/{mix}"}
    h.load[GW2.name] = 100
    h.gateways.poll_once()
    h.join("b")
    assert gw.pulls == {"a", "b"}


def test_join_with_mas(store: Store) -> None:
    h = Harness(MasAddress("192.168.1.123", 12345, "192.168.1.124", 12346), store)
    result = h.send(Method.JOIN, "a")
    assert (result["audioip"], result["audiortpport"]) == ("192.168.1.123", "12345")
    assert (result["videoip"], result["videortpport"]) == ("192.168.1.124", "12346")
    kw = h.gw[GW2.name].calls[0][1]
    assert (kw["mas_ip"], kw["audio_port"], kw["video_port"]) == ("192.168.1.123", 12345, 12346)


def test_burst_of_new_conferences_spreads(h: Harness) -> None:
    for i in range(4):
        h.join(f"u{i}", conf=f"c{i}")
    assert len(h.gw[GW1.name].pulls) == 1 and len(h.gw[GW2.name].pulls) == 3


def test_join_errors(h: Harness) -> None:
    h.join("a")
    with pytest.raises(AlreadyJoined):
        h.join("a")
    with pytest.raises(AlreadyJoined):
        h.join("a", conf="other")
    assert h.rooms.counts()["conferences"] == 1 and h.rooms.where("a") == "c"


@pytest.mark.parametrize("ambiguous", [False, True])
def test_failed_join_is_rolled_back(h: Harness, ambiguous: bool) -> None:
    gw = h.gw[GW2.name]
    gw.ambiguous = ambiguous
    gw.fail["StartPull"] = GatewayUnavailable("timed out")
    with pytest.raises(GatewayUnavailable):
        h.join("a")
    assert gw.pulls == set() and h.rooms.get("c") is None and h.rooms.where("a") is None
    assert h.rooms.counts()["streams"] == 0
    assert gw.names() == ["StartPull", "StopPull"]
    # the gateway that failed at the transport gets no new conference until polled healthy
    h.join("b")
    assert h.gw[GW1.name].pulls == {"b"}


def test_join_refused_by_gateway_is_not_stopped(h: Harness) -> None:
    gw = h.gw[GW2.name]
    gw.fail["StartPull"] = GatewayError("StartPull", 503, "no free port")
    with pytest.raises(GatewayError):
        h.join("a")
    assert gw.names() == ["StartPull"] and h.rooms.get("c") is None


def test_no_healthy_gateway(store: Store) -> None:
    h = Harness(store=store)
    h.gateways = Gateways([GW1], fetch=lambda a, t: (_ for _ in ()).throw(OSError("refused")))
    h.gateways.poll_once()
    h.front.gateways = h.gateways
    with pytest.raises(GatewayUnavailable):
        h.join("a")


def test_request_video_reuses_push_and_cancel_stops_on_last_watcher(h: Harness) -> None:
    sa = h.join("a")
    h.join("b")
    h.join("c")
    gw = h.gw[GW2.name]
    first = h.send(Method.REQ_VIDEO, "b", ssrc=sa)
    second = h.send(Method.REQ_VIDEO, "c", ssrc=sa)
    again = h.send(Method.REQ_VIDEO, "b", ssrc=sa)
    assert first == second == again
    assert first["pullurl"].startswith(PLAY + "/") and first["seq"] == "seq-1"
    assert first["type"] == "1"
    assert gw.names().count("StartPush") == 1
    kw = next(kw for call, kw in gw.calls if call == "StartPush")
    token = first["pullurl"].rsplit("/", 1)[1]
    assert kw == {"uuid": "a", "conf_id": "c", "req_uuid": "b", "push_url": f"{PUSH}/{token}",
                  "weixin": True}
    assert h.send(Method.CANCEL_VIDEO, "b", ssrc=sa) == {"seq": "seq-1", "type": "1"}
    assert "a" in gw.pushes
    h.send(Method.CANCEL_VIDEO, "c", ssrc=sa)
    assert gw.pushes == {} and h.rooms.stream(token) is None
    with pytest.raises(NotWatching):
        h.send(Method.CANCEL_VIDEO, "c", ssrc=sa)


def test_video_request_errors(h: Harness) -> None:
    sa = h.join("a")
    with pytest.raises(UnknownConference):
        h.send(Method.REQ_VIDEO, "a", conf="nope", ssrc=sa)
    with pytest.raises(NotJoined):
        h.send(Method.REQ_VIDEO, "z", ssrc=sa)
    with pytest.raises(UnknownMember):
        h.send(Method.REQ_VIDEO, "a", ssrc=sa + 1)
    with pytest.raises(NotJoined):
        h.send(Method.QUIT, "z")


def test_failed_start_push_leaves_no_watch(h: Harness) -> None:
    sa = h.join("a")
    h.join("b")
    gw = h.gw[GW2.name]
    gw.fail["StartPush"] = GatewayError("StartPush", 424, "no local source")
    with pytest.raises(GatewayError):
        h.send(Method.REQ_VIDEO, "b", ssrc=sa)
    assert h.conf().pushes == {} and "StopPush" not in gw.names()
    del gw.fail["StartPush"]
    assert h.send(Method.REQ_VIDEO, "b", ssrc=sa)["pullurl"]


def test_avsync_and_its_rollback(h: Harness) -> None:
    sa = h.join("a")
    sb = h.join("b")
    gw = h.gw[GW2.name]
    gw.fail["AvSync"] = GatewayError("AvSync", 500, "boom")
    with pytest.raises(GatewayError):
        h.send(Method.REQ_AVSYNC, "b", ssrc=sa)
    assert gw.names()[-2:] == ["AvSync", "StopPush"] and gw.pushes == {}
    assert h.conf().pushes == {}
    # an existing watch survives a failed avsync on the same member
    h.send(Method.REQ_VIDEO, "b", ssrc=sa)
    with pytest.raises(GatewayError):
        h.send(Method.REQ_AVSYNC, "b", ssrc=sa)
    assert h.conf().pushes["a"].watchers == {"b"} and "a" in gw.pushes
    del gw.fail["AvSync"]
    result = h.send(Method.REQ_AVSYNC, "b", ssrc=sa)
    assert set(result) == {"pullurl", "seq", "type"}
    assert gw.avsync == {"b": "a"}
    h.send(Method.REQ_AVSYNC, "a", ssrc=sb)
    h.send(Method.CANCEL_VIDEO, "b", ssrc=sa)
    assert gw.avsync == {"a": "b"} and "a" not in gw.pushes
    assert h.conf().avsync == {"a": "b"}


def test_failed_cancel_keeps_the_watch(h: Harness) -> None:
    sa = h.join("a")
    h.join("b")
    gw = h.gw[GW2.name]
    h.send(Method.REQ_VIDEO, "b", ssrc=sa)
    gw.fail["StopPush"] = GatewayUnavailable("reset")
    with pytest.raises(GatewayUnavailable):
        h.send(Method.CANCEL_VIDEO, "b", ssrc=sa)
    assert h.conf().pushes["a"].watchers == {"b"}
    del gw.fail["StopPush"]
    h.send(Method.CANCEL_VIDEO, "b", ssrc=sa)
    assert gw.pushes == {}


def test_quit_stops_everything_of_the_member(h: Harness) -> None:
    sa, sb, sc = h.join("a"), h.join("b"), h.join("c")
    gw = h.gw[GW2.name]
    h.send(Method.REQ_AVSYNC, "b", ssrc=sa)   # b sees a with its mix
    h.send(Method.REQ_VIDEO, "a", ssrc=sc)    # only a sees c
    h.send(Method.REQ_VIDEO, "a", ssrc=sb)    # a and c see b
    h.send(Method.REQ_VIDEO, "c", ssrc=sb)
    assert h.send(Method.QUIT, "a") == {}
    assert gw.pulls == {"b", "c"} and set(gw.pushes) == {"b"} and gw.avsync == {}
    conf = h.conf()
    assert set(conf.members) == {"b", "c"} and conf.pushes["b"].watchers == {"c"}
    h.send(Method.QUIT, "b")
    h.send(Method.QUIT, "c")
    assert gw.pulls == set() and gw.pushes == {} and h.rooms.counts()["conferences"] == 0
    assert h.rooms.counts() == {"conferences": 0, "members": 0, "pushes": 0, "streams": 0}
    with pytest.raises(UnknownConference):
        h.send(Method.QUIT, "c")


def test_quit_succeeds_when_the_gateway_is_gone(h: Harness) -> None:
    sa = h.join("a")
    h.join("b")
    h.send(Method.REQ_VIDEO, "b", ssrc=sa)
    gw = h.gw[GW2.name]
    for call in ("StopPull", "StopPush", "AvSync"):
        gw.fail[call] = GatewayUnavailable("refused")
    h.send(Method.QUIT, "a")
    h.send(Method.QUIT, "b")
    assert h.rooms.counts()["conferences"] == 0


class SlowGateway(FakeGateway):
    """A gateway whose calls take a moment, so that requests of two fronts interleave."""

    def _enter(self, call: str, kw: dict[str, Any]) -> CallrouteError | None:
        gevent.sleep(0.002)
        return super()._enter(call, kw)


def test_two_fronts_place_each_conference_once(redis_url: str) -> None:
    """Each front thinks another gateway is the least loaded: only the lease keeps a
    conference on one of them, and its SSRCs unique."""
    fronts = [Harness(store=RedisStore(cluster.connect(redis_url))) for _ in range(2)]
    gws: dict[str, FakeGateway] = {GW1.name: SlowGateway(), GW2.name: SlowGateway()}
    fronts[0].load, fronts[1].load = {GW1.name: 0, GW2.name: 9}, {GW1.name: 9, GW2.name: 0}
    for front in fronts:
        front.gw = gws
        front.gateways.poll_once()
    members = [(f"c{i}", f"c{i}-m{j}") for i in range(8) for j in range(3)]
    replies = [gevent.spawn(fronts[n % 2].send, Method.JOIN, uuid, conf)
               for n, (conf, uuid) in enumerate(members)]
    gevent.joinall(replies, raise_error=True)
    ssrcs = {m: int(g.value["audiossrc"]) for m, g in zip(members, replies, strict=True)}
    for i in range(8):
        homes = [name for name, gw in gws.items()
                 if any(u.startswith(f"c{i}-") for u in gw.pulls)]
        assert homes == [fronts[0].conf(f"c{i}").gateway]
        assert len({ssrcs[m] for m in members if m[0] == f"c{i}"}) == 3
    # any front answers for any conference, and the state is one
    sa = ssrcs[("c0", "c0-m0")]
    url = fronts[1].send(Method.REQ_VIDEO, "c0-m1", "c0", ssrc=sa)["pullurl"]
    assert fronts[0].send(Method.REQ_VIDEO, "c0-m2", "c0", ssrc=sa)["pullurl"] == url
    fronts[0].send(Method.CANCEL_VIDEO, "c0-m1", "c0", ssrc=sa)
    fronts[1].send(Method.CANCEL_VIDEO, "c0-m2", "c0", ssrc=sa)
    assert not any(gw.pushes for gw in gws.values())
    with pytest.raises(AlreadyJoined):
        fronts[1].send(Method.JOIN, "c0-m0", "c1")
    gevent.joinall([gevent.spawn(fronts[n % 2].send, Method.QUIT, uuid, conf)
                    for n, (conf, uuid) in enumerate(reversed(members))], raise_error=True)
    assert not any(gw.pulls for gw in gws.values())
    assert fronts[1].rooms.counts() == {"conferences": 0, "members": 0, "pushes": 0,
                                        "streams": 0}


def test_redis_away_answers_117_and_touches_no_gateway(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with RedisServer(tmp_path_factory.mktemp("redis-front")) as server:
        h = Harness(store=RedisStore(cluster.connect(server.url)))
        sa = h.join("a")
        h.join("b")
        gw = h.gw[GW2.name]
        calls = len(gw.calls)
        server.stop()
        for method, uuid, ssrc in [(Method.JOIN, "c", None), (Method.REQ_VIDEO, "b", sa),
                                   (Method.QUIT, "a", None)]:
            with pytest.raises(StoreUnavailable) as caught:
                h.send(method, uuid, ssrc=ssrc)
            assert caught.value.code.value == "117"
        assert len(gw.calls) == calls and gw.pulls == {"a", "b"}
        server.start()                          # back, with its data: the front carries on
        assert h.send(Method.REQ_VIDEO, "b", ssrc=sa)["pullurl"]
        h.send(Method.QUIT, "a")
        h.send(Method.QUIT, "b")
        assert gw.pulls == set() and gw.pushes == {}
