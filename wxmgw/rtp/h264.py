"""RTP payloads of H.264 (RFC 6184): access units to packets and back.

Written by hand because the gateway needs it at the packet level, per stream,
without a decoder: FFmpeg's RTP muxer/demuxer want to own the socket and the
session (and the muxer never repeats SPS/PPS before IDRs), while the gateway
owns its sockets, jitter buffer and RTCP. The bitstream itself (NAL units,
Annex B, AVCC, avcC) is :mod:`wxmgw.codecs.h264`.

- :class:`H264Packetizer`: access unit -> RTP payloads, packetization-mode 1.
- :class:`H264Depacketizer`: RTP payloads -> access units.

Pure wire code: no sockets, no logging; malformed packets are counted in
:class:`DepacketizerStats`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from wxmgw.codecs.h264 import NAL_AUD, NAL_FILLER, NAL_IDR, NAL_PPS, NAL_SPS

# Packet types of RFC 6184 Table 1 (NAL unit types 24-29).
NAL_STAP_A = 24
NAL_STAP_B = 25
NAL_MTAP16 = 26
NAL_MTAP24 = 27
NAL_FU_A = 28
NAL_FU_B = 29

MAX_ACCESS_UNIT = 2 * 1024 * 1024
"""Default cap on the bytes of one access unit being reassembled from RTP
(``Config.max_access_unit``): a 720p IDR is well under 1 MB."""

_NAL_COST = sys.getsizeof(b"") + 8
"""What holding one more NAL unit costs besides its bytes: its object and its list slot."""

_FU_START = 0x80
_FU_END = 0x40


class H264Packetizer:
    """One access unit -> the RTP payloads that carry it (RFC 6184 packetization-mode 1).

    A NAL unit that fits in ``max_payload`` bytes goes in a single NAL unit
    packet (§5.6); a larger one is cut into FU-A fragments (§5.8) of nearly
    equal size. STAP-A is never produced (it is optional for a sender).

    SPS and PPS are sent in-band before every IDR: FLV carries them only in its
    sequence header, and a receiver without ``sprop-parameter-sets`` in SDP
    must still be able to start decoding at any keyframe. The packetizer keeps
    the latest SPS/PPS it was given or saw in an access unit.
    """

    __slots__ = ("_pps", "_sps", "max_payload")

    def __init__(self, max_payload: int = 1200) -> None:
        if max_payload < 3:  # FU indicator + FU header + at least one byte
            raise ValueError(f"max_payload {max_payload} is too small")
        self.max_payload = max_payload
        self._sps: bytes | None = None
        self._pps: bytes | None = None

    def packetize(
        self, nalus: list[bytes], sps: bytes | None, pps: bytes | None, keyframe: bool
    ) -> list[bytes]:
        """RTP payloads of one access unit, in sending order.

        The caller sets the RTP marker bit on the *last* payload of the list
        (RFC 6184 §5.1: the marker ends the access unit) and the same 90 kHz
        timestamp on all of them. ``sps``/``pps`` (e.g. from the FLV sequence
        header), when given, replace the cached ones. If the access unit holds
        an IDR (or ``keyframe`` says it is one) but lacks its own SPS or PPS,
        the cached SPS and PPS are put in front of it. Access unit delimiters
        and filler data are dropped; an empty result means nothing to send.
        """
        if sps is not None:
            self._sps = sps
        if pps is not None:
            self._pps = pps
        # One pass (every access unit of every pull leg comes here): the units
        # to send, the parameter sets among them, whether one is an IDR.
        units: list[bytes] = []
        has_sps = has_pps = False
        for n in nalus:
            if not n:
                continue
            t = n[0] & 0x1F
            if t == NAL_SPS:
                self._sps, has_sps = n, True
            elif t == NAL_PPS:
                self._pps, has_pps = n, True
            elif t == NAL_IDR:
                keyframe = True
            elif t in (NAL_AUD, NAL_FILLER):
                continue
            units.append(n)
        sps, pps = self._sps, self._pps
        if keyframe and not (has_sps and has_pps) and sps is not None and pps is not None:
            # Both in front, in canonical order; the unit's own one of the two is dropped.
            units = [sps, pps] + [
                n for n in units if n[0] & 0x1F not in (NAL_SPS, NAL_PPS)
            ]
        max_payload = self.max_payload
        payloads: list[bytes] = []
        for n in units:
            if len(n) <= max_payload:
                payloads.append(n)
            else:
                self._fragment(n, payloads)
        return payloads

    def _fragment(self, nalu: bytes, out: list[bytes]) -> None:
        """FU-A fragments of ``nalu`` (RFC 6184 §5.8): the NAL header is not sent,
        its F/NRI bits go in the FU indicator and its type in the FU header.

        The fragments are as equal as can be with only the last one shorter, so
        that the session can hand the run to UDP GSO in one system call."""
        indicator = (nalu[0] & 0xE0) | NAL_FU_A
        ntype = nalu[0] & 0x1F
        body = memoryview(nalu)[1:]
        count = -(-len(body) // (self.max_payload - 2))  # at least 2: nalu > max_payload
        size = -(-len(body) // count)  # then the last has at least one byte
        middle = bytes((indicator, ntype))
        out.append(bytes((indicator, _FU_START | ntype)) + body[:size])
        out += [middle + body[pos:pos + size] for pos in range(size, size * (count - 1), size)]
        out.append(bytes((indicator, _FU_END | ntype)) + body[size * (count - 1):])


@dataclass(slots=True)
class AccessUnit:
    """One H.264 access unit reassembled from RTP.

    ``keyframe``: it contains an IDR slice. ``discontinuity``: data was lost
    (or a broken unit dropped) since the previous emitted unit, so the
    pictures this one references may be missing until the next keyframe.
    """

    nalus: list[bytes]
    timestamp: int
    keyframe: bool
    discontinuity: bool = False


@dataclass(slots=True)
class DepacketizerStats:
    """Counters of an :class:`H264Depacketizer` (monotonic, never reset)."""

    packets: int = 0
    access_units: int = 0
    #: Units dropped because a packet of theirs was lost or malformed, or they were oversized.
    dropped_units: int = 0
    #: Units dropped for holding more than ``max_access_unit`` bytes (also in dropped_units).
    oversized: int = 0
    #: Corrupt payloads: empty, forbidden bit, truncated STAP-A, FU-A out of order.
    malformed: int = 0
    #: STAP-B, MTAP, FU-B and reserved types (interleaved mode is never negotiated).
    unsupported: int = 0
    duplicates: int = 0
    losses: int = 0


class H264Depacketizer:
    """RTP payloads (in sequence order) -> access units (RFC 6184 §5.6-§5.8).

    Accepts single NAL unit packets, STAP-A and FU-A; STAP-B, MTAP16/24 and
    FU-B belong to the interleaved mode, which is never negotiated, and are
    ignored and counted. A unit is emitted when a packet with the marker bit
    completes it (§5.1) or when the timestamp changes (for senders that do not
    set the marker). A unit with a lost or corrupt packet is dropped whole,
    never emitted half.

    ``needs_keyframe`` is True from the start and after every loss or dropped
    unit, until a unit with an IDR is emitted: while it is True the receiving
    leg should ask the sender for a keyframe (RTCP PLI), rate-limited.

    What is held for one unit (its NAL units and an unfinished FU-A) is
    bounded by ``max_access_unit`` bytes: a sender that never sets the marker
    nor changes the timestamp, or never ends an FU-A, gets its unit dropped
    (counted in ``stats.oversized``) and the rest of it ignored until the
    next unit; a STAP-A is one packet, its NAL units count like the others.
    """

    __slots__ = (
        "_broken",
        "_discontinuity",
        "_fu",
        "_gap",
        "_idr",
        "_last_fu_end",
        "_nalus",
        "_pps",
        "_ready",
        "_size",
        "_sps",
        "_started",
        "_ts",
        "max_access_unit",
        "needs_keyframe",
        "stats",
    )

    def __init__(self, max_access_unit: int = MAX_ACCESS_UNIT) -> None:
        if max_access_unit < 1:
            raise ValueError(f"max_access_unit {max_access_unit} must be positive")
        self.max_access_unit = max_access_unit
        self.stats = DepacketizerStats()
        self.needs_keyframe = True
        self._sps: bytes | None = None
        self._pps: bytes | None = None
        self._nalus: list[bytes] = []
        self._size = 0  # bytes held for the current unit, its unfinished FU-A included
        self._ts = -1  # no RTP timestamp is negative
        self._idr = False
        self._broken = False
        self._gap = False
        self._started = False  # a packet of the current unit was pushed
        self._discontinuity = False
        self._fu: bytearray | None = None  # the NAL unit an FU-A is rebuilding, header first
        self._last_fu_end: bytes | None = None
        self._ready: AccessUnit | None = None

    @property
    def sps(self) -> bytes | None:
        """The latest sequence parameter set received."""
        return self._sps

    @property
    def pps(self) -> bytes | None:
        """The latest picture parameter set received."""
        return self._pps

    def lost(self) -> None:
        """The jitter buffer gave up on packets between the last pushed one and the next.

        They may have ended the unit under construction and begun the next
        one, so both are dropped: the current one, and the next one too unless
        the next packet pushed carries the current timestamp.
        """
        self.stats.losses += 1
        self._broken = True
        self._gap = True
        self._fu = None
        self.needs_keyframe = True

    def push(self, payload: bytes, timestamp: int, marker: bool) -> AccessUnit | None:
        """Feed the payload of the next RTP packet; returns a completed unit or None.

        Never raises on bad input. In the rare case that one packet completes
        two units (a unit without marker ended by a timestamp change, and a
        one-packet unit with marker), the second is returned by the next call.
        """
        self.stats.packets += 1
        out, self._ready = self._ready, None
        gap, self._gap = self._gap, False
        if timestamp != self._ts:
            out = self._finish(out)
            self._ts = timestamp
            self._broken = gap
        self._started = True
        if not payload:
            self._malformed()
        else:
            self._depacketize(payload)
        if marker:
            out = self._finish(out)
        return out

    def _depacketize(self, payload: bytes) -> None:
        head = payload[0]
        if head & 0x80:  # forbidden_zero_bit: RFC 6184 §5.3 says drop it
            self._malformed()
            return
        t = head & 0x1F
        if t < NAL_STAP_A:
            if t == 0:
                self.stats.unsupported += 1
            else:
                self._add(bytes(payload), t)
        elif t == NAL_FU_A:
            self._fu_a(payload)
        elif t == NAL_STAP_A:
            self._stap_a(payload)
        else:
            self.stats.unsupported += 1

    def _stap_a(self, payload: bytes) -> None:
        """STAP-A (§5.7.1): 16-bit size + NAL unit, repeated; all or nothing."""
        nalus: list[bytes] = []
        pos, total = 1, len(payload)
        while pos < total:
            end = pos + 2 + int.from_bytes(payload[pos : pos + 2], "big")
            if end > total or end == pos + 2 or payload[pos + 2] & 0x80:
                self._malformed()
                return
            nalus.append(bytes(payload[pos + 2 : end]))
            pos = end
        if not nalus:
            self._malformed()
        for n in nalus:
            self._add(n, n[0] & 0x1F)

    def _fu_a(self, payload: bytes) -> None:
        """FU-A (§5.8): the NAL unit is rebuilt from the FU indicator's F/NRI
        bits, the FU header's type and the concatenated fragment payloads."""
        if len(payload) < 3:
            self._malformed()
            return
        fu_header = payload[1]
        header = (payload[0] & 0xE0) | (fu_header & 0x1F)
        fu = self._fu
        cost = len(payload) - 2
        if fu_header & _FU_START:
            if fu is not None:  # the previous fragmented NAL unit never ended
                self._malformed()
            fu = self._fu = bytearray((header,))
            cost += 1 + _NAL_COST
        elif fu is None:
            if payload == self._last_fu_end:
                self.stats.duplicates += 1
            elif not self._broken:  # else its start was lost and is already accounted for
                self._malformed()
            return
        elif fu[0] != header:
            self._fu = None
            self._malformed()
            return
        if not self._hold(cost):
            return
        fu += memoryview(payload)[2:]
        if fu_header & _FU_END:
            self._fu = None
            self._last_fu_end = payload
            self._keep(bytes(fu), header & 0x1F)

    def _add(self, nalu: bytes, t: int) -> None:
        if self._hold(len(nalu) + _NAL_COST):
            self._keep(nalu, t)

    def _hold(self, size: int) -> bool:
        """Count ``size`` more bytes held for the unit; past ``max_access_unit`` it is
        dropped whole (what it holds released at once) and counted once."""
        before = self._size
        self._size += size
        if self._size <= self.max_access_unit:
            return True
        if before <= self.max_access_unit:
            self.stats.oversized += 1
        self._broken = True
        self.needs_keyframe = True
        self._nalus = []
        self._fu = None
        return False

    def _keep(self, nalu: bytes, t: int) -> None:
        """A whole NAL unit of the current unit, its bytes already held."""
        if t == NAL_IDR:
            self._idr = True
        elif t == NAL_SPS:
            self._sps = nalu
        elif t == NAL_PPS:
            self._pps = nalu
        self._nalus.append(nalu)

    def _malformed(self) -> None:
        self.stats.malformed += 1
        self._broken = True
        self.needs_keyframe = True

    def _finish(self, out: AccessUnit | None) -> AccessUnit | None:
        """Close the unit under construction; return it (or hold it if ``out`` is taken)."""
        if self._fu is not None:  # a NAL unit without its end: the unit is broken
            self._fu = None
            self._broken = True
        au: AccessUnit | None = None
        if self._broken:
            if self._started:
                self.stats.dropped_units += 1
            self._discontinuity = True
            self.needs_keyframe = True
        elif self._nalus:
            au = AccessUnit(self._nalus, self._ts, self._idr, self._discontinuity)
            self.stats.access_units += 1
            self._discontinuity = False
            if self._idr:
                self.needs_keyframe = False
        self._nalus = []
        self._size = 0
        self._idr = False
        self._broken = False
        self._started = False
        if au is None:
            return out
        if out is None:
            return au
        self._ready = au
        return out
