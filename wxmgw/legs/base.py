"""What every leg shares: its context, its lifecycle and its log lines."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final

from wxmgw.logs import event
from wxmgw.media.endpoint import LatencyWindow
from wxmgw.ports import PortAllocator, PortPair
from wxmgw.pubsub import ChannelRegistry
from wxmgw.rtmp.chunk import DEFAULT_LIMITS, RtmpLimits
from wxmgw.rtp.h264 import MAX_ACCESS_UNIT
from wxmgw.rtp.session import LossRepair, RtpSession
from wxmgw.supervise import RUNNING

logger = logging.getLogger("wxmgw.leg")


class LegState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


#: A leg's media health as people and alerts see it (besides ``reconnecting``, ``failed: why``).
FLOWING: Final = "flowing"
STALLED: Final = "stalled"


@dataclass(slots=True)
class Flow:
    """One stream of a leg, read from the counters its parts keep anyway.

    ``direction`` is where it goes from the gateway's point of view:
    ``rtmp_in`` (pulled from the live server), ``rtp_out`` (sent to the MAS),
    ``rtp_in`` (received from the MAS), ``rtmp_out`` (pushed to the live
    server); ``media`` is ``audio``, ``video`` or ``av`` (a whole RTMP
    connection). A counter left None does not apply to the flow.
    ``silence`` is the seconds since its last media (incoming streams);
    ``kbps`` its bitrate, set by a :class:`BitrateMeter`; ``latency`` the added
    latency of its frames per media, ``av_offset`` the A/V offset of what it
    presents (seconds, positive: video late).
    """

    direction: str
    media: str
    packets: int | None = None
    bytes: int | None = None
    frames: int | None = None
    lost: int | None = None
    reordered: int | None = None
    jitter: float | None = None
    decode_errors: int | None = None
    dropped: int | None = None
    reconnects: int | None = None
    pli: int | None = None
    fir: int | None = None
    nack: int | None = None
    silence: float | None = None
    av_offset: float | None = None
    kbps: float | None = None
    latency: dict[str, LatencyWindow] = field(default_factory=dict)
    av_offsets: LatencyWindow | None = None

    def summary(self) -> dict[str, Any]:
        """The counters that apply, for /monitor/state (windows left out)."""
        out: dict[str, Any] = {}
        for name in _FLOW_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 3) if isinstance(value, float) else value
        return out


_FLOW_FIELDS: Final = tuple(
    f for f in Flow.__dataclass_fields__ if f not in ("latency", "av_offsets"))


class BitrateMeter:
    """The bitrate of each flow's bytes, over windows of at least ``window`` seconds ending
    when the flows are read: whoever reads them, however often."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        # (direction, media) -> (window start, bytes then, kbps of the last window)
        self._marks: dict[tuple[str, str], tuple[float, int, float | None]] = {}

    def measure(self, flows: list[Flow], now: float) -> None:
        for flow in flows:
            if flow.bytes is None:
                continue
            key = (flow.direction, flow.media)
            since, before, kbps = self._marks.get(key, (now, flow.bytes, None))
            if now - since >= self.window:
                kbps = round(max(flow.bytes - before, 0) * 8 / 1000 / (now - since), 1)
                since, before = now, flow.bytes
            self._marks[key] = (since, before, kbps)
            flow.kbps = kbps


def received(session: RtpSession, media: str, **counters: Any) -> Flow:
    """The ``rtp_in`` flow of a receiving session: packets, bytes, loss, reordering, jitter
    (RFC 3550 §A.8), silence; ``counters`` add what the leg's decoding counts."""
    s = session.stats
    flow = Flow("rtp_in", media, packets=s.packets_received, bytes=s.bytes_received,
                silence=session.clock() - session.last_received, **counters)
    if session.jitter is not None:
        j = session.jitter.stats
        flow.lost, flow.reordered, flow.jitter = j.lost, j.reordered, j.jitter_seconds
    return flow


