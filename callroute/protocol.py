"""The JSON protocol between callroutegw and the callroute front (seed "接口").

A request is one JSON object ``{"id", "uuid", "method", "params"}``; a reply is
``{"id", "uuid", "method", "result": {...}}``. ``id``, ``uuid`` and ``method``
are echoed as received (the seed: "内容为请求的method值"), so ``" wxreqavsync"``
comes back with its space. Every failure answers
``"result": {"code": "<code>", "message": "<why>"}`` with these codes:

====  ====================  ===================================================
code  name                  when
====  ====================  ===================================================
111   INVALID_FORMAT        not JSON, not an object, a field missing or of the
                            wrong type or value (``antissrc``, ``type``, ...)
112   UNKNOWN_METHOD        ``method`` is none of the five
113   UNKNOWN_CONFERENCE    no mini-program has joined ``confId``
114   NOT_JOINED            ``uuid`` is not a member of ``confId``
115   ALREADY_JOINED        ``uuid`` is already in ``confId`` (or in another
                            conference)
116   UNKNOWN_MEMBER        ``antissrc`` names no member of ``confId``
117   GATEWAY_UNAVAILABLE   no healthy wxmgw, or it did not answer in time, or
                            the conference store (Redis) did not
118   GATEWAY_ERROR         wxmgw answered an error; the message carries its
                            code (``wxmgw 503: ...``)
119   BODY_TOO_LARGE        the HTTP body exceeds the front's limit (HTTP 413)
120   HTTP_METHOD           not ``POST`` (HTTP 405)
121   NOT_FOUND             unknown HTTP path (HTTP 404)
122   NOT_WATCHING          ``wxcancelvideo`` of a video that was not requested
123   INTERNAL              a bug in the front; logged with its traceback
====  ====================  ===================================================

Accepted quirks of the seed: ``method`` surrounded by white space,
``type`` as ``"1"`` or ``1``, ``id``/``uuid``/``confId``/``crgwid``/``antissrc``/``seq``
as strings or integers (booleans, fractions and blanks inside are refused).
Numbers given as strings (``antissrc``, ``type``) are at most ten ASCII digits,
so no input makes ``int()`` work on thousands of digits or on other scripts'
digits. The seed's examples carry ``//`` comments; the wire carries plain JSON
(RFC 8259), and text that is not Unicode (invalid UTF-8, an escaped lone
surrogate) is refused with 111 like any other malformed body.

Everything here is pure: bytes in, dataclasses and dicts out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, TypeGuard

JsonScalar = str | int

MAX_IDENT = 128
"""Longest ``id``, ``uuid``, ``confId``, ``crgwid`` or ``seq`` accepted."""

MAX_DIGITS = 10
"""Longest decimal text accepted for a number (``antissrc``, ``type``): any 32-bit value."""

VIDEO_TYPES = {1: "video", 2: "screen share"}
"""The seed's request ``type``: 1 video, 2 screen share (echoed, not interpreted)."""


class ErrorCode(StrEnum):
    """The ``result.code`` strings of an error reply (table in the module docstring)."""

    INVALID_FORMAT = "111"
    UNKNOWN_METHOD = "112"
    UNKNOWN_CONFERENCE = "113"
    NOT_JOINED = "114"
    ALREADY_JOINED = "115"
    UNKNOWN_MEMBER = "116"
    GATEWAY_UNAVAILABLE = "117"
    GATEWAY_ERROR = "118"
    BODY_TOO_LARGE = "119"
    HTTP_METHOD = "120"
    NOT_FOUND = "121"
    NOT_WATCHING = "122"
    INTERNAL = "123"


class CallrouteError(Exception):
    """Root of the front's errors; each carries the reply code it maps to."""

    code: ErrorCode = ErrorCode.INTERNAL


class InvalidFormat(CallrouteError):
    code = ErrorCode.INVALID_FORMAT


class UnknownMethod(CallrouteError):
    code = ErrorCode.UNKNOWN_METHOD


class UnknownConference(CallrouteError):
    code = ErrorCode.UNKNOWN_CONFERENCE


class NotJoined(CallrouteError):
    code = ErrorCode.NOT_JOINED


class AlreadyJoined(CallrouteError):
    code = ErrorCode.ALREADY_JOINED


class UnknownMember(CallrouteError):
    code = ErrorCode.UNKNOWN_MEMBER


class GatewayUnavailable(CallrouteError):
    """No healthy wxmgw, or the Thrift call failed at the transport."""

    code = ErrorCode.GATEWAY_UNAVAILABLE


class StoreUnavailable(CallrouteError):
    """The conference store (Redis) did not answer, or a conference stayed busy too long.

    Answered 117 like an unreachable gateway: the request did nothing, try again.
    """

    code = ErrorCode.GATEWAY_UNAVAILABLE


class GatewayError(CallrouteError):
    """wxmgw replied with a non-zero ``code``."""

    code = ErrorCode.GATEWAY_ERROR

    def __init__(self, call: str, gateway_code: int, message: str) -> None:
        super().__init__(f"wxmgw {call} {gateway_code}: {message}")
        self.gateway_code = gateway_code


class BodyTooLarge(CallrouteError):
    code = ErrorCode.BODY_TOO_LARGE


class HttpMethodNotAllowed(CallrouteError):
    code = ErrorCode.HTTP_METHOD


class NotFound(CallrouteError):
    code = ErrorCode.NOT_FOUND


class NotWatching(CallrouteError):
    code = ErrorCode.NOT_WATCHING


class Method(Enum):
    JOIN = "wxjoinconf"
    QUIT = "wxquitconf"
    REQ_VIDEO = "wxreqvideo"
    CANCEL_VIDEO = "wxcancelvideo"
    REQ_AVSYNC = "wxreqavsync"


