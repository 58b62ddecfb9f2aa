"""RTCP packets: bytes to objects and back.

Covers what the gateway sends and reads: sender and receiver reports, SDES
and BYE (RFC 3550 §6.4-6.6), generic NACK (RFC 4585 §6.2.1) and the keyframe
requests PLI (RFC 4585 §6.3.1) and FIR (RFC 5104 §4.3.1). Other packet types
(APP, REMB, transport-wide feedback...) are skipped by :func:`parse_compound`.

Written by hand for the same reason as :mod:`wxmgw.rtp.packet`: FFmpeg only
sends reports on its own and offers no PLI/FIR.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from wxmgw.errors import ParseError
from wxmgw.rtp.seq import seq_ahead

SR = 200
RR = 201
SDES = 202
BYE = 203
RTPFB = 205  # transport-layer feedback (RFC 4585 §6.1)
PSFB = 206  # payload-specific feedback (RFC 4585 §6.1)
NACK_FMT = 1
PLI_FMT = 1
FIR_FMT = 4

SDES_CNAME = 1

_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_SSRC_PAIR = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQIII")  # sender SSRC + RFC 3550 §6.4.1 sender info
_REPORT_BLOCK = struct.Struct("!IIIIII")
_FIR_ENTRY = struct.Struct("!IB3x")
_NACK_ENTRY = struct.Struct("!HH")

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp (RFC 3550 §4: 32.32 fixed point since 1900) of a Unix time."""
    whole = math.floor(seconds)
    frac = int((seconds - whole) * (1 << 32))
    return (((whole + NTP_UNIX_OFFSET) << 32) | frac) & 0xFFFFFFFFFFFFFFFF


def unix_from_ntp(ntp: int) -> float:
    """Unix time of a 64-bit NTP timestamp."""
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: a report block's LSR (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def dlsr_from_seconds(delay: float) -> int:
    """A report block's DLSR: ``delay`` since the last SR in units of 1/65536 s."""
    return int(delay * 65536) & 0xFFFFFFFF


def _header(count: int, packet_type: int, body_size: int) -> bytes:
    """Common header (RFC 3550 §6.4.1); ``body_size`` excludes these 4 octets."""
    if not 0 <= count <= 31:
        raise ValueError(f"RTCP count {count} does not fit in 5 bits")
    return _HEADER.pack(0x80 | count, packet_type, body_size // 4)


def _open(data: bytes, packet_type: int) -> tuple[int, int]:
    """Check one packet's common header; return (count/FMT field, end of content).

    The content ends before any padding (P bit, RFC 3550 §6.4.1). ``data``
    must hold exactly one packet.
    """
    if len(data) < 4:
        raise ParseError("RTCP packet shorter than its header")
    b0, pt, words = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise ParseError(f"RTCP version {b0 >> 6}, expected 2")
    if pt != packet_type:
        raise ParseError(f"RTCP packet type {pt}, expected {packet_type}")
    end = (words + 1) * 4
    if end != len(data):
        raise ParseError(f"RTCP length field says {end} bytes, got {len(data)}")
    if b0 & 0x20:
        pad = data[end - 1]
        if pad == 0 or pad > end - 4:
            raise ParseError(f"bad RTCP padding count {pad}")
        end -= pad
    return b0 & 0x1F, end


@dataclass(slots=True)
class ReportBlock:
    """Reception report about one source (RFC 3550 §6.4.1).

    ``packets_lost`` is the 24-bit signed cumulative count (negative with
    duplicates); ``lsr`` is the middle 32 bits of the last SR's NTP time and
    ``dlsr`` the delay since then in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> ReportBlock:
        """Parse the 24-octet block at ``offset`` (the caller checks the length)."""
        ssrc, word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        return _REPORT_BLOCK.pack(
            self.ssrc,
            (self.fraction_lost << 24) | (self.packets_lost & 0xFFFFFF),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _parse_blocks(data: bytes, offset: int, count: int, end: int) -> list[ReportBlock]:
    if offset + 24 * count > end:
        raise ParseError(f"RTCP report claims {count} blocks past its end")
    return [ReportBlock.parse(data, offset + 24 * i) for i in range(count)]


@dataclass(slots=True)
class SenderReport:
    """SR (RFC 3550 §6.4.1). Profile-specific extensions are not kept."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> SenderReport:
        count, end = _open(data, SR)
        if end < 4 + _SENDER_INFO.size:
            raise ParseError("RTCP SR too short for its sender info")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, 4)
        reports = _parse_blocks(data, 4 + _SENDER_INFO.size, count, end)
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports)

    def __bytes__(self) -> bytes:
        body = _SENDER_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        ) + b"".join(bytes(r) for r in self.reports)
        return _header(len(self.reports), SR, len(body)) + body