def media_state(health: str, flows: list[Flow], stall_after: float) -> str:
    """``flowing``, ``stalled`` (a stream silent ``stall_after`` seconds) or the workers' health.

    A leg whose workers are reconnecting or failed is that first: the
    silence is their consequence.
    """
    if health != RUNNING:
        return health
    silent = any(f.silence is not None and f.silence >= stall_after for f in flows)
    return STALLED if silent else FLOWING


@dataclass(slots=True)
class LegContext:
    """The gateway-wide services a leg uses."""

    ports: PortAllocator
    media_ip: str
    stats_interval: float = 10.0
    channels: ChannelRegistry = field(default_factory=ChannelRegistry)
    rtmp: RtmpLimits = DEFAULT_LIMITS
    loss: LossRepair = field(default_factory=LossRepair)
    max_access_unit: int = MAX_ACCESS_UNIT
    #: A stream silent this many seconds makes its leg ``stalled``.
    stall_after: float = 5.0


class Leg:
    """A leg of one uuid in one conference: ``start()`` returns at once, ``stop()`` is final.

    ``stop()`` is idempotent and releases every port, socket and worker the
    leg holds before it returns, so nothing is sent after the reply to a
    Stop* request.
    """

    kind: ClassVar[str] = "leg"

    def __init__(self, uuid: str, conf_id: str, ctx: LegContext) -> None:
        self.uuid = uuid
        self.conf_id = conf_id
        self.ctx = ctx
        self.state = LegState.STARTING
        self.started_at = time.time()
        self._pairs: list[PortPair] = []
        #: Ports to bind again, in allocation order (a leg restored from the journal).
        self.wanted_ports: list[int] = []
        self._bitrates = BitrateMeter()

    def log(self, name: str, level: int = logging.INFO, **fields: Any) -> None:
        event(logger, name, level, confId=self.conf_id, uuid=self.uuid, leg=self.kind, **fields)

    def allocate_pair(self) -> PortPair:
        pair = self.ctx.ports.allocate(self.wanted_ports.pop(0) if self.wanted_ports else None)
        self._pairs.append(pair)
        return pair

    def start(self) -> None:
        self.state = LegState.RUNNING
        self.log("leg_started", **self.describe())

    def stop(self) -> None:
        if self.state is LegState.STOPPED:
            return
        self.state = LegState.STOPPED
        try:
            self.close_media()
        finally:
            for pair in self._pairs:
                self.ctx.ports.release(pair)
            self._pairs.clear()
            self.log("leg_stopped", seconds=round(time.time() - self.started_at, 3))

    def close_media(self) -> None:
        """Stop the leg's media workers; subclasses extend it."""

    def health(self) -> str:
        """How the running leg's workers are: ``running``, ``reconnecting`` or ``failed: why``.

        See :mod:`wxmgw.supervise`; subclasses sum up their parts.
        """
        return RUNNING

    def describe(self) -> dict[str, Any]:
        """The leg's parameters, for the start log line and /monitor/state."""
        return {}

    def stats(self) -> dict[str, Any]:
        """The leg's counters, for the periodic stats line and /monitor/state."""
        return {}

    def flows(self) -> list[Flow]:
        """The leg's streams, for the metrics and the status page; subclasses list theirs."""
        return []

    @property
    def ports(self) -> list[int]:
        """The RTP ports of the leg's pairs, in allocation order."""
        return [p.port for p in self._pairs]

    def status(self) -> str:
        """:meth:`health` while running, else ``starting`` or ``stopped``."""
        return self.health() if self.state is LegState.RUNNING else self.state.value

    def media_state(self, flows: list[Flow]) -> str:
        """:func:`media_state` of the leg, from its ``flows``."""
        return media_state(self.status(), flows, self.ctx.stall_after)

    def snapshot(self) -> dict[str, Any]:
        """Parameters, counters, and ``media``: the leg's :func:`media_state`."""
        flows = self.flows()
        self._bitrates.measure(flows, time.monotonic())
        return {
            "kind": self.kind,
            "uuid": self.uuid,
            "confId": self.conf_id,
            "state": self.status(),
            "media": self.media_state(flows),
            "ports": self.ports,
            **self.describe(),
            "stats": self.stats(),
            "flows": [f.summary() for f in flows],
        }
