"""Rtmp2rtp: a mini-program's RTMP stream to the MAS as RTP, and its mix back to RTMP."""

from __future__ import annotations

from typing import Any

from wxmgw.legs.base import Leg, LegContext
from wxmgw.ports import PortPair
from wxmgw.requests import StartPull


class Rtmp2rtp(Leg):
    kind = "rtmp2rtp"

    def __init__(self, params: StartPull, ctx: LegContext) -> None:
        super().__init__(params.uuid, params.conf_id, ctx)
        self.params = params
        self.sync_uuid = ""
        self.audio_pair: PortPair | None = None
        self.video_pair: PortPair | None = None

    def start(self) -> None:
        if not self.params.mas_less:
            self.audio_pair = self.allocate_pair()
            self.video_pair = self.allocate_pair()
        super().start()

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "pullUrl": p.pull_url,
            "pushAudioUrl": p.push_audio_url,
            "mas": f"{p.mas_ip}:{p.audio_port}/{p.video_port}" if p.mas_ip else "",
            "ssrc": p.ssrc,
            "audioCodec": p.audio.codec,
            "videoCodec": p.video.codec,
            "syncUuid": self.sync_uuid,
        }
