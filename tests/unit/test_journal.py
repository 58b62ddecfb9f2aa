"""The journal of running legs: written at each change, restored on the same ports."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from wxmgw import requests as rq  # noqa: E402
from wxmgw.conference import Registry  # noqa: E402
from wxmgw.journal import FileJournal, Legs, PullEntry, PushEntry  # noqa: E402
from wxmgw.legs.base import LegContext  # noqa: E402
from wxmgw.ports import PortAllocator  # noqa: E402

PULL = rq.StartPull(
    uuid="mp1", conf_id="c1", pull_url="rtmp://127.0.0.1:1/live/mp1", ssrc=7,
    mas_ip="127.0.0.1", audio_port=5000, video_port=5002,
    audio=rq.RtpTarget(8, "PCMA"), video=rq.RtpTarget(96, "H264"), push_audio_url="",
)
PUSH = rq.StartPush(
    uuid="m1", conf_id="c1", push_url="rtmp://127.0.0.1:1/live/m1",
    audio=rq.RtpTarget(8, "PCMA"), video=rq.RtpTarget(96, "H264"), req_uuid="mp1",
    weixin=False,
)


def registry(allocator: PortAllocator, state: Path) -> Registry:
    return Registry(LegContext(allocator, "127.0.0.1"), FileJournal(state))


def test_round_trip(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path)
    legs = Legs([PullEntry(PULL, [30000, 30002], "m1")], [PushEntry(PUSH, [30004, 30006], ["a"])])
    journal.save(legs)
    assert FileJournal(tmp_path).load() == legs
    assert not list(tmp_path.glob("*.tmp"))


def test_a_restarted_registry_runs_the_same_legs_on_the_same_ports(ports, tmp_path):
    first = registry(ports, tmp_path)
    first.start_pull(PULL)
    push_ports = first.start_push(PUSH)
    first.start_push(replace(PUSH, req_uuid="mp2"))
    first.av_sync(rq.AvSync("mp1", "c1", "m1"))
    pull_ports = first.rtmp2rtp["mp1"].ports
    first.stop_all()  # as a graceful stop (or a crash) leaves it: the journal kept

    second = registry(ports, tmp_path)
    second.restore()
    try:
        assert not second.restore_failed, second.restore_failed
        assert second.rtmp2rtp["mp1"].ports == pull_ports
        assert second.rtp2rtmp["m1"].rtp_ports == push_ports
        assert second.rtp2rtmp["m1"].requesters == {"mp1", "mp2"}
        assert second.rtmp2rtp["mp1"].sync_uuid == "m1"
        second.stop_push(rq.LegRef("m1", "c1"))
        journal = second.snapshot()["journal"]
        assert journal["errors"] == 0 and journal["writes"] >= 2, journal
        assert [e.params.uuid for e in FileJournal(tmp_path).load().pushes] == []
    finally:
        second.stop_all()


def test_a_port_taken_meanwhile_fails_that_leg_only(ports, tmp_path):
    first = registry(ports, tmp_path)
    first.start_pull(PULL)
    audio, video = first.start_push(PUSH)
    first.stop_all()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", video))
        second = registry(ports, tmp_path)
        second.restore()
        try:
            assert "mp1" in second.rtmp2rtp and "m1" not in second.rtp2rtmp
            failed = second.snapshot()["restoreFailed"]
            assert [(f["uuid"], f["ports"], f["code"]) for f in failed] == [
                ("m1", [audio, video], 503)]
            assert video not in ports.in_use and audio not in ports.in_use
        finally:
            second.stop_all()


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 9}', '{"version": 1, "pulls": 3}'])
def test_an_unreadable_journal_is_set_aside(tmp_path: Path, text: str) -> None:
    (tmp_path / "legs.json").write_text(text)
    assert FileJournal(tmp_path).load() == Legs()
    assert (tmp_path / "legs.json.corrupt").read_text() == text


def test_a_bad_entry_is_skipped_the_rest_kept(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path)
    journal.save(Legs([PullEntry(PULL, [1, 2])]))
    doc = json.loads(journal.path.read_text())
    doc["pulls"].append({"params": {"uuid": "x"}, "ports": [], "sync_uuid": ""})
    doc["pulls"].append("nonsense")
    journal.path.write_text(json.dumps(doc))
    assert journal.load() == Legs([PullEntry(PULL, [1, 2])])
