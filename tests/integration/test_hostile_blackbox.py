"""Every hostile peer at once against a running gateway with live legs (issue #12's acceptance).

A real nginx-rtmp and a real `wxmgw serve` carry a mini-program's pull to a
UDP sink and a member's push. Then, together for a few seconds: Thrift
clients declaring 256 MB strings and sending garbage, HTTP garbage on the
status port, random datagrams on every RTP and RTCP port of the legs, two
pulls from hostile RTMP servers (AMF0 nested 5000 deep, 64 chunk streams of
never-ending 1 MB messages) and 1000 idle Thrift connections. The process
must stay up, the good pull must keep flowing, the MCS must still be
answered, and the memory must stay within +16 MB.
"""

from __future__ import annotations

import contextlib
import random
import resource
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import ffmpeg_publish_args
from hostile_rtmp import HostileRtmpServer
from media_checks import UdpSink, wait_for
from test_thrift_limits import client, push_req, rss_kb
from wxmgw_proc import GatewayProcess

from wxmgw.nginx import NginxRtmp
from wxmgw.thrift import wxmgw_thrift as t

RSS_GROWTH_LIMIT_KB = 16 << 10
ATTACK_SECONDS = 6.0
IDLE = 1000


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxRtmp]:
    with NginxRtmp(tmp_path / "nginx") as server:
        yield server


def pull_req(uuid: str, url: str, sink: UdpSink) -> Any:
    return t.StartPullReq(
        uuid=uuid, pullUrl=url, ssrc=7, masIp="127.0.0.1", audioPort=sink.audio,
        videoPort=sink.video, audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96,
        VideoCodec="H264", pushAudioUrl="", confId="blackbox")


def thrift_attacker(port: int, rng: random.Random, until: float) -> None:
    head = struct.pack(">Ii", 0x80010001, 9) + b"StartPush" + struct.pack(">i", 1)
    declared = head + b"\x0c\x00\x01\x0b\x00\x01" + struct.pack(">i", 256 << 20)
    while time.monotonic() < until:
        payload = declared + b"x" * (1 << 20) if rng.random() < 0.5 else rng.randbytes(4096)
        with contextlib.suppress(OSError), \
                socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
        gevent.sleep(0.01)


def http_attacker(port: int, rng: random.Random, until: float) -> None:
    junk = [b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
            b"POST /monitor/state HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nxx",
            b"\x16\x03\x01\x02\x00" + bytes(512)]
    while time.monotonic() < until:
        with contextlib.suppress(OSError), \
                socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(rng.choice(junk) if rng.random() < 0.7 else rng.randbytes(2048))
        gevent.sleep(0.01)


def udp_attacker(ports: list[int], rng: random.Random, until: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while time.monotonic() < until:
            for port in ports:
                with contextlib.suppress(OSError):
                    s.sendto(rng.randbytes(rng.randrange(0, 1400)), ("127.0.0.1", port))
            gevent.sleep(0.002)


def test_everything_hostile_at_once_leaves_the_legs_flowing(
        nginx: NginxRtmp, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * IDLE), hard))
    gw = GatewayProcess(tmp_path, rtp_ports=20)
    sink, hostile = UdpSink(), [HostileRtmpServer("nested"), HostileRtmpServer("chunk_streams")]
    idle: list[socket.socket] = []
    try:
        procs.append(subprocess.Popen(ffmpeg_publish_args(nginx.rtmp_url("cam"), seconds=60),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        mcs = client(gw)
        assert mcs.StartPull(pull_req("good", nginx.rtmp_url("cam"), sink)).code == 0
        push = mcs.StartPush(push_req("member"))
        assert push.code == 0
        for i, server in enumerate(hostile):
            assert mcs.StartPull(pull_req(f"evil-{i}", server.url(), UdpSink())).code == 0
        wait_for(lambda: sink.counts["video"] > 50, what="the good pull flowing")
        time.sleep(2.0)  # the process at its working size
        before = rss_kb(gw.proc.pid)
        flowing = sink.counts["video"]

        ports = [p + d for leg in gw.state()["legs"] for p in leg["ports"] for d in (0, 1)]
        until = time.monotonic() + ATTACK_SECONDS
        rng = random.Random(12)
        attackers = [gevent.spawn(thrift_attacker, gw.thrift_port, rng, until) for _ in range(4)]
        attackers += [gevent.spawn(http_attacker, gw.status_port, rng, until) for _ in range(2)]
        attackers.append(gevent.spawn(udp_attacker, ports, rng, until))
        during = client(gw)  # the MCS, amid all of it: answered within its 5 s timeout
        r = during.StartPush(push_req("mcs-during"))
        during.close()
        gevent.joinall(attackers)
        assert r.code == 0, r.message
        assert gw.proc.poll() is None, "the gateway died"
        assert sink.counts["video"] > flowing + 50, "the good pull stopped flowing"
        grown = rss_kb(gw.proc.pid) - before
        assert grown < RSS_GROWTH_LIMIT_KB, f"RSS grew by {grown} kB"
        legs = {leg["uuid"]: leg for leg in gw.state()["legs"]}
        assert legs["good"]["state"] in ("running", "flowing"), legs["good"]["state"]
        assert all(legs[f"evil-{i}"]["state"] != "running" for i in range(2))

        # Then 1000 idle connections: they cost memory (a greenlet each) but no delay.
        held = rss_kb(gw.proc.pid)
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", gw.thrift_port), timeout=5))
        mcs = client(gw)
        assert mcs.StopPush(t.StopPushReq(uuid="mcs-during", confId="limits")).code == 0
        mcs.close()
        assert gw.proc.poll() is None and sink.counts["video"] > flowing + 100
        print(f"after {ATTACK_SECONDS:.0f} s of attack: RSS +{grown} kB, "
              f"{sink.counts['video'] - flowing} video packets through; "
              f"{IDLE} idle connections: +{rss_kb(gw.proc.pid) - held} kB")
    finally:
        for s in idle:
            s.close()
        for server in hostile:
            server.close()
        sink.close()
        gw.stop()
