"""RTMP pull and push through PyAV (FFmpeg), in native worker threads.

FFmpeg does the RTMP protocol, FLV (de)muxing and AAC; this module only moves
its blocking calls off the gevent hub and turns FLV packets into the gateway's
frames (:mod:`wxmgw.media.frames`) and back.

Threads. PyAV releases the GIL inside ``av_read_frame``, ``av_write_frame``
and codec calls, so each :class:`RtmpReader` / :class:`RtmpWriter` runs its
whole session loop in one OS thread of a gevent :class:`~gevent.threadpool.ThreadPool`
(:func:`worker_pool`; the process is monkey-patched, so ``threading.Thread``
would be a greenlet). Worker code touches no gevent object except through
:class:`HubInbox` (whose ``watcher.send()`` is the one gevent call that is
safe from another thread) and blocks only on real OS locks (:class:`_Wakeup`).
Nothing is logged from a worker thread: what the worker has to say reaches
the hub as an event, and is logged there.

Timing. A reader stamps frames with ``ts`` on the gateway's monotonic clock:
the FLV timeline anchored at the moment its RTMP session started (nginx sends
the first packet right after the play handshake; the first packet *delivered*
to us can be up to a GOP later, because FFmpeg's stream probing buffers until
the video stream shows up), and audio from a sample counter rather than from
the 1 ms FLV timestamps. A writer takes its callers' millisecond timestamps
and rebases them so each publication starts at 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import av
import av.error
import gevent
import gevent.event
from av.audio.codeccontext import AudioCodecContext
from gevent import monkey
from gevent.threadpool import ThreadPool

from wxmgw.errors import MediaError, ParseError
from wxmgw.media.frames import AUDIO_RATE, AudioFrame, Pcm, VideoFrame
from wxmgw.media.transcode import AudioDecoder, AudioEncoder, PcmFramer
from wxmgw.rtp.h264 import NAL_IDR, NAL_PPS, NAL_SPS, AvcConfig, nal_type, split_avcc, to_avcc

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]

#: Threads of the shared pool: each running reader or writer holds one.
MAX_WORKERS: Final = 512
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 8.0

_MS: Final = Fraction(1, 1000)
_AAC_FRAME: Final = 1024
#: An audio timestamp further than this from the sample counter is a gap.
_AUDIO_RESYNC: Final = 0.2
#: Demuxer options. Probing stops as soon as the streams announced by FLV
#: metadata have shown up (``fpsprobesize=0``: no frame-rate estimation),
#: waiting at most ``analyzeduration`` for a video keyframe.
_READER_OPTIONS: Final = {"analyzeduration": "5000000", "fpsprobesize": "0", "rtmp_live": "live"}
#: Muxer options: no seek back to patch duration at the end (RTMP can't), and
#: at most 0.5 s of interleaving buffer so a stalled stream delays the other little.
_WRITER_OPTIONS: Final = {"flvflags": "no_duration_filesize", "max_interleave_delta": "500000"}

_allocate_os_lock = monkey.get_original("_thread", "allocate_lock")
_pool: ThreadPool | None = None


def worker_pool() -> ThreadPool:
    """The process's pool of native threads for blocking FFmpeg calls."""
    global _pool
    if _pool is None:
        _pool = ThreadPool(MAX_WORKERS)
    return _pool


class HubInbox:
    """Runs calls posted from worker threads in one greenlet on the hub, in order.

    ``post()`` may be called from any thread: it appends to a deque and sends
    a loop ``async`` watcher, the only gevent operation that is safe off the
    hub's thread. Many posts made before the hub gets round to it cost one
    wake-up. The calls run in a greenlet of their own, so they may block
    cooperatively; an exception in one is logged and does not stop the others.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: deque[tuple[Callable[..., object], tuple[object, ...]]] = deque()
        self._ready = gevent.event.Event()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._ready.set)
        self._greenlet = gevent.spawn(self._run)

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Call ``fn(*args)`` on the hub soon; from any thread."""
        self._calls.append((fn, args))
        self._watcher.send()

    def _run(self) -> None:
        calls = self._calls
        while True:
            self._ready.wait()
            self._ready.clear()
            while calls:
                fn, args = calls.popleft()
                try:
                    fn(*args)
                except Exception:
                    logger.exception("%s: callback %r failed", self.name, fn)

    def close(self) -> None:
        """Stop delivering (on the hub); calls still queued are dropped."""
        self._watcher.stop()
        self._watcher.close()
        self._greenlet.kill(block=False)
        self._calls.clear()


