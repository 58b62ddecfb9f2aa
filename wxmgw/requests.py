"""Validated requests: every Thrift request becomes one of these before anything starts.

Validation never touches gateway state; it only checks each field and turns
the Thrift struct into a frozen dataclass that the conference registry
compares (a repeated identical StartPull is a no-op, a differing one a
conflict).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wxmgw.errors import InvalidArgument

AUDIO_CODECS = ("PCMA", "PCMU", "G722", "OPUS")
VIDEO_CODECS = ("H264",)
_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")


@dataclass(frozen=True, slots=True)
class RtpTarget:
    """Where and how RTP is sent to (or expected from) the MAS for one stream."""

    payload_type: int
    codec: str


@dataclass(frozen=True, slots=True)
class StartPull:
    uuid: str
    conf_id: str
    pull_url: str
    ssrc: int
    mas_ip: str
    audio_port: int
    video_port: int
    audio: RtpTarget
    video: RtpTarget
    push_audio_url: str

    @property
    def mas_less(self) -> bool:
        """No MAS: wxmgw's own mixer gives the mini-program the room's N-1 mix."""
        return not self.mas_ip


@dataclass(frozen=True, slots=True)
class StartPush:
    uuid: str
    conf_id: str
    push_url: str
    audio: RtpTarget
    video: RtpTarget
    req_uuid: str
    weixin: bool


@dataclass(frozen=True, slots=True)
class LegRef:
    """StopPull / StopPush: which leg of which conference."""

    uuid: str
    conf_id: str


@dataclass(frozen=True, slots=True)
class AvSync:
    uuid: str
    conf_id: str
    sync_uuid: str


def _text(req: Any, name: str, *, required: bool = True) -> str:
    value = getattr(req, name, None)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise InvalidArgument(f"{name} is required")
    return value


def _int(req: Any, name: str, lo: int, hi: int) -> int:
    value = getattr(req, name, None)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidArgument(f"{name} must be an integer in {lo}-{hi}, got {value!r}")
    return value


def rtmp_url(value: str, name: str) -> str:
    """An ``rtmp://`` or ``rtmps://`` URL with a host and an app/stream path."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("rtmp", "rtmps"):
        raise InvalidArgument(f"{name} must be an rtmp:// or rtmps:// URL, got {value!r}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidArgument(f"{name} has a bad port: {value!r}") from None
    if not host:
        raise InvalidArgument(f"{name} has no host: {value!r}")
    del port
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2:
        raise InvalidArgument(f"{name} must name an app and a stream: {value!r}")
    return value


def _codec(req: Any, name: str, known: tuple[str, ...], *, required: bool = True) -> str:
    codec = _text(req, name, required=required).upper()
    if codec and codec not in known:
        raise InvalidArgument(f"{name} {codec!r} is not one of {', '.join(known)}")
    return codec


def _target(
    req: Any, kind: str, codec_field: str, known: tuple[str, ...], required: bool
) -> RtpTarget:
    codec = _codec(req, codec_field, known, required=required)
    if not codec:
        return RtpTarget(payload_type=0, codec="")
    return RtpTarget(payload_type=_int(req, f"{kind}PayloadType", 0, 127), codec=codec)


def _host(value: str) -> str:
    """An IP literal or a name that resolves (to IPv4, the media plane's family)."""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(value, None, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        raise InvalidArgument(
            f"masIp {value!r} is neither an IPv4 address nor a resolvable name"
        ) from None
    return str(infos[0][4][0])


def start_pull(req: Any) -> StartPull:
    uuid, conf_id = _text(req, "uuid"), _text(req, "confId")
    pull_url = rtmp_url(_text(req, "pullUrl"), "pullUrl")
    push_audio_url = _text(req, "pushAudioUrl", required=False)
    if push_audio_url:
        rtmp_url(push_audio_url, "pushAudioUrl")
    ssrc = _int(req, "ssrc", 0, 0xFFFFFFFF)
    mas_ip = _text(req, "masIp", required=False)
    if mas_ip:
        mas_ip = _host(mas_ip)
        audio_port = _int(req, "audioPort", 1, 65535)
        video_port = _int(req, "videoPort", 1, 65535)
    else:
        audio_port = _int(req, "audioPort", 0, 0)
        video_port = _int(req, "videoPort", 0, 0)
    return StartPull(
        uuid=uuid,
        conf_id=conf_id,
        pull_url=pull_url,
        ssrc=ssrc,
        mas_ip=mas_ip,
        audio_port=audio_port,
        video_port=video_port,
        audio=_target(req, "audio", "audioCodec", AUDIO_CODECS, required=bool(mas_ip)),
        video=_target(req, "video", "VideoCodec", VIDEO_CODECS, required=bool(mas_ip)),
        push_audio_url=push_audio_url,
    )


def _flag(req: Any, name: str) -> bool:
    value = _text(req, name, required=False).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"{name} must be one of 1/true/0/false/empty, got {value!r}")


def start_push(req: Any) -> StartPush:
    weixin = _flag(req, "weixin")
    return StartPush(
        uuid=_text(req, "uuid"),
        conf_id=_text(req, "confId"),
        push_url=rtmp_url(_text(req, "pushUrl"), "pushUrl"),
        audio=_target(req, "audio", "audioCodec", AUDIO_CODECS, required=not weixin),
        video=_target(req, "video", "videoCodec", VIDEO_CODECS, required=not weixin),
        req_uuid=_text(req, "reqUuid", required=False),
        weixin=weixin,
    )


def leg_ref(req: Any) -> LegRef:
    return LegRef(uuid=_text(req, "uuid"), conf_id=_text(req, "confId"))


def av_sync(req: Any) -> AvSync:
    return AvSync(
        uuid=_text(req, "uuid"),
        conf_id=_text(req, "confId"),
        sync_uuid=_text(req, "syncUuid", required=False),
    )
