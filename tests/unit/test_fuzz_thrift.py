"""Properties of the bounded Thrift request reader: any bytes, only ParseError or end of stream."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TCyMemoryBuffer

from wxmgw.errors import ParseError
from wxmgw.thrift import wxmgw_thrift as t
from wxmgw.thrift_reader import StreamReader, read_frame, read_message

pytestmark = pytest.mark.fuzz

LIMIT = 4096
HEAD = struct.pack(">Ii", 0x80010001, 9) + b"StartPush" + struct.pack(">i", 1)


def reader(data: bytes) -> tuple[StreamReader, list[int]]:
    """``data`` 7 bytes per recv; the list gets how many bytes each read asked for."""
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)][::-1]
    asked: list[int] = []
    stream = StreamReader(lambda n: chunks.pop() if chunks else b"")
    real = stream.read

    def read(n: int) -> bytes:
        asked.append(n)
        return real(n)

    stream.read = read  # type: ignore[method-assign]
    return stream, asked


@given(st.binary(max_size=600))
def test_any_bytes_give_a_prefix_parse_error_or_end_of_stream(body):
    for data in (body, HEAD + body):
        stream, asked = reader(data)
        try:
            message = read_message(stream.read, LIMIT)
        except (ParseError, EOFError):
            pass
        else:
            assert data.startswith(message)
        assert sum(asked) <= LIMIT


@given(st.binary(max_size=600))
def test_any_frame_gives_its_message_or_parse_error(body):
    for data in (body, struct.pack(">i", len(body)) + body):
        stream, asked = reader(data)
        try:
            message = read_frame(stream.read, LIMIT)
        except (ParseError, EOFError):
            pass
        else:
            assert message == body
        assert sum(asked) <= LIMIT + 4


text = st.text(max_size=40)
i32 = st.integers(-(2**31), 2**31 - 1)


@given(st.builds(t.StartPullReq, uuid=text, pullUrl=text, ssrc=st.integers(0, 2**32 - 1),
                 masIp=text, audioPort=i32, videoPort=i32, audioPayloadType=i32,
                 audioCodec=text, videoPayloadType=i32, VideoCodec=text, pushAudioUrl=text,
                 confId=text))
def test_a_request_round_trips_through_the_reader(req):
    buf = TCyMemoryBuffer()
    proto = TCyBinaryProtocolFactory().get_protocol(buf)
    proto.write_message_begin("StartPull", TMessageType.CALL, 3)
    proto.write_struct(t.WxMgw.StartPull_args(req=req))
    proto.write_message_end()
    data = buf.getvalue()
    stream, _ = reader(data + data)
    message = read_message(stream.read, LIMIT)
    assert message == data
    back = TCyBinaryProtocolFactory().get_protocol(TCyMemoryBuffer(message))
    assert back.read_message_begin() == ("StartPull", TMessageType.CALL, 3)
    args = t.WxMgw.StartPull_args()
    back.read_struct(args)
    assert args.req == req
