"""An on-call operator's view of a conference with faults injected, end to end.

A real nginx-rtmp and `wxmgw serve`; a mini-program (ffmpeg) pulled toward a
MAS, and a member whose RTP (GStreamer) reaches the gateway through a relay
that plays the MAS: passing, silent or lossy. Faults, in order: nginx-rtmp
restarted, the MAS silent for 15 s, the MAS losing a fifth of its packets.
What must show them: the metrics (reconnect counters, the silence gauge and
the stalled state, the loss counter), the shipped alert expression
evaluated by promtool over the scraped samples, the status page in headless
Chromium, and `wxmgw story` listing the faults in order with their times.

``WXMGW_STATUS_SCREENSHOT=path`` keeps the page's screenshot (the README's).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import thriftpy2
from conftest import ffmpeg_publish_args
from media_checks import wait_for
from prometheus_client.parser import text_string_to_metric_families
from thriftpy2.rpc import make_client
from wxmgw_proc import ROOT, GatewayProcess

from wxmgw.nginx import NginxRtmp

tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="t_observability_thrift")
RULES = ROOT / "deploy" / "prometheus" / "wxmgw-alerts.yml"
CONF = "c16"
SILENCE = 15.0
STALL_AFTER = 3

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MasRelay:
    """The member's RTP on its way to the gateway, as a MAS would send it: ``mode`` is
    ``pass``, ``silent`` (nothing goes) or ``lossy`` (a seeded fifth is dropped)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.mode = "pass"
        self.inbound = udp()
        self.outbound = udp()
        self.port = self.inbound.getsockname()[1]
        self._random = random.Random(16)
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            data = self.inbound.recv(65536)
            if self.mode == "pass" or (self.mode == "lossy" and self._random.random() >= 0.2):
                self.outbound.sendto(data, ("127.0.0.1", self.target))

    def close(self) -> None:
        self._greenlet.kill()
        self.inbound.close()
        self.outbound.close()


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path, rtp_ports=20, extra=[
        "--stall-after", str(STALL_AFTER), "--stats-interval", "1"])
    yield gw
    gw.stop()


def spawn(procs: list[subprocess.Popen[bytes]], args: list[str]) -> None:
    procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))


def publish_mini_program(procs: list[subprocess.Popen[bytes]], nginx: NginxRtmp) -> None:
    spawn(procs, ffmpeg_publish_args(nginx.rtmp_url("mp1"), seconds=120))
    wait_for(lambda: nginx.is_publishing("mp1"), what="the mini-program publishing")


def scrape(gw: GatewayProcess) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.status_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return text, {(s.name, frozenset(s.labels.items())): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def legs(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {leg["uuid"]: leg for leg in gw.state()["legs"]}


def all_flowing(gw: GatewayProcess) -> bool:
    return {leg["media"] for leg in legs(gw).values()} == {"flowing"}


def alert_fires_for(text: str, samples: Samples, tmp: Path) -> None:
    """promtool evaluates WxmgwLegNoMedia's expression over the scraped silence gauges:
    exactly the member's two streams from the MAS come out."""
    found = re.search(r"alert: WxmgwLegNoMedia\n(?:\s+#.*\n)*\s+expr: (.+)", RULES.read_text())
    assert found, "WxmgwLegNoMedia's expression is on one line"
    expr = found[1]
    series = [(dict(ls), v) for (n, ls), v in samples.items()
              if n == "wxmgw_media_silence_seconds"]
    assert any(ls["uuid"] == "mp1" for ls, _ in series), text  # flowing, so not in the answer

    def selector(labels: dict[str, str]) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"wxmgw_media_silence_seconds{{{inner}}}"

    def number(v: float) -> str:
        return re.sub(r"\.0$", "", repr(v))

    firing = [(ls, v) for ls, v in series if ls["uuid"] == "m1" and ls["direction"] == "rtp_in"]
    assert len(firing) == 2 and all(v >= 10 for _, v in firing), series
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": selector(ls), "values": " ".join([number(v)] * 3)}
                             for ls, v in series],
            "promql_expr_test": [{
                "expr": expr, "eval_time": "30s",
                "exp_samples": [{"labels": selector(ls), "value": v} for ls, v in firing],
            }],
        }],
    }
    path = tmp / "stalled.test.yml"
    path.write_text(json.dumps(test))  # YAML reads JSON
    promtool = shutil.which("promtool")
    assert promtool, "make setup installs the Debian package prometheus"
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def chromium(url: str, tmp: Path, *how: str) -> str:
    browser = shutil.which("chromium")
    assert browser, "make setup installs the Debian package chromium"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp / 'chromium'}", "--hide-scrollbars",
         "--virtual-time-budget=5000", *how, url],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def page_shows_the_stall(gw: GatewayProcess, tmp: Path) -> None:
    """What a person sees: the conference, both legs, the member's leg marked stalled."""
    url = f"http://127.0.0.1:{gw.status_port}/"
    dom = chromium(url, tmp, "--dump-dom")
    assert f"Conference {CONF}" in dom, dom[-3000:]
    rows = dict(re.findall(r'<tr[^>]*? data-uuid="([^"]+)" data-media="([^"]+)"', dom))
    assert rows == {"mp1": "flowing", "m1": "stalled"}, dom[-3000:]
    assert ">STALLED</span>" in dom and ">FLOWING</span>" in dom
    assert re.search(r"rtp_in (audio|video) \d+ s", dom)  # how long, and which stream
    assert re.search(r"<div>rtmp_in av [1-9]\d*</div>", dom)  # the pull's kbit/s
    shot = tmp / "status.png"
    chromium(url, tmp, f"--screenshot={shot}", "--window-size=1000,330")
    assert shot.stat().st_size > 5000
    keep = os.environ.get("WXMGW_STATUS_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def story(gw: GatewayProcess) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "wxmgw.cli", "story", "--conf", CONF,
                           str(gw.log_path)], capture_output=True, text=True, timeout=30,
                          check=True, cwd=ROOT)
    return done.stdout.splitlines()


