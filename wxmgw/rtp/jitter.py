"""Reorder buffer for one incoming RTP stream, with RFC 3550 receiver statistics.

Packets come out in sequence order as soon as they are in order; the buffer
adds no delay to a clean stream. A missing packet is waited for at most
``window`` seconds (counted from the arrival of the oldest packet held behind
it) or until ``max_packets`` are held, then skipped and reported as a
:class:`Gap` so that a depacketizer drops the frame it broke.

Rules, after RFC 3550 §A.1 (``update_seq``):

* A packet more than ``MAX_MISORDER`` (100) behind or ``MAX_DROPOUT`` (3000)
  ahead of the highest sequence number is a jump. It is held as a probe; if
  the very next packet is its successor, the sender restarted its numbering:
  the buffer resets and both are accepted. Otherwise the probe is dropped
  and counted as ``stray``.
* A new SSRC resets the buffer.
* On a reset, packets still held are released (with their gaps), then a
  ``Gap(0, reset=True)``; statistics for receiver reports start over.
* A packet behind what was already released is dropped: counted ``late`` when
  its slot had been skipped, ``duplicates`` otherwise (also for duplicates
  still held).
* The first packet of a source starts the stream; an earlier one arriving
  after it counts as late.

Generic NACK (RFC 4585 §6.2.1), when ``nack_retry`` is set: the sequence
numbers of a new hole are asked for at once (:meth:`JitterBuffer.nacks_due`),
and once more ``nack_retry`` seconds later if they are still awaited; a hole
of more than ``MAX_NACK_RUN`` packets is not asked for (a burst that large
is an outage, not a loss). A packet that fills an asked-for hole counts as
``recovered``, not as reordered, and leaves the jitter estimate alone
(RFC 4588 §8: retransmissions say nothing of the path's jitter). The window
must cover the round trip and the retry for a NACK to pay off.

Payload-type and source-address filtering belong to the RTP session.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from wxmgw.rtp.packet import RtpPacket
from wxmgw.rtp.rtcp import ReportBlock
from wxmgw.rtp.seq import SeqUnwrapper, ts_diff

#: RFC 3550 §A.1: how far behind the highest sequence number a packet may be.
MAX_MISORDER = 100
#: RFC 3550 §A.1: how far ahead a packet may be before it is a jump.
MAX_DROPOUT = 3000
#: Largest hole whose packets are asked for again.
MAX_NACK_RUN = 128


@dataclass(frozen=True, slots=True)
class Gap:
    """Marker in the output: ``count`` packets were lost here, or the stream restarted."""

    count: int
    reset: bool = False


@dataclass(slots=True)
class JitterStats:
    """Counters since the buffer was created (all sources); ``jitter`` is the current source's.

    ``jitter`` is the RFC 3550 §6.4.1 / §A.8 interarrival jitter estimate in
    timestamp units.
    """

    clock_rate: int
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    resets: int = 0
    stray: int = 0
    nacked: int = 0
    recovered: int = 0
    jitter: float = 0.0

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate


class JitterBuffer:
    """Reorders one incoming stream (audio or video); see the module docstring for the rules.

    ``clock`` gives the time in seconds for :meth:`push` and :meth:`pop_ready`
    when they are not told it.
    """

    __slots__ = (
        "_base",
        "_buf",
        "_clock",
        "_expected_prior",
        "_last_arrival",
        "_last_ts",
        "_missing",
        "_next",
        "_out",
        "_probe",
        "_received_prior",
        "_rr_received",
        "_seq",
        "_skipped",
        "clock_rate",
        "max_packets",
        "nack_retry",
        "ssrc",
        "stats",
        "window",
    )

    def __init__(
        self,
        clock_rate: int,
        clock: Callable[[], float],
        window: float = 0.1,
        max_packets: int = 500,
        nack_retry: float | None = None,
    ) -> None:
        self.clock_rate = clock_rate
        self.window = window
        self.max_packets = max_packets
        self.nack_retry = nack_retry
        self.stats = JitterStats(clock_rate)
        #: SSRC of the current source (None before the first packet).
        self.ssrc: int | None = None
        self._clock = clock
        self._out: list[RtpPacket | Gap] = []
        self._probe: tuple[RtpPacket, float] | None = None
        self._start_source()

    def _start_source(self) -> None:
        self._seq = SeqUnwrapper(0)  # replaced by the first packet's number
        self._buf: dict[int, tuple[RtpPacket, float]] = {}
        self._next = 0  # extended index of the next packet to release
        self._skipped: set[int] = set()  # recently skipped indices, to tell late from duplicate
        # Awaited holes: extended index -> when to ask for it (next), None once asked twice.
        self._missing: dict[int, float | None] = {}
        # RFC 3550 §A.3 state for report blocks.
        self._base = 0
        self._rr_received = 0
        self._expected_prior = 0
        self._received_prior = 0
        # RFC 3550 §A.8 state.
        self._last_arrival: float | None = None
        self._last_ts = 0
        self.stats.jitter = 0.0

    def push(self, pkt: RtpPacket, arrival: float | None = None) -> None:
        """Take one packet that arrived at ``arrival`` (default: now by the clock)."""
        if arrival is None:
            arrival = self._clock()
        self.stats.received += 1
        self._push(pkt, arrival)

    def _push(self, pkt: RtpPacket, arrival: float) -> None:
        stats = self.stats
        if pkt.ssrc != self.ssrc:
            if self.ssrc is not None:
                self._reset()
            self._first(pkt, arrival)
            return
        seq = pkt.sequence_number
        ext = self._seq.extend(seq)
        delta = ext - self._seq.highest
        if delta >= MAX_DROPOUT or delta < -MAX_MISORDER:
            probe = self._probe
            if probe is not None and seq == (probe[0].sequence_number + 1) & 0xFFFF:
                self._probe = None
                self._reset()
                self._first(*probe)
                self._push(pkt, arrival)
            else:
                if probe is not None:
                    stats.stray += 1
                self._probe = (pkt, arrival)
            return
        if self._probe is not None:
            stats.stray += 1
            self._probe = None
        self._rr_received += 1
        nxt = self._next
        if ext < nxt:
            if ext < self._base or ext in self._skipped:
                self._skipped.discard(ext)
                stats.late += 1
                self._update_jitter(pkt, arrival)
            else:
                stats.duplicates += 1
            return
        buf = self._buf
        if ext in buf:
            stats.duplicates += 1
            return
        if delta > 0:
            if self.nack_retry is not None and 1 < delta <= MAX_NACK_RUN + 1:
                self._missing.update(dict.fromkeys(range(ext - delta + 1, ext), -math.inf))
            self._seq.unwrap(seq)
            self._update_jitter(pkt, arrival)
        elif ext in self._missing:
            del self._missing[ext]
            stats.recovered += 1
        else:
            stats.reordered += 1
            self._update_jitter(pkt, arrival)
        if ext == nxt:
            self._out.append(pkt)
            self._next = nxt + 1
            if buf:
                self._release_in_order()
            return
        buf[ext] = (pkt, arrival)
        while len(buf) > self.max_packets:
            self._skip_hole()

    def _first(self, pkt: RtpPacket, arrival: float) -> None:
        self.ssrc = pkt.ssrc
        self._seq = SeqUnwrapper(pkt.sequence_number)
        self._base = pkt.sequence_number
        self._next = self._base + 1
        self._rr_received = 1
        self._update_jitter(pkt, arrival)
        self._out.append(pkt)

    def _reset(self) -> None:
        while self._buf:
            self._skip_hole()
        if self._probe is not None:
            self.stats.stray += 1
            self._probe = None
        self._out.append(Gap(0, reset=True))
        self.stats.resets += 1
        self._start_source()

    def _update_jitter(self, pkt: RtpPacket, arrival: float) -> None:
        """RFC 3550 §A.8: J += (|D| - J) / 16, D in timestamp units, in arrival order."""
        if self._last_arrival is not None:
            d = (arrival - self._last_arrival) * self.clock_rate - ts_diff(
                pkt.timestamp, self._last_ts
            )
            self.stats.jitter += (abs(d) - self.stats.jitter) / 16
        self._last_arrival = arrival
        self._last_ts = pkt.timestamp

    def _release_in_order(self) -> None:
        buf, out, nxt = self._buf, self._out, self._next
        while nxt in buf:
            out.append(buf.pop(nxt)[0])
            nxt += 1
        self._next = nxt

    def _skip_hole(self) -> None:
        """Give up on the missing packets before the lowest one held, then release."""
        first = min(self._buf)
        count = first - self._next
        self._out.append(Gap(count))
        self.stats.lost += count
        floor = self._seq.highest - MAX_MISORDER
        self._skipped = {i for i in self._skipped if i >= floor}
        self._skipped.update(range(max(self._next, floor), first))
        self._next = first
        if self._missing:
            self._missing = {i: t for i, t in self._missing.items() if i >= first}
        self._release_in_order()

    def _hole_deadline(self) -> float | None:
        """When the oldest hole is given up on, if packets wait behind one."""
        if not self._buf:
            return None
        return min(arrival for _, arrival in self._buf.values()) + self.window

    def next_deadline(self) -> float | None:
        """When a hole should be given up on or asked for again; for timers."""
        deadline = self._hole_deadline()
        asks = [t for t in self._missing.values() if t is not None]
        return min(deadline, *asks) if asks and deadline is not None else deadline

    def nacks_due(self, now: float | None = None) -> list[int]:
        """Sequence numbers to ask the sender for now (generic NACK, RFC 4585 §6.2.1).

        A hole is asked for as soon as it is seen, and once more ``nack_retry``
        seconds later while it is still awaited.
        """
        if not self._missing:
            return []
        if now is None:
            now = self._clock()
        assert self.nack_retry is not None
        due = [i for i, t in self._missing.items() if t is not None and t <= now]
        for i in due:
            self._missing[i] = now + self.nack_retry if self._missing[i] == -math.inf else None
        self.stats.nacked += len(due)
        return [i & 0xFFFF for i in due]

    def pop_ready(self, now: float | None = None) -> list[RtpPacket | Gap]:
        """Packets ready in sequence order, with a :class:`Gap` where packets were skipped."""
        if now is None:
            now = self._clock()
        while (deadline := self._hole_deadline()) is not None and now >= deadline:
            self._skip_hole()
        out, self._out = self._out, []
        return out

    def make_report_block(self, lsr: int = 0, dlsr: int = 0) -> ReportBlock | None:
        """Reception report about the current source (RFC 3550 §6.4.1, §A.3); None before one.

        ``lsr``/``dlsr`` come from the session that receives the source's SR
        (see :func:`wxmgw.rtp.rtcp.ntp_middle32`, :func:`~wxmgw.rtp.rtcp.dlsr_from_seconds`).
        Each call closes an interval for ``fraction_lost``.
        """
        if self.ssrc is None:
            return None
        highest = self._seq.highest
        expected = highest - self._base + 1
        lost = max(-0x800000, min(0x7FFFFF, expected - self._rr_received))
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (self._rr_received - self._received_prior)
        self._expected_prior = expected
        self._received_prior = self._rr_received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=lost,
            highest_sequence=highest & 0xFFFFFFFF,
            jitter=int(self.stats.jitter),
            lsr=lsr,
            dlsr=dlsr,
        )
