"""Wraparound arithmetic for RTP's 16-bit sequence numbers and 32-bit timestamps.

The one place that knows about modular comparison (RFC 1982 serial number
arithmetic, as RFC 3550 §A.1 applies it to sequence numbers): every other
module compares sequence numbers and timestamps through these helpers.

Two values exactly half the range apart are ambiguous (RFC 1982 §3.2); here
the difference is then negative.
"""

from __future__ import annotations

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def seq_ahead(a: int, b: int) -> int:
    """How many numbers ``a`` comes after ``b``, counting forward only: in [0, 65535]."""
    return (a - b) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 16-bit sequence numbers, in [-32768, 32767]."""
    d = seq_ahead(a, b)
    return d - SEQ_MOD if d >= 0x8000 else d


def seq_lt(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes before ``b`` (modulo 2**16)."""
    return seq_diff(a, b) < 0


def ts_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 32-bit RTP timestamps."""
    d = (a - b) & 0xFFFFFFFF
    return d - TS_MOD if d >= 0x80000000 else d


class Unwrapper:
    """Turns a wrapping ``bits``-wide counter into a monotonic extended index.

    Each value is placed at the extended index nearest to the highest index
    seen so far, so late values just behind a wrap stay behind it. The first
    value keeps its own number (cycle 0); an index may go negative for a late
    value from before it.
    """

    __slots__ = ("_half", "_mask", "_mod", "highest")

    def __init__(self, bits: int, first: int) -> None:
        self._mod = 1 << bits
        self._mask = self._mod - 1
        self._half = self._mod >> 1
        #: Extended index of the highest value unwrapped so far.
        self.highest = first

    def extend(self, value: int) -> int:
        """Extended index of ``value`` relative to :attr:`highest`, without recording it."""
        d = (value - self.highest) & self._mask
        if d >= self._half:
            d -= self._mod
        return self.highest + d

    def unwrap(self, value: int) -> int:
        """Extended index of ``value``; advances :attr:`highest` when it moves forward."""
        ext = self.extend(value)
        if ext > self.highest:
            self.highest = ext
        return ext


class SeqUnwrapper(Unwrapper):
    """Extends 16-bit RTP sequence numbers (RFC 3550 §A.1 "cycles")."""

    __slots__ = ()

    def __init__(self, first: int) -> None:
        super().__init__(16, first)


class TimestampUnwrapper(Unwrapper):
    """Extends 32-bit RTP timestamps into a monotonic 64-bit timeline."""

    __slots__ = ()

    def __init__(self, first: int) -> None:
        super().__init__(32, first)
