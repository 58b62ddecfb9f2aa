"""``callroute serve``: settings, logging, run.

``gevent.monkey.patch_all()`` happens first in :func:`main`, before anything
that opens sockets is imported; this module imports only pure ones at the top.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from callroute.config import Settings, read_toml, settings

_FLAGS: list[tuple[str, str]] = [
    ("--host", "listen address (default 0.0.0.0)"),
    ("--port", "listen port (default 8800)"),
    ("--wxmgw", "gateways HOST:PORT[@STATUSPORT][,...] (Thrift port, status port default 9091)"),
    ("--rtmp-push-base", "rtmp://host[:port]/app where mini-programs and wxmgw publish "
                         "(and wxmgw pulls); default rtmp://127.0.0.1:1935/live"),
    ("--rtmp-play-base", "rtmp://host[:port]/app where mini-programs play (default: push base)"),
    ("--mas-audio", "IP:PORT of the MAS audio RTP (with --mas-video; absent: rooms without MAS)"),
    ("--mas-video", "IP:PORT of the MAS video RTP"),
    ("--log-file", "log to this file instead of stderr"),
    ("--log-format", "json (default) or text"),
    ("--gateway-timeout", "seconds for one Thrift call (default 3)"),
    ("--poll-interval", "seconds between gateway state polls (default 2)"),
    ("--body-limit", "largest HTTP body in bytes (default 65536)"),
    ("--allow-from", "CIDR,... whose connections are accepted (default loopback and private "
                     "ranges); others are closed and logged"),
    ("--idle-timeout", "seconds a connection may stay silent (default 30)"),
    ("--redis", "redis://HOST:PORT/DB: conferences in Redis, shared by every front, and the "
                "gateways from its registry instead of --wxmgw (default: in this process)"),
    ("--lease-ttl", "seconds a front's lease on a conference lasts unless renewed (default 5)"),
    ("--lease-wait", "seconds a request waits for a conference another front is changing "
                     "(default 15)"),
    ("--reconcile-interval", "seconds between two reconciliations of each gateway with its "
                             "conferences (default 1; 0: none)"),
    ("--move-after", "seconds a gateway may stay silent before its conferences move "
                     "(default 5)"),
    ("--stop-orphans", "yes (default) or no: stop legs no conference needs (no: the "
                       "gateways are also driven by an MCS)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callroute", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve callroutegw's JSON messages")
    serve.add_argument("--config", help="TOML file; flags override it")
    for flag, text in _FLAGS:
        serve.add_argument(flag, help=text, default=argparse.SUPPRESS)
    return parser


def load(args: argparse.Namespace) -> Settings:
    """Settings from the TOML file of ``--config`` overridden by the flags given."""
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return settings(read_toml(args.config) if args.config else {}, flags)


def serve(config: Settings) -> None:
    from callroute.front import Front, FrontConfig
    from callroute.gateways import Gateways, RegisteredGateways
    from callroute.mcs import Mcs
    from callroute.reconcile import Reconciler
    from callroute.rooms import Rooms, Store
    from callroute.server import App, run
    from callroute.store import MemoryStore, RedisStore
    from wxmgw import cluster

    store: Store
    if config.redis:
        client = cluster.connect(config.redis)
        store = RedisStore(client, lease_ttl=config.lease_ttl, lease_wait=config.lease_wait)
        gateways: Gateways = RegisteredGateways(client)
    else:
        store = MemoryStore()
        gateways = Gateways(config.wxmgw, timeout=min(1.0, config.poll_interval))
    front = Front(
        FrontConfig(config.rtmp_push_base, config.play_base, config.mas),
        Rooms(store),
        gateways,
        lambda address: Mcs(address, timeout=config.gateway_timeout),
    )
    reconciler = None
    if config.reconcile_interval:
        reconciler = Reconciler(front, interval=config.reconcile_interval,
                                move_after=config.move_after, stop_orphans=config.stop_orphans)
    run(App(front, body_limit=config.body_limit), config.host, config.port,
        allow=config.allow_from, idle_timeout=config.idle_timeout,
        poll_interval=config.poll_interval, reconciler=reconciler)


def main(argv: Sequence[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load(args)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    from wxmgw.logs import setup_logging

    setup_logging(config.log_format, config.log_file)
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
