"""RTMP on the gevent hub: the chunk stream and a client that plays or publishes one stream.

Adobe's RTMP specification (1.0, 2012): §5.2 the handshake, §5.3 chunking,
§5.4 protocol control messages, §6.2 user control events, §7.2 commands.
``rtmps://`` is the same session over TLS (Python's ``ssl`` on the gevent
socket), with SNI and the server's certificate checked unless told not to.

The chunk stream is pure (:class:`ChunkReader` takes bytes and gives
messages, :class:`ChunkWriter` the reverse). :class:`RtmpClient` runs them
over a gevent socket: a play session costs no thread, and reading it
neither takes nor hands over the GIL. That is the point of not using
FFmpeg's RTMP client here: it blocks, so it needs a native thread per
stream, and with dozens of threads every PyAV call that releases the GIL
became two context switches (measured: most of the process's CPU at ten
legs was kernel scheduling).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import gevent

from wxmgw.errors import InvalidArgument, ParseError
from wxmgw.media import amf0

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

# User control events (§6.2).
_STREAM_BEGIN: Final = 0
_STREAM_EOF: Final = 1
_SET_BUFFER_LENGTH: Final = 3
_PING_REQUEST: Final = 6
_PING_RESPONSE: Final = 7

DEFAULT_PORT: Final = 1935
#: rtmps:// without a port: RTMP over TLS is usually served on HTTPS's port.
DEFAULT_TLS_PORT: Final = 443
_HANDSHAKE_SIZE: Final = 1536
_DEFAULT_CHUNK_SIZE: Final = 128
_OUR_CHUNK_SIZE: Final = 4096
_MAX_CHUNK_SIZE: Final = 0x7FFFFFFF
#: A message header's 24-bit length can declare up to this (§5.3.1.2.1).
_MAX_LENGTH: Final = 0xFFFFFF
_EXTENDED: Final = 0xFFFFFF
_CONTROL_CSID: Final = 2
_COMMAND_CSID: Final = 3
_BUFFER_MS: Final = 3000
_RECV_SIZE: Final = 65536
#: Chunk stream ids of the published messages, as FFmpeg chooses them.
_MEDIA_CSID: Final = {AUDIO: 4, DATA_AMF0: 5, VIDEO: 6}
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
    command (:func:`~wxmgw.media.amf0.decode`). ``max_backlog`` is how far
    behind live (seconds) a pull's audio may be kept: what a burst brings from
    further back is dropped (:mod:`wxmgw.media.rtmp_reader`).

    An ``rtmps://`` session checks the server's certificate against the
    system's CAs, or ``tls_ca_file``'s (PEM), unless ``tls_verify`` is off
    (a private deployment with a certificate of its own and no CA).
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

    def tls_context(self) -> ssl.SSLContext:
        """The TLS client context of an ``rtmps://`` session."""
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file)
        except OSError as e:
            raise InvalidArgument(f"rtmps CA file {self.tls_ca_file}: {e}") from None
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


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
        self.chunk_size = _DEFAULT_CHUNK_SIZE
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

    def __init__(self, chunk_size: int = _DEFAULT_CHUNK_SIZE) -> None:
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


@dataclass(frozen=True, slots=True)
class RtmpUrl:
    """``rtmp[s]://host[:port]/app[/instance]/stream[?query]`` as FFmpeg splits it.

    The query stays on the stream name, as FFmpeg sends it in ``play`` and
    ``publish`` (cloud live services authenticate with it: ``?txSecret=…``);
    ``tcUrl`` has none.
    """

    host: str
    port: int
    app: str
    stream: str
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RtmpUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("rtmp", "rtmps") or not parts.hostname:
            raise ParseError(f"not an rtmp:// or rtmps:// URL: {url!r}")
        segments = parts.path.lstrip("/").split("/")
        app_segments = 1 if len(segments) == 2 else 2
        if len(segments) < 2 or not segments[-1]:
            raise ParseError(f"RTMP URL without app and stream name: {url!r}")
        app = "/".join(segments[:app_segments])
        stream = "/".join(segments[app_segments:])
        if parts.query:
            stream += "?" + parts.query
        tls = parts.scheme == "rtmps"
        port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
        return cls(parts.hostname, port, app, stream, tls)

    @property
    def tc_url(self) -> str:
        return f"{'rtmps' if self.tls else 'rtmp'}://{self.host}:{self.port}/{self.app}"


class RtmpError(Exception):
    """The server refused or ended the session (its status code is the message)."""


