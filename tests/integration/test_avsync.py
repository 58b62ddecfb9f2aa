"""AvSync end to end: a member's video in a mini-program's mix stream, lip-synced.

A real nginx-rtmp and a real `wxmgw serve`. The mini-program is an ffmpeg
publisher; a socket peer plays the MAS and learns where the mini-program's
audio RTP comes from, which is where the MAS's mix goes back to. GStreamer's
``rtpbin`` sends, from one file with one clock and truthful RTCP sender
reports, a member's video (black, a white picture every second) to the
member's StartPush ports and the conference mix (a 40 ms beep every second,
at the same instants) to the mini-program. After AvSync, ffmpeg records the
mini-program's ``pushAudioUrl`` and FFmpeg decodes it: each flash must
come with its beep.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import numpy as np
import pytest
import thriftpy2
from conftest import LiveServer, ffmpeg_publish_args
from media_checks import beep_times, flash_times, offsets, record, wait_for
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess, free_port_range

from wxmgw.media.frames import AUDIO_RATE

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_avsync_thrift")

CONF = "conf-av"
VIDEO_PT, AUDIO_PT = 96, 8
#: Flash and beep: 40 ms at the start of every second, in picture and in sound.
FLASH = "lt(mod(t,1),0.04)"
MAX_OFFSET = 0.040


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), rtp_ports=24,
                        extra=["--stats-interval", "1"])
    yield gw
    assert gw.stop() == 0


@pytest.fixture(scope="module")
def mcs(gateway: GatewayProcess) -> Iterator[Any]:
    c = make_client(tpy.WxMgw, "127.0.0.1", gateway.thrift_port, timeout=10000)
    yield c
    c.close()


@pytest.fixture(scope="module")
def mini(live: LiveServer) -> Iterator[str]:
    """The mini-programs' published stream (each test's mini-program pulls it)."""
    url = live.rtmp_url("mini")
    proc = subprocess.Popen(ffmpeg_publish_args(url, seconds=300, fps=15),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: live.is_publishing("mini"), what="mini-program publishing")
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def flashes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of a member: H.264 black with a white picture, and PCM with a 1 kHz beep,
    both for 40 ms at the start of every second."""
    out = tmp_path_factory.mktemp("media") / "flashes.mkv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"color=c=black:s=160x120:r=25:d=30,drawbox=w=iw:h=ih:"
         f"color=white:t=fill:enable='{FLASH}'",
         "-f", "lavfi", "-i", f"aevalsrc='if({FLASH},0.5*sin(2*PI*1000*t),0)':s=8000:d=30",
         "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency",
         "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le",
         str(out)],
        check=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    return out


