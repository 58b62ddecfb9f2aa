"""Conference state of the callroute front: pure, no I/O.

A :class:`Conference` lives on one wxmgw (seed: every mini-program of a
conference on the same gateway) and holds its mini-program members, the
member videos pushed to the live server (:class:`Push`, one per watched
member, however many watch it) and who asked for a member's video *with* the
mix (``avsync``). Every RTMP stream name is a random 128-bit token, so a
name cannot be guessed from a uuid; :meth:`Rooms.stream` answers the live
server's publish/play checks.

State changes are applied optimistically by the front before it calls the
gateway and undone when the call fails; the operations here are therefore
small and each has its inverse (``join``/``leave``, ``watch``/``unwatch``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from callroute.protocol import AlreadyJoined, NotWatching


def new_token() -> str:
    """A stream name: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def new_ssrc() -> int:
    """A random non-zero 32-bit SSRC (RFC 3550 section 8.1: chosen at random)."""
    return secrets.randbelow(0xFFFFFFFF) + 1


class StreamKind(StrEnum):
    MEMBER = "member"
    """A mini-program publishes its camera; wxmgw pulls it."""
    MIX = "mix"
    """wxmgw publishes the conference audio for one mini-program."""
    VIDEO = "video"
    """wxmgw publishes one member's video for the mini-programs that asked for it."""


@dataclass(frozen=True, slots=True)
class Stream:
    kind: StreamKind
    conf_id: str
    uuid: str


@dataclass(slots=True)
class Member:
    uuid: str
    ssrc: int
    token: str
    mix_token: str
    crgwid: str = ""


@dataclass(slots=True)
class Push:
    """A member's video pushed by wxmgw to ``<push-base>/<token>`` (one StartPush)."""

    uuid: str
    token: str
    watchers: set[str] = field(default_factory=set)
    ports: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class Departure:
    """What a member leaving leaves for the gateway to stop."""

    member: Member
    own_push: Push | None
    unwatched: list[Push]
    avsync_cleared: list[str]


@dataclass(slots=True)
class Conference:
    conf_id: str
    gateway: str
    members: dict[str, Member] = field(default_factory=dict)
    pushes: dict[str, Push] = field(default_factory=dict)
    avsync: dict[str, str] = field(default_factory=dict)
    """watcher uuid -> uuid of the member whose video rides in the watcher's mix."""

    def member_by_ssrc(self, ssrc: int) -> Member | None:
        return next((m for m in self.members.values() if m.ssrc == ssrc), None)


class Rooms:
    """Every conference of this front, indexed by confId, member uuid and stream name."""

    def __init__(
        self,
        token_factory: Callable[[], str] = new_token,
        ssrc_factory: Callable[[], int] = new_ssrc,
    ) -> None:
        self._token = token_factory
        self._ssrc = ssrc_factory
        self.conferences: dict[str, Conference] = {}
        self._where: dict[str, str] = {}
        self._streams: dict[str, Stream] = {}

    def get(self, conf_id: str) -> Conference | None:
        return self.conferences.get(conf_id)

    def where(self, uuid: str) -> str | None:
        """The confId ``uuid`` is a member of."""
        return self._where.get(uuid)

    def stream(self, name: str) -> Stream | None:
        return self._streams.get(name)

    def open(self, conf_id: str, gateway: str) -> Conference:
        """The conference ``conf_id``, created on ``gateway`` when it has none yet."""
        conf = self.conferences.get(conf_id)
        if conf is None:
            conf = self.conferences[conf_id] = Conference(conf_id, gateway)
        return conf

    def close_if_empty(self, conf: Conference) -> bool:
        """Forget a conference without members; its gateway affinity ends with it."""
        if conf.members or self.conferences.get(conf.conf_id) is not conf:
            return False
        del self.conferences[conf.conf_id]
        return True

    def _issue(self, kind: StreamKind, conf: Conference, uuid: str) -> str:
        token = self._token()
        while token in self._streams:
            token = self._token()
        self._streams[token] = Stream(kind, conf.conf_id, uuid)
        return token

    def join(self, conf: Conference, uuid: str, crgwid: str = "") -> Member:
        """Add a member with an SSRC unique in the conference and its two stream names."""
        joined = self._where.get(uuid)
        if joined is not None:
            raise AlreadyJoined(f"{uuid} is already in conference {joined}")
        taken = {m.ssrc for m in conf.members.values()}
        ssrc = self._ssrc()
        while ssrc in taken:
            ssrc = self._ssrc()
        member = Member(
            uuid=uuid,
            ssrc=ssrc,
            token=self._issue(StreamKind.MEMBER, conf, uuid),
            mix_token=self._issue(StreamKind.MIX, conf, uuid),
            crgwid=crgwid,
        )
        conf.members[uuid] = member
        self._where[uuid] = conf.conf_id
        return member

    def watch(self, conf: Conference, watcher: str, uuid: str) -> tuple[Push, bool]:
        """``watcher`` sees member ``uuid``: its push, and whether it is new (to start)."""
        push = conf.pushes.get(uuid)
        created = push is None
        if push is None:
            push = conf.pushes[uuid] = Push(uuid, self._issue(StreamKind.VIDEO, conf, uuid))
        push.watchers.add(watcher)
        return push, created

    def watched(self, conf: Conference, watcher: str, uuid: str) -> Push:
        """The push of member ``uuid`` that ``watcher`` watches; NotWatching otherwise."""
        push = conf.pushes.get(uuid)
        if push is None or watcher not in push.watchers:
            raise NotWatching(f"{watcher} does not watch {uuid}")
        return push

    def unwatch(self, conf: Conference, watcher: str, uuid: str) -> Push | None:
        """Undo :meth:`watch`; returns the push when nobody watches it any more (to stop)."""
        push = self.watched(conf, watcher, uuid)
        push.watchers.discard(watcher)
        if push.watchers:
            return None
        self._drop_push(conf, push)
        return push

    def _drop_push(self, conf: Conference, push: Push) -> None:
        del conf.pushes[push.uuid]
        self._streams.pop(push.token, None)

    def leave(self, conf: Conference, uuid: str) -> Departure:
        """Remove a member with everything it watched or was watched by."""
        member = conf.members.pop(uuid)
        del self._where[uuid]
        self._streams.pop(member.token, None)
        self._streams.pop(member.mix_token, None)
        own = conf.pushes.get(uuid)
        if own is not None:
            self._drop_push(conf, own)
        unwatched = []
        for push in list(conf.pushes.values()):
            if uuid in push.watchers:
                push.watchers.discard(uuid)
                if not push.watchers:
                    self._drop_push(conf, push)
                    unwatched.append(push)
        conf.avsync.pop(uuid, None)
        cleared = [w for w, target in conf.avsync.items() if target == uuid]
        for watcher in cleared:
            del conf.avsync[watcher]
        return Departure(member, own, unwatched, cleared)

    def counts(self) -> dict[str, int]:
        """Sizes for the front's state endpoint."""
        return {
            "conferences": len(self.conferences),
            "members": len(self._where),
            "pushes": sum(len(c.pushes) for c in self.conferences.values()),
            "streams": len(self._streams),
        }
