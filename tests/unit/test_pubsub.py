from __future__ import annotations

import logging

import gevent
import numpy as np
import pytest
from gevent.event import Event

from wxmgw import pubsub
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AudioFrame, VideoFrame
from wxmgw.pubsub import Channel


def video(ts: float, keyframe: bool = False, size: int = 10) -> VideoFrame:
    return VideoFrame(nalus=[b"\x65" * size], ts=ts, keyframe=keyframe)


def audio(ts: float) -> AudioFrame:
    return AudioFrame(pcm=np.zeros(AUDIO_FRAME_SAMPLES, np.int16), ts=ts)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_publish_without_subscribers_counts() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    ch.publish(audio(0.0))
    assert ch.published == 1
    assert ch.subscribers == 0


def test_fan_out_in_order() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    s1, s2 = ch.subscribe(name="one"), ch.subscribe(name="two")
    frames = [audio(i * 0.02) for i in range(5)]
    for f in frames:
        ch.publish(f)
    assert [s1.get(0) for _ in frames] == frames
    assert [s2.get(0) for _ in frames] == frames
    assert s1.delivered == s2.delivered == 5
    assert s1.get(0) is None
    assert s1.delivered == 5


def test_get_times_out_with_none() -> None:
    sub = Channel[AudioFrame]("a").subscribe()
    assert sub.get(timeout=0.001) is None


def test_blocked_get_wakes_on_publish() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    sub = ch.subscribe()
    frame = audio(1.0)
    getter = gevent.spawn(sub.get, 5.0)
    gevent.sleep(0)  # let the getter block
    ch.publish(frame)
    assert getter.get(timeout=5.0) is frame


def test_full_queue_drops_newest_and_never_blocks() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    slow = ch.subscribe(maxsize=3)
    fast = ch.subscribe(maxsize=100)
    frames = [audio(float(i)) for i in range(10)]
    for f in frames:
        ch.publish(f)
    assert slow.dropped == 7 and slow.pending == 3
    assert [slow.get(0) for _ in range(3)] == frames[:3]
    assert fast.dropped == 0 and fast.pending == 10


def test_drop_warning_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    ch: Channel[AudioFrame] = Channel("uuid-1/audio", warn_interval=5.0, clock=clock)
    ch.subscribe(maxsize=1, name="flv")
    caplog.set_level(logging.WARNING, logger=pubsub.__name__)
    for _ in range(50):
        ch.publish(audio(0.0))
    clock.now = 4.9
    ch.publish(audio(0.0))
    assert len(caplog.records) == 1
    clock.now = 5.0
    ch.publish(audio(0.0))
    assert len(caplog.records) == 2
    record = caplog.records[1]
    assert record.getMessage() == "subscriber_too_slow"
    assert record.fields == {  # type: ignore[attr-defined]
        "channel": "uuid-1/audio", "subscriber": "flv", "dropped": 50, "total": 51}
    assert ch.dropped == 51


def test_channel_close_wakes_subscribers_and_ends_iteration() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    blocked = ch.subscribe()
    iterated = ch.subscribe()
    ch.publish(audio(0.0))
    assert blocked.get(0) is not None
    waiter = gevent.spawn(blocked.get, 5.0)
    collector = gevent.spawn(list, iterated)
    gevent.sleep(0)
    ch.close()
    assert waiter.get(timeout=5.0) is None
    assert len(collector.get(timeout=5.0)) == 1
    assert blocked.closed and ch.subscribers == 0
    ch.publish(audio(1.0))  # no-op once closed
    assert ch.published == 1


def test_subscribe_to_closed_channel_is_closed() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    ch.close()
    sub = ch.subscribe()
    assert sub.closed and sub.get(None) is None and ch.subscribers == 0


