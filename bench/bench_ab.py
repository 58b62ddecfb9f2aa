"""Two checkouts of the gateway under one load at the same time: which costs less per leg.

Run: ``.venv/bin/python bench/bench_ab.py OTHER [--legs 20] [--rounds 3] [--seconds 20]``,
where ``OTHER`` is another checkout with its compiled modules built in place
(``git worktree add /tmp/other <commit>``, then ``python setup.py build_ext
--inplace`` there).

``bench_legs.py`` runs the gateway and then the ffmpeg CLI; from one run to
the next a minute later, this shared two-core machine drifts by ±20 %, more
than most single changes to the hot path are worth. Here this checkout's
gateway and OTHER's run at once, each pulling the same N live-pusher streams
from one nginx-rtmp (Rtmp2rtp: StartPull, PCMA + H.264 to a MAS peer of its
own that counts what arrives), so both see the same machine at the same
moments. Each round starts both afresh, in turn first. Printed per round: %
of one core per leg, user and system, of each, the worst leg's continuity at
its MAS peer, and the ratio OTHER / this; then the median of the rounds'
ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import (  # noqa: E402
    MasPeer,
    cpu_times,
    kill_all,
    make_live_clip,
    publish_loop,
    rtp_continuity,
    start_pulls,
    tpy,
    wait_publishing,
)
from wxmgw_proc import GatewayProcess  # noqa: E402

from wxmgw.nginx import NginxRtmp  # noqa: E402


@contextmanager
def pulling(tmp: Path, root: Path, live: NginxRtmp, n: int) -> Iterator[tuple[GatewayProcess,
                                                                              MasPeer]]:
    """The gateway of checkout ``root`` pulling streams ``mp0``… to a MAS peer of its own."""
    peer = MasPeer()
    gw = GatewayProcess(tmp, rtp_ports=4 * n + 8, root=root)
    try:
        client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=20000)
        try:
            start_pulls(client, live, peer, n)
        finally:
            client.close()
        peer.start()
        yield gw, peer
    finally:
        gw.stop()
        peer.close()


def one_round(tmp: Path, roots: list[Path], live: NginxRtmp, args: argparse.Namespace,
              ) -> list[tuple[float, float, float]]:
    """(user %, system %, continuity) per checkout of ``roots``, over one shared window."""
    with ExitStack() as stack:
        running = [stack.enter_context(pulling(tmp, root, live, args.legs)) for root in roots]
        time.sleep(args.warmup)
        procs = [psutil.Process(gw.proc.pid) for gw, _ in running]
        t0 = time.monotonic()
        cpu0 = [cpu_times([p]) for p in procs]
        counts0 = [peer.counts() for _, peer in running]
        time.sleep(args.seconds)
        secs = time.monotonic() - t0
        out = []
        for proc, (user0, sys0), (_, peer), before in zip(procs, cpu0, running, counts0,
                                                          strict=True):
            user, system = cpu_times([proc])
            per_leg = 100 / secs / args.legs
            out.append(((user - user0) * per_leg, (system - sys0) * per_leg,
                        rtp_continuity(before, peer.counts(), secs)))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout, compiled in place")
    parser.add_argument("--legs", type=int, default=20, help="Rtmp2rtp legs per gateway")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=8.0)
    args = parser.parse_args()
    other = args.other.resolve()
    if not (other / "wxmgw" / "cli.py").exists():
        parser.error(f"{other} is not a checkout of wxmgw")
    print(f"{args.legs} Rtmp2rtp legs on each gateway, the same streams, {args.seconds:.0f} s "
          f"windows; % of one core per leg; this = {ROOT}, other = {other}")
    print(f"{'round':>5} {'who':>5} {'user':>6} {'sys':>6} {'total':>6} {'rtp':>6} {'ratio':>6}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmpdir, NginxRtmp(Path(tmpdir) / "nginx") as live:
        tmp = Path(tmpdir)
        clip = make_live_clip(tmp / "clip.flv")
        publishers = [publish_loop(clip, live.rtmp_url(f"mp{i}")) for i in range(args.legs)]
        try:
            wait_publishing(live, [f"mp{i}" for i in range(args.legs)])
            for n in range(1, args.rounds + 1):
                order = [("this", ROOT), ("other", other)]
                if n % 2 == 0:
                    order.reverse()  # each starts first in turn
                figures = dict(zip((who for who, _ in order),
                                   one_round(tmp, [root for _, root in order], live, args),
                                   strict=True))
                ratio = sum(figures["other"][:2]) / sum(figures["this"][:2])
                ratios.append(ratio)
                for who in ("this", "other"):
                    user, system, rtp = figures[who]
                    shown = f"{ratio:.3f}" if who == "other" else "-"
                    print(f"{n:>5} {who:>5} {user:>6.3f} {system:>6.3f} {user + system:>6.3f} "
                          f"{rtp:>6.1%} {shown:>6}", flush=True)
        finally:
            kill_all(publishers)
    print(f"\nother / this, CPU per leg: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}, {max(ratios):.3f}] over {len(ratios)} rounds")


if __name__ == "__main__":
    main()
