"""Rtp2rtmp: a conference member's RTP from the MAS to an RTMP stream mini-programs play."""

from __future__ import annotations

from typing import Any

from wxmgw.legs.base import Leg, LegContext
from wxmgw.ports import PortPair
from wxmgw.requests import StartPush


class Rtp2rtmp(Leg):
    kind = "rtp2rtmp"

    def __init__(self, params: StartPush, ctx: LegContext) -> None:
        super().__init__(params.uuid, params.conf_id, ctx)
        self.params = params
        self.requesters: set[str] = set()
        self.audio_pair: PortPair | None = None
        self.video_pair: PortPair | None = None

    def start(self) -> None:
        if not self.params.weixin:
            self.audio_pair = self.allocate_pair()
            self.video_pair = self.allocate_pair()
        super().start()

    @property
    def rtp_ports(self) -> tuple[int, int]:
        """(audio, video) RTP ports the MAS sends to; (0, 0) for a weixin republish."""
        if self.audio_pair is None or self.video_pair is None:
            return 0, 0
        return self.audio_pair.port, self.video_pair.port

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "pushUrl": p.push_url,
            "weixin": p.weixin,
            "audioCodec": p.audio.codec,
            "videoCodec": p.video.codec,
            "requesters": sorted(self.requesters),
        }
