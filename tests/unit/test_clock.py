"""The audio timing rules: sample clock, framers, live timeline (wxmgw.media.clock)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wxmgw.media.clock import (
    AudioFramer,
    ClockRules,
    LiveTimeline,
    PcmFramer,
    Placement,
    SampleClock,
)
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_FRAME_SECONDS, AUDIO_RATE, Pcm

RATE = 1000  # one sample a millisecond keeps the arithmetic readable


def test_first_chunk_starts_the_clock_and_jitter_moves_nothing() -> None:
    clock = SampleClock(RATE, ClockRules(gap=0.2))
    assert clock.place(10.0) is Placement.NEXT
    clock.advance(20)
    assert clock.place(10.0 + 0.02 + 0.15) is Placement.NEXT  # 150 ms late: within the gap
    assert clock.next == pytest.approx(10.02)


def test_a_gap_jumps_the_count_ahead() -> None:
    clock = SampleClock(RATE, ClockRules(gap=0.2))
    clock.place(10.0)
    clock.advance(20)
    assert clock.place(11.0) is Placement.GAP
    assert clock.next == pytest.approx(11.0) and clock.gaps == 1
    assert clock.count == 20  # the count is what was counted; its start moved


def test_backlog_is_dropped_and_counted_resync_follows() -> None:
    clock = SampleClock(RATE, ClockRules(gap=0.2, resync=1.0, backlog=0.1))
    clock.place(10.0)
    clock.advance(500)
    assert clock.place(10.45, 20) is Placement.NEXT
    assert clock.place(10.3, 20) is Placement.BACKLOG
    assert clock.backlog_dropped == 20
    assert clock.place(9.0) is Placement.RESYNC
    assert clock.next == pytest.approx(9.0) and clock.resyncs == 1


def test_framer_cuts_exact_frames_in_order() -> None:
    framer = PcmFramer()
    pcm = np.arange(5000, dtype=np.int16)
    frames: list[Pcm] = []
    for piece in np.array_split(pcm, 7):
        frames += framer.push(piece)
    assert [len(f) for f in frames] == [960] * 5
    assert np.array_equal(np.concatenate(frames), pcm[:4800])
    assert framer.pending == 200
    rest = framer.push(np.zeros(760, np.int16))
    assert len(rest) == 1 and np.array_equal(rest[0][:200], pcm[4800:])


def test_framer_does_not_alias_input() -> None:
    framer = PcmFramer()
    pcm = np.ones(1000, np.int16)
    frame = framer.push(pcm)[0]
    pcm[:] = 0
    assert frame.sum() == 960
    assert framer.push(np.zeros(0, np.int16)) == []
    # Nor does a frame completed from what was held.
    held = np.ones(900, np.int16)
    assert framer.push(held) == []
    more = np.ones(100, np.int16)
    frame = framer.push(more)[0]
    held[:] = more[:] = 0
    assert frame.sum() == 960


def test_audio_framer_stamps_frames_by_the_count() -> None:
    framer = AudioFramer(AUDIO_FRAME_SAMPLES, AUDIO_RATE, ClockRules(gap=0.2))
    chunk = np.zeros(1024, np.int16)  # AAC frames: 1024 samples, 21.3 ms
    stamps: list[float] = []
    for i in range(30):
        # the source's timestamps are rounded to the millisecond
        stamps += [f.ts for f in framer.push(chunk, 5.0 + round(i * 1024 / 48) / 1000)]
    assert stamps == pytest.approx([5.0 + i * AUDIO_FRAME_SECONDS for i in range(len(stamps))])


def test_audio_framer_moves_held_samples_with_a_gap() -> None:
    framer = AudioFramer(AUDIO_FRAME_SAMPLES, AUDIO_RATE, ClockRules(gap=0.2))
    framer.push(np.zeros(480, np.int16), 1.0)  # half a frame held
    frames = framer.push(np.zeros(480, np.int16), 3.0)
    assert [f.ts for f in frames] == pytest.approx([3.0 - 0.01])


def test_a_gop_burst_is_stamped_at_arrival_and_its_audio_dropped_to_the_target() -> None:
    """node-media-server's burst: 2 s of cached media arrive at once, then live."""
    timeline = LiveTimeline(max_lag=0.5)
    framer = AudioFramer(AUDIO_FRAME_SAMPLES, AUDIO_RATE, ClockRules(gap=0.2, backlog=0.1))
    aac = np.zeros(1024, np.int16)
    frame_ms = 1024 / 48
    played = 0  # samples let through
    t0 = 100.0
    out: list[float] = []
    for i in range(200):  # 2 s of burst, in 1 ms, then 2 s live
        ms = round(i * frame_ms)
        arrival = t0 + (0.001 if ms < 2000 else (ms - 2000) / 1000 + 0.02)
        ts = timeline.stamp(ms, arrival)
        assert ts <= arrival + 1e-9  # never stamped after it arrived
        frames = framer.push(aac, ts, arrival)
        played += len(frames) * AUDIO_FRAME_SAMPLES
        out += [f.ts for f in frames]
        if ms > 2500:  # after the burst: the count is within the target of arrival
            assert framer.clock.next - arrival <= 0.1 + frame_ms / 1000
    assert timeline.behind == pytest.approx(2.0, abs=0.05)
    assert framer.clock.backlog_dropped / AUDIO_RATE > 1.8
    assert out == sorted(out)


