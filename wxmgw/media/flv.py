"""FLV tags (Adobe FLV spec v10.1, annex E): the byte stream an RTMP publisher writes.

Written by hand because FFmpeg's FLV muxer, as PyAV drives it, fixes a
publication's streams and sequence headers when it writes the header: a new
AVC sequence header can only reach it as ``AV_PKT_DATA_NEW_EXTRADATA`` packet
side data, which PyAV cannot attach. The mix stream must gain, switch and lose
video without ending its publication (players stop at the end of one), so
:class:`~wxmgw.media.rtmp_writer.RtmpWriter` writes these tags itself and
FFmpeg's RTMP protocol turns each into an RTMP message.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from wxmgw.errors import ParseError

#: TagType (E.4.1).
TAG_AUDIO: Final = 8
TAG_VIDEO: Final = 9
TAG_SCRIPT: Final = 18

#: Tag header (E.4.1) and PreviousTagSize (E.3) lengths.
TAG_HEADER_SIZE: Final = 11
PREVIOUS_TAG_SIZE: Final = 4

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
_TIMESTAMP_MASK: Final = 0xFFFFFFFF


def file_header(*, audio: bool = True, video: bool = True) -> bytes:
    """The FLV header (E.2) and PreviousTagSize0: the 13 bytes before the first tag."""
    flags = (0x04 if audio else 0) | (0x01 if video else 0)
    return b"FLV\x01" + bytes((flags,)) + (9).to_bytes(4, "big") + bytes(PREVIOUS_TAG_SIZE)


@dataclass(frozen=True, slots=True)
class FlvTag:
    """One FLV tag with its trailing PreviousTagSize (E.4.1, E.3).

    ``timestamp`` is in milliseconds; it is written as the spec's 24 bits plus
    TimestampExtended, so it wraps at 2**32. StreamID is always 0.
    """

    kind: int
    timestamp: int
    data: bytes

    @classmethod
    def parse(cls, data: bytes) -> FlvTag:
        if len(data) < TAG_HEADER_SIZE + PREVIOUS_TAG_SIZE:
            raise ParseError(f"FLV tag too short ({len(data)} bytes)")
        if data[0] & 0xE0:
            raise ParseError(f"FLV tag with reserved or Filter bits set ({data[0]:#x})")
        size = int.from_bytes(data[1:4], "big")
        if len(data) != TAG_HEADER_SIZE + size + PREVIOUS_TAG_SIZE:
            raise ParseError(f"FLV tag of {size} data bytes in {len(data)} bytes")
        if data[8:11] != b"\x00\x00\x00":
            raise ParseError("FLV tag StreamID is not 0")
        end = TAG_HEADER_SIZE + size
        if int.from_bytes(data[end:], "big") != end:
            raise ParseError("PreviousTagSize does not match the tag")
        timestamp = int.from_bytes(data[4:7], "big") | data[7] << 24
        return cls(data[0], timestamp, bytes(data[TAG_HEADER_SIZE:end]))

    def __bytes__(self) -> bytes:
        size = len(self.data)
        ts = self.timestamp & _TIMESTAMP_MASK
        header = struct.pack(">B3s3sB3s", self.kind, size.to_bytes(3, "big"),
                             (ts & 0xFFFFFF).to_bytes(3, "big"), ts >> 24, b"\x00\x00\x00")
        return header + self.data + (TAG_HEADER_SIZE + size).to_bytes(PREVIOUS_TAG_SIZE, "big")


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