class _Wakeup:
    """A binary semaphore on a real OS lock: ``set()`` from anywhere, ``wait()`` in a worker.

    ``wait()`` blocks only the calling OS thread, never a gevent hub.
    """

    def __init__(self) -> None:
        self._lock = _allocate_os_lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (and unset it) or until ``timeout``; True if it was set."""
        return bool(self._lock.acquire(timeout=-1 if timeout is None else timeout))


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset()`` after a success."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass(slots=True)
class RtmpStats:
    """Counters of one reader or writer (written by its worker, read anywhere).

    ``errors`` counts skipped corrupt packets and failed sessions; ``dropped``
    counts writes refused because the writer's queue was full.
    """

    packets: int = 0
    bytes: int = 0
    frames: int = 0
    reconnects: int = 0
    errors: int = 0
    dropped: int = 0
    last_error: str = ""


class _Worker:
    """What readers and writers share: a pool thread, a hub inbox, events, close."""

    def __init__(
        self,
        url: str,
        name: str,
        on_event: EventCallback,
        pool: ThreadPool | None,
    ) -> None:
        self.url = url
        self.name = name
        self.stats = RtmpStats()
        self._on_event = on_event
        self._pool = pool
        self._inbox = HubInbox(name)
        self._wakeup = _Wakeup()
        self._closing = False
        self._done: gevent.event.AsyncResult | None = None
        self._backoff = Backoff()
        self._sessions = 0

    def start(self) -> None:
        """Start the worker thread (on the hub)."""
        if self._done is None:
            self._done = (self._pool or worker_pool()).spawn(self._run)

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Ask the worker to stop; it finishes on its own within the I/O timeouts."""
        self._closing = True
        self._wakeup.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (on the hub) until the worker thread has finished; True if it has."""
        if self._done is not None:
            self._done.wait(timeout)
            if not self._done.ready():
                return False
        self._inbox.close()
        return True

    def _event(self, event: str, /, **info: Any) -> None:
        """Report ``event`` to ``on_event`` on the hub (from the worker)."""
        self._inbox.post(self._deliver_event, event, info)

    def _deliver_event(self, kind: str, info: dict[str, Any]) -> None:
        level = logging.WARNING if kind in ("disconnected", "unsupported_codec") else logging.INFO
        logger.log(level, "%s %s %s %s", self.name, kind, self.url, info)
        self._on_event(kind, info)

    def _connected(self) -> None:
        if self._sessions:
            self.stats.reconnects += 1
        self._sessions += 1

    def _failed(self, error: BaseException) -> float:
        """Count a failed session and return how long to wait before the next one."""
        self.stats.errors += 1
        self.stats.last_error = str(error) or type(error).__name__
        delay = self._backoff.next()
        self._event("disconnected", error=self.stats.last_error, retry_in=delay)
        return delay


class RtmpReader(_Worker):
    """Pulls one RTMP stream and hands out H.264 access units and 20 ms PCM frames.

    Video must be H.264 and audio AAC; another codec is reported once as the
    ``unsupported_codec`` event and its packets are skipped. Each keyframe
    handed out starts with the SPS and PPS (from the FLV sequence header when
    the stream does not repeat them in-band), so any consumer can start on it.

    Events: ``connected``, ``disconnected`` (with ``error`` and ``retry_in``:
    also when the stream is not published yet), ``unsupported_codec``. The
    session is retried with :class:`Backoff` until :meth:`close`. Callbacks
    run on the hub.
    """

    def __init__(
        self,
        url: str,
        *,
        on_video: Callable[[VideoFrame], None],
        on_audio: Callable[[AudioFrame], None],
        on_event: EventCallback,
        name: str,
        open_timeout: float = 10.0,
        read_timeout: float = 3.0,
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__(url, name, on_event, pool)
        self._on_video = on_video
        self._on_audio = on_audio
        self._timeout = (open_timeout, read_timeout)
        self._reported: set[tuple[str, str]] = set()

    def _run(self) -> None:
        while not self._closing:
            try:
                self._session()
                error: BaseException = EOFError("end of stream")
            except Exception as e:  # whatever ends a session, it is retried
                error = e
            if self._closing:
                break
            self._wakeup.wait(self._failed(error))

    def _session(self) -> None:
        started = time.monotonic()
        options = {"rw_timeout": str(int(self._timeout[1] * 1e6)), **_READER_OPTIONS}
        container = av.open(self.url, options=options, timeout=self._timeout)
        try:
            self._connected()
            self._backoff.reset()  # opening probed the streams: media is flowing
            flv = _FlvToFrames(started)
            streams = [s for s in container.streams if self._supported(s)]
            self._event("connected", streams=[f"{s.type}/{s.codec_context.name}" for s in streams])
            for packet in container.demux(streams):
                if self._closing:
                    return
                if packet.size == 0:  # the flush packets PyAV yields at the end
                    continue
                self.stats.packets += 1
                self.stats.bytes += packet.size
                self._convert(flv, packet)
        finally:
            container.close()

    def _supported(self, stream: av.stream.Stream) -> bool:
        wanted = {"video": "h264", "audio": "aac"}.get(stream.type)
        ctx = stream.codec_context
        codec = ctx.codec.canonical_name if ctx is not None else "unknown"
        if codec == wanted:
            return True
        if wanted and (stream.type, codec) not in self._reported:
            self._reported.add((stream.type, codec))
            self._event("unsupported_codec", kind=stream.type, codec=codec)
        return False

    def _convert(self, flv: _FlvToFrames, packet: av.Packet[av.stream.Stream]) -> None:
        try:
            if packet.is_corrupt:
                raise ParseError("packet flagged corrupt by the demuxer")
            if packet.stream.type == "video":
                video = flv.video(packet)
                if video is not None:
                    self.stats.frames += 1
                    self._inbox.post(self._on_video, video)
            else:
                for audio in flv.audio(packet):
                    self.stats.frames += 1
                    self._inbox.post(self._on_audio, audio)
        except (ParseError, MediaError) as e:
            self.stats.errors += 1
            self.stats.last_error = str(e)


class _FlvToFrames:
    """One RTMP session's packets to frames: timestamps, avcC, AAC decoding."""

    def __init__(self, started: float) -> None:
        self._anchor = started
        self._dts0: int | None = None
        self._avc: AvcConfig | None = None
        self._decoder: AudioDecoder | None = None
        self._framer = PcmFramer()
        self._audio_start = 0.0
        self._audio_in = 0
        self._audio_out = 0

    def _ts(self, packet: av.Packet[av.stream.Stream]) -> float:
        dts = packet.dts if packet.dts is not None else packet.pts
        if dts is None:
            raise ParseError("packet without timestamp")
        if self._dts0 is None:
            self._dts0 = dts
        pts = packet.pts if packet.pts is not None else dts
        return self._anchor + float((pts - self._dts0) * packet.time_base)

    @staticmethod
    def _sequence_header(packet: av.Packet[av.stream.Stream], first: bool) -> bytes | None:
        """The codec configuration a packet brings: the stream's for the first, then changes."""
        if packet.has_sidedata("new_extradata"):
            return bytes(packet.get_sidedata("new_extradata"))
        return bytes(packet.stream.codec_context.extradata or b"") if first else None

    def video(self, packet: av.Packet[av.stream.Stream]) -> VideoFrame | None:
        header = self._sequence_header(packet, self._avc is None)
        if header:
            self._avc = AvcConfig.parse(header)
        if self._avc is None:
            raise ParseError("H.264 packet before its sequence header")
        nalus = split_avcc(bytes(packet), self._avc.length_size)
        types = {nal_type(n) for n in nalus}
        keyframe = NAL_IDR in types
        if keyframe and not {NAL_SPS, NAL_PPS} <= types:
            nalus = [*self._avc.sps, *self._avc.pps, *nalus]
        return VideoFrame(nalus, self._ts(packet), keyframe) if nalus else None

    def audio(self, packet: av.Packet[av.stream.Stream]) -> list[AudioFrame]:
        ts = self._ts(packet)
        header = self._sequence_header(packet, self._decoder is None)
        if header is not None:
            ctx = packet.stream.codec_context
            assert isinstance(ctx, AudioCodecContext)
            self._decoder = AudioDecoder(
                "AAC", sample_rate=ctx.sample_rate, channels=ctx.channels, extradata=header
            )
        assert self._decoder is not None
        pcm: Pcm = self._decoder.decode(bytes(packet))
        counted = self._audio_start + self._audio_in / AUDIO_RATE
        if self._audio_in == 0 or abs(counted - ts) > _AUDIO_RESYNC:
            # First audio, or a gap or jump in the FLV timeline: follow the timeline.
            self._audio_start = ts - self._audio_in / AUDIO_RATE
        self._audio_in += len(pcm)
        frames = []
        for chunk in self._framer.push(pcm):
            frames.append(AudioFrame(chunk, self._audio_start + self._audio_out / AUDIO_RATE))
            self._audio_out += len(chunk)
        return frames


