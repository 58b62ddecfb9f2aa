# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The RTMP chunk stream's reader (Adobe RTMP 1.0, §5.3), compiled: chunks in, messages out.

Every byte a live server sends a pull leg passes through here, 30 reads and
60 messages a second per leg, and any of them may be hostile: the reader is
C over the received bytes, with Python objects only for what it returns (a
:class:`~wxmgw.rtmp.chunk.Message`) and for a message cut into several
chunks. The wire format, the limits and the writer are in
:mod:`wxmgw.rtmp.chunk`.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t

from wxmgw.errors import ParseError
from wxmgw.rtmp.chunk import (
    ABORT,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LIMITS,
    SET_CHUNK_SIZE,
    Message,
)

cdef enum:
    _EXTENDED = 0xFFFFFF  # a 24-bit timestamp field that says: 4 more bytes (§5.3.1.3)
    _MAX_CHUNK_SIZE = 0x7FFFFFFF
    _NOT_THERE = -1  # what _chunk answers for a chunk not all received yet


# chunk.py's control message types, as C ints.
cdef int _SET_CHUNK_SIZE = SET_CHUNK_SIZE, _ABORT = ABORT


cdef inline Py_ssize_t _header_size(int fmt):
    """The message header's length of chunk type ``fmt`` (§5.3.1.2)."""
    return 11 if fmt == 0 else 7 if fmt == 1 else 3 if fmt == 2 else 0


cdef inline uint32_t _be24(const unsigned char *p):
    return (p[0] << 16) | (p[1] << 8) | p[2]


cdef inline uint32_t _be32(const unsigned char *p):
    return (<uint32_t>p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]


cdef class _InStream:
    """What a chunk stream id remembers between chunks (§5.3.1.2).

    ``body`` holds a message cut into several chunks; one that comes whole
    in its first chunk never goes through it.
    """

    cdef uint32_t timestamp, delta, length, stream_id
    cdef int type_id
    cdef bint extended
    cdef bytearray body

    def __cinit__(self):
        self.body = bytearray()


