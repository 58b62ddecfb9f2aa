# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled half of :mod:`wxmgw.media.dsp`: what runs on every audio packet or frame.

* :class:`RateConverter`, every rate change of the gateway's audio: a
  streaming rational-ratio polyphase windowed-sinc FIR (Kaiser window) for
  AAC's 44.1 kHz to 8, 16 or 48 kHz on every pull leg, and for the integer
  ratios between the RTP codecs' 8 or 16 kHz and the internal 48 kHz. One
  call per 20 ms frame or AAC frame, so the filter itself is the work: a
  tight loop with eight partial sums, no Python objects per sample. The
  design is in ``_bank``.
  :class:`ToRate` renews one when a stream's rate changes.
* :class:`G711Tables` applies G.711's look-up tables (filled from FFmpeg's
  coder by ``dsp.G711``) to a 20 ms packet: a C loop instead of numpy's
  fancy indexing, a quarter of its time for 160 samples.
"""

import numpy as np

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport lrintf
from libc.string cimport memcpy

#: Taps of each output sample at the lower of the two rates: with a Kaiser
#: window (beta 8) the stopband is below -70 dB and the passband ends at 90 %
#: of the lower rate's Nyquist.
TAPS_PER_PHASE = 16
KAISER_BETA = 8.0
PASSBAND = 0.9
cdef enum:
    _UNROLL = 8
    _PIECE = 4096  # input samples taken into the window at a time

ctypedef fused sample_t:
    short
    float

_banks = {}


def _bank(int up, int down):
    """The filter of an ``up``/``down`` conversion as ``up`` phases of ``taps`` coefficients.

    The prototype low-pass runs at ``up`` times the input rate, cut at 90 % of
    the lower rate's Nyquist, ``16 * max(up, down)`` taps long (rounded so that
    each phase has a multiple of 8) and scaled by ``up`` (zero-stuffing divides
    the gain by it). Row ``p`` is phase ``p`` reversed, so an output is the dot
    product of a row with the last ``taps`` input samples, oldest first.
    """
    key = (up, down)
    bank = _banks.get(key)
    if bank is None:
        wide = max(up, down)
        taps = -(-TAPS_PER_PHASE * wide // up)
        taps += -taps % _UNROLL
        n = TAPS_PER_PHASE * wide
        t = np.arange(n) - (n - 1) / 2
        cutoff = PASSBAND / (2 * wide)  # cycles per sample at the upsampled rate
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, KAISER_BETA)
        h *= up / h.sum()
        h = np.concatenate((h, np.zeros(up * taps - n)))
        bank = np.ascontiguousarray(h.reshape(taps, up).T[:, ::-1], dtype=np.float32)
        bank.flags.writeable = False
        _banks[key] = bank
    return bank


cdef class RateConverter:
    """``rate_in`` to ``rate_out`` Hz, streaming, to int16.

    Output ``n`` is the filter at input time ``n * rate_in / rate_out``, over
    the input up to that instant (a causal filter; its history starts silent).
    So after ``k`` input samples in all, exactly ``ceil(k * rate_out /
    rate_in)`` have come out: 960 samples at 48 kHz are 160 at 8 kHz from the
    first call, and the output never depends on how the input was cut.
    """

    # Its fields are declared in ``_dsp.pxd`` (``_ffmpeg.pyx`` calls :meth:`floats`).

    def __init__(self, int rate_in, int rate_out):
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"rates {rate_in} -> {rate_out} Hz")
        divisor = np.gcd(rate_in, rate_out)
        self.rate_in, self.rate_out = rate_in, rate_out
        self._up, self._down = rate_out // divisor, rate_in // divisor
        self._bank = _bank(self._up, self._down)
        self._taps = self._bank.shape[1]
        self._buf = np.zeros(self._taps - 1 + _PIECE, np.float32)
        self._next = 0

    def __call__(self, samples, float scale=1.0):
        """The output ``samples`` (int16 or float32, one dimension) complete, as int16;
        ``scale`` multiplies them first (32768 for float samples in [-1, 1])."""
        if len(samples) > _PIECE:
            return np.concatenate([self(samples[i : i + _PIECE], scale)
                                   for i in range(0, len(samples), _PIECE)])
        if samples.dtype == np.int16:
            return _convert[short](self, samples, scale)
        return _convert[float](self, samples, scale)

    cdef object floats(self, const float *samples, Py_ssize_t count, float scale):
        """What calling it does for ``count`` float samples at ``samples``, read
        in place: no array, no buffer to acquire (a decoder's plane, say)."""
        cdef Py_ssize_t done, take, i
        cdef float *window = &self._buf[self._taps - 1]
        if count <= _PIECE:
            for i in range(count):
                window[i] = samples[i] * scale
            return self._filter(count)
        pieces = []
        for done in range(0, count, _PIECE):
            take = min(_PIECE, count - done)
            pieces.append(self.floats(samples + done, take, scale))
        return np.concatenate(pieces)

    cdef object _filter(self, Py_ssize_t count):
        """The outputs the window's ``count`` new samples complete, as int16."""
        cdef Py_ssize_t i, j, n, start
        cdef int up = self._up, taps = self._taps, keep = self._taps - 1
        cdef long long at = self._next, end
        cdef float[::1] buf = self._buf
        cdef const float[:, ::1] bank = self._bank
        cdef const float *row
        cdef const float *window
        cdef float a0, a1, a2, a3, a4, a5, a6, a7, value
        end = count * <long long>up
        n = 0 if at >= end else (end - at + self._down - 1) // self._down
        out = np.empty(n, np.int16)
        cdef short[::1] result = out
        for i in range(n):
            start = at // up  # the input sample at this instant, in buf at keep + start
            row = &bank[at % up, 0]
            window = &buf[start]
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0
            j = 0
            while j < taps:
                a0 += row[j] * window[j]
                a1 += row[j + 1] * window[j + 1]
                a2 += row[j + 2] * window[j + 2]
                a3 += row[j + 3] * window[j + 3]
                a4 += row[j + 4] * window[j + 4]
                a5 += row[j + 5] * window[j + 5]
                a6 += row[j + 6] * window[j + 6]
                a7 += row[j + 7] * window[j + 7]
                j += _UNROLL
            value = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
            result[i] = <short>lrintf(min(max(value, -32768.0), 32767.0))
            at += self._down
        self._next = at - end
        if count:
            memcpy(&buf[0], &buf[count], keep * sizeof(float))
        return out


cdef object _convert(RateConverter converter, const sample_t[:] samples, float scale):
    """An array's samples through ``converter`` (int16 or float32, any stride)."""
    cdef Py_ssize_t count = samples.shape[0], i
    cdef float *window = &converter._buf[converter._taps - 1]
    for i in range(count):
        window[i] = samples[i] * scale
    return converter._filter(count)


cpdef RateConverter rate_converter(int rate, int out):
    """Streaming ``rate`` -> ``out`` Hz conversion; None when the rates are the same."""
    return RateConverter(rate, out) if rate != out else None


cdef class ToRate:
    """One stream's mono samples, at whatever rate each chunk comes (AAC's SBR or
    a new sequence header change it), to int16 at ``rate_out``.

    Samples are int16, or float32 in [-1, 1]; a :class:`RateConverter` made
    for the chunks' rate converts them, renewed when that rate changes (its
    history starts silent again).
    """

    def __init__(self, int rate_out):
        self.rate_out = rate_out
        self._source = 0
        self._convert = None

    def __call__(self, samples, int rate):
        """``samples`` at ``rate`` Hz as int16 at :attr:`rate_out`."""
        cdef const float[::1] view
        if samples.dtype.kind == "f":
            view = np.ascontiguousarray(samples, np.float32)
            return self.floats(&view[0] if len(view) else NULL, len(view), rate)
        self._renew(rate)
        if self._convert is not None:
            return self._convert(samples, 1.0)
        return samples.astype(np.int16, copy=False)

    cdef object floats(self, const float *samples, Py_ssize_t count, int rate):
        """``count`` float samples in [-1, 1] at ``samples``, read in place, at
        ``rate`` Hz as int16 at :attr:`rate_out` (a decoder's plane)."""
        self._renew(rate)
        if self._convert is not None:
            return self._convert.floats(samples, count, 32768.0)
        out = np.empty(count, np.int16)
        if not count:
            return out
        cdef short[::1] result = out
        cdef Py_ssize_t i
        for i in range(count):
            result[i] = <short>lrintf(min(max(samples[i] * 32768.0, -32768.0), 32767.0))
        return out

    cdef void _renew(self, int rate):
        if rate != self._source:
            self._source = rate
            self._convert = rate_converter(rate, self.rate_out)


cdef class G711Tables:
    """G.711's look-up tables (``dsp.G711`` fills them from FFmpeg's coder), applied.

    The tables are shared, not copied: ``encode`` has 65536 entries (indexed by
    a sample's 16 bits, unsigned), ``decode`` 256.
    """

    cdef const unsigned char[::1] _encode
    cdef const short[::1] _decode

    def __init__(self, const unsigned char[::1] encode not None,
                 const short[::1] decode not None):
        if encode.shape[0] != 65536 or decode.shape[0] != 256:
            raise ValueError("G.711 tables have 65536 and 256 entries")
        self._encode, self._decode = encode, decode

    def encode(self, const short[:] pcm not None):
        """int16 PCM to G.711 bytes, one byte per sample."""
        cdef Py_ssize_t count = pcm.shape[0], i
        out = PyBytes_FromStringAndSize(NULL, count)
        cdef unsigned char *code = <unsigned char *>PyBytes_AS_STRING(out)
        cdef const unsigned char *table = &self._encode[0]
        for i in range(count):
            code[i] = table[<unsigned short>pcm[i]]
        return out

    def decode(self, bytes payload not None):
        """G.711 bytes to int16 PCM, one sample per byte."""
        cdef Py_ssize_t count = PyBytes_GET_SIZE(payload), i
        cdef const unsigned char *code = <const unsigned char *>PyBytes_AS_STRING(payload)
        out = np.empty(count, np.int16)
        if not count:
            return out
        cdef short[::1] pcm = out
        cdef const short *table = &self._decode[0]
        for i in range(count):
            pcm[i] = table[code[i]]
        return out
