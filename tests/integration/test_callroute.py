"""The callroute front against real ``wxmgw serve`` processes.

The seed's example messages are replayed verbatim through the front's WSGI
app in-process (its SSRC source is pinned so the seed's ``antissrc`` names a
member); everything else goes through a real ``callroute serve`` process over
HTTP. No live server is needed: the gateway starts its legs at once and
connects to RTMP in the background.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from gevent.pool import Pool
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess, free_port

from callroute.config import GatewayAddress
from callroute.front import Front, FrontConfig
from callroute.gateways import Gateways
from callroute.mcs import Mcs
from callroute.rooms import Rooms
from callroute.server import App
from callroute.store import MemoryStore
from wxmgw.procs import terminate
from wxmgw.thrift import wxmgw_thrift as t

SEED = json.loads((ROOT / "tests" / "data" / "callroute_seed.json").read_text())
SEED_SSRC = 503677616
PUSH_BASE = "rtmp://127.0.0.1:9/live"   # nothing listens: legs keep reconnecting in the background


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout} s")
        time.sleep(0.05)


class FrontProcess:
    """``python -m callroute.cli serve`` on a free port against ``gateways`` (given by
    ``--wxmgw``, or found in the registry of ``--redis`` in ``extra``)."""

    def __init__(self, tmp: Path, gateways: list[GatewayProcess], *,
                 push_base: str = PUSH_BASE, play_base: str = "rtmp://play.example/watch",
                 extra: list[str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = tmp / f"callroute-{self.port}.log"
        spec = ",".join(f"127.0.0.1:{g.thrift_port}@{g.status_port}" for g in gateways)
        self.args = [
            sys.executable, "-m", "callroute.cli", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--wxmgw", spec, "--rtmp-push-base", push_base,
            "--rtmp-play-base", play_base, "--poll-interval", "0.2",
            "--log-file", str(self.log_path), *(extra or [])]
        self.expected = len(gateways)
        self.start()

    def start(self) -> None:
        """Start it (again, after :meth:`kill`: same port and flags) and wait until it sees
        every gateway healthy."""
        self.proc = subprocess.Popen(self.args, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for(lambda: self.healthy() >= self.expected)
        except AssertionError:
            self.stop()
            raise

    def healthy(self) -> int:
        return sum(g["healthy"] for g in self.state()["gateways"])

    def kill(self) -> None:
        """SIGKILL: no graceful stop, requests in flight cut."""
        self.proc.kill()
        self.proc.wait(10)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url("/monitor/state"), timeout=5) as resp:
            body: dict[str, Any] = json.load(resp)
            return body

    def request(self, path: str, body: bytes | None, method: str = "POST") -> tuple[int, bytes]:
        req = urllib.request.Request(self.url(path), data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        status, data = self.request("/", json.dumps(message).encode())
        assert status == 200, data
        reply: dict[str, Any] = json.loads(data)
        return reply

    def stop(self) -> int:
        return terminate(self.proc)

    def events(self) -> list[dict[str, Any]]:
        """The front's JSON log lines so far."""
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("callroute-gw")
    procs = [GatewayProcess(tmp, rtp_ports=40), GatewayProcess(tmp, rtp_ports=40)]
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, gateways: list[GatewayProcess],
) -> Iterator[FrontProcess]:
    proc = FrontProcess(tmp_path_factory.mktemp("callroute"), gateways)
    yield proc
    assert proc.stop() == 0


def legs(gws: list[GatewayProcess]) -> int:
    return sum(g.state()["load"]["legs"] for g in gws)


def message(method: str, uuid: str, conf: Any, **params: Any) -> dict[str, Any]:
    return {"id": "1", "uuid": uuid, "method": method, "params": {"confId": conf, **params}}


def video(method: str, uuid: str, conf: str, ssrc: str, seq: str = "s1") -> dict[str, Any]:
    return message(method, uuid, conf, antissrc=ssrc, seq=seq, type="1")


def wsgi_post(app: App, body: bytes) -> dict[str, Any]:
    got: list[str] = []
    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    data = b"".join(app(environ, lambda status, _headers: got.append(status)))
    assert got == ["200 OK"]
    reply: dict[str, Any] = json.loads(data)
    return reply


