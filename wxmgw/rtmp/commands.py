"""RTMP commands (§7.2): what the client asks, and the answers it reads, as AMF0 values.

A command message (§7.1.1) is a name, a transaction id, a command object
(null when there is none) and the command's arguments. The client builds
``connect`` (§7.2.1.1), ``createStream`` (§7.2.1.3), ``play`` (§7.2.2.1) and
``publish`` (§7.2.2.6) with the values FFmpeg sends, which every live server
takes; it reads ``_result``/``_error`` and ``onStatus`` (§7.2.2) with
:meth:`Command.parse`. Pure: bytes in, a frozen dataclass out, and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from wxmgw.rtmp import amf0
from wxmgw.rtmp.url import RtmpUrl

#: ``play``'s start: -1000 as FFmpeg sends it for a live stream (its -1 s, in ms).
_LIVE_START: Final = -1000.0


@dataclass(frozen=True, slots=True)
class Command:
    """One command: ``bytes(command)`` is its AMF0 payload.

    ``transaction`` is kept as the peer sent it (a number when it is sane),
    so an answer is matched by comparing it to the number asked with.
    """

    name: str
    transaction: amf0.Value
    object: amf0.Value = None
    arguments: tuple[amf0.Value, ...] = ()

    @classmethod
    def parse(cls, payload: bytes, max_depth: int = amf0.MAX_DEPTH) -> Command | None:
        """The command of a COMMAND_AMF0 message; None if its values do not start like one.

        AMF0 that does not decode (or nests deeper than ``max_depth``) is a
        :class:`~wxmgw.errors.ParseError`.
        """
        values = amf0.decode(payload, max_depth)
        if len(values) < 2 or not isinstance(values[0], str):
            return None
        return cls(values[0], values[1], values[2] if len(values) > 2 else None,
                   tuple(values[3:]))

    def __bytes__(self) -> bytes:
        return amf0.encode(self.name, self.transaction, self.object, *self.arguments)

    @property
    def result(self) -> amf0.Value:
        """The first argument: ``_result``'s return value (createStream's stream id)."""
        return self.arguments[0] if self.arguments else None

    @property
    def info(self) -> dict[str, amf0.Value]:
        """The information object of ``onStatus`` and ``_error`` (level, code, description)."""
        return self.result if isinstance(self.result, dict) else {}


def connect(transaction: int, url: RtmpUrl) -> Command:
    """``connect`` to ``url``'s application (§7.2.1.1), with the properties FFmpeg sends."""
    return Command("connect", float(transaction), {
        "app": url.app, "type": "nonprivate", "flashVer": "LNX 9,0,124,2",
        "tcUrl": url.tc_url, "fpad": False, "capabilities": 15.0,
        "audioCodecs": 4071.0, "videoCodecs": 252.0, "videoFunction": 1.0,
    })


def create_stream(transaction: int) -> Command:
    """``createStream`` (§7.2.1.3): ``_result`` answers with the message stream id."""
    return Command("createStream", float(transaction))


def play(stream: str) -> Command:
    """``play`` a live stream by name, with its query (§7.2.2.1)."""
    return Command("play", 0.0, None, (stream, _LIVE_START))


def publish(stream: str) -> Command:
    """``publish`` a live stream by name, with its query (§7.2.2.6)."""
    return Command("publish", 0.0, None, (stream, "live"))
