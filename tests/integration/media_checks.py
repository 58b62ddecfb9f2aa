"""What the integration tests measure in decoded media, and how they wait for it.

The decoding is FFmpeg's (the ffmpeg CLI, or PyAV on a file the CLI
recorded), never the gateway's own code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import gevent
import numpy as np

from wxmgw.media.frames import AUDIO_RATE
from wxmgw.nginx import NginxRtmp
from wxmgw.nms import NodeMediaServer

WAIT = 20.0


class UdpSink:
    """Plays a MAS that only listens: four UDP ports (audio and video RTP, each with its
    RTCP on the next port), counting what reaches each RTP port and when it last did.

    Its readers are threads: greenlets under the tests' monkey-patching, real
    threads in the benchmarks.
    """

    def __init__(self) -> None:
        from wxmgw_proc import free_port_range

        lo, _ = free_port_range(4)
        self.audio, self.video = lo, lo + 2
        self.counts = {"audio": 0, "video": 0}
        self.last = {"audio": 0.0, "video": 0.0}
        self.socks: list[socket.socket] = []
        for port in range(lo, lo + 4):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            self.socks.append(s)
        for kind, sock in (("audio", self.socks[0]), ("video", self.socks[2])):
            threading.Thread(target=self._read, args=(kind, sock), daemon=True).start()

    def port(self, kind: str) -> int:
        return self.audio if kind == "audio" else self.video

    def _read(self, kind: str, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock.recv(65536)
                self.counts[kind] += 1
                self.last[kind] = time.monotonic()

    def close(self) -> None:
        for s in self.socks:
            s.close()


def signal_live(live: NginxRtmp | NodeMediaServer, sig: signal.Signals) -> None:
    """Signal a live server's process, and an nginx's workers (its RTMP sessions live there)."""
    pid = live.pid
    assert pid is not None
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for p in (pid, *map(int, children)):
        os.kill(p, sig)


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not in time: {what}"
        gevent.sleep(0.05)


def dominant_hz(pcm: np.ndarray, rate: int = AUDIO_RATE) -> float:
    """The strongest frequency of ``pcm``, checking that it stands out."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    peak = int(np.argmax(spectrum))
    assert spectrum[peak] > 20 * np.median(spectrum), "no clear tone"
    return peak * rate / len(pcm)


def tone_level(pcm: np.ndarray, hz: float, rate: int = AUDIO_RATE) -> float:
    """The spectrum's peak within 20 Hz of ``hz``."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    bins = np.fft.rfftfreq(len(pcm), 1 / rate)
    return float(spectrum[np.abs(bins - hz) < 20].max())


def play_audio(url: str, seconds: float, out: Path) -> np.ndarray:
    """What a player of ``url`` hears in ``seconds`` of stream, as 48 kHz mono PCM."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rw_timeout", "5000000",
         "-i", url, "-t", str(seconds), "-vn", "-f", "s16le", "-ac", "1", "-ar", str(AUDIO_RATE),
         "-y", str(out)],
        check=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    return np.frombuffer(out.read_bytes(), np.int16)


def record(url: str, seconds: float, out: Path) -> Path:
    """``seconds`` of ``url`` copied, not decoded, into an FLV file."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rw_timeout", "5000000",
         "-i", url, "-t", str(seconds), "-c", "copy", "-y", str(out)],
        check=True, timeout=seconds + 20, stdin=subprocess.DEVNULL,
    )
    return out


def flash_times(path: Path, threshold: float = 128.0) -> list[float]:
    """Presentation times of the pictures that turn bright (mean luma crosses ``threshold``)."""
    times: list[float] = []
    bright = False
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            luma = float(frame.to_ndarray(format="gray").mean())
            if luma > threshold and not bright and frame.time is not None:
                times.append(frame.time)
            bright = luma > threshold
    return times


def beep_times(path: Path, gap: float = 0.3) -> list[float]:
    """Presentation times at which the audio's envelope rises to half its peak after ``gap``
    of quiet: the onsets of beeps, to a sample (the decoder's own timestamps and count)."""
    starts: list[float] = []
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            pcm = frame.to_ndarray()
            mono = pcm.reshape(-1) if pcm.shape[0] == 1 else pcm.mean(axis=0)
            if frame.time is None:
                continue
            t0 = frame.time
            chunks.append(np.stack([t0 + np.arange(len(mono)) / frame.sample_rate,
                                    np.abs(mono.astype(np.float64))]))
    if not chunks:
        return []
    t, level = np.concatenate(chunks, axis=1)
    loud = level > 0.5 * level.max()
    last = -np.inf
    for i in np.flatnonzero(loud):
        if t[i] - last > gap:
            starts.append(float(t[i]))
        last = t[i]
    return starts


def offsets(flashes: list[float], beeps: list[float], within: float = 0.3) -> list[float]:
    """For each flash with a beep within ``within`` s: beep time minus flash time."""
    out = []
    for f in flashes:
        near = [b - f for b in beeps if abs(b - f) <= within]
        if near:
            out.append(min(near, key=abs))
    return out
