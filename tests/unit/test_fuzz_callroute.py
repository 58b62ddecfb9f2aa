"""Properties of the callroute protocol: any bytes, any JSON value, one answer shape; and
of the conference record fronts share in Redis.

Whatever callroutegw (or anyone reaching the front) sends, the front answers
a request it understood or the seed's error reply: JSON, HTTP 200 (413 for a
body over the limit), a code of the table in ``callroute.protocol`` but never
123, which is kept for the front's own bugs.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_callroute_front import Harness

from callroute.protocol import (
    MAX_IDENT,
    CallrouteError,
    ErrorCode,
    Header,
    Method,
    Request,
    decode,
    encode,
    error_reply,
    parse_request,
)
from callroute.rooms import Conference, Member, Push
from callroute.server import App
from callroute.store import decode_conference, encode_conference

pytestmark = pytest.mark.fuzz

SEED_SHAPE = {"id", "uuid", "method", "result"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)

# Text as a JSON escape can make it: any code point, lone surrogates included.
wire_text = st.lists(
    st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=12
).map("".join)

numbers = st.one_of(
    st.integers(),
    st.integers(0, 0xFFFFFFFF).map(str),
    st.from_regex(r"\A\s?[0-9]{0,12}\s?\Z"),
    st.text(st.characters(categories=["Nd", "No", "Zs"]), max_size=12),
    st.integers(4290, 4400).map(lambda n: "7" * n),
    wire_text,
)

# Identifiers as the seed sends them, so that many messages get past the envelope.
idents = st.from_regex(r"\A[0-9a-f-]{1,40}\Z", fullmatch=True) | st.integers(0, 10**12)

fields = st.one_of(idents, idents, json_values, wire_text, numbers)

methods = st.one_of(
    st.sampled_from([m.value for m in Method]).flatmap(
        lambda m: st.tuples(st.sampled_from(["", " ", "\n", "\t "]), st.just(m),
                            st.sampled_from(["", " ", "\u3000"])).map("".join)),
    fields,
)

params = st.fixed_dictionaries({"confId": fields}, optional={
    "crgwid": fields, "antissrc": numbers, "seq": fields, "type": numbers})

# Every field present (each may be wrong), or any subset of them.
messages = st.one_of(
    st.fixed_dictionaries({"id": fields, "uuid": fields, "method": methods, "params": params}),
    st.fixed_dictionaries({}, optional={
        "id": fields, "uuid": fields, "method": methods, "params": params | json_values}),
)

# Bodies: raw bytes, and messages serialized with every escape JSON allows.
bodies = st.one_of(
    st.binary(max_size=200),
    st.tuples(messages, st.booleans()).map(
        lambda m: json.dumps(m[0], ensure_ascii=m[1]).encode("utf-8", "surrogatepass")),
)


def answer(body: bytes) -> dict[str, Any] | Request:
    """The server's pipeline up to the front: a valid request or the error reply's JSON."""
    header = Header()
    try:
        message = decode(body)
        header = Header.of(message)
        return parse_request(message)
    except CallrouteError as exc:
        assert exc.code is not ErrorCode.INTERNAL
        reply: dict[str, Any] = json.loads(encode(error_reply(header, exc)))
        return reply


def assert_error_shape(reply: dict[str, Any]) -> None:
    assert set(reply) == SEED_SHAPE
    assert isinstance(reply["method"], str)
    assert reply["result"]["code"] in {c.value for c in ErrorCode} - {ErrorCode.INTERNAL}
    assert isinstance(reply["result"]["message"], str) and reply["result"]["message"]


def assert_valid(req: Request) -> None:
    for text in (req.uuid, req.conf_id):
        assert 0 < len(text) <= MAX_IDENT and text.isprintable()
        text.encode()
    if req.video is not None:
        assert 0 <= req.video.antissrc <= 0xFFFFFFFF


@given(bodies)
def test_any_body_gets_a_request_or_the_error_shape(body: bytes) -> None:
    got = answer(body)
    if isinstance(got, Request):
        assert_valid(got)
    else:
        assert_error_shape(got)


@given(messages | json_values)
def test_any_json_value_gets_a_request_or_the_error_shape(message: Any) -> None:
    body = json.dumps(message).encode("utf-8", "surrogatepass")
    got = answer(body)
    if isinstance(got, Request):
        assert_valid(got)
        assert isinstance(message, dict)
        assert got.method is Method(message["method"].strip())
    else:
        assert_error_shape(got)


@given(st.sampled_from(list(Method)), st.from_regex(r"\A[\w-]{1,40}\Z", fullmatch=True),
       st.integers(0, 0xFFFFFFFF), st.booleans(), st.sampled_from([1, 2]), st.booleans())
def test_valid_requests_parse_as_sent(
    method: Method, ident: str, ssrc: int, ssrc_text: bool, kind: int, kind_text: bool,
) -> None:
    params: dict[str, Any] = {"confId": ident, "antissrc": str(ssrc) if ssrc_text else ssrc,
                              "seq": ident, "type": str(kind) if kind_text else kind}
    got = answer(json.dumps(
        {"id": ident, "uuid": ident, "method": method.value, "params": params}).encode())
    assert isinstance(got, Request)
    assert (got.method, got.uuid, got.conf_id) == (method, ident, ident)
    if got.video is not None:
        assert (got.video.antissrc, got.video.type) == (ssrc, params["type"])


@given(bodies)
def test_the_http_front_answers_json_in_the_seed_shape(body: bytes) -> None:
    app = App(Harness().front, body_limit=150)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got.update(status=status, headers=dict(headers))

    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    reply = json.loads(b"".join(app(environ, start_response)))
    assert got["headers"]["Content-Type"].startswith("application/json")
    assert got["status"] == ("413 Payload Too Large" if len(body) > 150 else "200 OK")
    assert set(reply) == SEED_SHAPE
    if "code" in reply["result"]:
        assert_error_shape(reply)


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@st.composite
def conferences(draw: st.DrawFn) -> Conference:
    uuids = draw(st.lists(names, unique=True, max_size=5))
    conf = Conference(draw(names), draw(names))
    for uuid in uuids:
        conf.members[uuid] = Member(uuid, draw(st.integers(1, 0xFFFFFFFF)), draw(names),
                                    draw(names), draw(st.text(max_size=8)))
    for uuid in draw(st.lists(st.sampled_from(uuids), unique=True)) if uuids else []:
        conf.pushes[uuid] = Push(uuid, draw(names), set(draw(st.lists(st.sampled_from(uuids)))))
    for watcher in draw(st.lists(st.sampled_from(uuids), unique=True)) if uuids else []:
        conf.avsync[watcher] = draw(st.sampled_from(uuids))
    return conf


@given(conferences())
def test_the_redis_record_round_trips(conf: Conference) -> None:
    """What one front saves (``wxmgw:conf:{confId}``) is what another reads, names included."""
    again = decode_conference(encode_conference(conf))
    assert again == conf and again.saved == conf.names()
    assert json.loads(encode_conference(conf))["gateway"] == conf.gateway
