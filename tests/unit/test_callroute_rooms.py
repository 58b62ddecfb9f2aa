"""Conference state: members, SSRCs, stream names, watchers, avsync, on either store.

Every test runs against the in-process store and against Redis (a real
redis-server, ``redis_url``): the front's logic is one, the stores must agree.
"""

from __future__ import annotations

import itertools
import json

import gevent
import pytest
import redis

from callroute.protocol import AlreadyJoined, NotWatching, StoreUnavailable
from callroute.rooms import (
    Conference,
    NameTaken,
    Rooms,
    Store,
    StreamKind,
    new_ssrc,
    new_token,
)
from callroute.store import (
    CONFERENCES,
    MEMBERS,
    STREAMS,
    KeyedLock,
    MemoryStore,
    RedisStore,
    lease_key,
    placed_key,
)
from wxmgw import cluster
from wxmgw.redisd import RedisServer


@pytest.fixture(name="store", params=["memory", "redis"])
def store_fixture(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return RedisStore(cluster.connect(request.getfixturevalue("redis_url")), lease_ttl=1.0,
                      lease_wait=0.5)


def make_rooms(store: Store, ssrcs: list[int] | None = None) -> Rooms:
    counter = itertools.count()
    ssrc_iter = iter(ssrcs) if ssrcs is not None else None
    return Rooms(
        store,
        token_factory=lambda: f"t{next(counter)}",
        ssrc_factory=(lambda: next(ssrc_iter)) if ssrc_iter is not None else new_ssrc,
    )


def save(rooms: Rooms, conf: Conference) -> None:
    with rooms.hold(conf.conf_id):
        rooms.save(conf)


def test_factories() -> None:
    token = new_token()
    assert len(token) == 32 and int(token, 16) >= 0 and token != new_token()
    assert all(0 < new_ssrc() <= 0xFFFFFFFF for _ in range(1000))


def test_join_allocates_unique_ssrc_and_stream_names(store: Store) -> None:
    rooms = make_rooms(store, ssrcs=[7, 7, 7, 9])
    conf = rooms.open("c", "gw")
    a = rooms.join(conf, "a", "53001")
    b = rooms.join(conf, "b")
    assert (a.ssrc, b.ssrc) == (7, 9)
    assert conf.member_by_ssrc(9) is b and conf.member_by_ssrc(8) is None
    assert rooms.where("a") is None and rooms.stream(a.token) is None   # not saved yet
    save(rooms, conf)
    assert rooms.where("a") == "c" and a.crgwid == "53001"
    stream = rooms.stream(a.token)
    assert stream is not None and (stream.kind, stream.conf_id, stream.uuid) == (
        StreamKind.MEMBER, "c", "a")
    mix = rooms.stream(a.mix_token)
    assert mix is not None and mix.kind is StreamKind.MIX
    assert len({a.token, a.mix_token, b.token, b.mix_token}) == 4
    assert rooms.get("c") == conf


def test_ssrc_unique_per_conference_not_globally(store: Store) -> None:
    rooms = make_rooms(store, ssrcs=[5, 5])
    a = rooms.join(rooms.open("c1", "gw"), "a")
    b = rooms.join(rooms.open("c2", "gw"), "b")
    assert a.ssrc == b.ssrc == 5


def test_token_collision_retried_or_refused(store: Store) -> None:
    tokens = iter(["x", "x", "y", "x", "z"])
    rooms = Rooms(store, token_factory=lambda: next(tokens))
    conf = rooms.open("c", "gw")
    member = rooms.join(conf, "a")
    assert (member.token, member.mix_token) == ("x", "y")     # x again: drawn anew
    save(rooms, conf)
    other = rooms.open("d", "gw")
    assert rooms.join(other, "b").token == "x"                # another conference's x ...
    with pytest.raises(NameTaken):
        save(rooms, other)                                    # ... is refused at the save
    assert rooms.get("d") is None and rooms.where("b") is None
    stream = rooms.stream("x")
    assert stream is not None and stream.conf_id == "c"


def test_already_joined_here_or_elsewhere(store: Store) -> None:
    rooms = make_rooms(store)
    conf = rooms.open("c", "gw")
    rooms.join(conf, "a")
    with pytest.raises(AlreadyJoined):
        rooms.join(conf, "a")
    save(rooms, conf)
    other = rooms.open("d", "gw")
    rooms.join(other, "a")              # another conference's member: the save tells
    with pytest.raises(AlreadyJoined, match="already in conference c"):
        save(rooms, other)
    assert rooms.get("d") is None and rooms.where("a") == "c"


def test_a_refused_save_changes_nothing(store: Store) -> None:
    """The stored conference stays as it was, and the working copy can be saved again
    without the refused member."""
    rooms = make_rooms(store)
    first = rooms.open("c", "gw")
    rooms.join(first, "a")
    save(rooms, first)
    second = rooms.open("d", "gw")
    rooms.join(second, "b")
    save(rooms, second)
    second = rooms.get("d") or second
    rooms.join(second, "a")
    rooms.watch(second, "b", "b")
    with pytest.raises(AlreadyJoined):
        save(rooms, second)
    stored = rooms.get("d")
    assert stored is not None and set(stored.members) == {"b"} and stored.pushes == {}
    rooms.leave(second, "a")
    save(rooms, second)
    assert rooms.counts() == {"conferences": 2, "members": 2, "pushes": 1, "streams": 5}


def test_save_keeps_affinity_and_forgets_an_empty_conference(store: Store) -> None:
    rooms = make_rooms(store)
    conf = rooms.open("c", "gw1")
    rooms.join(conf, "a")
    save(rooms, conf)
    assert store.conferences_on("gw1") == {"c"} and store.conferences_on("gw2") == set()
    stored = rooms.get("c")
    assert stored is not None and stored.gateway == "gw1"
    gone = rooms.leave(stored, "a")
    save(rooms, stored)
    assert rooms.get("c") is None and rooms.where("a") is None
    assert rooms.stream(gone.member.token) is None and store.conferences_on("gw1") == set()
    assert rooms.counts() == {"conferences": 0, "members": 0, "pushes": 0, "streams": 0}


def test_watch_shares_one_push_per_member(store: Store) -> None:
    rooms = make_rooms(store)
    conf = rooms.open("c", "gw")
    for uuid in "abc":
        rooms.join(conf, uuid)
    push, created = rooms.watch(conf, "b", "a")
    again, created_again = rooms.watch(conf, "c", "a")
    assert created and not created_again and again is push
    assert push.watchers == {"b", "c"}
    save(rooms, conf)
    video = rooms.stream(push.token)
    assert video is not None and video.kind is StreamKind.VIDEO and video.uuid == "a"
    assert rooms.watch(conf, "b", "a") == (push, False)
    assert rooms.unwatch(conf, "b", "a") is None
    assert rooms.unwatch(conf, "c", "a") is push
    save(rooms, conf)
    assert "a" not in conf.pushes and rooms.stream(push.token) is None
    with pytest.raises(NotWatching):
        rooms.unwatch(conf, "c", "a")
    with pytest.raises(NotWatching):
        rooms.watched(conf, "b", "a")


def test_leave_reports_everything_to_stop(store: Store) -> None:
    rooms = make_rooms(store)
    conf = rooms.open("c", "gw")
    for uuid in "abcd":
        rooms.join(conf, uuid)
    own, _ = rooms.watch(conf, "b", "a")        # a is watched by b ...
    conf.avsync["b"] = "a"                      # ... with b's mix
    only_a, _ = rooms.watch(conf, "a", "c")     # a alone watches c
    shared, _ = rooms.watch(conf, "a", "d")     # a and b watch d
    rooms.watch(conf, "b", "d")
    conf.avsync["a"] = "d"
    save(rooms, conf)
    conf = rooms.get("c") or conf
    member = conf.members["a"]

    gone = rooms.leave(conf, "a")
    save(rooms, conf)

    assert gone.member == member and gone.own_push is not None
    assert gone.own_push.token == own.token
    assert [p.token for p in gone.unwatched] == [only_a.token] and gone.avsync_cleared == ["b"]
    assert set(conf.pushes) == {"d"} and conf.pushes["d"].watchers == {"b"}
    assert conf.avsync == {}
    assert rooms.where("a") is None
    for token in (member.token, member.mix_token, own.token, only_a.token):
        assert rooms.stream(token) is None
    assert rooms.stream(shared.token) is not None
    assert rooms.counts() == {"conferences": 1, "members": 3, "pushes": 1, "streams": 7}
    assert rooms.get("c") == conf


def test_redis_record_is_what_the_gateways_read(redis_url: str) -> None:
    client = cluster.connect(redis_url)
    rooms = make_rooms(RedisStore(client), ssrcs=[7])
    conf = rooms.open("c1", "10.0.0.1:9090")
    a = rooms.join(conf, "a", "53001")
    save(rooms, conf)
    record = json.loads(str(client.get(cluster.conference_key("c1"))))
    assert record["gateway"] == "10.0.0.1:9090" and record["confId"] == "c1"
    assert record["members"] == {"a": {"ssrc": 7, "token": a.token, "mixToken": a.mix_token,
                                       "crgwid": "53001"}}
    assert cluster.RedisJournal(client, "10.0.0.2:9090").moved_to("c1") == "10.0.0.1:9090"
    assert client.hget(MEMBERS, "a") == "c1" and client.hlen(STREAMS) == 2
    assert client.smembers(CONFERENCES) == {"c1"}
    assert client.smembers(placed_key("10.0.0.1:9090")) == {"c1"}
    rooms.leave(conf, "a")
    save(rooms, conf)
    assert [k for k in client.scan_iter("wxmgw:*")] == []     # nothing of it is left


def test_redis_lease_is_exclusive_across_fronts_and_expires(redis_url: str) -> None:
    client = cluster.connect(redis_url)
    one, two = RedisStore(client, lease_ttl=0.3, lease_wait=0.2), RedisStore(client)
    busy = RedisStore(client, lease_ttl=0.3, lease_wait=0.1)
    with one.hold("c"):
        with pytest.raises(StoreUnavailable, match="busy"), busy.hold("c"):
            pass
        assert client.get(lease_key("c")) is not None
        gevent.sleep(0.5)                      # renewed while held
        with pytest.raises(StoreUnavailable), busy.hold("c"):
            pass
    assert client.get(lease_key("c")) is None  # released
    with two.hold("c"):
        pass
    # a front killed while holding it: the lease ends with its TTL
    client.set(lease_key("c"), "dead front", px=300)
    with RedisStore(client, lease_wait=2.0).hold("c"):
        pass


def test_a_front_that_lost_its_lease_writes_nothing(redis_url: str) -> None:
    client = cluster.connect(redis_url)
    rooms = make_rooms(RedisStore(client))
    conf = rooms.open("c", "gw")
    rooms.join(conf, "a")
    with rooms.hold("c"):
        client.set(lease_key("c"), "another front")
        with pytest.raises(StoreUnavailable, match="no longer holds"):
            rooms.save(conf)
    assert client.get(cluster.conference_key("c")) is None and client.hlen(MEMBERS) == 0


def test_redis_away_is_store_unavailable(tmp_path_factory: pytest.TempPathFactory) -> None:
    with RedisServer(tmp_path_factory.mktemp("redis-away")) as server:
        store = RedisStore(cluster.connect(server.url))
        rooms = make_rooms(store)
        conf = rooms.open("c", "gw")
        rooms.join(conf, "a")
        save(rooms, conf)
        server.stop()
        for call in (lambda: rooms.get("c"), lambda: rooms.stream("t0"), rooms.counts,
                     lambda: rooms.where("a"), lambda: save(rooms, conf)):
            with pytest.raises(StoreUnavailable):
                call()
        server.start()                          # the data is kept (append-only file)
        assert rooms.get("c") == conf and rooms.where("a") == "c"
    with pytest.raises(redis.RedisError):
        store.client.ping()


def test_keyed_lock_forgets_idle_keys() -> None:
    locks = KeyedLock()
    with locks.hold("a"), locks.hold("b"):
        assert set(locks._slots) == {"a", "b"}
    assert locks._slots == {}