def test_subscription_close_leaves_channel() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    keep, leave = ch.subscribe(), ch.subscribe()
    waiter = gevent.spawn(leave.get, 5.0)
    gevent.sleep(0)
    leave.close()
    assert waiter.get(timeout=5.0) is None
    assert ch.subscribers == 1
    ch.publish(audio(0.0))
    assert keep.pending == 1 and leave.pending == 0


def test_late_video_subscriber_starts_at_cached_keyframe() -> None:
    ch: Channel[VideoFrame] = Channel("v", gop_cache=True)
    needed: list[bool] = []
    ch.on_keyframe_needed = lambda: needed.append(True)
    ch.publish(video(0.0))  # before any keyframe: not cached
    gop = [video(1.0, keyframe=True), video(1.04), video(1.08)]
    for f in gop:
        ch.publish(f)
    assert ch.cached_frames == 3
    sub = ch.subscribe(maxsize=2)  # the cached GOP may exceed maxsize
    assert needed == []
    assert [sub.get(0) for _ in gop] == gop
    nxt = video(1.12)
    ch.publish(nxt)
    assert sub.get(0) is nxt
    # a new keyframe restarts the cache
    key = video(2.0, keyframe=True)
    ch.publish(key)
    assert ch.cached_frames == 1
    assert ch.subscribe().get(0) is key


def test_keyframe_needed_when_nothing_cached() -> None:
    ch: Channel[VideoFrame] = Channel("v", gop_cache=True)
    calls: list[int] = []
    ch.on_keyframe_needed = lambda: calls.append(1)
    ch.publish(video(0.0))
    sub = ch.subscribe()
    assert calls == [1]
    assert sub.pending == 0


def test_gop_cache_bounded_by_frames() -> None:
    ch: Channel[VideoFrame] = Channel("v", gop_cache=True)
    calls: list[int] = []
    ch.on_keyframe_needed = lambda: calls.append(1)
    ch.publish(video(0.0, keyframe=True))
    for i in range(pubsub.GOP_CACHE_MAX_FRAMES - 1):
        ch.publish(video(i + 1.0))
    assert ch.cached_frames == pubsub.GOP_CACHE_MAX_FRAMES
    ch.publish(video(1000.0))
    assert ch.cached_frames == 0
    ch.publish(video(1001.0))  # stays empty until the next keyframe
    assert ch.cached_frames == 0
    ch.subscribe()
    assert calls == [1]
    ch.publish(video(1002.0, keyframe=True))
    assert ch.cached_frames == 1


def test_gop_cache_bounded_by_bytes() -> None:
    ch: Channel[VideoFrame] = Channel("v", gop_cache=True)
    big = pubsub.GOP_CACHE_MAX_BYTES // 2
    ch.publish(video(0.0, keyframe=True, size=big))
    ch.publish(video(0.04, size=big))
    assert ch.cached_frames == 2
    ch.publish(video(0.08, size=1))
    assert ch.cached_frames == 0


def test_audio_channel_caches_nothing() -> None:
    ch: Channel[AudioFrame] = Channel("a")
    calls: list[int] = []
    ch.on_keyframe_needed = lambda: calls.append(1)
    ch.publish(audio(0.0))
    assert ch.subscribe().pending == 0
    assert calls == []


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Channel[AudioFrame]("a").subscribe(maxsize=0)


def test_one_consumer_waits_on_several_channels_with_one_event() -> None:
    ready = Event()
    sound: Channel[AudioFrame] = Channel("a")
    picture: Channel[VideoFrame] = Channel("v", gop_cache=True)
    a, v = sound.subscribe(ready=ready), picture.subscribe(ready=ready)
    assert a.take() is None and v.take() is None and not ready.is_set()
    frame = video(1.0, keyframe=True)
    picture.publish(frame)
    assert ready.wait(0) and a.take() is None and v.take() is frame
    assert v.delivered == 1 and a.delivered == 0
    ready.clear()
    sound.close()
    assert ready.is_set() and a.take() is None  # a closed source wakes the consumer too
