"""The WSGI app in-process: HTTP-level refusals, the JSON pipeline, RTMP notify checks."""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from test_callroute_front import PLAY, PUSH, Harness

from callroute.server import App, rtmp_app
from callroute.store import RedisStore
from wxmgw import cluster
from wxmgw.redisd import RedisServer

UUID = "14f5ac8e-5496-11e7-a38b-d93e113210c6"


def call(app: App, path: str, body: bytes = b"", method: str = "POST", query: str = "",
         length: str | None = None) -> tuple[str, dict[str, str], bytes]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got.update(status=status, headers=dict(headers))

    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": query,
               "CONTENT_LENGTH": str(len(body)) if length is None else length,
               "wsgi.input": io.BytesIO(body)}
    data = b"".join(app(environ, start_response))
    return got["status"], got["headers"], data


def post(app: App, message: Any) -> dict[str, Any]:
    status, headers, data = call(app, "/", json.dumps(message).encode())
    assert status == "200 OK" and headers["Content-Type"].startswith("application/json")
    result: dict[str, Any] = json.loads(data)
    return result


@pytest.fixture
def app() -> App:
    return App(Harness().front, body_limit=1024)


def join(app: App, uuid: str = UUID) -> dict[str, str]:
    reply = post(app, {"id": "3", "uuid": uuid, "method": "wxjoinconf",
                       "params": {"confId": "123", "crgwid": "53001"}})
    result: dict[str, str] = reply["result"]
    return result


def test_rtmp_app() -> None:
    assert rtmp_app("rtmp://h:1935/live") == "live"


def test_message_round_trip_echoes_header(app: App) -> None:
    reply = post(app, {"id": 7, "uuid": UUID, "method": " wxjoinconf ",
                       "params": {"confId": 123}})
    assert (reply["id"], reply["uuid"], reply["method"]) == (7, UUID, " wxjoinconf ")
    assert reply["result"]["audiossrc"].isdecimal()


@pytest.mark.parametrize(("body", "code"), [
    (b"not json", "111"),
    (b'{"id": "1", "uuid": "u", "method": "nope", "params": {"confId": "1"}}', "112"),
    (b'{"id": "1", "uuid": "u", "method": "wxquitconf", "params": {"confId": "1"}}', "113"),
    (b'{"id": "1", "uuid": "u", "method": "wxjoinconf", "params": {"confId": 1.5}}', "111"),
])
def test_in_band_errors(app: App, body: bytes, code: str) -> None:
    status, _, data = call(app, "/", body)
    reply = json.loads(data)
    assert status == "200 OK" and reply["result"]["code"] == code and reply["result"]["message"]
    assert set(reply) == {"id", "uuid", "method", "result"}


def _video_request(antissrc: object = "1", type_: object = 1) -> bytes:
    return json.dumps({"id": "1", "uuid": "u", "method": "wxreqvideo", "params": {
        "confId": "1", "antissrc": antissrc, "seq": "s", "type": type_}}).encode()


@pytest.mark.parametrize("body", [
    # Finding 7: numbers of thousands of digits, or other scripts' digits, were answered 123.
    _video_request(antissrc="1" * 4301),
    _video_request(type_="2" * 4301),
    _video_request(antissrc="\u0661"),
    # Finding 8: a lone surrogate in id, uuid or method got HTTP 500 with a plain-text body.
    b'{"id": "\\ud800", "uuid": "u", "method": "wxjoinconf", "params": {"confId": "1"}}',
    b'{"id": "1", "uuid": "\\ud800", "method": "wxjoinconf", "params": {"confId": "1"}}',
    b'{"id": "1", "uuid": "u", "method": "\\ud800", "params": {"confId": "1"}}',
    b'{"id": "1", "uuid": "u\xff", "method": "wxjoinconf", "params": {"confId": "1"}}',
], ids=["antissrc-4301-digits", "type-4301-digits", "antissrc-arabic-indic", "id-surrogate",
        "uuid-surrogate", "method-surrogate", "invalid-utf8"])
def test_hostile_numbers_and_text_answer_111(body: bytes) -> None:
    status, headers, data = call(App(Harness().front), "/", body)
    reply = json.loads(data)
    assert status == "200 OK" and headers["Content-Type"].startswith("application/json")
    assert set(reply) == {"id", "uuid", "method", "result"}
    assert reply["result"]["code"] == "111" and reply["result"]["message"]


