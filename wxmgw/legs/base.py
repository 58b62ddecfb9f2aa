"""What every leg shares: its context, its lifecycle and its log lines."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from wxmgw.logs import event
from wxmgw.media.rtmp import DEFAULT_LIMITS, RtmpLimits
from wxmgw.ports import PortAllocator, PortPair
from wxmgw.pubsub import ChannelRegistry
from wxmgw.rtp.h264 import MAX_ACCESS_UNIT
from wxmgw.rtp.session import LossRepair
from wxmgw.supervise import RUNNING

logger = logging.getLogger("wxmgw.leg")


class LegState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


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

    @property
    def ports(self) -> list[int]:
        """The RTP ports of the leg's pairs, in allocation order."""
        return [p.port for p in self._pairs]

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "uuid": self.uuid,
            "confId": self.conf_id,
            "state": self.health() if self.state is LegState.RUNNING else self.state.value,
            "ports": self.ports,
            **self.describe(),
            "stats": self.stats(),
        }
