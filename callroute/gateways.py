"""Which wxmgw takes a new conference: the least-loaded healthy one.

Each gateway's ``GET /monitor/state`` (``{"resultCode": 10000, "load":
{"legs": N}, ...}``) is polled with a timeout. A gateway whose poll fails, or
whose Thrift call failed at the transport, is unhealthy until a poll
succeeds again, and gets no new conference. Between polls every conference
assigned to a gateway counts as one more leg, so a burst of new conferences
spreads instead of landing on the gateway that looked idlest at the last
poll. The conference -> gateway affinity itself lives in :mod:`callroute.rooms`.

With Redis, :class:`RegisteredGateways` takes the gateways from the registry
that ``wxmgw serve --redis`` keeps (:mod:`wxmgw.cluster`) instead of a fixed
list: a gateway is healthy while its entry lives, with the load it wrote
there, so gateways join and leave without the fronts restarting.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from callroute.config import GatewayAddress, parse_gateway
from callroute.protocol import GatewayUnavailable
from wxmgw.cluster import GATEWAYS, gateway_key
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
    boot_id: str = ""
    """The registry's ``bootId``: it changes when the gateway restarts."""


class Gateways:
    """The gateways of a fixed list (``--wxmgw``), their health and load, by name."""

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
        """Where gateway ``name`` is; a name never seen is tried as ``HOST:PORT``."""
        health = self._health.get(name)
        if health is not None:
            return health.address
        try:
            return parse_gateway(name)
        except ValueError:
            raise GatewayUnavailable(f"wxmgw {name} is not known here") from None

    def names(self) -> list[str]:
        """Every gateway known here, up or down."""
        return list(self._health)

    def is_healthy(self, name: str) -> bool:
        health = self._health.get(name)
        return health is not None and health.healthy

    def poll_once(self) -> None:
        """Poll every gateway's state once (sequentially: each is bounded by the timeout)."""
        for name, health in self._health.items():
            try:
                state = self._fetch(health.address, self._timeout)
                if not isinstance(state, dict) or state.get("resultCode") != RESULT_OK:
                    raise ValueError(f"unhealthy state {str(state)[:200]}")
                legs = state.get("load", {}).get("legs", 0)
                if not isinstance(legs, int) or isinstance(legs, bool):
                    raise ValueError(f"load.legs is not an integer: {legs!r}")
            except (OSError, ValueError, AttributeError) as exc:
                self.mark_down(name, f"{type(exc).__name__}: {exc}")
                continue
            self._up(name, health, legs)

    def _up(self, name: str, health: GatewayHealth, legs: int) -> None:
        if not health.healthy:
            event(logger, "gateway_up", gateway=name, legs=legs)
        health.healthy, health.legs, health.assigned, health.error = True, legs, 0, ""

    def mark_down(self, name: str, reason: str) -> None:
        """No new conference for ``name`` until a poll finds it healthy again."""
        health = self._health.get(name)
        if health is None:
            return
        if health.healthy or health.error != reason:
            event(logger, "gateway_down", logging.WARNING, gateway=name, reason=reason)
        health.healthy, health.error = False, reason

    def pick(self) -> str:
        """The name of the least-loaded healthy gateway; it counts one conference more."""
        healthy = [(name, h) for name, h in self._health.items() if h.healthy]
        if not healthy:
            raise GatewayUnavailable("no healthy wxmgw")
        name, best = min(healthy, key=lambda item: item[1].legs + item[1].assigned)
        best.assigned += 1
        return name

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"gateway": name, "healthy": h.healthy, "legs": h.legs, "assigned": h.assigned,
             "error": h.error, **({"bootId": h.boot_id} if h.boot_id else {})}
            for name, h in self._health.items()
        ]


class RegisteredGateways(Gateways):
    """The gateways of the Redis registry: ``wxmgw:gateways`` names them, each
    ``wxmgw:gateway:{name}`` entry (with its TTL) says where it is and its load.

    A name whose entry has expired is down; its address is remembered for the
    conferences still on it. Redis away: the health stays as last read (the
    conference store fails the requests meanwhile anyway).
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._health: dict[str, GatewayHealth] = {}
        self._redis_error: str | None = None

    def poll_once(self) -> None:
        try:
            names = sorted(str(n) for n in self._client.smembers(GATEWAYS))
            entries = self._client.mget([gateway_key(n) for n in names]) if names else []
        except redis.RedisError as exc:
            if self._redis_error is None:
                event(logger, "registry_unreachable", logging.ERROR, error=str(exc))
            self._redis_error = str(exc)
            return
        if self._redis_error is not None:
            event(logger, "registry_back")
            self._redis_error = None
        for name, text in zip(names, entries, strict=True):
            if text is None:
                self.mark_down(name, "registry entry expired")
                continue
            try:
                address, legs, boot_id = _registered(str(text))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.mark_down(name, f"bad registry entry: {type(exc).__name__}: {exc}")
                continue
            health = self._health.setdefault(name, GatewayHealth(address))
            health.address, health.boot_id = address, boot_id
            self._up(name, health, legs)


def _registered(text: str) -> tuple[GatewayAddress, int, str]:
    """Address, legs and boot id of a ``wxmgw:gateway:{name}`` entry."""
    entry = json.loads(text)
    address = GatewayAddress(str(entry["host"]), int(entry["port"]), int(entry["statusPort"]))
    return address, int(entry.get("legs", 0)), str(entry.get("bootId", ""))
