"""Pure conference state: members, SSRCs, stream names, watchers, avsync."""

from __future__ import annotations

import itertools

import pytest

from callroute.protocol import AlreadyJoined, NotWatching
from callroute.rooms import Rooms, StreamKind, new_ssrc, new_token


def make_rooms(ssrcs: list[int] | None = None) -> Rooms:
    counter = itertools.count()
    ssrc_iter = iter(ssrcs) if ssrcs is not None else None
    return Rooms(
        token_factory=lambda: f"t{next(counter)}",
        ssrc_factory=(lambda: next(ssrc_iter)) if ssrc_iter is not None else new_ssrc,
    )


def test_factories() -> None:
    token = new_token()
    assert len(token) == 32 and int(token, 16) >= 0 and token != new_token()
    assert all(0 < new_ssrc() <= 0xFFFFFFFF for _ in range(1000))


def test_join_allocates_unique_ssrc_and_stream_names() -> None:
    rooms = make_rooms(ssrcs=[7, 7, 7, 9])
    conf = rooms.open("c", "gw")
    a = rooms.join(conf, "a", "53001")
    b = rooms.join(conf, "b")
    assert (a.ssrc, b.ssrc) == (7, 9)
    assert conf.member_by_ssrc(9) is b and conf.member_by_ssrc(8) is None
    assert rooms.where("a") == "c" and a.crgwid == "53001"
    stream = rooms.stream(a.token)
    assert stream is not None and (stream.kind, stream.conf_id, stream.uuid) == (
        StreamKind.MEMBER, "c", "a")
    mix = rooms.stream(a.mix_token)
    assert mix is not None and mix.kind is StreamKind.MIX
    assert len({a.token, a.mix_token, b.token, b.mix_token}) == 4


def test_ssrc_unique_per_conference_not_globally() -> None:
    rooms = make_rooms(ssrcs=[5, 5])
    a = rooms.join(rooms.open("c1", "gw"), "a")
    b = rooms.join(rooms.open("c2", "gw"), "b")
    assert a.ssrc == b.ssrc == 5


def test_token_collision_retried() -> None:
    tokens = iter(["x", "x", "y", "x", "z"])
    rooms = Rooms(token_factory=lambda: next(tokens))
    member = rooms.join(rooms.open("c", "gw"), "a")
    assert (member.token, member.mix_token) == ("x", "y")


def test_already_joined_here_or_elsewhere() -> None:
    rooms = make_rooms()
    conf = rooms.open("c", "gw")
    rooms.join(conf, "a")
    with pytest.raises(AlreadyJoined):
        rooms.join(conf, "a")
    with pytest.raises(AlreadyJoined):
        rooms.join(rooms.open("d", "gw"), "a")


def test_open_keeps_affinity_and_close_only_when_empty() -> None:
    rooms = make_rooms()
    conf = rooms.open("c", "gw1")
    assert rooms.open("c", "gw2") is conf and conf.gateway == "gw1"
    rooms.join(conf, "a")
    assert not rooms.close_if_empty(conf)
    rooms.leave(conf, "a")
    assert rooms.close_if_empty(conf) and rooms.get("c") is None
    assert not rooms.close_if_empty(conf)


def test_watch_shares_one_push_per_member() -> None:
    rooms = make_rooms()
    conf = rooms.open("c", "gw")
    for uuid in "abc":
        rooms.join(conf, uuid)
    push, created = rooms.watch(conf, "b", "a")
    again, created_again = rooms.watch(conf, "c", "a")
    assert created and not created_again and again is push
    assert push.watchers == {"b", "c"}
    video = rooms.stream(push.token)
    assert video is not None and video.kind is StreamKind.VIDEO and video.uuid == "a"
    assert rooms.watch(conf, "b", "a") == (push, False)
    assert rooms.unwatch(conf, "b", "a") is None
    assert rooms.unwatch(conf, "c", "a") is push
    assert "a" not in conf.pushes and rooms.stream(push.token) is None
    with pytest.raises(NotWatching):
        rooms.unwatch(conf, "c", "a")
    with pytest.raises(NotWatching):
        rooms.watched(conf, "b", "a")


def test_leave_reports_everything_to_stop() -> None:
    rooms = make_rooms()
    conf = rooms.open("c", "gw")
    for uuid in "abcd":
        rooms.join(conf, uuid)
    own, _ = rooms.watch(conf, "b", "a")        # a is watched by b ...
    conf.avsync["b"] = "a"                      # ... with b's mix
    only_a, _ = rooms.watch(conf, "a", "c")     # a alone watches c
    shared, _ = rooms.watch(conf, "a", "d")     # a and b watch d
    rooms.watch(conf, "b", "d")
    conf.avsync["a"] = "d"
    member = conf.members["a"]

    gone = rooms.leave(conf, "a")

    assert gone.member is member and gone.own_push is own
    assert gone.unwatched == [only_a] and gone.avsync_cleared == ["b"]
    assert set(conf.pushes) == {"d"} and shared.watchers == {"b"}
    assert conf.avsync == {}
    assert rooms.where("a") is None
    for token in (member.token, member.mix_token, own.token, only_a.token):
        assert rooms.stream(token) is None
    assert rooms.stream(shared.token) is not None
    assert rooms.counts() == {"conferences": 1, "members": 3, "pushes": 1, "streams": 7}
