"""RTP port allocator.

Each allocation is an even RTP port with RTCP on the next one (RFC 3550
§11), both actually bound, so that a port the allocator hands out is a port
nobody else holds. Allocation walks the range round-robin, so a port just
released is the last to be handed out again (late packets of an old leg do
not land in a new one).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from wxmgw.errors import InvalidArgument, NoFreePort

RECEIVE_BUFFER = 1 << 20


@dataclass(slots=True)
class PortPair:
    """A bound RTP socket on an even port and its RTCP socket on port + 1."""

    rtp: socket.socket
    rtcp: socket.socket
    port: int
    closed: bool = field(default=False)


def parse_port_range(text: str) -> tuple[int, int]:
    """``"30000-39999"`` -> (30000, 39999); the range must hold an even/odd pair."""
    try:
        lo_s, hi_s = text.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise InvalidArgument(f"port range {text!r} is not LO-HI") from None
    if not 1024 <= lo < hi <= 65535:
        raise InvalidArgument(f"port range {text!r} must lie in 1024-65535 with LO < HI")
    if lo % 2:
        lo += 1
    if lo + 1 > hi:
        raise InvalidArgument(f"port range {text!r} holds no even/odd pair")
    return lo, hi


class PortAllocator:
    """Hands out bound :class:`PortPair` s from ``[lo, hi]``."""

    def __init__(self, lo: int, hi: int, host: str = "0.0.0.0") -> None:
        self._first = lo + (lo % 2)
        self._count = (hi - self._first + 1) // 2
        self._host = host
        self._next = 0
        self._in_use: dict[int, PortPair] = {}

    @property
    def capacity(self) -> int:
        return self._count

    @property
    def in_use(self) -> list[int]:
        return sorted(self._in_use)

    def allocate(self, port: int | None = None) -> PortPair:
        """Bind the next free even/odd pair, or ``port`` and the next one when given.

        :class:`NoFreePort` when none is left, or when ``port`` is outside the
        range, odd, or cannot be bound (a journaled leg restored on its ports).
        """
        if port is not None:
            return self._allocate_at(port)
        for _ in range(self._count):
            port = self._first + 2 * self._next
            self._next = (self._next + 1) % self._count
            if port in self._in_use:
                continue
            pair = self._bind(port)
            if pair is not None:
                self._in_use[port] = pair
                return pair
        last = self._first + 2 * self._count - 1
        raise NoFreePort(f"no free RTP port pair in {self._first}-{last}")

    def _allocate_at(self, port: int) -> PortPair:
        last = self._first + 2 * self._count - 1
        if not self._first <= port < last or (port - self._first) % 2:
            raise NoFreePort(f"port {port} is not an RTP port of {self._first}-{last}")
        pair = None if port in self._in_use else self._bind(port)
        if pair is None:
            raise NoFreePort(f"RTP port pair {port}-{port + 1} cannot be bound again")
        self._in_use[port] = pair
        return pair

    def release(self, pair: PortPair) -> None:
        """Close both sockets and give the pair back; releasing twice is harmless."""
        if pair.closed:
            return
        pair.closed = True
        pair.rtp.close()
        pair.rtcp.close()
        if self._in_use.get(pair.port) is pair:
            del self._in_use[pair.port]

    def _bind(self, port: int) -> PortPair | None:
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A keyframe arrives as a burst of packets: give the kernel room for it.
        rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            rtp.bind((self._host, port))
            rtcp.bind((self._host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            return None
        return PortPair(rtp=rtp, rtcp=rtcp, port=port)
