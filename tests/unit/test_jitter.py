from __future__ import annotations

import random

from wxmgw.rtp.jitter import MAX_DROPOUT, Gap, JitterBuffer
from wxmgw.rtp.packet import RtpPacket

RATE = 8000


def pkt(seq: int, ts: int | None = None, ssrc: int = 0x1234) -> RtpPacket:
    return RtpPacket(8, seq & 0xFFFF, (seq * 160 if ts is None else ts) & 0xFFFFFFFF, ssrc)


def seqs(items: list[RtpPacket | Gap]) -> list[int | Gap]:
    return [i.sequence_number if isinstance(i, RtpPacket) else i for i in items]


def make(window: float = 0.1, max_packets: int = 500) -> JitterBuffer:
    return JitterBuffer(RATE, clock=lambda: 0.0, window=window, max_packets=max_packets)


def test_in_order_packets_come_out_at_once() -> None:
    jb = make()
    for s in range(5):
        jb.push(pkt(s), s * 0.02)
        assert seqs(jb.pop_ready(s * 0.02)) == [s]
    assert jb.next_deadline() is None
    st = jb.stats
    assert (st.received, st.lost, st.duplicates, st.reordered, st.late) == (5, 0, 0, 0, 0)


def test_reorder_within_window() -> None:
    jb = make()
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.02)
    assert seqs(jb.pop_ready(0.03)) == [1]
    assert jb.next_deadline() == 0.02 + 0.1
    jb.push(pkt(2), 0.05)
    assert seqs(jb.pop_ready(0.05)) == [2, 3]
    assert jb.stats.reordered == 1 and jb.stats.lost == 0


def test_gap_reported_after_window_then_late_packet_dropped() -> None:
    jb = make()
    jb.push(pkt(1), 0.0)
    jb.push(pkt(4), 0.02)
    jb.push(pkt(5), 0.04)
    assert seqs(jb.pop_ready(0.1)) == [1]  # 0.08 s after 4 arrived: still waiting
    assert seqs(jb.pop_ready(0.125)) == [Gap(2), 4, 5]
    assert jb.stats.lost == 2
    jb.push(pkt(2), 0.13)
    jb.push(pkt(6), 0.14)
    assert seqs(jb.pop_ready(0.14)) == [6]
    assert jb.stats.late == 1 and jb.stats.duplicates == 0


def test_hole_deadline_counts_from_oldest_held_packet() -> None:
    jb = make()
    jb.push(pkt(10), 0.0)
    jb.push(pkt(13), 0.0)
    jb.push(pkt(12), 0.05)
    assert seqs(jb.pop_ready(0.1)) == [10, Gap(1), 12, 13]


def test_duplicates_dropped_and_counted() -> None:
    jb = make()
    jb.push(pkt(1), 0.0)
    jb.push(pkt(1), 0.001)  # duplicate of a released packet
    jb.push(pkt(3), 0.02)
    jb.push(pkt(3), 0.021)  # duplicate of a held packet
    jb.push(pkt(2), 0.03)
    assert seqs(jb.pop_ready(0.03)) == [1, 2, 3]
    assert jb.stats.duplicates == 2


def test_seq_and_ts_wrap() -> None:
    jb = make()
    start = 65530
    order = [0, 1, 2, 4, 3, 5, 6, 8, 7, 9, 10, 11]  # reordering across 65535 -> 0
    for i in order:
        ts = (2**32 - 800 + i * 160) & 0xFFFFFFFF  # crosses 2**32 too
        jb.push(pkt(start + i, ts=ts), i * 0.02)
    out = jb.pop_ready(1.0)
    assert seqs(out) == [(start + i) & 0xFFFF for i in range(12)]
    assert jb.stats.lost == 0 and jb.stats.reordered == 2
    assert jb.stats.jitter < 1e-9  # arrival spacing == timestamp spacing, across the wrap
    block = jb.make_report_block()
    assert block is not None
    assert block.highest_sequence == 65536 + (start + 11 - 65536)  # one cycle, RFC 3550 A.1
    assert block.packets_lost == 0 and block.fraction_lost == 0


