"""Per-packet audio work in numpy: G.711 tables and integer-ratio resampling.

Every RTP audio packet passes through here once or twice (20 ms each way),
on the gevent hub. Through PyAV, a packet took several FFmpeg calls (the
resampler's filter graph alone pushes and pulls), each releasing and taking
back the GIL; when the RTMP legs still ran native threads, that made 62 % of
the process's CPU kernel scheduling at 10 pull legs. The numpy code below
releases nothing and runs a 20 ms packet in a few microseconds.

* G.711 (A-law, µ-law) are table look-ups; the tables are filled once from
  FFmpeg's own coder, so the bytes are FFmpeg's exactly.
* The RTP codecs sample at 8 or 16 kHz and the gateway at 48 kHz (an integer
  ratio), so the rate conversion is a polyphase windowed-sinc FIR: decimate
  by 6 or 3 on the way out, interpolate on the way in. Each streams (it keeps
  the filter's history between calls) and answers exactly ``n / factor`` or
  ``n * factor`` samples for ``n`` in: 960 samples at 48 kHz are one 160- or
  320-sample packet from the first call on.
"""

from __future__ import annotations

import functools
from typing import Final

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

from wxmgw.media.frames import Pcm

#: Taps of each polyphase branch; with a Kaiser window (beta 8) the stopband is
#: below -70 dB and the passband ends at 90 % of the low rate's Nyquist.
_TAPS_PER_PHASE: Final = 16
_KAISER_BETA: Final = 8.0
_PASSBAND: Final = 0.9


@functools.cache
def _lowpass(factor: int) -> npt.NDArray[np.float32]:
    """A low-pass FIR for a ``factor`` rate change, at the high rate, unit DC gain."""
    n = factor * _TAPS_PER_PHASE
    t = np.arange(n) - (n - 1) / 2
    cutoff = _PASSBAND / (2 * factor)  # cycles per high-rate sample
    h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, _KAISER_BETA)
    return (h / h.sum()).astype(np.float32)


def _to_int16(samples: npt.NDArray[np.float32]) -> Pcm:
    np.rint(samples, out=samples)
    # np.clip's, by its ufuncs: clip's Python wrappers cost more than the clipping.
    np.maximum(samples, -32768, out=samples)
    np.minimum(samples, 32767, out=samples)
    return samples.astype(np.int16)


def _windows(buf: npt.NDArray[np.float32], width: int, step: int) -> npt.NDArray[np.float32]:
    """Every ``width``-sample window of ``buf``, ``step`` apart: a view, no copy.

    What ``sliding_window_view(buf, width)[::step]`` gives, without its
    argument checks, which cost more than the filtering on a 20 ms packet.
    """
    count = (len(buf) - width) // step + 1
    item = buf.itemsize
    return np.ndarray((count, width), np.float32, buf, 0, (step * item, item))


class Decimator:
    """48 kHz to 48/``factor`` kHz, streaming: low-pass, then every ``factor``-th sample."""

    __slots__ = ("_factor", "_history", "_taps")

    def __init__(self, factor: int) -> None:
        self._factor = factor
        self._taps = _lowpass(factor)[::-1].copy()
        # So many samples of history make the first call's output exactly n / factor.
        self._history = np.zeros(len(self._taps) - factor, np.float32)

    def __call__(self, pcm: Pcm) -> Pcm:
        buf = np.concatenate((self._history, pcm), dtype=np.float32)
        windows = _windows(buf, len(self._taps), self._factor)
        self._history = buf[len(windows) * self._factor :]
        return _to_int16(windows @ self._taps)


class Interpolator:
    """48/``factor`` kHz to 48 kHz, streaming: ``factor`` polyphase branches per input sample."""

    __slots__ = ("_branches", "_history")

    def __init__(self, factor: int) -> None:
        h = _lowpass(factor) * factor  # zero-stuffing divides the gain by factor
        # branches[T-1-j, p] = h[p + factor*j]: row k of the sliding windows
        # (x[k-T+1] .. x[k]) times column p is output sample factor*k + p.
        self._branches = h.reshape(_TAPS_PER_PHASE, factor)[::-1].copy()
        self._history = np.zeros(_TAPS_PER_PHASE - 1, np.float32)

    def __call__(self, pcm: Pcm) -> Pcm:
        buf = np.concatenate((self._history, pcm), dtype=np.float32)
        self._history = buf[len(buf) - (_TAPS_PER_PHASE - 1) :]
        windows = _windows(buf, _TAPS_PER_PHASE, 1)
        return _to_int16((windows @ self._branches).reshape(-1))


def decimator(rate: int, out: int) -> Decimator | None:
    """Streaming ``rate`` -> ``out`` downsampling (``rate`` a multiple of ``out``); None if same."""
    return Decimator(rate // out) if rate != out else None


def interpolator(rate: int, out: int) -> Interpolator | None:
    """Streaming ``rate`` -> ``out`` upsampling (``out`` a multiple of ``rate``); None if same."""
    return Interpolator(out // rate) if rate != out else None


class G711:
    """A-law (``pcm_alaw``) or µ-law (``pcm_mulaw``) as two look-up tables."""

    __slots__ = ("_decode", "_encode")

    def __init__(self, ffmpeg_name: str) -> None:
        self._encode, self._decode = _g711_tables(ffmpeg_name)

    def encode(self, pcm: Pcm) -> bytes:
        return self._encode[pcm.view(np.uint16)].tobytes()

    def decode(self, payload: bytes) -> Pcm:
        return self._decode[np.frombuffer(payload, np.uint8)]


@functools.cache
def _g711_tables(ffmpeg_name: str) -> tuple[npt.NDArray[np.uint8], Pcm]:
    """Every int16 value encoded, and every byte decoded, by FFmpeg's coder."""
    every_sample = np.arange(65536, dtype=np.uint16).view(np.int16)
    encoder = av.CodecContext.create(ffmpeg_name, "w")
    assert isinstance(encoder, AudioCodecContext)
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(every_sample.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    encoded = b"".join(bytes(p) for p in (*encoder.encode(frame), *encoder.encode(None)))
    decoder = av.CodecContext.create(ffmpeg_name, "r")
    assert isinstance(decoder, AudioCodecContext)
    decoder.sample_rate, decoder.layout = 8000, "mono"
    frames = decoder.decode(av.Packet(bytes(range(256))))
    decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)
    encode = np.frombuffer(encoded, np.uint8)
    assert len(encode) == 65536 and len(decoded) == 256, ffmpeg_name
    return encode, decoded
