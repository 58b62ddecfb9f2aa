"""Gateway choice: least-loaded healthy, unhealthy ones get nothing."""

from __future__ import annotations

from typing import Any

import pytest

from callroute.config import GatewayAddress
from callroute.gateways import Gateways
from callroute.protocol import GatewayUnavailable

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