def test_ssrc_change_resets_cleanly() -> None:
    jb = make()
    jb.push(pkt(1, ssrc=1), 0.0)
    jb.push(pkt(3, ssrc=1), 0.01)  # held behind the hole at 2
    jb.push(pkt(40000, ssrc=2), 0.02)
    jb.push(pkt(40001, ssrc=2), 0.04)
    assert seqs(jb.pop_ready(0.04)) == [1, Gap(1), 3, Gap(0, reset=True), 40000, 40001]
    assert jb.stats.resets == 1 and jb.ssrc == 2
    block = jb.make_report_block()
    assert block is not None
    assert (block.ssrc, block.highest_sequence, block.packets_lost) == (2, 40001, 0)


def test_big_jump_confirmed_by_successor_restarts() -> None:
    jb = make()
    for s in range(3):
        jb.push(pkt(s), s * 0.02)
    jump = 2 + MAX_DROPOUT + 10
    jb.push(pkt(jump), 0.06)
    assert seqs(jb.pop_ready(0.06)) == [0, 1, 2]  # the probe is held, not released
    jb.push(pkt(jump + 1), 0.08)
    assert seqs(jb.pop_ready(0.08)) == [Gap(0, reset=True), jump, jump + 1]
    assert jb.stats.resets == 1 and jb.stats.lost == 0 and jb.stats.stray == 0


def test_stray_packet_far_off_is_dropped() -> None:
    jb = make()
    jb.push(pkt(100), 0.0)
    jb.push(pkt(30000), 0.01)  # far ahead, not followed by its successor
    jb.push(pkt(101), 0.02)
    jb.push(pkt(100 - 500), 0.03)  # far behind: also a probe
    jb.push(pkt(102), 0.04)
    assert seqs(jb.pop_ready(0.05)) == [100, 101, 102]
    assert jb.stats.stray == 2 and jb.stats.resets == 0


def test_forward_jump_below_dropout_is_loss() -> None:
    jb = make()
    jb.push(pkt(1), 0.0)
    jb.push(pkt(202), 0.5)
    assert seqs(jb.pop_ready(0.6)) == [1, Gap(200), 202]
    assert jb.stats.lost == 200


def test_max_packets_forces_skip() -> None:
    jb = make(max_packets=4)
    jb.push(pkt(1), 0.0)
    for s in range(3, 8):  # 2 never comes; 5 packets wait behind it
        jb.push(pkt(s), 0.0)
    assert seqs(jb.pop_ready(0.0)) == [1, Gap(1), 3, 4, 5, 6, 7]


def test_first_packet_starts_stream_earlier_one_is_late() -> None:
    jb = make()
    jb.push(pkt(11), 0.0)
    jb.push(pkt(10), 0.01)
    assert seqs(jb.pop_ready(0.01)) == [11]
    assert jb.stats.late == 1


def test_jitter_matches_rfc3550_formula() -> None:
    # Two packets by hand: D = (0.03 - 0) * 8000 - (160 - 0) = 80, J = 80 / 16 = 5.
    jb = make()
    jb.push(pkt(0, ts=0), 0.0)
    jb.push(pkt(1, ts=160), 0.03)
    assert abs(jb.stats.jitter - 5.0) < 1e-9
    assert abs(jb.stats.jitter_seconds - 5.0 / RATE) < 1e-12

    rng = random.Random(1)
    jb = make()
    arrivals = [(s, 10.0 + s * 0.02 + rng.uniform(0, 0.015)) for s in range(300)]
    arrivals.sort(key=lambda a: a[1])  # arrival order, some reordering
    j = 0.0
    prev: tuple[float, int] | None = None
    for s, t in arrivals:
        ts = (2**32 - 3000 + s * 160) % 2**32
        jb.push(pkt(s, ts=ts), t)
        if prev is not None:
            d = (t - prev[0]) * RATE - ((ts - prev[1] + 2**31) % 2**32 - 2**31)
            j += (abs(d) - j) / 16  # RFC 3550 section 6.4.1
        prev = (t, ts)
    assert abs(jb.stats.jitter - j) < 1e-6
    block = jb.make_report_block()
    assert block is not None and block.jitter == int(j)