@dataclass(slots=True)
class _Video:
    frame: VideoFrame
    pts_ms: int


@dataclass(slots=True)
class _Audio:
    pcm: Pcm
    pts_ms: int


@dataclass(slots=True)
class _Streams:
    video: bool


_CLOSE: Final = object()


class RtmpWriter(_Worker):
    """Muxes H.264 and AAC-LC to FLV and publishes it to an RTMP URL.

    The streams of a publication are declared up front: ``video`` (H.264,
    sequence header built from the SPS/PPS seen in-band) and/or ``audio``
    (AAC-LC 48 kHz mono, encoded here from the PCM given). A publication with
    video opens on the first keyframe that comes with (or after) an SPS and a
    PPS, and audio written before it is dropped; an audio-only one opens on
    the first audio. :meth:`set_video` re-declares the streams: the current
    publication ends and the next one opens under the new declaration (players
    see the stream restart), which is how a mix stream gains or loses video.

    ``write_*`` never block: they queue for the worker thread, and when the
    queue is full (the live server is slow) the write is dropped and counted,
    and video resumes at the next keyframe. Timestamps are the callers'
    milliseconds, rebased so each publication starts at 0; each stream's are
    kept non-decreasing, and FFmpeg interleaves the two by timestamp. Frames
    are muxed with dts = pts (no B-frames). If the server drops the
    publication, the next one is tried with :class:`Backoff`, starting again
    at a keyframe with fresh sequence headers; a keyframe with new SPS/PPS
    also starts a new publication. :meth:`close` flushes what is queued and
    ends the publication.

    Events: ``connected``, ``disconnected`` (``error``, ``retry_in``).

    Limitation: PyAV opens an output's I/O with ``avio_open()`` and no
    options or interrupt callback, so FFmpeg's ``rw_timeout`` cannot be set on
    the RTMP connection: a server that accepts TCP but stops reading blocks
    the worker until the kernel gives up on the connection.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_event: EventCallback,
        video: bool = True,
        audio: bool = True,
        queue_size: int = 256,
        pool: ThreadPool | None = None,
    ) -> None:
        if not (video or audio):
            raise ValueError("a writer needs at least one stream")
        super().__init__(url, name, on_event, pool)
        self.audio = audio
        self.video = video
        self._queue: deque[object] = deque()
        self._queue_size = queue_size
        self._video_gap = False
        self._session: _FlvSession | None = None
        self._retry_at = 0.0
        self._sps: bytes | None = None
        self._pps: bytes | None = None

    # --- hub side -------------------------------------------------------------

    def write_video(self, frame: VideoFrame, pts_ms: int) -> None:
        """Queue an access unit for the FLV video stream."""
        if not self.video:
            return
        if self._video_gap and not frame.keyframe:
            self.stats.dropped += 1
            return
        self._video_gap = not self._put(_Video(frame, pts_ms))

    def write_audio(self, frame: AudioFrame, pts_ms: int) -> None:
        """Queue 48 kHz mono PCM for the AAC stream."""
        if self.audio:
            self._put(_Audio(frame.pcm, pts_ms))

    def set_video(self, video: bool) -> None:
        """Declare whether the next publication carries video (ends the current one)."""
        if video != self.video:
            self.video = video
            self._queue.append(_Streams(video))
            self._wakeup.set()

    def close(self) -> None:
        """Flush what is queued, end the publication, stop the worker."""
        if not self._closing:
            self._queue.append(_CLOSE)
        super().close()

    def _put(self, item: object) -> bool:
        if self._closing:
            return False
        if len(self._queue) >= self._queue_size:
            self.stats.dropped += 1
            return False
        self._queue.append(item)
        self._wakeup.set()
        return True

    # --- worker side ----------------------------------------------------------

    def _run(self) -> None:
        video = self.video
        try:
            while True:
                while not self._queue:
                    self._wakeup.wait()
                item = self._queue.popleft()
                if item is _CLOSE:
                    return
                if isinstance(item, _Streams):
                    video = item.video
                    self._end()
                    continue
                try:
                    self._write(item, video)
                except (av.error.FFmpegError, OSError, MediaError, ParseError) as e:
                    self._end()
                    self._retry_at = time.monotonic() + self._failed(e)
        finally:
            self._end()

    def _write(self, item: object, video: bool) -> None:
        if isinstance(item, _Video):
            self._remember_parameter_sets(item.frame)
            session = self._session
            if session is not None and item.frame.keyframe and not session.has_config(
                self._sps, self._pps
            ):
                self._end()  # new SPS/PPS: a new publication with the new sequence header
                session = None
            if session is None and item.frame.keyframe:
                session = self._open(video, item.pts_ms, item.frame)
            if session is not None and session.video is not None:
                session.write_video(item.frame, item.pts_ms)
                self.stats.frames += 1
                self._backoff.reset()
        elif isinstance(item, _Audio):
            session = self._session
            if session is None and not video:
                session = self._open(video, item.pts_ms)
            if session is not None and session.audio is not None:
                session.write_audio(item.pcm, item.pts_ms)
                self.stats.frames += 1
                self._backoff.reset()

    def _remember_parameter_sets(self, frame: VideoFrame) -> None:
        for nalu in frame.nalus:
            kind = nal_type(nalu)
            if kind == NAL_SPS:
                self._sps = nalu
            elif kind == NAL_PPS:
                self._pps = nalu

    def _open(
        self, video: bool, base_ms: int, keyframe: VideoFrame | None = None
    ) -> _FlvSession | None:
        if time.monotonic() < self._retry_at:
            return None
        avc, size = None, (0, 0)
        if video:
            if self._sps is None or self._pps is None or keyframe is None:
                return None
            avc = AvcConfig.from_parameter_sets(self._sps, self._pps)
            size = _picture_size(avc, keyframe)
        container = av.open(self.url, "w", format="flv", options=_WRITER_OPTIONS)
        self._session = _FlvSession(
            container, avc, size, AudioEncoder("AAC") if self.audio else None, base_ms, self.stats
        )
        self._connected()
        self._event("connected", video=video, audio=self.audio)
        return self._session

    def _end(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except (av.error.FFmpegError, OSError) as e:
                self.stats.last_error = str(e)


def _picture_size(avc: AvcConfig, keyframe: VideoFrame) -> tuple[int, int]:
    """Width and height of a keyframe, which FFmpeg's FLV muxer wants for onMetaData.

    FFmpeg's H.264 decoder reads them from the SPS; decoding one keyframe per
    publication costs a few milliseconds and needs no SPS parser of our own.
    """
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = bytes(avc)
    decoder.thread_count = 1
    try:
        frames = [*decoder.decode(av.Packet(to_avcc(keyframe.nalus))), *decoder.decode(None)]
    except av.error.FFmpegError as e:
        raise MediaError(f"undecodable keyframe: {e}") from e
    if not frames:
        raise MediaError("keyframe decodes to no picture")
    frame = frames[0]
    assert isinstance(frame, av.VideoFrame)
    return frame.width, frame.height


class _FlvSession:
    """One publication: an FLV output container and its timestamp state.

    PyAV creates a stream's codec parameters from a codec context, and opens
    that context (an encoder) before writing the header unless the stream was
    made from a template; so the streams are made from templates of an unopened
    throwaway FLV container, and their sequence headers set on them.
    """

    def __init__(
        self,
        container: av.container.OutputContainer,
        avc: AvcConfig | None,
        size: tuple[int, int],
        encoder: AudioEncoder | None,
        base_ms: int,
        stats: RtmpStats,
    ) -> None:
        self._container = container
        self._stats = stats
        self._base = base_ms
        self._avc = avc
        self._encoder = encoder
        self._last_video = 0
        self._last_audio = 0
        self._audio_anchor: int | None = None
        self._audio_in = 0
        self._audio_out = 0
        template = av.open(io.BytesIO(), "w", format="flv")
        self.video: av.stream.Stream | None = None
        self.audio: av.stream.Stream | None = None
        if avc is not None:
            self.video = container.add_stream_from_template(template.add_stream("h264"))
            ctx = self.video.codec_context
            ctx.extradata = bytes(avc)
            ctx.width, ctx.height = size
            self.video.time_base = _MS
        if encoder is not None:
            self.audio = container.add_stream_from_template(
                template.add_stream("aac", rate=AUDIO_RATE)
            )
            actx = self.audio.codec_context
            actx.extradata = encoder.extradata
            actx.layout = "mono"
            self.audio.time_base = _MS

    def has_config(self, sps: bytes | None, pps: bytes | None) -> bool:
        return self._avc is None or (self._avc.sps == [sps] and self._avc.pps == [pps])

    def _mux(self, stream: av.stream.Stream, data: bytes, ms: int, key: bool) -> None:
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = _MS
        packet.pts = packet.dts = ms
        packet.is_keyframe = key
        self._container.mux(packet)
        self._stats.packets += 1
        self._stats.bytes += len(data)

    def write_video(self, frame: VideoFrame, pts_ms: int) -> None:
        assert self.video is not None
        self._last_video = max(pts_ms - self._base, self._last_video)
        self._mux(self.video, to_avcc(frame.nalus), self._last_video, frame.keyframe)

    def write_audio(self, pcm: Pcm, pts_ms: int) -> None:
        """Encode to AAC; packet n carries the samples from n-1 on (the encoder's delay)."""
        assert self.audio is not None and self._encoder is not None
        counted = (self._audio_anchor or 0) + self._audio_in * 1000 // AUDIO_RATE
        if self._audio_anchor is None or abs(pts_ms - counted) > _AUDIO_RESYNC * 1000:
            self._audio_anchor = pts_ms - self._audio_in * 1000 // AUDIO_RATE
        self._audio_in += len(pcm)
        for data in self._encoder.encode(pcm):
            start = (self._audio_out - 1) * self._encoder.frame_samples * 1000 // AUDIO_RATE
            ms = max(self._audio_anchor + start - self._base, self._last_audio, 0)
            self._last_audio = ms
            self._audio_out += 1
            self._mux(self.audio, data, ms, True)

    def close(self) -> None:
        self._container.close()
