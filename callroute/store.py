"""Where the front keeps its conferences: in this process, or in Redis for many fronts.

Both stores keep the same things (:class:`~callroute.rooms.Store`): each
conference with its gateway, members, pushes and AvSync choices, and two
indexes derived from them at every save: member uuid -> confId (a uuid is in
one conference at most) and stream name -> :class:`~callroute.rooms.Stream`
(what ``on_publish``/``on_play`` ask). :class:`MemoryStore` is the embedded
default of one front. :class:`RedisStore` lets any number of fronts share
them: a front then holds nothing that matters between requests.

Keys in Redis (all under ``wxmgw:``, beside the gateways' keys of
:mod:`wxmgw.cluster`):

* ``wxmgw:conf:{confId}``: the conference, a JSON object ``{"confId",
  "gateway", "members": {uuid: {"ssrc", "token", "mixToken", "crgwid"}},
  "pushes": {uuid: {"token", "watchers": [uuid, ...]}}, "avsync": {watcher:
  uuid}}``. ``gateway`` is the name of its wxmgw in the registry; a gateway
  reads it to tell whether a conference it journaled has moved away.
* ``wxmgw:members``: hash member uuid -> confId.
* ``wxmgw:streams``: hash stream name -> ``[kind, confId, uuid]`` (JSON).
* ``wxmgw:conferences``: set of confIds; ``wxmgw:placed:{gateway}``: set of the
  confIds placed on that gateway.
* ``wxmgw:lease:{confId}``: the lease of the front changing that conference.
* ``wxmgw:reconcile:{gateway}``: the lease of the front reconciling that
  gateway (:mod:`callroute.reconcile`).

Every key of a conference goes in the same Lua script call that removes its
last member: nothing of an ended conference stays. Nothing expires while it
runs: a conference sends no message for hours once its members have joined,
so a TTL would forget running conferences.

**Mutations are serialized by a per-conference lease**, not by a
transaction: a mutation spans Thrift calls to the gateway and, when one
fails, a rollback, so it cannot be one MULTI or one script. A front takes
``SET wxmgw:lease:{confId} <random> NX PX <ttl>`` (waiting while another
front holds it), renews it every third of the TTL while it works, and
deletes it only if it still holds it (a Lua compare-and-delete). The save
itself is a Lua script that first checks the lease is still this front's
(a front that stalled past its TTL writes nothing) and refuses a uuid that
another conference took meanwhile. A front killed mid-mutation blocks its
conference for one TTL at most.

Redis unreachable: every call raises :class:`~callroute.protocol.StoreUnavailable`
(answered 117) before the front has touched a gateway; redis-py reconnects by
itself on the next request once Redis is back.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import gevent
import redis
from gevent.lock import Semaphore

from callroute.protocol import AlreadyJoined, StoreUnavailable
from callroute.rooms import Changes, Conference, Member, NameTaken, Push, Stream, StreamKind
from wxmgw.access import redact_token
from wxmgw.cluster import PREFIX, conference_key
from wxmgw.logs import event

logger = logging.getLogger(__name__)

MEMBERS = PREFIX + "members"
STREAMS = PREFIX + "streams"
CONFERENCES = PREFIX + "conferences"


def placed_key(gateway: str) -> str:
    return f"{PREFIX}placed:{gateway}"


def lease_key(conf_id: str) -> str:
    return f"{PREFIX}lease:{conf_id}"


def reconcile_key(gateway: str) -> str:
    return f"{PREFIX}reconcile:{gateway}"


@dataclass(slots=True)
class _Slot:
    lock: Semaphore = field(default_factory=Semaphore)
    users: int = 0


class KeyedLock:
    """One lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        slot = self._slots.setdefault(key, _Slot())
        slot.users += 1
        try:
            with slot.lock:
                yield
        finally:
            slot.users -= 1
            if not slot.users:
                del self._slots[key]


class MemoryStore:
    """The conferences of one front, in its memory (the embedded default)."""

    def __init__(self) -> None:
        self._locks = KeyedLock()
        self._conferences: dict[str, Conference] = {}
        self._where: dict[str, str] = {}
        self._streams: dict[str, Stream] = {}

    def hold(self, conf_id: str) -> AbstractContextManager[None]:
        return self._locks.hold(conf_id)

    def load(self, conf_id: str) -> Conference | None:
        conf = self._conferences.get(conf_id)
        return None if conf is None else conf.copy()

    def commit(self, conf: Conference, changes: Changes) -> None:
        for uuid in changes.joined:
            at = self._where.get(uuid, conf.conf_id)
            if at != conf.conf_id:
                raise AlreadyJoined(f"{uuid} is already in conference {at}")
        for name in changes.issued:
            if name in self._streams:
                raise NameTaken(f"stream name {redact_token(name)} is already issued")
        for uuid in changes.left:
            del self._where[uuid]
        self._where.update(dict.fromkeys(changes.joined, conf.conf_id))
        for name in changes.revoked:
            del self._streams[name]
        self._streams.update(changes.issued)
        if conf.members:
            self._conferences[conf.conf_id] = conf.copy()
        else:
            self._conferences.pop(conf.conf_id, None)

    def where(self, uuid: str) -> str | None:
        return self._where.get(uuid)

    def stream(self, name: str) -> Stream | None:
        return self._streams.get(name)

    def counts(self) -> dict[str, int]:
        return {"conferences": len(self._conferences), "members": len(self._where),
                "streams": len(self._streams)}

    def conferences_on(self, gateway: str) -> set[str]:
        return {c.conf_id for c in self._conferences.values() if c.gateway == gateway}

    def claim(self, name: str, ttl: float) -> bool:
        """The only front reconciles every gateway."""
        return True