def test_seed_messages_verbatim(gateways: list[GatewayProcess]) -> None:
    gw = gateways[0]
    address = GatewayAddress("127.0.0.1", gw.thrift_port, gw.status_port)
    pool = Gateways([address])
    pool.poll_once()
    ssrcs = itertools.chain([SEED_SSRC], itertools.count(1))
    rooms = Rooms(MemoryStore(), ssrc_factory=lambda: next(ssrcs))
    front = Front(FrontConfig(PUSH_BASE, PUSH_BASE), rooms, pool, lambda a: Mcs(a, timeout=5))
    app = App(front)
    for example in SEED["messages"]:
        request = example["request"]
        reply = wsgi_post(app, json.dumps(request, ensure_ascii=False).encode())
        assert {k: reply[k] for k in ("id", "uuid", "method")} == {
            k: request[k] for k in ("id", "uuid", "method")}
        assert "code" not in reply["result"], reply
        assert set(example["result_fields"]) <= set(reply["result"]), reply
        if request["method"].strip() == "wxjoinconf":
            assert reply["result"]["audiossrc"] == reply["result"]["videossrc"] == str(SEED_SSRC)
            assert legs([gw]) == 1
        if "seq" in example["result_fields"]:
            assert (reply["result"]["seq"], reply["result"]["type"]) == ("231ABfu13ad21", "1")
    assert legs([gw]) == 0 and front.rooms.counts()["conferences"] == 0


def test_gateway_unavailable(gateways: list[GatewayProcess]) -> None:
    dead = GatewayAddress("127.0.0.1", free_port(), free_port())
    pool = Gateways([dead], timeout=0.5)
    pool.poll_once()
    app = App(Front(FrontConfig(PUSH_BASE, PUSH_BASE), Rooms(MemoryStore()), pool, Mcs))
    join = json.dumps(message("wxjoinconf", "u", "c")).encode()
    assert wsgi_post(app, join)["result"]["code"] == "117"
    # healthy by its status port, but its Thrift port refuses: 117, and nothing is left behind
    gw = gateways[0]
    lying = Gateways([dead], fetch=lambda a, t: {"resultCode": 10000, "load": {"legs": 0}})
    lying.poll_once()
    app = App(Front(FrontConfig(PUSH_BASE, PUSH_BASE), Rooms(MemoryStore()), lying, Mcs))
    assert wsgi_post(app, join)["result"]["code"] == "117"
    assert app.front.rooms.counts()["members"] == 0 and legs([gw]) == 0


