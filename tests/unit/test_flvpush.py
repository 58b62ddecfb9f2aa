"""AvInterleaver: FLV timestamps, the audio grid with silence, video held for interleaving."""

from __future__ import annotations

import numpy as np

from wxmgw.legs.flvpush import HOLD_MAX, QUIET, AvInterleaver, Output
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AudioFrame, VideoFrame

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
