# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled half of :meth:`wxmgw.rtp.session.RtpSession.send_run`: RTP out in C.

Every packet the gateway sends to a MAS passes through here (about 120 a
leg-second). Each one's 12-byte fixed header (RFC 3550 §5.1) is written in
a buffer of this call, and the header and the payload go out as two
``iovec`` of one ``sendmsg(2)``, so no Python object is made per packet,
nor any copy of the payload in user space. A run of equal-sized packets
(an access unit's FU-A fragments; the last may be shorter) goes in one
``sendmsg`` with UDP generic segmentation offload (``UDP_SEGMENT``, Linux
4.18), which the kernel cuts into the same datagrams. Where the kernel or
the interface refuses GSO, the process sends packet by packet from then on
and the refusal is reported once.

The destination is an IPv4 address, the media plane's family (a StartPull's
``masIp`` is resolved to one when the request is checked).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINVAL, EIO, ENOPROTOOPT, EOPNOTSUPP, errno
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy, memset


cdef extern from "<errno.h>":
    int EWOULDBLOCK  # EAGAIN on Linux; the name POSIX also allows


cdef extern from "<sys/uio.h>":
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int MSG_DONTWAIT


cdef extern from "<netinet/in.h>":
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        int sin_family
        uint16_t sin_port
        in_addr sin_addr
    int AF_INET
    int IPPROTO_UDP
    uint16_t htons(uint16_t value)


cdef extern from "<arpa/inet.h>":
    int inet_pton(int family, const char *text, void *out)


cdef enum:
    HEADER = 12
    # linux/udp.h: the option, and the most datagrams one GSO send may carry
    UDP_SEGMENT = 103
    MAX_SEGMENTS = 64
    # the most bytes of one GSO send, headers of this layer included (< 64 KiB)
    MAX_RUN_BYTES = 60000

#: False once a kernel or an interface has refused UDP GSO: packet by packet from then on.
cdef bint _gso = True


def gso_enabled():
    """Whether this process still sends runs of packets with UDP GSO."""
    return _gso


def enable_gso(bint on):
    """Turn GSO on or off for the whole process (tests, and a refusal)."""
    global _gso
    _gso = on


cdef inline bint _refused(int error) noexcept:
    """What a kernel or an interface without UDP GSO answers a GSO send."""
    return error == EIO or error == EINVAL or error == ENOPROTOOPT or error == EOPNOTSUPP


