"""RtpSession on loopback sockets: two sessions talking to each other."""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from wxmgw.rtp import rtcp  # noqa: E402
from wxmgw.rtp._send import RtpSender, enable_gso, gso_enabled  # noqa: E402
from wxmgw.rtp.jitter import Gap  # noqa: E402
from wxmgw.rtp.packet import RtpPacket  # noqa: E402
from wxmgw.rtp.session import ReceiveConfig, RtpSession, SendConfig  # noqa: E402


def test_symmetric_send_receive_reports_and_keyframe_requests(ports):
    a_pair, b_pair = ports.allocate(), ports.allocate()
    got: list = []
    feedback: list = []
    sender = RtpSession(a_pair, "a", remote=("127.0.0.1", b_pair.port),
                        send=SendConfig(ssrc=1234, payload_type=96, clock_rate=90000),
                        on_feedback=feedback.append, rtcp_interval=0.05)
    receiver = RtpSession(b_pair, "b", receive=ReceiveConfig(96, 90000),
                          on_media=got.extend, rtcp_interval=0.05)
    sender.start()
    receiver.start()
    try:
        for i in range(20):
            sender.send_run((bytes([i]) * 10,), i * 3000, True, media_time=100.0 + i / 30)
            gevent.sleep(0.002)
        gevent.sleep(0.3)
        packets = [p for p in got if not isinstance(p, Gap)]
        assert [p.payload[0] for p in packets] == list(range(20))
        assert all(p.ssrc == 1234 and p.payload_type == 96 for p in packets)
        assert receiver.stats.sr_received >= 1 and receiver.timeline.synced
        assert sender.stats.rr_received >= 1
        assert receiver.request_keyframe()
        assert not receiver.request_keyframe()  # rate-limited
        gevent.sleep(0.1)
        assert sender.stats.pli_received == 1 and sender.stats.fir_received == 1
        assert any(isinstance(f, rtcp.Pli) for f in feedback)
        # SR mapping: capture times follow the sender's media time spacing.
        t0 = receiver.capture_time(packets[0].timestamp)
        t10 = receiver.capture_time(packets[10].timestamp)
        assert abs((t10 - t0) - 10 / 30) < 1e-3
    finally:
        sender.close()
        receiver.close()


def test_wrong_payload_type_and_second_source_are_dropped(ports):
    pair = ports.allocate()
    got: list = []
    session = RtpSession(pair, "r", receive=ReceiveConfig(8, 8000), on_media=got.extend)
    session.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as one, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as two:
            hdr = bytes([0x80, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7])
            one.sendto(hdr + b"\xd5" * 160, ("127.0.0.1", pair.port))
            gevent.sleep(0.05)
            two.sendto(hdr + b"\xd5" * 160, ("127.0.0.1", pair.port))
            one.sendto(bytes([0x80, 0]) + hdr[2:] + b"x", ("127.0.0.1", pair.port))
            one.sendto(b"\x00garbage", ("127.0.0.1", pair.port))
            gevent.sleep(0.05)
        assert len(got) == 1
        assert session.stats.wrong_source == 1
        assert session.stats.wrong_payload_type == 1
        assert session.stats.malformed == 1
    finally:
        session.close()


def test_a_lost_packet_is_nacked_and_resent_from_the_history(ports):
    a_pair, b_pair = ports.allocate(), ports.allocate()
    got: list = []
    sender = RtpSession(a_pair, "a", remote=("127.0.0.1", b_pair.port),
                        send=SendConfig(ssrc=1234, payload_type=96, clock_rate=90000, history=1.0))
    receiver = RtpSession(b_pair, "b", on_media=got.extend,
                          receive=ReceiveConfig(96, 90000, window=0.5, nack_retry=0.1))
    sender.start()
    receiver.start()
    try:
        for i in range(10):
            sender.remote = ("127.0.0.1", 9) if i in (3, 4) else ("127.0.0.1", b_pair.port)
            sender.send_run((bytes([i]) * 10,), i * 3000, True, media_time=100.0 + i / 30)
            gevent.sleep(0.002)
        gevent.sleep(0.2)
        assert [p.payload[0] for p in got if not isinstance(p, Gap)] == list(range(10))
        assert not any(isinstance(p, Gap) for p in got)
        assert receiver.stats.nack_sent >= 1 and receiver.jitter.stats.recovered == 2
        assert sender.stats.nack_received >= 1 and sender.stats.resent == 2
        assert receiver.jitter.stats.lost == 0
    finally:
        sender.close()
        receiver.close()


