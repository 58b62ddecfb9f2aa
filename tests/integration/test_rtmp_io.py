"""RtmpReader and RtmpWriter against a real nginx-rtmp, checked with ffmpeg."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import gevent
import numpy as np
import pytest
from conftest import Publish
from media_checks import signal_live

from wxmgw.codecs.h264 import NAL_PPS, NAL_SPS, nal_type, split_annexb
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame, Pcm, VideoFrame
from wxmgw.media.rtmp_reader import RtmpReader
from wxmgw.media.rtmp_writer import RtmpWriter
from wxmgw.nginx import NginxRtmp

WAIT = 20.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.05)


def dominant_hz(pcm: Pcm, rate: int = AUDIO_RATE) -> float:
    """The strongest frequency of ``pcm``, and check that it stands out."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    peak = int(np.argmax(spectrum))
    assert spectrum[peak] > 20 * np.median(spectrum), "no clear tone"
    return peak * rate / len(pcm)


class Collector:
    def __init__(self) -> None:
        self.video: list[VideoFrame] = []
        self.audio: list[AudioFrame] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def reader(self, url: str, **kwargs: Any) -> RtmpReader:
        return RtmpReader(
            url,
            on_video=self.video.append,
            on_audio=self.audio.append,
            on_event=lambda kind, info: self.events.append((kind, info)),
            name="test",
            **kwargs,
        )

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.events if k == kind)


@pytest.fixture
def collector() -> Collector:
    return Collector()


def test_reader_gets_h264_and_the_tone(nginx: NginxRtmp, ffmpeg_publish: Publish,
                                       collector: Collector) -> None:
    url = nginx.rtmp_url("cam")
    ffmpeg_publish(url, tone_hz=1000, seconds=20)
    reader = collector.reader(url)
    reader.start()
    try:
        wait_for(lambda: len(collector.video) >= 50 and len(collector.audio) >= 100)
    finally:
        reader.close()
        assert reader.join(10)
    assert collector.count("connected") >= 1
    first = collector.video[0]
    assert first.keyframe
    assert [nal_type(n) for n in first.nalus[:2]] == [NAL_SPS, NAL_PPS]
    assert all(len(a.pcm) == AUDIO_FRAME_SAMPLES for a in collector.audio)
    steps = np.diff([a.ts for a in collector.audio])
    assert np.allclose(steps, AUDIO_FRAME_SAMPLES / AUDIO_RATE, atol=1e-6)
    pcm = np.concatenate([a.pcm for a in collector.audio[25:]])
    assert abs(dominant_hz(pcm) - 1000) < 5
    assert reader.stats.frames >= 150 and reader.stats.bytes > 0


def test_reader_reconnects_after_nginx_restart(nginx: NginxRtmp, ffmpeg_publish: Publish,
                                              collector: Collector) -> None:
    url = nginx.rtmp_url("cam")
    ffmpeg_publish(url, seconds=30)
    reader = collector.reader(url)
    reader.start()
    try:
        wait_for(lambda: len(collector.video) >= 10)
        nginx.restart()
        wait_for(lambda: collector.count("disconnected") >= 1)
        before = len(collector.video)
        ffmpeg_publish(url, seconds=30)
        wait_for(lambda: len(collector.video) >= before + 10)
    finally:
        reader.close()
        assert reader.join(10)
    assert collector.count("connected") >= 2
    assert reader.stats.reconnects >= 1


def test_reader_restarts_after_an_unexpected_error(nginx: NginxRtmp, ffmpeg_publish: Publish,
                                                  collector: Collector) -> None:
    """No worker dies silently (#12 item 3): a bug on the way is reported, then the pull goes on."""
    url = nginx.rtmp_url("cam")
    ffmpeg_publish(url, seconds=30)
    states: list[str] = []
    failed: list[VideoFrame] = []

    def on_video(frame: VideoFrame) -> None:
        if len(collector.video) == 5 and not failed:
            failed.append(frame)  # fail once: the next frame is after the restart
            raise KeyError("a bug")
        collector.video.append(frame)

    def on_event(kind: str, info: dict[str, Any]) -> None:
        collector.events.append((kind, info))
        states.append(reader.state)

    reader = RtmpReader(url, on_video=on_video, on_audio=collector.audio.append,
                        on_event=on_event, name="test")
    reader.start()
    try:
        wait_for(lambda: len(collector.video) >= 20)
    finally:
        reader.close()
        assert reader.join(10)
    (info,) = [i for k, i in collector.events if k == "crashed"]
    assert info["error"] == "KeyError: 'a bug'" and isinstance(info["exc"], KeyError)
    assert "failed: KeyError: 'a bug'" in states
    assert reader.stats.crashes == 1 and collector.count("connected") == 2