def test_http_level_errors(app: App) -> None:
    status, headers, data = call(app, "/", method="GET")
    assert status.startswith("405") and headers["Allow"] == "POST"
    assert json.loads(data)["result"]["code"] == "120"
    status, _, data = call(app, "/", b"{" * 2000)
    assert status.startswith("413") and json.loads(data)["result"]["code"] == "119"
    status, _, data = call(app, "/", b"{" * 2000, length="")     # chunked: no length
    assert status.startswith("413")
    for length in ("abc", "\u0661", "1" * 5000):
        status, _, data = call(app, "/", b"{}", length=length)
        assert status == "200 OK" and json.loads(data)["result"]["code"] == "111"
    status, _, data = call(app, "/nope")
    assert status.startswith("404") and json.loads(data)["result"]["code"] == "121"


def test_unexpected_exception_is_answered(app: App) -> None:
    def boom(_req: object) -> dict[str, str]:
        raise RuntimeError("bug")

    app.front.handle = boom  # type: ignore[method-assign,assignment]
    status, _, data = call(app, "/", json.dumps(
        {"id": "1", "uuid": "u", "method": "wxjoinconf", "params": {"confId": "1"}}).encode())
    assert status == "200 OK" and json.loads(data)["result"]["code"] == "123"
    assert b"Traceback" not in data


def test_monitor_state(app: App) -> None:
    join(app)
    status, _, data = call(app, "/monitor/state", method="GET")
    state = json.loads(data)
    assert status == "200 OK" and state["resultCode"] == 10000 and state["members"] == 1
    assert [g["healthy"] for g in state["gateways"]] == [True, True]


def notify(app: App, call_name: str, name: str, app_name: str = "live", get: bool = False) -> str:
    form = urlencode({"call": call_name, "app": app_name, "name": name, "addr": "10.1.1.1"})
    if get:
        return call(app, f"/rtmp/on_{call_name}", method="GET", query=form)[0]
    return call(app, f"/rtmp/on_{call_name}", form.encode())[0]


def test_rtmp_publish_and_play_checks() -> None:
    h = Harness()
    h.front.config = type(h.front.config)(PUSH, "rtmp://cdn.example/play", None)
    app = App(h.front)
    result = join(app)
    token = result["pushurl"].rsplit("/", 1)[1]
    mix = result["pullaudiourl"].rsplit("/", 1)[1]
    video = post(app, {"id": "3", "uuid": UUID, "method": "wxreqvideo", "params": {
        "confId": "123", "antissrc": result["audiossrc"], "seq": "s", "type": 1}},
    )["result"]["pullurl"].rsplit("/", 1)[1]
    for name in (token, mix, video):
        assert notify(app, "publish", name).startswith("200")
        assert notify(app, "play", name).startswith("200")
        assert notify(app, "play", name, "play", get=True).startswith("200")
        assert notify(app, "publish", name, "play").startswith("403")
    for name in ("", "guess", UUID, token.upper()):
        assert notify(app, "publish", name).startswith("403")
        assert notify(app, "play", name).startswith("403")
    post(app, {"id": "3", "uuid": UUID, "method": "wxquitconf", "params": {"confId": "123"}})
    assert notify(app, "publish", token).startswith("403")
    assert PLAY != PUSH


def test_redis_away_answers_117_in_the_seed_shape(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with RedisServer(tmp_path_factory.mktemp("redis-app")) as server:
        app = App(Harness(store=RedisStore(cluster.connect(server.url))).front)
        token = join(app)["pushurl"].rsplit("/", 1)[1]
        assert notify(app, "publish", token).startswith("200")
        server.stop()
        reply = post(app, {"id": "4", "uuid": "x", "method": "wxjoinconf",
                           "params": {"confId": "123"}})
        assert reply["id"] == "4" and reply["result"]["code"] == "117"
        assert "store" in reply["result"]["message"]
        assert notify(app, "publish", token).startswith("403")
        status, _, data = call(app, "/monitor/state", method="GET")
        assert status == "200 OK" and "storeError" in json.loads(data)
        server.start()
        assert notify(app, "publish", token).startswith("200")
