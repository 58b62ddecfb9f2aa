"""AMF0: values both ways, garbage, and the nesting limit (issue #12, finding 2)."""

from __future__ import annotations

import contextlib
import random

import pytest

from wxmgw.errors import ParseError
from wxmgw.rtmp import amf0


def test_amf0_round_trip() -> None:
    values: list[amf0.Value] = [
        "connect", 1.0, None, True, {"app": "live", "n": 2.0, "o": {"x": [1.0, "y"]}}, "é" * 3
    ]
    assert amf0.decode(amf0.encode(*values)) == values


def test_amf0_ecma_array_and_date() -> None:
    data = bytes([0x08, 0, 0, 0, 1, 0, 1]) + b"k" + amf0.encode(3.0) + b"\x00\x00\x09"
    data += bytes([0x0B]) + amf0.encode(5.0)[1:] + b"\x00\x00"
    assert amf0.decode(data) == [{"k": 3.0}, 5.0]


def test_amf0_garbage_raises_only_parse_error() -> None:
    rng = random.Random(7)
    good = amf0.encode("onStatus", 0.0, None, {"level": "status", "code": "NetStream.Play.Start"})
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(ParseError):
            amf0.decode(bytes(data[: rng.randint(0, len(data))]))


def _nested(depth: int) -> bytes:
    """``depth`` objects, each the value of the one around it, then a number."""
    opening = (bytes([0x03]) + b"\x00\x01k") * depth
    return opening + amf0.encode(1.0) + b"\x00\x00\x09" * depth


def test_amf0_nesting_past_the_depth_limit_is_a_parse_error() -> None:
    assert amf0.decode(_nested(amf0.MAX_DEPTH))
    with pytest.raises(ParseError, match="nested too deep"):
        amf0.decode(_nested(amf0.MAX_DEPTH + 1))
    with pytest.raises(ParseError):  # was RecursionError
        amf0.decode(_nested(100_000))
    deep_arrays = (bytes([0x0A]) + (1).to_bytes(4, "big")) * 100_000 + bytes([0x05])
    with pytest.raises(ParseError):
        amf0.decode(deep_arrays)
    assert amf0.decode(_nested(3), max_depth=3)
    with pytest.raises(ParseError):
        amf0.decode(_nested(3), max_depth=2)


def test_amf0_depth_counts_nesting_not_siblings() -> None:
    siblings = amf0.encode([{"a": 1.0}] * 1000, {"o": {"p": None}})
    assert len(amf0.decode(siblings, max_depth=2)[0]) == 1000  # type: ignore[arg-type]
