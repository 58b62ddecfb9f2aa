"""`make demo`: a scripted 30-second conference of two ffmpeg mini-programs.

The embedded stack of `make run` (:class:`wxmgw.run.Stack`, on free ports)
hosts conference ``demo``. Each mini-program joins through the callroute
front, publishes to its ``pushurl`` and asks for the other's video with the
mix (``wxreqavsync``); its player plays ``pullaudiourl`` and should get the
other's video and the other's tone, never its own.

A mini-program's media make what it receives measurable by an independent
decoder (the ffmpeg CLI): a black picture that flashes in the mini-program's
colour while its tone sounds, for :data:`FLASH` of every second. ffmpeg's
``signalstats`` and ``astats`` filters give every decoded frame's chroma and
loudness with its timestamp: flash colours tell whose video came, an FFT of
the audio whose tone, and flash onsets against tone onsets the A/V offset.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from wxmgw.media.frames import AUDIO_RATE
from wxmgw.nginx import NginxRtmp, free_port
from wxmgw.run import ROOT, GatewayPorts, Stack, StackPorts

FLASH = 0.3
"""Seconds at the start of every second during which a mini-program flashes and sounds."""
FPS = 25
CHROMA_FLASH = 50.0
"""A frame whose mean U or V departs this far from 128 shows a flash."""
LOUD_DB = -30.0
"""An audio frame this loud (RMS, dBFS) carries a tone."""
PAIRING = 0.5
"""Largest distance in seconds between a flash onset and the tone onset it goes with: the
flashes repeat every second, so an offset is known modulo 1 s (+0.6 s shows as -0.4 s)."""
LIP_SYNC_MS = (-40.0, 40.0)
"""The A/V offsets wxmgw promises for AvSync, sound early to sound late: well inside what
viewers accept (ITU-R BT.1359-1, Fig. 1: -90 ms to +185 ms)."""


@dataclass(frozen=True, slots=True)
class MiniProgram:
    """A scripted mini-program: its tone and the colour it flashes in (one of ``U``/``V``)."""

    uuid: str
    tone_hz: int
    color: str

    @property
    def chroma(self) -> str:
        """The chroma plane the flash colour lights up: red raises V (Cr), blue raises U (Cb)."""
        return "V" if self.color == "red" else "U"


ALICE = MiniProgram("alice", 500, "red")
BOB = MiniProgram("bob", 1300, "blue")


def publisher_args(mp: MiniProgram, url: str, seconds: float) -> list[str]:
    """ffmpeg as the mini-program's live-pusher: H.264 baseline and AAC-LC, in real time."""
    on = f"lt(mod(t,1),{FLASH})"
    video = (f"color=c=black:s=320x240:r={FPS}:d={seconds},"
             f"drawbox=c={mp.color}:t=fill:enable='{on}'")
    audio = f"aevalsrc='0.5*sin(2*PI*{mp.tone_hz}*t)*{on}':s=44100:d={seconds}"
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio,
            "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency",
            "-pix_fmt", "yuv420p", "-g", str(FPS),
            "-c:a", "aac", "-ar", "44100", "-ac", "1", "-f", "flv", url]


def _metadata(path: Path) -> list[tuple[float, dict[str, float]]]:
    """The ``pts_time`` and values of each frame in a ``metadata=mode=print`` file."""
    frames: list[tuple[float, dict[str, float]]] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("frame:"):
            frames.append((float(line.rsplit("pts_time:", 1)[1]), {}))
        elif "=" in line and frames:
            key, value = line.rsplit("=", 1)
            frames[-1][1][key.rsplit(".", 1)[-1]] = float(value)
    return frames


def _onsets(times: list[float], on: list[bool]) -> list[float]:
    """The times at which ``on`` turns true."""
    return [t for t, now, was in zip(times[1:], on[1:], on[:-1], strict=True) if now and not was]