def test_a_stall_longer_than_max_lag_reanchors_at_arrival() -> None:
    timeline = LiveTimeline(max_lag=0.5)
    assert timeline.stamp(0, 10.0) == 10.0
    assert timeline.stamp(40, 10.05) == pytest.approx(10.04)
    assert timeline.stamp(80, 11.0) == pytest.approx(11.0)  # 0.9 s late: re-anchored
    assert timeline.reanchors == 1
    assert timeline.stamp(5000, 16.0) == pytest.approx(15.92)
    assert timeline.stamp(0, 16.1) == pytest.approx(16.1)  # the FLV timeline restarted
    assert timeline.reanchors == 2


@given(st.lists(st.tuples(st.integers(0, 40), st.floats(0, 0.3)), min_size=1, max_size=200),
       st.sampled_from([0.0, 0.1]))
def test_live_timeline_never_stamps_after_arrival_and_never_goes_back(
    steps: list[tuple[int, float]], tolerance: float,
) -> None:
    timeline = LiveTimeline(max_lag=0.5, tolerance=tolerance)
    ms, arrival, last = 0, 0.0, -1.0
    for step_ms, wait in steps:
        ms += step_ms
        arrival += wait
        ts = timeline.stamp(ms, arrival)
        assert ts <= arrival + tolerance + 1e-9
        assert ts >= last - 1e-9
        last = ts


def test_audio_and_video_of_different_delays_share_one_anchor() -> None:
    """The publisher holds audio ~50 ms longer than video: within the tolerance the anchor
    the first (audio) message set stays, so the video does not move against the audio."""
    timeline = LiveTimeline(max_lag=0.5, tolerance=0.1)
    assert timeline.stamp(0, 10.05) == pytest.approx(10.05)  # audio, 50 ms held
    assert timeline.stamp(0, 10.0) == pytest.approx(10.05)  # video of the same instant
    assert timeline.stamp(40, 10.04) == pytest.approx(10.09)
    assert timeline.behind == 0.0
    assert timeline.stamp(500, 10.3) == pytest.approx(10.3)  # 0.25 s early: a burst, followed
    assert timeline.behind == pytest.approx(0.25)


@given(st.lists(st.tuples(st.integers(1, 3000), st.floats(-1, 1)), min_size=1, max_size=100))
def test_audio_framer_frames_never_overlap(chunks: list[tuple[int, float]]) -> None:
    framer = AudioFramer(AUDIO_FRAME_SAMPLES, AUDIO_RATE,
                         ClockRules(gap=0.2, resync=0.2, backlog=0.05))
    ts, last = 50.0, None
    for size, jitter in chunks:
        for frame in framer.push(np.zeros(size, np.int16), ts + jitter):
            assert len(frame.pcm) == AUDIO_FRAME_SAMPLES
            if last is not None and framer.clock.resyncs == 0:
                assert frame.ts >= last + AUDIO_FRAME_SECONDS - 1e-9
            last = frame.ts
        ts += size / AUDIO_RATE
