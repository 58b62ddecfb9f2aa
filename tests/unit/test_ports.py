import socket

import pytest

from wxmgw.errors import InvalidArgument, NoFreePort
from wxmgw.ports import PortAllocator, parse_port_range


def free_range(size):
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            lo = s.getsockname()[1] & ~1
        if lo + size < 65000:
            return lo, lo + size - 1
    raise RuntimeError


def test_parse_port_range():
    assert parse_port_range("30000-39999") == (30000, 39999)
    assert parse_port_range("30001-30003") == (30002, 30003)
    for bad in ("x", "30000", "40000-30000", "80-100", "30001-30002"):
        with pytest.raises(InvalidArgument):
            parse_port_range(bad)


def test_pairs_are_even_odd_and_bound():
    lo, hi = free_range(8)
    ports = PortAllocator(lo, hi, "127.0.0.1")
    pair = ports.allocate()
    assert pair.port % 2 == 0
    assert pair.rtp.getsockname()[1] == pair.port
    assert pair.rtcp.getsockname()[1] == pair.port + 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", pair.port))
    ports.release(pair)


def test_exhaustion_and_release():
    lo, hi = free_range(6)
    ports = PortAllocator(lo, hi, "127.0.0.1")
    pairs = [ports.allocate() for _ in range(ports.capacity)]
    assert ports.capacity == 3
    with pytest.raises(NoFreePort):
        ports.allocate()
    ports.release(pairs[1])
    ports.release(pairs[1])
    assert ports.allocate().port == pairs[1].port
    for p in pairs:
        ports.release(p)
    assert ports.in_use == [pairs[1].port]


def test_port_held_elsewhere_is_skipped():
    lo, hi = free_range(4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", lo + 1))
        ports = PortAllocator(lo, hi, "127.0.0.1")
        assert ports.allocate().port == lo + 2
        with pytest.raises(NoFreePort):
            ports.allocate()


def test_released_port_is_reused_last():
    lo, hi = free_range(6)
    ports = PortAllocator(lo, hi, "127.0.0.1")
    first = ports.allocate()
    ports.release(first)
    assert ports.allocate().port != first.port
