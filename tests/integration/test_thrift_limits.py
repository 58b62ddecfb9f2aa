"""Hostile or broken peers of the Thrift and status ports of a real `wxmgw serve` (#12)."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory, TMemoryBuffer
from wxmgw_proc import GatewayProcess

from wxmgw.thrift import wxmgw_thrift as t

TRANSPORTS: dict[str, Any] = {
    "buffered": TBufferedTransportFactory(), "framed": TFramedTransportFactory()}
IDLE = 1000


@pytest.fixture(scope="module", params=["buffered", "framed"])
def gateway(request, tmp_path_factory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), transport=request.param)
    yield gw
    assert gw.stop() == 0


def client(gw: GatewayProcess) -> Any:
    """The MCS: its reply must come within 5 s."""
    return make_client(t.WxMgw, "127.0.0.1", gw.thrift_port, timeout=5000,
                       trans_factory=TRANSPORTS[gw.transport],
                       proto_factory=TBinaryProtocolFactory())


def push_req(uuid: str) -> Any:
    return t.StartPushReq(uuid=uuid, pushUrl=f"rtmp://127.0.0.1:9/live/{uuid}",
                          audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96,
                          videoCodec="H264", confId="limits", reqUuid="mcs", weixin="0")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_string_declaring_256_mb_closes_the_connection_and_grows_nothing(gateway):
    head = struct.pack(">Ii", 0x80010001, 9) + b"StartPush" + struct.pack(">i", 1)
    declared = head + b"\x0c\x00\x01\x0b\x00\x01" + struct.pack(">i", 256 << 20)
    if gateway.transport == "framed":
        declared = struct.pack(">i", 256 << 20) + declared
    before = rss_kb(gateway.proc.pid)
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.thrift_port)) as s:
        s.settimeout(5)
        s.sendall(declared)
        with contextlib.suppress(OSError):
            for _ in range(32):
                s.sendall(b"x" * (1 << 20))
                sent += 1 << 20
        assert sent < 32 << 20, "the gateway read everything it was sent"
    grown = rss_kb(gateway.proc.pid) - before
    assert grown < 4096, f"RSS grew by {grown} kB"
    reasons = [e["reason"] for e in gateway.events("thrift_bad_input")]
    assert any("limit" in r or "frame of" in r for r in reasons), reasons
    c = client(gateway)
    assert c.StopPush(t.StopPushReq(uuid="nobody", confId="limits")).code == 404
    c.close()


def test_1000_idle_connections_do_not_lock_the_mcs_out(gateway):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * IDLE), hard))
    idle = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", gateway.thrift_port), timeout=5))
        assert gateway.state()["resultCode"] == 10000  # the accept loop has had its turns
        c = client(gateway)
        try:
            r = c.StartPush(push_req("idle-mcs"))
            assert r.code == 0 and r.port.audio > 0
            assert c.StopPush(t.StopPushReq(uuid="idle-mcs", confId="limits")).code == 0
        finally:
            c.close()
        assert closed_by_server(idle[0])  # the pool was full: the longest silent made room
        assert gateway.events("thrift_idle_connection_closed")
    finally:
        for s in idle:
            s.close()


def raw_call(gw: GatewayProcess, req: Any) -> bytes:
    buf = TMemoryBuffer()
    proto = TBinaryProtocolFactory().get_protocol(buf)
    proto.write_message_begin("StartPush", TMessageType.CALL, 1)
    proto.write_struct(t.WxMgw.StartPush_args(req=req))
    proto.write_message_end()
    data: bytes = buf.getvalue()
    return struct.pack(">i", len(data)) + data if gw.transport == "framed" else data


def test_a_start_push_whose_client_left_is_answered_the_same_on_retry(gateway):
    with socket.create_connection(("127.0.0.1", gateway.thrift_port)) as s:
        s.sendall(raw_call(gateway, push_req("gone-mcs")))
    deadline = time.monotonic() + 10
    while not (legs := [g for g in gateway.state()["legs"] if g["uuid"] == "gone-mcs"]):
        assert time.monotonic() < deadline, "the StartPush never ran"
        time.sleep(0.05)
    c = client(gateway)
    try:
        r = c.StartPush(push_req("gone-mcs"))
        assert r.code == 0 and {r.port.audio, r.port.video} <= set(legs[0]["ports"])
        assert len([g for g in gateway.state()["legs"] if g["uuid"] == "gone-mcs"]) == 1
        assert c.StopPush(t.StopPushReq(uuid="gone-mcs", confId="limits")).code == 0
    finally:
        c.close()


def test_a_peer_outside_the_allow_list_is_refused_and_logged(tmp_path):
    gw = GatewayProcess(tmp_path, extra=["--allow-from", "127.0.0.1/32"])
    try:
        for port in (gw.thrift_port, gw.status_port):
            with socket.socket() as s:
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /monitor/state HTTP/1.0\r\n\r\n")
                assert closed_by_server(s)
        refused = gw.events("connection_refused")
        assert {e["server"] for e in refused} == {"thrift", "status"}
        assert all(e["peer"].startswith("127.0.0.2:") for e in refused)
        c = client(gw)
        assert c.StopPush(t.StopPushReq(uuid="nobody", confId="x")).code == 404
        c.close()
    finally:
        assert gw.stop() == 0
