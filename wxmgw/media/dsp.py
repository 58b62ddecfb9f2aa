"""Per-packet audio work: G.711 tables, and the rate conversions.

Every RTP audio packet passes through here once or twice (20 ms each way),
on the gevent hub. Through PyAV, a packet took several FFmpeg calls (the
resampler's filter graph alone pushes and pulls), each releasing and taking
back the GIL; when the RTMP legs still ran native threads, that made 62 % of
the process's CPU kernel scheduling at 10 pull legs. Nothing below releases
the GIL, and a 20 ms packet takes a few microseconds.

* G.711 (A-law, µ-law) are table look-ups (compiled, ``_dsp.pyx``); the
  tables are filled once from FFmpeg's own coder, so the bytes are FFmpeg's
  exactly.
* Every rate change, integer ratio (the RTP codecs' 8 or 16 kHz to and from
  the internal 48 kHz) or not (AAC's 44.1 kHz), is a compiled polyphase
  windowed-sinc FIR, :class:`~wxmgw.media._dsp.RateConverter`. It
  streams and answers ``ceil(n * out / in)`` samples for ``n`` in all: 960
  samples at 48 kHz are one 160- or 320-sample packet from the first call on.
"""

from __future__ import annotations

import functools

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

from wxmgw.media._dsp import G711Tables
from wxmgw.media.frames import Pcm


class G711(G711Tables):
    """A-law (``pcm_alaw``) or µ-law (``pcm_mulaw``) as two look-up tables:
    ``encode`` (int16 PCM to bytes) and ``decode`` (bytes to int16 PCM), in C."""

    __slots__ = ()

    def __init__(self, ffmpeg_name: str) -> None:
        super().__init__(*_g711_tables(ffmpeg_name))


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
