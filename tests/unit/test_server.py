"""The Thrift and status servers: allow-list, bounded requests, idle connections dropped first."""

from __future__ import annotations

import json
import logging
import socket
import struct
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from thriftpy2.rpc import make_client

from wxmgw.access import AllowList
from wxmgw.server import StatusServer, ThriftServer
from wxmgw.thrift import wxmgw_thrift as t

LOOPBACK = AllowList.parse("127.0.0.0/8")
ELSEWHERE = AllowList.parse("192.0.2.0/24")
TOKEN = "0123456789abcdef0123456789abcdef"


class Handler:
    def StartPush(self, req: Any) -> Any:  # noqa: N802
        return t.StartPushResp(port=t.Port(audio=30000, video=30002), code=0, message=req.uuid)


def serve(**kwargs: Any) -> ThriftServer:
    kwargs.setdefault("allow", LOOPBACK)
    server = ThriftServer(Handler(), "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def thrift() -> Iterator[ThriftServer]:
    server = serve(max_connections=5)
    yield server
    server.stop(timeout=0.5)


def start_push(server: ThriftServer, uuid: str = "m1") -> Any:
    client = make_client(t.WxMgw, "127.0.0.1", server.port, timeout=5000)
    try:
        return client.StartPush(t.StartPushReq(uuid=uuid))
    finally:
        client.close()


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == name]


def test_a_peer_outside_the_allow_list_is_closed_at_accept_and_logged(caplog):
    server = serve(allow=ELSEWHERE)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            assert closed_by_server(s)
        refused = events(caplog, "connection_refused")
        assert refused and refused[0]["server"] == "thrift"
        assert refused[0]["peer"].startswith("127.0.0.1:")
    finally:
        server.stop(timeout=0.5)


def test_a_string_declaring_256_mb_closes_the_connection(thrift, caplog):
    head = struct.pack(">Ii", 0x80010001, 9) + b"StartPush" + struct.pack(">i", 1)
    with socket.create_connection(("127.0.0.1", thrift.port)) as s:
        s.sendall(head + b"\x0c\x00\x01\x0b\x00\x01" + struct.pack(">i", 256 << 20) + b"x" * 1000)
        assert closed_by_server(s)
    assert "message limit" in events(caplog, "thrift_bad_input")[0]["reason"]
    assert start_push(thrift).code == 0


def test_when_full_the_longest_silent_connection_makes_room(thrift, caplog):
    caplog.set_level(logging.INFO)
    idle = [socket.create_connection(("127.0.0.1", thrift.port)) for _ in range(5)]
    try:
        assert start_push(thrift, "mcs").message == "mcs"
        assert closed_by_server(idle[0])
        assert events(caplog, "thrift_idle_connection_closed")
        idle[1].settimeout(0.05)
        with pytest.raises(TimeoutError):
            idle[1].recv(1)  # the others stay open
    finally:
        for s in idle:
            s.close()


def test_a_silent_connection_times_out():
    server = serve(idle_timeout=0.2)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            assert closed_by_server(s)
    finally:
        server.stop(timeout=0.5)


def test_status_redacts_stream_names_and_refuses_outsiders(caplog):
    def state() -> dict[str, Any]:
        return {"legs": [{"pullUrl": f"rtmp://10.0.0.5/live/{TOKEN}"}]}

    status = StatusServer("127.0.0.1", 0, state, CollectorRegistry(), allow=LOOPBACK)
    status.start()
    try:
        url = f"http://127.0.0.1:{status.port}/monitor/state"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        assert TOKEN not in text
        assert json.loads(text)["legs"][0]["pullUrl"] == "rtmp://10.0.0.5/live/01234567…"
    finally:
        status.stop()
    status = StatusServer("127.0.0.1", 0, state, CollectorRegistry(), allow=ELSEWHERE)
    status.start()
    try:
        with socket.create_connection(("127.0.0.1", status.port)) as s:
            s.sendall(b"GET /monitor/state HTTP/1.0\r\n\r\n")
            assert closed_by_server(s)
        assert events(caplog, "connection_refused")[0]["server"] == "status"
    finally:
        status.stop()


def test_a_status_request_unfinished_after_the_idle_timeout_is_closed_with_one_line(caplog):
    caplog.set_level(logging.INFO)
    status = StatusServer("127.0.0.1", 0, dict, CollectorRegistry(), allow=LOOPBACK,
                          idle_timeout=0.2)
    status.start()
    try:
        with socket.create_connection(("127.0.0.1", status.port)) as s:
            s.sendall(b"GET /monitor/state HTTP/1.1\r\nHost: x\r\n")
            assert closed_by_server(s)
        assert events(caplog, "http_request_timeout")[0]["server"] == "status"
    finally:
        status.stop()


def test_the_status_page_is_served_at_the_root():
    status = StatusServer("127.0.0.1", 0, lambda: {"legs": []}, CollectorRegistry(),
                          allow=LOOPBACK)
    status.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{status.port}/", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/html")
            page = r.read().decode()
        assert "<title>wxmgw status</title>" in page and "/monitor/state" in page
    finally:
        status.stop()
