"""AMF0, the encoding of RTMP command and data messages (Adobe AMF0 specification).

Only what RTMP commands use: numbers, booleans, strings, objects, null,
undefined, ECMA and strict arrays, dates and long strings. Decoding bytes
from the network raises only :class:`~wxmgw.errors.ParseError`, also for
objects and arrays nested deeper than ``max_depth`` (the specification sets
no limit; a server's nesting would otherwise reach Python's recursion limit).
How large a command may be is the chunk stream's to bound
(:class:`~wxmgw.rtmp.chunk.RtmpLimits`): decoding takes time and memory in
proportion to its input.

A ``dict`` is encoded as an object; an :class:`EcmaArray` (what an ECMA
array decodes to) as an ECMA array, as ``onMetaData`` carries its fields
(FLV spec E.5). The only AMF0 encoder of the gateway.
"""

from __future__ import annotations

import struct
from typing import Final

from wxmgw.errors import ParseError

Value = float | bool | str | None | dict[str, "Value"] | list["Value"]


class EcmaArray(dict[str, Value]):
    """An associative array (AMF0 §2.10): encoded with its count, unlike an object."""


_NUMBER: Final = 0x00
_BOOLEAN: Final = 0x01
_STRING: Final = 0x02
_OBJECT: Final = 0x03
_NULL: Final = 0x05
_UNDEFINED: Final = 0x06
_ECMA_ARRAY: Final = 0x08
_OBJECT_END: Final = 0x09
_STRICT_ARRAY: Final = 0x0A
_DATE: Final = 0x0B
_LONG_STRING: Final = 0x0C
_DOUBLE = struct.Struct(">d")
#: How deep objects and arrays may nest in a decoded value, by default.
MAX_DEPTH: Final = 32


def encode(*values: Value) -> bytes:
    """The AMF0 encoding of ``values``, one after the other."""
    return b"".join(_encode(v) for v in values)


def _encode(value: Value) -> bytes:
    if value is None:
        return bytes([_NULL])
    if isinstance(value, bool):
        return bytes([_BOOLEAN, int(value)])
    if isinstance(value, int | float):
        return bytes([_NUMBER]) + _DOUBLE.pack(float(value))
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) > 0xFFFF:
            return bytes([_LONG_STRING]) + struct.pack(">I", len(raw)) + raw
        return bytes([_STRING]) + _short_string(value)
    if isinstance(value, dict):
        body = b"".join(_short_string(k) + _encode(v) for k, v in value.items())
        body += b"\x00\x00" + bytes([_OBJECT_END])
        if isinstance(value, EcmaArray):
            return bytes([_ECMA_ARRAY]) + struct.pack(">I", len(value)) + body
        return bytes([_OBJECT]) + body
    return bytes([_STRICT_ARRAY]) + struct.pack(">I", len(value)) + encode(*value)


def _short_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def decode(data: bytes, max_depth: int = MAX_DEPTH) -> list[Value]:
    """Every value of ``data``, in order; objects and arrays nest at most ``max_depth`` deep."""
    reader = _Reader(data, max_depth)
    values = []
    while reader.pos < len(data):
        values.append(reader.value())
    return values


class _Reader:
    __slots__ = ("data", "depth", "pos")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.depth = max_depth  # how many more levels of nesting may open

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ParseError(f"AMF0 value truncated at byte {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def string(self, length_size: int = 2) -> str:
        n = int.from_bytes(self.take(length_size), "big")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError as e:
            raise ParseError(f"AMF0 string is not UTF-8: {e}") from None

    def nest(self) -> None:
        if self.depth == 0:
            raise ParseError(f"AMF0 values nested too deep at byte {self.pos}")
        self.depth -= 1

    def properties(self, out: dict[str, Value]) -> dict[str, Value]:
        self.nest()
        while True:
            key = self.string()
            if not key and self.data[self.pos : self.pos + 1] == bytes([_OBJECT_END]):
                self.pos += 1
                self.depth += 1
                return out
            out[key] = self.value()

    def array(self) -> list[Value]:
        count = int.from_bytes(self.take(4), "big")
        self.nest()
        out = [self.value() for _ in range(count)]
        self.depth += 1
        return out

    def value(self) -> Value:
        marker = self.take(1)[0]
        if marker == _NUMBER:
            return float(_DOUBLE.unpack(self.take(8))[0])
        if marker == _BOOLEAN:
            return self.take(1) != b"\x00"
        if marker == _STRING:
            return self.string()
        if marker == _LONG_STRING:
            return self.string(4)
        if marker in (_NULL, _UNDEFINED):
            return None
        if marker == _OBJECT:
            return self.properties({})
        if marker == _ECMA_ARRAY:
            self.take(4)  # an approximate count; the end marker is what counts
            return self.properties(EcmaArray())
        if marker == _STRICT_ARRAY:
            return self.array()
        if marker == _DATE:
            ms = float(_DOUBLE.unpack(self.take(8))[0])
            self.take(2)  # time zone, unused (AMF0 §2.13)
            return ms
        raise ParseError(f"unsupported AMF0 type marker {marker:#x}")
