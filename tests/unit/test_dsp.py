"""Audio DSP: G.711 tables against FFmpeg, the rate converter's response and streaming."""

from __future__ import annotations

import av
import numpy as np
import pytest
from av.audio.codeccontext import AudioCodecContext
from hypothesis import given, settings
from hypothesis import strategies as st

from wxmgw.media._dsp import RateConverter, ToRate
from wxmgw.media.dsp import G711
from wxmgw.media.frames import Pcm


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
    assert g711.encode(pcm[::2]) == expected[::2]  # a strided view, as a framer may give


#: (rate in, rate out): the RTP codecs to and from 48 kHz, and AAC's rates to all three.
DOWN = [(48000, 8000), (48000, 16000), (48000, 24000), (44100, 8000), (44100, 16000),
        (22050, 8000), (32000, 8000)]
UP = [(8000, 48000), (16000, 48000), (24000, 48000), (44100, 48000), (22050, 48000)]


def converted(rates: tuple[int, int], pcm: Pcm, step: int) -> Pcm:
    convert = RateConverter(*rates)
    return np.concatenate([convert(pcm[i : i + step]) for i in range(0, len(pcm), step)])


@pytest.mark.parametrize("rates", DOWN)
def test_downsampling_keeps_the_passband_and_stops_aliases(rates: tuple[int, int]) -> None:
    rate, out = rates
    pass_tone, alias_tone = tone(out * 0.3 / 2, rate), tone(out * 0.75, rate)
    for pcm, lo, hi in ((pass_tone, 0.95, 1.05), (alias_tone, 0.0, 0.001)):
        got = converted(rates, pcm, rate // 50)
        assert len(got) == -(-len(pcm) * out // rate)
        assert lo <= rms(got) / rms(pcm) <= hi


@pytest.mark.parametrize("rates", UP)
def test_upsampling_keeps_the_tone_and_no_images(rates: tuple[int, int]) -> None:
    rate, out = rates
    pcm = tone(1000, rate)
    got = converted(rates, pcm, rate // 50)
    assert len(got) == -(-len(pcm) * out // rate)
    assert 0.95 <= rms(got) / rms(pcm) <= 1.05
    spectrum = np.abs(np.fft.rfft(got[len(got) // 4 :].astype(np.float64)))
    freqs = np.fft.rfftfreq(len(got) - len(got) // 4, 1 / out)
    assert abs(freqs[np.argmax(spectrum)] - 1000) < 5
    images = spectrum[freqs > rate / 2].max()
    assert images < spectrum.max() / 1000  # images of the zero-stuffing below -60 dB


@settings(max_examples=60)
@given(st.sampled_from(DOWN + UP), st.lists(st.integers(0, 5000), min_size=1, max_size=12))
def test_the_output_does_not_depend_on_how_the_input_is_cut(
        rates: tuple[int, int], cuts: list[int]) -> None:
    """Any cuts, empty and longer than the converter's window included: the
    output of one call, ``ceil(n * out / in)`` samples after ``n`` in all."""
    pcm = tone(440, rates[0], 0.4)
    whole = RateConverter(*rates)(pcm)
    convert, pieces, at = RateConverter(*rates), [], 0
    for cut in cuts:
        pieces.append(convert(pcm[at : at + cut]))
        at = min(at + cut, len(pcm))
        assert sum(map(len, pieces)) == -(-at * rates[1] // rates[0])
    pieces.append(convert(pcm[at:]))
    assert np.array_equal(whole, np.concatenate(pieces))


def test_float_samples_are_scaled_and_clipped() -> None:
    """AAC's float planes: [-1, 1] times the scale is the int16 input's output;
    beyond full scale, the output clips, and NaN does not crash it. Strided
    input is read as it is."""
    pcm = tone(1000, 44100, 0.1)
    ints = RateConverter(44100, 8000)(pcm)
    floats = RateConverter(44100, 8000)((pcm / 32768.0).astype(np.float32), 32768.0)
    assert np.abs(ints.astype(np.int32) - floats).max() <= 1
    loud = RateConverter(48000, 8000)(np.full(960, 4.0, np.float32), 32768.0)
    assert loud[-1] == 32767
    wide = tone(1000, 96000, 0.1)
    assert np.array_equal(RateConverter(48000, 8000)(wide[::2]),  # a strided view
                          RateConverter(48000, 8000)(wide[::2].copy()))
    odd = np.array([np.nan, np.inf, -np.inf] * 320, np.float32)
    assert len(RateConverter(48000, 8000)(odd, 32768.0)) == 160


def test_to_rate_follows_each_chunks_rate_and_scales_floats() -> None:
    to_rate = ToRate(8000)
    same = np.arange(-80, 80, dtype=np.int16)
    assert np.array_equal(to_rate(same, 8000), same)  # no conversion at the output's rate
    floats = np.array([-1.5, -1.0, 0.5, 0.99999], np.float32)
    assert to_rate(floats, 8000).tolist() == [-32768, -32768, 16384, 32767]  # clipped
    assert len(to_rate(np.zeros(960, np.int16), 48000)) == 160  # a converter for 48 kHz
    assert len(to_rate(np.zeros(320, np.float32), 16000)) == 160  # renewed for 16 kHz
    assert to_rate.rate_out == 8000
