"""RtmpReader and RtmpWriter against a real nginx-rtmp, checked with ffmpeg."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import gevent
import numpy as np
import pytest
from conftest import Publish

from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame, Pcm, VideoFrame
from wxmgw.media.rtmp_reader import RtmpReader
from wxmgw.media.rtmp_writer import RtmpWriter
from wxmgw.nginx import NginxRtmp
from wxmgw.rtp.h264 import NAL_PPS, NAL_SPS, nal_type, split_annexb

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

    def reader(self, url: str) -> RtmpReader:
        return RtmpReader(
            url,
            on_video=self.video.append,
            on_audio=self.audio.append,
            on_event=lambda kind, info: self.events.append((kind, info)),
            name="test",
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


def h264_clip(frames: int, fps: int = 25) -> list[VideoFrame]:
    """A moving test pattern encoded by libx264 (baseline, a keyframe every second)."""
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuv420p"
    enc.time_base = Fraction(1, fps)
    enc.options = {"profile": "baseline", "tune": "zerolatency", "g": str(fps), "threads": "1"}
    out: list[VideoFrame] = []
    ramp = np.arange(320)
    for i in range(frames):
        rgb = np.broadcast_to(((ramp + 4 * i) % 256).astype(np.uint8)[None, :, None], (240, 320, 3))
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


def ffmpeg_play(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    """Decode the stream with ffmpeg: PCM to audio.raw, one line per video frame."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rw_timeout", "10000000",
         "-i", url,
         "-map", "0:a", "-f", "s16le", "-ac", "1", "-ar", str(AUDIO_RATE),
         str(workdir / "audio.raw"),
         "-map", "0:v?", "-f", "framemd5", str(workdir / "video.txt")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def playing(nginx: NginxRtmp, stream: str) -> bool:
    for stream_el in nginx.stat().iter("stream"):
        if stream_el.findtext("name") == stream:
            return any(c.find("publishing") is None for c in stream_el.iter("client"))
    return False


def push(writer: RtmpWriter, clip: list[VideoFrame], start_ms: int, hz: float) -> None:
    """Write ``clip`` at 25 fps and the tone alongside, paced in real time."""
    t0 = time.monotonic()
    sample = start_ms * AUDIO_RATE // 1000
    for i, frame in enumerate(clip):
        ms = start_ms + i * 40
        writer.write_video(frame, ms)
        while sample * 1000 // AUDIO_RATE < ms + 40:
            writer.write_audio(AudioFrame(tone(hz, sample, AUDIO_FRAME_SAMPLES), 0.0),
                               sample * 1000 // AUDIO_RATE)
            sample += AUDIO_FRAME_SAMPLES
        gevent.sleep(max(0.0, t0 + (i + 1) * 0.04 - time.monotonic()))


def test_writer_publishes_what_ffmpeg_decodes(nginx: NginxRtmp, tmp_path: Path,
                                              collector: Collector) -> None:
    clip = h264_clip(100)
    url = nginx.rtmp_url("mix")
    writer = RtmpWriter(url, name="test", on_event=lambda k, i: collector.events.append((k, i)))
    writer.start()
    player = None
    try:
        writer.write_video(clip[0], 0)
        wait_for(lambda: nginx.is_publishing("mix"))
        player = ffmpeg_play(url, tmp_path)
        wait_for(lambda: playing(nginx, "mix"))
        push(writer, clip[25:], 1000, hz=440)  # from the second keyframe on
    finally:
        writer.close()
        assert writer.join(10)
        if player is not None:
            _, err = player.communicate(timeout=15)
    assert player.returncode == 0, err.decode()
    decoded = sum(1 for line in (tmp_path / "video.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert decoded >= 0.9 * 75
    pcm = np.frombuffer((tmp_path / "audio.raw").read_bytes(), np.int16)
    assert len(pcm) >= 2 * AUDIO_RATE
    assert abs(dominant_hz(pcm[AUDIO_RATE // 2:]) - 440) < 5
    assert collector.count("connected") == 1 and writer.stats.dropped == 0


def test_audio_only_writer(nginx: NginxRtmp, tmp_path: Path) -> None:
    url = nginx.rtmp_url("audio")
    writer = RtmpWriter(url, name="test", on_event=lambda k, i: None, video=False)
    writer.start()
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
        assert writer.join(10)
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
    writer.start()
    try:
        push(writer, clip[:25], 0, hz=440)
        assert nginx.is_publishing("mix")
        nginx.restart()
        push(writer, clip[25:], 1000, hz=440)
        assert nginx.is_publishing("mix")
    finally:
        writer.close()
        assert writer.join(10)
    assert collector.count("connected") == 2 and collector.count("disconnected") == 1
    assert writer.stats.reconnects == 1
