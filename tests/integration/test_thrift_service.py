"""The WxMgw Thrift service as the MCS meets it: a real `wxmgw serve` process."""

from __future__ import annotations

import contextlib
import importlib
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory
from wxmgw_proc import ROOT, GatewayProcess

IDL = ROOT / "idl" / "wxmgw.thrift"
tpy = thriftpy2.load(str(IDL), module_name="test_wxmgw_thrift")
TRANSPORTS = {"buffered": TBufferedTransportFactory(), "framed": TFramedTransportFactory()}


@pytest.fixture(scope="module", params=["buffered", "framed"])
def gateway(request, tmp_path_factory):
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), transport=request.param, rtp_ports=200)
    yield gw
    assert gw.stop() == 0


def tpy_client(gw):
    return make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000,
                       trans_factory=TRANSPORTS[gw.transport],
                       proto_factory=TBinaryProtocolFactory())


@pytest.fixture(scope="module")
def apache(tmp_path_factory):
    """The MCS's own stack: Apache Thrift's compiler output and runtime."""
    out = tmp_path_factory.mktemp("gen")
    idl = out / "mcs.thrift"  # its own Python package name, clear of thriftpy2's modules
    idl.write_text(IDL.read_text().replace("namespace py wxmgw_thrift", "namespace py mcs_gen"))
    subprocess.run(["thrift", "--gen", "py", "-out", str(out), str(idl)], check=True)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("mcs_gen.WxMgw"), importlib.import_module("mcs_gen.ttypes")
    finally:
        sys.path.remove(str(out))


def push_fields(uuid, conf="c1", req="u1"):
    return dict(uuid=uuid, pushUrl=f"rtmp://127.0.0.1/live/{uuid}", audioPayloadType=8,
                audioCodec="PCMA", videoPayloadType=96, videoCodec="H264", confId=conf,
                reqUuid=req, weixin="0")


def test_thriftpy2_client(gateway):
    c = tpy_client(gateway)
    r = c.StartPush(tpy.StartPushReq(**push_fields("m-tpy")))
    assert r.code == 0 and r.port.audio % 2 == 0 and r.port.video % 2 == 0
    assert gateway.rtp_lo <= r.port.audio <= gateway.rtp_hi
    assert c.StartPush(tpy.StartPushReq(**push_fields("m-tpy", req="u2"))).port == r.port
    bad = c.StartPull(tpy.StartPullReq(uuid="x", confId="c1", pullUrl="http://nope"))
    assert bad.code == 400 and "pullUrl" in bad.message
    assert c.StopPush(tpy.StopPushReq(uuid="m-tpy", confId="c1")).code == 0
    assert c.StopPush(tpy.StopPushReq(uuid="m-tpy", confId="c1")).code == 404
    assert c.AvSync(tpy.AvSyncReq(uuid="nobody", confId="c1", syncUuid="")).code == 404
    c.close()


def test_apache_thrift_client(gateway, apache):
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport

    service, ttypes = apache
    sock = TSocket.TSocket("127.0.0.1", gateway.thrift_port)
    trans = (TTransport.TFramedTransport(sock) if gateway.transport == "framed"
             else TTransport.TBufferedTransport(sock))
    client = service.Client(TBinaryProtocol.TBinaryProtocol(trans))
    trans.open()
    try:
        r = client.StartPush(ttypes.StartPushReq(**push_fields("m-apache")))
        assert r.code == 0 and r.port.audio > 0
        pull = ttypes.StartPullReq(
            uuid="u-apache", pullUrl="rtmp://127.0.0.1/live/p", ssrc=2**32 - 1,
            masIp="127.0.0.1", audioPort=5000, videoPort=5002, audioPayloadType=8,
            audioCodec="pcma", videoPayloadType=96, VideoCodec="h264",
            pushAudioUrl="rtmp://127.0.0.1/live/mix", confId="c1")
        assert client.StartPull(pull).code == 0
        assert client.AvSync(ttypes.AvSyncReq(uuid="u-apache", confId="c1",
                                              syncUuid="m-apache")).code == 0
        assert client.StopPull(ttypes.StopPullReq(uuid="u-apache", confId="c1")).code == 0
        assert client.StopPush(ttypes.StopPushReq(uuid="m-apache", confId="c1")).code == 0
    finally:
        trans.close()


def test_garbage_bytes_do_not_stop_the_service(gateway):
    for junk in (b"\xff" * 64, b"GET / HTTP/1.1\r\n\r\n", b"\x80\x01\x00\x01" + b"\x7f" * 100, b""):
        with socket.create_connection(("127.0.0.1", gateway.thrift_port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                s.recv(100)
    c = tpy_client(gateway)
    assert c.StopPull(tpy.StopPullReq(uuid="x", confId="c")).code == 404
    c.close()


def test_concurrent_clients_leave_nothing_behind(gateway):
    errors: list[str] = []

    def worker(n: int) -> None:
        c = tpy_client(gateway)
        try:
            for i in range(10):
                uuid = f"m{n}-{i}"
                r = c.StartPush(tpy.StartPushReq(**push_fields(uuid, conf=f"c{n % 4}")))
                if r.code != 0:
                    errors.append(f"{uuid} start {r.code} {r.message}")
                r2 = c.StopPush(tpy.StopPushReq(uuid=uuid, confId=f"c{n % 4}"))
                if r2.code != 0:
                    errors.append(f"{uuid} stop {r2.code} {r2.message}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    state = gateway.state()
    assert state["resultCode"] == 10000
    assert state["legs"] == [] and state["ports"]["inUse"] == [] and state["rooms"] == []
    assert len(gateway.events("request")) >= 400


def test_metrics_endpoint(gateway):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.status_port}/metrics") as r:
        text = r.read().decode()
    assert 'wxmgw_requests_total{code="0",method="StartPush"}' in text


def test_sigterm_stops_legs_and_frees_ports(tmp_path: Path):
    gw = GatewayProcess(tmp_path, rtp_ports=20)
    c = tpy_client(gw)
    ports = c.StartPush(tpy.StartPushReq(**push_fields("m-term"))).port
    c.close()
    assert gw.stop(timeout=5) == 0
    for port in (ports.audio, ports.audio + 1, ports.video, ports.video + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
    assert gw.events("leg_stopped") and gw.events("gateway_stopped")
