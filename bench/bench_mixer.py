"""Cost of one mixer tick: 30 sources x 30 N-1 listeners, against the 20 ms budget.

Run: ``/tmp/venv0/bin/python bench/bench_mixer.py [--sources 30] [--ticks 500]``.
Each source pushes one frame of loud noise per tick (so the limiter works);
only ``tick()`` is timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_FRAME_SECONDS, AudioFrame
from wxmgw.media.mixer import Mixer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=30)
    parser.add_argument("--ticks", type=int, default=500)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pcm = rng.integers(-20000, 20000, (64, AUDIO_FRAME_SAMPLES)).astype(np.int16)
    keys = [f"uuid-{i}" for i in range(args.sources)]
    mixer = Mixer()
    for key in keys:
        mixer.add_source(key)
        mixer.add_listener(key)

    costs = []
    for n in range(args.ticks):
        now = 1000.0 + n * AUDIO_FRAME_SECONDS
        for i, key in enumerate(keys):
            mixer.push(key, AudioFrame(pcm[(n + i) % len(pcm)], now - AUDIO_FRAME_SECONDS))
        start = time.perf_counter()
        mixer.tick(now)
        costs.append(time.perf_counter() - start)

    ms = np.array(costs) * 1000
    budget = AUDIO_FRAME_SECONDS * 1000
    median, p99 = np.median(ms), np.percentile(ms, 99)
    print(
        f"mixer tick, {args.sources} sources x {args.sources} listeners, {args.ticks} ticks: "
        f"median {median:.3f} ms ({median / budget:.1%} of {budget:.0f} ms), "
        f"p99 {p99:.3f} ms ({p99 / budget:.1%})"
    )


if __name__ == "__main__":
    main()
