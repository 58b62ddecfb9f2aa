"""Thrift requests read whole and within a limit (issue #12 finding 5)."""

from __future__ import annotations

import struct

import pytest
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TCyMemoryBuffer

from wxmgw.errors import ParseError
from wxmgw.thrift import wxmgw_thrift as t
from wxmgw.thrift_reader import MAX_DEPTH, StreamReader, read_frame, read_message

LIMIT = 1 << 20


def call(method: str = "StartPush", **fields) -> bytes:
    """A strict binary-protocol CALL message, as an MCS sends it."""
    args = getattr(t.WxMgw, f"{method}_args")(req=t.StartPushReq(**fields))
    buf = TCyMemoryBuffer()
    proto = TCyBinaryProtocolFactory().get_protocol(buf)
    proto.write_message_begin(method, TMessageType.CALL, 7)
    proto.write_struct(args)
    proto.write_message_end()
    buf.flush()
    data: bytes = buf.getvalue()
    return data


def source(data: bytes, asked: list[int] | None = None) -> StreamReader:
    """``data`` as a stream arriving 5 bytes at a time; ``asked`` records every recv size."""
    pos = 0

    def recv(n: int) -> bytes:
        nonlocal pos
        if asked is not None:
            asked.append(n)
        pos += 5
        return data[pos - 5 : pos]

    return StreamReader(recv)


def head(name: bytes = b"StartPush") -> bytes:
    return struct.pack(">Ii", 0x80010001, len(name)) + name + struct.pack(">i", 7)


def test_a_real_request_is_read_exactly_and_the_next_one_after_it():
    first = call(uuid="m1", pushUrl="rtmp://h/live/x", confId="c", audioPayloadType=8)
    second = call(uuid="m2", confId="c")
    reader = source(first + second)
    assert read_message(reader.read, LIMIT) == first
    assert read_message(reader.read, LIMIT) == second
    with pytest.raises(EOFError):
        read_message(reader.read, LIMIT)


def test_a_framed_request_is_its_frame():
    msg = call(uuid="m1", confId="c")
    reader = source(struct.pack(">i", len(msg)) + msg)
    assert read_frame(reader.read, LIMIT) == msg


def test_a_string_declaring_256_mb_is_refused_before_its_bytes_are_read():
    declared = 256 << 20
    data = head() + b"\x0c\x00\x01" + b"\x0b\x00\x01" + struct.pack(">i", declared) + b"x" * 4096
    asked: list[int] = []
    with pytest.raises(ParseError, match="over the 1048576-byte message limit"):
        read_message(source(data, asked).read, LIMIT)
    assert sum(min(n, 5) for n in asked) < 64  # only the headers were read


@pytest.mark.parametrize("container", [
    b"\x0f\x00\x02" + b"\x08" + struct.pack(">i", 2**31 - 1),          # list<i32>
    b"\x0f\x00\x02" + b"\x0c" + struct.pack(">i", LIMIT),              # list<struct>, 1 B each
    b"\x0d\x00\x02" + b"\x0b\x0b" + struct.pack(">i", LIMIT // 2),     # map<string,string>
    b"\x0e\x00\x02" + b"\x0b" + struct.pack(">i", -1),                 # set, negative count
])
def test_container_counts_over_the_limit_are_refused_at_once(container):
    with pytest.raises(ParseError):
        read_message(source(head() + b"\x0c\x00\x01" + container).read, LIMIT)


def test_the_whole_message_is_bounded_not_only_each_string():
    field = b"\x0b\x00\x01" + struct.pack(">i", 1000) + b"y" * 1000
    data = head() + b"\x0c\x00\x01" + field * 2000
    with pytest.raises(ParseError, match="message limit"):
        read_message(source(data).read, 64 * 1024)


@pytest.mark.parametrize("data, match", [
    (struct.pack(">i", 9) + b"StartPush\x01" + b"\x00" * 4, "not a strict"),
    (head() + b"\x01\x00\x01", "unknown Thrift type 1"),
    (head() + b"\x0b\x00\x01" + struct.pack(">i", -5), "negative string length"),
    (struct.pack(">Ii", 0x80010001, -1), "negative method name length"),
    (head() + b"\x0c\x00\x01" * MAX_DEPTH + b"\x00", "nested over"),
])
def test_malformed_requests_raise_parse_error(data, match):
    with pytest.raises(ParseError, match=match):
        read_message(source(data + b"\x00" * 64).read, LIMIT)


@pytest.mark.parametrize("size", [0, -1, LIMIT + 1, 2**31 - 1])
def test_frame_sizes_out_of_bounds_are_refused_before_the_frame_is_read(size):
    asked: list[int] = []
    with pytest.raises(ParseError, match="frame of"):
        read_frame(source(struct.pack(">i", size) + b"z" * 100, asked).read, LIMIT)
    assert len(asked) == 1


def test_a_frame_must_hold_exactly_one_message():
    msg = call(uuid="m1")
    for frame in (msg + b"\x00", msg[:-1]):
        with pytest.raises(ParseError):
            read_frame(source(struct.pack(">i", len(frame)) + frame).read, LIMIT)
