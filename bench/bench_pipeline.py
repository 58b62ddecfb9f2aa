"""The Rtmp2rtp per-message path alone, in one process: CPU per leg-second and per stage.

Run: ``.venv/bin/python bench/bench_pipeline.py [--legs 10] [--seconds 60]``.

``bench_legs.py`` measures whole gateways against the ffmpeg CLI on a
shared, noisy machine; this one measures the gateway's own work on a
message with nothing else running, so that a change to the hot path can be
compared before and after in a minute, on any machine. A live pusher's clip
(``common.make_live_clip``: 640x360 15 fps H.264 ~600 kbps, AAC 44.1 kHz
mono) is cut into RTMP chunks as nginx-rtmp sends them (4096-byte chunks,
~30 reads a second), and each of ``--legs`` legs runs them through what a
StartPull runs: the chunk parser, the reader's FLV conversion (AAC decoded
and resampled to 8 kHz, 20 ms frames), the PCMA and H.264 senders and their
RTP sessions, sending to a loopback socket nobody reads (so the kernel's
figure is not a real receiver's). Legs take turns read by read, as they do
on the hub.

Printed: user and system CPU per leg-second of media, then each stage's
CPU per call, timed apart on the same media.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gevent import monkey

monkey.patch_all()

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from common import LIVE_FPS, make_live_clip  # noqa: E402

from wxmgw.legs.rtmp2rtp import AudioSender, VideoSender  # noqa: E402
from wxmgw.media.clock import AudioFramer, ClockRules  # noqa: E402
from wxmgw.media.flvframes import AUDIO_GAP, FlvToFrames  # noqa: E402
from wxmgw.media.frames import AudioFrame, Pcm  # noqa: E402
from wxmgw.media.rtmp_reader import RtmpReader  # noqa: E402
from wxmgw.media.transcode import AudioDecoder, audio_codec  # noqa: E402
from wxmgw.ports import PortAllocator, PortPair  # noqa: E402
from wxmgw.rtmp.chunk import AUDIO, VIDEO, ChunkWriter, Message  # noqa: E402
from wxmgw.rtmp.chunkreader import ChunkReader  # noqa: E402
from wxmgw.rtmp.flv import SEQUENCE_HEADER, AacPacket  # noqa: E402
from wxmgw.rtp.session import RtpSession, SendConfig  # noqa: E402

NGINX_CHUNK = 4096  # nginx-rtmp's chunk_size default
READS_PER_SECOND = 30  # what a pull leg's socket gives per second at these bitrates
PCMA_RATE = 8000


def flv_tags(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(type, timestamp ms, body) of each audio and video tag of an FLV file."""
    data = path.read_bytes()
    pos = 13  # header + PreviousTagSize0
    while pos + 11 <= len(data):
        kind, size = data[pos], int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | data[pos + 7] << 24
        if kind in (AUDIO, VIDEO):
            yield kind, ts, data[pos + 11 : pos + 11 + size]
        pos += 11 + size + 4


def media(clip: Path, seconds: float) -> list[Message]:
    """``seconds`` of the clip looped, as RTMP messages."""
    tags = list(flv_tags(clip))
    period = tags[-1][1] + 1000 // LIVE_FPS  # the last frame lasts one frame too
    out: list[Message] = []
    loop = 0
    while True:
        for kind, ts, body in tags:
            at = ts + loop * period
            if at >= seconds * 1000:
                return out
            out.append(Message(kind, 1, at, body))
        loop += 1


def chunked(messages: list[Message], seconds: float) -> list[bytes]:
    """``messages`` as nginx-rtmp sends them, cut into what each of ``seconds`` x
    ``READS_PER_SECOND`` reads receives."""
    writer = ChunkWriter(NGINX_CHUNK)
    stream = b"".join(writer.chunks(m, 4 if m.type_id == AUDIO else 6) for m in messages)
    step = len(stream) // int(seconds * READS_PER_SECOND)
    return [stream[i : i + step] for i in range(0, len(stream), step)]


