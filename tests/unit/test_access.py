"""The allow-list and stream-token redaction shared by wxmgw and callroute (issue #12 item 8)."""

from __future__ import annotations

import pytest

from wxmgw.access import DEFAULT_ALLOW_FROM, AllowList, redact, redact_token

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("10.1.2.3", True),
    ("172.16.0.1", True), ("172.31.255.255", True), ("192.168.1.1", True), ("fd00::5", True),
    ("::ffff:127.0.0.1", True), ("fe80::1%eth0", False),
    ("172.32.0.1", False), ("8.8.8.8", False), ("192.0.2.7", False), ("2001:db8::1", False),
    ("::ffff:8.8.8.8", False), ("", False), ("not-an-ip", False),
])
def test_default_allow_list_is_loopback_and_private_ranges(host, allowed):
    assert AllowList.parse(DEFAULT_ALLOW_FROM).allows(host) is allowed


def test_parse_takes_a_string_or_a_list_and_names_a_bad_network():
    listed = AllowList.parse(["192.0.2.0/24", " 10.0.0.1 "])
    assert listed == AllowList.parse("192.0.2.0/24,10.0.0.1")
    assert str(AllowList.parse("192.0.2.9/24")) == "192.0.2.0/24"
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300/8' is not"):
        AllowList.parse("127.0.0.0/8,10.0.0.300/8")
    with pytest.raises(ValueError, match="no network"):
        AllowList.parse(" , ")


def test_redact_keeps_a_short_prefix_of_every_stream_name():
    line = (f'{{"pullUrl":"rtmp://10.0.0.5:1935/live/{TOKEN}","pushUrl":'
            f'"rtmp://h/app/{TOKEN}?sign=secret"}} url=RTMP://h/live/{TOKEN} '
            f"'rtmps://h/app/inst/{TOKEN}'")
    out = redact(line)
    assert TOKEN not in out and "secret" not in out
    assert out.count("01234567…") == 3
    assert "'rtmps://h/app/inst/012…'" in out  # all that follows the app is cut
    assert '"rtmp://10.0.0.5:1935/live/01234567…"' in out
    assert redact(out) == out


def test_redact_leaves_other_text_and_short_names_half_hidden():
    plain = "rtmp://h/live has no stream name, http://h/a/b is not RTMP"
    assert redact(plain) == plain
    assert redact_token("abcdef") == "abc…"
    assert redact_token("a") == "…"
