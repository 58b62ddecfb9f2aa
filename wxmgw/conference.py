"""Conference rooms and the Rtmp2rtp / Rtp2rtmp maps (MISSION.md §3).

The registry is the only place that creates and stops legs. Every operation
runs under one lock: a leg is either fully started and registered, or
stopped with everything it had allocated released.

With a :class:`~wxmgw.journal.Journal`, every change to the legs is
journaled, and :meth:`Registry.restore` starts the journaled legs again on
their RTP ports when the gateway starts.

A room's MAS-less mini-programs (StartPull with an empty ``masIp``) are mixed
by its :class:`~wxmgw.legs.roommix.RoomMixer`: each one's mix stream carries
the others. AvSync hands a member's video channel to a mini-program's mix
stream; the channel is the uuid's, whichever leg publishes on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gevent.lock import RLock

from wxmgw import requests as rq
from wxmgw.errors import Code, Conflict, NoLocalSource, UnknownLeg, WxmgwError
from wxmgw.journal import Journal, JournalUnavailable, Legs, PullEntry, PushEntry
from wxmgw.legs.base import Leg, LegContext
from wxmgw.legs.roommix import RoomMixer
from wxmgw.legs.rtmp2rtp import Rtmp2rtp
from wxmgw.legs.rtp2rtmp import Rtp2rtmp
from wxmgw.logs import event

logger = logging.getLogger(__name__)

L = TypeVar("L", bound=Leg)


@dataclass(slots=True)
class Room:
    """One conference: its mini-programs (Rtmp2rtp) and the members shown to them (Rtp2rtmp).

    ``mixer`` mixes its MAS-less mini-programs; it exists while it has any.
    """

    conf_id: str
    members: set[str] = field(default_factory=set)
    pushes: set[str] = field(default_factory=set)
    mixer: RoomMixer | None = None

    @property
    def empty(self) -> bool:
        return not self.members and not self.pushes


class Registry:
    def __init__(self, ctx: LegContext, journal: Journal | None = None) -> None:
        self.ctx = ctx
        self.journal = journal
        #: Journaled legs that could not start again, for /monitor/state.
        self.restore_failed: list[dict[str, Any]] = []
        self.rtmp2rtp: dict[str, Rtmp2rtp] = {}
        self.rtp2rtmp: dict[str, Rtp2rtmp] = {}
        self.rooms: dict[str, Room] = {}
        self._lock = RLock()

    # -- StartPull / StopPull -------------------------------------------------

    def start_pull(self, params: rq.StartPull, ports: list[int] | None = None) -> None:
        with self._lock:
            running = self.rtmp2rtp.get(params.uuid)
            if running is not None:
                if running.params == params:
                    return
                raise Conflict(f"uuid {params.uuid} already pulls with other parameters")
            leg = self._start(Rtmp2rtp(params, self.ctx), ports)
            self.rtmp2rtp[leg.uuid] = leg
            room = self._room(leg.conf_id)
            room.members.add(leg.uuid)
            if params.mas_less:
                assert leg.channels is not None
                if room.mixer is None:
                    room.mixer = RoomMixer(room.conf_id)
                room.mixer.add(leg.uuid, leg.channels.audio, leg.mix)
            self._journal()

    def stop_pull(self, ref: rq.LegRef) -> None:
        with self._lock:
            leg = self._find(self.rtmp2rtp, ref, "Rtmp2rtp")
            del self.rtmp2rtp[leg.uuid]
            room = self.rooms.get(leg.conf_id)
            if room is not None and room.mixer is not None:
                room.mixer.remove(leg.uuid)
                if not room.mixer:
                    room.mixer = None
            self._leave(leg.conf_id, members=leg.uuid)
            leg.stop()
            self._forget_sync(leg.uuid)
            self._journal()

    # -- StartPush / StopPush -------------------------------------------------

    def start_push(
        self, params: rq.StartPush, ports: list[int] | None = None, requesters: Iterable[str] = ()
    ) -> tuple[int, int]:
        with self._lock:
            running = self.rtp2rtmp.get(params.uuid)
            if running is not None:
                if _push_key(running.params) != _push_key(params):
                    raise Conflict(f"uuid {params.uuid} is already pushed with other parameters")
                if params.req_uuid not in running.requesters:
                    running.requesters.add(params.req_uuid)
                    running.log("push_shared", reqUuid=params.req_uuid)
                    self._journal()
                return running.rtp_ports
            if params.weixin:
                source = self.rtmp2rtp.get(params.uuid)
                if source is None or source.conf_id != params.conf_id:
                    raise NoLocalSource(
                        f"mini-program {params.uuid} has no Rtmp2rtp in conference {params.conf_id}"
                    )
            leg = Rtp2rtmp(params, self.ctx)
            leg.requesters.update(requesters or [params.req_uuid])
            self._start(leg, ports)
            self.rtp2rtmp[leg.uuid] = leg
            self._room(leg.conf_id).pushes.add(leg.uuid)
            self._journal()
            return leg.rtp_ports

    def stop_push(self, ref: rq.LegRef) -> None:
        with self._lock:
            leg = self._find(self.rtp2rtmp, ref, "Rtp2rtmp")
            del self.rtp2rtmp[leg.uuid]
            self._leave(leg.conf_id, pushes=leg.uuid)
            leg.stop()
            self._forget_sync(leg.uuid)
            self._journal()

    # -- AvSync -----------------------------------------------------------------

    def av_sync(self, params: rq.AvSync) -> None:
        """Put ``syncUuid``'s video (none when empty) into ``uuid``'s mix stream."""
        with self._lock:
            leg = self._find(self.rtmp2rtp, rq.LegRef(params.uuid, params.conf_id), "Rtmp2rtp")
            sync = params.sync_uuid
            channels = self.ctx.channels.get(sync) if sync else None
            if sync and (
                channels is None or (sync not in self.rtp2rtmp and sync not in self.rtmp2rtp)
            ):
                raise UnknownLeg(f"syncUuid {sync} has no leg on this gateway")
            leg.av_sync(sync, channels.video if channels else None)
            self._journal()

    # -- journal ------------------------------------------------------------------

    def restore(self) -> None:
        """Start the journaled legs again on their ports: pulls, then pushes, then AvSync.

        A leg that cannot start (its ports taken, its parameters refused) is
        logged and left out; the others run.
        """
        if self.journal is None:
            return
        legs = self._owned(self.journal.load())
        started = [
            *(self._restore(p, self.start_pull, p.params, p.ports) for p in legs.pulls),
            *(self._restore(p, self.start_push, p.params, p.ports, p.requesters)
              for p in legs.pushes),
        ]
        for pull in legs.pulls:
            if pull.sync_uuid and pull.params.uuid in self.rtmp2rtp:
                sync = rq.AvSync(pull.params.uuid, pull.params.conf_id, pull.sync_uuid)
                self._restore(pull, self.av_sync, sync)
        event(logger, "journal_restored", legs=sum(started), failed=started.count(False),
              journal=self.journal.where)
        self._journal()

    def _owned(self, legs: Legs) -> Legs:
        """The journaled legs of conferences that no front has moved to another gateway."""
        assert self.journal is not None
        moved: dict[str, str | None] = {}
        entries: list[PullEntry | PushEntry] = [*legs.pulls, *legs.pushes]
        for entry in entries:
            conf_id = entry.params.conf_id
            if conf_id not in moved:
                try:
                    moved[conf_id] = self.journal.moved_to(conf_id)
                except JournalUnavailable as e:  # nobody to ask: restore, the front reconciles
                    event(logger, "ownership_unknown", logging.WARNING, confId=conf_id,
                          error=str(e))
                    moved[conf_id] = None
                if moved[conf_id] is not None:
                    event(logger, "conference_not_restored", confId=conf_id,
                          movedTo=moved[conf_id])
        return Legs(
            [p for p in legs.pulls if moved[p.params.conf_id] is None],
            [p for p in legs.pushes if moved[p.params.conf_id] is None],
        )

    def _restore(
        self, entry: PullEntry | PushEntry, start: Callable[..., object], *args: Any
    ) -> bool:
        try:
            start(*args)
        except Exception as e:  # nothing a journal holds may keep the gateway from starting
            p = entry.params
            code = e.code if isinstance(e, WxmgwError) else Code.INTERNAL
            failure: dict[str, Any] = {
                "confId": p.conf_id, "uuid": p.uuid, "ports": entry.ports, "code": int(code),
                "error": f"{type(e).__name__}: {e}",
            }
            self.restore_failed.append(failure)
            event(logger, "leg_restore_failed", logging.ERROR, **failure)
            return False
        return True

    def _journal(self) -> None:
        if self.journal is None:
            return
        self.journal.save(Legs(
            [PullEntry(leg.params, leg.ports, leg.sync_uuid) for leg in self.rtmp2rtp.values()],
            [PushEntry(leg.params, leg.ports, sorted(leg.requesters))
             for leg in self.rtp2rtmp.values()],
        ))

    # -- whole gateway ----------------------------------------------------------

    def stop_all(self) -> None:
        with self._lock:
            legs: list[Leg] = [*self.rtp2rtmp.values(), *self.rtmp2rtp.values()]
            self.rtp2rtmp.clear()
            self.rtmp2rtp.clear()
            for room in self.rooms.values():
                if room.mixer is not None:
                    room.mixer.close()
            self.rooms.clear()
            for leg in legs:
                leg.stop()

    def legs(self) -> list[Leg]:
        return [*self.rtmp2rtp.values(), *self.rtp2rtmp.values()]

    def snapshot(self) -> dict[str, Any]:
        return {
            "legs": [leg.snapshot() for leg in self.legs()],
            "rooms": [
                {
                    "confId": r.conf_id,
                    "members": sorted(r.members),
                    "pushes": sorted(r.pushes),
                    **({"mixer": r.mixer.stats()} if r.mixer is not None else {}),
                }
                for r in self.rooms.values()
            ],
            "ports": {"inUse": self.ctx.ports.in_use, "capacity": self.ctx.ports.capacity},
            "restoreFailed": self.restore_failed,
            **({"journal": {"where": self.journal.where, "writes": self.journal.writes,
                            "errors": self.journal.errors}} if self.journal else {}),
            "load": {"legs": len(self.rtmp2rtp) + len(self.rtp2rtmp)},
        }

    # -- helpers ----------------------------------------------------------------

    def _start(self, leg: L, ports: list[int] | None = None) -> L:
        leg.wanted_ports = list(ports or [])
        try:
            leg.start()
        except BaseException:
            leg.stop()
            raise
        return leg

    def _find(self, legs: dict[str, L], ref: rq.LegRef, what: str) -> L:
        leg = legs.get(ref.uuid)
        if leg is None:
            raise UnknownLeg(f"no {what} for uuid {ref.uuid}")
        if leg.conf_id != ref.conf_id:
            raise Conflict(
                f"{what} {ref.uuid} belongs to conference {leg.conf_id}, not {ref.conf_id}"
            )
        return leg

    def _forget_sync(self, uuid: str) -> None:
        """A stopped member's video can no longer be synced into anybody's mix stream."""
        if uuid in self.rtmp2rtp or uuid in self.rtp2rtmp:
            return
        for leg in self.rtmp2rtp.values():
            if leg.sync_uuid == uuid:
                leg.av_sync("", None, reason=f"{uuid} stopped")

    def _room(self, conf_id: str) -> Room:
        room = self.rooms.get(conf_id)
        if room is None:
            room = self.rooms[conf_id] = Room(conf_id)
            event(logger, "room_opened", confId=conf_id)
        return room

    def _leave(self, conf_id: str, *, members: str = "", pushes: str = "") -> None:
        room = self.rooms.get(conf_id)
        if room is None:
            return
        room.members.discard(members)
        room.pushes.discard(pushes)
        if room.empty:
            del self.rooms[conf_id]
            event(logger, "room_closed", confId=conf_id)


def _push_key(p: rq.StartPush) -> tuple[Any, ...]:
    """What must match for a second StartPush to share the running push (not reqUuid)."""
    return (p.conf_id, p.push_url, p.audio, p.video, p.weixin)
