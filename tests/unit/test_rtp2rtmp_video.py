"""Rtp2rtmp's video receiver on loopback: what a MAS sending oversized frames gets."""

from gevent import monkey

monkey.patch_all()

import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from wxmgw.legs.rtp2rtmp import VideoReceiver  # noqa: E402
from wxmgw.ports import PortAllocator  # noqa: E402
from wxmgw.pubsub import ChannelRegistry  # noqa: E402
from wxmgw.requests import RtpTarget  # noqa: E402
from wxmgw.rtp.session import ClockOffset, LossRepair, RtpSession, SendConfig  # noqa: E402

CAP = 64 * 1024
IDR = b"\x65" + bytes(range(1, 200))
SLICE = b"\x41" + bytes(range(1, 100))




def test_oversized_frames_are_counted_and_warned_once_per_burst(ports: PortAllocator) -> None:
    logged: list[tuple[str, dict[str, Any]]] = []

    def log(name: str, level: int = 0, **fields: Any) -> None:
        logged.append((name, fields))

    receiver = VideoReceiver(ports.allocate(), ChannelRegistry().open("m"), ClockOffset(),
                             RtpTarget(96, "H264"), LossRepair(nack_retry=None), log, CAP)
    sender = RtpSession(ports.allocate(), "mas", remote=("127.0.0.1", receiver.session.pair.port),
                        send=SendConfig(ssrc=7, payload_type=96, clock_rate=90000))
    receiver.start()
    sender.start()
    ts = 0

    def unit(*payloads: bytes, marker: bool = True) -> None:
        nonlocal ts
        ts += 3000
        for i, payload in enumerate(payloads):
            sender.send_run((payload,), ts, marker and i == len(payloads) - 1, time.monotonic())
            if i % 16 == 15:
                gevent.sleep(0.001)  # the loopback socket's buffer, not a timing

    def frames_reach(count: int) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while receiver.stats()["frames"] < count and time.monotonic() < deadline:
            gevent.sleep(0.01)
        stats: dict[str, Any] = receiver.stats()
        return stats

    endless = [b"\x41" + bytes(1199)] * 150  # 180 KB, one timestamp, no marker
    try:
        unit(IDR)
        unit(*endless, marker=False)
        unit(*endless, marker=False)  # a second oversized unit in the same burst
        unit(SLICE)                   # no keyframe yet: still the same burst
        unit(IDR)                     # resync
        unit(*endless, marker=False)  # a new burst
        unit(IDR)
        stats = frames_reach(4)
        assert stats["frames"] == 4 and stats["oversized_frames"] == 3, stats
        assert stats["dropped_frames"] == 3, stats
        warnings = [fields for name, fields in logged if name == "video_frame_oversized"]
        assert warnings == [{"limit": CAP, "oversized": 1}, {"limit": CAP, "oversized": 3}]
    finally:
        sender.close()
        receiver.close()
