"""`wxmgw story`: a conference's lines of several JSON logs, in time order, stats as changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wxmgw import cli
from wxmgw.story import read, story


def write(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text("not json\n" + "".join(json.dumps(e) + "\n" for e in entries))
    return path


def ts(second: float) -> str:
    return f"2026-01-01T10:00:{second:06.3f}Z"


def stats(second: float, kbps: float, packets: int, lost: int) -> dict[str, Any]:
    return {"ts": ts(second), "level": "info", "event": "leg_stats", "confId": "c1",
            "uuid": "m1", "leg": "rtp2rtmp",
            "audio": {"bytes": 1, "kbps": kbps, "packets": packets, "lost": lost}}


def logs(tmp_path: Path) -> list[Path]:
    front = write(
        tmp_path / "front.log",
        {"ts": ts(1), "level": "info", "event": "joined", "confId": "c1", "uuid": "m1",
         "gateway": "gw1"},
        {"ts": ts(1.1), "level": "info", "event": "request", "confId": "c1", "uuid": "m1",
         "method": "wxjoinconf", "code": "0"},
        {"ts": ts(2), "level": "info", "event": "request", "confId": "c2", "uuid": "x",
         "method": "wxjoinconf", "code": "0"},
        {"ts": ts(9), "level": "warning", "event": "gateway_down", "gateway": "gw1",
         "reason": "timeout"},
        {"ts": ts(9.5), "level": "warning", "event": "gateway_down", "gateway": "gw9"},
    )
    gateway = write(
        tmp_path / "gw1.log",
        {"ts": ts(1.05), "level": "info", "event": "request", "confId": "c1", "uuid": "m1",
         "method": "StartPull", "code": 0, "message": "ok"},
        {"ts": ts(1.06), "level": "info", "event": "leg_started", "confId": "c1",
         "uuid": "m1", "leg": "rtmp2rtp"},
        {"ts": ts(1.07), "level": "info", "event": "leg_started", "confId": "c1",
         "uuid": "m2", "leg": "rtmp2rtp"},
        stats(3, 64.0, 100, 0),
        stats(4, 63.0, 200, 1),
        {"ts": ts(5), "level": "warning", "event": "pull_disconnected", "confId": "c1",
         "uuid": "m1", "leg": "rtmp2rtp", "error": "end of stream", "retry_in": 0.5},
        stats(6, 40.0, 260, 30),
        stats(7, 0.0, 260, 30),
        {"ts": ts(7.5), "level": "warning", "event": "media_stalled", "confId": "c1",
         "uuid": "m1", "leg": "rtp2rtmp", "direction": "rtp_in", "media": "audio",
         "silentS": 5.0},
        stats(8, 64.0, 360, 30),
    )
    return [front, gateway]


def test_the_story_merges_both_logs_in_time_order(tmp_path: Path) -> None:
    lines = story(read(logs(tmp_path)), "c1", "m1")
    assert [(line.source, line.event) for line in lines] == [
        ("front", "joined"),
        ("gw1", "request"),
        ("gw1", "leg_started"),
        ("front", "request"),
        ("gw1", "pull_disconnected"),
        ("gw1", "loss_spike"),
        ("gw1", "bitrate_zero"),
        ("gw1", "media_stalled"),
        ("gw1", "bitrate_back"),
        ("front", "gateway_down"),
    ]
    text = [str(line) for line in lines]
    assert text[1].startswith("10:00:01.050") and "StartPull -> 0" in text[1]
    assert "audio 29 lost of 89 (33 %)" in text[5] and text[5][13] == "!"
    assert "audio 40.0 -> 0 kbps" in text[6]
    assert "direction=rtp_in media=audio silentS=5.0" in text[7]


def test_without_uuid_every_member_of_the_conference_is_told(tmp_path: Path) -> None:
    lines = story(read(logs(tmp_path)), "c1")
    assert {line.uuid for line in lines} == {"m1", "m2", ""}


def test_the_story_subcommand(tmp_path: Path, capsys: Any) -> None:
    paths = [str(p) for p in logs(tmp_path)]
    assert cli.main(["story", "--conf", "c1", "--uuid", "m1", *paths]) == 0
    assert "pull_disconnected" in capsys.readouterr().out
    assert cli.main(["story", "--conf", "nope", *paths]) == 1
    assert "no line about conference nope" in capsys.readouterr().out
