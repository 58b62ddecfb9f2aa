"""Live servers as they are in the field (#15): RTMPS, URLs with a query, GStreamer's publisher.

RTMPS: nginx's ``stream`` module terminates TLS, with a certificate the test
makes (``localhost`` only), in front of nginx-rtmp. URL queries: nginx-rtmp's
``on_publish``/``on_play`` receive what our client and FFmpeg send.
GStreamer's ``rtmp2sink`` publishes to node-media-server for the pull.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
from conftest import LiveServer, ffmpeg_publish_args
from media_checks import wait_for
from test_rtmp2rtp import MasPeer, leg_state, start_pull, tpy
from test_rtmp_io import Collector, dominant_hz
from thriftpy2.rpc import make_client
from wxmgw_proc import GatewayProcess

from wxmgw.media.frames import AUDIO_RATE, AudioFrame
from wxmgw.media.rtmp_writer import RtmpWriter
from wxmgw.nginx import NginxRtmp, free_port, rtmp_module_path
from wxmgw.procs import terminate
from wxmgw.rtmp.chunk import RtmpLimits

STREAM_MODULE = rtmp_module_path().with_name("ngx_stream_module.so")


class TlsFront:
    """nginx's stream module terminating TLS for an nginx-rtmp: ``rtmps://localhost:port``."""

    def __init__(self, workdir: Path, rtmp_port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(self.cert), "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost"],
            check=True, capture_output=True,
        )
        self.port = free_port()
        conf = workdir / "tls.conf"
        conf.write_text(f"""
load_module {STREAM_MODULE};
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {key};
        proxy_pass 127.0.0.1:{rtmp_port};
    }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", f"{workdir}/"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(self._listening, what="TLS front listening")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def url(self, stream: str, host: str = "localhost") -> str:
        return f"rtmps://{host}:{self.port}/live/{stream}"

    def stop(self) -> None:
        terminate(self.proc, timeout=5.0)


@pytest.fixture(scope="module")
def tls(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    assert isinstance(live, NginxRtmp)
    front = TlsFront(tmp_path_factory.mktemp("tls"), live.rtmp_port)
    yield front
    front.stop()


@pytest.fixture
def publisher(procs: list[subprocess.Popen[bytes]]) -> Any:
    def publish(url: str) -> None:
        procs.append(subprocess.Popen(ffmpeg_publish_args(url, seconds=120),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    return publish


def test_rtmps_pull_and_push_through_a_tls_terminator(
        live: NginxRtmp, tls: TlsFront, publisher: Any, tmp_path: Path) -> None:
    """A gateway that trusts the test's CA pulls and pushes rtmps://; a URL the
    certificate does not name gets a clear error in the log and the leg's state."""
    publisher(live.rtmp_url("tls-mini"))
    wait_for(lambda: live.is_publishing("tls-mini"), what="mini-program publishing")
    gw = GatewayProcess(tmp_path, extra=["--rtmps-ca-file", str(tls.cert)])
    client = make_client(tpy.WxMgw, "127.0.0.1", gw.thrift_port, timeout=10000)
    mas, wrong = MasPeer(), MasPeer()
    try:
        start_pull(client, "mp-tls", tls.url("tls-mini"), mas,
                   push_audio_url=tls.url("tls-mix"))
        wait_for(lambda: len(mas.video.packets) > 25 and len(mas.audio.packets) > 25,
                 what="RTP of an rtmps:// pull")
        wait_for(lambda: live.is_publishing("tls-mix"), what="rtmps:// mix published")

        # 127.0.0.1 is not a name the certificate has: refused, said so, retried.
        start_pull(client, "mp-wrong-name", tls.url("tls-mini", host="127.0.0.1"), wrong)
        wait_for(lambda: "certificate" in leg_state(gw, "mp-wrong-name")["stats"]["lastError"],
                 what="certificate error in the leg's state")
        error = leg_state(gw, "mp-wrong-name")["stats"]["lastError"]
        assert "refused" in error and "127.0.0.1" in error, error
        assert any("certificate" in e.get("error", "") for e in gw.events("pull_disconnected"))
        assert not wrong.video.packets
    finally:
        client.close()
        mas.close()
        wrong.close()
        assert gw.stop() == 0


def test_rtmps_without_verification_and_a_bad_certificate(
        live: NginxRtmp, tls: TlsFront, publisher: Any) -> None:
    """Our client straight: the system's CAs refuse the test's certificate; with
    verification off (a private deployment) it plays."""
    publisher(live.rtmp_url("tls-cam"))
    wait_for(lambda: live.is_publishing("tls-cam"), what="publishing")
    strict, lax = Collector(), Collector()
    readers = [strict.reader(tls.url("tls-cam")),
               lax.reader(tls.url("tls-cam"), limits=RtmpLimits(tls_verify=False))]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: len(lax.video) > 10 and len(lax.audio) > 10, what="media over TLS")
        wait_for(lambda: strict.count("disconnected") > 0, what="refused certificate")
        errors = [i["error"] for k, i in strict.events if k == "disconnected"]
        assert "rtmps: certificate of localhost refused" in errors[0], errors
        assert not strict.video
    finally:
        for reader in readers:
            reader.close()