def encode_conference(conf: Conference) -> str:
    """The JSON record of ``wxmgw:conf:{confId}`` (see the module docstring)."""
    return json.dumps({
        "confId": conf.conf_id,
        "gateway": conf.gateway,
        "members": {m.uuid: {"ssrc": m.ssrc, "token": m.token, "mixToken": m.mix_token,
                             "crgwid": m.crgwid} for m in conf.members.values()},
        "pushes": {p.uuid: {"token": p.token, "watchers": sorted(p.watchers)}
                   for p in conf.pushes.values()},
        "avsync": conf.avsync,
    }, separators=(",", ":"))


def decode_conference(text: str) -> Conference:
    record = json.loads(text)
    conf = Conference(
        record["confId"], record["gateway"],
        members={uuid: Member(uuid, m["ssrc"], m["token"], m["mixToken"], m["crgwid"])
                 for uuid, m in record["members"].items()},
        pushes={uuid: Push(uuid, p["token"], set(p["watchers"]))
                for uuid, p in record["pushes"].items()},
        avsync=dict(record["avsync"]),
    )
    conf.saved = conf.names()
    return conf


_COMMIT = """
-- KEYS: lease, conference, members, streams, conferences, placed on its gateway,
--       placed on the gateway it was on (another when the conference has moved)
-- ARGV: lease owner, confId, record ('' when it has no member left), changes
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('LEASE this front no longer holds the conference')
end
local changes = cjson.decode(ARGV[4])
for _, uuid in ipairs(changes.joined) do
  local at = redis.call('HGET', KEYS[3], uuid)
  if at and at ~= ARGV[2] then return {'member', uuid, at} end
end
for _, pair in ipairs(changes.issued) do
  if redis.call('HEXISTS', KEYS[4], pair[1]) == 1 then return {'name', pair[1]} end
end
for _, uuid in ipairs(changes.left) do redis.call('HDEL', KEYS[3], uuid) end
for _, uuid in ipairs(changes.joined) do redis.call('HSET', KEYS[3], uuid, ARGV[2]) end
for _, name in ipairs(changes.revoked) do redis.call('HDEL', KEYS[4], name) end
for _, pair in ipairs(changes.issued) do redis.call('HSET', KEYS[4], pair[1], pair[2]) end
if KEYS[7] ~= KEYS[6] then redis.call('SREM', KEYS[7], ARGV[2]) end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[5], ARGV[2])
  redis.call('SREM', KEYS[6], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('SADD', KEYS[5], ARGV[2])
  redis.call('SADD', KEYS[6], ARGV[2])
end
return 0
"""

_BEGIN = """
-- KEYS: lease, conference; ARGV: owner, TTL ms. The lease taken: {1, record or nil}.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2])}
end
return {0}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_CLAIM = """
-- KEYS: a reconciliation lease; ARGV: this front, TTL ms. 1 when this front holds it now.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(slots=True)
class _Lease:
    owner: str
    record: str | None
    """The conference as stored: read with the lease, then as this front saved it."""