def test_the_resend_history_keeps_its_seconds_only(ports):
    """A second of history is a second of packets, whatever the rate: older ones are
    forgotten (a NACK for them is missed), across the sequence number's wrap."""
    now = [0.0]
    pair = ports.allocate()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mas:
        mas.bind(("127.0.0.1", 0))
        mas.settimeout(2)
        sender = RtpSession(pair, "a", remote=mas.getsockname(), clock=lambda: now[0],
                            send=SendConfig(ssrc=1234, payload_type=96, clock_rate=90000,
                                            history=1.0))
        sender._seq = 65500  # the 300 packets cross 65535 -> 0
        sender.start()
        try:
            seqs = []
            for i in range(300):  # 3 s at 100 packets a second
                now[0] = i / 100
                sender.send_run((bytes(1000),), i * 900, True, media_time=i / 100)
                seqs.append(int.from_bytes(mas.recv(2048)[2:4], "big"))
            assert len(sender._history) <= 101  # ~100 KB, not 2048 packets' worth
            nack = rtcp.compound([rtcp.ReceiverReport(99, []), rtcp.Nack(99, 1234,
                                                                        [seqs[0], seqs[-5]])])
            mas.sendto(nack, ("127.0.0.1", pair.port + 1))
            resent = mas.recv(2048)
            assert int.from_bytes(resent[2:4], "big") == seqs[-5]
            gevent.sleep(0.05)
            assert sender.stats.resent == 1 and sender.stats.resend_missed == 1
        finally:
            sender.close()


def test_rfc4588_retransmission_is_unwrapped(ports):
    pair = ports.allocate()
    got: list = []
    session = RtpSession(pair, "r", on_media=got.extend,
                         receive=ReceiveConfig(96, 90000, window=0.5, nack_retry=0.1,
                                               rtx_payload_type=97))
    session.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp_out, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp_in:
            rtp_out.bind(("127.0.0.1", 0))
            rtcp_in.bind(("127.0.0.1", 0))
            rtcp_in.settimeout(2)

            def packet(pt: int, seq: int, ssrc: int, payload: bytes) -> bytes:
                return (bytes([0x80, 0x80 | pt]) + seq.to_bytes(2, "big") + (seq * 3000)
                        .to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload)

            # Our RTCP goes to the port the peer sent RTCP from (an SR-less RR will do).
            rtcp_in.sendto(bytes(rtcp.ReceiverReport(55)), ("127.0.0.1", pair.port + 1))
            gevent.sleep(0.05)
            for seq in (1, 2, 4):
                rtp_out.sendto(packet(96, seq, 55, bytes([seq])), ("127.0.0.1", pair.port))
            nack = next(p for p in rtcp.parse_compound(rtcp_in.recv(2048))
                        if isinstance(p, rtcp.Nack))
            assert nack.media_ssrc == 55 and nack.lost == [3]
            rtp_out.sendto(packet(97, 700, 66, b"\x00\x03" + bytes([3])), ("127.0.0.1", pair.port))
            gevent.sleep(0.05)
        assert [(p.sequence_number, p.payload, p.ssrc) for p in got] == [
            (s, bytes([s]), 55) for s in (1, 2, 3, 4)]
        assert session.stats.rtx_received == 1 and session.jitter.stats.recovered == 1
    finally:
        session.close()


def test_an_error_in_on_media_is_logged_and_the_loop_runs_again(ports):
    pair = ports.allocate()
    got: list = []
    logged: list = []

    def on_media(media):
        got.extend(media)
        if len(got) == 1:
            raise RuntimeError("a bug downstream")

    session = RtpSession(pair, "r", receive=ReceiveConfig(8, 8000), on_media=on_media,
                         log=lambda name, *_a, **fields: logged.append((name, fields)))
    session.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for seq in (1, 2):
                hdr = bytes([0x80, 8, 0, seq, 0, 0, 0, 100 * seq, 0, 0, 0, 7])
                peer.sendto(hdr + b"\xd5" * 160, ("127.0.0.1", pair.port))
                gevent.sleep(0.05)
                if seq == 1:
                    assert session.state.startswith("failed: RuntimeError")
                    gevent.sleep(0.6)  # the first restart comes after 0.5 s
        assert [p.sequence_number for p in got] == [1, 2]
        assert session.state == "running" and session.stats.crashes == 1
        assert [n for n, _ in logged].count("rtp_session_crashed") == 1
        crash = next(f for n, f in logged if n == "rtp_session_crashed")
        assert crash["worker"] == "read_rtp" and isinstance(crash["exc"], RuntimeError)
    finally:
        session.close()


