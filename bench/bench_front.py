"""Join latency of the callroute front under 100 concurrent requests: in-process store vs Redis.

Run: ``.venv/bin/python bench/bench_front.py [--joins 3000] [--concurrency 1 10 100]``.

The front (its WSGI app: JSON in, the flow, JSON out) runs in this process
with each store in turn; for each ``--concurrency`` that many greenlets send ``wxjoinconf``
messages back to back (conferences of three, so a third of the joins place a
new conference), each timed from the call to the reply. The gateway is a
stand-in whose StartPull takes ``--gateway-ms`` (a loopback Thrift call;
measured in README "Measured"), so the figures show the store's share and
how requests queue behind each other in one front process. The Redis store
talks to a real redis-server on loopback (append-only, as the README
recommends), started for the run. HTTP parsing is left out (the same for
both stores); logging is off below WARNING.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from io import BytesIO  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from gevent.pool import Pool  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from callroute.config import GatewayAddress  # noqa: E402
from callroute.front import Front, FrontConfig  # noqa: E402
from callroute.gateways import Gateways  # noqa: E402
from callroute.rooms import Rooms, Store  # noqa: E402
from callroute.server import App  # noqa: E402
from callroute.store import MemoryStore, RedisStore  # noqa: E402
from wxmgw import cluster  # noqa: E402
from wxmgw.redisd import RedisServer  # noqa: E402

BASE = "rtmp://127.0.0.1:1935/live"
GATEWAYS = [GatewayAddress("127.0.0.1", 9090), GatewayAddress("127.0.0.2", 9090)]


class StandInGateway:
    """Answers like wxmgw after ``seconds`` (cooperatively, as a Thrift call would)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def start_pull(self, **_kw: Any) -> None:
        gevent.sleep(self.seconds)

    def stop_pull(self, **_kw: Any) -> None:
        gevent.sleep(self.seconds)


def run(store: Store, joins: int, concurrency: int, gateway_s: float) -> np.ndarray:
    """Latencies (ms) of ``joins`` joins, ``concurrency`` at a time."""
    gateways = Gateways(GATEWAYS, fetch=lambda _a, _t: {"resultCode": 10000, "load": {"legs": 0}})
    gateways.poll_once()
    gateway = StandInGateway(gateway_s)
    app = App(Front(FrontConfig(BASE, BASE), Rooms(store), gateways,
                    lambda _address: gateway))  # type: ignore[arg-type,return-value]
    run_id = time.monotonic_ns()

    def join(n: int) -> float:
        body = json.dumps({"id": str(n), "uuid": f"u{run_id}-{n}", "method": "wxjoinconf",
                           "params": {"confId": f"c{run_id}-{n // 3}"}}).encode()
        environ = {"PATH_INFO": "/", "REQUEST_METHOD": "POST",
                   "CONTENT_LENGTH": str(len(body)), "wsgi.input": BytesIO(body)}
        start = time.perf_counter()
        reply = json.loads(b"".join(app(environ, lambda _s, _h: None)))
        took = time.perf_counter() - start
        assert "code" not in reply["result"], reply
        return took * 1000

    join(-3)  # warm up (scripts loaded, connections open)
    return np.array(Pool(concurrency).map(join, range(joins)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--gateway-ms", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        stores: dict[str, Store] = {
            "in-process": MemoryStore(),
            "redis": RedisStore(cluster.connect(server.url)),
        }
        print(f"{args.joins} joins per run, gateway StartPull {args.gateway_ms:g} ms")
        print(f"{'store':<12} {'in flight':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'joins/s':>8}")
        for concurrency in args.concurrency:
            for name, store in stores.items():
                started = time.perf_counter()
                ms = run(store, args.joins, concurrency, args.gateway_ms / 1000)
                rate = args.joins / (time.perf_counter() - started)
                print(f"{name:<12} {concurrency:>9} {np.percentile(ms, 50):8.1f} "
                      f"{np.percentile(ms, 99):8.1f} {ms.max():8.1f} {rate:8.0f}")

if __name__ == "__main__":
    main()