class Leg:
    """What a StartPull runs on each message, but the socket it reads."""

    def __init__(self, pairs: Callable[[], PortPair], sink: int) -> None:
        codec = audio_codec("PCMA")
        remote = ("127.0.0.1", sink)
        self.video = VideoSender(RtpSession(pairs(), "video", remote=remote,
                                            send=SendConfig(1, 96, 90000, 1.0)))
        self.audio = AudioSender(RtpSession(pairs(), "audio", remote=remote,
                                            send=SendConfig(1, 8, PCMA_RATE)), codec)
        self.reader = RtmpReader("rtmp://127.0.0.1/live/bench", on_video=self.video.send,
                                 on_audio=self.audio.send, on_event=lambda *_: None,
                                 name="bench", audio_rate=PCMA_RATE)
        self.chunks = ChunkReader()
        self.chunks.chunk_size = NGINX_CHUNK
        self.flv = FlvToFrames(PCMA_RATE, self.reader.limits.max_backlog)

    def read(self, data: bytes, start: float) -> None:
        messages = self.chunks.feed(data)
        if messages:
            self.flv.deliver(self.reader, messages, start + messages[-1].timestamp / 1000)


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def per_call(fn: Callable[[], int]) -> float:
    """CPU µs per call of what ``fn`` does; it returns how many calls it made."""
    t0 = time.process_time()
    calls = fn()
    return (time.process_time() - t0) / calls * 1e6


def stages(messages: list[Message], seconds: float, sink: int,
           pairs: Callable[[], PortPair]) -> None:
    """Each stage timed apart on ``seconds`` of media, µs per call."""
    reads = chunked(messages, seconds)

    def parse() -> int:
        reader = ChunkReader()
        reader.chunk_size = NGINX_CHUNK
        return sum(len(reader.feed(data)) for data in reads)

    aac = [AacPacket.parse(m.payload) for m in messages if m.type_id == AUDIO]
    config = next(p.data for p in aac if p.packet_type == SEQUENCE_HEADER)
    raw = [p.data for p in aac if p.packet_type != SEQUENCE_HEADER]
    decoder = AudioDecoder("AAC", extradata=config, out_rate=PCMA_RATE)
    pcm: list[Pcm] = []

    def decode() -> int:
        pcm.extend(decoder.decode(data) for data in raw)
        return len(raw)

    framer = AudioFramer(PCMA_RATE // 50, PCMA_RATE, ClockRules(gap=AUDIO_GAP, backlog=2.0))
    frames: list[AudioFrame] = []

    def frame() -> int:
        for i, chunk in enumerate(pcm):
            frames.extend(framer.push(chunk, i * 1024 / 44100))
        return len(pcm)

    sender = Leg(pairs, sink).audio

    def send() -> int:
        for f in frames:
            sender.send(f)
        return len(frames)

    for name, fn, unit in (("RTMP chunks", parse, "message"),
                           ("AAC decode + resample", decode, "AAC frame"),
                           ("20 ms framing", frame, "AAC frame"),
                           ("PCMA encode + RTP send", send, "20 ms packet")):
        print(f"  {name:<24} {per_call(fn):6.2f} µs per {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--legs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0, help="media per leg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        messages = media(make_live_clip(Path(tmp) / "clip.flv"), args.seconds)
    reads = chunked(messages, args.seconds)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            lo = probe.getsockname()[1] & ~1
        ports = PortAllocator(lo, lo + 4 * args.legs + 7, "127.0.0.1")
        legs = [Leg(ports.allocate, sink.getsockname()[1]) for _ in range(args.legs)]
        start = time.monotonic()
        user0, sys0 = cpu()
        for data in reads:
            for leg in legs:
                leg.read(data, start)
        user1, sys1 = cpu()
        leg_seconds = args.legs * args.seconds
        sent = sum(leg.video.session.stats.packets_sent + leg.audio.session.stats.packets_sent
                   for leg in legs)
        print(f"{args.legs} legs x {args.seconds:.0f} s of media, {len(messages)} messages and "
              f"{sent / args.legs:.0f} RTP packets a leg")
        print(f"CPU per leg-second: user {(user1 - user0) / leg_seconds * 1000:.2f} ms, "
              f"system {(sys1 - sys0) / leg_seconds * 1000:.2f} ms")
        print("stages, CPU per call:")
        part = min(args.seconds, 20.0)
        stages([m for m in messages if m.timestamp < part * 1000], part, sink.getsockname()[1],
               ports.allocate)


if __name__ == "__main__":
    main()
