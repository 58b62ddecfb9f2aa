"""One error tree for the gateway.

Every error carries the reply code it maps to; only the service layer turns
an error into a Thrift ``code``/``message`` pair (a handler that raises makes
thriftpy2 drop the connection).
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Reply codes of the WxMgw Thrift service (the table in the README)."""

    OK = 0
    INVALID_ARGUMENT = 400
    UNKNOWN_LEG = 404
    CONFLICT = 409
    NO_LOCAL_SOURCE = 424
    INTERNAL = 500
    NO_FREE_PORT = 503


class WxmgwError(Exception):
    """Root of the gateway's errors."""

    code: Code = Code.INTERNAL


class InvalidArgument(WxmgwError):
    code = Code.INVALID_ARGUMENT


class UnknownLeg(WxmgwError):
    code = Code.UNKNOWN_LEG


class Conflict(WxmgwError):
    code = Code.CONFLICT


class NoLocalSource(WxmgwError):
    """A ``weixin`` StartPush names a mini-program that has no Rtmp2rtp here."""

    code = Code.NO_LOCAL_SOURCE


class NoFreePort(WxmgwError):
    code = Code.NO_FREE_PORT


class ParseError(WxmgwError, ValueError):
    """Bytes from the wire that do not parse (RTP, RTCP, H.264, FLV)."""

    code = Code.INVALID_ARGUMENT


class MediaError(WxmgwError):
    """A media stream that cannot be handled (unsupported codec, broken open)."""
