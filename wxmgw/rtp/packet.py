"""RTP packets (RFC 3550 §5.1): bytes to :class:`RtpPacket` and back.

Written by hand because the gateway needs the packet fields themselves
(sequence numbers, timestamps, marker) for its jitter buffer and H.264
depacketizer; FFmpeg's RTP demuxer hides them behind an SDP-driven session.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wxmgw.errors import ParseError

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True, slots=True)
class HeaderExtension:
    """A raw RTP header extension (RFC 3550 §5.3.1), kept as it came.

    ``data`` is the extension body without its 4-byte header; its length is a
    multiple of 4 octets. RFC 8285 one-/two-byte elements are not decoded.
    """

    profile: int
    data: bytes


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (version 2).

    ``padding`` is the number of padding octets (RFC 3550 §5.1, P bit).
    :meth:`parse` strips them from the payload and only records how many there
    were; :meth:`__bytes__` writes that many zero octets with the count in the
    last one. So ``bytes(RtpPacket.parse(x)) == x`` holds for packets without
    padding, and for padded packets whose padding octets are zero.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: HeaderExtension | None = None
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; raises :class:`ParseError` on anything malformed."""
        size = len(data)
        if size < HEADER_SIZE:
            raise ParseError(f"RTP packet too short: {size} bytes")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
        if b0 >> 6 != 2:
            raise ParseError(f"RTP version {b0 >> 6}, expected 2")
        pos = HEADER_SIZE
        cc = b0 & 0x0F
        csrcs: tuple[int, ...] = ()
        if cc:
            end = pos + 4 * cc
            if end > size:
                raise ParseError("RTP packet truncated in the CSRC list")
            csrcs = struct.unpack_from(f"!{cc}I", data, pos)
            pos = end
        extension = None
        if b0 & 0x10:
            if pos + 4 > size:
                raise ParseError("RTP packet truncated in the header extension")
            profile, words = _EXT_HEADER.unpack_from(data, pos)
            end = pos + 4 + 4 * words
            if end > size:
                raise ParseError("RTP header extension longer than the packet")
            extension = HeaderExtension(profile, bytes(data[pos + 4:end]))
            pos = end
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0 or pos + padding > size:
                raise ParseError(f"bad RTP padding count {padding}")
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[pos:size - padding]),
            marker=bool(b1 & 0x80),
            csrcs=csrcs,
            extension=extension,
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        cc = len(self.csrcs)
        if cc > 15 or not 0 <= self.payload_type <= 127 or not 0 <= self.padding <= 255:
            raise ValueError("RTP packet fields out of range (csrcs, payload_type or padding)")
        ext = self.extension
        flags = cc
        if self.padding:
            flags |= 0x20
        if ext is not None:
            flags |= 0x10
        header = fixed_header(
            self.payload_type, self.marker, self.sequence_number, self.timestamp, self.ssrc, flags
        )
        if not (cc or ext or self.padding):
            return header + self.payload
        parts = [header]
        if cc:
            parts.append(struct.pack(f"!{cc}I", *self.csrcs))
        if ext is not None:
            words, rest = divmod(len(ext.data), 4)
            if rest:
                raise ValueError("RTP header extension data must be a multiple of 4 octets")
            parts.append(_EXT_HEADER.pack(ext.profile, words))
            parts.append(ext.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def fixed_header(
    payload_type: int, marker: bool, sequence_number: int, timestamp: int, ssrc: int,
    flags: int = 0,
) -> bytes:
    """The 12-byte fixed header of RFC 3550 §5.1, version 2.

    ``flags`` are the first octet's P and X bits and CSRC count; 0 for a
    packet with none, whose header followed by the payload is the whole
    packet. (The gateway's own senders write theirs in C, in
    :mod:`wxmgw.rtp._send`, whose datagrams the tests parse back here.)
    """
    return _HEADER.pack(
        0x80 | flags, payload_type | 0x80 if marker else payload_type, sequence_number,
        timestamp, ssrc,
    )


def is_rtcp(data: bytes) -> bool:
    """True when a datagram on an RTP port is RTCP (RFC 5761 §4).

    RTCP packet types 192-223 sit where RTP's marker bit and payload type are;
    with the marker bit masked off they are payload types 64-95, which RFC
    5761 §4 reserves so that the two can share a port.
    """
    return len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95
