"""A conference without a MAS: wxmgw's own room mixer, end to end.

Two ffmpeg mini-programs publish different tones to a real nginx-rtmp; a
real `wxmgw serve` pulls both with an empty ``masIp``; ffmpeg plays each
one's ``pushAudioUrl``, and an FFT finds the other's tone there, not its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import thriftpy2
from media_checks import dominant_hz, play_audio, tone_level, wait_for
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess

from wxmgw.media.frames import AUDIO_RATE
from wxmgw.nginx import NginxRtmp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_masless_thrift")

TONES = {"mp-a": 500, "mp-b": 1300}
CONF = "conf-masless"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path, rtp_ports=4)
    yield gw
    assert gw.stop() == 0


@pytest.fixture
def mcs(gateway: GatewayProcess) -> Iterator[Any]:
    c = make_client(tpy.WxMgw, "127.0.0.1", gateway.thrift_port, timeout=10000)
    yield c
    c.close()


def start_pull(mcs: Any, live: NginxRtmp, uuid: str) -> None:
    r = mcs.StartPull(tpy.StartPullReq(
        uuid=uuid, pullUrl=live.rtmp_url(uuid), ssrc=1, masIp="", audioPort=0, videoPort=0,
        audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96, VideoCodec="H264",
        pushAudioUrl=live.rtmp_url(f"{uuid}-mix"), confId=CONF))
    assert r.code == 0, r.message


def has_pulled_audio(gw: GatewayProcess, uuid: str) -> bool:
    (leg,) = [x for x in gw.state()["legs"] if x["uuid"] == uuid]
    return int(leg["stats"]["framesIn"]["audio"]) > 0


def test_each_mini_program_hears_the_other_and_not_itself(
        nginx: NginxRtmp, ffmpeg_publish: Any, gateway: GatewayProcess, mcs: Any,
        tmp_path: Path) -> None:
    for uuid, hz in TONES.items():
        ffmpeg_publish(nginx.rtmp_url(uuid), tone_hz=hz, seconds=60)
        start_pull(mcs, nginx, uuid)
    for uuid in TONES:
        wait_for(partial(nginx.is_publishing, f"{uuid}-mix"), what=f"{uuid}'s mix stream")
        wait_for(partial(has_pulled_audio, gateway, uuid), what=f"{uuid}'s audio pulled")

    for uuid, own in TONES.items():
        (other,) = (hz for u, hz in TONES.items() if u != uuid)
        heard = play_audio(nginx.rtmp_url(f"{uuid}-mix"), 2.0, tmp_path / f"{uuid}.raw")
        assert len(heard) >= 1.9 * AUDIO_RATE
        tail = heard[-AUDIO_RATE:]
        assert abs(dominant_hz(tail) - other) < 10, uuid
        assert tone_level(tail, other) > 100 * tone_level(tail, own), uuid

    (room,) = [r for r in gateway.state()["rooms"] if r["confId"] == CONF]
    mixed = room["mixer"]["sources"]
    assert set(mixed) == set(TONES) and all(s["mixed"] > 50 for s in mixed.values()), room

    # One leaves: the other's mix goes quiet, the stream goes on; the last one closes the mixer.
    assert mcs.StopPull(tpy.StopPullReq(uuid="mp-b", confId=CONF)).code == 0
    quiet = play_audio(nginx.rtmp_url("mp-a-mix"), 2.0, tmp_path / "quiet.raw")
    assert len(quiet) >= 1.9 * AUDIO_RATE
    assert np.abs(quiet[AUDIO_RATE // 2:].astype(np.int32)).max() < 300
    (room,) = [r for r in gateway.state()["rooms"] if r["confId"] == CONF]
    assert set(room["mixer"]["sources"]) == {"mp-a"}
    assert mcs.StopPull(tpy.StopPullReq(uuid="mp-a", confId=CONF)).code == 0
    assert gateway.state()["rooms"] == []
