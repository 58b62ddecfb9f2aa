"""Gateway choice: least-loaded healthy, unhealthy ones get nothing; a fixed list or the
Redis registry."""

from __future__ import annotations

from typing import Any

import pytest

from callroute.config import GatewayAddress
from callroute.gateways import Gateways, RegisteredGateways
from callroute.protocol import GatewayUnavailable
from wxmgw import cluster
from wxmgw.cluster import RedisJournal, Registration

A, B = GatewayAddress("a", 1, 2), GatewayAddress("b", 1, 2)


def test_pick_least_loaded_and_skip_unhealthy() -> None:
    states: dict[str, Any] = {
        A.name: {"resultCode": 10000, "load": {"legs": 4}},
        B.name: {"resultCode": 10000, "load": {"legs": 1}},
    }

    def fetch(address: GatewayAddress, timeout: float) -> Any:
        state = states[address.name]
        if isinstance(state, Exception):
            raise state
        return state

    gws = Gateways([A, B], fetch=fetch)
    with pytest.raises(GatewayUnavailable):
        gws.pick()                               # nothing polled yet
    gws.poll_once()
    assert [gws.pick() for _ in range(5)] == [B.name, B.name, B.name, A.name, B.name]
    gws.mark_down(B.name, "Thrift refused")
    assert gws.pick() == A.name
    gws.poll_once()
    assert gws.pick() == B.name
    for bad in (OSError("refused"), {"resultCode": 41002}, {"resultCode": 10000, "load": 3},
                {"resultCode": 10000, "load": {"legs": "3"}}, ["x"]):
        states[B.name] = bad
        gws.poll_once()
        assert gws.pick() == A.name
        assert not gws.snapshot()[1]["healthy"] and gws.snapshot()[1]["error"]
    states[A.name] = ValueError("bad json")
    gws.poll_once()
    with pytest.raises(GatewayUnavailable):
        gws.pick()


def test_needs_a_gateway() -> None:
    with pytest.raises(ValueError):
        Gateways([])


def test_registered_gateways_come_and_go(redis_url: str) -> None:
    client = cluster.connect(redis_url)

    def register(name: str, host: str, legs: int) -> Registration:
        reg = Registration(client, RedisJournal(client, name),
                           {"name": name, "host": host, "port": 9090, "statusPort": 9091},
                           lambda: {"legs": legs, "capacity": 100})
        reg.refresh()
        return reg

    gws = RegisteredGateways(client)
    gws.poll_once()
    with pytest.raises(GatewayUnavailable):
        gws.pick()                                  # nobody registered yet
    one = register("gw-one", "10.0.0.1", 4)
    register("gw-two", "10.0.0.2", 1)
    gws.poll_once()
    assert gws.pick() == "gw-two" and gws.address("gw-one") == GatewayAddress("10.0.0.1", 9090)
    assert all(g["healthy"] and g["bootId"] for g in gws.snapshot())
    client.delete(cluster.gateway_key("gw-two"))   # its entry expired
    gws.poll_once()
    assert [gws.pick() for _ in range(3)] == ["gw-one"] * 3
    assert gws.address("gw-two").host == "10.0.0.2"    # still reachable for its conferences
    old_boot = one.entry["bootId"]
    register("gw-one", "10.0.0.1", 0)             # restarted: a new boot id
    gws.poll_once()
    assert {g["gateway"]: g["bootId"] for g in gws.snapshot()}["gw-one"] != old_boot
    assert gws.address("10.0.0.9:9090") == GatewayAddress("10.0.0.9", 9090)  # never seen
    with pytest.raises(GatewayUnavailable):
        gws.address("no-port")
