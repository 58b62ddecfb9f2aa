"""Conference state of the callroute front: pure, no I/O.

A :class:`Conference` lives on one wxmgw (seed: every mini-program of a
conference on the same gateway) and holds its mini-program members, the
member videos pushed to the live server (:class:`Push`, one per watched
member, however many watch it) and who asked for a member's video *with* the
mix (``avsync``). Every RTMP stream name is a random 128-bit token, so a
name cannot be guessed from a uuid; :meth:`Rooms.stream` answers the live
server's publish/play checks.

Where conferences are kept is a :class:`Store` (:mod:`callroute.store`: in
this process, or in Redis for a cluster of fronts); :class:`Rooms` is the one
logic over either. A conference is read with :meth:`Rooms.get` (a working
copy), changed and written back with :meth:`Rooms.save`, under
:meth:`Rooms.hold`. The indexes the store keeps beside the conferences
(member uuid -> confId, stream name -> :class:`Stream`) are derived from the
conference at each save, never changed on their own, so they cannot drift
from it; the save is where a uuid already in another conference is refused.

State changes are applied optimistically by the front before it calls the
gateway and undone when the call fails; the operations here are therefore
small and each has its inverse (``join``/``leave``, ``watch``/``unwatch``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from callroute.protocol import AlreadyJoined, CallrouteError, NotWatching


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


@dataclass(frozen=True, slots=True)
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


@dataclass(slots=True)
class Departure:
    """What a member leaving leaves for the gateway to stop."""

    member: Member
    own_push: Push | None
    unwatched: list[Push]
    avsync_cleared: list[str]


@dataclass(frozen=True, slots=True)
class Names:
    """What a conference puts in the store's indexes: its member uuids and stream names."""

    members: frozenset[str] = frozenset()
    streams: Mapping[str, Stream] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Changes:
    """How a save changes the indexes: uuids joined and left, stream names issued and revoked."""

    joined: frozenset[str]
    left: frozenset[str]
    issued: Mapping[str, Stream]
    revoked: frozenset[str]

    @classmethod
    def between(cls, old: Names, new: Names) -> Changes:
        return cls(
            joined=new.members - old.members,
            left=old.members - new.members,
            issued={t: s for t, s in new.streams.items() if t not in old.streams},
            revoked=frozenset(old.streams.keys() - new.streams.keys()),
        )


@dataclass(slots=True)
class Conference:
    conf_id: str
    gateway: str
    """The name of the wxmgw it runs on (a :class:`~callroute.config.GatewayAddress` name)."""
    members: dict[str, Member] = field(default_factory=dict)
    pushes: dict[str, Push] = field(default_factory=dict)
    avsync: dict[str, str] = field(default_factory=dict)
    """watcher uuid -> uuid of the member whose video rides in the watcher's mix."""
    saved: Names = field(default_factory=Names, compare=False, repr=False)
    """What the store's indexes hold for it (as last read or saved)."""

    def copy(self) -> Conference:
        """A copy to change apart from this one (members are immutable, pushes are not)."""
        return Conference(
            self.conf_id, self.gateway, dict(self.members),
            {u: Push(p.uuid, p.token, set(p.watchers)) for u, p in self.pushes.items()},
            dict(self.avsync), self.saved,
        )

    def member_by_ssrc(self, ssrc: int) -> Member | None:
        return next((m for m in self.members.values() if m.ssrc == ssrc), None)

    def names(self) -> Names:
        streams = {}
        for m in self.members.values():
            streams[m.token] = Stream(StreamKind.MEMBER, self.conf_id, m.uuid)
            streams[m.mix_token] = Stream(StreamKind.MIX, self.conf_id, m.uuid)
        for p in self.pushes.values():
            streams[p.token] = Stream(StreamKind.VIDEO, self.conf_id, p.uuid)
        return Names(frozenset(self.members), streams)


class NameTaken(CallrouteError):
    """A stream name issued for a conference is another's (a 2^-128 chance): nothing was
    saved, and asking again issues other names."""