def test_report_block_loss_accounting() -> None:
    jb = make()
    for s in range(10):
        if s not in (3, 4):
            jb.push(pkt(s), s * 0.02)
    jb.pop_ready(1.0)
    block = jb.make_report_block(lsr=0x1234, dlsr=65536)
    assert block is not None
    assert (block.packets_lost, block.highest_sequence) == (2, 9)
    assert block.fraction_lost == (2 << 8) // 10  # RFC 3550 A.3
    assert (block.lsr, block.dlsr) == (0x1234, 65536)
    for s in range(10, 20):
        jb.push(pkt(s), s * 0.02)
    jb.push(pkt(15), 0.5)  # a duplicate makes the interval's loss negative: fraction 0
    block = jb.make_report_block()
    assert block is not None
    assert (block.fraction_lost, block.packets_lost) == (0, 1)


def test_no_report_block_before_a_packet_and_clock_default() -> None:
    now = [5.0]
    jb = JitterBuffer(RATE, clock=lambda: now[0])
    assert jb.make_report_block() is None
    jb.push(pkt(1))
    jb.push(pkt(3))
    assert seqs(jb.pop_ready()) == [1]
    now[0] = 5.2
    assert seqs(jb.pop_ready()) == [Gap(1), 3]


def nacking(window: float = 0.3, retry: float = 0.05) -> JitterBuffer:
    return JitterBuffer(RATE, clock=lambda: 0.0, window=window, nack_retry=retry)


def test_hole_is_asked_for_at_once_then_once_more() -> None:
    jb = nacking()
    jb.push(pkt(1), 0.0)
    assert jb.nacks_due(0.0) == []
    jb.push(pkt(4), 0.01)
    assert jb.nacks_due(0.01) == [2, 3]
    assert jb.nacks_due(0.02) == []
    assert jb.next_deadline() == 0.01 + 0.05  # the retry comes before the window
    assert jb.nacks_due(0.07) == [2, 3]
    assert jb.nacks_due(0.2) == []  # asked twice: no more
    assert jb.next_deadline() == 0.01 + 0.3
    assert jb.stats.nacked == 4


def test_retransmission_fills_the_hole_and_counts_as_recovered() -> None:
    jb = nacking()
    jb.push(pkt(1), 0.0)
    jb.push(pkt(4), 0.01)
    jb.push(pkt(5), 0.02)
    assert jb.nacks_due(0.02) == [2, 3]
    assert seqs(jb.pop_ready(0.02)) == [1]
    jb.push(pkt(3), 0.03)
    jb.push(pkt(2), 0.04)
    assert seqs(jb.pop_ready(0.04)) == [2, 3, 4, 5]
    st = jb.stats
    assert (st.recovered, st.reordered, st.lost) == (2, 0, 0)
    assert jb.nacks_due(1.0) == [] and jb.next_deadline() is None


def test_a_hole_given_up_is_not_asked_for_again() -> None:
    jb = nacking(window=0.1, retry=0.5)
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.01)
    assert jb.nacks_due(0.01) == [2]
    assert seqs(jb.pop_ready(0.2)) == [1, Gap(1), 3]
    assert jb.nacks_due(1.0) == []
    jb.push(pkt(2), 1.0)  # the retransmission came too late
    assert jb.stats.late == 1 and jb.stats.recovered == 0


def test_outage_is_not_asked_for_and_nothing_without_nack() -> None:
    jb = nacking()
    jb.push(pkt(1), 0.0)
    jb.push(pkt(500), 0.01)
    assert jb.nacks_due(0.01) == []
    plain = make()
    plain.push(pkt(1), 0.0)
    plain.push(pkt(3), 0.01)
    assert plain.nacks_due(0.01) == []


def test_nack_numbers_wrap_with_the_sequence() -> None:
    jb = nacking()
    jb.push(pkt(65534), 0.0)
    jb.push(pkt(1), 0.01)
    assert jb.nacks_due(0.01) == [65535, 0]
