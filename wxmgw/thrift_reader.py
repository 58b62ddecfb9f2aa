"""Thrift binary-protocol messages read whole and within a limit, before thriftpy2 decodes them.

thriftpy2 0.7.1 has no length limits: neither its pure nor its Cython binary
protocol, nor its buffered or framed transport, checks a declared string,
container or frame length (Apache Thrift's ``string_length_limit``,
``container_length_limit`` and frame size have no counterpart). It reserves
what a peer declares and keeps every byte sent towards it. So the server reads
each request itself: :func:`read_message` walks it as the binary protocol lays
it out (Apache Thrift ``doc/specs/thrift-binary-protocol.md``), checks every
declared length against what is left of the limit *before* reading a byte of
it, and returns the complete message for thriftpy2 to decode from memory.

Pure: bytes come from a ``read(n)`` callable that returns exactly ``n`` bytes
(:class:`StreamReader` makes one of a ``recv``). Every violation raises
:class:`~wxmgw.errors.ParseError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from wxmgw.errors import ParseError

Read = Callable[[int], bytes]

VERSION_MASK = 0xFFFF0000
VERSION_1 = 0x80010000
"""The strict message header: version 1 in the high 16 bits, message type in the low 8."""

MAX_DEPTH = 32
"""Structs and containers nested deeper than this are refused (the WxMgw IDL nests 3)."""

STOP, BOOL, BYTE, DOUBLE, I16, I32, I64 = 0, 2, 3, 4, 6, 8, 10
STRING, STRUCT, MAP, SET, LIST = 11, 12, 13, 14, 15
_FIXED = {BOOL: 1, BYTE: 1, DOUBLE: 8, I16: 2, I32: 4, I64: 8}
_I32 = struct.Struct(">i")


class _Walker:
    """Reads through ``read`` and keeps every byte, never more than ``limit`` in all."""

    def __init__(self, read: Read, limit: int) -> None:
        self._read = read
        self.limit = limit
        self.data = bytearray()

    def take(self, size: int, what: str) -> None:
        if size < 0:
            raise ParseError(f"negative {what} length {size}")
        if size > self.limit - len(self.data):
            raise ParseError(f"{what} of {size} bytes over the {self.limit}-byte message limit")
        if size:
            self.data += self._read(size)

    def i32(self, what: str) -> int:
        self.take(4, what)
        value: int = _I32.unpack_from(self.data, len(self.data) - 4)[0]
        return value

    def u8(self, what: str) -> int:
        self.take(1, what)
        return self.data[-1]

    def count(self, per_item: int, what: str) -> int:
        """A container's element count: each element takes at least ``per_item`` bytes."""
        n = self.i32(what)
        if n < 0 or n * per_item > self.limit - len(self.data):
            raise ParseError(f"{what} of {n} elements over the {self.limit}-byte message limit")
        return n

    def value(self, ttype: int, depth: int) -> None:
        size = _FIXED.get(ttype)
        if size is not None:
            self.take(size, "value")
        elif ttype == STRING:
            self.take(self.i32("string length"), "string")
        elif ttype == STRUCT:
            self._nest(depth)
            while (ftype := self.u8("field type")) != STOP:
                self.take(2, "field id")
                self.value(ftype, depth - 1)
        elif ttype in (LIST, SET):
            self._nest(depth)
            etype = self.u8("element type")
            n = self.count(1, "list")
            self._elements(n, (etype,), depth - 1)
        elif ttype == MAP:
            self._nest(depth)
            ktype, vtype = self.u8("key type"), self.u8("value type")
            n = self.count(2, "map")
            self._elements(n, (ktype, vtype), depth - 1)
        else:
            raise ParseError(f"unknown Thrift type {ttype}")

    def _elements(self, n: int, types: tuple[int, ...], depth: int) -> None:
        if not n:
            return  # an empty container's element types are not read (some writers leave 0)
        sizes = [_FIXED.get(t) for t in types]
        if all(s is not None for s in sizes):  # fixed-size elements: one read
            self.take(n * sum(s for s in sizes if s is not None), "container")
            return
        for _ in range(n):
            for t in types:
                self.value(t, depth)

    @staticmethod
    def _nest(depth: int) -> None:
        if depth <= 0:
            raise ParseError(f"structs and containers nested over {MAX_DEPTH} deep")


def read_message(read: Read, limit: int) -> bytes:
    """One strict binary-protocol message (header, name, seqid, argument struct).

    ``limit`` bounds the whole message, so every string and container in it;
    a declared length over what is left is refused before it is read.
    """
    walker = _Walker(read, limit)
    header = walker.i32("message header") & 0xFFFFFFFF
    if header & VERSION_MASK != VERSION_1:
        raise ParseError(f"not a strict binary-protocol message (header {header:#010x})")
    walker.take(walker.i32("method name length"), "method name")
    walker.take(4, "seqid")
    walker.value(STRUCT, MAX_DEPTH)
    return bytes(walker.data)


def read_frame(read: Read, limit: int) -> bytes:
    """One framed-transport frame holding exactly one message: the message.

    The 4-byte frame size is checked against ``limit`` before the frame is read.
    """
    (size,) = _I32.unpack(read(4))
    if not 0 < size <= limit:
        raise ParseError(f"frame of {size} bytes: 1 to {limit} allowed")
    frame = read(size)
    message = read_message(_from_memory(frame), size)
    if len(message) != size:
        raise ParseError(f"frame of {size} bytes holds a message of {len(message)}")
    return frame


def _from_memory(data: bytes) -> Read:
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise ParseError(f"frame of {len(data)} bytes ends inside its message")
        pos += n
        return data[pos - n : pos]

    return read


class StreamReader:
    """Exact-size reads over a ``recv(n)`` that may return less; b"" from it is the end."""

    CHUNK = 65536

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buf = bytearray()
        self._pos = 0

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes; EOFError if the stream ends first."""
        while (len(self._buf) - self._pos) < n:
            chunk = self._recv(self.CHUNK)
            if not chunk:
                raise EOFError(f"stream ended {n - (len(self._buf) - self._pos)} bytes short")
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return data
