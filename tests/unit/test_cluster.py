"""The gateway's side of a cluster against a real redis-server: registration and journal."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402

import redis  # noqa: E402
from test_journal import PULL  # noqa: E402

from wxmgw import cluster  # noqa: E402
from wxmgw.cluster import RedisJournal, Registration  # noqa: E402
from wxmgw.journal import Legs, PullEntry  # noqa: E402
from wxmgw.redisd import RedisServer  # noqa: E402


def test_registration_entry_expires_and_journal_catches_up(redis_server: RedisServer,
                                                           redis_url: str) -> None:
    client = cluster.connect(redis_url)
    journal = RedisJournal(client, "gw1:9090")
    reg = Registration(client, journal, {"name": "gw1:9090", "host": "gw1", "port": 9090,
                                         "statusPort": 9091}, lambda: {"legs": 3})
    reg.refresh()
    entry = json.loads(str(client.get(cluster.gateway_key("gw1:9090"))))
    assert entry["legs"] == 3 and entry["bootId"] and entry["port"] == 9090
    assert 0 < client.ttl(cluster.gateway_key("gw1:9090")) <= cluster.TTL
    assert client.smembers(cluster.GATEWAYS) == {"gw1:9090"}

    legs = Legs([PullEntry(PULL, [30000, 30002])])
    journal.save(legs)
    assert RedisJournal(client, "gw1:9090").load() == legs

    redis_server.stop()  # Redis away: the write fails, is logged, and is kept
    journal.save(Legs())
    assert journal.errors == 1
    redis_server.start()
    reg.refresh()  # the registration loop writes the journal again
    assert RedisJournal(client, "gw1:9090").load() == Legs()
    reg.stop()
    assert client.get(cluster.gateway_key("gw1:9090")) is None


def test_a_conference_moved_away_is_named(redis_url: str) -> None:
    client = cluster.connect(redis_url)
    journal = RedisJournal(client, "gw1:9090")
    assert journal.moved_to("c1") is None
    client.set(cluster.conference_key("c1"), json.dumps({"gateway": "gw1:9090"}))
    assert journal.moved_to("c1") is None
    client.set(cluster.conference_key("c1"), json.dumps({"gateway": "gw2:9090"}))
    assert journal.moved_to("c1") == "gw2:9090"
    client.set(cluster.conference_key("c1"), "not json")
    assert journal.moved_to("c1") is None


def test_a_corrupt_journal_is_set_aside(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.set(cluster.legs_key("gw1"), "{")
    assert RedisJournal(cluster.connect(redis_url), "gw1").load() == Legs()
    assert client.get(cluster.legs_key("gw1") + ":corrupt") == "{"
