"""Whole conferences through the callroute front: real nginx-rtmp, wxmgw and callroute.

nginx-rtmp asks the front (``on_publish``/``on_play``) before every publish
and play, as in ``make run``. The mini-programs are ffmpeg publishers and
players from :mod:`wxmgw.demo`: each flashes its colour and sounds its tone
for the first 300 ms of every second, and a player's ffmpeg (the independent
decoder) reports every frame's chroma and loudness, so the test can tell
whose video and whose tone a player got and how far apart they are.
One gateway serves the module; each test has its own nginx and front.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import pytest
from media_checks import wait_for
from wxmgw_proc import ROOT, GatewayProcess, free_port

from wxmgw import demo
from wxmgw.access import redact_token
from wxmgw.demo import ALICE, BOB, MiniProgram, Player, call
from wxmgw.nginx import NginxRtmp
from wxmgw.procs import terminate
from wxmgw.rtp.packet import RtpPacket

LISTEN = 4.0
"""Seconds of stream each player decodes."""
PAIRS = ((ALICE, BOB), (BOB, ALICE))


class Stack:
    """nginx-rtmp guarded by a ``callroute serve`` process that drives ``gateway``."""

    def __init__(self, tmp: Path, gateway: GatewayProcess, extra: list[str]) -> None:
        self.gateway = gateway
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = tmp / "callroute.log"
        self.nginx = NginxRtmp(tmp / "nginx", notify_url=f"{self.url}rtmp")
        self.nginx.start()
        base = f"rtmp://127.0.0.1:{self.nginx.rtmp_port}/live"
        self.joined: set[tuple[str, str]] = set()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callroute.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port),
             "--wxmgw", f"127.0.0.1:{gateway.thrift_port}@{gateway.status_port}",
             "--rtmp-push-base", base, "--rtmp-play-base", base, "--poll-interval", "0.2",
             "--log-file", str(self.log_path), *extra],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_for(self._healthy, what="callroute front up with a healthy gateway")
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        try:
            return all(g["healthy"] for g in self.state()["gateways"])
        except OSError:
            return False

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}monitor/state", timeout=5) as resp:
            body: dict[str, Any] = json.load(resp)
            return body

    def send(self, method: str, mp: MiniProgram, conf: str, **params: str) -> dict[str, Any]:
        result = call(self.url, method, mp.uuid, conf, **params)
        assert "code" not in result, (method, mp.uuid, result)
        if method == "wxjoinconf":
            self.joined.add((mp.uuid, conf))
        elif method == "wxquitconf":
            self.joined.discard((mp.uuid, conf))
        return result

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = (json.loads(x) for x in self.log_path.read_text().splitlines() if x[:1] == "{")
        return [e for e in lines if e.get("event") == name]

    def stop(self) -> None:
        """Members still joined (a test failed) quit, so the shared gateway is left idle."""
        for uuid, conf in self.joined:
            call(self.url, "wxquitconf", uuid, conf)
        terminate(self.proc)
        self.nginx.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), rtp_ports=20)
    yield gw
    assert gw.stop() == 0


@pytest.fixture
def masless(tmp_path: Path, gateway: GatewayProcess) -> Iterator[Stack]:
    stack = Stack(tmp_path, gateway, [])
    yield stack
    stack.stop()


def publish(procs: list[subprocess.Popen[bytes]], mp: MiniProgram, url: str,
            seconds: float = 40.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(demo.publisher_args(mp, url, seconds), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(proc)
    return proc


def stream_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def smooth(rx: demo.Reception, seconds: float) -> bool:
    """At least ``seconds`` of video without missing frames (a late joiner of a live stream
    waits for the next keyframe: the span starts there)."""
    return rx.video_span >= seconds and rx.frames >= 0.9 * rx.video_span * demo.FPS


def gateway_idle(gw: GatewayProcess) -> bool:
    state = gw.state()
    return state["load"]["legs"] == 0 and not state["ports"]["inUse"]


@dataclass(slots=True)
class Conference:
    """What happened in a MAS-less conference of alice and bob (see :func:`conference`)."""

    mixes: dict[MiniProgram, demo.Reception] = field(default_factory=dict)
    video: demo.Reception | None = None
    idle: bool = False
    front_state: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def conference(tmp_path_factory: pytest.TempPathFactory,
               gateway: GatewayProcess) -> Iterator[Conference]:
    """Alice and bob join, publish, ask for each other's video with the mix (wxreqavsync);
    their players play ``pullaudiourl``; alice plays bob's ``pullurl`` from wxreqvideo;
    both quit."""
    tmp = tmp_path_factory.mktemp("conference")
    stack = Stack(tmp, gateway, [])
    publishers: list[subprocess.Popen[bytes]] = []
    players: dict[MiniProgram, Player] = {}
    got = Conference()
    try:
        joined = {mp: stack.send("wxjoinconf", mp, "e2e") for mp in (ALICE, BOB)}
        assert {j["audiortpport"] for j in joined.values()} == {"0"}  # no MAS
        for mp in (ALICE, BOB):
            publish(publishers, mp, joined[mp]["pushurl"])
        for mp, peer in PAIRS:
            reply = stack.send("wxreqavsync", mp, "e2e", antissrc=joined[peer]["audiossrc"],
                               seq=f"s-{mp.uuid}", type="1")
            assert reply["seq"] == f"s-{mp.uuid}" and reply["pullurl"]
        for mp in (ALICE, BOB):
            mix = stream_name(joined[mp]["pullaudiourl"])
            wait_for(lambda n=mix: demo.has_video(stack.nginx, n),  # type: ignore[misc]
                     what=f"{mp.uuid}'s mix stream with the synced video")
        players = {mp: Player(joined[mp]["pullaudiourl"], tmp / mp.uuid, LISTEN)
                   for mp in (ALICE, BOB)}
        got.mixes = {mp: player.result() for mp, player in players.items()}

        pullurl = stack.send("wxreqvideo", ALICE, "e2e", antissrc=joined[BOB]["audiossrc"],
                             seq="v1", type="1")["pullurl"]
        wait_for(lambda: stack.nginx.is_publishing(stream_name(pullurl)), what="video stream")
        got.video = Player(pullurl, tmp / "video", 3.0, audio=False).result()

        for mp in (ALICE, BOB):
            assert stack.send("wxquitconf", mp, "e2e") == {}
        wait_for(lambda: gateway_idle(gateway), what="no legs and no RTP ports on the gateway")
        got.idle = True
        got.front_state = stack.state()
        yield got
    finally:
        for player in players.values():
            player.kill()
        for proc in publishers:
            proc.kill()
            proc.wait()
        stack.stop()


def test_each_player_gets_the_others_video_and_tone_not_its_own(
    conference: Conference,
) -> None:
    for mp, peer in PAIRS:
        rx = conference.mixes[mp]
        assert smooth(rx, LISTEN - 1.5), rx.summary()
        assert demo.verdict(rx, mp, peer, lip_sync=False) == [], rx.summary()


def test_mix_stream_is_lip_synced(conference: Conference) -> None:
    low, high = demo.LIP_SYNC_MS
    for mp, _ in PAIRS:
        rx = conference.mixes[mp]
        assert rx.av_offset_ms is not None and low <= rx.av_offset_ms <= high, rx.summary()


def test_wxreqvideo_pullurl_plays_the_member(conference: Conference) -> None:
    rx = conference.video
    assert rx is not None and smooth(rx, 1.0), rx
    assert rx.flashes[BOB.chroma] > 0 and rx.flashes[ALICE.chroma] == 0, rx.summary()


def test_quitting_leaves_no_leg_and_no_port(conference: Conference) -> None:
    assert conference.idle
    state = conference.front_state
    assert (state["conferences"], state["members"], state["pushes"]) == (0, 0, 0)


class MasSocket:
    """A MAS port: the RTP packets that arrive on a UDP socket."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[RtpPacket] = []
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            data = self.sock.recv(65536)
            if len(data) >= 12 and not 192 <= data[1] <= 223:  # RTCP (RFC 5761 section 4)
                self.packets.append(RtpPacket.parse(data))

    def close(self) -> None:
        self._reader.kill()
        self.sock.close()


