from types import SimpleNamespace

import pytest

from wxmgw import requests as rq
from wxmgw.errors import InvalidArgument


def pull(**over):
    base = dict(
        uuid="u1", pullUrl="rtmp://127.0.0.1:1935/live/abc", ssrc=1234, masIp="127.0.0.1",
        audioPort=5000, videoPort=5002, audioPayloadType=8, audioCodec="pcma",
        videoPayloadType=96, VideoCodec="h264", pushAudioUrl="rtmp://127.0.0.1/live/mix",
        confId="c1",
    )
    base.update(over)
    return SimpleNamespace(**base)


def push(**over):
    base = dict(
        uuid="m1", pushUrl="rtmps://live.example/app/stream", audioPayloadType=0,
        audioCodec="PCMU", videoPayloadType=96, videoCodec="H264", confId="c1", reqUuid="u1",
        weixin="",
    )
    base.update(over)
    return SimpleNamespace(**base)


def test_start_pull_normalizes():
    p = rq.start_pull(pull())
    assert p.audio == rq.RtpTarget(8, "PCMA") and p.video == rq.RtpTarget(96, "H264")
    assert not p.mas_less and p.mas_ip == "127.0.0.1"


def test_mas_ip_name_resolves():
    assert rq.start_pull(pull(masIp="localhost")).mas_ip.startswith("127.")


def test_mas_less_pull_needs_zero_ports_and_no_codecs():
    p = rq.start_pull(pull(masIp="", audioPort=0, videoPort=0, audioCodec="", VideoCodec=""))
    assert p.mas_less
    with pytest.raises(InvalidArgument, match="audioPort"):
        rq.start_pull(pull(masIp="", audioPort=5000, videoPort=0))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("uuid", "", "uuid is required"),
        ("uuid", None, "uuid is required"),
        ("uuid", 5, "uuid must be a string"),
        ("confId", "  ", "confId is required"),
        ("pullUrl", "http://h/live/s", "rtmp"),
        ("pullUrl", "rtmp:///live/s", "no host"),
        ("pullUrl", "rtmp://h/live", "app and a stream"),
        ("pullUrl", "rtmp://h:99999/live/s", "bad port"),
        ("pushAudioUrl", "udp://h/live/s", "rtmp"),
        ("ssrc", -1, "ssrc"),
        ("ssrc", 2**32, "ssrc"),
        ("masIp", "no-such-host.invalid", "masIp"),
        ("audioPort", 0, "audioPort"),
        ("videoPort", 65536, "videoPort"),
        ("audioPayloadType", 128, "audioPayloadType"),
        ("videoPayloadType", -1, "videoPayloadType"),
        ("audioCodec", "AAC", "audioCodec"),
        ("audioCodec", "", "audioCodec is required"),
        ("VideoCodec", "VP8", "VideoCodec"),
    ],
)
def test_start_pull_rejects(field, value, match):
    with pytest.raises(InvalidArgument, match=match):
        rq.start_pull(pull(**{field: value}))


@pytest.mark.parametrize("codec", ["pcma", "PCMU", "g722", "Opus"])
def test_audio_codecs_case_insensitive(codec):
    assert rq.start_push(push(audioCodec=codec)).audio.codec == codec.upper()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("pushUrl", "rtmp://h/onlyapp", "app and a stream"),
        ("pushUrl", "", "pushUrl is required"),
        ("videoCodec", "h265", "videoCodec"),
        ("audioPayloadType", 300, "audioPayloadType"),
        ("weixin", "maybe", "weixin"),
        ("confId", "", "confId"),
    ],
)
def test_start_push_rejects(field, value, match):
    with pytest.raises(InvalidArgument, match=match):
        rq.start_push(push(**{field: value}))


@pytest.mark.parametrize(
    ("value", "flag"), [("1", True), ("TRUE", True), ("0", False), ("", False)]
)
def test_weixin_flag(value, flag):
    assert rq.start_push(push(weixin=value)).weixin is flag


def test_weixin_push_needs_no_codecs():
    p = rq.start_push(push(weixin="1", audioCodec="", videoCodec=""))
    assert p.weixin and p.audio.codec == ""


def test_leg_ref_and_av_sync():
    assert rq.leg_ref(SimpleNamespace(uuid="a", confId="c")) == rq.LegRef("a", "c")
    with pytest.raises(InvalidArgument):
        rq.leg_ref(SimpleNamespace(uuid="a", confId=None))
    assert rq.av_sync(SimpleNamespace(uuid="a", confId="c", syncUuid=None)).sync_uuid == ""