def in_order(lines: list[str], *steps: tuple[str, ...]) -> list[str]:
    """The first line with all the words of each step, each after the previous one."""
    found, start = [], 0
    for words in steps:
        at = next((i for i in range(start, len(lines)) if all(w in lines[i] for w in words)),
                  None)
        assert at is not None, f"no {words} after line {start}:\n" + "\n".join(lines)
        found.append(lines[at])
        start = at + 1
    return found


def test_faults_show_in_metrics_alerts_status_page_and_story(
        nginx: NginxRtmp, gateway: GatewayProcess, procs: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    mcs = make_client(tpy.WxMgw, "127.0.0.1", gateway.thrift_port, timeout=10000)
    mas_audio, mas_video = udp(), udp()  # the MAS receiving the mini-program: never read
    publish_mini_program(procs, nginx)
    r = mcs.StartPull(tpy.StartPullReq(
        uuid="mp1", pullUrl=nginx.rtmp_url("mp1"), ssrc=0x16, masIp="127.0.0.1",
        audioPort=mas_audio.getsockname()[1], videoPort=mas_video.getsockname()[1],
        audioPayloadType=8, audioCodec="PCMA", videoPayloadType=96, VideoCodec="H264",
        confId=CONF))
    assert r.code == 0, r.message
    r = mcs.StartPush(tpy.StartPushReq(
        uuid="m1", pushUrl=nginx.rtmp_url("m1"), audioPayloadType=8, audioCodec="PCMA",
        videoPayloadType=96, videoCodec="H264", confId=CONF, reqUuid="mp1", weixin="0"))
    assert r.code == 0, r.message
    relays = [MasRelay(r.port.audio), MasRelay(r.port.video)]
    spawn(procs, ["gst-launch-1.0", "-q", *(
        "audiotestsrc is-live=true freq=500 samplesperbuffer=160 ! audio/x-raw,rate=8000,"
        f"channels=1 ! alawenc ! rtppcmapay pt=8 ! udpsink host=127.0.0.1 port={relays[0].port} "
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 ! x264enc "
        "tune=zerolatency key-int-max=25 speed-preset=ultrafast bitrate=300 ! rtph264pay "
        f"config-interval=-1 pt=96 ! udpsink host=127.0.0.1 port={relays[1].port}").split()])
    try:
        wait_for(lambda: all_flowing(gateway) and nginx.is_publishing("m1"),
                 what="both legs flowing")

        # 1. nginx-rtmp restarted: the pull and the push reconnect, the counters say so.
        nginx.restart()
        publish_mini_program(procs, nginx)
        wait_for(lambda: value(scrape(gateway)[1], "wxmgw_media_reconnects_total",
                               uuid="mp1", direction="rtmp_in") >= 1
                 and value(scrape(gateway)[1], "wxmgw_media_reconnects_total",
                           uuid="m1", direction="rtmp_out") >= 1,
                 what="reconnects counted")
        wait_for(lambda: all_flowing(gateway), what="flowing after the restart")

        # 2. The MAS silent for 15 s: the member's leg stalls, and says for how long.
        for relay in relays:
            relay.mode = "silent"
        silent_at = time.monotonic()
        wait_for(lambda: legs(gateway)["m1"]["media"] == "stalled", what="stalled")
        page_shows_the_stall(gateway, tmp_path)
        gevent.sleep(max(0.0, silent_at + 11 - time.monotonic()))
        text, samples = scrape(gateway)
        assert value(samples, "wxmgw_leg_media_state", uuid="m1", state="stalled") == 1
        assert value(samples, "wxmgw_leg_media_state", uuid="mp1", state="flowing") == 1
        alert_fires_for(text, samples, tmp_path)
        gevent.sleep(max(0.0, silent_at + SILENCE - time.monotonic()))

        # 3. A lossy MAS: losses are counted, the leg flows again.
        lost_before = value(scrape(gateway)[1], "wxmgw_media_lost_packets_total", uuid="m1")
        for relay in relays:
            relay.mode = "lossy"
        wait_for(lambda: legs(gateway)["m1"]["media"] == "flowing", what="flowing again")
        gevent.sleep(4)
        lost = value(scrape(gateway)[1], "wxmgw_media_lost_packets_total", uuid="m1")
        assert lost > lost_before + 10
        for relay in relays:
            relay.mode = "pass"
        assert mcs.StopPush(tpy.StopPushReq(uuid="m1", confId=CONF)).code == 0
        assert mcs.StopPull(tpy.StopPullReq(uuid="mp1", confId=CONF)).code == 0
    finally:
        for relay in relays:
            relay.close()
        mas_audio.close()
        mas_video.close()

    lines = story(gateway)
    told = in_order(lines, ("leg_started", "mp1"), ("leg_started", "m1"),
                    ("pull_disconnected", "mp1"), ("pull_connected", "mp1"),
                    ("bitrate_zero", "m1"), ("media_stalled", "m1", "rtp_in"),
                    ("media_resumed", "m1", "rtp_in"), ("loss_spike", "m1"),
                    ("request", "m1", "StopPush -> 0"), ("leg_stopped", "mp1"))
    assert any("rtmp_push_disconnected" in line and "m1" in line for line in lines)
    stalled, resumed = told[5], told[6]
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3} ! ", stalled)  # a time, and marked
    assert float(re.search(r"silentS=([\d.]+)", resumed)[1]) >= SILENCE - 1  # type: ignore[index]
