"""The stack of `make run` (:mod:`wxmgw.run`) with two gateways: nginx-rtmp, two
`wxmgw serve` and the callroute front, each a real process on free ports.

The front places conferences, so two conferences joined one after the other
land on different gateways; stopping the stack ends every process it started,
also when it fails halfway through starting.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from wxmgw_proc import free_port, free_port_range

from wxmgw.run import GatewayPorts, Stack, StackPorts, gateway_ports


def gateway(rtp_ports: int = 8) -> GatewayPorts:
    lo, hi = free_port_range(rtp_ports)
    return GatewayPorts(free_port(), free_port(), f"{lo}-{hi}")


def stack_ports(*gateways: GatewayPorts) -> StackPorts:
    return StackPorts(free_port(), free_port(), free_port(), gateways)


def descendants() -> set[int]:
    """The processes below this one, from each process's parent in ``/proc/*/stat``."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
    found: set[int] = set()
    below = {os.getpid()}
    while below:
        below = {pid for pid, parent in parents.items() if parent in below}
        found |= below
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def join(stack: Stack, uuid: str, conf_id: str) -> dict[str, Any]:
    body = json.dumps({"id": "1", "uuid": uuid, "method": "wxjoinconf",
                       "params": {"confId": conf_id, "crgwid": "53001"}}).encode()
    with urllib.request.urlopen(stack.front_url, body, timeout=10) as resp:
        result: dict[str, Any] = json.load(resp)["result"]
    return result


def rooms(state_url: str) -> set[str]:
    with urllib.request.urlopen(state_url, timeout=5) as resp:
        return {room["confId"] for room in json.load(resp)["rooms"]}


def test_gateway_ports_spread_from_the_first() -> None:
    spread = gateway_ports(GatewayPorts(9090, 9091, "30000-39999"), 2)
    assert spread == (GatewayPorts(9090, 9091, "30000-34999"),
                      GatewayPorts(9092, 9093, "35000-39999"))
    (odd,) = gateway_ports(GatewayPorts(9090, 9091, "30001-30006"), 1)
    assert odd.rtp == "30002-30005"
    with pytest.raises(ValueError, match="collide"):
        StackPorts(gateways=gateway_ports(GatewayPorts(9090, 9092), 2))


def test_two_conferences_land_on_two_gateways(tmp_path: Path) -> None:
    before = descendants()
    stack = Stack(stack_ports(gateway(), gateway()), tmp_path / "run")
    with stack:
        started = descendants() - before
        assert len(started) >= 4   # nginx, two gateways, the front
        for uuid, conf_id in (("alice", "conf-a"), ("bob", "conf-b")):
            assert "code" not in join(stack, uuid, conf_id)
        placed = [rooms(url) for url in stack.state_urls]
        assert sorted(map(sorted, placed)) == [["conf-a"], ["conf-b"]], placed
    assert stack.stop() == []
    assert not stack.nginx.running
    assert alive(started) == set()
    assert {p.name for p in (tmp_path / "run").glob("*.log")} == {
        "wxmgw-1.log", "wxmgw-2.log", "callroute.log"}


def test_a_start_that_fails_halfway_stops_what_it_started(tmp_path: Path) -> None:
    before = descendants()
    second = gateway()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", second.thrift))
        taken.listen()
        stack = Stack(stack_ports(gateway(), second), tmp_path / "run")
        with pytest.raises(SystemExit, match="exited early"):
            stack.start()
    assert len(stack.procs) == 2 and all(p.returncode is not None for p in stack.procs)
    assert not stack.nginx.running
    assert descendants() - before == set()
