"""FLV tag bodies (Adobe FLV spec v10.1, annex E): what an RTMP publisher's messages carry.

Written by hand because FFmpeg's FLV muxer, as PyAV drives it, fixes a
publication's streams and sequence headers when it writes the header: a new
AVC sequence header can only reach it as ``AV_PKT_DATA_NEW_EXTRADATA`` packet
side data, which PyAV cannot attach. The mix stream must gain, switch and lose
video without ending its publication (players stop at the end of one), so
:class:`~wxmgw.media.rtmp_writer.RtmpWriter` sends each of these bodies as
one RTMP message.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

#: AUDIODATA's first byte for AAC (E.4.2.1): SoundFormat 10, and SoundRate 3
#: (44 kHz), SoundSize 1 (16 bit), SoundType 1 (stereo), which the spec fixes
#: for AAC whatever the real rate and channels (those are in the AudioSpecificConfig).
_AAC: Final = 0xAF
#: VIDEODATA's first byte (E.4.3.1): FrameType 1 (key) or 2 (inter), CodecID 7 (AVC).
_AVC_KEY: Final = 0x17
_AVC_INTER: Final = 0x27
#: AACPacketType / AVCPacketType.
_SEQUENCE_HEADER: Final = 0
_PAYLOAD: Final = 1


def aac_sequence_header(audio_specific_config: bytes) -> bytes:
    """AUDIODATA carrying the AudioSpecificConfig (AACPacketType 0, E.4.2.2)."""
    return bytes((_AAC, _SEQUENCE_HEADER)) + audio_specific_config


def aac_frame(raw: bytes) -> bytes:
    """AUDIODATA carrying one raw AAC frame (AACPacketType 1)."""
    return bytes((_AAC, _PAYLOAD)) + raw


def avc_sequence_header(decoder_configuration_record: bytes) -> bytes:
    """VIDEODATA carrying the AVCDecoderConfigurationRecord (AVCPacketType 0, E.4.3.2)."""
    return bytes((_AVC_KEY, _SEQUENCE_HEADER, 0, 0, 0)) + decoder_configuration_record


def avc_frame(avcc: bytes, keyframe: bool) -> bytes:
    """VIDEODATA carrying one access unit's length-prefixed NAL units (AVCPacketType 1).

    CompositionTime is 0: the gateway's H.264 has no B-frames, so pts = dts.
    """
    return bytes((_AVC_KEY if keyframe else _AVC_INTER, _PAYLOAD, 0, 0, 0)) + avcc


def on_metadata(fields: Mapping[str, float | bool]) -> bytes:
    """SCRIPTDATA ``onMetaData`` with an ECMA array of numbers and booleans (E.5, AMF0)."""
    out = bytearray(_amf_string(b"onMetaData"))
    out += b"\x08" + len(fields).to_bytes(4, "big")
    for key, value in fields.items():
        name = key.encode()
        out += len(name).to_bytes(2, "big") + name
        if isinstance(value, bool):
            out += bytes((0x01, value))
        else:
            out += b"\x00" + struct.pack(">d", value)
    return bytes(out + b"\x00\x00\x09")


def _amf_string(value: bytes) -> bytes:
    return b"\x02" + len(value).to_bytes(2, "big") + value