class RtmpClient:
    """One RTMP connection that plays or publishes one stream, on gevent sockets.

    :meth:`play` connects, shakes hands, and asks for the stream; then
    :meth:`read` returns its audio, video and data messages one at a time,
    answering pings and acknowledging bytes on the way. :meth:`publish`
    starts a live publication that :meth:`send` feeds. ``timeout`` bounds
    the whole opening (an :class:`RtmpError` past it) and every send. Socket
    errors and timeouts propagate (``OSError``); a refusal or the end of the
    stream is :class:`RtmpError`; garbage from the server, or more than
    ``limits`` allow, is :class:`ParseError`.
    """

    def __init__(self, url: str, timeout: float, limits: RtmpLimits = DEFAULT_LIMITS) -> None:
        self.url = RtmpUrl.parse(url)
        self.bytes_received = 0
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._limits = limits
        self._reader = ChunkReader(limits)
        self._writer = ChunkWriter()
        self._pending: deque[Message] = deque()
        self._stream_id = 0
        self._window = 0
        self._acked = 0
        self._transaction = 0
        self._stall: gevent.Timeout | None = None
        self._stall_rearm = 0.0
        self._stall_after: float | None = None

    def play(self, read_timeout: float) -> None:
        """Connect and start playing; raises when the stream cannot be played.

        From then on, a server that sends nothing for ``read_timeout`` ends
        the session (``TimeoutError`` in the playing greenlet). A timer
        renewed at most every ``read_timeout / 2`` as data comes watches
        that, rather than one timer per read (5 % of a puller's CPU); so a
        stall is seen ``read_timeout / 2`` to ``read_timeout`` after the last
        data. :meth:`close` disarms it.
        """
        with self._opening("play"):
            self._open()
            self._command(self._stream_id, "play", 0, None, self.url.stream, -1000.0)
            self._user_control(
                _SET_BUFFER_LENGTH, struct.pack(">II", self._stream_id, _BUFFER_MS)
            )
            while True:
                message = self._next()
                if message.type_id in (AUDIO, VIDEO):
                    self._pending.appendleft(message)  # media before the status: keep it
                    break
                if self._status(message) == "NetStream.Play.Start":
                    break
        assert self._sock is not None
        self._sock.settimeout(None)
        self._stall_after = read_timeout

    def publish(self) -> None:
        """Connect and start publishing (live); raises when the server refuses."""
        with self._opening("publish"):
            self._open()
            self._command(self._stream_id, "publish", 0, None, self.url.stream, "live")
            while self._status(self._next()) != "NetStream.Publish.Start":
                pass

    def send(self, type_id: int, timestamp: int, payload: bytes) -> None:
        """Send one audio, video or data message of the published stream."""
        csid = _MEDIA_CSID[type_id]
        message = Message(type_id, self._stream_id, timestamp, payload)
        self._sendall(self._writer.chunks(message, csid))

    def _opening(self, what: str) -> gevent.Timeout:
        return gevent.Timeout(self._timeout, RtmpError(f"no answer to {what} in time"))

    def _open(self) -> None:
        """TCP (and TLS), handshake, ``connect`` and ``createStream`` (§7.2.1.1, §7.2.1.3).

        A certificate the server's TLS is refused for is an :class:`RtmpError`
        that says why.
        """
        url = self.url
        self._sock = socket.create_connection((url.host, url.port), self._timeout)
        self._sock.settimeout(self._timeout)
        if url.tls:
            context = self._limits.tls_context()
            try:
                self._sock = context.wrap_socket(self._sock, server_hostname=url.host)
            except ssl.SSLCertVerificationError as e:
                raise RtmpError(
                    f"rtmps: certificate of {url.host} refused: {e.verify_message}"
                ) from None
        self._handshake()
        self._send(SET_CHUNK_SIZE, _OUR_CHUNK_SIZE.to_bytes(4, "big"))
        self._writer.chunk_size = _OUR_CHUNK_SIZE
        self._call("connect", {
            "app": self.url.app, "type": "nonprivate", "flashVer": "LNX 9,0,124,2",
            "tcUrl": self.url.tc_url, "fpad": False, "capabilities": 15.0,
            "audioCodecs": 4071.0, "videoCodecs": 252.0, "videoFunction": 1.0,
        })
        self._result()
        self._call("createStream", None)
        stream_id = self._result()
        if not isinstance(stream_id, float):
            raise RtmpError(f"createStream answered {stream_id!r}")
        self._stream_id = int(stream_id)

    def read(self) -> Message:
        """The next audio, video or data message of the stream.

        A publisher calls it too, to answer pings and see the server's
        status: it then returns nothing until the session ends.
        """
        while True:
            message = self._next()
            if message.type_id in (AUDIO, VIDEO, DATA_AMF0):
                return message
            self._status(message)

    def close(self) -> None:
        self._stall_after = None
        if self._stall is not None:
            self._stall.close()
            self._stall = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the session -----------------------------------------------------------

    def _handshake(self) -> None:
        """§5.2.2: C0+C1, S0+S1+S2, C2. Zeros in C1's version field ask for the plain one."""
        c1 = struct.pack(">II", int(time.monotonic() * 1000) & 0xFFFFFFFF, 0)
        c1 += os.urandom(_HANDSHAKE_SIZE - 8)
        self._sendall(b"\x03" + c1)
        s0s1s2 = self._recv_exactly(1 + 2 * _HANDSHAKE_SIZE)
        if s0s1s2[0] != 3:
            raise RtmpError(f"server speaks RTMP version {s0s1s2[0]}")
        self._sendall(s0s1s2[1 : 1 + _HANDSHAKE_SIZE])  # C2 echoes S1

    def _next(self) -> Message:
        """The next message, protocol control handled here."""
        while True:
            while not self._pending:
                assert self._sock is not None
                if self._stall_after is not None:
                    self._watch_stall(self._stall_after)
                data = self._sock.recv(_RECV_SIZE)
                if not data:
                    raise RtmpError("connection closed by the server")
                self._received(len(data))
                self._pending.extend(self._reader.feed(data))
            message = self._pending.popleft()
            if not self._control(message):
                return message

    def _watch_stall(self, limit: float) -> None:
        now = time.monotonic()
        if now >= self._stall_rearm:
            # A new timer each time: libev resumes a stopped one where it was.
            if self._stall is not None:
                self._stall.close()
            stalled = TimeoutError(f"nothing read in {limit} s")
            self._stall = gevent.Timeout.start_new(limit, stalled)
            self._stall_rearm = now + limit / 2

    def _received(self, n: int) -> None:
        self.bytes_received += n
        if self._window and self.bytes_received - self._acked >= self._window:
            self._acked = self.bytes_received
            self._send(ACKNOWLEDGEMENT, (self._acked & 0xFFFFFFFF).to_bytes(4, "big"))

    def _control(self, message: Message) -> bool:
        """Handle a protocol control or user control message; False for the others."""
        kind, payload = message.type_id, message.payload
        if kind == WINDOW_ACK_SIZE and len(payload) >= 4:
            self._window = int.from_bytes(payload[:4], "big")
        elif kind == USER_CONTROL and len(payload) >= 2:
            event = int.from_bytes(payload[:2], "big")
            if event == _PING_REQUEST:
                self._user_control(_PING_RESPONSE, payload[2:6])
            elif event == _STREAM_EOF:
                raise RtmpError("NetStream.Play.Stop: end of the stream")
        elif kind not in (SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, SET_PEER_BANDWIDTH):
            return False
        return True

    def _status(self, message: Message) -> str:
        """The code of an onStatus command; raises for an error or the end of play."""
        if message.type_id != COMMAND_AMF0:
            return ""
        values = amf0.decode(message.payload, self._reader.limits.amf0_depth)
        if not values or values[0] != "onStatus":
            return ""
        info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
        code = str(info.get("code", ""))
        if info.get("level") == "error" or code in ("NetStream.Play.Stop",
                                                   "NetStream.Play.UnpublishNotify"):
            raise RtmpError(f"{code}: {info.get('description', '')}".rstrip(": "))
        return code

    def _result(self) -> amf0.Value:
        """Wait for the answer to the last command: its first value after the command object."""
        while True:
            message = self._next()
            if message.type_id != COMMAND_AMF0:
                continue
            values = amf0.decode(message.payload, self._reader.limits.amf0_depth)
            if len(values) < 2 or values[1] != float(self._transaction):
                continue
            if values[0] == "_error":
                info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
                raise RtmpError(str(info.get("code", "_error")))
            if values[0] == "_result":
                return values[3] if len(values) > 3 else None

    def _call(self, name: str, argument: amf0.Value) -> None:
        self._transaction += 1
        self._command(0, name, self._transaction, argument)

    def _command(self, stream_id: int, name: str, transaction: int, *args: amf0.Value) -> None:
        self._send(COMMAND_AMF0, amf0.encode(name, float(transaction), *args), stream_id)

    def _user_control(self, event: int, data: bytes) -> None:
        self._send(USER_CONTROL, event.to_bytes(2, "big") + data)

    def _send(self, type_id: int, payload: bytes, stream_id: int = 0) -> None:
        csid = _CONTROL_CSID if type_id < COMMAND_AMF0 and stream_id == 0 else _COMMAND_CSID
        self._sendall(self._writer.chunks(Message(type_id, stream_id, 0, payload), csid))

    def _sendall(self, data: bytes) -> None:
        # Not gevent's sendall(): it asks the kernel for SO_SNDBUF on every call,
        # a system call per message that cost as much as the send itself.
        assert self._sock is not None
        view = memoryview(data)
        while view:
            view = view[self._sock.send(view) :]

    def _recv_exactly(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            data = self._sock.recv(n - len(buf))
            if not data:
                raise RtmpError("connection closed during the handshake")
            buf += data
        return bytes(buf)