def _nearest(times: list[float], t: float) -> float:
    """The element of ``times`` closest to ``t`` (infinity when there is none)."""
    return min(times, key=lambda x: abs(x - t), default=np.inf)


def tone_level(pcm: np.ndarray, hz: float, rate: int = AUDIO_RATE) -> float:
    """The level of ``hz`` in ``pcm``, in dB relative to the strongest frequency."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    band = spectrum[max(0, round((hz - 5) * len(pcm) / rate)):round((hz + 5) * len(pcm) / rate)]
    return float(20 * np.log10((band.max() + 1e-9) / (spectrum.max() + 1e-9)))


def dominant_hz(pcm: np.ndarray, rate: int = AUDIO_RATE) -> float | None:
    """The strongest frequency of ``pcm`` if it stands out of the spectrum, else None."""
    if len(pcm) < rate // 10:
        return None
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    peak = int(np.argmax(spectrum))
    return peak * rate / len(pcm) if spectrum[peak] > 20 * np.median(spectrum) else None


@dataclass(frozen=True, slots=True)
class Reception:
    """What a player decoded of a stream."""

    frames: int
    video_span: float
    """Seconds from the first decoded frame to the last."""
    flashes: dict[str, int]
    """Flash frames by chroma plane (``U``: blue, ``V``: red)."""
    pcm: np.ndarray
    """The audio, 48 kHz mono s16."""
    tone_hz: float | None
    av_offset_ms: float | None
    """Median of tone onset minus flash onset (positive: sound late), if both were seen."""

    def summary(self) -> str:
        tone = f"{self.tone_hz:.0f} Hz" if self.tone_hz is not None else "none"
        offset = f"{self.av_offset_ms:+.0f} ms" if self.av_offset_ms is not None else "n/a"
        return (f"{self.frames} video frames in {self.video_span:.2f} s (flashes U/blue "
                f"{self.flashes['U']}, V/red {self.flashes['V']}), "
                f"{len(self.pcm) / AUDIO_RATE:.1f} s audio, "
                f"dominant tone {tone}, A/V offset {offset}")


class Player:
    """ffmpeg playing ``url`` for ``seconds`` of stream, as a mini-program's live-player."""

    def __init__(self, url: str, workdir: Path, seconds: float, *, audio: bool = True,
                 video: bool = True) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.pcm_path = workdir / "audio.s16"
        self.audio_meta = workdir / "audio.meta"
        self.video_meta = workdir / "video.meta"
        for path in (self.pcm_path, self.audio_meta, self.video_meta):
            path.unlink(missing_ok=True)
        args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-rw_timeout", "5000000", "-i", url]
        if audio:
            args += ["-t", str(seconds), "-map", "0:a",
                     "-af", "astats=metadata=1:reset=1,ametadata=mode=print"
                     f":key=lavfi.astats.Overall.RMS_level:file={self.audio_meta}",
                     "-f", "s16le", "-ac", "1", "-ar", str(AUDIO_RATE), str(self.pcm_path)]
        if video:
            args += ["-t", str(seconds), "-map", "0:v", "-fps_mode", "passthrough",
                     "-vf", f"signalstats,metadata=mode=print:file={self.video_meta}",
                     "-f", "null", "-"]
        self.seconds = seconds
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

    def result(self) -> Reception:
        """Wait for the player and analyse what it decoded; RuntimeError if ffmpeg failed."""
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode != 0:
            raise RuntimeError(f"player failed ({self.proc.returncode}): {err.decode()[-500:]}")
        return self.analyse()

    def kill(self) -> None:
        """End a player that is still running (a no-op after :meth:`result`)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def analyse(self) -> Reception:
        video = _metadata(self.video_meta)
        chroma = [(abs(v.get("UAVG", 128) - 128), abs(v.get("VAVG", 128) - 128))
                  for _, v in video]
        lit = [max(c) > CHROMA_FLASH for c in chroma]
        flashes = {"U": sum(1 for on, (u, v) in zip(lit, chroma, strict=True) if on and u > v),
                   "V": sum(1 for on, (u, v) in zip(lit, chroma, strict=True) if on and v >= u)}
        audio = _metadata(self.audio_meta)
        loud = [a.get("RMS_level", -np.inf) > LOUD_DB for _, a in audio]
        flash_on = _onsets([t for t, _ in video], lit)
        tone_on = _onsets([t for t, _ in audio], loud)
        offsets = [d for d in (_nearest(tone_on, v) - v for v in flash_on) if abs(d) < PAIRING]
        pcm = np.fromfile(self.pcm_path, np.int16) if self.pcm_path.exists() else np.zeros(0)
        return Reception(
            frames=len(video),
            video_span=video[-1][0] - video[0][0] if video else 0.0,
            flashes=flashes,
            pcm=pcm,
            tone_hz=dominant_hz(pcm),
            av_offset_ms=1000 * median(offsets) if offsets else None,
        )


def call(front_url: str, method: str, uuid: str, conf_id: str, **params: str) -> dict[str, Any]:
    """One callroute request; the reply's ``result``."""
    body = json.dumps({"id": str(time.monotonic_ns()), "uuid": uuid, "method": method,
                       "params": {"confId": conf_id, **params}}).encode()
    with urllib.request.urlopen(front_url, body, timeout=10) as resp:
        result: dict[str, Any] = json.load(resp)["result"]
    return result