class MasPeer:
    """The MAS's two ports: it only learns where the mini-program's audio comes from."""

    def __init__(self) -> None:
        lo, _ = free_port_range(4)
        self.socks = []
        for port in (lo, lo + 2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            self.socks.append(s)
        self.video_port, self.audio_port = lo, lo + 2
        self.audio_source: tuple[str, int] | None = None
        self._greenlets = [gevent.spawn(self._drain, s) for s in self.socks]

    def _drain(self, sock: socket.socket) -> None:
        while True:
            _, addr = sock.recvfrom(65536)
            if sock is self.socks[1]:
                self.audio_source = addr

    def close(self) -> None:
        gevent.killall(self._greenlets)
        for s in self.socks:
            s.close()


@pytest.fixture
def mas() -> Iterator[MasPeer]:
    peer = MasPeer()
    yield peer
    peer.close()


def start_pull(mcs: Any, live: LiveServer, uuid: str, pull_url: str,
               mas: MasPeer | None) -> None:
    r = mcs.StartPull(tpy.StartPullReq(
        uuid=uuid, pullUrl=pull_url, ssrc=0x51, masIp="127.0.0.1" if mas else "",
        audioPort=mas.audio_port if mas else 0, videoPort=mas.video_port if mas else 0,
        audioPayloadType=AUDIO_PT, audioCodec="PCMA", videoPayloadType=VIDEO_PT,
        VideoCodec="H264", pushAudioUrl=live.rtmp_url(f"{uuid}-mix"), confId=CONF))
    assert r.code == 0, r.message


def start_push(mcs: Any, live: LiveServer, uuid: str, req: str) -> Any:
    r = mcs.StartPush(tpy.StartPushReq(
        uuid=uuid, pushUrl=live.rtmp_url(f"{uuid}-seen"), audioPayloadType=AUDIO_PT,
        audioCodec="PCMA", videoPayloadType=VIDEO_PT, videoCodec="H264", confId=CONF,
        reqUuid=req, weixin="0"))
    assert r.code == 0, r.message
    return r.port


def av_sync(mcs: Any, uuid: str, sync: str) -> int:
    return int(mcs.AvSync(tpy.AvSyncReq(uuid=uuid, confId=CONF, syncUuid=sync)).code)


def leg(gw: GatewayProcess, kind: str, uuid: str) -> dict[str, Any]:
    (found,) = [x for x in gw.state()["legs"] if x["kind"] == kind and x["uuid"] == uuid]
    return found


def has_video(gw: GatewayProcess, uuid: str) -> bool:
    return int(leg(gw, "rtp2rtmp", uuid)["stats"]["video"]["frames"]) > 0


def rtpbin_sender(media: Path, video_port: int, audio_port: int, video_delay_ms: int) -> list[str]:
    """gst-launch arguments: the file's video and audio as two RTP sessions of one rtpbin
    (one clock, one CNAME, sender reports on port + 1), paced in real time.

    ``video_delay_ms`` holds every video packet back that long on its way out
    (the sink's ``ts-offset``): the RTP timestamps and the sender reports stay
    truthful, so only the SRs can tell the receiver the picture is that late.
    """
    delay_ns = video_delay_ms * 1_000_000
    pipeline = (
        f"rtpbin name=rb filesrc location={media} ! matroskademux name=d "
        f"d.video_0 ! queue ! h264parse ! rtph264pay pt={VIDEO_PT} config-interval=-1 "
        f"! rb.send_rtp_sink_0 rb.send_rtp_src_0 ! udpsink host=127.0.0.1 port={video_port} "
        f"ts-offset={delay_ns} "
        f"rb.send_rtcp_src_0 ! udpsink host=127.0.0.1 port={video_port + 1} sync=false "
        f"async=false "
        f"d.audio_0 ! queue ! audioconvert ! audio/x-raw,format=S16LE,rate=8000,channels=1 "
        f"! alawenc ! rtppcmapay pt={AUDIO_PT} min-ptime=20000000 max-ptime=20000000 "
        f"! rb.send_rtp_sink_1 rb.send_rtp_src_1 ! udpsink host=127.0.0.1 port={audio_port} "
        f"rb.send_rtcp_src_1 ! udpsink host=127.0.0.1 port={audio_port + 1} sync=false "
        f"async=false"
    )
    return ["gst-launch-1.0", "-q", *pipeline.split()]


@pytest.mark.parametrize(("live", "video_delay_ms"), [
    ("nginx-rtmp", 0), ("nginx-rtmp", 300), ("node-media-server", 0),
], indirect=["live"])
def test_member_video_is_lip_synced_with_the_mix(
        video_delay_ms: int, live: LiveServer, gateway: GatewayProcess, mcs: Any, mini: str,
        flashes: Path, mas: MasPeer, procs: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    mp, member = f"mp-lip{video_delay_ms}", f"m-lip{video_delay_ms}"
    start_pull(mcs, live, mp, mini, mas)
    wait_for(lambda: mas.audio_source is not None, what="the mini-program's audio RTP")
    assert mas.audio_source is not None
    ports = start_push(mcs, live, member, req=mp)
    procs.append(subprocess.Popen(
        rtpbin_sender(flashes, ports.video, mas.audio_source[1], video_delay_ms),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: leg(gateway, "rtmp2rtp", mp)["stats"]["mixIn"]["srMapped"]
             and leg(gateway, "rtp2rtmp", member)["stats"]["video"]["sr_received"] > 0,
             what="sender reports of both streams")
    try:
        assert av_sync(mcs, mp, member) == 0
        wait_for(lambda: leg(gateway, "rtmp2rtp", mp)["stats"]["mixOut"]["video_frames"] > 25,
                 what="video in the mix stream")
        recorded = record(live.rtmp_url(f"{mp}-mix"), 5.0, tmp_path / "out.flv")
        seen, heard = flash_times(recorded), beep_times(recorded)
        stats = leg(gateway, "rtmp2rtp", mp)["stats"]
    finally:
        assert mcs.StopPush(tpy.StopPushReq(uuid=member, confId=CONF)).code == 0
        assert mcs.StopPull(tpy.StopPullReq(uuid=mp, confId=CONF)).code == 0
    found = offsets(seen, heard)
    print(f"video {video_delay_ms} ms late: beep - flash = "
          f"{[round(x * 1000) for x in found]} ms; avOffsetMs {stats['avOffsetMs']}")
    assert len(found) >= 3, (seen, heard)
    assert max(abs(x) for x in found) <= MAX_OFFSET, (found, stats)
    assert leg_stats_had_offset(gateway, mp)


def test_unknown_uuid_or_sync_uuid_gets_404(live: LiveServer, mcs: Any, mini: str) -> None:
    assert av_sync(mcs, "mp-nobody", "") == 404
    start_pull(mcs, live, "mp-404", mini, None)
    try:
        assert av_sync(mcs, "mp-404", "m-nobody") == 404
        assert av_sync(mcs, "mp-404", "") == 0
    finally:
        assert mcs.StopPull(tpy.StopPullReq(uuid="mp-404", confId=CONF)).code == 0


def gst_member_video(port: int) -> list[str]:
    pipeline = (
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=15/1 "
        "! x264enc tune=zerolatency key-int-max=15 speed-preset=ultrafast bitrate=200 "
        f"! rtph264pay config-interval=-1 pt={VIDEO_PT} ! udpsink host=127.0.0.1 port={port}"
    )
    return ["gst-launch-1.0", "-q", *pipeline.split()]


def test_switching_members_and_back_to_audio_only_plays_through(
        live: LiveServer, gateway: GatewayProcess, mcs: Any, mini: str,
        procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    mp, members = "mp-switch", ["m-one", "m-two"]
    start_pull(mcs, live, mp, mini, None)
    for m in members:
        ports = start_push(mcs, live, m, req=mp)
        procs.append(subprocess.Popen(gst_member_video(ports.video), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for m in members:
            wait_for(partial(has_video, gateway, m), what=f"{m}'s video")
        assert av_sync(mcs, mp, members[0]) == 0
        wait_for(lambda: leg(gateway, "rtmp2rtp", mp)["stats"]["mixOut"]["video_frames"] > 15,
                 what="video in the mix stream")
        seconds = 7.0
        player = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rw_timeout", "5000000",
             "-i", live.rtmp_url(f"{mp}-mix"), "-t", str(seconds), "-map", "0:a", "-f", "s16le",
             "-ac", "1", "-ar", str(AUDIO_RATE), "-y", str(tmp_path / "heard.raw"),
             "-t", str(seconds), "-map", "0:v", "-f", "null", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(player)
        for sync in (members[1], "", members[0]):
            gevent.sleep(1.5)
            assert av_sync(mcs, mp, sync) == 0
            assert leg(gateway, "rtmp2rtp", mp)["syncUuid"] == sync
        # The player decodes the video too: its output ends once the video reaches the end.
        _, errors = player.communicate(timeout=seconds + 15)
        # The synced member stops: the stream goes back to audio only.
        assert mcs.StopPush(tpy.StopPushReq(uuid=members[0], confId=CONF)).code == 0
        state = leg(gateway, "rtmp2rtp", mp)
        assert state["syncUuid"] == "" and state["stats"]["avOffsetMs"] is None
        switches = [e["video"] for e in gateway.events("flv_video_source") if e["uuid"] == mp]
    finally:
        for m in members:
            mcs.StopPush(tpy.StopPushReq(uuid=m, confId=CONF))
        assert mcs.StopPull(tpy.StopPullReq(uuid=mp, confId=CONF)).code == 0
    heard = np.fromfile(tmp_path / "heard.raw", np.int16)
    # The player's own null muxer complains when a switch's cached GOP, whose pictures are
    # older than the last one shown, goes out with the last one's timestamp: not an error of
    # the stream's demuxing or decoding.
    problems = [line for line in errors.decode().splitlines()
                if "non monotonically increasing dts" not in line and "repeated" not in line]
    assert player.returncode == 0 and not problems, errors.decode()
    assert len(heard) >= 0.95 * seconds * AUDIO_RATE, errors.decode()
    assert switches == ["m-one/video", "m-two/video", "", "m-one/video", ""]
    assert leg_stats_had_offset(gateway, mp)


def leg_stats_had_offset(gw: GatewayProcess, uuid: str) -> bool:
    return any(e.get("avOffsetMs") is not None for e in gw.events("leg_stats")
               if e["uuid"] == uuid)
