"""numpy audio DSP: G.711 tables against FFmpeg, the integer-ratio resamplers' response."""

from __future__ import annotations

import av
import numpy as np
import pytest
from av.audio.codeccontext import AudioCodecContext

from wxmgw.media.dsp import G711, Decimator, Interpolator
from wxmgw.media.frames import AUDIO_RATE, Pcm


def tone(hz: float, rate: int, seconds: float = 0.5, amplitude: float = 10000) -> Pcm:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


def rms(pcm: Pcm) -> float:
    x = pcm[len(pcm) // 4 :].astype(np.float64)  # past the filter's start
    return float(np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize("name", ["pcm_alaw", "pcm_mulaw"])
def test_g711_matches_ffmpeg_byte_for_byte(name: str) -> None:
    pcm = np.random.default_rng(1).integers(-32768, 32767, 4000, dtype=np.int16)
    ctx = av.CodecContext.create(name, "w")
    assert isinstance(ctx, AudioCodecContext)
    ctx.sample_rate, ctx.layout, ctx.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    expected = b"".join(bytes(p) for p in (*ctx.encode(frame), *ctx.encode(None)))
    g711 = G711(name)
    assert g711.encode(pcm) == expected
    decoded = g711.decode(expected)
    assert decoded.dtype == np.int16 and len(decoded) == len(pcm)
    assert g711.encode(decoded) == expected  # decoding lands on a code's own value


@pytest.mark.parametrize("factor", [6, 3, 2])
def test_decimator_keeps_the_passband_and_stops_aliases(factor: int) -> None:
    low = AUDIO_RATE // factor
    pass_tone, alias_tone = tone(low * 0.3, AUDIO_RATE), tone(low * 0.75, AUDIO_RATE)
    for pcm, lo, hi in ((pass_tone, 0.95, 1.05), (alias_tone, 0.0, 0.001)):
        down = Decimator(factor)
        out = np.concatenate([down(pcm[i : i + 960]) for i in range(0, len(pcm), 960)])
        assert len(out) == len(pcm) // factor
        assert lo <= rms(out) / rms(pcm) <= hi


@pytest.mark.parametrize("factor", [6, 3])
def test_interpolator_keeps_the_tone_and_no_images(factor: int) -> None:
    low = AUDIO_RATE // factor
    pcm = tone(1000, low)
    up = Interpolator(factor)
    step = 960 // factor
    out = np.concatenate([up(pcm[i : i + step]) for i in range(0, len(pcm), step)])
    assert len(out) == len(pcm) * factor
    assert 0.95 <= rms(out) / rms(pcm) <= 1.05
    spectrum = np.abs(np.fft.rfft(out[len(out) // 4 :].astype(np.float64)))
    freqs = np.fft.rfftfreq(len(out) - len(out) // 4, 1 / AUDIO_RATE)
    assert abs(freqs[np.argmax(spectrum)] - 1000) < 5
    images = spectrum[freqs > low / 2].max()
    assert images < spectrum.max() / 1000  # images of the zero-stuffing below -60 dB


def test_streaming_equals_one_call() -> None:
    pcm = tone(440, AUDIO_RATE, 0.2)
    whole = Decimator(6)(pcm)
    down = Decimator(6)
    pieces = np.concatenate([down(pcm[i : i + 960]) for i in range(0, len(pcm), 960)])
    assert np.array_equal(whole, pieces)