def _received(sock: socket.socket) -> list[bytes]:
    sock.settimeout(1.0)
    got = [sock.recv(2048)]
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(2048))
    except BlockingIOError:
        return got


def _unit() -> list[bytes]:
    """An access unit as the packetizer cuts it: SPS, PPS, 5 fragments of which the last shorter."""
    return [b"\x67" * 20, b"\x68" * 4] + [bytes([i]) * 1100 for i in range(4)] + [b"\x05" * 700]


def test_a_run_leaves_as_the_same_datagrams_in_order(ports):
    pair = ports.allocate()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        sender = RtpSession(pair, "v", remote=peer.getsockname(),
                            send=SendConfig(ssrc=7, payload_type=96, clock_rate=90000))
        try:
            sender.send_run(_unit(), 3000, True, media_time=1.0)
            got = [RtpPacket.parse(d) for d in _received(peer)]
        finally:
            sender.close()
    assert [p.payload for p in got] == _unit()
    assert [p.marker for p in got] == [False] * 6 + [True]
    assert len({p.timestamp for p in got}) == 1
    assert [(p.sequence_number - got[0].sequence_number) & 0xFFFF for p in got] == list(range(7))
    assert sender.stats.packets_sent == 7
    assert sender.stats.bytes_sent == sum(map(len, _unit()))


def test_a_socket_the_kernel_refuses_gso_for_gets_the_packets_one_by_one(ports, request):
    pair = ports.allocate()
    # A socket that sends without UDP checksums: Linux refuses it GSO (EINVAL).
    pair.rtp.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_NO_CHECK", 11), 1)
    request.addfinalizer(lambda: enable_gso(True))  # for the tests that follow
    logged: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        sender = RtpSession(pair, "v", remote=peer.getsockname(),
                            send=SendConfig(ssrc=7, payload_type=96, clock_rate=90000),
                            log=lambda name, *_a, **_f: logged.append(name))
        try:
            for ts in (0, 3000):
                sender.send_run(_unit(), ts, True, media_time=ts / 90000)
            got = _received(peer)
        finally:
            sender.close()
    assert [RtpPacket.parse(d).payload for d in got] == _unit() * 2
    assert logged == ["rtp_gso_off"]  # found out once, then not tried again
    assert not gso_enabled()
    assert sender.stats.packets_sent == 14 and sender.stats.send_errors == 0


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 127), st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.integers(0, 0xFFFFFFFF), st.lists(st.binary(min_size=1, max_size=1400), min_size=1,
                                            max_size=8))
def test_the_compiled_sender_writes_what_rtp_packet_writes(pt, marker, seq, ts, ssrc, payloads):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        sender = RtpSender("127.0.0.1", peer.getsockname()[1], pt, ssrc)
        sent, size, errors, stopped, refused = sender.send(out.fileno(), payloads, seq, ts, marker)
        assert (sent, size, errors, stopped, refused) == (
            len(payloads), sum(map(len, payloads)), 0, len(payloads), 0)
        got = _received(peer)
    last = len(payloads) - 1
    assert got == [bytes(RtpPacket(pt, (seq + i) & 0xFFFF, ts, ssrc, p, marker and i == last))
                   for i, p in enumerate(payloads)]


def test_the_compiled_sender_takes_ipv4_and_bytes_only():
    for host in ("localhost", "::1", "300.1.2.3"):
        with pytest.raises(ValueError):
            RtpSender(host, 5004, 96, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out, pytest.raises(TypeError):
        RtpSender("127.0.0.1", 5004, 96, 1).send(out.fileno(), ["text"], 0, 0, True)
    # A closed socket: the kernel refuses the descriptor, the packets count as errors.
    assert RtpSender("127.0.0.1", 5004, 96, 1).send(-1, [b"x", b"y"], 0, 0, True)[:4] == (
        0, 0, 2, 2)
