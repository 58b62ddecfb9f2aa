"""FLV tag bodies (Adobe FLV spec v10.1, annex E): what RTMP audio, video and data messages carry.

Parsed and built here, in one place: :class:`AacPacket` (AUDIODATA with
AACAUDIODATA, E.4.2) and :class:`AvcPacket` (VIDEODATA with AVCVIDEOPACKET,
E.4.3), the codec a tag announces (:func:`audio_codec`, :func:`video_codec`),
the AVC sequence header's checks (:func:`avc_config`) and ``onMetaData``
(E.5). A mini-program's AudioSpecificConfig is checked by
:class:`~wxmgw.codecs.aac.AudioSpecificConfig`, a codec's concern.

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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from wxmgw.codecs.h264 import NAL_PPS, NAL_SPS, AvcConfig, nal_type
from wxmgw.errors import ParseError
from wxmgw.rtmp import amf0

#: SoundFormat (E.4.2.1) and CodecID (E.4.3.1), named as FFmpeg names the codecs.
AUDIO_CODECS: Final = {0: "pcm", 1: "adpcm_swf", 2: "mp3", 3: "pcm_s16le", 4: "nellymoser",
                       5: "nellymoser", 6: "nellymoser", 7: "pcm_alaw", 8: "pcm_mulaw",
                       10: "aac", 11: "speex", 14: "mp3"}
VIDEO_CODECS: Final = {2: "flv1", 3: "flashsv", 4: "vp6f", 5: "vp6a", 6: "flashsv2",
                       7: "h264", 12: "hevc", 13: "av1"}
#: AUDIODATA's first byte for AAC (E.4.2.1): SoundFormat 10, and SoundRate 3
#: (44 kHz), SoundSize 1 (16 bit), SoundType 1 (stereo), which the spec fixes
#: for AAC whatever the real rate and channels (those are in the AudioSpecificConfig).
_AAC: Final = 0xAF
#: VIDEODATA's first byte (E.4.3.1): FrameType 1 (key) or 2 (inter), CodecID 7 (AVC).
_AVC_KEY: Final = 0x17
_AVC_INTER: Final = 0x27
_KEY_FRAME: Final = 1
#: Enhanced RTMP: the video tag's high bit announces a FourCC instead of a CodecID.
_EX_HEADER: Final = 0x80
_VIDEO_INFO_FRAME: Final = 5
#: AACPacketType / AVCPacketType.
SEQUENCE_HEADER: Final = 0
PAYLOAD: Final = 1
END_OF_SEQUENCE: Final = 2  # AVC only
#: An SPS or PPS longer than this is refused. Encoders write a few dozen bytes
#: (a few hundred with scaling lists and VUI); the bound keeps what is put in
#: front of every keyframe small.
MAX_PARAMETER_SET: Final = 1024
#: The shortest parameter sets with their mandatory fields (H.264 §7.3.2.1.1, §7.3.2.2).
_MIN_SPS: Final = 5
_MIN_PPS: Final = 2


class ConfigRefused(ParseError):
    """A sequence header (AudioSpecificConfig, avcC) outside what a mini-program sends."""


@dataclass(slots=True)
class AacPacket:
    """An AAC audio tag body: ``data`` is the AudioSpecificConfig or one raw frame.

    Not frozen, as :class:`~wxmgw.rtmp.chunk.Message`: the push makes one for
    every AAC frame it writes (:func:`aac_frame`), and nothing changes one
    once made. The pull reads tags with :func:`read_aac`, no object.
    """

    packet_type: int
    data: bytes

    @classmethod
    def parse(cls, body: bytes) -> AacPacket:
        """The body of an audio tag whose SoundFormat is AAC (see :func:`audio_codec`)."""
        return cls(*read_aac(body))

    def __bytes__(self) -> bytes:
        return bytes((_AAC, self.packet_type)) + self.data


@dataclass(slots=True)
class AvcPacket:
    """An AVC video tag body: ``data`` is the avcC, or length-prefixed NAL units.

    ``composition_time`` is pts - dts in milliseconds (signed 24 bits). Not
    frozen, as :class:`AacPacket`: one per access unit the push writes
    (:func:`avc_frame`); the pull reads tags with :func:`read_avc`.
    """

    packet_type: int
    data: bytes
    keyframe: bool = True
    composition_time: int = 0

    @classmethod
    def parse(cls, body: bytes) -> AvcPacket:
        """The body of a video tag whose CodecID is AVC (see :func:`video_codec`)."""
        return cls(*read_avc(body))

    def __bytes__(self) -> bytes:
        head = _AVC_KEY if self.keyframe else _AVC_INTER
        return (bytes((head, self.packet_type))
                + self.composition_time.to_bytes(3, "big", signed=True) + self.data)


def read_aac(body: bytes) -> tuple[int, bytes]:
    """:class:`AacPacket`'s fields from an AAC audio tag body, without the object
    (the pull reads ~45 a second per leg)."""
    if len(body) < 2:
        raise ParseError(f"AAC tag of {len(body)} bytes")
    return body[1], body[2:]


def read_avc(body: bytes) -> tuple[int, bytes, bool, int]:
    """:class:`AvcPacket`'s fields from an AVC video tag body, without the object."""
    if len(body) < 5:
        raise ParseError(f"AVC tag of {len(body)} bytes")
    return (body[1], body[5:], body[0] >> 4 == _KEY_FRAME,
            int.from_bytes(body[2:5], "big", signed=True))