@dataclass(slots=True)
class ReceiverReport:
    """RR (RFC 3550 §6.4.2). Profile-specific extensions are not kept."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> ReceiverReport:
        count, end = _open(data, RR)
        if end < 8:
            raise ParseError("RTCP RR too short for its SSRC")
        (ssrc,) = _SSRC.unpack_from(data, 4)
        return cls(ssrc, _parse_blocks(data, 8, count, end))

    def __bytes__(self) -> bytes:
        body = _SSRC.pack(self.ssrc) + b"".join(bytes(r) for r in self.reports)
        return _header(len(self.reports), RR, len(body)) + body


@dataclass(slots=True)
class SdesChunk:
    """One SDES chunk: a source and its items as (type, value) pairs (RFC 3550 §6.5)."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class Sdes:
    """SDES (RFC 3550 §6.5). Every item is kept raw; :attr:`cnames` is what RTP needs."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def for_cname(cls, ssrc: int, cname: str) -> Sdes:
        """The usual SDES of a sender: one chunk with its CNAME (RFC 3550 §6.5.1)."""
        return cls([SdesChunk(ssrc, [(SDES_CNAME, cname.encode())])])

    @property
    def cnames(self) -> dict[int, str]:
        return {c.ssrc: name for c in self.chunks if (name := c.cname) is not None}

    @classmethod
    def parse(cls, data: bytes) -> Sdes:
        count, end = _open(data, SDES)
        chunks = []
        pos = 4
        for _ in range(count):
            if pos + 4 > end:
                raise ParseError("RTCP SDES truncated in a chunk's SSRC")
            (ssrc,) = _SSRC.unpack_from(data, pos)
            pos += 4
            items = []
            while True:  # items end with a null octet (RFC 3550 §6.5)
                if pos >= end:
                    raise ParseError("RTCP SDES chunk without its terminating null item")
                item_type = data[pos]
                if item_type == 0:
                    break
                if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                    raise ParseError("RTCP SDES item longer than the packet")
                length = data[pos + 1]
                items.append((item_type, bytes(data[pos + 2:pos + 2 + length])))
                pos += 2 + length
            pos = (pos + 4) & ~3  # the null octet(s) pad the chunk to 32 bits
            chunks.append(SdesChunk(ssrc, items))
        return cls(chunks)

    def __bytes__(self) -> bytes:
        parts = []
        for chunk in self.chunks:
            raw = _SSRC.pack(chunk.ssrc) + b"".join(
                bytes((t, len(v))) + v for t, v in chunk.items
            )
            parts.append(raw + bytes(4 - len(raw) % 4))
        body = b"".join(parts)
        return _header(len(self.chunks), SDES, len(body)) + body


@dataclass(slots=True)
class Bye:
    """BYE (RFC 3550 §6.6): sources leaving, with an optional reason."""

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Bye:
        count, end = _open(data, BYE)
        pos = 4 + 4 * count
        if pos > end:
            raise ParseError(f"RTCP BYE claims {count} sources past its end")
        ssrcs = list(struct.unpack_from(f"!{count}I", data, 4))
        reason = b""
        if pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise ParseError("RTCP BYE reason longer than the packet")
            reason = bytes(data[pos + 1:pos + 1 + length])
        return cls(ssrcs, reason)

    def __bytes__(self) -> bytes:
        body = struct.pack(f"!{len(self.ssrcs)}I", *self.ssrcs)
        if self.reason:
            if len(self.reason) > 255:
                raise ValueError("RTCP BYE reason longer than 255 octets")
            text = bytes((len(self.reason),)) + self.reason
            body += text + bytes(-len(text) % 4)
        return _header(len(self.ssrcs), BYE, len(body)) + body


@dataclass(slots=True)
class Pli:
    """Picture Loss Indication (RFC 4585 §6.3.1): please send a keyframe."""

    sender_ssrc: int
    media_ssrc: int

    @classmethod
    def parse(cls, data: bytes) -> Pli:
        fmt, end = _open(data, PSFB)
        if fmt != PLI_FMT:
            raise ParseError(f"RTCP PSFB FMT {fmt} is not a PLI")
        if end < 12:
            raise ParseError("RTCP PLI too short")
        return cls(*_SSRC_PAIR.unpack_from(data, 4))

    def __bytes__(self) -> bytes:
        return _header(PLI_FMT, PSFB, 8) + _SSRC_PAIR.pack(self.sender_ssrc, self.media_ssrc)


@dataclass(slots=True)
class Fir:
    """Full Intra Request (RFC 5104 §4.3.1): ``entries`` are (media SSRC, command seq nr).

    The media source SSRC of the common feedback header is 0 (§4.3.1.2); the
    sender increments the sequence number for each new request (§4.3.1.1).
    """

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> Fir:
        fmt, end = _open(data, PSFB)
        if fmt != FIR_FMT:
            raise ParseError(f"RTCP PSFB FMT {fmt} is not a FIR")
        if end < 12 or (end - 12) % 8:
            raise ParseError("RTCP FIR length is not 12 + 8n octets")
        (sender,) = _SSRC.unpack_from(data, 4)
        entries = [_FIR_ENTRY.unpack_from(data, pos) for pos in range(12, end, 8)]
        return cls(sender, entries)

    def __bytes__(self) -> bytes:
        body = _SSRC_PAIR.pack(self.sender_ssrc, 0) + b"".join(
            _FIR_ENTRY.pack(ssrc, seq_nr) for ssrc, seq_nr in self.entries
        )
        return _header(FIR_FMT, PSFB, len(body)) + body


@dataclass(slots=True)
class Nack:
    """Generic NACK (RFC 4585 §6.2.1): the media sender is asked to resend ``lost``.

    ``lost`` holds 16-bit sequence numbers in the order the FCI entries name
    them; each entry is a PID and a bitmask (BLP) of the 16 numbers after it.
    :meth:`__bytes__` packs consecutive numbers into as few entries as it can.
    """

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> Nack:
        fmt, end = _open(data, RTPFB)
        if fmt != NACK_FMT:
            raise ParseError(f"RTCP RTPFB FMT {fmt} is not a generic NACK")
        if end < 16 or (end - 12) % 4:
            raise ParseError("RTCP NACK length is not 12 + 4n octets (n >= 1)")
        sender, media = _SSRC_PAIR.unpack_from(data, 4)
        lost: list[int] = []
        for pos in range(12, end, 4):
            pid, blp = _NACK_ENTRY.unpack_from(data, pos)
            lost.append(pid)
            lost.extend((pid + 1 + bit) & 0xFFFF for bit in range(16) if blp >> bit & 1)
        return cls(sender, media, lost)

    def __bytes__(self) -> bytes:
        entries: list[tuple[int, int]] = []
        for seq in self.lost:
            if entries:
                pid, blp = entries[-1]
                bit = seq_ahead(seq, pid + 1)
                if bit < 16:
                    entries[-1] = (pid, blp | 1 << bit)
                    continue
            entries.append((seq & 0xFFFF, 0))
        body = _SSRC_PAIR.pack(self.sender_ssrc, self.media_ssrc) + b"".join(
            _NACK_ENTRY.pack(pid, blp) for pid, blp in entries
        )
        return _header(NACK_FMT, RTPFB, len(body)) + body


RtcpPacket: TypeAlias = SenderReport | ReceiverReport | Sdes | Bye | Pli | Fir | Nack

_PARSERS: dict[tuple[int, int | None], Callable[[bytes], RtcpPacket]] = {
    (SR, None): SenderReport.parse,
    (RR, None): ReceiverReport.parse,
    (SDES, None): Sdes.parse,
    (BYE, None): Bye.parse,
    (PSFB, PLI_FMT): Pli.parse,
    (PSFB, FIR_FMT): Fir.parse,
    (RTPFB, NACK_FMT): Nack.parse,
}


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 §6.1) into the packets this module knows.

    Packets of other types (or other feedback FMTs) are skipped. The §6.1
    rule that a compound starts with SR or RR is not enforced, so that
    reduced-size RTCP (RFC 5506, e.g. a lone PLI) parses too.
    """
    size = len(data)
    if size < 4:
        raise ParseError("RTCP compound packet shorter than a header")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < size:
        if pos + 4 > size:
            raise ParseError("RTCP compound packet ends inside a header")
        b0, pt, words = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise ParseError(f"RTCP version {b0 >> 6}, expected 2")
        end = pos + (words + 1) * 4
        if end > size:
            raise ParseError("RTCP packet longer than its compound packet")
        parser = _PARSERS.get((pt, b0 & 0x1F if pt in (PSFB, RTPFB) else None))
        if parser is not None:
            packets.append(parser(data[pos:end]))
        pos = end
    return packets


def compound(packets: list[RtcpPacket]) -> bytes:
    """Serialize packets into one compound RTCP packet (RFC 3550 §6.1)."""
    return b"".join(bytes(p) for p in packets)