cdef class ChunkReader:
    """Chunks in, messages out; Set Chunk Size and Abort are applied as they arrive.

    What it holds is bounded by ``limits`` (an
    :class:`~wxmgw.rtmp.chunk.RtmpLimits`): a peer past one gets a
    :class:`~wxmgw.errors.ParseError` as soon as the header that crosses it
    has arrived. Past the buffered partial messages, it keeps at most one
    received buffer's worth of bytes that do not make a whole chunk yet.
    """

    cdef public Py_ssize_t chunk_size
    cdef readonly object limits
    cdef bytearray _buf
    cdef dict _streams
    cdef Py_ssize_t _buffered  # bytes of partial messages, all chunk streams together
    cdef Py_ssize_t _max_buffered, _max_streams
    cdef uint32_t _max_message[256]  # limits.max_message of each type id

    def __init__(self, limits=DEFAULT_LIMITS):
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.limits = limits
        self._buf = bytearray()
        self._streams = {}
        self._buffered = 0
        self._max_buffered = limits.max_buffered
        self._max_streams = limits.max_chunk_streams
        for type_id in range(256):
            self._max_message[type_id] = min(limits.max_message(type_id), 0xFFFFFF)

    @property
    def buffered(self):
        """Bytes held: partial messages and received bytes not parsed yet."""
        return self._buffered + len(self._buf)

    def feed(self, data):
        """Take received bytes; return the messages they complete, in order."""
        self._buf += data
        out = []
        cdef Py_ssize_t pos = 0, end
        while True:
            end = self._chunk(pos, out)
            if end == _NOT_THERE:
                break
            pos = end
        if pos:
            del self._buf[:pos]
        return out

    cdef Py_ssize_t _chunk(self, Py_ssize_t pos, list out) except -2:
        """Parse the chunk at ``pos``: its end, or _NOT_THERE when it is not all there yet."""
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._buf), header, start, take
        cdef Py_ssize_t remaining
        cdef const unsigned char *buf = <const unsigned char *>PyByteArray_AS_STRING(self._buf)
        cdef int fmt, csid, extra, type_id
        cdef uint32_t ts = 0, length
        cdef bint new_message
        cdef bytes payload
        cdef _InStream state
        if pos >= size:
            return _NOT_THERE
        fmt, csid = buf[pos] >> 6, buf[pos] & 0x3F
        pos += 1
        if csid < 2:  # 2- and 3-byte basic headers (§5.3.1.1)
            extra = 1 + csid
            if pos + extra > size:
                return _NOT_THERE
            csid = 64 + buf[pos] + ((buf[pos + 1] << 8) if extra == 2 else 0)
            pos += extra
        header = _header_size(fmt)
        if pos + header > size:
            return _NOT_THERE
        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise ParseError(f"chunk stream {csid} starts with a type {fmt} chunk")
            if len(self._streams) >= self._max_streams:
                raise ParseError(f"more than {self._max_streams} chunk streams")
            state = self._streams[csid] = _InStream()
        if fmt < 3:
            ts = _be24(buf + pos)
            state.extended = ts == _EXTENDED
        if state.extended:
            if pos + header + 4 > size:
                return _NOT_THERE
            ts = _be32(buf + pos + header)
        new_message = PyByteArray_GET_SIZE(state.body) == 0
        length = state.length
        type_id = state.type_id
        if fmt < 2:
            length = _be24(buf + pos + 3)
            type_id = buf[pos + 6]
            if length > self._max_message[type_id]:
                raise ParseError(
                    f"message of {length} bytes (type {type_id}) on chunk stream {csid}"
                )
        remaining = length if new_message else state.length - PyByteArray_GET_SIZE(state.body)
        take = min(self.chunk_size, remaining)
        if self._buffered + take > self._max_buffered:
            raise ParseError(f"more than {self._max_buffered} bytes of partial messages")
        start = pos + header + (4 if state.extended else 0)
        if start + take > size:
            return _NOT_THERE
        # The chunk is all there: only now update the stream's state.
        if fmt < 2:
            state.length = length
            state.type_id = type_id
        if fmt == 0:
            state.stream_id = buf[pos + 7] | (buf[pos + 8] << 8) | (buf[pos + 9] << 16) | (
                <uint32_t>buf[pos + 10] << 24)
            state.timestamp, state.delta = ts, 0
        elif fmt < 3 or (new_message and state.extended):
            state.delta = ts
            state.timestamp += ts  # uint32_t: wraps as the 32-bit timestamp does
        elif new_message:  # type 3 starting a message: the previous delta again
            state.timestamp += state.delta
        if new_message and take == state.length:  # a whole message in one chunk
            payload = PyBytes_FromStringAndSize(<const char *>buf + start, take)
        else:
            state.body += self._buf[start : start + take]
            self._buffered += take
            if PyByteArray_GET_SIZE(state.body) < state.length:
                return start + take
            payload = bytes(state.body)
            self._buffered -= PyByteArray_GET_SIZE(state.body)
            del state.body[:]
        self._control(state.type_id, payload)
        out.append(Message(state.type_id, state.stream_id, state.timestamp, payload))
        return start + take

    cdef _control(self, int type_id, bytes payload):
        cdef uint32_t size
        cdef _InStream state
        cdef const unsigned char *p = payload
        if len(payload) < 4:
            return
        if type_id == _SET_CHUNK_SIZE:
            size = _be32(p) & _MAX_CHUNK_SIZE
            if size < 1:
                raise ParseError("chunk size 0")
            self.chunk_size = size
        elif type_id == _ABORT:
            state = self._streams.get(_be32(p))
            if state is not None:
                self._buffered -= PyByteArray_GET_SIZE(state.body)
                del state.body[:]
