"""The front's reconciliation end to end: a lost gateway, a gateway restarted empty.

Real nginx-rtmp (its ``on_publish``/``on_play`` asking the front), two real
``wxmgw serve`` without a journal, a real ``callroute serve`` reconciling
them (defaults: every second, move after 5 s of silence), ffmpeg as the
mini-programs' publishers and players.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import thriftpy2
from media_checks import wait_for
from test_callroute import FrontProcess, message
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess, free_port

from wxmgw.demo import ALICE, BOB, MiniProgram, Player, publisher_args
from wxmgw.nginx import NginxRtmp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_reconcile_thrift")


@dataclass
class Stack:
    nginx: NginxRtmp
    gateways: list[GatewayProcess]
    front: FrontProcess

    def home(self, conf: str) -> GatewayProcess | None:
        """The gateway running a room of ``conf`` (one at most)."""
        homes = [g for g in self.gateways if g.proc.poll() is None
                 and any(r["confId"] == conf for r in g.state()["rooms"])]
        assert len(homes) <= 1
        return homes[0] if homes else None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    gateways = [GatewayProcess(tmp_path, rtp_ports=20) for _ in range(2)]
    port = free_port()
    nginx = NginxRtmp(tmp_path / "nginx", notify_url=f"http://127.0.0.1:{port}/rtmp")
    nginx.start()
    base = nginx.rtmp_url("").rstrip("/")
    front = None
    try:
        front = FrontProcess(tmp_path, gateways, push_base=base, play_base=base, port=port)
        yield Stack(nginx, gateways, front)
    finally:
        if front is not None:
            front.stop()
        for gw in gateways:
            gw.stop()
        nginx.stop()


def join(stack: Stack, mp: MiniProgram, conf: str) -> dict[str, str]:
    result: dict[str, str] = stack.front.send(message("wxjoinconf", mp.uuid, conf))["result"]
    assert "code" not in result, result
    return result


LISTEN = 3.0


def hear(players: dict[MiniProgram, Player]) -> dict[MiniProgram, float | None]:
    """The tone each player heard (fresh players, as WeChat's live-player reconnects)."""
    return {peer: player.result().tone_hz for peer, player in players.items()}


def players(joined: dict[MiniProgram, dict[str, str]], workdir: Path) -> dict[MiniProgram, Player]:
    """Alice's and bob's mix streams played at once, by the peer each should carry."""
    return {BOB: Player(joined[ALICE]["pullaudiourl"], workdir / "alice", LISTEN, video=False),
            ALICE: Player(joined[BOB]["pullaudiourl"], workdir / "bob", LISTEN, video=False)}


def heard_each_other(tones: dict[MiniProgram, float | None]) -> bool:
    return all(hz is not None and abs(hz - peer.tone_hz) < 15 for peer, hz in tones.items())


def test_a_lost_gateway_s_conference_moves_and_plays_on(stack: Stack, tmp_path: Path) -> None:
    joined = {mp: join(stack, mp, "lost") for mp in (ALICE, BOB)}
    publishers = [subprocess.Popen(publisher_args(mp, joined[mp]["pushurl"], 60),
                                   stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for mp in (ALICE, BOB)]
    try:
        assert heard_each_other(hear(players(joined, tmp_path / "before")))
        home = stack.home("lost")
        assert home is not None
        home.kill()
        killed = time.monotonic()
        other = next(g for g in stack.gateways if g is not home)
        wait_for(lambda: stack.home("lost") is other, timeout=20, what="conference moved")
        moved = time.monotonic() - killed
        tones = hear(players(joined, tmp_path / "after"))
        heard = time.monotonic() - killed - LISTEN  # when both players' audio began
        assert heard_each_other(tones), tones
        events = [e for e in stack.front.events() if e["event"] == "conference_moved"]
        target = f"127.0.0.1:{other.thrift_port}"
        assert [(e["confId"], e["to"]) for e in events] == [("lost", target)]
        print(f"conference on the other gateway {moved:.1f} s after the kill, "
              f"each hears the other again from {heard:.1f} s")
    finally:
        for proc in publishers:
            proc.kill()
            proc.wait()
        for mp in (ALICE, BOB):
            stack.front.send(message("wxquitconf", mp.uuid, "lost"))


def test_a_gateway_restarted_empty_gets_its_legs_back_and_orphans_go(stack: Stack) -> None:
    for mp in (ALICE, BOB):
        join(stack, mp, "again")
    home = stack.home("again")
    assert home is not None
    mcs = make_client(tpy.WxMgw, "127.0.0.1", home.thrift_port, timeout=10000)
    orphan = mcs.StartPull(tpy.StartPullReq(  # a leg no conference of the front needs
        uuid="ghost", pullUrl=stack.nginx.rtmp_url("ghost"), ssrc=1, masIp="", audioPort=0,
        videoPort=0, audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96,
        VideoCodec="H264", pushAudioUrl="", confId="nobody"))
    mcs.close()
    assert orphan.code == 0
    wait_for(lambda: {leg["uuid"] for leg in home.state()["legs"]} == {"alice", "bob"},
             timeout=15, what="the orphan stopped")
    home.kill()
    restarted = time.monotonic()
    home.start_again()  # no journal: it starts empty
    wait_for(lambda: {leg["uuid"] for leg in home.state()["legs"]} == {"alice", "bob"},
             timeout=15, what="legs started again by the front")
    print(f"legs back {time.monotonic() - restarted:.1f} s after the restart")
    restarted_events = [e for e in stack.front.events() if e["event"] == "leg_restarted"]
    assert {e["uuid"] for e in restarted_events} == {"alice", "bob"}
    assert any(e["event"] == "orphan_stopped" and e["uuid"] == "ghost"
               for e in stack.front.events())
    for mp in (ALICE, BOB):
        stack.front.send(message("wxquitconf", mp.uuid, "again"))
