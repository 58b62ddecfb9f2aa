"""A hostile RTMP server for tests: it shakes hands properly, then misbehaves (issue #12).

``nested``: answers ``connect`` with a ``_result`` of deeply nested AMF0
objects (finding 2). ``chunk_streams``: plays along up to
``NetStream.Play.Start``, then interleaves 64 chunk streams, each with a
1 MB message that never ends (finding 3). ``reset_after_publish``: answers
``publish`` with ``NetStream.Publish.Start`` and resets the connection at
once, as a live server going down does between the two. It speaks with the gateway's own
pure chunk stream and AMF0 code; it runs in greenlets of the test process.
"""

from __future__ import annotations

import socket
import struct

import gevent

from wxmgw.rtmp import amf0
from wxmgw.rtmp.chunk import (
    COMMAND_AMF0,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkWriter,
    Message,
    RtmpLimits,
)
from wxmgw.rtmp.chunkreader import ChunkReader

#: Deep enough for Python's recursion limit, small enough for the command size cap (35 kB).
NESTING = 5000
STREAMS = 64
MESSAGE = 1 << 20
CHUNK = 64 << 10
_HANDSHAKE = 1536
#: What the server itself takes from the gateway: plenty, it is not under test.
_LAX = RtmpLimits(max_chunk_streams=1000)


def nested_result(transaction: float) -> bytes:
    """``_result`` whose command object nests ``NESTING`` objects deep."""
    head = amf0.encode("_result", transaction)
    return head + (b"\x03\x00\x01k") * NESTING + b"\x05" + b"\x00\x00\x09" * NESTING


class HostileRtmpServer:
    """Listens on a free loopback port; :attr:`connections` counts the sessions tried."""

    def __init__(self, mode: str) -> None:
        assert mode in ("nested", "chunk_streams", "reset_after_publish"), mode
        self.mode = mode
        self.connections = 0
        self.sent_partial = 0  # bytes of never-ending messages sent
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._greenlets = [gevent.spawn(self._accept)]

    def url(self, stream: str = "cam") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{stream}"

    def close(self) -> None:
        gevent.killall(self._greenlets)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            self.connections += 1
            self._greenlets.append(gevent.spawn(self._serve, conn))

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._session(conn)
        except OSError:
            pass  # the gateway hung up: what it should do
        finally:
            conn.close()

    def _session(self, conn: socket.socket) -> None:
        _recv_exactly(conn, 1 + _HANDSHAKE)  # C0 C1
        conn.sendall(b"\x03" + bytes(_HANDSHAKE) + bytes(_HANDSHAKE))  # S0 S1 S2
        _recv_exactly(conn, _HANDSHAKE)  # C2
        reader, writer = ChunkReader(_LAX), ChunkWriter()
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for message in reader.feed(data):
                if message.type_id != COMMAND_AMF0:
                    continue
                name, transaction, *_ = amf0.decode(message.payload)
                assert isinstance(transaction, float)
                if name == "connect" and self.mode == "nested":
                    conn.sendall(writer.chunks(Message(
                        COMMAND_AMF0, 0, 0, nested_result(transaction)), 3))
                elif name in ("connect", "createStream"):
                    result = amf0.encode("_result", transaction, None, 1.0)
                    conn.sendall(writer.chunks(Message(COMMAND_AMF0, 0, 0, result), 3))
                elif name == "publish" and self.mode == "reset_after_publish":
                    conn.sendall(writer.chunks(_on_status("NetStream.Publish.Start"), 5))
                    # No linger: the close sends a RST, the publisher's next send fails.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif name == "play":
                    conn.sendall(writer.chunks(_on_status("NetStream.Play.Start"), 5))
                    self._flood(conn, writer)
                    return

    def _flood(self, conn: socket.socket, writer: ChunkWriter) -> None:
        """64 chunk streams, a 64 KiB chunk of each one's 1 MB message in turn, never ending."""
        conn.sendall(writer.chunks(Message(SET_CHUNK_SIZE, 0, 0, struct.pack(">I", CHUNK)), 2))
        csids = range(4, 4 + STREAMS)
        body = bytes(CHUNK)
        for n in range(MESSAGE // CHUNK - 1):
            for csid in csids:
                if n == 0:  # type 0: a 1 MB video message starts
                    head = _basic(0, csid) + bytes(3) + MESSAGE.to_bytes(3, "big")
                    head += bytes([VIDEO]) + (1).to_bytes(4, "little")
                else:  # type 3: more of it
                    head = _basic(3, csid)
                conn.sendall(head + body)
                self.sent_partial += len(body)
        gevent.sleep(60)  # and then nothing: the messages never end


def _on_status(code: str) -> Message:
    """An ``onStatus`` command with ``code``, on the stream (id 1)."""
    status: amf0.Value = {"level": "status", "code": code}
    return Message(COMMAND_AMF0, 1, 0, amf0.encode("onStatus", 0.0, None, status))


def _basic(fmt: int, csid: int) -> bytes:
    """A chunk basic header (RTMP §5.3.1.1): one byte up to id 63, two up to 319."""
    return bytes([fmt << 6 | csid]) if csid < 64 else bytes([fmt << 6, csid - 64])


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = conn.recv(n - len(buf))
        if not data:
            raise ConnectionResetError("peer closed")
        buf += data
    return bytes(buf)
