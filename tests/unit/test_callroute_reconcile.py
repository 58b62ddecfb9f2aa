"""The front's reconciliation against fake gateways, on both stores."""

from __future__ import annotations

from typing import Any

import pytest
from test_callroute_front import GW1, GW2, FakeGateway, Harness
from test_callroute_rooms import store_fixture  # noqa: F401  (both stores)

from callroute.protocol import Method
from callroute.reconcile import Reconciler
from callroute.rooms import Store
from callroute.store import RedisStore
from wxmgw import cluster


def state_of(gw: FakeGateway) -> dict[str, Any]:
    """What the fake gateway's /monitor/state would list: its legs with their confIds."""
    conf = {kw["uuid"]: kw["conf_id"] for call, kw in gw.calls if call.startswith("Start")}
    legs = [{"kind": "rtmp2rtp", "uuid": u, "confId": conf[u], "syncUuid": gw.avsync.get(u, "")}
            for u in gw.pulls]
    legs += [{"kind": "rtp2rtmp", "uuid": u, "confId": conf[u]} for u in gw.pushes]
    return {"resultCode": 10000, "legs": legs}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def h(store: Store) -> Harness:
    return Harness(store=store)


def reconciler(h: Harness, clock: Clock, down: set[str] | None = None) -> Reconciler:
    def fetch(address: Any, _timeout: float) -> dict[str, Any]:
        if down and address.name in down:
            raise OSError("connection refused")
        return state_of(h.gw[address.name])

    return Reconciler(h.front, fetch=fetch, clock=clock, move_after=5.0)


def conference(h: Harness) -> FakeGateway:
    """a and b in conference c (on GW2); a watches b with AvSync."""
    h.join("a")
    ssrc_b = h.join("b")
    h.send(Method.REQ_AVSYNC, "a", ssrc=ssrc_b)
    return h.gw[GW2.name]


def test_a_gateway_restarted_empty_gets_its_legs_back(h: Harness) -> None:
    gw = conference(h)
    gw.pulls.clear()
    gw.pushes.clear()
    gw.avsync.clear()
    before = len(gw.calls)
    reconciler(h, Clock()).run_once()
    assert sorted(gw.names()[before:]) == ["AvSync", "StartPull", "StartPull", "StartPush"]
    assert gw.pulls == {"a", "b"} and set(gw.pushes) == {"b"} and gw.avsync == {"a": "b"}
    again = len(gw.calls)
    reconciler(h, Clock()).run_once()
    assert len(gw.calls) == again  # all there: nothing to do


def test_an_orphan_is_stopped_on_the_second_pass_only(h: Harness) -> None:
    gw = conference(h)
    gw.start_pull(uuid="ghost", conf_id="gone")  # a join whose client timed out
    rec = reconciler(h, Clock())
    rec.run_once()
    assert "ghost" in gw.pulls
    rec.run_once()
    assert "ghost" not in gw.pulls and gw.pulls == {"a", "b"} and set(gw.pushes) == {"b"}


def test_orphans_are_kept_when_told(h: Harness) -> None:
    gw = conference(h)
    gw.start_pull(uuid="mcs-leg", conf_id="mcs")
    rec = reconciler(h, Clock())
    rec.stop_orphans = False
    rec.run_once()
    rec.run_once()
    assert "mcs-leg" in gw.pulls


def test_a_silent_gateway_loses_its_conferences_after_the_grace(h: Harness) -> None:
    conference(h)
    clock = Clock()
    rec = reconciler(h, clock, down={GW2.name})
    rec.run_once()
    clock.now += 4.0
    rec.run_once()
    assert h.conf().gateway == GW2.name  # not yet: 4 s silent
    clock.now += 1.5
    rec.run_once()
    assert h.conf().gateway == GW1.name
    moved = h.gw[GW1.name]
    assert moved.pulls == {"a", "b"} and set(moved.pushes) == {"b"} and moved.avsync == {"a": "b"}
    assert h.rooms.store.conferences_on(GW1.name) == {"c"}
    assert h.rooms.store.conferences_on(GW2.name) == set()
    # The conference goes on from its new gateway: a quit reaches GW1.
    h.send(Method.QUIT, "b")
    assert moved.pulls == {"a"} and moved.pushes == {}


def test_one_front_reconciles_a_gateway_at_a_time(redis_url: str) -> None:
    first = RedisStore(cluster.connect(redis_url))
    second = RedisStore(cluster.connect(redis_url))
    assert first.claim("gw", 3.0) and first.claim("gw", 3.0)
    assert not second.claim("gw", 3.0)
    assert second.claim("other", 3.0)