def verdict(rx: Reception, me: MiniProgram, peer: MiniProgram, *,
            lip_sync: bool = True) -> list[str]:
    """What is wrong with what ``me`` received from a conference with ``peer``: not the
    peer's video, its own video, not the peer's tone, its own tone, lips out of sync (if
    ``lip_sync``)."""
    problems = []
    if rx.flashes[peer.chroma] < FPS // 2:
        problems.append(f"saw {rx.flashes[peer.chroma]} of {peer.uuid}'s flash frames")
    if rx.flashes[me.chroma]:
        problems.append(f"saw its own flashes ({rx.flashes[me.chroma]} frames)")
    if rx.tone_hz is None or abs(rx.tone_hz - peer.tone_hz) > 10:
        problems.append(f"dominant tone {rx.tone_hz}, not {peer.uuid}'s {peer.tone_hz} Hz")
    elif tone_level(rx.pcm, me.tone_hz) > -30:
        problems.append(f"hears its own {me.tone_hz} Hz tone")
    low, high = LIP_SYNC_MS
    if lip_sync and rx.av_offset_ms is not None and not low <= rx.av_offset_ms <= high:
        problems.append(f"A/V offset {rx.av_offset_ms:+.0f} ms outside {low:+.0f}..{high:+.0f}")
    return problems


def free_rtp_ports(size: int = 20) -> str:
    """An even-aligned range of ``size`` UDP ports that were free a moment ago."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            lo = s.getsockname()[1] & ~1
        if lo + size > 65536:
            continue
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(size)]
        try:
            for port, sock in enumerate(socks, lo):
                sock.bind(("0.0.0.0", port))
            return f"{lo}-{lo + size - 1}"
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free UDP port range")


def has_video(nginx: NginxRtmp, name: str) -> bool:
    """Whether nginx-rtmp has seen H.264 in the publication of stream ``name``."""
    return any(s.findtext("name") == name and s.findtext("meta/video/codec") == "H264"
               for s in nginx.stat().iter("stream"))


def wait_until(check: Any, timeout: float, what: str) -> None:
    """Poll ``check`` until it is true (a server not answering yet counts as false)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not in {timeout:.0f} s: {what}")
        time.sleep(0.1)


def _legs(stack: Stack) -> tuple[int, int]:
    """Legs and RTP ports in use, summed over the stack's gateways."""
    legs = ports = 0
    for url in stack.state_urls:
        with urllib.request.urlopen(url, timeout=5) as resp:
            state = json.load(resp)
        legs += state["load"]["legs"]
        ports += len(state["ports"]["inUse"])
    return legs, ports