def audio_codec(first: int) -> str:
    """The codec an audio tag's first byte announces."""
    return AUDIO_CODECS.get(first >> 4, f"soundformat {first >> 4}")


def video_codec(first: int) -> str | None:
    """The codec a video tag's first byte announces; None for a tag that carries no picture."""
    if first & _EX_HEADER:
        return "enhanced rtmp"  # a FourCC codec (HEVC, AV1, VP9): not H.264 as FLV carries it
    if first >> 4 == _VIDEO_INFO_FRAME:
        return None
    return VIDEO_CODECS.get(first & 0x0F, f"codec id {first & 0x0F}")


def avc_config(record: bytes) -> AvcConfig:
    """The avcC of an AVC sequence header, if its parameter sets are sane; else ConfigRefused.

    At least one SPS and one PPS, each of a plausible size, with
    forbidden_zero_bit clear, a non-zero nal_ref_idc and its own
    nal_unit_type (H.264 §7.4.1).
    """
    try:
        avc = AvcConfig.parse(record)
    except ParseError as e:
        raise ConfigRefused(f"avcC refused: {e}") from e
    if not avc.sps or not avc.pps:
        raise ConfigRefused(f"avcC refused: {len(avc.sps)} SPS, {len(avc.pps)} PPS")
    for sets, nal, least in ((avc.sps, NAL_SPS, _MIN_SPS), (avc.pps, NAL_PPS, _MIN_PPS)):
        for nalu in sets:
            if not least <= len(nalu) <= MAX_PARAMETER_SET:
                raise ConfigRefused(f"avcC refused: a parameter set of {len(nalu)} bytes")
            if nalu[0] & 0x80 or not nalu[0] & 0x60 or nal_type(nalu) != nal:
                raise ConfigRefused(f"avcC refused: NAL header {nalu[0]:#04x} among type {nal}")
    return avc


def aac_sequence_header(audio_specific_config: bytes) -> bytes:
    """AUDIODATA carrying the AudioSpecificConfig (AACPacketType 0, E.4.2.2)."""
    return bytes(AacPacket(SEQUENCE_HEADER, audio_specific_config))


def aac_frame(raw: bytes) -> bytes:
    """AUDIODATA carrying one raw AAC frame (AACPacketType 1)."""
    return bytes(AacPacket(PAYLOAD, raw))


def avc_sequence_header(decoder_configuration_record: bytes) -> bytes:
    """VIDEODATA carrying the AVCDecoderConfigurationRecord (AVCPacketType 0, E.4.3.2)."""
    return bytes(AvcPacket(SEQUENCE_HEADER, decoder_configuration_record))


def avc_frame(avcc: bytes, keyframe: bool) -> bytes:
    """VIDEODATA carrying one access unit's length-prefixed NAL units (AVCPacketType 1).

    CompositionTime is 0: the gateway's H.264 has no B-frames, so pts = dts.
    """
    return bytes(AvcPacket(PAYLOAD, avcc, keyframe))


def on_metadata(fields: Mapping[str, float | bool]) -> bytes:
    """SCRIPTDATA ``onMetaData`` with an ECMA array of numbers and booleans (E.5, AMF0)."""
    return amf0.encode("onMetaData", amf0.EcmaArray(fields))
