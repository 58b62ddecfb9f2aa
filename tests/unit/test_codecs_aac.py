"""AudioSpecificConfig: what a mini-program may declare, and nothing else (issue #12, finding 1)."""

from __future__ import annotations

import pytest

from wxmgw.codecs.aac import AudioSpecificConfig
from wxmgw.errors import ParseError
from wxmgw.media.transcode import AudioEncoder


@pytest.mark.parametrize(("asc", "expected"), [
    ("1208", AudioSpecificConfig(44100, 1)),             # AAC-LC, 44.1 kHz, mono
    ("1190", AudioSpecificConfig(48000, 2)),             # AAC-LC, 48 kHz, stereo
    ("1588", AudioSpecificConfig(8000, 1)),
    ("1590", AudioSpecificConfig(8000, 2)),
    ("120c", AudioSpecificConfig(44100, 1, 960)),        # frameLengthFlag: 960-sample frames
    ("2b118800", AudioSpecificConfig(24000, 2, sbr_rate=48000)),        # HE-AAC, hierarchical
    ("eb098800", AudioSpecificConfig(24000, 1, sbr_rate=48000, ps=True)),  # HE-AAC v2
    ("121056e500", AudioSpecificConfig(44100, 2)),       # sync extension: SBR absent
    ("130856e59d4880", AudioSpecificConfig(24000, 1, sbr_rate=48000, ps=True)),  # backward compat.
    ("119000", AudioSpecificConfig(48000, 2)),           # zero padding
])
def test_configs_a_mini_program_sends(asc: str, expected: AudioSpecificConfig) -> None:
    assert AudioSpecificConfig.parse(bytes.fromhex(asc)) == expected


def test_ffmpeg_encoder_configs_parse_and_round_trip() -> None:
    for rate in (48000, 16000):
        extradata = AudioEncoder("AAC", rate).extradata
        config = AudioSpecificConfig.parse(extradata)
        assert (config.sample_rate, config.channels) == (rate, 1)
        # FFmpeg appends a sync extension saying "no SBR"; the writer leaves it out.
        assert bytes(config) == extradata[:2]
        assert AudioSpecificConfig.parse(bytes(config)) == config


@pytest.mark.parametrize("asc", [
    "", "12",
    "1608",          # 7350 Hz
    "1008",          # 96 kHz
    "1788",          # escaped rate: an explicit 24-bit frequency
    "1198",          # channelConfiguration 3
    "1180",          # channelConfiguration 0: channels from a program_config_element
    "0988",          # AAC-Main
    "f800",          # escaped audioObjectType
    "1192",          # dependsOnCoreCoder
    "1191",          # extensionFlag
    "119001",        # trailing data
    "121056",        # a sync extension cut short
    "121056e4",      # a sync extension of another object type
    "2b101000",      # HE-AAC at 96 kHz out
    "eb118800",      # PS on a stereo core
    "12" + "00" * 64,  # longer than any config
])
def test_everything_else_is_refused(asc: str) -> None:
    with pytest.raises(ParseError):
        AudioSpecificConfig.parse(bytes.fromhex(asc))


def test_declared_output() -> None:
    """What the decoder may output: SBR doubles rate and frame, PS makes mono stereo."""
    lc = AudioSpecificConfig(8000, 2)
    assert (lc.rates, lc.out_channels, lc.frame_samples) == ((8000, 16000), (2,), (1024, 2048))
    assert AudioSpecificConfig(48000, 1).rates == (48000,)  # never past 48 kHz
    he = AudioSpecificConfig(24000, 1, sbr_rate=48000, ps=True)
    assert (he.rates, he.out_channels) == ((48000,), (1, 2))
