"""`wxmgw serve`: flags, config, logging, run until SIGTERM/SIGINT; `wxmgw story`: a
conference's timeline from the logs (:mod:`wxmgw.story`)."""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 (monkey-patching comes first)
import gc  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from wxmgw import config as cfg  # noqa: E402
from wxmgw import story  # noqa: E402
from wxmgw.app import Gateway  # noqa: E402
from wxmgw.errors import WxmgwError  # noqa: E402
from wxmgw.hubloop import collect_io  # noqa: E402
from wxmgw.logs import event, setup_logging  # noqa: E402

logger = logging.getLogger("wxmgw")


def raise_fd_limit() -> None:
    """Open files up to the hard limit: 1000 Thrift connections and two sockets per RTP port
    pair need more than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def settle_heap() -> None:
    """Keep the cyclic collector's full collections short: each stops the hub.

    A full collection walks every object the collector tracks. In a gateway
    with 45 two-way legs one took 36 to 66 ms (97 000 objects): the Thrift
    p99 and a media hiccup. A third of them come from the imports (modules,
    classes, functions): frozen here, before any leg exists, so that
    collections skip them and nothing frozen is a leg's. 7 400 more were
    gevent's record of where each greenlet was spawned (up to 10 frames
    a greenlet, and a stack walk a spawn), which nothing here reads.
    """
    gevent.config.track_greenlet_tree = False
    gc.collect()
    gc.freeze()


def serve(config: cfg.Config) -> int:
    setup_logging(config.log_format, config.log_file)
    raise_fd_limit()
    settle_heap()
    # False on gevent's libuv loop, which polls at once.
    event(logger, "io_collect", interval=config.io_collect,
          applied=collect_io(config.io_collect))
    gateway = Gateway(config)
    try:
        gateway.start()
    except OSError as exc:
        event(logger, "start_failed", logging.ERROR, reason=str(exc))
        gateway.registry.stop_all()
        return 1
    stop = Event()

    def on_signal(signum: int) -> None:
        event(logger, "signal", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    stop.wait()
    gateway.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wxmgw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cfg.add_arguments(sub.add_parser("serve", help="run the gateway"))
    tale = sub.add_parser("story", help="one conference's timeline from gateway and front logs")
    tale.add_argument("--conf", required=True, help="the confId")
    tale.add_argument("--uuid", help="only this member's lines (and the room's)")
    tale.add_argument("logs", nargs="+", type=Path, metavar="LOG",
                      help="JSON log files of gateways and fronts")
    args = parser.parse_args(argv)
    if args.command == "story":
        return story.tell(args.logs, args.conf, args.uuid, sys.stdout)
    try:
        config = cfg.load(args)
    except WxmgwError as exc:
        parser.error(str(exc))
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
