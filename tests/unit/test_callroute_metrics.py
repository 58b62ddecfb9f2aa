"""The callroute front's /metrics: messages by method and code, rooms, gateway health."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from test_callroute_front import Harness
from test_callroute_server import call, join, post

from callroute.server import App


def scrape(app: App) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, headers, data = call(app, "/metrics", method="GET")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(data.decode()) for s in f.samples}


def test_messages_rooms_and_gateways_are_counted() -> None:
    app = App(Harness().front)
    join(app)
    post(app, {"id": "1", "uuid": "u", "method": "wxjoinconf", "params": {}})
    post(app, {"id": "2", "uuid": "u", "method": "no-such-method-" + "x" * 50, "params": {}})
    call(app, "/rtmp/on_publish", b"app=live&name=unknown")
    got = scrape(app)
    assert got[("callroute_messages_total",
                frozenset({("method", "wxjoinconf"), ("code", "0")}))] == 1
    assert got[("callroute_messages_total",
                frozenset({("method", "wxjoinconf"), ("code", "111")}))] == 1
    assert got[("callroute_messages_total",  # an unknown method is no label of its own
                frozenset({("method", "other"), ("code", "112")}))] == 1
    assert got[("callroute_message_seconds_count", frozenset({("method", "wxjoinconf")}))] == 2
    assert got[("callroute_rtmp_notify_total",
                frozenset({("call", "publish"), ("allowed", "false")}))] == 1
    assert got[("callroute_conferences", frozenset())] == 1
    assert got[("callroute_members", frozenset())] == 1
    gateways = {dict(k[1])["gateway"]: v for k, v in got.items()
                if k[0] == "callroute_gateway_up"}
    assert gateways and all(v in (0, 1) for v in gateways.values())