Route = Callable[[MiniProgram, str], str]
"""The front URL a mini-program sends a method to."""


def play_pair(route: Route, nginx: NginxRtmp, conf_id: str, seconds: float, workdir: Path, *,
              lip_sync: bool = True) -> bool:
    """Alice and bob join ``conf_id``, publish, ask for each other's video with the mix and
    play their mix for what is left of ``seconds``, then quit; True when both got what they
    should."""
    pairs = ((ALICE, BOB), (BOB, ALICE))
    joined = {}
    for mp, _ in pairs:
        joined[mp] = reply = call(route(mp, "wxjoinconf"), "wxjoinconf", mp.uuid, conf_id)
        if "code" in reply:
            raise RuntimeError(f"{mp.uuid} could not join: {reply}")
        print(f"{mp.uuid:>5} joined through {route(mp, 'wxjoinconf')}: "
              f"ssrc {reply['audiossrc']}, pushes {reply['pushurl']}")
    started = time.monotonic()
    publishers = [subprocess.Popen(publisher_args(mp, joined[mp]["pushurl"], seconds),
                                   stdin=subprocess.DEVNULL) for mp, _ in pairs]
    players: list[Player] = []
    try:
        for mp, peer in pairs:
            front = route(mp, "wxreqavsync")
            reply = call(front, "wxreqavsync", mp.uuid, conf_id,
                         antissrc=joined[peer]["audiossrc"], seq="1", type="1")
            print(f"{mp.uuid:>5} wxreqavsync {peer.uuid} through {front}: {reply}")
        for mp, _ in pairs:
            name = joined[mp]["pullaudiourl"].rsplit("/", 1)[1]
            wait_until(lambda n=name: has_video(nginx, n), 20,
                       f"{mp.uuid}'s mix stream with the synced video")
        listen = max(5.0, seconds - (time.monotonic() - started) - 4.0)
        print(f"both mix streams are live; each player listens for {listen:.0f} s")
        players = [Player(joined[mp]["pullaudiourl"], workdir / mp.uuid, listen)
                   for mp, _ in pairs]
        ok = True
        for (mp, peer), player in zip(pairs, players, strict=True):
            rx = player.result()
            problems = verdict(rx, mp, peer, lip_sync=lip_sync)
            ok &= not problems
            print(f"{mp.uuid:>5} received {rx.summary()}"
                  + (f"\n      PROBLEM: {'; '.join(problems)}" if problems else
                     f"\n      ok: {peer.uuid}'s video and {peer.tone_hz} Hz, not its own"))
    finally:
        for player in players:
            player.kill()
        for proc in publishers:
            proc.kill()
            proc.wait()
        for mp, _ in pairs:
            call(route(mp, "wxquitconf"), "wxquitconf", mp.uuid, conf_id)
    return ok


def conference(stack: Stack, seconds: float, workdir: Path) -> bool:
    """The scripted conference on a running stack; True when both got what they should."""
    ok = play_pair(lambda _mp, _method: stack.front_url, stack.nginx, "demo", seconds, workdir)
    wait_until(lambda: _legs(stack) == (0, 0), 10, "wxmgw back to zero legs and ports")
    print("both quit: wxmgw has 0 legs and 0 RTP ports in use")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wxmgw.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run" / "demo")
    args = parser.parse_args(argv)
    ports = StackPorts(free_port(), free_port(), free_port(),
                       (GatewayPorts(free_port(), free_port(), free_rtp_ports()),))
    with tempfile.TemporaryDirectory() as tmp, Stack(ports, args.workdir) as stack:
        print(f"stack up (logs: {stack.workdir}/*.log); conference 'demo' for "
              f"{args.seconds:.0f} s")
        ok = conference(stack, args.seconds, Path(tmp))
    print("DEMO OK" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