class _Notify(BaseHTTPRequestHandler):
    calls: list[dict[str, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).calls.append({k: v[0] for k, v in parse_qs(body).items()})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def notified(tmp_path: Path) -> Iterator[tuple[NginxRtmp, list[dict[str, str]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Notify)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Notify.calls = []
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with NginxRtmp(tmp_path / "nginx", notify_url=url) as nginx:
        yield nginx, _Notify.calls
    server.shutdown()


def test_url_query_reaches_on_publish_and_on_play_as_ffmpeg_sends_it(
        notified: tuple[NginxRtmp, list[dict[str, str]]], procs: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    """Cloud live services authenticate with the query (``?txSecret=…&txTime=…``)."""
    nginx, calls = notified
    query = "txSecret=f00d&txTime=65A0B1C2"
    ours = RtmpWriter(f"{nginx.rtmp_url('ours')}?{query}", name="q", on_event=lambda *_: None,
                      video=False)
    silence = np.zeros(960, np.int16)
    for i in range(10):
        ours.write_audio(AudioFrame(silence, i * 0.02), i * 20)
    procs.append(subprocess.Popen(
        ffmpeg_publish_args(f"{nginx.rtmp_url('theirs')}?{query}", seconds=30),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_for(lambda: {c.get("name") for c in calls if c.get("call") == "publish"}
                 >= {"ours", "theirs"}, what="both publishes notified")
        player = Collector()
        reader = player.reader(f"{nginx.rtmp_url('theirs')}?{query}")
        reader.start()
        wait_for(lambda: any(c.get("call") == "play" for c in calls), what="play notified")
        reader.close()
    finally:
        ours.close()
    by_name = {(c["call"], c["name"]): c for c in calls}
    for key in (("publish", "ours"), ("publish", "theirs"), ("play", "theirs")):
        call = by_name[key]
        assert call["txSecret"] == "f00d" and call["txTime"] == "65A0B1C2", call
        assert call["app"] == "live" and "?" not in call.get("tcurl", ""), call
    ffmpeg, ours_call = by_name["publish", "theirs"], by_name["publish", "ours"]
    assert ffmpeg["tcurl"] == ours_call["tcurl"]


@pytest.mark.parametrize("live", ["node-media-server"], indirect=True)
def test_gstreamer_rtmp2sink_publishes_what_the_pull_gets(
        live: LiveServer, procs: list[subprocess.Popen[bytes]]) -> None:
    """A publisher other than FFmpeg: GStreamer's rtmp2sink, to node-media-server."""
    url = live.rtmp_url("gst")
    pipeline = (
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 "
        "! x264enc tune=zerolatency key-int-max=25 speed-preset=ultrafast "
        "! video/x-h264,profile=baseline ! h264parse ! flvmux name=m streamable=true "
        f"! rtmp2sink location={url} "
        "audiotestsrc is-live=true wave=sine freq=1000 ! audio/x-raw,rate=48000,channels=1 "
        "! audioconvert ! avenc_aac ! aacparse ! m."
    )
    procs.append(subprocess.Popen(["gst-launch-1.0", "-q", *pipeline.split()],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    wait_for(lambda: live.is_publishing("gst"), what="rtmp2sink publishing")
    collector = Collector()
    reader = collector.reader(url)
    reader.start()
    try:
        wait_for(lambda: len(collector.video) >= 50 and len(collector.audio) >= 100,
                 what="GStreamer's media pulled")
    finally:
        reader.close()
    assert collector.video[0].keyframe
    pcm = np.concatenate([f.pcm for f in collector.audio[-50:]])
    assert abs(dominant_hz(pcm[-AUDIO_RATE // 2:], AUDIO_RATE) - 1000) < 10
