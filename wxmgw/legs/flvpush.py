"""FLV muxer glue: a uuid's audio channel (and a video channel) pushed as one RTMP stream.

Used by Rtp2rtmp (a conference member shown to mini-programs) and by Rtmp2rtp
(a mini-program's mix stream, with the video AvSync adds). FLV tags, AAC
encoding and RTMP publishing are :class:`~wxmgw.media.rtmp_writer.RtmpWriter`'s;
what this module decides is *when* each frame is written and with which
timestamp (:class:`AvInterleaver`, pure and clocked from outside):

* Timestamps come from the frames' capture times (``frame.ts``, one monotonic
  clock for the audio and the video of a source: that is the A/V sync),
  relative to a base chosen at start, in milliseconds, non-decreasing per stream.
* Audio is laid on a 20 ms grid. A frame within half a frame of its slot
  takes the slot; a frame whose slot has passed is dropped (late); a jump of
  the source's timeline by more than ``RESYNC`` moves the grid. When the
  audio channel has been quiet for ``QUIET`` past the slot's expected arrival
  (the source's delay, measured on the frames, taken into account), silence
  fills the slots: the stream never stalls, whether the source's audio
  pauses, is lost or never existed (it starts as silence when the publisher
  starts).
* Video waits for a keyframe, then each frame is held until audio up to its
  time (within ``INTERLEAVE_SLACK``) has been written, at most ``HOLD_MAX``:
  the FLV tags go out interleaved by time.
* The A/V offset is measured as how much later than its capture time the
  last video frame is presented, minus the same for the last real audio
  frame (0 when in sync).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

import gevent
import numpy as np

from wxmgw.legs.base import Flow
from wxmgw.media.clock import ClockRules, Placement, SampleClock
from wxmgw.media.endpoint import LatencyWindow
from wxmgw.media.frames import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_FRAME_SECONDS,
    AUDIO_RATE,
    AudioFrame,
    Pcm,
    VideoFrame,
)
from wxmgw.media.rtmp_writer import RtmpWriter
from wxmgw.pubsub import Channel, Subscription
from wxmgw.rtmp.chunk import DEFAULT_LIMITS, RtmpLimits
from wxmgw.supervise import Worker, worst

#: Audio quiet this long past a slot's expected arrival is replaced by silence.
QUIET: Final = 0.06
#: A jump of the audio timeline by more than this moves the grid instead of filling it.
RESYNC: Final = 0.2
#: Video may run this far ahead of the audio written (about one audio frame).
INTERLEAVE_SLACK: Final = 0.02
#: No video frame is held longer than this waiting for audio.
HOLD_MAX: Final = 0.2
_HALF_FRAME: Final = AUDIO_FRAME_SECONDS / 2
_SILENCE: Final = np.zeros(AUDIO_FRAME_SAMPLES, np.int16)
_SILENCE.flags.writeable = False

Output = list[tuple[VideoFrame | AudioFrame, int]]


@dataclass(slots=True)
class InterleaverStats:
    audio_frames: int = 0
    silence_frames: int = 0
    audio_late: int = 0
    audio_resyncs: int = 0
    video_frames: int = 0
    video_before_keyframe: int = 0
    av_offset_ms: int = 0


@dataclass(slots=True)
class _Held:
    frame: VideoFrame
    pts: int
    release_at: float


class AvInterleaver:
    """Timestamps and order of one FLV stream's frames; see the module docstring.

    Each method takes ``now`` (the gateway's monotonic clock) and returns the
    frames to write, in order, with their millisecond timestamps.
    :meth:`next_deadline` says when :meth:`tick` has work (silence, a video
    frame held too long) if no frame arrives before.
    """

    def __init__(self, base: float) -> None:
        self.base = base
        self.stats = InterleaverStats()
        #: The A/V offset of each video frame released, in seconds.
        self.offsets = LatencyWindow()
        # The audio slots' grid: its next is the capture time of the next slot.
        self._slots = SampleClock(
            AUDIO_RATE, ClockRules(gap=RESYNC, resync=RESYNC, backlog=_HALF_FRAME)
        )
        self._audio_pts: int | None = None
        self._audio_delay: float | None = None  # arrival - capture of the latest audio frame
        self._video_delay: float | None = None
        self._held: deque[_Held] = deque()
        self._video_pts: int | None = None
        self._keyframe_seen = False
        self._audio_skew = 0

    def _ms(self, ts: float) -> int:
        return round((ts - self.base) * 1000)

    @property
    def _delay(self) -> float:
        """How long after capture a frame arrives: the audio's, else the video's."""
        if self._audio_delay is not None:
            return self._audio_delay
        return self._video_delay or 0.0

    def begin(self, now: float) -> None:
        """Audio slots from ``now`` on: silence fills them until a source speaks."""
        if self._slots.start is None:
            self._slots.place(now)

    def audio(self, frame: AudioFrame, now: float) -> Output:
        out: Output = []
        self._audio_delay = now - frame.ts
        slots = self._slots
        placement = slots.place(frame.ts)
        if placement is Placement.BACKLOG:
            self.stats.audio_late += 1
            return self._release(now, out)
        if placement is not Placement.NEXT:
            self.stats.audio_resyncs += 1
        while frame.ts - slots.next > _HALF_FRAME:
            self._silence(out)
        pts = self._write_audio(frame.pcm, out, frame.arrived)
        self.stats.audio_frames += 1
        self._audio_skew = pts - self._ms(frame.ts)
        return self._release(now, out)

    def video(self, frame: VideoFrame, now: float) -> Output:
        self._video_delay = now - frame.ts
        if not self._keyframe_seen:
            if not frame.keyframe:
                self.stats.video_before_keyframe += 1
                return []
            self._keyframe_seen = True
            self.begin(frame.ts)  # no audio yet: silence runs from the first picture on
        pts = self._ms(frame.ts)
        if self._video_pts is not None:
            pts = max(pts, self._video_pts)
        self._video_pts = pts
        self._held.append(_Held(frame, pts, now + HOLD_MAX))
        return self._release(now, [])

    def tick(self, now: float) -> Output:
        """Silence for the audio slots overdue at ``now``, and the video that may go."""
        out: Output = []
        slots = self._slots
        if slots.start is not None:
            while slots.next + self._delay + QUIET <= now:
                self._silence(out)
        return self._release(now, out)

    def next_deadline(self) -> float | None:
        deadlines = [self._held[0].release_at] if self._held else []
        if self._slots.start is not None:
            deadlines.append(self._slots.next + self._delay + QUIET)
        return min(deadlines, default=None)

    def reset_video(self) -> None:
        """The video source changes: drop held frames, wait for a keyframe."""
        self._held.clear()
        self._keyframe_seen = False

    def _silence(self, out: Output) -> None:
        self._write_audio(_SILENCE, out)
        self.stats.silence_frames += 1

    def _write_audio(self, pcm: Pcm, out: Output, arrived: float = 0.0) -> int:
        slot = self._slots.next
        pts = self._ms(slot)
        if self._audio_pts is not None:
            pts = max(pts, self._audio_pts + 1)
        out.append((AudioFrame(pcm, slot, arrived), pts))
        self._audio_pts = pts
        self._slots.advance(AUDIO_FRAME_SAMPLES)
        return pts

    def _release(self, now: float, out: Output) -> Output:
        held = self._held
        slack = round(INTERLEAVE_SLACK * 1000)
        audio_pts = self._audio_pts
        while held and (
            (audio_pts is not None and held[0].pts <= audio_pts + slack)
            or held[0].release_at <= now
        ):
            h = held.popleft()
            out.append((h.frame, h.pts))
            self.stats.video_frames += 1
            self.stats.av_offset_ms = (h.pts - self._ms(h.frame.ts)) - self._audio_skew
            self.offsets.add(self.stats.av_offset_ms / 1000)
        return out


class FlvPublisher:
    """Pushes an audio channel and an optional video channel to ``url`` as RTMP (H.264 + AAC).

    Runs two greenlets on the hub (one per subscription) that feed an
    :class:`AvInterleaver` and hand its output to an :class:`RtmpWriter`
    (in its own greenlet, reconnecting with backoff). A video channel
    given at start or by :meth:`set_video` starts at its cached keyframe.
    Each greenlet is a :class:`~wxmgw.supervise.Worker`: an unexpected
    exception is logged (``flv_worker_crashed``, with the traceback),
    counted, and the pump runs again after a backoff.
    """

    def __init__(
        self,
        url: str,
        *,
        audio: Channel[AudioFrame],
        video: Channel[VideoFrame] | None,
        log: Callable[..., None],
        name: str,
        aac_rate: int = AUDIO_RATE,
        clock: Callable[[], float] = time.monotonic,
        limits: RtmpLimits = DEFAULT_LIMITS,
    ) -> None:
        self.url = url
        self.name = name
        self._log = log
        self._clock = clock
        self._audio = audio
        self._video = video
        self._writer = RtmpWriter(
            url, name=name, on_event=self._on_event, video=video is not None, audio=True,
            aac_rate=aac_rate, limits=limits,
        )
        self._av = AvInterleaver(clock())
        self._workers: dict[str, Worker] = {}
        self._subs: dict[str, Subscription[Any]] = {}
        self._closed = False
        self.crashes = 0

    def start(self) -> None:
        """Publish from now on: silence until the sources bring audio, video as it comes."""
        self._av.base = self._clock()
        self._av.begin(self._av.base)
        self._writer.start()
        self._follow("audio", self._audio)
        if self._video is not None:
            self._follow("video", self._video)

    def set_video(self, video: Channel[VideoFrame] | None) -> None:
        """Switch, add or remove the video source; the new one starts at a keyframe."""
        if video is self._video or self._closed:
            return
        self._unfollow("video")
        self._av.reset_video()
        self._writer.set_video(video is not None)
        self._video = video
        self._log("flv_video_source", stream=self.name, video=video.name if video else "")
        if video is not None:
            self._follow("video", video)

    def close(self) -> None:
        """Stop at once and end the publication (the writer flushes and ends on its own)."""
        if self._closed:
            return
        self._closed = True
        for kind in list(self._subs):
            self._unfollow(kind)
        self._writer.close()
        gevent.spawn(self._writer.join)  # releases the writer's hub inbox once it has ended

    @property
    def state(self) -> str:
        """The writer's and the pumps' state (:func:`~wxmgw.supervise.worst`)."""
        return worst([self._writer.state, *(w.state for w in self._workers.values())])

    def stats(self) -> dict[str, Any]:
        w = self._writer.stats
        return {
            **asdict(self._av.stats),
            "rtmp_frames": w.frames,
            "rtmp_bytes": w.bytes,
            "reconnects": w.reconnects,
            "rtmp_errors": w.errors,
            "rtmp_malformed": w.malformed,
            "rtmp_dropped": w.dropped,
            "crashes": self.crashes + w.crashes,
            "added_latency_ms": self._writer.latency_ms(),
        }

    def flows(self) -> list[Flow]:
        """The push: bytes, frames, reconnects, writes dropped, added latency, A/V offset."""
        w, av = self._writer.stats, self._av.stats
        return [Flow("rtmp_out", "av", bytes=w.bytes, frames=w.frames, reconnects=w.reconnects,
                     dropped=w.dropped,
                     av_offset=av.av_offset_ms / 1000 if av.video_frames else None,
                     latency=self._writer.latency, av_offsets=self._av.offsets)]

    def _follow(self, kind: str, channel: Channel[Any]) -> None:
        sub: Subscription[Any] = channel.subscribe(name=f"{self.name}/flv")
        self._subs[kind] = sub
        self._workers[kind] = Worker(
            lambda: self._pump(sub, kind == "video"),
            lambda error, retry_in: self._crashed(kind, error, retry_in),
        )

    def _unfollow(self, kind: str) -> None:
        worker = self._workers.pop(kind, None)
        if worker is not None:
            worker.kill()
        sub = self._subs.pop(kind, None)
        if sub is not None:
            sub.close()

    def _pump(self, sub: Subscription[Any], video: bool) -> None:
        """Feed one subscription to the interleaver; wake up for its deadlines too.

        Whichever greenlet changes the interleaver's state waits next with the
        deadline that change set, so every deadline is kept by one of them.
        """
        av = self._av
        while True:
            deadline = av.next_deadline()
            timeout = None if deadline is None else max(0.001, deadline - self._clock())
            if sub.closed:  # the source stopped: the audio greenlet keeps the stream going
                if video:
                    return
                gevent.sleep(1.0 if timeout is None else timeout)
                frame = None
            else:
                frame = sub.get(timeout)
            now = self._clock()
            if frame is None:
                out = av.tick(now)
            elif video:
                out = av.video(frame, now)
            else:
                out = av.audio(frame, now)
            self._write(out)

    def _write(self, out: Output) -> None:
        writer = self._writer
        for frame, pts in out:
            if isinstance(frame, VideoFrame):
                writer.write_video(frame, pts)
            else:
                writer.write_audio(frame, pts)

    def _crashed(self, kind: str, error: BaseException, retry_in: float) -> None:
        self.crashes += 1
        self._log("flv_worker_crashed", logging.ERROR, stream=self.name, worker=kind,
                  error=f"{type(error).__name__}: {error}", retry_in=retry_in, exc=error)

    def _on_event(self, kind: str, info: dict[str, Any]) -> None:
        level = {"disconnected": logging.WARNING, "crashed": logging.ERROR}.get(kind, logging.INFO)
        self._log(f"rtmp_push_{kind}", level, stream=self.name, url=self.url, **info)