def test_reader_sees_a_hung_server_and_comes_back(nginx: NginxRtmp, ffmpeg_publish: Publish,
                                                  collector: Collector) -> None:
    """A live server that keeps the connection but sends nothing ends the session in time."""
    url = nginx.rtmp_url("cam")
    ffmpeg_publish(url, seconds=40)
    reader = collector.reader(url, read_timeout=1.0, open_timeout=2.0)
    reader.start()
    try:
        wait_for(lambda: len(collector.video) >= 10)
        failed = collector.count("disconnected")  # before the publisher was there
        signal_live(nginx, signal.SIGSTOP)
        try:
            wait_for(lambda: collector.count("disconnected") > failed, timeout=5)
        finally:
            signal_live(nginx, signal.SIGCONT)
        before = len(collector.video)
        wait_for(lambda: len(collector.video) >= before + 10)
    finally:
        reader.close()
        assert reader.join(10)
    errors = [i["error"] for k, i in collector.events if k == "disconnected"]
    assert "nothing read in 1.0 s" in errors[failed]
    assert reader.stats.reconnects >= 1


def test_unsupported_codecs_are_reported_and_skipped(nginx: NginxRtmp, ffmpeg_publish: Publish
                                                     ) -> None:
    mp3, flv1 = Collector(), Collector()
    ffmpeg_publish(nginx.rtmp_url("mp3"), acodec="libmp3lame", seconds=20)
    ffmpeg_publish(nginx.rtmp_url("flv1"), vcodec="flv", seconds=20)
    readers = [mp3.reader(nginx.rtmp_url("mp3")), flv1.reader(nginx.rtmp_url("flv1"))]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: len(mp3.video) >= 10 and len(flv1.audio) >= 50)
    finally:
        for reader in readers:
            reader.close()
        for reader in readers:
            assert reader.join(10)
    assert [i for k, i in mp3.events if k == "unsupported_codec"] == [
        {"kind": "audio", "codec": "mp3"}]
    assert [i for k, i in flv1.events if k == "unsupported_codec"] == [
        {"kind": "video", "codec": "flv1"}]
    assert not mp3.audio and not flv1.video


def h264_clip(frames: int, fps: int = 25, size: tuple[int, int] = (320, 240)
              ) -> list[VideoFrame]:
    """A moving test pattern encoded by libx264 (baseline, a keyframe every second)."""
    width, height = size
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, fps)
    enc.options = {"profile": "baseline", "tune": "zerolatency", "g": str(fps), "threads": "1",
                   "sc_threshold": "0"}  # no scene-cut keyframes
    out: list[VideoFrame] = []
    ramp = np.arange(width)
    for i in range(frames):
        column = ((ramp + 4 * i) % 256).astype(np.uint8)[None, :, None]
        rgb = np.broadcast_to(column, (height, width, 3))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        for packet in enc.encode(frame):
            out.append(VideoFrame(split_annexb(bytes(packet)), 0.0, packet.is_keyframe))
    for packet in enc.encode(None):
        out.append(VideoFrame(split_annexb(bytes(packet)), 0.0, packet.is_keyframe))
    return out


def tone(hz: float, start: int, samples: int) -> Pcm:
    t = np.arange(start, start + samples) / AUDIO_RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


def decoded_frames(framemd5: Path) -> int:
    """How many video frames an ffmpeg player (:func:`ffmpeg_play`) decoded."""
    return sum(1 for line in framemd5.read_text().splitlines()
               if line and not line.startswith("#"))


