"""The gateway assembled: registry, Thrift service, status server, stats, graceful stop."""

from __future__ import annotations

import logging
from typing import Any

import gevent
from prometheus_client import Gauge, ProcessCollector

from wxmgw import cluster
from wxmgw.cluster import RedisJournal, Registration
from wxmgw.conference import Registry
from wxmgw.config import Config
from wxmgw.hubloop import in_turns
from wxmgw.journal import FileJournal, Journal
from wxmgw.legs.base import LegContext
from wxmgw.logs import event
from wxmgw.metrics import HubLag, MediaCollector, StallWatch
from wxmgw.ports import PortAllocator, parse_port_range
from wxmgw.rtp.session import LossRepair
from wxmgw.server import StatusServer, ThriftServer
from wxmgw.service import Metrics, WxMgwHandler

logger = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        lo, hi = parse_port_range(config.rtp_ports)
        self.ports = PortAllocator(lo, hi, config.media_ip)
        loss = LossRepair(
            window=config.video_jitter_window,
            nack_retry=config.nack_retry or None,
            rtx_payload_type=config.video_rtx_pt or None,
            history=config.resend_history,
        )
        self.registry = Registry(
            LegContext(self.ports, config.media_ip, config.stats_interval, loss=loss,
                       rtmp=config.rtmp_limits(), max_access_unit=config.max_access_unit,
                       stall_after=config.stall_after),
            self._journal(),
        )
        self.metrics = Metrics()
        Gauge("wxmgw_legs", "Legs running", registry=self.metrics.registry).set_function(
            lambda: len(self.registry.legs())
        )
        Gauge("wxmgw_rtp_ports_in_use", "RTP/RTCP port pairs bound",
              registry=self.metrics.registry).set_function(lambda: len(self.ports.in_use))
        Gauge("wxmgw_rtp_ports_capacity", "RTP/RTCP port pairs in the range",
              registry=self.metrics.registry).set_function(lambda: self.ports.capacity)
        self.metrics.registry.register(
            MediaCollector(self.registry.legs, config.metrics_max_legs))
        ProcessCollector(registry=self.metrics.registry)
        self._watchers = (HubLag(self.metrics.registry), StallWatch(self.registry.legs))
        allow = config.allow()
        self.thrift = ThriftServer(
            WxMgwHandler(self.registry, self.metrics), config.thrift_host, config.thrift_port,
            config.transport, allow=allow, max_connections=config.thrift_max_connections,
            idle_timeout=config.idle_timeout, max_message=config.thrift_max_message,
        )
        self.status = StatusServer(
            config.thrift_host, config.status_port, self.registry.snapshot, self.metrics.registry,
            allow=allow, idle_timeout=config.idle_timeout,
        )
        self._stats: gevent.Greenlet | None = None
        self._watching: list[gevent.Greenlet] = []

    def _journal(self) -> Journal | None:
        """Redis (and a registration there) with ``--redis``, else a file with ``--state-dir``."""
        config = self.config
        self.registration: Registration | None = None
        if config.redis:
            journal = RedisJournal(cluster.connect(config.redis), config.node)
            entry = {"name": config.node, "host": config.advertised, "port": config.thrift_port,
                     "statusPort": config.status_port}
            self.registration = Registration(journal.client, journal, entry, self._load)
            return journal
        return FileJournal(config.state_dir) if config.state_dir else None

    def _load(self) -> dict[str, int]:
        return {"legs": len(self.registry.legs()), "capacity": self.ports.capacity,
                "portsInUse": len(self.ports.in_use)}

    def start(self) -> None:
        self.registry.restore()  # the journaled legs take their ports back before anyone asks
        self.thrift.start()
        try:
            self.status.start()
        except BaseException:
            self.thrift.stop()
            raise
        self._stats = gevent.spawn(self._log_stats)
        self._watching = [gevent.spawn(w.run) for w in self._watchers]
        if self.registration is not None:
            self.registration.start()
        event(logger, "gateway_started", thriftPort=self.thrift.port, statusPort=self.status.port,
              transport=self.config.transport, rtpPorts=self.config.rtp_ports,
              mediaIp=self.config.media_ip, allowFrom=str(self.thrift.allow))

    def stop(self) -> None:
        """Stop accepting, stop every leg, release every port."""
        event(logger, "gateway_stopping", legs=len(self.registry.legs()))
        if self.registration is not None:
            self.registration.stop()
        self.thrift.stop(timeout=1.0)
        if self._stats is not None:
            self._stats.kill()
        gevent.killall(self._watching)
        self.registry.stop_all()
        self.status.stop(timeout=0.5)
        event(logger, "gateway_stopped", portsInUse=len(self.ports.in_use))

    def _log_stats(self) -> None:
        """Every ``stats_interval``: one line per leg, with bitrates since the last line."""
        previous: dict[int, dict[str, Any]] = {}
        while True:
            gevent.sleep(self.config.stats_interval)
            current: dict[int, dict[str, Any]] = {}
            for leg in in_turns(self.registry.legs()):
                stats = leg.stats()
                with_rates(stats, previous.get(id(leg), {}), self.config.stats_interval)
                current[id(leg)] = stats
                leg.log("leg_stats", **stats)
            previous = current


def with_rates(stats: dict[str, Any], before: dict[str, Any], seconds: float) -> None:
    """Add ``kbps`` beside every ``bytes`` counter (nested too), from its growth since then."""
    for key, value in stats.items():
        if isinstance(value, dict):
            with_rates(value, before.get(key, {}), seconds)
    if isinstance(stats.get("bytes"), int):
        grown = stats["bytes"] - before.get("bytes", 0)
        stats["kbps"] = round(max(grown, 0) * 8 / 1000 / seconds, 1)
