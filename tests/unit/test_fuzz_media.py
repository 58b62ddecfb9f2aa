"""Properties of what a peer's media goes through before FFmpeg and after it (issue #12, finding 1).

The AudioSpecificConfig parser and the avcC check take any bytes and give a
config within what a mini-program sends, or ParseError. The audio decoders
take any payload and give ``MediaError`` (a payload the codec refuses, or
its ``DroppedFrame``) or mono int16 PCM of exactly the length the stream
declared: never a frame of another shape, never a crash. The AAC payloads
include raw frames opening with a program_config_element of random
channels, the element that once made FFmpeg return a frame PyAV read past.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wxmgw.codecs.aac import AudioSpecificConfig
from wxmgw.codecs.h264 import NAL_PPS, NAL_SPS
from wxmgw.errors import MediaError, ParseError
from wxmgw.media.frames import AUDIO_RATE
from wxmgw.media.transcode import AudioDecoder, opus_samples
from wxmgw.rtmp.flv import MAX_PARAMETER_SET, avc_config

pytestmark = pytest.mark.fuzz

RATES = (48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def configs() -> st.SearchStrategy[AudioSpecificConfig]:
    """Every config a mini-program may send."""
    def build(rate: int, channels: int, long: bool, sbr: int, ps: bool) -> AudioSpecificConfig:
        sbr_rate = (0, rate, 2 * rate)[sbr] if 2 * rate <= 48000 or sbr < 2 else 0
        return AudioSpecificConfig(rate, 1 if ps and sbr_rate else channels, 1024 if long else 960,
                                   sbr_rate, ps and bool(sbr_rate))
    return st.builds(build, st.sampled_from(RATES), st.sampled_from((1, 2)), st.booleans(),
                     st.integers(0, 2), st.booleans())


@given(st.binary(max_size=80))
def test_any_bytes_give_a_config_a_mini_program_may_send_or_parse_error(data: bytes) -> None:
    try:
        config = AudioSpecificConfig.parse(data)
    except ParseError:
        return
    assert config.sample_rate in RATES and config.channels in (1, 2)
    assert config.frame_length in (960, 1024)
    assert config.sbr_rate in (0, config.sample_rate, 2 * config.sample_rate)
    assert all(8000 <= r <= 48000 for r in config.rates)
    assert not config.ps or config.channels == 1
    assert AudioSpecificConfig.parse(bytes(config)) == config


@given(configs())
def test_configs_round_trip(config: AudioSpecificConfig) -> None:
    assert AudioSpecificConfig.parse(bytes(config)) == config


@given(st.binary(max_size=300))
def test_any_avcc_gives_sane_parameter_sets_or_parse_error(data: bytes) -> None:
    try:
        avc = avc_config(data)
    except ParseError:
        return
    assert avc.sps and avc.pps
    for sets, nal in ((avc.sps, NAL_SPS), (avc.pps, NAL_PPS)):
        for n in sets:
            assert len(n) <= MAX_PARAMETER_SET
            assert not n[0] & 0x80 and n[0] & 0x60 and n[0] & 0x1F == nal


# -- decoders ----------------------------------------------------------------------------------

def _bits(fields: list[tuple[int, int]]) -> bytes:
    value = n = 0
    for v, width in fields:
        value, n = (value << width) | (v & ((1 << width) - 1)), n + width
    pad = -n % 8
    return (value << pad).to_bytes((n + pad) // 8, "big")


@st.composite
def pce_frames(draw: st.DrawFn) -> bytes:
    """A raw_data_block opening with a program_config_element (ISO 14496-3 §4.4.1.2)."""
    front, side, back = (draw(st.integers(0, 15)) for _ in range(3))
    lfe = draw(st.integers(0, 3))
    fields = [(5, 3), (0, 4), (1, 2), (11, 4), (front, 4), (side, 4), (back, 4), (lfe, 2),
              (0, 3), (0, 4), (0, 3)]
    for i in range(front + side + back):
        fields += [(draw(st.integers(0, 1)), 1), (i, 4)]
    fields += [(i, 4) for i in range(lfe)]
    # byte_alignment, an empty comment, then a CPE (tag 0, two empty ICS) and ID_END
    head = _bits(fields) + b"\0"
    cpe = [(1, 3), (0, 4), (0, 1)] + [(100, 8), (0, 11), (0, 3)] * 2 + [(7, 3)]
    return head + _bits(cpe) + draw(st.binary(max_size=20))


AAC_8K_STEREO = bytes([0x15, 0x90])


@settings(max_examples=150)
@given(st.one_of(pce_frames(), st.binary(min_size=1, max_size=400)))
def test_aac_payloads_decode_to_the_declared_shape_or_media_error(payload: bytes) -> None:
    decoder = AudioDecoder("AAC", extradata=AAC_8K_STEREO)
    try:
        pcm = decoder.decode(payload)
    except MediaError:
        return
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    # 1024 samples at 8 kHz, or 2048 at 16 kHz with SBR: 6144 at 48 kHz either way
    assert len(pcm) in (0, 1024 * AUDIO_RATE // 8000)


@pytest.mark.parametrize("codec", ["PCMA", "PCMU", "G722", "OPUS"])
@settings(max_examples=100)
@given(payload=st.binary(min_size=1, max_size=1500), channels=st.sampled_from((1, 2)))
def test_mas_payloads_decode_to_the_declared_shape_or_media_error(
        codec: str, payload: bytes, channels: int) -> None:
    decoder = AudioDecoder(codec, channels=1 if codec == "G722" else channels)
    try:
        pcm = decoder.decode(payload)
    except MediaError:
        return
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    if codec == "OPUS":
        assert len(pcm) == opus_samples(payload)
    else:  # a byte: one 8 kHz sample of a channel, or two 16 kHz samples (G.722)
        assert len(pcm) == len(payload) // (channels if codec != "G722" else 1) * 6
