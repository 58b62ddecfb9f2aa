from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from wxmgw.media.frames import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_FRAME_SECONDS,
    AUDIO_RATE,
    AudioFrame,
    Pcm,
)
from wxmgw.media.mixer import LIMITER_KNEE_DBFS, Mixer

TICKS = 10
KNEE = 32767 * 10 ** (LIMITER_KNEE_DBFS / 20)


def tone(freq: float, amplitude: float, ticks: int = TICKS) -> Pcm:
    """``ticks`` frames of a sine at ``amplitude`` (fraction of full scale)."""
    t = np.arange(ticks * AUDIO_FRAME_SAMPLES) / AUDIO_RATE
    pcm: Pcm = np.rint(32767 * amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return pcm


def frames_of(pcm: Pcm) -> list[Pcm]:
    return list(pcm.reshape(-1, AUDIO_FRAME_SAMPLES))


def const(value: int) -> Pcm:
    return np.full(AUDIO_FRAME_SAMPLES, value, np.int16)


def run(mixer: Mixer, sources: dict[str, Pcm]) -> dict[str, Pcm]:
    """Push each source's frames one per tick and concatenate each listener's output."""
    split = {key: frames_of(pcm) for key, pcm in sources.items()}
    ticks = len(next(iter(split.values())))
    out: dict[str, list[Pcm]] = {}
    for n in range(ticks):
        now = 100.0 + n * AUDIO_FRAME_SECONDS
        for key, frames in split.items():
            assert mixer.push(key, AudioFrame(frames[n], now - AUDIO_FRAME_SECONDS))
        for key, frame in mixer.tick(now).items():
            out.setdefault(key, []).append(frame.pcm)
    return {key: np.concatenate(chunks) for key, chunks in out.items()}


def magnitude(pcm: Pcm, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak: npt.NDArray[np.float64] = spectrum[round(freq * len(pcm) / AUDIO_RATE)]
    return float(peak)


def conference(keys: list[str]) -> Mixer:
    mixer = Mixer()
    for key in keys:
        mixer.add_source(key)
        mixer.add_listener(key)
    return mixer


def test_each_listener_hears_the_others_and_not_itself() -> None:
    tones = {"a": 440.0, "b": 700.0, "c": 1000.0, "d": 1500.0}
    sources = {key: tone(freq, 0.15) for key, freq in tones.items()}
    out = run(conference(list(tones)), sources)
    assert set(out) == set(tones)
    for listener, pcm in out.items():
        heard = {key: magnitude(pcm, freq) for key, freq in tones.items()}
        others = min(m for key, m in heard.items() if key != listener)
        assert others > 0.1 * magnitude(sources[listener], tones[listener])
        assert heard[listener] < 1e-3 * others
        # below the knee the mix is the exact sum of the others
        expected = sum(pcm.astype(np.int32) for key, pcm in sources.items() if key != listener)
        assert np.array_equal(pcm, expected)


def test_limiter_on_30_full_scale_sources_never_wraps() -> None:
    keys = [f"s{i}" for i in range(30)]
    rng = np.random.default_rng(1)
    sources = {key: tone(1000.0, 1.0) for key in keys[:15]}  # coherent worst case
    sources |= {
        key: rng.integers(-32768, 32768, TICKS * AUDIO_FRAME_SAMPLES).astype(np.int16)
        for key in keys[15:]
    }
    mixer = conference(keys)
    mixer.add_listener("all", exclude=())
    out = run(mixer, sources)
    everything = sum(pcm.astype(np.int64) for pcm in sources.values())
    assert isinstance(everything, np.ndarray)
    for listener, pcm in out.items():
        raw = everything - sources.get(listener, 0)
        assert np.abs(raw).max() > 10 * 32767
        assert np.abs(pcm.astype(np.int32)).max() <= 32767
        assert np.all(np.sign(pcm) * np.sign(raw) >= 0), "a sample flipped sign"
        # once the gain has settled, the limiter scales the waveform without bending it
        settled = pcm[AUDIO_FRAME_SAMPLES:]
        assert np.abs(settled).max() <= KNEE + 1
        assert np.corrcoef(settled, raw[AUDIO_FRAME_SAMPLES:])[0, 1] > 0.998


def test_limiter_is_transparent_below_knee() -> None:
    mixer = Mixer()
    mixer.add_source("a")
    mixer.add_listener("l", exclude=())
    quiet = tone(300.0, 0.5)
    assert np.array_equal(run(mixer, {"a": quiet})["l"], quiet)


def test_limiter_recovers_after_a_burst() -> None:
    mixer = Mixer(release=0.2)
    for key in ("a", "b", "c"):
        mixer.add_source(key)
    mixer.add_listener("l", exclude=())
    loud = tone(500.0, 1.0)
    limited = run(mixer, {"a": loud, "b": loud, "c": loud})["l"]
    assert np.abs(limited).max() <= 32767
    quiet = tone(500.0, 0.25, ticks=100)
    mixer.remove_source("b")
    mixer.remove_source("c")
    recovered = run(mixer, {"a": quiet})["l"]
    assert np.abs(recovered[:AUDIO_FRAME_SAMPLES]).max() < np.abs(quiet).max()
    tail = slice(-AUDIO_FRAME_SAMPLES, None)
    assert np.abs(recovered[tail].astype(np.int32) - quiet[tail]).max() <= 1


def test_stalled_source_does_not_stall_the_mix() -> None:
    mixer = conference(["a", "b"])
    for n in range(3):
        now = 10.0 + n * AUDIO_FRAME_SECONDS
        mixer.push("a", AudioFrame(const(1000 + n), now))
        out = mixer.tick(now)
        assert set(out) == {"a", "b"}
        assert np.array_equal(out["b"].pcm, const(1000 + n))
        assert not out["a"].pcm.any()
        assert out["a"].ts == pytest.approx(now - AUDIO_FRAME_SECONDS)
    stats = mixer.stats()
    assert stats["a"].mixed == 3 and stats["a"].underruns == 0
    assert stats["b"].mixed == 0 and stats["b"].underruns == 3


def test_late_frames_are_dropped_and_counted() -> None:
    mixer = Mixer(late_tolerance=0.1)
    mixer.add_source("a")
    mixer.add_listener("l", exclude=())
    now = 50.0
    start = now - AUDIO_FRAME_SECONDS
    mixer.push("a", AudioFrame(const(1), start - 0.5))
    mixer.push("a", AudioFrame(const(2), start - 0.11))
    mixer.push("a", AudioFrame(const(3), start - 0.09))  # within tolerance
    assert np.array_equal(mixer.tick(now)["l"].pcm, const(3))
    mixer.push("a", AudioFrame(const(4), start - 1.0))
    assert not mixer.tick(now + AUDIO_FRAME_SECONDS)["l"].pcm.any()
    stats = mixer.stats()["a"]
    assert (stats.late, stats.mixed, stats.underruns, stats.dropped) == (3, 1, 1, 0)


def test_full_queue_drops_oldest() -> None:
    mixer = Mixer(queue_frames=5)
    mixer.add_source("a")
    mixer.add_listener("l", exclude=())
    now = 7.0
    for value in range(7):
        mixer.push("a", AudioFrame(const(value), now))
    assert mixer.stats()["a"].dropped == 2
    heard = [int(mixer.tick(now)["l"].pcm[0]) for _ in range(6)]
    assert heard == [2, 3, 4, 5, 6, 0]


def test_exclusions_beyond_self() -> None:
    mixer = Mixer()
    mixer.add_listener("only_c", exclude={"a", "b"})  # b is not a source yet
    mixer.add_listener("everyone", exclude=set())
    for key in ("a", "b", "c"):
        mixer.add_source(key)
    now = 1.0
    for key, value in (("a", 1), ("b", 10), ("c", 100)):
        mixer.push(key, AudioFrame(const(value), now))
    out = mixer.tick(now)
    assert int(out["only_c"].pcm[0]) == 100
    assert int(out["everyone"].pcm[0]) == 111


def test_membership_changes() -> None:
    mixer = conference(["a", "b"])
    mixer.remove_listener("a")
    mixer.remove_source("b")
    mixer.remove_source("unknown")
    assert set(mixer.tick(1.0)) == {"b"}
    assert set(mixer.stats()) == {"a"}
    assert not mixer.push("b", AudioFrame(const(1), 1.0))
    mixer.remove_listener("b")
    assert mixer.tick(2.0) == {}
    assert mixer.stats()["a"].underruns == 2


def test_push_rejects_wrong_frames() -> None:
    mixer = conference(["a"])
    with pytest.raises(ValueError):
        mixer.push("a", AudioFrame(np.zeros(480, np.int16), 0.0))
    with pytest.raises(ValueError):
        mixer.push("a", AudioFrame(np.zeros(AUDIO_FRAME_SAMPLES, np.float32), 0.0))