def test_bad_input_gets_its_code(front: FrontProcess, gateways: list[GatewayProcess]) -> None:
    joined = front.send(message("wxjoinconf", "bad-a", "bad"))["result"]
    ssrc = joined["audiossrc"]
    cases: list[tuple[bytes | None, str, str, int, str]] = [
        (b"{not json", "POST", "/", 200, "111"),
        (b"[]", "POST", "/", 200, "111"),
        (json.dumps({"id": "1", "uuid": "x", "method": "wxjoinconf"}).encode(), "POST", "/",
         200, "111"),
        (json.dumps(message("wxjoinconf", "x", 1.5)).encode(), "POST", "/", 200, "111"),
        (json.dumps(video("wxreqvideo", "bad-a", "bad", "abc")).encode(), "POST", "/", 200, "111"),
        (json.dumps(message("wxdance", "x", "bad")).encode(), "POST", "/", 200, "112"),
        (json.dumps(message("wxquitconf", "x", "nope")).encode(), "POST", "/", 200, "113"),
        (json.dumps(video("wxreqvideo", "x", "bad", ssrc)).encode(), "POST", "/", 200, "114"),
        (json.dumps(message("wxjoinconf", "bad-a", "bad")).encode(), "POST", "/", 200, "115"),
        (json.dumps(message("wxjoinconf", "bad-a", "other")).encode(), "POST", "/", 200, "115"),
        (json.dumps(video("wxreqvideo", "bad-a", "bad", str((int(ssrc) + 1) % 2**32))).encode(),
         "POST", "/", 200, "116"),
        (json.dumps(video("wxcancelvideo", "bad-a", "bad", ssrc)).encode(), "POST", "/",
         200, "122"),
        (b"{" + b" " * 70_000 + b"}", "POST", "/", 413, "119"),
        (None, "GET", "/", 405, "120"),
        (b"{}", "PUT", "/", 405, "120"),
        (b"{}", "POST", "/nowhere", 404, "121"),
    ]
    for body, method, path, status, code in cases:
        got_status, data = front.request(path, body, method)
        reply = json.loads(data)
        assert (got_status, reply["result"]["code"]) == (status, code), (body, reply)
        assert reply["result"]["message"] and set(reply) == {"id", "uuid", "method", "result"}
    # a gateway that refuses (the uuid has a differing leg there, started by another MCS):
    # 118 with the gateway's code
    gw = next(g for g in gateways if any(r["confId"] == "bad" for r in g.state()["rooms"]))
    mcs = make_client(t.WxMgw, "127.0.0.1", gw.thrift_port, timeout=5000)
    resp = mcs.StartPull(t.StartPullReq(uuid="bad-b", pullUrl=f"{PUSH_BASE}/direct", ssrc=1,
                                        masIp="", audioPort=0, videoPort=0, confId="bad"))
    assert resp.code == 0
    reply = front.send(message("wxjoinconf", "bad-b", "bad"))
    assert reply["result"]["code"] == "118" and "409" in reply["result"]["message"]
    mcs.StopPull(t.StopPullReq(uuid="bad-b", confId="bad"))
    mcs.close()
    assert front.send(message("wxquitconf", "bad-a", "bad"))["result"] == {}
    assert legs(gateways) == 0


