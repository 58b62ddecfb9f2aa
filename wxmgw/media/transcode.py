"""Audio codecs of the gateway: AAC (FLV side) and PCMA/PCMU/G.722/Opus (RTP side).

The codecs are FFmpeg's, except G.711, which is a pair of look-up tables
filled from FFmpeg's coder (:mod:`wxmgw.media.dsp`). Encoders go through
PyAV; decoders, which run on every AAC frame of every pull leg, are called
from C (:mod:`wxmgw.media._ffmpeg`, in the FFmpeg PyAV loaded). The
gateway's internal format is mono 48 kHz int16 (see ``frames.py``); the RTP
codecs sample at 8, 16 or 48 kHz and AAC mostly at 44.1 kHz. Every rate
change is the gateway's own compiled filter (``_dsp.rate_converter``), not
libswresample: PyAV's filter graph cost a push, a pull, an exception when
empty and a ``Fraction`` per frame, twice the filtering itself.

Every payload decoded comes from a peer (a mini-program's AAC through the
live server, the MAS's RTP), and FFmpeg's decoders output what the payload
says: a raw AAC frame's program_config_element can turn a stereo stream into
27 channels (whose frame PyAV once read past its planes: a SIGSEGV). So an
``AudioDecoder`` knows what its stream declared (format, channels, rate,
samples per frame) and drops any frame that is not that, before a sample of
it is read.

Each ``AudioDecoder``/``AudioEncoder`` owns its codec context and filters and
nothing else is mutable, so instances may run in worker threads (the codec
calls release the GIL); one instance must not be used by two threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame

from wxmgw.codecs.aac import AudioSpecificConfig
from wxmgw.errors import InvalidArgument, MediaError
from wxmgw.media._dsp import ToRate, rate_converter
from wxmgw.media._ffmpeg import Decoder, Dropped, Undecodable
from wxmgw.media.clock import PcmFramer
from wxmgw.media.dsp import G711
from wxmgw.media.frames import AUDIO_RATE, NO_SAMPLES, Pcm

_PACKET_MS = 20
_G711 = ("pcm_alaw", "pcm_mulaw")


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
#: AAC-LC's rate for narrow- and wideband sources (G.711, G.722): it keeps all
#: they carry, for a third of the CPU of 48 kHz (a 1024-sample frame costs the
#: encoder about the same at either rate, and there are a third as many).
AAC_NARROW_RATE: Final = 16000
# FFmpeg encoder options. The "fast" AAC coder halves the default twoloop's
# CPU (~70 vs ~145 µs a frame) and FFmpeg's encoder docs rate it better at
# 64 kbps and above for 48 kHz; the 16 kHz stream gets as many bits per sample.
_ENCODER_OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    _AAC: (("aac_coder", "fast"),),
    "OPUS": (("b", "32000"),),
}
_AAC_BITRATE = {AUDIO_RATE: 64000, AAC_NARROW_RATE: 32000}


class DroppedFrame(MediaError):
    """A decoded frame that is not what its stream declared: dropped, never converted."""


@dataclass(frozen=True, slots=True)
class _Declared:
    """What one stream's decoded frames must be.

    ``samples`` lists the frame sizes a codec with fixed frames may output
    (AAC); when it is empty, the payload says how many (:func:`_payload_samples`).
    """

    format: str
    channels: tuple[int, ...]
    rates: tuple[int, ...]
    samples: tuple[int, ...] = ()


#: Channels a stream may have: a decoder averages two into one.
_CHANNELS: Final = (1, 2)
#: RFC 6716 §3.1: samples at 48 kHz in one frame of each TOC config, by config.
_OPUS_FRAME: Final = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
#: RFC 6716 §3.2.5: a packet holds at most 120 ms.
_OPUS_MAX: Final = 5760


def opus_samples(packet: bytes) -> int:
    """Samples at 48 kHz an Opus packet declares in its TOC (RFC 6716 §3.1, §3.2); 0 if none."""
    if not packet:
        return 0
    toc = packet[0]
    code = toc & 0x03
    counts = (1, 2, 2, packet[1] & 0x3F if len(packet) > 1 else 0)  # code 3: a count byte
    samples = _OPUS_FRAME[toc >> 3] * counts[code]
    return samples if samples <= _OPUS_MAX else 0


def _payload_samples(ffmpeg_name: str, payload: bytes, channels: int) -> int:
    """Samples per channel a payload of a sample-based codec decodes to."""
    if ffmpeg_name == "libopus":
        return opus_samples(payload)
    if ffmpeg_name == "g722":
        return 2 * len(payload)  # two 16 kHz samples per byte at 64 kbit/s (RFC 3551 §4.5.2)
    return len(payload) // channels  # G.711: a byte per sample


def aac_rate(source_rate: int) -> int:
    """The AAC rate for audio whose source sampled at ``source_rate``: the lowest that keeps it."""
    return AAC_NARROW_RATE if source_rate <= AAC_NARROW_RATE else AUDIO_RATE


def audio_codec(name: str) -> CodecInfo:
    """The codec of SDP encoding name ``name``, case-insensitive (RFC 4566 §6)."""
    try:
        return AUDIO_CODECS[name.upper()]
    except KeyError:
        raise InvalidArgument(f"unsupported audio codec {name!r}") from None


class AudioDecoder:
    """Decodes one stream's payloads to mono int16 at ``out_rate`` (48 kHz unless asked).

    G.711 is a table look-up: no FFmpeg call at all for PCMA and PCMU, one
    per packet for G.722 and Opus (and for G.711 in stereo), which also
    converts what it decoded (:class:`~wxmgw.media._dsp.ToRate`). Every rate
    reaches ``out_rate`` straight through one
    :class:`~wxmgw.media._dsp.RateConverter`: a leg that
    only re-encodes to an 8 or 16 kHz codec asks for that rate and saves the
    way through 48 kHz.
    """

    __slots__ = (
        "_channels", "_declared", "_decoder", "_extradata", "_g711", "_in_rate", "_name",
        "_to_rate",
    )

    def __init__(
        self,
        codec: str,
        *,
        channels: int = 1,
        extradata: bytes | None = None,
        out_rate: int = AUDIO_RATE,
    ) -> None:
        """``codec`` is ``"AAC"`` or a key of ``AUDIO_CODECS`` (any case).

        AAC needs ``extradata``: the AudioSpecificConfig of the FLV sequence
        header, which gives its rate and channels; ``ParseError`` if it is
        not one :class:`~wxmgw.codecs.aac.AudioSpecificConfig` takes. An RTP
        codec decodes at its own rate; ``channels`` (1 or 2) is what the SDP
        says. ``out_rate`` is the rate of the PCM returned.
        """
        if codec.upper() == _AAC:
            config = AudioSpecificConfig.parse(extradata or b"")
            ffmpeg_name, rate, channels = "aac", config.sample_rate, config.channels
            self._declared = _Declared(
                "fltp", config.out_channels, config.rates, config.frame_samples
            )
        else:
            info = audio_codec(codec)
            ffmpeg_name, rate = info.ffmpeg_name, info.sample_rate
            if channels not in _CHANNELS:
                raise InvalidArgument(f"{info.name} with {channels} channels")
            self._declared = _Declared("s16", (channels,), (rate,))
        self._name = ffmpeg_name
        self._channels = channels
        self._in_rate = rate
        self._to_rate = ToRate(out_rate)
        self._decoder: Decoder | None = None
        self._g711: G711 | None = None
        if ffmpeg_name in _G711 and channels == 1 and rate == 8000:
            self._g711 = G711(ffmpeg_name)
            return
        self._extradata = extradata or b""
        self._decoder = self._open()

    def _open(self) -> Decoder:
        declared = self._declared
        try:
            return Decoder(self._name, self._extradata, self._in_rate, self._channels,
                           declared.format, declared.channels, declared.rates)
        except Undecodable as e:
            raise MediaError(str(e)) from e

    def decode(self, payload: bytes) -> Pcm:
        """Decode one codec frame (an RTP payload or a raw AAC frame).

        Returns any number of samples, none for an empty payload. Raises
        ``MediaError`` for a payload the codec rejects (G.711 and G.722 accept
        any bytes), and its ``DroppedFrame`` when the payload decodes to a
        frame that is not what the stream declared; the decoder stays usable
        (after a dropped frame it is opened anew, since FFmpeg's AAC decoder
        keeps a program_config_element's channels for the frames that follow).
        """
        if not payload:
            return NO_SAMPLES
        if self._g711 is not None:  # one sample per byte, by construction
            return self._to_rate(self._g711.decode(payload), self._in_rate)
        assert self._decoder is not None
        declared = self._declared
        samples = declared.samples or (_payload_samples(self._name, payload, self._channels),)
        try:
            pcm: Pcm = self._decoder.decode(payload, samples, self._to_rate)
        except Dropped as e:
            self._decoder = self._open()
            raise DroppedFrame(str(e)) from None
        except Undecodable as e:
            raise MediaError(f"undecodable {self._name} payload: {e}") from e
        return pcm


class AudioEncoder:
    """Encodes mono int16 at ``source_rate`` (48 kHz unless told) to complete codec frames.

    ``frame_samples`` is what one output packet covers at ``source_rate``:
    at 48 kHz, 960 (20 ms) for the RTP codecs, 1024 for AAC-LC at 48 kHz
    (3072 at 16 kHz). ``extradata`` is AAC's
    AudioSpecificConfig for the FLV sequence header, ``b""`` for the others.
    G.711 is a table look-up after a :class:`~wxmgw.media._dsp.RateConverter`; the
    others take one FFmpeg call per packet. Each 960 input samples make
    exactly one RTP packet from the first.
    """

    __slots__ = ("_ctx", "_down", "_framer", "_g711", "_pts", "extradata", "frame_samples", "rate")

    def __init__(self, codec: str, aac: int = AUDIO_RATE, *, source_rate: int = AUDIO_RATE) -> None:
        """``codec`` is ``"AAC"`` (AAC-LC mono at rate ``aac``: 48 kHz or
        ``AAC_NARROW_RATE``) or a key of ``AUDIO_CODECS``; ``source_rate`` is
        the codec's rate or a multiple of it."""
        self._ctx: AudioCodecContext | None = None
        self._g711: G711 | None = None
        self.extradata = b""
        if codec.upper() == _AAC:
            if aac not in _AAC_BITRATE:
                raise ValueError(f"AAC at {aac} Hz: not one of {sorted(_AAC_BITRATE)}")
            options = (*_ENCODER_OPTIONS[_AAC], ("b", str(_AAC_BITRATE[aac])))
            self._ctx = self._open("aac", aac, options)
            self.extradata = bytes(self._ctx.extradata or b"")
            rate, codec_frame = aac, self._ctx.frame_size
        else:
            info = audio_codec(codec)
            rate, codec_frame = info.sample_rate, info.frame_samples
            if info.ffmpeg_name in _G711:
                self._g711 = G711(info.ffmpeg_name)
            else:
                options = _ENCODER_OPTIONS.get(info.name, ())
                self._ctx = self._open(info.ffmpeg_name, rate, options)
        self._pts = 0
        self.rate = rate
        if source_rate % rate:
            raise ValueError(f"{codec} at {rate} Hz from {source_rate} Hz: not a multiple")
        self._down = rate_converter(source_rate, rate)
        self.frame_samples = codec_frame * source_rate // rate
        self._framer = PcmFramer(self.frame_samples)

    @staticmethod
    def _open(
        ffmpeg_name: str, rate: int, options: tuple[tuple[str, str], ...]
    ) -> AudioCodecContext:
        ctx = av.CodecContext.create(ffmpeg_name, "w")
        assert isinstance(ctx, AudioCodecContext)
        ctx.sample_rate = rate
        ctx.layout = "mono"
        ctx.format = "fltp" if ffmpeg_name == "aac" else "s16"  # what each encoder takes
        ctx.time_base = Fraction(1, rate)
        ctx.options = dict(options)
        ctx.open()
        return ctx

    def encode(self, pcm: Pcm) -> list[bytes]:
        """Buffer ``pcm`` (any length) and return the codec frames completed."""
        out: list[bytes] = []
        framer = self._framer
        # A sender's 20 ms frames come cut to size: one is a packet as it is
        # (the framer's copy is only needed to make a strided view contiguous).
        whole = len(pcm) == self.frame_samples and not framer.pending and pcm.flags.c_contiguous
        for chunk in (pcm,) if whole else framer.push(pcm):
            if self._down is not None:
                chunk = self._down(chunk)
            if self._g711 is not None:
                out.append(self._g711.encode(chunk))
            else:
                out += [bytes(packet) for packet in self._encode(chunk)]
        return out

    def _encode(self, pcm: Pcm) -> list[av.Packet]:
        ctx = self._ctx
        assert ctx is not None
        if ctx.format.name == "fltp":
            frame = AudioFrame.from_ndarray(
                (pcm.astype(np.float32) / 32768.0).reshape(1, -1), format="fltp", layout="mono"
            )
        else:
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = ctx.sample_rate
        frame.time_base = ctx.time_base
        frame.pts = self._pts
        self._pts += len(pcm)
        return ctx.encode(frame)

