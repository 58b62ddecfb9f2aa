"""The H.264 bitstream: NAL units, Annex B, AVCC and the AVC decoder configuration record.

What the RTMP side (FLV tags carry AVCC and avcC) and the RTP side (RFC 6184,
:mod:`wxmgw.rtp.h264`) share; the RTP payload format lives apart, as
mediacommon's ``pkg/codecs/h264`` stands apart from gortsplib's
``pkg/format/rtph264``.

NAL units travel everywhere in the gateway as ``bytes`` without start codes
or length prefixes (as in :class:`wxmgw.media.frames.VideoFrame`).

- :func:`split_annexb`, :func:`to_annexb`: the byte stream of H.264 Annex B.
- :func:`split_avcc`, :func:`to_avcc`: length-prefixed NAL units (FLV, MP4).
- :class:`AvcConfig`: AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1),
  the FLV video sequence header.

Pure: no sockets, no logging; the parsers raise only :class:`ParseError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wxmgw.errors import ParseError

# NAL unit types (H.264 Table 7-1).
NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_FILLER = 12

_START_CODE = b"\x00\x00\x01"


def nal_type(nalu: bytes) -> int:
    """``nal_unit_type`` of a NAL unit (the low 5 bits of its header byte)."""
    if not nalu:
        raise ParseError("empty NAL unit")
    return nalu[0] & 0x1F


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes).

    Bytes before the first start code are discarded, as are the zero bytes
    that precede a start code (H.264 §B.2: a NAL unit never ends with 0x00).
    """
    nalus: list[bytes] = []
    start = data.find(_START_CODE)
    while start >= 0:
        start += 3
        end = data.find(_START_CODE, start)
        nalu = data[start : end if end >= 0 else len(data)].rstrip(b"\x00")
        if nalu:
            nalus.append(nalu)
        start = end
    return nalus


def to_annexb(nalus: Iterable[bytes]) -> bytes:
    """An Annex B byte stream with a 4-byte start code before each NAL unit."""
    return b"".join(b"\x00\x00\x00\x01" + n for n in nalus)


def split_avcc(data: bytes, length_size: int = 4) -> list[bytes]:
    """NAL units of a length-prefixed buffer (FLV/MP4 sample, ISO/IEC 14496-15 §5.3.4.2).

    Raises :class:`ParseError` if a length runs past the end of ``data``.
    """
    nalus: list[bytes] = []
    pos, total = 0, len(data)
    while pos < total:
        body = pos + length_size
        if body > total:
            raise ParseError(f"truncated NAL length at offset {pos}")
        end = body + int.from_bytes(data[pos:body], "big")
        if end > total:
            raise ParseError(f"NAL unit at offset {pos} runs past the end ({end} > {total})")
        if end > body:
            nalus.append(data[body:end])
        pos = end
    return nalus


def to_avcc(nalus: Iterable[bytes], length_size: int = 4) -> bytes:
    """Length-prefixed NAL units; ``OverflowError`` if one is too long for ``length_size``."""
    return b"".join(len(n).to_bytes(length_size, "big") + n for n in nalus)


@dataclass(slots=True)
class AvcConfig:
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1): the FLV sequence header.

    ``ext`` keeps the bytes after the PPS list verbatim (the chroma/bit-depth
    extension of High profiles), so ``bytes(AvcConfig.parse(x)) == x`` for any
    record whose reserved bits are set as the standard requires.
    """

    profile: int
    compat: int
    level: int
    length_size: int
    sps: list[bytes]
    pps: list[bytes]
    ext: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> AvcConfig:
        if len(data) < 7:
            raise ParseError(f"AVC decoder configuration record too short ({len(data)} bytes)")
        if data[0] != 1:
            raise ParseError(f"unknown configurationVersion {data[0]}")
        length_size = (data[4] & 0x03) + 1
        if length_size == 3:
            raise ParseError("lengthSizeMinusOne = 2 is not allowed")
        pos = 5
        lists: list[list[bytes]] = []
        for count_mask in (0x1F, 0xFF):  # numOfSequenceParameterSets, numOfPictureParameterSets
            if pos >= len(data):
                raise ParseError("truncated AVC decoder configuration record")
            count = data[pos] & count_mask
            pos += 1
            sets: list[bytes] = []
            for _ in range(count):
                end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
                if pos + 2 > len(data) or end > len(data):
                    raise ParseError("truncated parameter set in AVC decoder configuration record")
                sets.append(bytes(data[pos + 2 : end]))
                pos = end
            lists.append(sets)
        return cls(data[1], data[2], data[3], length_size, lists[0], lists[1], bytes(data[pos:]))

    @classmethod
    def from_parameter_sets(cls, sps: bytes, pps: bytes, length_size: int = 4) -> AvcConfig:
        """A record for one SPS and one PPS received in-band (profile/level read from the SPS)."""
        if len(sps) < 4 or nal_type(sps) != NAL_SPS:
            raise ParseError("not a sequence parameter set")
        if not pps or nal_type(pps) != NAL_PPS:
            raise ParseError("not a picture parameter set")
        return cls(sps[1], sps[2], sps[3], length_size, [sps], [pps])

    def __bytes__(self) -> bytes:
        out = bytearray((1, self.profile, self.compat, self.level, 0xFC | (self.length_size - 1)))
        out.append(0xE0 | len(self.sps))
        for s in self.sps:
            out += len(s).to_bytes(2, "big") + s
        out.append(len(self.pps))
        for p in self.pps:
            out += len(p).to_bytes(2, "big") + p
        return bytes(out + self.ext)
