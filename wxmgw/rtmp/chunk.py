"""The RTMP chunk stream (Adobe RTMP 1.0, §5.3): messages cut into chunks and put back together.

:class:`ChunkReader` takes received bytes and gives whole messages,
:class:`ChunkWriter` the reverse; Set Chunk Size and Abort (§5.4.1, §5.4.2)
are applied by the reader as they arrive. :class:`RtmpLimits` bound what a
peer can make a session hold. Pure: no sockets, no gevent, no logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from wxmgw.errors import InvalidArgument, ParseError
from wxmgw.rtmp import amf0

# Message type ids (§5.4, §7.1).
SET_CHUNK_SIZE: Final = 1
ABORT: Final = 2
ACKNOWLEDGEMENT: Final = 3
USER_CONTROL: Final = 4
WINDOW_ACK_SIZE: Final = 5
SET_PEER_BANDWIDTH: Final = 6
AUDIO: Final = 8
VIDEO: Final = 9
DATA_AMF0: Final = 18
COMMAND_AMF0: Final = 20
AGGREGATE: Final = 22
#: The message types that carry media, which :attr:`RtmpLimits.max_media_message` bounds.
_MEDIA_TYPES: Final = frozenset((AUDIO, VIDEO, AGGREGATE))

#: The chunk size of a new session, both ways (§5.4.1).
DEFAULT_CHUNK_SIZE: Final = 128
_MAX_CHUNK_SIZE: Final = 0x7FFFFFFF
#: A message header's 24-bit length can declare up to this (§5.3.1.2.1).
_MAX_LENGTH: Final = 0xFFFFFF
_EXTENDED: Final = 0xFFFFFF
#: The message header's length for each chunk type fmt 0..3 (§5.3.1.2).
_HEADER_SIZE: Final = (11, 7, 3, 0)


@dataclass(frozen=True, slots=True)
class Message:
    """One RTMP message: ``timestamp`` in milliseconds (32-bit, wrapping)."""

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RtmpLimits:
    """How much one RTMP session may make the gateway hold; past a limit, :class:`ParseError`.

    The chunk stream itself bounds little: up to 65,599 chunk stream ids
    (§5.3.1.1), each with a partial message of up to 16 MB (the message
    header's 24-bit length, §5.3.1.2.1). A message's length is checked as its
    header arrives, before any of its bytes are kept. Commands, data and
    control messages (everything but audio, video and aggregates) are small:
    their cap is much lower. ``amf0_depth`` bounds the nesting of a decoded
    command (:func:`~wxmgw.rtmp.amf0.decode`). ``max_backlog`` is how far
    behind live (seconds) a pull's audio may be kept: what a burst brings from
    further back is dropped (:mod:`wxmgw.media.rtmp_reader`).

    An ``rtmps://`` session checks the server's certificate against the
    system's CAs, or ``tls_ca_file``'s (PEM), unless ``tls_verify`` is off
    (a private deployment with a certificate of its own and no CA):
    :func:`~wxmgw.rtmp.client.tls_context`.
    """

    max_media_message: int = 2 << 20
    max_command_message: int = 64 << 10
    #: Partial messages of all chunk streams together, and the chunk being waited for.
    max_buffered: int = 4 << 20
    max_chunk_streams: int = 32
    amf0_depth: int = amf0.MAX_DEPTH
    max_backlog: float = 0.1
    tls_ca_file: str | None = None
    tls_verify: bool = True

    def __post_init__(self) -> None:
        for name in ("max_media_message", "max_command_message"):
            if not 1 <= getattr(self, name) <= _MAX_LENGTH:
                raise InvalidArgument(f"rtmp {name} must be 1-{_MAX_LENGTH} (a 24-bit length)")
        if self.max_buffered < max(self.max_media_message, self.max_command_message):
            raise InvalidArgument("rtmp max_buffered must hold the largest message")
        if self.max_chunk_streams < 1 or self.amf0_depth < 1:
            raise InvalidArgument("rtmp max_chunk_streams and amf0_depth must be positive")
        if not 0.02 <= self.max_backlog <= 5:
            raise InvalidArgument("rtmp max_backlog must be 0.02-5 seconds")

    def max_message(self, type_id: int) -> int:
        """The largest message of type ``type_id`` a session takes."""
        return self.max_media_message if type_id in _MEDIA_TYPES else self.max_command_message


DEFAULT_LIMITS: Final = RtmpLimits()


@dataclass(slots=True)
class _InStream:
    """What a chunk stream id remembers between chunks (§5.3.1.2)."""

    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    body: bytearray = field(default_factory=bytearray)


class ChunkReader:
    """Chunks in, messages out; Set Chunk Size and Abort are applied as they arrive.

    What it holds is bounded by ``limits``: a peer past one gets a
    :class:`ParseError` as soon as the header that crosses it has arrived.
    Past the buffered partial messages, it keeps at most one received
    buffer's worth of bytes that do not make a whole chunk yet.
    """

    def __init__(self, limits: RtmpLimits = DEFAULT_LIMITS) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.limits = limits
        self._buf = bytearray()
        self._streams: dict[int, _InStream] = {}
        self._buffered = 0  # bytes of partial messages, all chunk streams together

    @property
    def buffered(self) -> int:
        """Bytes held: partial messages and received bytes not parsed yet."""
        return self._buffered + len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Take received bytes; return the messages they complete, in order."""
        self._buf += data
        out: list[Message] = []
        pos = 0
        while (end := self._chunk(pos, out)) is not None:
            pos = end
        del self._buf[:pos]
        return out

    def _chunk(self, pos: int, out: list[Message]) -> int | None:
        """Parse the chunk at ``pos``: its end, or None when it is not all there yet."""
        buf = self._buf
        if pos >= len(buf):
            return None
        fmt, csid = buf[pos] >> 6, buf[pos] & 0x3F
        pos += 1
        if csid < 2:  # 2- and 3-byte basic headers (§5.3.1.1)
            size = 1 + csid
            if pos + size > len(buf):
                return None
            csid = 64 + buf[pos] + (buf[pos + 1] << 8 if size == 2 else 0)
            pos += size
        header = _HEADER_SIZE[fmt]
        if pos + header > len(buf):
            return None
        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise ParseError(f"chunk stream {csid} starts with a type {fmt} chunk")
            if len(self._streams) >= self.limits.max_chunk_streams:
                raise ParseError(f"more than {self.limits.max_chunk_streams} chunk streams")
            state = self._streams[csid] = _InStream()
        ts = int.from_bytes(buf[pos : pos + 3], "big") if fmt < 3 else 0
        if fmt < 3:
            state.extended = ts == _EXTENDED
        if state.extended:
            if pos + header + 4 > len(buf):
                return None
            ts = int.from_bytes(buf[pos + header : pos + header + 4], "big")
        new_message = not state.body
        length = state.length
        if fmt < 2:
            length = int.from_bytes(buf[pos + 3 : pos + 6], "big")
            if length > self.limits.max_message(buf[pos + 6]):
                raise ParseError(
                    f"message of {length} bytes (type {buf[pos + 6]}) on chunk stream {csid}"
                )
        remaining = length if new_message else state.length - len(state.body)
        take = min(self.chunk_size, remaining)
        if self._buffered + take > self.limits.max_buffered:
            raise ParseError(f"more than {self.limits.max_buffered} bytes of partial messages")
        start = pos + header + (4 if state.extended else 0)
        if start + take > len(buf):
            return None
        # The chunk is all there: only now update the stream's state.
        if fmt < 2:
            state.length = length
            state.type_id = buf[pos + 6]
        if fmt == 0:
            state.stream_id = int.from_bytes(buf[pos + 7 : pos + 11], "little")
            state.timestamp, state.delta = ts, 0
        elif fmt < 3 or (new_message and state.extended):
            state.delta = ts
            state.timestamp = (state.timestamp + ts) & 0xFFFFFFFF
        elif new_message:  # type 3 starting a message: the previous delta again
            state.timestamp = (state.timestamp + state.delta) & 0xFFFFFFFF
        state.body += buf[start : start + take]
        self._buffered += take
        if len(state.body) >= state.length:
            message = Message(state.type_id, state.stream_id, state.timestamp, bytes(state.body))
            self._buffered -= len(state.body)
            state.body.clear()
            self._control(message)
            out.append(message)
        return start + take

    def _control(self, message: Message) -> None:
        if message.type_id == SET_CHUNK_SIZE and len(message.payload) >= 4:
            size = int.from_bytes(message.payload[:4], "big") & _MAX_CHUNK_SIZE
            if size < 1:
                raise ParseError("chunk size 0")
            self.chunk_size = size
        elif message.type_id == ABORT and len(message.payload) >= 4:
            state = self._streams.get(int.from_bytes(message.payload[:4], "big"))
            if state is not None:
                self._buffered -= len(state.body)
                state.body.clear()


class ChunkWriter:
    """Messages out as chunks: type 0 for each message's first chunk, type 3 after."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size

    def chunks(self, message: Message, csid: int) -> bytes:
        assert 2 <= csid <= 63, csid
        ts = message.timestamp & 0xFFFFFFFF
        extended = ts >= _EXTENDED
        ext = ts.to_bytes(4, "big") if extended else b""
        head = bytes([csid]) + (_EXTENDED if extended else ts).to_bytes(3, "big")
        head += len(message.payload).to_bytes(3, "big") + bytes([message.type_id])
        head += message.stream_id.to_bytes(4, "little") + ext
        more = bytes([0xC0 | csid]) + ext
        payload = message.payload
        parts = [head, payload[: self.chunk_size]]
        for i in range(self.chunk_size, len(payload), self.chunk_size):
            parts += (more, payload[i : i + self.chunk_size])
        return b"".join(parts)
