import socket

import pytest

from wxmgw.conference import Registry
from wxmgw.errors import Code
from wxmgw.legs.base import LegContext
from wxmgw.ports import PortAllocator
from wxmgw.service import Metrics, WxMgwHandler
from wxmgw.thrift import wxmgw_thrift as t


@pytest.fixture
def handler():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lo = s.getsockname()[1] & ~1
    ports = PortAllocator(lo, lo + 11, "127.0.0.1")
    registry = Registry(LegContext(ports, "127.0.0.1"))
    yield WxMgwHandler(registry, Metrics())
    registry.stop_all()
    assert ports.in_use == []


def push_req(uuid="m1", **over):
    base = dict(uuid=uuid, pushUrl="rtmp://127.0.0.1/live/v", audioPayloadType=8,
                audioCodec="PCMA", videoPayloadType=96, videoCodec="H264", confId="c1",
                reqUuid="u1", weixin="")
    base.update(over)
    return t.StartPushReq(**base)


def pull_req(uuid="u1", **over):
    base = dict(uuid=uuid, pullUrl="rtmp://127.0.0.1/live/p", ssrc=7, masIp="127.0.0.1",
                audioPort=5000, videoPort=5002, audioPayloadType=8, audioCodec="PCMA",
                videoPayloadType=96, VideoCodec="H264", pushAudioUrl="", confId="c1")
    base.update(over)
    return t.StartPullReq(**base)


def test_repeated_start_push_shares_ports(handler):
    a = handler.StartPush(push_req(reqUuid="u1"))
    b = handler.StartPush(push_req(reqUuid="u2"))
    assert a.code == b.code == 0 and a.port == b.port and a.port.audio > 0
    assert handler.registry.rtp2rtmp["m1"].requesters == {"u1", "u2"}
    assert handler.StartPush(push_req(pushUrl="rtmp://127.0.0.1/live/other")).code == Code.CONFLICT
    assert handler.StopPush(t.StopPushReq(uuid="m1", confId="c1")).code == 0
    assert handler.StopPush(t.StopPushReq(uuid="m1", confId="c1")).code == Code.UNKNOWN_LEG


def test_repeated_start_pull(handler):
    assert handler.StartPull(pull_req()).code == 0
    assert handler.StartPull(pull_req()).code == 0
    assert handler.StartPull(pull_req(ssrc=8)).code == Code.CONFLICT
    assert handler.StopPull(t.StopPullReq(uuid="u1", confId="other")).code == Code.CONFLICT
    assert handler.StopPull(t.StopPullReq(uuid="u1", confId="c1")).code == 0
    assert handler.registry.rooms == {}


def test_weixin_needs_local_mini_program(handler):
    r = handler.StartPush(push_req(uuid="u9", weixin="1"))
    assert r.code == Code.NO_LOCAL_SOURCE and "u9" in r.message
    assert handler.StartPull(pull_req(uuid="u9")).code == 0
    r = handler.StartPush(push_req(uuid="u9", weixin="1"))
    assert r.code == 0 and (r.port.audio, r.port.video) == (0, 0)


def test_av_sync_codes(handler):
    req = t.AvSyncReq(uuid="u1", confId="c1", syncUuid="m1")
    assert handler.AvSync(req).code == Code.UNKNOWN_LEG
    handler.StartPull(pull_req())
    assert handler.AvSync(req).code == Code.UNKNOWN_LEG
    handler.StartPush(push_req())
    assert handler.AvSync(req).code == 0
    assert handler.registry.rtmp2rtp["u1"].sync_uuid == "m1"
    handler.StopPush(t.StopPushReq(uuid="m1", confId="c1"))
    assert handler.registry.rtmp2rtp["u1"].sync_uuid == ""
    assert handler.AvSync(t.AvSyncReq(uuid="u1", confId="c1", syncUuid="")).code == 0


def test_no_free_port_leaves_nothing_half_started(handler):
    codes = [handler.StartPush(push_req(uuid=f"m{i}")).code for i in range(4)]
    assert codes == [0, 0, 0, Code.NO_FREE_PORT]
    assert "m3" not in handler.registry.rtp2rtmp
    assert len(handler.registry.ctx.ports.in_use) == 6


def test_unexpected_exception_becomes_internal_code(handler, monkeypatch, caplog):
    def boom(_params):
        raise RuntimeError("kaput")

    monkeypatch.setattr(handler.registry, "start_push", boom)
    r = handler.StartPush(push_req())
    assert r.code == Code.INTERNAL and "kaput" in r.message
    assert any(rec.exc_info for rec in caplog.records)


def test_missing_struct_is_invalid(handler):
    assert handler.StopPull(None).code == Code.INVALID_ARGUMENT


def test_stats_lines_get_bitrates():
    from wxmgw.app import with_rates

    stats = {"videoRtp": {"bytes": 250_000, "packets": 300}, "push": {"bytes": 0}, "frames": 5}
    with_rates(stats, {"videoRtp": {"bytes": 125_000}}, 10.0)
    assert stats["videoRtp"]["kbps"] == 100.0 and stats["push"]["kbps"] == 0.0
    assert "kbps" not in stats