def end_players(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    """Wait for players to see the end of the stream (kill them after 15 s); their stderr."""
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        errors.append(err.decode())
    return errors


def ffmpeg_play(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    """Decode the stream with ffmpeg: PCM to audio.raw, one line per video frame."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rw_timeout", "10000000",
         "-i", url,
         "-map", "0:a", "-f", "s16le", "-ac", "1", "-ar", str(AUDIO_RATE),
         str(workdir / "audio.raw"),
         "-map", "0:v?", "-fps_mode", "passthrough", "-f", "framemd5",
         str(workdir / "video.txt")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def players(nginx: NginxRtmp, stream: str) -> int:
    for stream_el in nginx.stat().iter("stream"):
        if stream_el.findtext("name") == stream:
            return sum(1 for c in stream_el.iter("client") if c.find("publishing") is None)
    return 0


def playing(nginx: NginxRtmp, stream: str) -> bool:
    return players(nginx, stream) > 0


def push(writer: RtmpWriter, clip: Sequence[VideoFrame | None], start_ms: int, hz: float
         ) -> None:
    """Write ``clip`` at 25 fps (``None``: audio only) and the tone alongside, in real time.

    Frames are stamped as arriving when written, as a leg's receivers do.
    """
    t0 = time.monotonic()
    sample = start_ms * AUDIO_RATE // 1000
    for i, frame in enumerate(clip):
        ms = start_ms + i * 40
        if frame is not None:
            writer.write_video(replace(frame, arrived=time.perf_counter()), ms)
        while sample * 1000 // AUDIO_RATE < ms + 40:
            pcm = tone(hz, sample, AUDIO_FRAME_SAMPLES)
            writer.write_audio(AudioFrame(pcm, 0.0, time.perf_counter()),
                               sample * 1000 // AUDIO_RATE)
            sample += AUDIO_FRAME_SAMPLES
        gevent.sleep(max(0.0, t0 + (i + 1) * 0.04 - time.monotonic()))


def test_writer_publishes_what_ffmpeg_decodes(nginx: NginxRtmp, tmp_path: Path,
                                              collector: Collector) -> None:
    clip = h264_clip(100)
    url = nginx.rtmp_url("mix")
    writer = RtmpWriter(url, name="test", on_event=lambda k, i: collector.events.append((k, i)))
    player = None
    try:
        writer.write_video(clip[0], 0)
        wait_for(lambda: nginx.is_publishing("mix"))
        player = ffmpeg_play(url, tmp_path)
        wait_for(lambda: playing(nginx, "mix"))
        push(writer, clip[25:], 1000, hz=440)  # from the second keyframe on
    finally:
        writer.close()
        if player is not None:
            _, err = player.communicate(timeout=15)
    assert player.returncode == 0, err.decode()
    assert decoded_frames(tmp_path / "video.txt") >= 0.9 * 75
    pcm = np.frombuffer((tmp_path / "audio.raw").read_bytes(), np.int16)
    assert len(pcm) >= 2 * AUDIO_RATE
    assert abs(dominant_hz(pcm[AUDIO_RATE // 2:]) - 440) < 5
    assert collector.count("connected") == 1
    latency = writer.latency_ms()  # arrival -> tag sent, measured for both streams
    for kind in ("video", "audio"):
        p50, p99 = latency[kind] or (-1.0, -1.0)
        assert 0 <= p50 <= p99, (kind, latency)


def test_audio_only_writer(nginx: NginxRtmp, tmp_path: Path) -> None:
    url = nginx.rtmp_url("audio")
    writer = RtmpWriter(url, name="test", on_event=lambda k, i: None, video=False)
    player = None
    try:
        samples = 0
        while not nginx.is_publishing("audio"):
            writer.write_audio(AudioFrame(tone(700, samples, 960), 0.0), samples // 48)
            samples += 960
            gevent.sleep(0.02)
        player = ffmpeg_play(url, tmp_path)
        wait_for(lambda: playing(nginx, "audio"))
        t0, start = time.monotonic(), samples
        while samples < start + 2 * AUDIO_RATE:
            writer.write_audio(AudioFrame(tone(700, samples, 960), 0.0), samples // 48)
            samples += 960
            gevent.sleep(max(0.0, t0 + (samples - start) / AUDIO_RATE - time.monotonic()))
    finally:
        writer.close()
        if player is not None:
            _, err = player.communicate(timeout=15)
    assert player.returncode == 0, err.decode()
    pcm = np.frombuffer((tmp_path / "audio.raw").read_bytes(), np.int16)
    assert len(pcm) >= 1.5 * AUDIO_RATE
    assert abs(dominant_hz(pcm[AUDIO_RATE // 4:]) - 700) < 5
    assert "#media_type 0: audio" in (tmp_path / "video.txt").read_text()  # no video stream
    assert "video" not in (tmp_path / "video.txt").read_text()


def test_writer_republishes_after_nginx_restart(nginx: NginxRtmp, collector: Collector) -> None:
    clip = h264_clip(150)
    writer = RtmpWriter(nginx.rtmp_url("mix"), name="test",
                        on_event=lambda k, i: collector.events.append((k, i)))
    try:
        push(writer, clip[:25], 0, hz=440)
        assert nginx.is_publishing("mix")
        nginx.restart()
        push(writer, clip[25:], 1000, hz=440)
        assert nginx.is_publishing("mix")
    finally:
        writer.close()
    assert collector.count("connected") == 2 and collector.count("disconnected") == 1
    assert writer.stats.reconnects == 1




def joined_at(nginx: NginxRtmp, count: int) -> float:
    """When nginx-rtmp first lists ``count`` players of the stream "mix"."""
    wait_for(lambda: players(nginx, "mix") >= count)
    return time.monotonic()


def test_video_comes_switches_and_goes_in_one_publication(nginx: NginxRtmp, tmp_path: Path,
                                                          collector: Collector) -> None:
    """AvSync's shape: audio only, + clip A, switch to clip B (another SPS), audio only again.

    A player that joined before the first switch plays to the end without an
    error, its audio covering the time it played; one that joins during B
    decodes B's frames (from the keyframe nginx-rtmp starts it at).
    """
    clip_a, clip_b = h264_clip(50), h264_clip(75, size=(160, 120))
    url = nginx.rtmp_url("mix")
    writer = RtmpWriter(url, name="test", video=False,
                        on_event=lambda k, i: collector.events.append((k, i)))
    early, late = tmp_path / "early", tmp_path / "late"
    early.mkdir()
    late.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    watchers: list[gevent.Greenlet] = []
    try:
        push(writer, [None] * 10, 0, hz=440)
        assert nginx.is_publishing("mix")
        procs.append(ffmpeg_play(url, early))
        joined = gevent.spawn(joined_at, nginx, 1)  # polled while the stream goes on
        watchers.append(joined)
        push(writer, [None] * 25, 400, hz=440)
        writer.set_video(True)
        push(writer, clip_a, 1400, hz=440)
        writer.set_video(True)
        push(writer, clip_b[:10], 3400, hz=440)
        procs.append(ffmpeg_play(url, late))
        t_late = time.monotonic()
        late_joined = gevent.spawn(joined_at, nginx, 2)
        watchers.append(late_joined)
        push(writer, clip_b[10:], 3800, hz=440)
        writer.set_video(False)
        push(writer, [None] * 25, 6400, hz=440)
        ended = time.monotonic()
    finally:
        writer.close()
        errors = end_players(procs)
        gevent.killall(watchers)
    assert [p.returncode for p in procs] == [0, 0], errors
    assert collector.count("connected") == 1 and writer.stats.reconnects == 0
    assert joined.get(timeout=0) < t_late
    pcm = np.frombuffer((early / "audio.raw").read_bytes(), np.int16)
    played = ended - joined.get(timeout=0)
    coverage = len(pcm) / AUDIO_RATE / played
    assert coverage >= 0.9
    assert abs(dominant_hz(pcm[AUDIO_RATE // 4:]) - 440) < 5
    joined_b = 10 + int((late_joined.get(timeout=0) - t_late) / 0.04) + 1  # clip_b index, or later
    first_key = next(i for i in range(joined_b, len(clip_b)) if clip_b[i].keyframe)
    expected = len(clip_b) - first_key
    late_video = decoded_frames(late / "video.txt")
    assert "#dimensions 0: 160x120" in (late / "video.txt").read_text()
    assert late_video >= 0.8 * expected
    print(f"early player: audio {len(pcm) / AUDIO_RATE:.2f} s over {played:.2f} s "
          f"played ({coverage:.0%}), {decoded_frames(early / 'video.txt')} video frames; "
          f"late player: {late_video} of {expected} B frames from its first keyframe")