class Store(Protocol):
    """Where conferences are kept: :class:`callroute.store.MemoryStore` or ``RedisStore``.

    Every method may raise :class:`~callroute.protocol.StoreUnavailable`.
    """

    def hold(self, conf_id: str) -> AbstractContextManager[None]:
        """Exclusive use of conference ``conf_id`` (across fronts, for a shared store)."""
        ...

    def load(self, conf_id: str) -> Conference | None:
        """A copy of the conference, with ``saved`` set; only :meth:`commit` keeps changes."""
        ...

    def commit(self, conf: Conference, changes: Changes) -> None:
        """Write ``conf`` and ``changes`` to the indexes at once; a conference without
        members is deleted. Nothing is written, and AlreadyJoined raised, when a joined
        uuid is a member of another conference (:class:`NameTaken` for an issued name
        that is another's)."""
        ...

    def where(self, uuid: str) -> str | None: ...

    def stream(self, name: str) -> Stream | None: ...

    def counts(self) -> dict[str, int]:
        """``conferences``, ``members`` and ``streams`` (stream names issued)."""
        ...

    def conferences_on(self, gateway: str) -> set[str]:
        """The confIds placed on ``gateway`` (for reconciling it with what the gateway runs)."""
        ...

    def claim(self, name: str, ttl: float) -> bool:
        """Whether this front reconciles gateway ``name`` for the next ``ttl`` seconds."""
        ...


class Rooms:
    """Every conference of the store, indexed by confId, member uuid and stream name."""

    def __init__(
        self,
        store: Store,
        token_factory: Callable[[], str] = new_token,
        ssrc_factory: Callable[[], int] = new_ssrc,
    ) -> None:
        self.store = store
        self._token = token_factory
        self._ssrc = ssrc_factory

    def hold(self, conf_id: str) -> AbstractContextManager[None]:
        return self.store.hold(conf_id)

    def get(self, conf_id: str) -> Conference | None:
        return self.store.load(conf_id)

    def where(self, uuid: str) -> str | None:
        """The confId ``uuid`` is a member of."""
        return self.store.where(uuid)

    def stream(self, name: str) -> Stream | None:
        return self.store.stream(name)

    def open(self, conf_id: str, gateway: str) -> Conference:
        """A new conference on ``gateway``, stored by its first :meth:`save` with a member."""
        return Conference(conf_id, gateway)

    def save(self, conf: Conference) -> None:
        """Store ``conf`` and its names; one without members is forgotten, and with it
        its gateway affinity. AlreadyJoined if a new member is in another conference;
        nothing is stored then."""
        saved, conf.saved = conf.saved, conf.names()
        try:
            self.store.commit(conf, Changes.between(saved, conf.saved))
        except BaseException:
            conf.saved = saved
            raise

    def _issue(self, conf: Conference, *pending: str) -> str:
        """A stream name new to ``conf``; 128 random bits are another conference's only
        in theory, and then the save refuses it (:class:`NameTaken`)."""
        taken = {*conf.names().streams, *pending}
        token = self._token()
        while token in taken:
            token = self._token()
        return token

    def join(self, conf: Conference, uuid: str, crgwid: str = "") -> Member:
        """Add a member with an SSRC unique in the conference and its two stream names
        (whether it is in another conference is for :meth:`save` to tell)."""
        if uuid in conf.members:
            raise AlreadyJoined(f"{uuid} is already in conference {conf.conf_id}")
        taken = {m.ssrc for m in conf.members.values()}
        ssrc = self._ssrc()
        while ssrc in taken:
            ssrc = self._ssrc()
        token = self._issue(conf)
        member = Member(uuid, ssrc, token, self._issue(conf, token), crgwid)
        conf.members[uuid] = member
        return member

    def watch(self, conf: Conference, watcher: str, uuid: str) -> tuple[Push, bool]:
        """``watcher`` sees member ``uuid``: its push, and whether it is new (to start)."""
        push = conf.pushes.get(uuid)
        created = push is None
        if push is None:
            push = conf.pushes[uuid] = Push(uuid, self._issue(conf))
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
        del conf.pushes[uuid]
        return push

    def leave(self, conf: Conference, uuid: str) -> Departure:
        """Remove a member with everything it watched or was watched by."""
        member = conf.members.pop(uuid)
        own = conf.pushes.pop(uuid, None)
        unwatched = []
        for push in list(conf.pushes.values()):
            if uuid in push.watchers:
                push.watchers.discard(uuid)
                if not push.watchers:
                    del conf.pushes[push.uuid]
                    unwatched.append(push)
        conf.avsync.pop(uuid, None)
        cleared = [w for w, target in conf.avsync.items() if target == uuid]
        for watcher in cleared:
            del conf.avsync[watcher]
        return Departure(member, own, unwatched, cleared)

    def counts(self) -> dict[str, int]:
        """Sizes for the front's state endpoint."""
        counts = self.store.counts()
        # every member has two stream names (camera, mix), every push one
        return {**counts, "pushes": counts["streams"] - 2 * counts["members"]}
