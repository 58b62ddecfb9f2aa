"""The room mixer: a conference without a MAS mixed by wxmgw itself.

Each mini-program of a MAS-less room is a source (its audio channel) and a
listener (its mix channel, which its Rtmp2rtp pushes to ``pushAudioUrl``);
every listener hears the N-1 mix of the others (MISSION §4, §6). One
greenlet per room ticks the pure :class:`~wxmgw.media.mixer.Mixer` on an
absolute 20 ms grid, so the mix neither drifts nor stalls when a source does.

The sources' frames carry capture times on their own timelines (an RTMP
pull's lag behind its arrival by however long FFmpeg probed the stream), so
the mixer re-stamps each frame with the tick that takes it in: lateness is
judged by how long a frame waited here, and the mix is stamped with the
time it is made.

The greenlet is a :class:`~wxmgw.supervise.Worker`: an unexpected exception
in a tick is logged (``mixer_crashed``, with the traceback), counted, and
the mixer ticks again after a backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import gevent

from wxmgw.logs import event
from wxmgw.media.frames import AUDIO_FRAME_SECONDS, AudioFrame
from wxmgw.media.mixer import Mixer
from wxmgw.pubsub import Channel, Subscription
from wxmgw.supervise import RUNNING, Worker

logger = logging.getLogger(__name__)

#: How fast a source's delay estimate follows a path that got slower (per frame).
DELAY_CREEP = 0.002


class RoomMixer:
    def __init__(self, conf_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.conf_id = conf_id
        self.clock = clock
        self.mixer = Mixer(queue_frames=10)  # 200 ms: RTMP delivers audio in small bursts
        self._sources: dict[str, Subscription[AudioFrame]] = {}
        self._sinks: dict[str, Channel[AudioFrame]] = {}
        self._delays: dict[str, float] = {}
        self._worker: Worker | None = None
        self.ticks = 0
        self.overruns = 0
        self.crashes = 0

    def __len__(self) -> int:
        return len(self._sinks)

    def add(self, uuid: str, source: Channel[AudioFrame], sink: Channel[AudioFrame]) -> None:
        """``uuid`` speaks on ``source`` and hears the others on ``sink``."""
        self.remove(uuid)
        self._sources[uuid] = source.subscribe(maxsize=25, name=f"mixer:{self.conf_id}")
        self._sinks[uuid] = sink
        self.mixer.add_source(uuid)
        self.mixer.add_listener(uuid)
        event(logger, "mixer_joined", confId=self.conf_id, uuid=uuid, members=len(self._sinks))
        if self._worker is None:
            self._worker = Worker(self._run, self._crashed)

    def remove(self, uuid: str) -> None:
        sub = self._sources.pop(uuid, None)
        if sub is None:
            return
        sub.close()
        del self._sinks[uuid]
        self._delays.pop(uuid, None)
        self.mixer.remove_listener(uuid)
        self.mixer.remove_source(uuid)
        event(logger, "mixer_left", confId=self.conf_id, uuid=uuid, members=len(self._sinks))
        if not self._sinks:
            self.close()

    def close(self) -> None:
        for uuid in list(self._sources):
            self._sources.pop(uuid).close()
            self.mixer.remove_listener(uuid)
            self.mixer.remove_source(uuid)
        self._sinks.clear()
        self._delays.clear()
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def stats(self) -> dict[str, Any]:
        return {
            "state": self._worker.state if self._worker is not None else RUNNING,
            "ticks": self.ticks,
            "overruns": self.overruns,
            "crashes": self.crashes,
            "sources": {k: asdict(s) for k, s in self.mixer.stats().items()},
        }

    def tick(self, now: float) -> None:
        """Move what the sources have into the mixer and publish one frame per listener.

        A source's frames carry capture times that lag their arrival by its own
        path delay (an RTMP pull's FLV timeline trails real time by up to a
        GOP). The mixer is fed arrival-aligned times, ``ts + delay`` with the
        source's smallest delay seen, so nobody's frames look late; each
        listener's mix frame then carries the capture time of what it holds,
        so a member's video synced into that stream (AvSync) stays lip-synced.
        """
        arrived = now - AUDIO_FRAME_SECONDS  # the start of this tick's window
        for uuid, sub in self._sources.items():
            while sub.pending:
                frame = sub.get(timeout=0)
                if frame is None:
                    break
                delay = self._observe_delay(uuid, arrived - frame.ts)
                self.mixer.push(uuid, AudioFrame(frame.pcm, frame.ts + delay))
        mixes = self.mixer.tick(now)
        captured = {uuid: ts - self._delays[uuid] for uuid in self._sources
                    if (ts := self.mixer.mixed_ts(uuid)) is not None}
        for uuid, frame in mixes.items():
            heard = [ts for source, ts in captured.items() if source != uuid]
            if not heard:  # nobody had a frame: stay on the speakers' timeline all the same
                heard = [frame.ts - d for source, d in self._delays.items() if source != uuid]
            if heard:
                frame.ts = sum(heard) / len(heard)
            self._sinks[uuid].publish(frame)
        self.ticks += 1

    def _observe_delay(self, uuid: str, delay: float) -> float:
        """The source's path delay: the smallest seen, creeping up slowly if the path grows."""
        known = self._delays.get(uuid)
        if known is None or delay < known:
            known = delay
        else:
            known += (delay - known) * DELAY_CREEP
        self._delays[uuid] = known
        return known

    def _crashed(self, error: BaseException, retry_in: float) -> None:
        self.crashes += 1
        event(logger, "mixer_crashed", logging.ERROR, exc=error, confId=self.conf_id,
              error=f"{type(error).__name__}: {error}", retry_in=retry_in)

    def _run(self) -> None:
        # Mix a little behind real time, so a frame captured "now" is in its window.
        next_tick = self.clock() + AUDIO_FRAME_SECONDS
        while True:
            delay = next_tick - self.clock()
            if delay > 0:
                gevent.sleep(delay)
            elif delay < -0.1:  # the hub was stalled: skip ahead instead of bursting
                self.overruns += 1
                next_tick = self.clock()
            self.tick(next_tick)
            next_tick += AUDIO_FRAME_SECONDS
