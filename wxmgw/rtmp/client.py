"""RTMP on the gevent hub: the chunk stream and a client that plays or publishes one stream.

Adobe's RTMP specification (1.0, 2012): §5.2 the handshake, §5.3 chunking,
§5.4 protocol control messages, §6.2 user control events, §7.2 commands.
``rtmps://`` is the same session over TLS (Python's ``ssl`` on the gevent
socket), with SNI and the server's certificate checked unless told not to.

The wire is the pure modules' (:mod:`~wxmgw.rtmp.chunk`,
:mod:`~wxmgw.rtmp.commands`, :mod:`~wxmgw.rtmp.amf0`). :class:`RtmpClient`
runs them over a gevent socket: a play session costs no thread, and reading it
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
from typing import Final

import gevent

from wxmgw.errors import InvalidArgument
from wxmgw.hubloop import media_socket
from wxmgw.rtmp import amf0, commands
from wxmgw.rtmp.chunk import (
    ABORT,
    ACKNOWLEDGEMENT,
    AUDIO,
    COMMAND_AMF0,
    DATA_AMF0,
    DEFAULT_LIMITS,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkWriter,
    Message,
    RtmpLimits,
)
from wxmgw.rtmp.chunkreader import ChunkReader
from wxmgw.rtmp.commands import Command
from wxmgw.rtmp.url import RtmpUrl

# User control events (§6.2).
_STREAM_BEGIN: Final = 0
_STREAM_EOF: Final = 1
_SET_BUFFER_LENGTH: Final = 3
_PING_REQUEST: Final = 6
_PING_RESPONSE: Final = 7

_HANDSHAKE_SIZE: Final = 1536
_OUR_CHUNK_SIZE: Final = 4096
_CONTROL_CSID: Final = 2
_COMMAND_CSID: Final = 3
_BUFFER_MS: Final = 3000
_RECV_SIZE: Final = 65536
#: Chunk stream ids of the published messages, as FFmpeg chooses them.
_MEDIA_CSID: Final = {AUDIO: 4, DATA_AMF0: 5, VIDEO: 6}


def tls_context(limits: RtmpLimits) -> ssl.SSLContext:
    """The TLS client context of an ``rtmps://`` session under ``limits``."""
    try:
        context = ssl.create_default_context(cafile=limits.tls_ca_file)
    except OSError as e:
        raise InvalidArgument(f"rtmps CA file {limits.tls_ca_file}: {e}") from None
    if not limits.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


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
    ``limits`` allow, is :class:`~wxmgw.errors.ParseError`.
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
            self._command(commands.play(self.url.stream), self._stream_id)
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
        self._socket().settimeout(None)
        self._stall_after = read_timeout

    def publish(self) -> None:
        """Connect and start publishing (live); raises when the server refuses."""
        with self._opening("publish"):
            self._open()
            self._command(commands.publish(self.url.stream), self._stream_id)
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
            context = tls_context(self._limits)
            try:
                self._sock = context.wrap_socket(self._sock, server_hostname=url.host)
            except ssl.SSLCertVerificationError as e:
                raise RtmpError(
                    f"rtmps: certificate of {url.host} refused: {e.verify_message}"
                ) from None
        media_socket(self._sock)
        self._handshake()
        self._send(SET_CHUNK_SIZE, _OUR_CHUNK_SIZE.to_bytes(4, "big"))
        self._writer.chunk_size = _OUR_CHUNK_SIZE
        self._command(commands.connect(self._next_transaction(), self.url))
        self._result()
        self._command(commands.create_stream(self._next_transaction()))
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

    def receive(self) -> list[Message]:
        """The messages of the next bytes received (at least one), none handled yet.

        For a player that takes a whole read at once: it hands what is not
        audio or video to :meth:`handle`, in order.
        """
        if self._pending:
            messages = list(self._pending)
            self._pending.clear()
            return messages
        while True:
            sock = self._socket()
            if self._stall_after is not None and time.monotonic() >= self._stall_rearm:
                self._watch_stall(self._stall_after)
            data = sock.recv(_RECV_SIZE)
            if not data:
                raise RtmpError("connection closed by the server")
            self.bytes_received += len(data)
            if self._window and self.bytes_received - self._acked >= self._window:
                self._acknowledge()
            messages = self._reader.feed(data)
            if messages:
                return messages

    def handle(self, message: Message) -> None:
        """What :meth:`read` does with a message that is not media: answer a
        ping, take a window size, raise at the end of the stream or an error."""
        if not self._control(message):
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

    def _socket(self) -> socket.socket:
        """The session's socket; ``RtmpError`` once it is closed, which another
        greenlet may do while this one waits (a writer's listener, say)."""
        if self._sock is None:
            raise RtmpError("the session is closed")
        return self._sock

    def _next(self) -> Message:
        """The next message, protocol control handled here."""
        while True:
            if not self._pending:
                self._pending.extend(self.receive())
            message = self._pending.popleft()
            if not self._control(message):
                return message

    def _watch_stall(self, limit: float) -> None:
        """Renew the stall timer (due at ``_stall_rearm``)."""
        # A new timer each time: libev resumes a stopped one where it was.
        if self._stall is not None:
            self._stall.close()
        stalled = TimeoutError(f"nothing read in {limit} s")
        self._stall = gevent.Timeout.start_new(limit, stalled)
        self._stall_rearm = time.monotonic() + limit / 2

    def _acknowledge(self) -> None:
        """A window's worth received since the last Acknowledgement (§5.4.3): send one."""
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
        command = self._command_in(message)
        if command is None or command.name != "onStatus":
            return ""
        info = command.info
        code = str(info.get("code", ""))
        if info.get("level") == "error" or code in ("NetStream.Play.Stop",
                                                   "NetStream.Play.UnpublishNotify"):
            raise RtmpError(f"{code}: {info.get('description', '')}".rstrip(": "))
        return code

    def _result(self) -> amf0.Value:
        """Wait for the answer to the last command: its first value after the command object."""
        while True:
            command = self._command_in(self._next())
            if command is None or command.transaction != float(self._transaction):
                continue
            if command.name == "_error":
                raise RtmpError(str(command.info.get("code", "_error")))
            if command.name == "_result":
                return command.result

    def _next_transaction(self) -> int:
        self._transaction += 1
        return self._transaction

    def _command_in(self, message: Message) -> Command | None:
        """The command a message carries, if it is a command message."""
        if message.type_id != COMMAND_AMF0:
            return None
        return Command.parse(message.payload, self._reader.limits.amf0_depth)

    def _command(self, command: Command, stream_id: int = 0) -> None:
        self._send(COMMAND_AMF0, bytes(command), stream_id)

    def _user_control(self, event: int, data: bytes) -> None:
        self._send(USER_CONTROL, event.to_bytes(2, "big") + data)

    def _send(self, type_id: int, payload: bytes, stream_id: int = 0) -> None:
        csid = _CONTROL_CSID if type_id < COMMAND_AMF0 and stream_id == 0 else _COMMAND_CSID
        self._sendall(self._writer.chunks(Message(type_id, stream_id, 0, payload), csid))

    def _sendall(self, data: bytes) -> None:
        # Not gevent's sendall(): it asks the kernel for SO_SNDBUF on every call,
        # a system call per message that cost as much as the send itself.
        sock = self._socket()
        view = memoryview(data)
        while view:
            view = view[sock.send(view) :]

    def _recv_exactly(self, n: int) -> bytes:
        sock = self._socket()
        buf = bytearray()
        while len(buf) < n:
            data = sock.recv(n - len(buf))
            if not data:
                raise RtmpError("connection closed during the handshake")
            buf += data
        return bytes(buf)
