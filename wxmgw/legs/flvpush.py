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
from gevent.event import Event

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

    One greenlet per publication, a :class:`~wxmgw.supervise.Worker`, waits
    on both subscriptions (they share one ``ready`` Event) and on the
    :class:`AvInterleaver`'s next deadline, and writes what the interleaver
    releases with the :class:`RtmpWriter` at once, each send with a deadline
    (as mediamtx's ``from_stream.go`` writes from the reader's callback).
    Reconnecting with backoff happens in that loop, inside the writer. The
    only queues are the subscriptions': a source faster than the server loses
    frames there (counted by the channel); video then skips what the full
    queue held too and resumes at the next keyframe (counted in
    :attr:`dropped`). A video channel given at start or by :meth:`set_video`
    starts at its cached keyframe. An unexpected exception in the loop is
    logged (``flv_worker_crashed``, with the traceback), counted, and the
    loop runs again after a backoff.
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
        self._audio_channel = audio
        self._video_channel = video
        self._writer = RtmpWriter(
            url, name=name, on_event=self._on_event, video=video is not None, audio=True,
            aac_rate=aac_rate, limits=limits,
        )
        self._av = AvInterleaver(clock())
        self._ready = Event()
        self._audio: Subscription[AudioFrame] | None = None
        self._video: Subscription[VideoFrame] | None = None
        self._video_switched = False  # set_video since the loop last looked
        self._video_gap = False  # video frames were lost: skip to the next keyframe
        self._video_lost = 0  # the video subscription's drops seen so far
        self.dropped = 0  # video frames skipped after a loss, waiting for a keyframe
        self._worker: Worker | None = None
        self._closed = False
        self.crashes = 0

    def start(self) -> None:
        """Publish from now on: silence until the sources bring audio, video as it comes."""
        self._av.base = self._clock()
        self._av.begin(self._av.base)
        self._audio = self._audio_channel.subscribe(name=f"{self.name}/flv", ready=self._ready)
        if self._video_channel is not None:
            self._video = self._video_channel.subscribe(
                name=f"{self.name}/flv", ready=self._ready)
        self._worker = Worker(self._run, self._crashed)

    def set_video(self, video: Channel[VideoFrame] | None) -> None:
        """Switch, add or remove the video source; the new one starts at a keyframe."""
        if video is self._video_channel or self._closed:
            return
        self._unfollow_video()
        self._av.reset_video()
        self._video_channel = video
        self._video_switched = True  # the writer hears of it in the loop, between two writes
        self._log("flv_video_source", stream=self.name, video=video.name if video else "")
        if video is not None:
            self._video = video.subscribe(name=f"{self.name}/flv", ready=self._ready)
        self._ready.set()

    def close(self) -> None:
        """Stop at once and end the publication."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            # It ends at the hub's next turn; should it run once more before, the
            # writer, closed below, sends nothing and takes a send cut short quietly.
            self._worker.kill()
        self._unfollow_video()
        if self._audio is not None:
            self._audio.close()
        self._writer.close()

    @property
    def state(self) -> str:
        """The writer's and the loop's state (:func:`~wxmgw.supervise.worst`)."""
        return worst([self._writer.state, *([self._worker.state] if self._worker else [])])

    def stats(self) -> dict[str, Any]:
        w = self._writer.stats
        return {
            **asdict(self._av.stats),
            "rtmp_frames": w.frames,
            "rtmp_bytes": w.bytes,
            "reconnects": w.reconnects,
            "rtmp_errors": w.errors,
            "rtmp_malformed": w.malformed,
            "rtmp_dropped": self.dropped,
            "crashes": self.crashes + w.crashes,
            "added_latency_ms": self._writer.latency_ms(),
        }

    def flows(self) -> list[Flow]:
        """The push: bytes, frames, reconnects, frames skipped, added latency, A/V offset."""
        w, av = self._writer.stats, self._av.stats
        return [Flow("rtmp_out", "av", bytes=w.bytes, frames=w.frames, reconnects=w.reconnects,
                     dropped=self.dropped,
                     av_offset=av.av_offset_ms / 1000 if av.video_frames else None,
                     latency=self._writer.latency, av_offsets=self._av.offsets)]

    def _unfollow_video(self) -> None:
        sub, self._video = self._video, None
        if sub is not None:
            sub.close()
        self._video_lost = 0

    def _run(self) -> None:
        """Take what the sources bring, or wait for it until the interleaver's next deadline.

        Audio is taken before video, so a video frame finds the audio up to
        its time already written; after a source stops, the deadlines keep
        the stream going (silence).
        """
        av, audio = self._av, self._audio
        assert audio is not None, "started"
        while True:
            if self._video_switched:
                self._video_switched = self._video_gap = False
                self._writer.set_video(self._video_channel is not None)
            now = self._clock()
            if (sound := audio.take()) is not None:
                out = av.audio(sound, now)
            elif (video := self._next_video()) is not None:
                out = av.video(video, now)
            else:
                deadline = av.next_deadline()
                if deadline is None or deadline > now:
                    self._wait(None if deadline is None else deadline - now)
                    continue  # a frame, a new video source or the deadline
                out = av.tick(now)
            self._write(out)

    def _wait(self, timeout: float | None) -> None:
        """Until a source brings something, or ``timeout`` seconds (without a
        ``gevent.Timeout`` per wait: a timer of the hub's sets ``_ready``)."""
        self._ready.clear()
        timer = None if timeout is None else gevent.get_hub().loop.timer(timeout)
        if timer is not None:
            timer.start(self._ready.set)
        try:
            self._ready.wait()
        finally:
            if timer is not None:
                timer.close()

    def _next_video(self) -> VideoFrame | None:
        """The next video frame to interleave; after frames were lost, from a keyframe on."""
        sub = self._video
        if sub is None:
            return None
        if sub.dropped != self._video_lost:
            # Its queue overflowed while the loop was away: what it holds is that
            # far behind, and the frames after it miss those lost.
            self._video_lost = sub.dropped
            while sub.take() is not None:
                self.dropped += 1
            self._video_gap = True
        while (frame := sub.take()) is not None:
            if frame.keyframe or not self._video_gap:
                self._video_gap = False
                return frame
            self.dropped += 1
        return None

    def _write(self, out: Output) -> None:
        writer = self._writer
        for frame, pts in out:
            if isinstance(frame, VideoFrame):
                writer.write_video(frame, pts)
            else:
                writer.write_audio(frame, pts)

    def _crashed(self, error: BaseException, retry_in: float) -> None:
        self.crashes += 1
        self._log("flv_worker_crashed", logging.ERROR, stream=self.name,
                  error=f"{type(error).__name__}: {error}", retry_in=retry_in, exc=error)

    def _on_event(self, kind: str, info: dict[str, Any]) -> None:
        level = {"disconnected": logging.WARNING, "crashed": logging.ERROR}.get(kind, logging.INFO)
        self._log(f"rtmp_push_{kind}", level, stream=self.name, url=self.url, **info)
