"""The JSON envelope: the seed's examples, its quirks, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callroute.protocol import (
    CallrouteError,
    ErrorCode,
    GatewayError,
    Header,
    InvalidFormat,
    JoinResult,
    Method,
    UnknownMethod,
    VideoRef,
    decode,
    encode,
    error_reply,
    parse_request,
    reply,
    video_result,
)

SEED = json.loads((Path(__file__).parent.parent / "data" / "callroute_seed.json").read_text())
UUID = "14f5ac8e-5496-11e7-a38b-d93e113210c6"


def video_msg(**params: object) -> dict[str, object]:
    base: dict[str, object] = {"confId": "123", "antissrc": "503677616", "seq": "s", "type": "1"}
    base.update(params)
    return {"id": "3", "uuid": UUID, "method": "wxreqvideo", "params": base}


@pytest.mark.parametrize("example", SEED["messages"], ids=lambda e: e["request"]["method"])
def test_seed_examples_parse(example: dict[str, object]) -> None:
    request = example["request"]
    assert isinstance(request, dict)
    req = parse_request(decode(json.dumps(request).encode()))
    assert req.uuid == UUID and req.conf_id == "123"
    assert req.method is Method(request["method"].strip())
    if req.video is not None:
        assert req.video == VideoRef(antissrc=503677616, seq="231ABfu13ad21", type="1")


def test_quirks_accepted() -> None:
    req = parse_request({"id": 3, "uuid": UUID, "method": " wxreqavsync\n",
                         "params": {"confId": 123, "antissrc": 503677616, "seq": 7, "type": 2}})
    assert req.method is Method.REQ_AVSYNC and req.conf_id == "123"
    assert req.video == VideoRef(antissrc=503677616, seq=7, type=2)
    req = parse_request(video_msg(antissrc=" 4294967295 ", type=" 2"))
    assert req.video == VideoRef(antissrc=0xFFFFFFFF, seq="s", type=" 2")
    assert Header.of({"id": 3, "uuid": UUID, "method": " wxreqavsync\n"}) == Header(
        3, UUID, " wxreqavsync\n")


@pytest.mark.parametrize(
    "body", [b"", b"{", b"\xff\xfe", b"[" * 100_000, b"NaN", b'{"a": Infinity}',
             b'"\xed\xa0\x80"', b'{"id": "\xc3"}', b"1" * 4301])
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(InvalidFormat):
        decode(body)


@pytest.mark.parametrize("body", [
    b'{"id": "\\ud800", "uuid": "u", "method": "wxjoinconf"}',
    b'{"id": "1", "uuid": "a\\udfffb", "method": "wxjoinconf"}',
    b'{"id": "1", "uuid": "u", "method": "wxjoin\\ud83d"}',
    b'{"id": "1", "params": {"confId": ["\\ude00\\ud83d"]}}',
    b'{"\\ud800": 1}',
])
def test_lone_surrogate_escapes_refused(body: bytes) -> None:
    """Finding 8: no text that cannot be encoded back gets past decode() to the reply."""
    with pytest.raises(InvalidFormat):
        decode(body)


def test_surrogate_pairs_accepted() -> None:
    assert decode(b'{"id": "\\ud83d\\ude00"}') == {"id": "\U0001F600"}


def test_bom_tolerated() -> None:
    assert decode(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}


@pytest.mark.parametrize("message", [
    [],
    "wxjoinconf",
    {"uuid": UUID, "method": "wxjoinconf", "params": {"confId": "1"}},
    {"id": "3", "method": "wxjoinconf", "params": {"confId": "1"}},
    {"id": "3", "uuid": "", "method": "wxjoinconf", "params": {"confId": "1"}},
    {"id": True, "uuid": UUID, "method": "wxjoinconf", "params": {"confId": "1"}},
    {"id": 1.5, "uuid": UUID, "method": "wxjoinconf", "params": {"confId": "1"}},
    {"id": "3", "uuid": "a b\n", "method": "wxjoinconf", "params": {"confId": "1"}},
    {"id": "3", "uuid": "x" * 129, "method": "wxjoinconf", "params": {"confId": "1"}},
    {"id": "3", "uuid": UUID, "method": 5, "params": {"confId": "1"}},
    {"id": "3", "uuid": UUID, "method": "wxjoinconf"},
    {"id": "3", "uuid": UUID, "method": "wxjoinconf", "params": []},
    {"id": "3", "uuid": UUID, "method": "wxjoinconf", "params": {}},
    {"id": "3", "uuid": UUID, "method": "wxjoinconf", "params": {"confId": None}},
    {"id": "3", "uuid": UUID, "method": "wxjoinconf", "params": {"confId": ["1"]}},
    {"id": "3", "uuid": UUID, "method": "wxjoinconf", "params": {"confId": "1", "crgwid": {}}},
    video_msg(antissrc="-1"),
    video_msg(antissrc=2**32),
    video_msg(antissrc="0x10"),
    video_msg(antissrc=True),
    video_msg(antissrc=None),
    video_msg(type="3"),
    video_msg(type=0),
    video_msg(type=True),
    video_msg(type=None),
    video_msg(seq=None),
    video_msg(seq=""),
], ids=str)
def test_invalid_format(message: object) -> None:
    with pytest.raises(InvalidFormat):
        parse_request(message)


@pytest.mark.parametrize(("field", "value"), [
    ("antissrc", "1" * 4301),           # finding 7: int() raised, the front answered 123
    ("antissrc", "9" * 100_000),
    ("antissrc", "\u0661\u0662"),        # Arabic-Indic digits: isdecimal(), not ASCII
    ("antissrc", " 12345678901 "),
    ("type", "1" * 4301),
    ("type", "\uff11"),                 # fullwidth 1
    ("type", " "),
], ids=["4301-digits", "100k-digits", "arabic-indic", "11-digits", "type-4301-digits",
        "type-fullwidth", "type-blank"])
def test_numbers_are_bounded_ascii_digits(field: str, value: str) -> None:
    with pytest.raises(InvalidFormat):
        parse_request(video_msg(**{field: value}))


def test_unknown_method() -> None:
    with pytest.raises(UnknownMethod):
        parse_request({"id": "3", "uuid": UUID, "method": "wxjoin", "params": {"confId": "1"}})


def test_header_of_anything_never_raises() -> None:
    assert Header.of(None) == Header()
    assert Header.of({"id": [1], "uuid": {}, "method": 3}) == Header()


def test_error_reply_has_the_seed_shape() -> None:
    seed = SEED["error_reply"]
    got = error_reply(Header("1", UUID, ""), InvalidFormat("Invalid format"))
    assert got == seed
    assert json.loads(encode(got)) == seed


def test_error_codes_distinct_strings() -> None:
    values = [c.value for c in ErrorCode]
    assert len(set(values)) == len(values) and all(v.isdecimal() for v in values)
    assert GatewayError("StartPull", 503, "no free port").code is ErrorCode.GATEWAY_ERROR
    assert "503" in str(GatewayError("StartPull", 503, "no free port"))
    assert error_reply(Header(), CallrouteError())["result"]["message"] == "INTERNAL"


def test_join_result_fields_are_strings() -> None:
    result = JoinResult(503677616, "rtmp://a/live/t", "rtmp://b/live/t", "rtmp://b/live/m",
                        "10.0.0.1", 12345, "10.0.0.1", 12346).as_result()
    example = next(e for e in SEED["messages"] if e["request"]["method"] == "wxjoinconf")
    assert list(result) == example["result_fields"]
    assert result["audiossrc"] == result["videossrc"] == "503677616"
    assert result["audiortpport"] == "12345" and result["videortpport"] == "12346"


def test_video_result_echoes_seq_and_type() -> None:
    video = VideoRef(1, "231ABfu13ad21", 1)
    assert video_result(video, "rtmp://x/live/v") == {
        "pullurl": "rtmp://x/live/v", "seq": "231ABfu13ad21", "type": 1}
    assert video_result(video, None) == {"seq": "231ABfu13ad21", "type": 1}
    assert reply(Header("3", UUID, "wxquitconf"), {}) == {
        "id": "3", "uuid": UUID, "method": "wxquitconf", "result": {}}