@dataclass(frozen=True, slots=True)
class Header:
    """What a reply echoes: the request's ``id``, ``uuid`` and ``method`` as received."""

    id: JsonScalar = ""
    uuid: JsonScalar = ""
    method: str = ""

    @classmethod
    def of(cls, message: object) -> Header:
        """Best effort, never raises: fields of a wrong type echo as ``""``."""
        if not isinstance(message, dict):
            return cls()

        def scalar(name: str) -> JsonScalar:
            value = message.get(name)
            return value if _is_scalar(value) else ""

        method = message.get("method")
        return cls(scalar("id"), scalar("uuid"), method if isinstance(method, str) else "")


@dataclass(frozen=True, slots=True)
class VideoRef:
    """``wxreqvideo`` / ``wxcancelvideo`` / ``wxreqavsync``: which member, echoed seq/type."""

    antissrc: int
    seq: JsonScalar
    type: JsonScalar


@dataclass(frozen=True, slots=True)
class Request:
    method: Method
    uuid: str
    conf_id: str
    crgwid: str
    video: VideoRef | None = None


def _is_scalar(value: object) -> TypeGuard[JsonScalar]:
    return isinstance(value, str | int) and not isinstance(value, bool)


def decode(body: bytes) -> Any:
    """The JSON value of ``body`` (UTF-8, a BOM tolerated); InvalidFormat otherwise.

    A string escape may name a lone surrogate (``"\\ud800"``, RFC 8259 §8.2),
    which is no Unicode character: such text could be neither logged nor
    echoed in the reply, so the body is refused like undecodable UTF-8.
    """
    try:
        value = json.loads(body.decode("utf-8-sig"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidFormat(f"body is not JSON: {exc}") from None
    if _has_surrogate(value):
        raise InvalidFormat("body is not JSON: a string escapes a lone surrogate")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(value: Any) -> bool:
    """Whether a string (or object key) anywhere in a decoded JSON value holds a surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _ident(container: dict[str, Any], name: str, *, required: bool = True) -> str:
    """An identifier given as a string or an integer, as text without blanks or controls."""
    value = container.get(name)
    if value is None and not required:
        return ""
    if not _is_scalar(value):
        raise InvalidFormat(f"{name} must be a string or an integer")
    text = str(value)
    if not text:
        raise InvalidFormat(f"{name} must not be empty")
    if len(text) > MAX_IDENT or not text.isprintable() or any(c.isspace() for c in text):
        raise InvalidFormat(f"{name} must be at most {MAX_IDENT} printable non-blank characters")
    return text


def _number(value: object) -> int | None:
    """A JSON integer, or 1 to MAX_DIGITS ASCII digits in a string (blanks around tolerated)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if 0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdecimal():
            return int(text)
    return None


def _ssrc(value: object) -> int:
    """``antissrc``: a 32-bit RTP SSRC (RFC 3550 section 5.1) as decimal text or integer."""
    number = _number(value)
    if number is None or not 0 <= number <= 0xFFFFFFFF:
        raise InvalidFormat("antissrc must be a 32-bit SSRC")
    return number


def _video(params: dict[str, Any]) -> VideoRef:
    _ident(params, "seq")
    kind = params.get("type")
    if not _is_scalar(kind) or _number(kind) not in VIDEO_TYPES:
        raise InvalidFormat("type must be 1 (video) or 2 (screen share)")
    return VideoRef(antissrc=_ssrc(params.get("antissrc")), seq=params["seq"], type=kind)


def parse_request(message: Any) -> Request:
    """Validate a decoded message; raises InvalidFormat or UnknownMethod."""
    if not isinstance(message, dict):
        raise InvalidFormat("message must be a JSON object")
    _ident(message, "id")
    uuid = _ident(message, "uuid")
    raw_method = message.get("method")
    if not isinstance(raw_method, str):
        raise InvalidFormat("method must be a string")
    try:
        method = Method(raw_method.strip())
    except ValueError:
        raise UnknownMethod(f"unknown method {raw_method.strip()[:MAX_IDENT]!r}") from None
    params = message.get("params")
    if not isinstance(params, dict):
        raise InvalidFormat("params must be a JSON object")
    video = None if method in (Method.JOIN, Method.QUIT) else _video(params)
    return Request(
        method=method,
        uuid=uuid,
        conf_id=_ident(params, "confId"),
        crgwid=_ident(params, "crgwid", required=False),
        video=video,
    )


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What a mini-program needs after ``wxjoinconf`` (numbers go out as strings)."""

    ssrc: int
    pushurl: str
    pullurl: str
    pullaudiourl: str
    audioip: str
    audiortpport: int
    videoip: str
    videortpport: int

    def as_result(self) -> dict[str, str]:
        return {
            "audiossrc": str(self.ssrc),
            "videossrc": str(self.ssrc),
            "pushurl": self.pushurl,
            "pullurl": self.pullurl,
            "pullaudiourl": self.pullaudiourl,
            "audioip": self.audioip,
            "audiortpport": str(self.audiortpport),
            "videoip": self.videoip,
            "videortpport": str(self.videortpport),
        }


def video_result(video: VideoRef, pullurl: str | None) -> dict[str, JsonScalar]:
    """``seq`` and ``type`` echoed as received, plus ``pullurl`` when there is one."""
    result: dict[str, JsonScalar] = {} if pullurl is None else {"pullurl": pullurl}
    result.update(seq=video.seq, type=video.type)
    return result


def reply(header: Header, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": header.id, "uuid": header.uuid, "method": header.method, "result": result}


def error_reply(header: Header, error: CallrouteError) -> dict[str, Any]:
    return reply(header, {"code": error.code.value, "message": str(error) or error.code.name})


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