def test_mas_receives_rtp_from_a_joined_member(
    tmp_path: Path, gateway: GatewayProcess, procs: list[subprocess.Popen[bytes]],
) -> None:
    audio, video = MasSocket(), MasSocket()
    stack = Stack(tmp_path, gateway, ["--mas-audio", f"127.0.0.1:{audio.port}",
                                      "--mas-video", f"127.0.0.1:{video.port}"])
    try:
        joined = stack.send("wxjoinconf", ALICE, "mas")
        assert (joined["audioip"], joined["audiortpport"]) == ("127.0.0.1", str(audio.port))
        assert (joined["videoip"], joined["videortpport"]) == ("127.0.0.1", str(video.port))
        publish(procs, ALICE, joined["pushurl"])
        wait_for(lambda: len(audio.packets) > 50 and len(video.packets) > 20, what="RTP")
        ssrc = int(joined["audiossrc"])
        assert {(p.payload_type, p.ssrc) for p in audio.packets} == {(8, ssrc)}
        assert {(p.payload_type, p.ssrc) for p in video.packets} == {(96, ssrc)}
        assert stack.send("wxquitconf", ALICE, "mas") == {}
        wait_for(lambda: gateway_idle(gateway), what="no legs and no RTP ports on the gateway")
    finally:
        stack.stop()
        audio.close()
        video.close()


def test_live_server_refuses_names_the_front_did_not_issue(
    masless: Stack, procs: list[subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    joined = masless.send("wxjoinconf", ALICE, "acl")
    publish(procs, ALICE, joined["pushurl"])
    wait_for(lambda: masless.nginx.is_publishing(stream_name(joined["pushurl"])),
             what="the issued name is published")
    guessed = ["0" * 32, stream_name(joined["pushurl"])[:-1] + "x", ALICE.uuid]
    for name in guessed:
        pirate = publish(procs, BOB, masless.nginx.rtmp_url(name), seconds=5)
        assert pirate.wait(20) != 0, f"publishing {name} was allowed"
        player = Player(masless.nginx.rtmp_url(name), tmp_path / f"play-{name}", 1.0)
        with pytest.raises(RuntimeError, match="player failed"):
            player.result()
        assert not masless.nginx.is_publishing(name)
    refused = {(e["event"], e["stream"]) for e in
               masless.events("rtmp_publish") + masless.events("rtmp_play")
               if not e["allowed"]}
    assert refused >= {(f"rtmp_{call}", redact_token(name)) for name in guessed
                       for call in ("publish", "play")}  # logged cut, as every stream name
    assert masless.send("wxquitconf", ALICE, "acl") == {}
