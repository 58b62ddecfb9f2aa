"""The front's reconciliation: each gateway runs what its conferences need, and no more.

Every ``interval`` seconds, for each gateway whose reconciliation lease it
holds (:meth:`~callroute.rooms.Store.claim`: one front per gateway across
the cluster), the front reads the gateway's ``/monitor/state`` and compares
its legs with the conferences placed there:

* a member without its Rtmp2rtp, a watched member without its Rtp2rtmp, a
  watcher whose mix lacks its AvSync video: started again
  (``leg_restarted``). A gateway restarted without its journal comes back
  this way; a start is idempotent on the gateway, so a leg started meanwhile
  by a request is not doubled.
* a leg no conference here needs (an orphan: a call whose client timed out,
  a conference moved away while its gateway was gone), seen on two passes in
  a row: stopped (``orphan_stopped``). Off with ``--keep-orphans``, for a
  gateway that something else (an MCS) drives too.
* a gateway that has not answered for ``move_after`` seconds: each of its
  conferences moves, all legs together, to the least-loaded healthy gateway
  (``conference_moved``). Stream names do not change, so the mini-programs'
  publishers and players carry on once the new gateway pulls and publishes
  them. A gateway that comes back finds its conferences gone: with Redis it
  does not restore them (:mod:`wxmgw.cluster`), otherwise they are orphans.

Each conference is compared and changed under its lease
(:meth:`~callroute.rooms.Rooms.hold`), as a request would be.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gevent

from callroute.front import Front
from callroute.gateways import StateFetcher, fetch_state
from callroute.protocol import CallrouteError, GatewayUnavailable, StoreUnavailable
from callroute.rooms import Conference
from wxmgw.logs import event

logger = logging.getLogger(__name__)

#: A leg as the gateway lists it: (kind, uuid, confId).
LegKey = tuple[str, str, str]
PULL, PUSH = "rtmp2rtp", "rtp2rtmp"


@dataclass(slots=True)
class Reconciler:
    """See the module docstring; :meth:`run_once` is one pass over every gateway."""

    front: Front
    interval: float = 1.0
    move_after: float = 5.0
    stop_orphans: bool = True
    fetch: StateFetcher = fetch_state
    timeout: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _silent_since: dict[str, float] = field(default_factory=dict)
    _suspects: dict[str, set[LegKey]] = field(default_factory=dict)

    def run_forever(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.run_once()

    def run_once(self) -> None:
        gateways = self.front.gateways
        store = self.front.rooms.store
        for name in gateways.names():
            try:
                placed = store.conferences_on(name)
                if not placed and not gateways.is_healthy(name):
                    continue  # nothing to keep there, nothing to move
                if store.claim(name, 3 * self.interval):
                    self._gateway(name, placed)
            except StoreUnavailable as exc:
                event(logger, "reconcile_skipped", logging.WARNING, error=str(exc))
                return

    def _gateway(self, name: str, placed: set[str]) -> None:
        try:
            running = _legs(self.fetch(self.front.gateways.address(name), self.timeout))
        except (OSError, ValueError, GatewayUnavailable) as exc:
            self.front.gateways.mark_down(name, f"{type(exc).__name__}: {exc}")
            since = self._silent_since.setdefault(name, self.clock())
            if placed and self.clock() - since >= self.move_after:
                self._move_away(name, placed)
            return
        self._silent_since.pop(name, None)
        needed: set[LegKey] = set()
        for conf_id in placed:
            with self.front.rooms.hold(conf_id):
                conf = self.front.rooms.get(conf_id)
                if conf is not None and conf.gateway == name:
                    needed |= self._converge(conf, running)
        if self.stop_orphans:
            self._stop_orphans(name, set(running) - needed)

    def _converge(self, conf: Conference, running: dict[LegKey, dict[str, Any]]) -> set[LegKey]:
        """Start what ``conf`` needs and its gateway does not run; the legs it needs."""
        api = self.front.gateway_api(conf.gateway)
        needed: set[LegKey] = set()
        for member in conf.members.values():
            key = (PULL, member.uuid, conf.conf_id)
            needed.add(key)
            if key not in running:
                self._start(conf, key, partial(self.front.start_pull, api, conf, member))
        for push in conf.pushes.values():
            key = (PUSH, push.uuid, conf.conf_id)
            needed.add(key)
            if key not in running:
                self._start(conf, key, partial(self.front.start_push, api, conf, push,
                                               min(push.watchers)))
        for watcher, target in conf.avsync.items():
            leg = running.get((PULL, watcher, conf.conf_id))
            if leg is None or leg.get("syncUuid") != target:
                self._start(conf, ("avsync", watcher, conf.conf_id), partial(
                    api.av_sync, uuid=watcher, conf_id=conf.conf_id, sync_uuid=target))
        return needed

    def _start(self, conf: Conference, key: LegKey, call: Callable[[], object]) -> None:
        kind, uuid, conf_id = key
        try:
            call()
        except CallrouteError as exc:
            event(logger, "leg_restart_failed", logging.WARNING, confId=conf_id, uuid=uuid,
                  leg=kind, gateway=conf.gateway, code=exc.code.value, error=str(exc))
            return
        event(logger, "leg_restarted", confId=conf_id, uuid=uuid, leg=kind, gateway=conf.gateway)

    def _stop_orphans(self, name: str, orphans: set[LegKey]) -> None:
        """Stop the legs found unneeded on this pass and the one before; suspect the others."""
        confirmed = orphans & self._suspects.get(name, set())
        self._suspects[name] = orphans - confirmed
        if not confirmed:
            return
        api = self.front.gateway_api(name)
        for kind, uuid, conf_id in sorted(confirmed):
            stop = api.stop_pull if kind == PULL else api.stop_push
            try:
                stop(uuid=uuid, conf_id=conf_id)
            except CallrouteError as exc:
                event(logger, "orphan_not_stopped", logging.WARNING, confId=conf_id, uuid=uuid,
                      leg=kind, gateway=name, error=str(exc))
                continue
            event(logger, "orphan_stopped", confId=conf_id, uuid=uuid, leg=kind, gateway=name)

    def _move_away(self, name: str, placed: set[str]) -> None:
        """Every conference of the silent gateway ``name`` to a healthy one, legs and all."""
        rooms = self.front.rooms
        for conf_id in sorted(placed):
            with rooms.hold(conf_id):
                conf = rooms.get(conf_id)
                if conf is None or conf.gateway != name:
                    continue
                try:
                    conf.gateway = self.front.gateways.pick()
                except GatewayUnavailable as exc:
                    event(logger, "conference_not_moved", logging.ERROR, confId=conf_id,
                          gateway=name, error=str(exc))
                    return
                rooms.save(conf)
                event(logger, "conference_moved", logging.WARNING, confId=conf_id,
                      gateway=name, to=conf.gateway, members=len(conf.members),
                      pushes=len(conf.pushes), silentFor=round(self.clock() -
                                                                self._silent_since[name], 1))
                self._converge(conf, {})


def _legs(state: Any) -> dict[LegKey, dict[str, Any]]:
    """The legs of a gateway's ``/monitor/state``, by (kind, uuid, confId)."""
    if not isinstance(state, dict) or not isinstance(state.get("legs"), list):
        raise ValueError(f"no legs in the state: {str(state)[:200]}")
    legs: dict[LegKey, dict[str, Any]] = {}
    for leg in state["legs"]:
        if isinstance(leg, dict) and leg.get("kind") in (PULL, PUSH):
            legs[(str(leg["kind"]), str(leg.get("uuid")), str(leg.get("confId")))] = leg
    return legs