@contextmanager
def _answering() -> Iterator[None]:
    """Redis failing or away: StoreUnavailable (117)."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreUnavailable(f"conference store: {type(exc).__name__}: {exc}") from None


class RedisStore:
    """The conferences of every front, in Redis (see the module docstring).

    ``lease_ttl``: seconds a front's lease on a conference lasts unless renewed
    (how long a front killed mid-mutation blocks it); ``lease_wait``: seconds
    a request waits for a conference another front holds before it answers 117.
    """

    def __init__(self, client: redis.Redis, *, lease_ttl: float = 5.0,
                 lease_wait: float = 15.0) -> None:
        self.client = client
        self._ttl_ms = max(1, int(lease_ttl * 1000))
        self._wait = lease_wait
        self._local = KeyedLock()
        self._held: dict[str, _Lease] = {}
        """The conferences this front holds now."""
        self._renewer: gevent.Greenlet | None = None
        self._begin = client.register_script(_BEGIN)
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._claim = client.register_script(_CLAIM)
        self._front = secrets.token_hex(8)

    @contextmanager
    def hold(self, conf_id: str) -> Iterator[None]:
        """This process's lock on ``conf_id`` first (no Redis traffic for local waiters),
        then the lease, taken with the conference read in one round trip."""
        with self._local.hold(conf_id):
            lease = self._acquire(conf_id)
            self._held[conf_id] = lease
            if self._renewer is None or self._renewer.dead:
                self._renewer = gevent.spawn(self._renew_forever)
            try:
                yield
            finally:
                del self._held[conf_id]
                try:
                    self._release(keys=[lease_key(conf_id)], args=[lease.owner])
                except redis.RedisError as exc:  # it expires by itself
                    event(logger, "lease_not_released", logging.WARNING, confId=conf_id,
                          error=str(exc))

    def _acquire(self, conf_id: str) -> _Lease:
        owner = secrets.token_hex(16)
        keys = [lease_key(conf_id), conference_key(conf_id)]
        deadline = time.monotonic() + self._wait
        delay = 0.002
        while True:
            with _answering():
                got = self._begin(keys=keys, args=[owner, self._ttl_ms])
            if got[0]:
                return _Lease(owner, None if len(got) < 2 or got[1] is None else str(got[1]))
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"conference {conf_id} stayed busy on another front for {self._wait:g} s")
            gevent.sleep(delay)
            delay = min(2 * delay, 0.05)

    def _renew_forever(self) -> None:
        while self._held:
            gevent.sleep(self._ttl_ms / 3000)
            for conf_id, lease in list(self._held.items()):
                try:
                    self._renew(keys=[lease_key(conf_id)], args=[lease.owner, self._ttl_ms])
                except redis.RedisError as exc:
                    event(logger, "lease_not_renewed", logging.WARNING, confId=conf_id,
                          error=str(exc))

    def load(self, conf_id: str) -> Conference | None:
        """Under :meth:`hold`, the conference as read with the lease (no round trip)."""
        lease = self._held.get(conf_id)
        if lease is not None:
            text = lease.record
        else:
            with _answering():
                found = self.client.get(conference_key(conf_id))
            text = None if found is None else str(found)
        return None if text is None else decode_conference(text)

    def commit(self, conf: Conference, changes: Changes) -> None:
        lease = self._held[conf.conf_id]
        record = encode_conference(conf) if conf.members else ""
        diff = json.dumps({
            "joined": sorted(changes.joined), "left": sorted(changes.left),
            "issued": [[name, _encode_stream(s)] for name, s in changes.issued.items()],
            "revoked": sorted(changes.revoked),
        })
        was_on = conf.gateway if lease.record is None else decode_conference(lease.record).gateway
        keys = [lease_key(conf.conf_id), conference_key(conf.conf_id), MEMBERS, STREAMS,
                CONFERENCES, placed_key(conf.gateway), placed_key(was_on)]
        with _answering():
            refused = self._commit(keys=keys, args=[lease.owner, conf.conf_id, record, diff])
        if refused and refused[0] == "member":
            raise AlreadyJoined(f"{refused[1]} is already in conference {refused[2]}")
        if refused:
            raise NameTaken(f"stream name {redact_token(str(refused[1]))} is already issued")
        lease.record = record or None

    def where(self, uuid: str) -> str | None:
        with _answering():
            conf_id = self.client.hget(MEMBERS, uuid)
        return None if conf_id is None else str(conf_id)

    def stream(self, name: str) -> Stream | None:
        with _answering():
            text = self.client.hget(STREAMS, name)
        if text is None:
            return None
        kind, conf_id, uuid = json.loads(str(text))
        return Stream(StreamKind(kind), conf_id, uuid)

    def counts(self) -> dict[str, int]:
        with _answering():
            pipe = self.client.pipeline(transaction=False)
            pipe.scard(CONFERENCES)
            pipe.hlen(MEMBERS)
            pipe.hlen(STREAMS)
            conferences, members, streams = pipe.execute()
        return {"conferences": conferences, "members": members, "streams": streams}

    def conferences_on(self, gateway: str) -> set[str]:
        with _answering():
            return {str(c) for c in self.client.smembers(placed_key(gateway))}

    def claim(self, name: str, ttl: float) -> bool:
        """Take or keep ``wxmgw:reconcile:{name}`` for ``ttl`` s: True when this front
        reconciles gateway ``name`` (one front at a time across the cluster)."""
        with _answering():
            got = self._claim(keys=[reconcile_key(name)], args=[self._front, int(ttl * 1000)])
        return bool(got)


def _encode_stream(stream: Stream) -> str:
    return json.dumps([stream.kind.value, stream.conf_id, stream.uuid])
