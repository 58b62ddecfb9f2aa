"""A hostile live server can neither kill a pull nor bloat the gateway (issue #12, findings 2, 3).

Each server shakes hands as RTMP says, then misbehaves: deeply nested AMF0
in the answer to ``connect``, or 64 chunk streams of 1 MB messages that
never end. The pull must go on retrying, its leg saying ``reconnecting``,
and the gateway's memory must stay within the session's limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import numpy as np
import pytest
import thriftpy2
from hostile_rtmp import CHUNK, HostileRtmpServer
from media_checks import wait_for
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess

from wxmgw.media.frames import AudioFrame
from wxmgw.media.rtmp_reader import RtmpReader
from wxmgw.media.rtmp_writer import RtmpWriter
from wxmgw.rtmp.chunk import DEFAULT_LIMITS
from wxmgw.supervise import RECONNECTING

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_hostile_thrift")
#: Acceptance of issue #12: hostile input leaves the process within +16 MB.
RSS_GROWTH_LIMIT = 16 << 20


@pytest.fixture(params=["nested", "chunk_streams"])
def server(request: pytest.FixtureRequest) -> Iterator[HostileRtmpServer]:
    s = HostileRtmpServer(request.param)
    yield s
    s.close()


def test_reader_outlives_a_hostile_server(server: HostileRtmpServer) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    reader = RtmpReader(server.url(), on_video=lambda f: None, on_audio=lambda f: None,
                        on_event=lambda kind, info: events.append((kind, info)), name="t")
    reader.start()
    try:
        wait_for(lambda: server.connections >= 3, what="three sessions tried")
        assert not reader.join(0), "the reader's greenlet died"
        assert reader.stats.malformed >= 2 and reader.stats.crashes == 0
        assert reader.state == RECONNECTING
        (disconnected,) = [info for kind, info in events if kind == "disconnected"]  # one burst
        assert _refused(server.mode, disconnected["error"])
    finally:
        reader.close()
        assert reader.join(5)


def test_a_publication_reset_as_it_starts_leaves_nothing_behind() -> None:
    """The server accepts the publication and resets it before its first tag.

    The session counts as one (the server took it), its failure is a
    disconnect, and nothing of it is left: no greenlet reading a closed
    client and crashing on it again and again.
    """
    server = HostileRtmpServer("reset_after_publish")
    events: list[tuple[str, dict[str, Any]]] = []
    writer = RtmpWriter(server.url(), name="t", on_event=lambda k, i: events.append((k, i)),
                        video=False)
    try:
        writer.write_audio(AudioFrame(np.zeros(960, np.int16), 0.0), 0)
        wait_for(lambda: any(kind == "disconnected" for kind, _ in events),
                 what="the reset seen")
        gevent.sleep(1.5)  # a left-over listener would have crashed, and again after 0.5 s
        assert [kind for kind, _ in events] == ["connected", "disconnected"]
        assert writer.stats.crashes == 0 and writer.state == RECONNECTING
    finally:
        writer.close()
        server.close()


def _refused(mode: str, error: str) -> bool:
    """Whether ``error`` is the limit that ``mode`` runs into first."""
    if mode == "nested":
        return "nested too deep" in error
    return "more than 32 chunk streams" in error or "of partial messages" in error


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        (kb,) = (line.split()[1] for line in f if line.startswith("VmRSS:"))
    return int(kb) * 1024


def _leg(gw: GatewayProcess, uuid: str) -> dict[str, Any]:
    (leg,) = [x for x in gw.state()["legs"] if x["uuid"] == uuid]
    return leg


def _retried(gw: GatewayProcess, server: HostileRtmpServer, uuid: str) -> bool:
    leg = _leg(gw, uuid)
    return (server.connections >= 3 and leg["state"] == RECONNECTING
            and leg["stats"]["malformed"] >= 2)


def test_wxmgw_serve_pulls_from_hostile_servers(tmp_path: Path) -> None:
    """Finding 2 and 3 end to end: both legs retry, the process stays up and small."""
    gw = GatewayProcess(tmp_path, rtp_ports=4)
    servers = {mode: HostileRtmpServer(mode) for mode in ("nested", "chunk_streams")}
    mcs = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
    try:
        before = _rss(gw.proc.pid)
        for mode, server in servers.items():
            r = mcs.StartPull(tpy.StartPullReq(
                uuid=f"mp-{mode}", pullUrl=server.url(), ssrc=1, masIp="", audioPort=0,
                videoPort=0, audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96,
                VideoCodec="H264", pushAudioUrl="", confId="conf-hostile"))
            assert r.code == 0, r.message
        for mode, server in servers.items():
            wait_for(partial(_retried, gw, server, f"mp-{mode}"), what=f"{mode} retried")
        # It got to send plenty: each refused session takes a chunk of each of
        # 32 chunk streams before the 33rd is refused (what the kernel's
        # buffers take besides depends on the machine's speed, not counted).
        assert servers["chunk_streams"].sent_partial >= 2 * DEFAULT_LIMITS.max_chunk_streams * CHUNK
        grown = _rss(gw.proc.pid) - before
        assert grown < RSS_GROWTH_LIMIT, f"the gateway grew by {grown >> 20} MB"
        errors = {e["uuid"]: e["error"] for e in gw.events("pull_disconnected")}
        for mode in servers:
            assert _refused(mode, errors[f"mp-{mode}"])
        assert "Traceback" not in gw.log() and not gw.events("pull_crashed")
        for mode in servers:
            assert mcs.StopPull(tpy.StopPullReq(uuid=f"mp-{mode}", confId="conf-hostile")).code == 0
        assert gw.state()["legs"] == []
    finally:
        mcs.close()
        for server in servers.values():
            server.close()
        assert gw.stop() == 0
