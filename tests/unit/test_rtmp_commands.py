"""RTMP commands: built as FFmpeg sends them, read back, answers matched."""

from __future__ import annotations

import pytest

from wxmgw.errors import ParseError
from wxmgw.rtmp import amf0, commands
from wxmgw.rtmp.commands import Command
from wxmgw.rtmp.url import RtmpUrl

URL = RtmpUrl.parse("rtmp://h:1936/live/cam?txSecret=s")


@pytest.mark.parametrize("command", [
    commands.connect(1, URL), commands.create_stream(2),
    commands.play(URL.stream), commands.publish(URL.stream),
])
def test_commands_read_back_as_built(command: Command) -> None:
    assert Command.parse(bytes(command)) == command


def test_connect_and_play_carry_what_ffmpeg_sends() -> None:
    connect = commands.connect(1, URL)
    assert connect.transaction == 1.0
    assert isinstance(connect.object, dict)
    assert (connect.object["app"], connect.object["tcUrl"]) == ("live", "rtmp://h:1936/live")
    assert bytes(commands.play(URL.stream)) == amf0.encode(
        "play", 0.0, None, "cam?txSecret=s", -1000.0
    )


def test_answers_give_their_result_and_information() -> None:
    result = Command.parse(amf0.encode("_result", 2.0, None, 1.0))
    assert result is not None and (result.transaction, result.result) == (2.0, 1.0)
    status = Command.parse(amf0.encode("onStatus", 0.0, None, {"code": "NetStream.Play.Start"}))
    assert status is not None and status.info == {"code": "NetStream.Play.Start"}
    bare = Command.parse(amf0.encode("onStatus", 0.0))
    assert bare is not None and (bare.object, bare.result, bare.info) == (None, None, {})


@pytest.mark.parametrize("values", [(), ("onStatus",), (1.0, "x"), (None, 0.0)])
def test_values_that_do_not_start_like_a_command_are_none(values: tuple[amf0.Value]) -> None:
    assert Command.parse(amf0.encode(*values)) is None


def test_bad_amf0_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        Command.parse(b"\x02\x00\x05ab")
