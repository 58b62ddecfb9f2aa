"""Which wxmgw takes a new conference: the least-loaded healthy one.

Each gateway's ``GET /monitor/state`` (``{"resultCode": 10000, "load":
{"legs": N}, ...}``) is polled with a timeout. A gateway whose poll fails, or
whose Thrift call failed at the transport, is unhealthy until a poll
succeeds again, and gets no new conference. Between polls every conference
assigned to a gateway counts as one more leg, so a burst of new conferences
spreads instead of landing on the gateway that looked idlest at the last
poll. The conference -> gateway affinity itself lives in :mod:`callroute.rooms`.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from callroute.config import GatewayAddress
from callroute.protocol import GatewayUnavailable
from wxmgw.logs import event

logger = logging.getLogger(__name__)

RESULT_OK = 10000
"""``resultCode`` of a healthy ``/monitor/state`` (the RTC media gateway API's)."""

StateFetcher = Callable[[GatewayAddress, float], Any]


def fetch_state(address: GatewayAddress, timeout: float) -> Any:
    """The decoded JSON of the gateway's ``/monitor/state``."""
    url = f"http://{address.host}:{address.status_port}/monitor/state"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read(1 << 20))


@dataclass(slots=True)
class GatewayHealth:
    address: GatewayAddress
    healthy: bool = False
    legs: int = 0
    assigned: int = 0
    """Conferences given to it since its last successful poll."""
    error: str = "not polled yet"


class Gateways:
    """The configured gateways, their health and load."""

    def __init__(
        self,
        addresses: Iterable[GatewayAddress],
        fetch: StateFetcher = fetch_state,
        timeout: float = 1.0,
    ) -> None:
        self._fetch = fetch
        self._timeout = timeout
        self._health = {a.name: GatewayHealth(a) for a in addresses}
        if not self._health:
            raise ValueError("at least one wxmgw is needed")

    def address(self, name: str) -> GatewayAddress:
        return self._health[name].address

    def poll_once(self) -> None:
        """Poll every gateway's state once (sequentially: each is bounded by the timeout)."""
        for health in self._health.values():
            try:
                state = self._fetch(health.address, self._timeout)
                if not isinstance(state, dict) or state.get("resultCode") != RESULT_OK:
                    raise ValueError(f"unhealthy state {str(state)[:200]}")
                legs = state.get("load", {}).get("legs", 0)
                if not isinstance(legs, int) or isinstance(legs, bool):
                    raise ValueError(f"load.legs is not an integer: {legs!r}")
            except (OSError, ValueError, AttributeError) as exc:
                self.mark_down(health.address.name, f"{type(exc).__name__}: {exc}")
                continue
            if not health.healthy:
                event(logger, "gateway_up", gateway=health.address.name, legs=legs)
            health.healthy, health.legs, health.assigned, health.error = True, legs, 0, ""

    def mark_down(self, name: str, reason: str) -> None:
        """No new conference for ``name`` until a poll finds it healthy again."""
        health = self._health[name]
        if health.healthy or health.error != reason:
            event(logger, "gateway_down", logging.WARNING, gateway=name, reason=reason)
        health.healthy, health.error = False, reason

    def pick(self) -> str:
        """The name of the least-loaded healthy gateway; it counts one conference more."""
        healthy = [h for h in self._health.values() if h.healthy]
        if not healthy:
            raise GatewayUnavailable("no healthy wxmgw")
        best = min(healthy, key=lambda h: h.legs + h.assigned)
        best.assigned += 1
        return best.address.name

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"gateway": name, "healthy": h.healthy, "legs": h.legs, "assigned": h.assigned,
             "error": h.error}
            for name, h in self._health.items()
        ]
