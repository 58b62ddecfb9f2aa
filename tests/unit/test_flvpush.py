"""AvInterleaver: FLV timestamps, the audio grid with silence, video held for interleaving.

FlvPublisher: the one loop that takes from the subscriptions and writes.
"""

from __future__ import annotations

import time

import gevent
import numpy as np

from wxmgw.legs.flvpush import HOLD_MAX, QUIET, AvInterleaver, FlvPublisher, Output
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AudioFrame, VideoFrame
from wxmgw.media.rtmp_writer import RtmpWriter
from wxmgw.pubsub import DEFAULT_MAXSIZE, Channel

BASE = 1000.0
DELAY = 0.03  # network + jitter buffer: frames arrive this long after capture


def tone(ts: float) -> AudioFrame:
    return AudioFrame(np.full(AUDIO_FRAME_SAMPLES, 1000, np.int16), ts)


def picture(ts: float, key: bool = False) -> VideoFrame:
    return VideoFrame([b"\x65" if key else b"\x41"], ts, key)


def audio_pts(out: Output) -> list[int]:
    return [pts for f, pts in out if isinstance(f, AudioFrame)]


def silent(out: Output) -> int:
    return sum(1 for f, _ in out if isinstance(f, AudioFrame) and not f.pcm.any())


def test_audio_takes_its_capture_time_on_the_20ms_grid() -> None:
    av = AvInterleaver(BASE)
    out: Output = []
    for i in range(5):
        ts = BASE + 0.1 + i * 0.02 + (0.003 if i % 2 else 0.0)  # a little jitter in ts
        out += av.audio(tone(ts), ts + DELAY)
    assert audio_pts(out) == [100, 120, 140, 160, 180]
    assert silent(out) == 0
    assert av.stats.audio_frames == 5


def test_quiet_audio_is_filled_with_silence_and_late_audio_dropped() -> None:
    av = AvInterleaver(BASE)
    av.audio(tone(BASE), BASE + DELAY)
    deadline = av.next_deadline()
    assert deadline is not None and abs(deadline - (BASE + 0.02 + DELAY + QUIET)) < 1e-9
    assert av.tick(deadline - 0.001) == []
    out = av.tick(BASE + 0.1 + DELAY + QUIET)  # slots 20..100 ms are overdue
    assert audio_pts(out) == [20, 40, 60, 80, 100]
    assert silent(out) == 5
    late = av.audio(tone(BASE + 0.04), BASE + 0.2)
    assert late == [] and av.stats.audio_late == 1
    assert audio_pts(av.audio(tone(BASE + 0.12), BASE + 0.2)) == [120]


def test_a_gap_in_the_audio_is_filled_and_a_jump_moves_the_grid() -> None:
    av = AvInterleaver(BASE)
    av.audio(tone(BASE), BASE)
    out = av.audio(tone(BASE + 0.08), BASE + 0.08)
    assert audio_pts(out) == [20, 40, 60, 80] and silent(out) == 3
    out = av.audio(tone(BASE + 5.0), BASE + 0.1)
    assert audio_pts(out) == [5000] and av.stats.audio_resyncs == 1
    out = av.audio(tone(BASE + 1.0), BASE + 0.12)  # backwards: timestamps stay monotonic
    assert audio_pts(out) == [5001]


def test_video_waits_for_a_keyframe_and_for_the_audio_of_its_time() -> None:
    av = AvInterleaver(BASE)
    av.audio(tone(BASE), BASE + DELAY)
    assert av.video(picture(BASE + 0.01), BASE + 0.04) == []
    assert av.stats.video_before_keyframe == 1
    assert av.video(picture(BASE + 0.05, key=True), BASE + 0.08) == []  # audio only at 0 ms
    assert audio_pts(av.audio(tone(BASE + 0.02), BASE + 0.05)) == [20]  # 50 > 20 + slack
    out = av.audio(tone(BASE + 0.04), BASE + 0.07)
    assert [(type(f).__name__, p) for f, p in out] == [("AudioFrame", 40), ("VideoFrame", 50)]
    assert av.stats.av_offset_ms == 0


def test_video_is_not_held_longer_than_hold_max() -> None:
    av = AvInterleaver(BASE)
    av.video(picture(BASE, key=True), BASE)  # no audio at all: silence starts at the picture
    av.video(picture(BASE + 0.04), BASE + 0.04)
    out = av.tick(BASE + HOLD_MAX)
    assert [p for f, p in out if isinstance(f, VideoFrame)] == [0, 40]
    assert silent(out) == len(audio_pts(out)) > 0


def test_video_timestamps_never_go_back_and_a_new_source_starts_at_a_keyframe() -> None:
    av = AvInterleaver(BASE)
    av.video(picture(BASE + 1.0, key=True), BASE + 1.0)
    av.video(picture(BASE + 0.5), BASE + 1.1)
    out = av.tick(BASE + 2.0)
    assert [p for f, p in out if isinstance(f, VideoFrame)] == [1000, 1000]
    av.reset_video()
    assert av.video(picture(BASE + 2.0), BASE + 2.0) == []
    assert av.stats.video_before_keyframe == 1


class Recorder(RtmpWriter):
    """The writer's calls, in order, from the publisher's loop; no network."""

    def __init__(self) -> None:
        super().__init__("rtmp://127.0.0.1:1/live/x", name="rec", on_event=lambda k, i: None)
        self.calls: list[tuple[str, object]] = []

    def write_video(self, frame: VideoFrame, pts_ms: int) -> None:
        self.calls.append(("video", frame))

    def write_audio(self, frame: AudioFrame, pts_ms: int) -> None:
        self.calls.append(("audio", pts_ms))

    def set_video(self, video: bool) -> None:
        self.calls.append(("set_video", video))


def publisher(video: Channel[VideoFrame]) -> tuple[FlvPublisher, Recorder]:
    pub = FlvPublisher("rtmp://127.0.0.1:1/live/x", audio=Channel("a"), video=video,
                       log=lambda *a, **k: None, name="t")
    pub._writer = recorder = Recorder()
    return pub, recorder


def test_push_loop_resumes_video_at_a_keyframe_after_its_queue_overflowed() -> None:
    video: Channel[VideoFrame] = Channel("v", gop_cache=True)
    pub, writer = publisher(video)
    pub.start()
    now = time.monotonic()
    for i in range(DEFAULT_MAXSIZE + 4):  # the loop is away: 4 frames lost
        video.publish(picture(now, key=i == 0))
    gevent.sleep(0.05)
    after = [picture(now), picture(now), picture(now, key=True), picture(now)]
    for frame in after:
        video.publish(frame)
    gevent.sleep(0.3)  # held video goes out with the silence, or after HOLD_MAX
    pub.close()
    assert [f for kind, f in writer.calls if kind == "video"] == after[2:]
    assert video.dropped == 4  # counted where they were lost (the leg's rtp_in flow)
    assert pub.dropped == DEFAULT_MAXSIZE + 2  # what the full queue held, and P P before K
    assert pub.stats()["rtmp_dropped"] == pub.flows()[0].dropped == pub.dropped
    assert any(kind == "audio" for kind, _ in writer.calls)  # silence from the start


def test_video_source_switch_reaches_the_writer_from_the_loop() -> None:
    pub, writer = publisher(Channel("v", gop_cache=True))
    pub.start()
    pub.set_video(None)
    assert ("set_video", False) not in writer.calls  # not from the caller: a send may be under way
    gevent.sleep(0.01)
    assert ("set_video", False) in writer.calls
    pub.close()
    assert pub.state == "running"
