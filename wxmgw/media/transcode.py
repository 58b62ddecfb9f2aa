"""Audio codecs of the gateway: AAC (FLV side) and PCMA/PCMU/G.722/Opus (RTP side).

Every codec and every rate conversion is FFmpeg's, through PyAV: the codec
contexts do the coding, ``av.AudioResampler`` (libswresample) converts between
the gateway's internal format (mono 48 kHz int16, see ``frames.py``) and each
codec's own rate and sample format, and its ``frame_size`` cuts the codec's
frames. G.711 goes through PyAV too: a numpy lookup table was measured against
it (1.2 vs 2.3 µs to encode a 20 ms packet, 1.1 vs 4.7 µs to decode one) and
saves too little of the ~15 µs a packet costs in all, most of which is the
resampling that has to happen anyway.

Each ``AudioDecoder``/``AudioEncoder`` owns its codec context and resampler and
nothing else is mutable, so instances may run in worker threads (PyAV releases
the GIL in codec calls); one instance must not be used by two threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler

from wxmgw.errors import InvalidArgument, MediaError
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, Pcm

_TIME_BASE = Fraction(1, AUDIO_RATE)
_PACKET_MS = 20


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """An RTP audio codec as the gateway uses it.

    ``clock_rate`` is the RTP timestamp rate and ``sample_rate`` the rate the
    codec really samples at; they differ only for G.722, whose RTP clock is
    8000 Hz though it samples at 16 kHz (RFC 3551 §4.5.2). Opus always uses a
    48 kHz clock (RFC 7587 §4.1). ``frame_samples_at_clock`` is one 20 ms
    packet in RTP clock units, the timestamp step between packets.
    """

    name: str
    ffmpeg_name: str
    clock_rate: int
    sample_rate: int
    frame_samples_at_clock: int

    @property
    def frame_samples(self) -> int:
        """One 20 ms packet in samples at the codec's own rate."""
        return self.sample_rate * _PACKET_MS // 1000


#: RTP audio codecs by SDP encoding name (upper case); look up with ``audio_codec``.
AUDIO_CODECS: dict[str, CodecInfo] = {
    "PCMA": CodecInfo("PCMA", "pcm_alaw", 8000, 8000, 160),
    "PCMU": CodecInfo("PCMU", "pcm_mulaw", 8000, 8000, 160),
    "G722": CodecInfo("G722", "g722", 8000, 16000, 160),
    "OPUS": CodecInfo("OPUS", "libopus", 48000, 48000, 960),
}

_AAC = "AAC"
# FFmpeg encoder options. The "fast" AAC coder halves the default twoloop's
# CPU (~70 vs ~145 µs a frame) and FFmpeg's encoder docs rate it better at
# 64 kbps and above, which 64 kbps mono is.
_ENCODER_OPTIONS = {
    _AAC: (("b", "64000"), ("aac_coder", "fast")),
    "OPUS": (("b", "32000"),),
}


def audio_codec(name: str) -> CodecInfo:
    """The codec of SDP encoding name ``name``, case-insensitive (RFC 4566 §6)."""
    try:
        return AUDIO_CODECS[name.upper()]
    except KeyError:
        raise InvalidArgument(f"unsupported audio codec {name!r}") from None


class AudioDecoder:
    """Decodes one stream's payloads to mono 48 kHz int16."""

    __slots__ = ("_ctx", "_resampler", "_source")

    def __init__(
        self,
        codec: str,
        *,
        sample_rate: int | None = None,
        channels: int = 1,
        extradata: bytes | None = None,
    ) -> None:
        """``codec`` is ``"AAC"`` or a key of ``AUDIO_CODECS`` (any case).

        AAC needs ``extradata``: the AudioSpecificConfig of the FLV sequence
        header, which also gives its rate and channels. The RTP codecs default
        to their ``sample_rate``; ``channels`` (1 or 2) is what the SDP says.
        """
        if codec.upper() == _AAC:
            ffmpeg_name, rate = "aac", sample_rate
        else:
            info = audio_codec(codec)
            ffmpeg_name, rate = info.ffmpeg_name, sample_rate or info.sample_rate
        ctx = av.CodecContext.create(ffmpeg_name, "r")
        assert isinstance(ctx, AudioCodecContext)
        if rate:
            ctx.sample_rate = rate
        ctx.layout = "mono" if channels == 1 else "stereo"
        if extradata:
            ctx.extradata = extradata
        try:
            ctx.open()
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot open {ffmpeg_name} decoder: {e}") from e
        self._ctx = ctx
        self._resampler = AudioResampler("s16", "mono", AUDIO_RATE)
        self._source: tuple[str, str, int] | None = None

    def decode(self, payload: bytes) -> Pcm:
        """Decode one codec frame (an RTP payload or a raw AAC frame).

        Returns any number of samples, none for an empty payload. Raises
        ``MediaError`` for a payload the codec rejects (G.711 and G.722 accept
        any bytes); the decoder stays usable.
        """
        if not payload:
            return np.zeros(0, np.int16)
        try:
            frames = self._ctx.decode(av.Packet(payload))
            chunks = [pcm for frame in frames for pcm in self._resample(frame)]
        except (av.error.FFmpegError, ValueError) as e:
            raise MediaError(f"undecodable {self._ctx.name} payload: {e}") from e
        if len(chunks) == 1:
            return chunks[0]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def _resample(self, frame: AudioFrame) -> list[Pcm]:
        # A stream may change rate or channels (AAC's SBR/PS, a new sequence
        # header): the resampler is built for one input format, so renew it.
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if source != self._source:
            self._resampler = AudioResampler("s16", "mono", AUDIO_RATE)
            self._source = source
        return [out.to_ndarray()[0] for out in self._resampler.resample(frame)]