cdef class RtpSender:
    """One RTP stream's destination (IPv4), payload type and SSRC; :meth:`send` sends.

    The caller owns the sequence numbers and timestamps, and the socket: it
    passes the descriptor to each call, so a closed socket is never written
    (its ``fileno()`` is -1, and the call fails with ``EBADF``).
    """

    cdef sockaddr_in _to
    cdef readonly int payload_type
    cdef readonly uint32_t ssrc

    def __init__(self, str host, int port, int payload_type, uint32_t ssrc):
        if not 0 <= payload_type <= 127 or not 0 < port <= 65535:
            raise ValueError(f"payload type {payload_type} or port {port} out of range")
        memset(&self._to, 0, sizeof(self._to))
        self._to.sin_family = AF_INET
        self._to.sin_port = htons(port)
        if inet_pton(AF_INET, host.encode(), &self._to.sin_addr) != 1:
            raise ValueError(f"{host!r} is not an IPv4 address")
        self.payload_type = payload_type
        self.ssrc = ssrc

    def send(self, int fd, payloads, int first_seq, uint32_t rtp_ts, bint marker,
             Py_ssize_t start=0):
        """Send ``payloads[start:]`` (bytes) as packets numbered on from ``first_seq +
        start``, all stamped ``rtp_ts``, ``marker`` on the last of ``payloads``.

        Returns ``(sent, payload_bytes, errors, stopped, refused)``: the packets
        sent and their payload bytes, the packets the kernel refused (dropped),
        the index of the first payload not tried because the socket's buffer was
        full (``len(payloads)`` when every one was tried: wait until it is
        writable and call again from there), and the ``errno`` with which this
        call found UDP GSO refused (0 if it did not).
        """
        cdef Py_ssize_t count = len(payloads)
        cdef Py_ssize_t i = start, index, end, size, total, following
        cdef Py_ssize_t sent = 0, errors = 0, nbytes = 0, stopped = count
        cdef int refused = 0, error
        cdef unsigned char headers[MAX_SEGMENTS][HEADER]
        cdef iovec vectors[2 * MAX_SEGMENTS]
        cdef size_t control[8]  # CMSG_SPACE(2) and then some, aligned as a cmsghdr
        cdef msghdr message
        cdef cmsghdr *option
        cdef uint16_t segment
        cdef bytes payload
        for index in range(start, count):
            if not isinstance(payloads[index], bytes):
                raise TypeError("RTP payloads must be bytes")
        while i < count:
            # A run that GSO can cut: equal sizes, the last may be shorter.
            size = total = HEADER + PyBytes_GET_SIZE(<bytes>payloads[i])
            end = i + 1
            while _gso and end < count and end - i < MAX_SEGMENTS:
                following = HEADER + PyBytes_GET_SIZE(<bytes>payloads[end])
                if following > size or total + following > MAX_RUN_BYTES:
                    break
                total += following
                end += 1
                if following < size:
                    break
            for index in range(i, end):
                payload = <bytes>payloads[index]
                _header(headers[index - i], self.payload_type,
                        marker and index == count - 1, (first_seq + index) & 0xFFFF, rtp_ts,
                        self.ssrc)
                vectors[2 * (index - i)].iov_base = headers[index - i]
                vectors[2 * (index - i)].iov_len = HEADER
                vectors[2 * (index - i) + 1].iov_base = PyBytes_AS_STRING(payload)
                vectors[2 * (index - i) + 1].iov_len = PyBytes_GET_SIZE(payload)
            memset(&message, 0, sizeof(message))
            message.msg_name = &self._to
            message.msg_namelen = sizeof(self._to)
            if end - i > 1:  # one sendmsg, cut by the kernel
                memset(control, 0, sizeof(control))
                message.msg_control = control
                message.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
                option = CMSG_FIRSTHDR(&message)
                option.cmsg_level = IPPROTO_UDP
                option.cmsg_type = UDP_SEGMENT
                option.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                segment = <uint16_t>size
                memcpy(CMSG_DATA(option), &segment, sizeof(segment))
                message.msg_iov = vectors
                message.msg_iovlen = 2 * (end - i)
                if sendmsg(fd, &message, MSG_DONTWAIT) >= 0:
                    sent += end - i
                    nbytes += total - HEADER * (end - i)
                    i = end
                    continue
                error = errno
                if error == EAGAIN or error == EWOULDBLOCK:
                    stopped = i
                    break
                if not _refused(error):
                    errors += end - i
                    i = end
                    continue
                enable_gso(False)
                refused = error
                message.msg_control = NULL
                message.msg_controllen = 0
            for index in range(i, end):  # one datagram a call
                message.msg_iov = &vectors[2 * (index - i)]
                message.msg_iovlen = 2
                if sendmsg(fd, &message, MSG_DONTWAIT) >= 0:
                    sent += 1
                    nbytes += vectors[2 * (index - i) + 1].iov_len
                    continue
                error = errno
                if error == EAGAIN or error == EWOULDBLOCK:
                    stopped = index
                    break
                errors += 1
            if stopped < count:
                break
            i = end
        return sent, nbytes, errors, stopped, refused


cdef inline void _header(unsigned char *out, int payload_type, bint marker, int seq,
                         uint32_t timestamp, uint32_t ssrc) noexcept:
    """RFC 3550 §5.1, version 2, no padding, extension or CSRC."""
    out[0] = 0x80
    out[1] = payload_type | (0x80 if marker else 0)
    out[2] = (seq >> 8) & 0xFF
    out[3] = seq & 0xFF
    out[4] = (timestamp >> 24) & 0xFF
    out[5] = (timestamp >> 16) & 0xFF
    out[6] = (timestamp >> 8) & 0xFF
    out[7] = timestamp & 0xFF
    out[8] = (ssrc >> 24) & 0xFF
    out[9] = (ssrc >> 16) & 0xFF
    out[10] = (ssrc >> 8) & 0xFF
    out[11] = ssrc & 0xFF
