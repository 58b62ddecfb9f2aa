"""RTP sessions on the gevent hub: one stream over one bound port pair.

A session sends, receives, or both (symmetric RTP: the MAS answers a
mini-program's audio to the port it comes from). It owns the sockets' read
loops, so RTCP for the sending and the receiving side of one pair is read in
one place:

* sending: sequence numbers and timestamps with random starts (RFC 3550
  §5.1), a sender report every ``rtcp_interval`` (§6.4.1) mapping the
  stream's RTP time to wall-clock, RR/PLI/FIR from the far end counted and
  handed to ``on_feedback``;
* receiving: the first source address is latched (packets of another address
  or payload type are dropped and counted), a jitter buffer reorders, packets
  and gaps go to ``on_media``; receiver reports every ``rtcp_interval``
  (§6.4.2); :meth:`RtpSession.request_keyframe` sends PLI (RFC 4585 §6.3.1)
  and FIR (RFC 5104 §4.3.1), rate-limited; sender reports from the far end
  map its RTP time to our clock (:class:`Timeline`).

Losses are repaired where the configs ask for it: a receiving session with
``nack_retry`` sends generic NACKs (RFC 4585 §6.2.1) for the holes its jitter
buffer sees and takes back both plain resends (the original SSRC and
sequence number) and RFC 4588 retransmissions on ``rtx_payload_type``; a
sending session with ``history`` keeps that many seconds of sent packets and
resends what a NACK names, each number at most once per
``RESEND_INTERVAL`` and no more than ``RESEND_RATE`` packets a second.

Packets are sent by :class:`~wxmgw.rtp._send.RtpSender` (compiled): each
header and payload leave as they are, in one ``sendmsg``, and a run of
equal-sized packets (an access unit's FU-A fragments) in one ``sendmsg`` with
UDP generic segmentation offload, which the kernel cuts into the same
datagrams; where the kernel refuses GSO, the process sends packet by packet
from then on (logged once, ``rtp_gso_off``).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import gevent
from gevent.socket import wait_write

from wxmgw.errors import ParseError
from wxmgw.hubloop import MEDIA_PRIORITY, wait_watcher
from wxmgw.ports import PortPair
from wxmgw.rtp import rtcp
from wxmgw.rtp._send import RtpSender
from wxmgw.rtp.jitter import Gap, JitterBuffer
from wxmgw.rtp.packet import RtpPacket, is_rtcp
from wxmgw.rtp.seq import TimestampUnwrapper, seq_ahead
from wxmgw.supervise import Worker, worst

RTCP_INTERVAL = 5.0
KEYFRAME_REQUEST_INTERVAL = 1.0
#: A sequence number named by several NACKs is resent at most this often.
RESEND_INTERVAL = 0.05
#: Most packets resent per second (a token bucket): a NACK storm cannot double the stream.
RESEND_RATE = 250
#: Sequence numbers whose last resend is remembered before the old ones are forgotten.
_RESENT_MEMORY = 2048
_MAX_DATAGRAM = 65536
#: How long a sender waits for room in a full socket buffer before it drops what is left.
_SEND_WAIT = 0.5


def _receive(sock: socket.socket) -> tuple[bytes, tuple[str, int]] | None:
    """A datagram and its source, or None when none is waiting.

    The caller waits for the next one outside any ``except``: a greenlet that
    waits inside one keeps the exception, its traceback and a frame object
    alive the whole time (one set per session, a full collection's work).
    """
    try:
        return sock.recvfrom(_MAX_DATAGRAM)
    except BlockingIOError:
        return None

Media = list[RtpPacket | Gap]


@dataclass(frozen=True, slots=True)
class SendConfig:
    """``history``: seconds of sent packets kept to answer NACKs (0: none)."""

    ssrc: int
    payload_type: int
    clock_rate: int
    history: float = 0.0


@dataclass(frozen=True, slots=True)
class ReceiveConfig:
    """``nack_retry``: NACK holes, asking again after that many seconds (None: never).

    ``rtx_payload_type``: RFC 4588 retransmissions arrive with this payload type.
    """

    payload_type: int
    clock_rate: int
    window: float = 0.1
    nack_retry: float | None = None
    rtx_payload_type: int | None = None


@dataclass(frozen=True, slots=True)
class LossRepair:
    """How video sessions repair losses, from the gateway's settings.

    ``window``: seconds a hole is waited for; ``nack_retry``: NACK holes and
    ask once more after that many seconds (None: no NACKs);
    ``rtx_payload_type``: the MAS's RFC 4588 retransmissions (None: plain
    resends only); ``history``: seconds of sent video kept to answer NACKs.
    """

    window: float = 0.25
    nack_retry: float | None = 0.08
    rtx_payload_type: int | None = None
    history: float = 1.0

    def receive(self, payload_type: int, clock_rate: int) -> ReceiveConfig:
        return ReceiveConfig(payload_type, clock_rate, self.window, self.nack_retry,
                             self.rtx_payload_type)


@dataclass(slots=True)
class SessionStats:
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    wrong_source: int = 0
    wrong_payload_type: int = 0
    malformed: int = 0
    send_errors: int = 0
    rtcp_received: int = 0
    rr_received: int = 0
    sr_received: int = 0
    pli_received: int = 0
    fir_received: int = 0
    pli_sent: int = 0
    fir_sent: int = 0
    nack_sent: int = 0
    rtx_received: int = 0
    nack_received: int = 0
    crashes: int = 0
    resent: int = 0
    resend_missed: int = 0
    remote_fraction_lost: float = 0.0
    remote_jitter: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClockOffset:
    """Offset from a remote sender's wall-clock to our monotonic clock.

    Shared by the audio and the video session of one member, so that both
    streams land on one timeline: the smallest ``arrival - sender time`` seen
    (the least-delayed SR) is the best estimate of the offset.
    """

    def __init__(self) -> None:
        self.value: float | None = None

    def observe(self, remote_wallclock: float, local_arrival: float) -> None:
        offset = local_arrival - remote_wallclock
        if self.value is None or offset < self.value:
            self.value = offset


@dataclass(slots=True)
class Timeline:
    """Maps an incoming stream's RTP timestamps to capture times on our monotonic clock.

    With a sender report (RFC 3550 §6.4.1) the mapping is the sender's own
    (NTP, RTP) pair, shifted by the member's :class:`ClockOffset`: streams of
    one member stay in sync even when their RTP timestamps are offset. Before
    the first SR, the first packet's arrival anchors the stream.
    """

    clock_rate: int
    offset: ClockOffset
    _unwrap: TimestampUnwrapper | None = None
    _anchor: tuple[int, float] | None = None  # (extended rtp ts, monotonic time)
    _sr: tuple[int, float] | None = None  # (extended rtp ts, remote wall-clock)
    synced: bool = field(default=False)

    def capture_time(self, timestamp: int, arrival: float) -> float:
        if self._unwrap is None:
            self._unwrap = TimestampUnwrapper(timestamp)
        ts = self._unwrap.unwrap(timestamp)
        if self._sr is not None and self.offset.value is not None:
            sr_ts, sr_wall = self._sr
            return sr_wall + (ts - sr_ts) / self.clock_rate + self.offset.value
        if self._anchor is None:
            self._anchor = (ts, arrival)
        anchor_ts, anchor_time = self._anchor
        return anchor_time + (ts - anchor_ts) / self.clock_rate

    def on_sender_report(self, sr: rtcp.SenderReport, arrival: float) -> None:
        wall = rtcp.unix_from_ntp(sr.ntp_timestamp)
        self.offset.observe(wall, arrival)
        if self._unwrap is None:
            self._unwrap = TimestampUnwrapper(sr.rtp_timestamp)
        self._sr = (self._unwrap.extend(sr.rtp_timestamp), wall)
        self.synced = True


class RtpSession:
    """One RTP stream over a :class:`PortPair`; see the module docstring."""

    def __init__(
        self,
        pair: PortPair,
        name: str,
        *,
        remote: tuple[str, int] | None = None,
        send: SendConfig | None = None,
        receive: ReceiveConfig | None = None,
        on_media: Callable[[Media], None] | None = None,
        on_feedback: Callable[[rtcp.RtcpPacket], None] | None = None,
        offset: ClockOffset | None = None,
        log: Callable[..., None] | None = None,
        cname: str = "wxmgw",
        rtcp_interval: float = RTCP_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pair = pair
        self.name = name
        self.send_config = send
        self.remote = remote
        self.receive_config = receive
        self.on_media = on_media
        self.on_feedback = on_feedback
        self.cname = cname
        self.log = log or (lambda *_args, **_fields: None)
        self.rtcp_interval = rtcp_interval
        self.clock = clock
        self.stats = SessionStats()
        self.ssrc = send.ssrc if send else random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts_base = random.getrandbits(32)
        self._last_sent: tuple[int, float] | None = None  # (rtp ts, media time)
        self.jitter = (
            JitterBuffer(receive.clock_rate, clock, receive.window, nack_retry=receive.nack_retry)
            if receive
            else None
        )
        # Resend history: (seq, payload, when sent, RTP timestamp, marker) of the last
        # ``history`` seconds, in sending order, so consecutive sequence numbers (a
        # resend is not added again).
        self._history: deque[tuple[int, bytes, float, int, bool]] | None = (
            deque() if send is not None and send.history > 0 else None
        )
        self._resent_at: dict[int, float] = {}
        self._resend_tokens = float(RESEND_RATE)
        self._resend_refill = clock()
        self.timeline = Timeline(receive.clock_rate, offset or ClockOffset()) if receive else None
        self._source: tuple[str, int] | None = None
        self._wrong_types: set[int] = set()  # payload types seen that are not ours, logged
        self._rtcp_source: tuple[str, int] | None = None
        self._last_sr: tuple[int, float] | None = None  # (middle 32 of NTP, arrival)
        self._fir_seq = 0
        self._last_keyframe_request = -KEYFRAME_REQUEST_INTERVAL
        self._workers: list[Worker] = []
        self._readable: dict[socket.socket, Any] = {}  # its read watcher (gevent's io), see close()
        self.closed = False
        #: When the last media packet was taken (``clock``); the session's creation before.
        self.last_received = clock()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """The socket loops, each a supervised :class:`~wxmgw.supervise.Worker`: an
        unexpected error (in ``on_media`` or ``on_feedback`` too) is logged
        (``rtp_session_crashed``, with the traceback), counted in ``crashes``
        and the loop runs again after a backoff."""
        loops = [self._read_rtcp, self._report_loop]
        if self.receive_config is not None or self.send_config is not None:
            loops.append(self._read_rtp)
        hub_loop = gevent.get_hub().loop
        for sock in (self.pair.rtp, self.pair.rtcp):
            sock.settimeout(0.0)  # a send that would block is dropped, counted as an error
            self._readable[sock] = hub_loop.io(sock.fileno(), 1, priority=MEDIA_PRIORITY)
        self._workers = [Worker(loop, partial(self._crashed, loop.__name__)) for loop in loops]

    def _crashed(self, loop: str, error: BaseException, retry_in: float) -> None:
        self.stats.crashes += 1
        self.log("rtp_session_crashed", logging.ERROR, exc=error, session=self.name,
                 worker=loop.strip("_"), retryIn=retry_in)

    @property
    def remote(self) -> tuple[str, int] | None:
        """Where packets are sent (an IPv4 address and a port), None before it is known."""
        return self._remote

    @remote.setter
    def remote(self, remote: tuple[str, int] | None) -> None:
        config = self.send_config
        self._sender = (RtpSender(remote[0], remote[1], config.payload_type, config.ssrc)
                        if config is not None and remote is not None else None)
        self._remote = remote

    @property
    def state(self) -> str:
        """``running``, or ``failed: why`` while a loop waits for its restart."""
        return worst(w.state for w in self._workers)

    def close(self) -> None:
        """Stop sending and reading at once; the sockets belong to the pair's owner.

        Nothing waits on the sockets when this returns, so the owner may close
        them and release the ports at once: the readers wait on watchers of
        their own (:meth:`_wait_readable`), stopped here, not in gevent's socket
        calls, whose close is deferred while a greenlet waits in them. The
        readers, killed, end at the hub's next turn without reading again.
        """
        self.closed = True
        for watcher in self._readable.values():
            watcher.stop()
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.kill()

    # -- sending -------------------------------------------------------------------

    def send_run(
        self, payloads: Sequence[bytes], timestamp: int, marker: bool, media_time: float
    ) -> None:
        """Send packets with consecutive numbers and one timestamp (an access
        unit's, or one audio packet's), ``marker`` on the last one.

        ``timestamp`` counts clock units from the stream's start.
        ``media_time`` is the capture time of the packets on our monotonic
        clock; the sender reports map RTP time to wall-clock through it.
        """
        config, sender = self.send_config, self._sender
        if config is None or sender is None or self.closed or not payloads:
            return
        rtp_ts = (self._ts_base + timestamp) & 0xFFFFFFFF
        seq, count = self._seq, len(payloads)
        history = self._history
        if history is not None:
            now, last = self.clock(), count - 1
            history += [((seq + i) & 0xFFFF, p, now, rtp_ts, marker and i == last)
                        for i, p in enumerate(payloads)]
            oldest = now - config.history
            while history[0][2] < oldest:
                history.popleft()
        self._seq = (seq + count) & 0xFFFF
        self._last_sent = (rtp_ts, media_time)
        sock, stats, start = self.pair.rtp, self.stats, 0
        for attempt in range(2):
            sent, size, errors, start, refused = sender.send(
                sock.fileno(), payloads, seq, rtp_ts, marker, start)
            stats.packets_sent += sent
            stats.bytes_sent += size
            stats.send_errors += errors
            if refused:
                self.log("rtp_gso_off", logging.WARNING, session=self.name,
                         error=f"{errno.errorcode.get(refused, refused)}: {os.strerror(refused)}")
            if start == count:
                return
            if attempt == 0:
                try:  # the socket's buffer is full: wait for room once, as gevent's sendto does
                    wait_write(sock.fileno(), _SEND_WAIT)
                except (TimeoutError, OSError):
                    break
        stats.send_errors += count - start

    # -- receiving -----------------------------------------------------------------

    def _read_rtp(self) -> None:
        sock = self.pair.rtp
        config = self.receive_config
        jitter = self.jitter
        while not self.closed:
            timeout = None
            if jitter is not None:
                deadline = jitter.next_deadline()
                if deadline is not None:
                    timeout = max(0.001, deadline - self.clock())
            try:
                got = _receive(sock)
            except OSError:
                if self.closed or self.pair.closed:
                    return
                gevent.sleep(0.01)
                continue
            if got is None:
                if not self._wait_readable(sock, timeout):
                    self._deliver()
                    self._send_nacks()
                continue
            data, addr = got
            if is_rtcp(data):
                self._on_rtcp(data, addr)
                continue
            if config is None or jitter is None:
                continue  # a send-only session ignores media sent to it
            self._on_rtp(data, addr, config, jitter)

    def _on_rtp(
        self, data: bytes, addr: tuple[str, int], config: ReceiveConfig, jitter: JitterBuffer
    ) -> None:
        if self._source is None:
            if self.remote is not None and addr[0] != self.remote[0]:
                self.stats.wrong_source += 1
                return
            self._source = addr
            self.log("rtp_source", session=self.name, source=f"{addr[0]}:{addr[1]}")
        elif addr != self._source:
            self.stats.wrong_source += 1
            return
        try:
            pkt = RtpPacket.parse(data)
            if pkt.payload_type == config.rtx_payload_type:
                pkt = self._unwrap_rtx(pkt, config, jitter)
        except ParseError:
            self.stats.malformed += 1
            return
        if pkt.payload_type != config.payload_type:
            self.stats.wrong_payload_type += 1
            if pkt.payload_type not in self._wrong_types:  # at most 128 lines a session
                self._wrong_types.add(pkt.payload_type)
                self.log("rtp_wrong_payload_type", logging.WARNING, session=self.name,
                         seen=pkt.payload_type, expected=config.payload_type)
            return
        self.stats.packets_received += 1
        self.stats.bytes_received += len(pkt.payload)
        self.last_received = now = self.clock()
        jitter.push(pkt, now)
        self._deliver()
        self._send_nacks()

    def _unwrap_rtx(self, rtx: RtpPacket, config: ReceiveConfig, jitter: JitterBuffer) -> RtpPacket:
        """The original packet of an RFC 4588 §4 retransmission: OSN first, then the payload.

        The retransmission stream has an SSRC of its own (session multiplexing,
        §8.3); the packet goes back to the source the jitter buffer follows.
        """
        if len(rtx.payload) < 2 or jitter.ssrc is None:
            raise ParseError("RTX packet without an original sequence number or a source")
        self.stats.rtx_received += 1
        osn = int.from_bytes(rtx.payload[:2], "big")
        return RtpPacket(config.payload_type, osn, rtx.timestamp, jitter.ssrc, rtx.payload[2:],
                         rtx.marker)

    def _send_nacks(self) -> None:
        """Ask the far sender for the holes the jitter buffer now awaits (RFC 4585 §6.2.1)."""
        jitter = self.jitter
        if jitter is None or jitter.ssrc is None:
            return
        lost = jitter.nacks_due()
        if lost and self._send_rtcp([*self._reports(), rtcp.Nack(self.ssrc, jitter.ssrc, lost)]):
            self.stats.nack_sent += 1

    def _deliver(self) -> None:
        if self.jitter is None or self.on_media is None:
            return
        batch: Media = []
        for item in self.jitter.pop_ready(self.clock()):
            batch.append(item)
            if isinstance(item, Gap) and item.reset and self.timeline is not None:
                # What came before is the old source's; the new one's timestamps
                # are its own and are mapped afresh.
                self.on_media(batch)
                batch = []
                self.timeline = Timeline(self.timeline.clock_rate, self.timeline.offset)
        if batch:
            self.on_media(batch)

    def capture_time(self, timestamp: int) -> float:
        """Capture time of an incoming packet's timestamp on our monotonic clock."""
        assert self.timeline is not None
        return self.timeline.capture_time(timestamp, self.clock())

    def request_keyframe(self) -> bool:
        """Send PLI and FIR to the far sender, at most once per second; True when sent."""
        now = self.clock()
        media_ssrc = self.jitter.ssrc if self.jitter else None
        if media_ssrc is None or now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
            return False
        self._last_keyframe_request = now
        self._fir_seq = (self._fir_seq + 1) & 0xFF
        packets: list[rtcp.RtcpPacket] = [
            *self._reports(),
            rtcp.Pli(self.ssrc, media_ssrc),
            rtcp.Fir(self.ssrc, [(media_ssrc, self._fir_seq)]),
        ]
        if self._send_rtcp(packets):
            self.stats.pli_sent += 1
            self.stats.fir_sent += 1
            return True
        return False

    # -- RTCP ----------------------------------------------------------------------

    def _read_rtcp(self) -> None:
        sock = self.pair.rtcp
        while not self.closed:
            try:
                got = _receive(sock)
            except OSError:
                if self.closed or self.pair.closed:
                    return
                gevent.sleep(0.01)
                continue
            if got is None:
                self._wait_readable(sock, None)
                continue
            self._on_rtcp(*got)

    def _wait_readable(self, sock: socket.socket, timeout: float | None) -> bool:
        """Wait until ``sock`` has a datagram; False after ``timeout`` seconds without."""
        return wait_watcher(self._readable[sock], timeout)

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            packets = rtcp.parse_compound(data)
        except ParseError:
            self.stats.malformed += 1
            return
        self.stats.rtcp_received += 1
        self._rtcp_source = addr
        now = self.clock()
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                self.stats.sr_received += 1
                self._last_sr = (rtcp.ntp_middle32(packet.ntp_timestamp), now)
                if self.timeline is not None:
                    self.timeline.on_sender_report(packet, now)
                self._note_blocks(packet.reports)
            elif isinstance(packet, rtcp.ReceiverReport):
                self.stats.rr_received += 1
                self._note_blocks(packet.reports)
            elif isinstance(packet, rtcp.Pli):
                self.stats.pli_received += 1
            elif isinstance(packet, rtcp.Fir):
                self.stats.fir_received += 1
            elif isinstance(packet, rtcp.Nack) and packet.media_ssrc == self.ssrc:
                self.stats.nack_received += 1
                self._resend(packet.lost, now)
            if self.on_feedback is not None:
                self.on_feedback(packet)

    def _resend(self, lost: list[int], now: float) -> None:
        """Send again, as they were, the packets a NACK names that are still in the history."""
        history, sender = self._history, self._sender
        if history is None or sender is None or self.closed:
            self.stats.resend_missed += len(lost)
            return
        assert self.send_config is not None
        self._resend_tokens = min(
            float(RESEND_RATE),
            self._resend_tokens + (now - self._resend_refill) * RESEND_RATE,
        )
        self._resend_refill = now
        oldest = now - self.send_config.history
        if len(self._resent_at) > _RESENT_MEMORY:
            self._resent_at = {
                s: t for s, t in self._resent_at.items() if now - t < RESEND_INTERVAL
            }
        first = history[0][0] if history else 0
        for seq in lost:
            at = seq_ahead(seq, first)
            slot = history[at] if at < len(history) else None
            if slot is None or slot[2] < oldest or self._resend_tokens < 1:
                self.stats.resend_missed += 1
                continue
            if now - self._resent_at.get(seq, -RESEND_INTERVAL) < RESEND_INTERVAL:
                continue  # already on its way
            self._resent_at[seq] = now
            self._resend_tokens -= 1
            _, payload, _, rtp_ts, marker = slot
            sent, _, _, _, _ = sender.send(self.pair.rtp.fileno(), (payload,), seq, rtp_ts, marker)
            if sent:
                self.stats.resent += 1
            else:
                self.stats.send_errors += 1

    def _note_blocks(self, blocks: list[rtcp.ReportBlock]) -> None:
        for block in blocks:
            if block.ssrc == self.ssrc:
                self.stats.remote_fraction_lost = block.fraction_lost / 256
                self.stats.remote_jitter = block.jitter

    def _report_loop(self) -> None:
        while not self.closed:
            gevent.sleep(self.rtcp_interval * random.uniform(0.5, 1.5))  # RFC 3550 §6.3.1
            self._send_rtcp(self._reports())

    def _reports(self) -> list[rtcp.RtcpPacket]:
        """SR when we have sent, RR otherwise, with a block about the stream we receive."""
        blocks: list[rtcp.ReportBlock] = []
        if self.jitter is not None:
            lsr, dlsr = 0, 0
            if self._last_sr is not None:
                lsr = self._last_sr[0]
                dlsr = rtcp.dlsr_from_seconds(self.clock() - self._last_sr[1])
            block = self.jitter.make_report_block(lsr, dlsr)
            if block is not None:
                blocks.append(block)
        report: rtcp.RtcpPacket
        if self._last_sent is not None:
            rtp_ts, media_time = self._last_sent
            assert self.send_config is not None
            now = self.clock()
            rtp_now = (rtp_ts + round((now - media_time) * self.send_config.clock_rate))
            report = rtcp.SenderReport(
                self.ssrc, rtcp.ntp_from_unix(time.time()), rtp_now & 0xFFFFFFFF,
                self.stats.packets_sent & 0xFFFFFFFF, self.stats.bytes_sent & 0xFFFFFFFF, blocks,
            )
        else:
            report = rtcp.ReceiverReport(self.ssrc, blocks)
        return [report, rtcp.Sdes.for_cname(self.ssrc, self.cname)]

    def _rtcp_destination(self) -> tuple[str, int] | None:
        if self._rtcp_source is not None:
            return self._rtcp_source
        peer = self.remote or self._source
        if peer is None:
            return None
        return peer[0], peer[1] + 1  # RFC 3550 §11: RTCP on the next port

    def _send_rtcp(self, packets: list[rtcp.RtcpPacket]) -> bool:
        dest = self._rtcp_destination()
        if dest is None or self.closed:
            return False
        try:
            self.pair.rtcp.sendto(rtcp.compound(packets), dest)
        except OSError:
            self.stats.send_errors += 1
            return False
        return True
