r"""The RTMP chunk stream (Adobe RTMP 1.0, §5.3): messages cut into chunks and put back together.

:class:`~wxmgw.rtmp.chunkreader.ChunkReader` (compiled, every received byte
goes through it) takes received bytes and gives whole :class:`Message`\ s,
applying Set Chunk Size and Abort (§5.4.1, §5.4.2) as they arrive;
:class:`ChunkWriter` does the reverse. :class:`RtmpLimits` bound what a peer
can make a session hold. Pure: no sockets, no gevent, no logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from wxmgw.errors import InvalidArgument
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


@dataclass(slots=True)
class Message:
    """One RTMP message: ``timestamp`` in milliseconds (32-bit, wrapping).

    Not frozen: one is made for every message received, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (534 against 152 ns). Nothing changes one once made.
    """

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
