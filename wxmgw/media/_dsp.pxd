# The compiled classes of _dsp.pyx that _ffmpeg.pyx calls from C: a decoded
# plane goes to the converter as a pointer, with no array made for it.

cdef class RateConverter:
    cdef readonly int rate_in, rate_out
    cdef int _up, _down, _taps
    cdef const float[:, ::1] _bank
    # The last ``taps - 1`` input samples, then the call's input: one window.
    cdef float[::1] _buf
    # The next output's instant, at ``up`` times the input rate, from the first
    # sample of the call's input.
    cdef long long _next

    cdef object floats(self, const float *samples, Py_ssize_t count, float scale)
    cdef object _filter(self, Py_ssize_t count)


cdef class ToRate:
    cdef readonly int rate_out
    cdef int _source
    cdef RateConverter _convert

    cdef object floats(self, const float *samples, Py_ssize_t count, int rate)
    cdef void _renew(self, int rate)