class AudioEncoder:
    """Encodes mono 48 kHz int16 to complete codec frames.

    ``frame_samples`` is what one output packet covers at 48 kHz: 960 (20 ms)
    for the RTP codecs, 1024 for AAC-LC. ``extradata`` is AAC's
    AudioSpecificConfig for the FLV sequence header, ``b""`` for the others.
    """

    __slots__ = ("_ctx", "_pts", "_resampler", "extradata", "frame_samples")

    def __init__(self, codec: str) -> None:
        """``codec`` is ``"AAC"`` (AAC-LC, 48 kHz mono) or a key of ``AUDIO_CODECS``."""
        is_aac = codec.upper() == _AAC
        if is_aac:
            ctx = self._open("aac", AUDIO_RATE, _ENCODER_OPTIONS[_AAC])
            codec_frame = ctx.frame_size
        else:
            info = audio_codec(codec)
            options = _ENCODER_OPTIONS.get(info.name, ())
            ctx = self._open(info.ffmpeg_name, info.sample_rate, options)
            codec_frame = info.frame_samples
        self._ctx = ctx
        self._pts = 0
        self.extradata = bytes(ctx.extradata or b"") if is_aac else b""
        self.frame_samples = codec_frame * AUDIO_RATE // ctx.sample_rate
        self._resampler = AudioResampler(
            ctx.format, "mono", ctx.sample_rate, frame_size=codec_frame
        )
        self._prime(codec_frame)

    @staticmethod
    def _open(
        ffmpeg_name: str, rate: int, options: tuple[tuple[str, str], ...]
    ) -> AudioCodecContext:
        ctx = av.CodecContext.create(ffmpeg_name, "w")
        assert isinstance(ctx, AudioCodecContext)
        ctx.sample_rate = rate
        ctx.layout = "mono"
        formats = ctx.codec.audio_formats
        assert formats, f"{ffmpeg_name} lists no sample format"
        ctx.format = formats[0]  # s16 for all but AAC, which takes only fltp
        ctx.time_base = Fraction(1, rate)
        ctx.options = dict(options)
        ctx.open()
        return ctx

    def _prime(self, codec_frame: int) -> None:
        """Feed the resampler as much silence as its filter delays the signal.

        Without it, a rate-converting resampler holds back its filter delay (16
        output samples), the first 20 ms of input would yield no packet and
        every packet would leave 20 ms late; primed, each 960 input samples
        make exactly one packet from the first.
        """
        probe = AudioResampler(self._ctx.format, "mono", self._ctx.sample_rate)
        first = probe.resample(self._frame(np.zeros(self.frame_samples, np.int16), 0))
        missing = codec_frame - sum(f.samples for f in first)
        if missing > 0:
            silence = np.zeros(missing * AUDIO_RATE // self._ctx.sample_rate, np.int16)
            self._feed(silence)

    def encode(self, pcm: Pcm) -> list[bytes]:
        """Buffer ``pcm`` (any length) and return the codec frames completed."""
        if not len(pcm):
            return []
        return self._feed(pcm)

    def _feed(self, pcm: Pcm) -> list[bytes]:
        frame = self._frame(pcm, self._pts)
        self._pts += len(pcm)
        return [
            bytes(packet)
            for out in self._resampler.resample(frame)
            for packet in self._ctx.encode(out)
        ]

    @staticmethod
    def _frame(pcm: Pcm, pts: int) -> AudioFrame:
        frame = AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = AUDIO_RATE
        frame.time_base = _TIME_BASE
        frame.pts = pts
        return frame


class PcmFramer:
    """Accumulates mono 48 kHz PCM of any length and cuts 20 ms frames."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: Pcm = np.zeros(0, np.int16)

    def push(self, pcm: Pcm) -> list[Pcm]:
        """Append ``pcm``; return every complete ``AUDIO_FRAME_SAMPLES`` frame, oldest first."""
        buf = np.concatenate((self._pending, pcm)) if len(self._pending) else pcm
        count = len(buf) // AUDIO_FRAME_SAMPLES
        cut = count * AUDIO_FRAME_SAMPLES
        self._pending = buf[cut:].copy()
        return list(buf[:cut].reshape(count, AUDIO_FRAME_SAMPLES).copy())