def test_concurrent_joins_and_quits_leave_no_leg(
    front: FrontProcess, gateways: list[GatewayProcess],
) -> None:
    confs = [f"conc-{i}" for i in range(20)]
    members = [(conf, f"{conf}-m{j}") for conf in confs for j in range(10)]
    pool = Pool(40)

    joined = dict(zip(
        members, pool.map(lambda m: front.send(message("wxjoinconf", m[1], m[0])), members),
        strict=True))
    assert all("code" not in r["result"] for r in joined.values())
    assert legs(gateways) == 200
    ssrc = {m: r["result"]["audiossrc"] for m, r in joined.items()}
    for conf in confs:
        assert len({ssrc[m] for m in members if m[0] == conf}) == 10
    # every conference sits on exactly one gateway, and both gateways got some
    rooms = [{r["confId"]: r["members"] for r in g.state()["rooms"]} for g in gateways]
    for conf in confs:
        homes = [r[conf] for r in rooms if conf in r]
        assert len(homes) == 1 and len(homes[0]) == 10
    assert all(any(c in r for c in confs) for r in rooms)

    def watch_then_quit(m: tuple[str, str]) -> list[dict[str, Any]]:
        conf, uuid = m
        peer = members[members.index(m) // 10 * 10 + (members.index(m) + 1) % 10]
        replies = [
            front.send(video("wxreqvideo", uuid, conf, ssrc[peer])),
            front.send(video(" wxreqavsync", uuid, conf, ssrc[peer])),
            front.send(message("wxquitconf", uuid, conf)),
        ]
        return replies

    # members quit while others still ask for their video: 113/114/116 are the honest answers
    outcomes = [r["result"].get("code", "0") for rs in pool.map(watch_then_quit, members)
                for r in rs]
    assert set(outcomes) <= {"0", "113", "114", "116"}
    assert outcomes[2::3] == ["0"] * 200     # every quit succeeds
    assert legs(gateways) == 0
    state = front.state()
    assert (state["conferences"], state["members"], state["pushes"], state["streams"]) == (
        0, 0, 0, 0)


def test_rtmp_notify(front: FrontProcess) -> None:
    joined = front.send(message("wxjoinconf", "rtmp-a", "rtmp"))["result"]
    peer = front.send(message("wxjoinconf", "rtmp-b", "rtmp"))["result"]
    watched = front.send(video("wxreqvideo", "rtmp-b", "rtmp", joined["audiossrc"]))["result"]
    names = [joined["pushurl"], joined["pullaudiourl"], watched["pullurl"], peer["pushurl"]]
    tokens = [url.rsplit("/", 1)[1] for url in names]

    def notify(call: str, app: str, name: str, get: bool = False) -> int:
        form = urlencode({"call": call, "app": app, "name": name, "addr": "127.0.0.1",
                          "clientid": "7", "type": "live"})
        if get:
            return front.request(f"/rtmp/on_{call}?{form}", None, "GET")[0]
        return front.request(f"/rtmp/on_{call}", form.encode())[0]

    for token in tokens:
        assert notify("publish", "live", token) == 200
        assert notify("play", "live", token) == 200
        assert notify("play", "watch", token, get=True) == 200
        assert notify("publish", "watch", token) == 403
        assert notify("publish", "other", token) == 403
    for name in ("", "rtmp-a", "0" * 32, tokens[0] + "x"):
        assert notify("publish", "live", name) == 403
        assert notify("play", "live", name) == 403
    front.send(message("wxquitconf", "rtmp-a", "rtmp"))
    front.send(message("wxquitconf", "rtmp-b", "rtmp"))
    for token in tokens:
        assert notify("publish", "live", token) == 403


def test_request_log_lines(front: FrontProcess) -> None:
    front.send(message("wxjoinconf", "log-a", "log"))
    front.send(message("wxquitconf", "log-a", "log"))
    lines = [json.loads(line) for line in front.log_path.read_text().splitlines()]
    requests = [e for e in lines if e.get("event") == "request" and e.get("confId") == "log"]
    assert [(e["uuid"], e["method"], e["code"]) for e in requests] == [
        ("log-a", "wxjoinconf", "0"), ("log-a", "wxquitconf", "0")]
    assert all(isinstance(e["duration_ms"], float | int) for e in requests)


def test_no_stream_token_in_state_or_logs(
    front: FrontProcess, gateways: list[GatewayProcess],
) -> None:
    a = front.send(message("wxjoinconf", "tok-a", "tok"))["result"]
    b = front.send(message("wxjoinconf", "tok-b", "tok"))["result"]
    watched = front.send(video("wxreqvideo", "tok-b", "tok", a["audiossrc"]))["result"]
    front.send(video(" wxreqavsync", "tok-a", "tok", b["audiossrc"]))
    urls = [a["pushurl"], a["pullaudiourl"], b["pushurl"], b["pullaudiourl"], watched["pullurl"]]
    tokens = {url.rsplit("/", 1)[1] for url in urls}
    for token in tokens:
        front.request("/rtmp/on_publish", urlencode({"app": "live", "name": token}).encode())

    def logs() -> str:
        return "".join(g.log() for g in gateways) + front.log_path.read_text()

    # the pulls fail to connect (nothing listens on PUSH_BASE) and log their URLs: cut
    wait_for(lambda: all(f"{token[:8]}…" in logs() for token in tokens))
    states = []
    for url in [f"http://127.0.0.1:{g.status_port}/monitor/state" for g in gateways]:
        with urllib.request.urlopen(url, timeout=5) as resp:
            states.append(resp.read().decode())
    assert any("pullUrl" in s for s in states)
    seen = logs() + "".join(states) + json.dumps(front.state())
    assert [token for token in tokens if token in seen] == []
    front.send(message("wxquitconf", "tok-a", "tok"))
    front.send(message("wxquitconf", "tok-b", "tok"))


def test_front_refuses_peers_outside_its_allow_list(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "front.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "callroute.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--wxmgw", f"127.0.0.1:{free_port()}",
         "--allow-from", "127.0.0.1/32", "--log-file", str(log)],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(lambda: log.exists() and '"listening"' in log.read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /monitor/state HTTP/1.0\r\n\r\n")
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # closed with the request unread
                assert s.recv(100) == b""
        refused = [json.loads(line) for line in log.read_text().splitlines()
                   if '"connection_refused"' in line]
        assert [(e["server"], e["peer"].split(":")[0]) for e in refused] == [
            ("callroute", "127.0.0.2")]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/monitor/state", timeout=5) as r:
            assert json.load(r)["resultCode"] == 10000
    finally:
        terminate(proc)
