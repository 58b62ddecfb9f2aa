from __future__ import annotations

import pytest

from wxmgw.rtp.seq import SeqUnwrapper, TimestampUnwrapper, seq_diff, seq_lt, ts_diff


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [(5, 3, 2), (3, 5, -2), (0, 65535, 1), (65535, 0, -1), (10, 65530, 16), (32767, 0, 32767),
     (32768, 0, -32768), (7, 7, 0)],
)
def test_seq_diff(a: int, b: int, diff: int) -> None:
    assert seq_diff(a, b) == diff
    assert seq_lt(a, b) == (diff < 0)


def test_ts_diff_across_2_32() -> None:
    assert ts_diff(80, 2**32 - 80) == 160
    assert ts_diff(2**32 - 80, 80) == -160
    assert ts_diff(2**31 - 1, 0) == 2**31 - 1
    assert ts_diff(2**31, 0) == -(2**31)


def test_seq_unwrapper_wraps_forward_and_keeps_late_values_behind() -> None:
    u = SeqUnwrapper(65534)
    assert [u.unwrap(s) for s in (65534, 65535, 0, 1)] == [65534, 65535, 65536, 65537]
    assert u.unwrap(65533) == 65533  # late, from before the wrap
    assert u.highest == 65537
    assert u.extend(2) == 65538 and u.highest == 65537  # extend does not record


def test_seq_unwrapper_many_cycles() -> None:
    u = SeqUnwrapper(100)
    seq, expected = 100, 100
    for _ in range(5 * 65536 // 1000):
        seq, expected = (seq + 1000) & 0xFFFF, expected + 1000
        assert u.unwrap(seq) == expected


def test_timestamp_unwrapper_across_2_32() -> None:
    u = TimestampUnwrapper(2**32 - 320)
    assert [u.unwrap(t) for t in (2**32 - 160, 0, 160)] == [2**32 - 160, 2**32, 2**32 + 160]
    assert u.unwrap(2**32 - 480) == 2**32 - 480
