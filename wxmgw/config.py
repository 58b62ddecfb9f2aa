"""`wxmgw serve` settings: defaults, an optional TOML file, then flags."""

from __future__ import annotations

import argparse
import socket
import tomllib
from dataclasses import dataclass, fields, replace
from typing import Any

from wxmgw.access import DEFAULT_ALLOW_FROM, AllowList
from wxmgw.errors import InvalidArgument
from wxmgw.ports import parse_port_range
from wxmgw.rtmp.chunk import DEFAULT_LIMITS, RtmpLimits
from wxmgw.rtmp.client import tls_context
from wxmgw.rtp.h264 import MAX_ACCESS_UNIT


@dataclass(frozen=True, slots=True)
class Config:
    thrift_host: str = "0.0.0.0"
    thrift_port: int = 9090
    transport: str = "buffered"
    rtp_ports: str = "30000-39999"
    media_ip: str = "0.0.0.0"
    status_port: int = 9091
    log_file: str | None = None
    log_format: str = "json"
    stats_interval: float = 10.0
    # Seconds the hub waits before polling, so that one wakeup serves many legs (wxmgw.hubloop).
    io_collect: float = 0.02
    # The journal of running legs, restored at start (README "Crashes and restarts").
    state_dir: str | None = None
    # A cluster: registered and journaled in Redis (README "A cluster").
    redis: str | None = None
    advertise_host: str | None = None
    node_name: str | None = None
    # Who may call, and how long and how much (README "Who may call the gateway").
    allow_from: str | list[str] = DEFAULT_ALLOW_FROM
    idle_timeout: float = 30.0
    thrift_max_connections: int = 1000
    thrift_max_message: int = 64 << 10
    # What one RTMP session (a pull or a push) may make the gateway hold: a
    # live server past a limit has its session ended and retried (RtmpLimits).
    rtmp_max_media_message: int = DEFAULT_LIMITS.max_media_message
    rtmp_max_command_message: int = DEFAULT_LIMITS.max_command_message
    rtmp_max_buffered: int = DEFAULT_LIMITS.max_buffered
    rtmp_max_chunk_streams: int = DEFAULT_LIMITS.max_chunk_streams
    rtmp_amf0_depth: int = DEFAULT_LIMITS.amf0_depth
    # How far behind live a pull's audio may be kept: a live server's burst
    # (its GOP cache) brings older audio, which is dropped (README "Live servers").
    rtmp_max_backlog: float = DEFAULT_LIMITS.max_backlog
    # rtmps:// URLs: the CAs the live server's certificate is checked against
    # (PEM; the system's when None), or no check at all (README "Live servers").
    rtmps_ca_file: str | None = None
    rtmps_verify: bool = True
    # Loss repair on the RTP side (README "Losses on the RTP side").
    video_jitter_window: float = 0.25
    nack_retry: float = 0.08
    video_rtx_pt: int = 0
    resend_history: float = 1.0
    # What one H.264 access unit from the MAS may make the gateway hold: past
    # it the unit is dropped and video resyncs at the next keyframe.
    max_access_unit: int = MAX_ACCESS_UNIT
    # Operators' view (README "Watching a gateway"): a stream silent this long
    # makes its leg "stalled"; legs past metrics_max_legs share one label set.
    stall_after: float = 5.0
    metrics_max_legs: int = 500

    @property
    def advertised(self) -> str:
        """The host fronts reach this gateway's Thrift and status ports at."""
        if self.advertise_host:
            return self.advertise_host
        return socket.gethostname() if self.thrift_host == "0.0.0.0" else self.thrift_host

    @property
    def node(self) -> str:
        """The gateway's name in the cluster: what the fronts call it."""
        return self.node_name or f"{self.advertised}:{self.thrift_port}"

    def check(self) -> Config:
        if self.transport not in ("buffered", "framed"):
            raise InvalidArgument(f"transport must be buffered or framed, not {self.transport!r}")
        if self.log_format not in ("json", "text"):
            raise InvalidArgument(f"log-format must be json or text, not {self.log_format!r}")
        for name in ("thrift_port", "status_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise InvalidArgument(f"{name} must be 0-65535")
        if self.stats_interval <= 0:
            raise InvalidArgument("stats-interval must be positive")
        if not 0 <= self.io_collect <= 0.05:
            raise InvalidArgument("io-collect must be 0-0.05 seconds")
        if not 0 < self.video_jitter_window <= 5:
            raise InvalidArgument("video-jitter-window must be in (0, 5] seconds")
        if not 0 <= self.nack_retry < self.video_jitter_window:
            raise InvalidArgument("nack-retry must be 0 (no NACKs) or below video-jitter-window")
        if not 0 <= self.video_rtx_pt <= 127:
            raise InvalidArgument("video-rtx-pt must be 0 (none) or a payload type 1-127")
        if not 0 <= self.resend_history <= 10:
            raise InvalidArgument("resend-history must be 0-10 seconds")
        if self.max_access_unit < 1:
            raise InvalidArgument("max-access-unit must be positive")
        if self.stall_after <= 0 or self.metrics_max_legs < 0:
            raise InvalidArgument("stall-after must be positive, metrics-max-legs >= 0")
        parse_port_range(self.rtp_ports)
        if self.idle_timeout <= 0:
            raise InvalidArgument("idle-timeout must be positive")
        if self.thrift_max_connections < 1 or self.thrift_max_message < 64:
            raise InvalidArgument("thrift-max-connections must be >= 1, thrift-max-message >= 64")
        self.allow()
        tls_context(self.rtmp_limits())
        return self

    def rtmp_limits(self) -> RtmpLimits:
        return RtmpLimits(
            max_media_message=self.rtmp_max_media_message,
            max_command_message=self.rtmp_max_command_message,
            max_buffered=self.rtmp_max_buffered,
            max_chunk_streams=self.rtmp_max_chunk_streams,
            amf0_depth=self.rtmp_amf0_depth,
            max_backlog=self.rtmp_max_backlog,
            tls_ca_file=self.rtmps_ca_file,
            tls_verify=self.rtmps_verify,
        )

    def allow(self) -> AllowList:
        """``allow_from`` parsed: the networks the Thrift and status ports accept."""
        try:
            return AllowList.parse(self.allow_from)
        except ValueError as exc:
            raise InvalidArgument(f"allow-from: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `wxmgw serve`; each defaults to None so the TOML file can fill it."""
    parser.add_argument("--config", help="TOML file with the settings below (keys with _ or -)")
    parser.add_argument("--thrift-host", help="Thrift listen address (0.0.0.0)")
    parser.add_argument("--thrift-port", type=int, help="Thrift port (9090)")
    parser.add_argument("--transport", choices=("buffered", "framed"),
                        help="Thrift transport (buffered)")
    parser.add_argument("--rtp-ports", help="RTP port range LO-HI (30000-39999)")
    parser.add_argument("--media-ip", help="address RTP is received on and sent from (0.0.0.0)")
    parser.add_argument("--status-port", type=int, help="/monitor/state and /metrics port (9091)")
    parser.add_argument("--log-file", help="log file (stderr)")
    parser.add_argument("--log-format", choices=("json", "text"), help="log format (json)")
    parser.add_argument("--stats-interval", type=float,
                        help="seconds between per-leg stats lines (10)")
    parser.add_argument("--io-collect", type=float,
                        help="seconds the hub waits before polling its sockets, so that one "
                             "wakeup serves many legs; each message waits up to that much more "
                             "(0.02; 0: poll at once; Thrift requests do not wait)")
    parser.add_argument("--state-dir",
                        help="journal the running legs here and restore them at start (none)")
    parser.add_argument("--redis", help="redis://HOST:PORT/DB: register in the cluster and "
                        "journal the legs there instead of --state-dir (none)")
    parser.add_argument("--advertise-host",
                        help="the address fronts reach this gateway at (--thrift-host, or the "
                        "host name when that is 0.0.0.0)")
    parser.add_argument("--node-name",
                        help="its stable name in the cluster (ADVERTISE-HOST:THRIFT-PORT)")
    parser.add_argument("--allow-from", help="CIDR,... whose connections the Thrift and status "
                        "ports accept (loopback and private ranges)")
    parser.add_argument("--idle-timeout", type=float,
                        help="seconds a Thrift or status connection may stay silent (30)")
    parser.add_argument("--thrift-max-connections", type=int,
                        help="Thrift connections at once; one more closes the idlest (1000)")
    parser.add_argument("--thrift-max-message", type=int,
                        help="bytes of one Thrift request; declaring more closes it (64 KiB)")
    parser.add_argument("--rtmp-max-backlog", type=float,
                        help="seconds behind live a pull's audio may be kept; a live server's "
                        "burst of older audio is dropped (0.1)")
    parser.add_argument("--rtmps-ca-file",
                        help="PEM file of the CAs an rtmps:// server's certificate is checked "
                        "against (the system's)")
    parser.add_argument("--rtmps-no-verify", dest="rtmps_verify", action="store_false",
                        default=None,
                        help="do not check rtmps:// servers' certificates (checked)")
    parser.add_argument("--video-jitter-window", type=float,
                        help="seconds a hole in incoming video is waited for (0.25)")
    parser.add_argument("--nack-retry", type=float,
                        help="seconds before a hole is NACKed a second time; 0: no NACKs (0.08)")
    parser.add_argument("--video-rtx-pt", type=int,
                        help="payload type of the MAS's RFC 4588 video retransmissions (0: none)")
    parser.add_argument("--resend-history", type=float,
                        help="seconds of sent video kept to answer the MAS's NACKs; 0: none (1)")
    parser.add_argument("--max-access-unit", type=int,
                        help="bytes one H.264 frame from the MAS may hold; more drops it (2 MiB)")
    parser.add_argument("--stall-after", type=float,
                        help="seconds a silent stream takes to make its leg stalled (5)")
    parser.add_argument("--metrics-max-legs", type=int,
                        help="legs with their own confId/uuid labels in /metrics (500)")


def load(args: argparse.Namespace) -> Config:
    config = Config()
    names = {f.name for f in fields(Config)}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                data: dict[str, Any] = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"config {args.config}: {exc}") from None
        table = {k.replace("-", "_"): v for k, v in data.get("wxmgw", data).items()}
        unknown = set(table) - names
        if unknown:
            raise InvalidArgument(f"config {args.config}: unknown keys {sorted(unknown)}")
        config = replace(config, **table)
    flags = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return replace(config, **flags).check()
