"""What every benchmark here does the same way.

CPU and memory of processes, percentiles, table cells; the issues' ffmpeg
command lines and their processes; RTMP players; timed Thrift probes.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import av
import psutil
import thriftpy2
from av.audio.codeccontext import AudioCodecContext
from thriftpy2.rpc import make_client

ROOT = Path(__file__).resolve().parents[1]
tpy = thriftpy2.load(str(ROOT / "idl" / "wxmgw.thrift"), module_name="bench_thrift")
FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"]
SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s=bench
c=IN IP4 127.0.0.1
t=0 0
"""
SDP_AUDIO = "m=audio {port} RTP/AVP 8\na=rtpmap:8 PCMA/8000\n"
SDP_VIDEO = "m=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 packetization-mode=1\n"
PROBE_TIMEOUT = 5.0


# -- measuring ---------------------------------------------------------------------------------


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``procs`` so far (a process that has ended counts 0)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def rss(procs: list[psutil.Process]) -> int:
    """The resident memory of ``procs`` together, bytes."""
    return sum(p.memory_info().rss for p in procs)


def pct_ms(seconds: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of durations in seconds, in ms; None if empty."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def legs_latency(windows: Iterable[list[float] | None]) -> str:
    """``p50/p99`` ms over legs' ``[p50, p99]`` windows: the median p50, the worst p99."""
    measured = [w for w in windows if w]
    if not measured:
        return "-"
    p50s = sorted(w[0] for w in measured)
    return f"{p50s[len(p50s) // 2]:.1f}/{max(w[1] for w in measured):.1f}"


def fmt(value: float | None, spec: str) -> str:
    """A table cell: ``-`` for what was not measured."""
    return "-" if value is None else format(value, spec)


# -- the ffmpeg CLI side ----------------------------------------------------------------------


def rtmp2rtp_cmd(url: str, audio: int, video: int) -> list[str]:
    """The Rtmp2rtp issue's command: pull ``url``, H.264 and PCMA RTP to 127.0.0.1 ports."""
    return [
        *FFMPEG, "-i", url,
        "-map", "0:v", "-c:v", "copy", "-bsf:v", "h264_mp4toannexb",
        "-f", "rtp", f"rtp://127.0.0.1:{video}",
        "-map", "0:a", "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1",
        "-f", "rtp", f"rtp://127.0.0.1:{audio}",
    ]


def rtp2rtmp_cmd(sdp: Path, url: str, audio: int, video: int | None) -> list[str]:
    """The Rtp2rtmp issue's command, pushing to ``url`` what the SDP it writes at ``sdp`` says.

    PCMA on port ``audio`` and, unless ``video`` is None, H.264 on ``video``.
    """
    text = SDP + SDP_AUDIO.format(port=audio)
    if video is not None:
        text += SDP_VIDEO.format(port=video)
    sdp.write_text(text)
    copy_video = [] if video is None else ["-c:v", "copy"]
    return [*FFMPEG, "-protocol_whitelist", "file,udp,rtp", "-i", str(sdp),
            *copy_video, "-c:a", "aac", "-f", "flv", url]


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with no input and its output thrown away."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def kill_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill every process of ``procs``, then reap them all."""
    procs = list(procs)
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


# -- the player side ---------------------------------------------------------------------------


class Player:
    """Plays an RTMP stream in a thread (PyAV demux, no decoding), again when it drops.

    Subclasses say what to do with each non-empty packet in :meth:`on_packet`;
    they set up their own state before calling ``super().__init__``, which
    starts the thread.
    """

    OPTIONS = {"rw_timeout": "3000000"}
    RETRY = 0.3  # seconds before playing again: not published yet, or dropped

    def __init__(self, url: str) -> None:
        self.url = url
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def on_packet(self, packet: av.Packet, now: float) -> None:
        """``packet`` arrived at ``now`` (monotonic)."""
        raise NotImplementedError

    @staticmethod
    def aac_seconds(packet: av.Packet) -> float:
        """The duration of one AAC-LC frame of ``packet``'s stream: 1024 samples."""
        ctx = packet.stream.codec_context
        assert isinstance(ctx, AudioCodecContext)
        return 1024 / (ctx.sample_rate or 1)

    def _run(self) -> None:
        while not self._stop:
            try:
                with av.open(self.url, options=self.OPTIONS, timeout=(10.0, None)) as c:
                    for packet in c.demux():
                        if self._stop:
                            return
                        now = time.monotonic()
                        if packet.size:
                            self.on_packet(packet, now)
            except Exception:
                time.sleep(self.RETRY)

    def stop(self) -> None:
        self._stop = True


# -- probes of the Thrift service -------------------------------------------------------------


def push_probe_calls(uuid: str, url: str) -> list[tuple[str, Any]]:
    """StartPush of a throwaway member ``uuid`` pushed to ``url``, then its StopPush."""
    start = tpy.StartPushReq(
        uuid=uuid, pushUrl=url, audioPayloadType=8, audioCodec="PCMA",
        videoPayloadType=96, videoCodec="H264", confId="probe", reqUuid="probe",
        weixin="false")
    return [("StartPush", start), ("StopPush", tpy.StopPushReq(uuid=uuid, confId="probe"))]


class Probe:
    """Makes Thrift ``calls`` again and again from a thread, on its own connection.

    ``pause`` seconds after each round; ``durations`` holds every call's
    round trip, a call that fails or times out counting as ``PROBE_TIMEOUT``
    (the gateway is swamped), after which the probe connects again.
    """

    def __init__(self, port: int, calls: list[tuple[str, Any]], pause: float) -> None:
        self.durations: list[float] = []
        self._port, self._calls, self._pause = port, calls, pause
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = None
        while not self._stop:
            try:
                if client is None:
                    client = make_client(tpy.WxMgw, "127.0.0.1", self._port,
                                         timeout=int(PROBE_TIMEOUT * 1000))
                for method, req in self._calls:
                    t0 = time.perf_counter()
                    getattr(client, method)(req)
                    self.durations.append(time.perf_counter() - t0)
            except Exception:
                self.durations.append(PROBE_TIMEOUT)
                if client is not None:
                    client.close()
                client = None
            time.sleep(self._pause)
        if client is not None:
            client.close()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(15)
