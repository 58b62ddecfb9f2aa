"""RoomMixer on the hub: channels in, N-1 mixes out on a steady 20 ms grid."""

import time

import gevent
import numpy as np

from wxmgw.legs.roommix import RoomMixer
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame
from wxmgw.pubsub import Channel


def tone(freq: float, n: int) -> np.ndarray:
    t = np.arange(n * AUDIO_FRAME_SAMPLES) / AUDIO_RATE
    return (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)


def peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(len(pcm), 1 / AUDIO_RATE)[int(np.argmax(spectrum))])


def test_each_member_hears_the_others_and_a_stalled_one_stalls_nothing():
    room = RoomMixer("c1")
    freqs = {"a": 500.0, "b": 1200.0, "c": 2000.0}
    sources = {k: Channel[AudioFrame](f"{k}/audio") for k in freqs}
    sinks = {k: Channel[AudioFrame](f"{k}/mix") for k in freqs}
    outs = {k: sinks[k].subscribe(maxsize=1000) for k in freqs}
    for k in freqs:
        room.add(k, sources[k], sinks[k])
    pcm = {k: tone(f, 25) for k, f in freqs.items()}

    def speak(key: str) -> None:
        for i in range(25):
            chunk = pcm[key][i * AUDIO_FRAME_SAMPLES:(i + 1) * AUDIO_FRAME_SAMPLES]
            sources[key].publish(AudioFrame(chunk, time.monotonic()))
            gevent.sleep(0.02)

    gevent.joinall([gevent.spawn(speak, "a"), gevent.spawn(speak, "b")])  # c stays silent
    gevent.sleep(0.1)
    room.close()
    for key in freqs:
        frames = []
        while (f := outs[key].get(timeout=0)) is not None:
            frames.append(f.pcm)
        assert len(frames) >= 25, key
        heard = np.concatenate(frames)
        spectrum = np.abs(np.fft.rfft(heard.astype(np.float64)))
        bins = np.fft.rfftfreq(len(heard), 1 / AUDIO_RATE)

        def level(hz: float, spectrum=spectrum, bins=bins) -> float:
            return float(spectrum[np.abs(bins - hz) < 20].max())

        others = [k for k in ("a", "b") if k != key]
        for other in others:
            assert level(freqs[other]) > 50 * level(freqs[key]) + 1, (key, other)
    assert room.ticks >= 25


def test_a_source_whose_timeline_lags_its_arrival_is_still_mixed():
    """An RTMP pull stamps frames on the FLV timeline, which can be seconds behind."""
    room = RoomMixer("c2")
    source, silent = Channel[AudioFrame]("a/audio"), Channel[AudioFrame]("b/audio")
    sink = Channel[AudioFrame]("b/mix")
    out = sink.subscribe(maxsize=1000)
    room.add("a", source, Channel[AudioFrame]("a/mix"))
    room.add("b", silent, sink)
    pcm = tone(500.0, 10)
    lag = 3.0
    for i in range(10):
        chunk = pcm[i * AUDIO_FRAME_SAMPLES:(i + 1) * AUDIO_FRAME_SAMPLES]
        source.publish(AudioFrame(chunk, time.monotonic() - lag))
        gevent.sleep(0.02)
    gevent.sleep(0.1)
    room.close()
    heard = []
    while (f := out.get(timeout=0)) is not None:
        heard.append(f.pcm)
    assert sum(int(np.abs(p).max() > 1000) for p in heard) >= 8


def test_a_mix_frame_carries_the_capture_time_of_what_it_holds():
    """So that a speaker's video synced into a listener's stream lines up with its voice."""
    speaker, listener = Channel[AudioFrame]("a/audio"), Channel[AudioFrame]("b/audio")
    sink = Channel[AudioFrame]("b/mix")
    out = sink.subscribe(maxsize=100)
    room = RoomMixer("c3")
    room._greenlet = gevent.spawn(lambda: None)  # no real ticker: the test ticks by hand
    room.add("a", speaker, Channel[AudioFrame]("a/mix"))
    room.add("b", listener, sink)
    lag = 0.7  # the speaker's timeline trails real time
    captured = []
    for i in range(20):
        now = 100.0 + i * 0.02
        ts = now - lag - (0.004 if i % 3 else 0.0)  # arrival jitter
        captured.append(ts)
        speaker.publish(AudioFrame(tone(500.0, 1), ts))
        room.tick(now + 0.02)
    stamps = []
    while (f := out.get(timeout=0)) is not None:
        stamps.append(f.ts)
    assert len(stamps) == 20
    errors = [abs(s - c) for s, c in zip(stamps, captured, strict=True)]
    assert max(errors) < 0.005, errors


def test_a_tick_with_nothing_to_mix_stays_on_the_speakers_timeline():
    """Silence between words must not jump the mix to arrival time (the FLV muxer would resync)."""
    speaker, listener = Channel[AudioFrame]("a/audio"), Channel[AudioFrame]("b/audio")
    sink = Channel[AudioFrame]("b/mix")
    out = sink.subscribe(maxsize=100)
    room = RoomMixer("c4")
    room._greenlet = gevent.spawn(lambda: None)  # no real ticker: the test ticks by hand
    room.add("a", speaker, Channel[AudioFrame]("a/mix"))
    room.add("b", listener, sink)
    lag = 0.5
    speaker.publish(AudioFrame(tone(500.0, 1), 100.0 - lag))
    room.tick(100.02)
    room.tick(100.04)  # the speaker has nothing this time
    first, second = out.get(timeout=0), out.get(timeout=0)
    assert first is not None and second is not None
    assert abs(first.ts - (100.0 - lag)) < 0.005
    assert abs(second.ts - (100.02 - lag)) < 0.005


def test_a_tick_that_raises_is_logged_and_the_mixer_ticks_on(caplog):
    """No worker dies silently (#12 item 3): a failing tick restarts the loop after a backoff."""
    room = RoomMixer("c-crash")
    real_tick, failures = room.tick, []

    def tick(now: float) -> None:
        if not failures:
            failures.append(now)
            raise IndexError("a bug")
        real_tick(now)

    room.tick = tick
    room.add("a", Channel[AudioFrame]("a/audio"), Channel[AudioFrame]("a/mix"))
    gevent.sleep(0.05)
    assert room.stats()["state"] == "failed: IndexError: a bug" and room.crashes == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "mixer_crashed"]
    assert record.exc_info is not None and record.fields["confId"] == "c-crash"
    deadline = time.monotonic() + 10
    while room.ticks < 5:
        assert time.monotonic() < deadline, "the mixer did not tick again"
        gevent.sleep(0.05)
    assert room.stats()["state"] == "running"
    room.close()
