# cython: language_level=3, boundscheck=False, wraparound=False
"""FFmpeg's audio decoders called from C, through the libavcodec PyAV loaded.

PyAV costs more than FFmpeg's decoding on every AAC frame of a pull leg: a
``Packet``, a list, an ``AudioFrame`` and an object for each attribute read
(6 µs of its 13 a frame, before the conversion). :class:`Decoder` makes the
same calls (``avcodec_send_packet``, ``avcodec_receive_frame``) with no
object per frame but the samples it returns.

There is one FFmpeg in the process, PyAV's: the functions are looked up with
``dlsym`` in the very libavcodec and libavutil that ``import av`` mapped
(found in ``/proc/self/maps``), so this module needs no FFmpeg headers and
works with whichever FFmpeg PyAV was built with, from FFmpeg 5.1 on (its
``AVChannelLayout``; an older libavutil is refused at import). Without
headers, the only struct fields read or written are ones whose place
FFmpeg's ABI has kept for a decade: the leading fields of ``AVFrame``,
``AVPacket``, ``AVCodecParameters`` and ``AVOption``, declared below as
those prefixes. A codec context's rate and channel count are read at the
offsets its own ``AVOption`` table gives for ``ar`` and ``ch_layout``.

A decoded frame is checked against what its stream declared (format,
channels, rate, samples) before a sample is read (:class:`Dropped`
otherwise), and only planes FFmpeg allocated are read, within their
``linesize``.
"""

import re

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import numpy as np

from wxmgw.media.frames import NO_SAMPLES

from wxmgw.media._dsp cimport ToRate

cdef extern from "<dlfcn.h>" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    char *dlerror()
    int RTLD_NOW
    int RTLD_NOLOAD

# The prefixes of FFmpeg's structs this module touches (see the docstring).
cdef struct AVFrame:
    uint8_t *data[8]
    int linesize[8]
    uint8_t **extended_data
    int width
    int height
    int nb_samples
    int format

cdef struct AVPacket:
    void *buf
    int64_t pts
    int64_t dts
    uint8_t *data
    int size

cdef struct AVCodecParameters:
    int codec_type
    int codec_id
    uint32_t codec_tag
    uint8_t *extradata
    int extradata_size

cdef struct AVOption:
    const char *name
    const char *help
    int offset

cdef struct AVChannelLayout:
    int order
    int nb_channels
    uint64_t mask
    void *opaque

ctypedef void *(*find_decoder_by_name_f)(const char *) noexcept nogil
ctypedef void *(*alloc_context3_f)(const void *) noexcept nogil
ctypedef void (*free_context_f)(void **) noexcept nogil
ctypedef int (*open2_f)(void *, const void *, void **) noexcept nogil
ctypedef AVCodecParameters *(*parameters_alloc_f)() noexcept nogil
ctypedef void (*parameters_free_f)(AVCodecParameters **) noexcept nogil
ctypedef int (*parameters_from_context_f)(AVCodecParameters *, const void *) noexcept nogil
ctypedef int (*parameters_to_context_f)(void *, const AVCodecParameters *) noexcept nogil
ctypedef int (*send_packet_f)(void *, const AVPacket *) noexcept nogil
ctypedef int (*receive_frame_f)(void *, AVFrame *) noexcept nogil
ctypedef AVPacket *(*packet_alloc_f)() noexcept nogil
ctypedef void (*packet_free_f)(AVPacket **) noexcept nogil
ctypedef AVFrame *(*frame_alloc_f)() noexcept nogil
ctypedef void (*frame_free_f)(AVFrame **) noexcept nogil
ctypedef void (*frame_unref_f)(AVFrame *) noexcept nogil
ctypedef void *(*mallocz_f)(size_t) noexcept nogil
ctypedef int (*opt_set_int_f)(void *, const char *, int64_t, int) noexcept nogil
ctypedef int (*opt_set_chlayout_f)(void *, const char *, const AVChannelLayout *, int) noexcept nogil
ctypedef const AVOption *(*opt_find_f)(void *, const char *, const char *, int, int) noexcept nogil
ctypedef void (*channel_layout_default_f)(AVChannelLayout *, int) noexcept nogil
ctypedef int (*strerror_f)(int, char *, size_t) noexcept nogil
ctypedef const char *(*sample_fmt_name_f)(int) noexcept nogil

cdef struct Api:
    find_decoder_by_name_f find_decoder_by_name
    alloc_context3_f alloc_context3
    free_context_f free_context
    open2_f open2
    parameters_alloc_f parameters_alloc
    parameters_free_f parameters_free
    parameters_from_context_f parameters_from_context
    parameters_to_context_f parameters_to_context
    send_packet_f send_packet
    receive_frame_f receive_frame
    packet_alloc_f packet_alloc
    packet_free_f packet_free
    frame_alloc_f frame_alloc
    frame_free_f frame_free
    frame_unref_f frame_unref
    mallocz_f mallocz
    opt_set_int_f opt_set_int
    opt_set_chlayout_f opt_set_chlayout
    opt_find_f opt_find
    channel_layout_default_f channel_layout_default
    strerror_f strerror
    sample_fmt_name_f sample_fmt_name

cdef Api api

cdef enum:
    _EAGAIN = -11  # AVERROR(EAGAIN) on Linux
    _AVERROR_EOF = -0x20464F45  # FFERRTAG('E','O','F',' ')
    _PADDING = 64  # AV_INPUT_BUFFER_PADDING_SIZE
    _CHANNEL_LAYOUT_SINCE = 57  # libavutil's major with AVChannelLayout (FFmpeg 5.1)

#: FFmpeg's sample formats the gateway's decoders output, by name (enum AVSampleFormat).
SAMPLE_FORMATS = {"s16": 1, "flt": 3, "s16p": 6, "fltp": 8}
cdef int _FLT = SAMPLE_FORMATS["flt"], _S16P = SAMPLE_FORMATS["s16p"]
cdef int _FLTP = SAMPLE_FORMATS["fltp"]

# A wheel's own copy (libavcodec-5e6b81c2.so.62.28.102) or a system's (libavcodec.so.59).
_LIBRARY = re.compile(r"(/\S*/lib(avcodec|avutil)(?:-[^/\s]*)?\.so[^/\s]*)$")


def ffmpeg_libraries(maps) -> dict:
    """The paths of libavcodec and libavutil in the lines of a ``/proc/<pid>/maps``, by name."""
    found = {}
    for line in maps:
        match = _LIBRARY.search(line.rstrip())
        if match:
            found.setdefault(match.group(2), match.group(1))
    return found


cdef void *_symbol(void *lib, str name) except NULL:
    cdef void *address = dlsym(lib, name.encode())
    if address == NULL:
        raise ImportError(f"PyAV's FFmpeg has no {name}")
    return address


ctypedef unsigned (*version_f)() noexcept nogil


cdef void _load() except *:
    import av  # noqa: F401  (maps PyAV's FFmpeg)

    with open("/proc/self/maps") as maps:
        libs = ffmpeg_libraries(maps)
    cdef void *handles[2]
    for i, name in enumerate(("avcodec", "avutil")):
        if name not in libs:
            raise ImportError(f"PyAV's lib{name} is not mapped in this process")
        handles[i] = dlopen(libs[name].encode(), RTLD_NOW | RTLD_NOLOAD)
        if handles[i] == NULL:
            raise ImportError(f"cannot reach {libs[name]}: {dlerror().decode()}")
    cdef void *codec = handles[0]
    cdef void *util = handles[1]
    cdef unsigned major = (<version_f>_symbol(util, "avutil_version"))() >> 16
    if major < _CHANNEL_LAYOUT_SINCE:
        raise ImportError(f"PyAV's libavutil is {major}: AVChannelLayout needs "
                          f"{_CHANNEL_LAYOUT_SINCE} (FFmpeg 5.1)")
    api.find_decoder_by_name = <find_decoder_by_name_f>_symbol(codec, "avcodec_find_decoder_by_name")
    api.alloc_context3 = <alloc_context3_f>_symbol(codec, "avcodec_alloc_context3")
    api.free_context = <free_context_f>_symbol(codec, "avcodec_free_context")
    api.open2 = <open2_f>_symbol(codec, "avcodec_open2")
    api.parameters_alloc = <parameters_alloc_f>_symbol(codec, "avcodec_parameters_alloc")
    api.parameters_free = <parameters_free_f>_symbol(codec, "avcodec_parameters_free")
    api.parameters_from_context = <parameters_from_context_f>_symbol(
        codec, "avcodec_parameters_from_context")
    api.parameters_to_context = <parameters_to_context_f>_symbol(
        codec, "avcodec_parameters_to_context")
    api.send_packet = <send_packet_f>_symbol(codec, "avcodec_send_packet")
    api.receive_frame = <receive_frame_f>_symbol(codec, "avcodec_receive_frame")
    api.packet_alloc = <packet_alloc_f>_symbol(codec, "av_packet_alloc")
    api.packet_free = <packet_free_f>_symbol(codec, "av_packet_free")
    api.frame_alloc = <frame_alloc_f>_symbol(util, "av_frame_alloc")
    api.frame_free = <frame_free_f>_symbol(util, "av_frame_free")
    api.frame_unref = <frame_unref_f>_symbol(util, "av_frame_unref")
    api.mallocz = <mallocz_f>_symbol(util, "av_mallocz")
    api.opt_set_int = <opt_set_int_f>_symbol(util, "av_opt_set_int")
    api.opt_set_chlayout = <opt_set_chlayout_f>_symbol(util, "av_opt_set_chlayout")
    api.opt_find = <opt_find_f>_symbol(util, "av_opt_find")
    api.channel_layout_default = <channel_layout_default_f>_symbol(
        util, "av_channel_layout_default")
    api.strerror = <strerror_f>_symbol(util, "av_strerror")
    api.sample_fmt_name = <sample_fmt_name_f>_symbol(util, "av_get_sample_fmt_name")


_load()


class Undecodable(ValueError):
    """FFmpeg refused a payload (or a decoder could not be opened); the message is its error."""


class Dropped(ValueError):
    """A decoded frame is not what its stream declared; none of its samples was read."""


cdef str _error(int code):
    cdef char text[128]
    if api.strerror(code, text, sizeof(text)) < 0:
        return f"error {code}"
    return text.decode("utf-8", "replace")


cdef int _offset(void *ctx, const char *name) except -1:
    cdef const AVOption *option = api.opt_find(ctx, name, NULL, 0, 0)
    if option == NULL:
        raise ImportError(f"PyAV's FFmpeg has no codec option {name.decode()}")
    return option.offset


cdef class Decoder:
    """One stream's FFmpeg audio decoder, ``ffmpeg_name`` (``aac``, ``g722``, ``libopus``…).

    ``extradata`` is the codec's configuration (AAC's AudioSpecificConfig),
    ``rate`` and ``channels`` what the stream says. A frame is kept only if
    its sample format is ``sample_format`` (a key of ``SAMPLE_FORMATS``), its
    channel count one of ``channels_allowed`` (1 or 2), its rate one of
    ``rates`` and its sample count one of those :meth:`decode` is given.
    """

    cdef void *_ctx
    cdef AVPacket *_packet
    cdef AVFrame *_frame
    cdef int _format, _rate_at, _channels_at
    cdef tuple _channels_allowed, _rates
    cdef str name

    def __cinit__(self):
        self._ctx = NULL
        self._packet = NULL
        self._frame = NULL

    def __init__(self, str ffmpeg_name, bytes extradata, int rate, int channels,
                 str sample_format, tuple channels_allowed, tuple rates):
        self.name = ffmpeg_name
        self._format = SAMPLE_FORMATS[sample_format]
        self._channels_allowed = channels_allowed
        self._rates = rates
        cdef const void *codec = api.find_decoder_by_name(ffmpeg_name.encode())
        if codec == NULL:
            raise Undecodable(f"FFmpeg has no {ffmpeg_name} decoder")
        self._ctx = api.alloc_context3(codec)
        self._packet = api.packet_alloc()
        self._frame = api.frame_alloc()
        if self._ctx == NULL or self._packet == NULL or self._frame == NULL:
            raise MemoryError()
        self._rate_at = _offset(self._ctx, b"ar")
        self._channels_at = _offset(self._ctx, b"ch_layout") + sizeof(int)  # .nb_channels
        if extradata:
            self._set_extradata(extradata)
        cdef AVChannelLayout layout
        api.channel_layout_default(&layout, channels)
        cdef int code = api.opt_set_int(self._ctx, b"ar", rate, 0)
        if code >= 0:
            code = api.opt_set_chlayout(self._ctx, b"ch_layout", &layout, 0)
        if code >= 0:
            code = api.open2(self._ctx, codec, NULL)
        if code < 0:
            raise Undecodable(f"cannot open {ffmpeg_name} decoder: {_error(code)}")

    cdef _set_extradata(self, bytes extradata):
        """Through ``AVCodecParameters``, whose ``extradata`` has a fixed place."""
        cdef AVCodecParameters *par = api.parameters_alloc()
        if par == NULL:
            raise MemoryError()
        cdef Py_ssize_t size = PyBytes_GET_SIZE(extradata)
        cdef int code = api.parameters_from_context(par, self._ctx)
        if code >= 0:
            par.extradata = <uint8_t *>api.mallocz(size + _PADDING)
            if par.extradata == NULL:
                code = -12  # AVERROR(ENOMEM)
            else:
                memcpy(par.extradata, PyBytes_AS_STRING(extradata), size)
                par.extradata_size = <int>size
                code = api.parameters_to_context(self._ctx, par)
        api.parameters_free(&par)  # frees the extradata too
        if code < 0:
            raise Undecodable(f"cannot configure {self.name} decoder: {_error(code)}")

    def __dealloc__(self):
        if self._frame != NULL:
            api.frame_free(&self._frame)
        if self._packet != NULL:
            api.packet_free(&self._packet)
        if self._ctx != NULL:
            api.free_context(&self._ctx)

    def decode(self, bytes payload, tuple samples_allowed, ToRate to_rate not None):
        """The samples ``payload`` decodes to, through ``to_rate`` (a
        :class:`~wxmgw.media._dsp.ToRate`: int16 at its rate), none for a
        payload that completes no frame.

        Each frame's samples are one channel, as decoded (float32 in [-1, 1]
        or int16): the frame's plane when it has one, the two channels
        averaged when two. Raises :class:`Undecodable` when FFmpeg refuses the
        payload, :class:`Dropped` when a frame is not as declared (the decoder
        should then be opened anew: FFmpeg's AAC decoder keeps a
        program_config_element's channels for the frames that follow).
        """
        cdef AVPacket *packet = self._packet
        cdef int code
        packet.data = <uint8_t *>PyBytes_AS_STRING(payload)
        packet.size = <int>PyBytes_GET_SIZE(payload)
        with nogil:
            code = api.send_packet(self._ctx, packet)  # copies a packet without a buffer
        packet.data = NULL
        packet.size = 0
        if code < 0:
            raise Undecodable(_error(code))
        out = []
        while True:
            with nogil:
                code = api.receive_frame(self._ctx, self._frame)
            if code == _EAGAIN or code == _AVERROR_EOF:
                break
            if code < 0:
                raise Undecodable(_error(code))
            try:
                out.append(self._take(samples_allowed, to_rate))
            finally:
                api.frame_unref(self._frame)
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else NO_SAMPLES

    cdef object _take(self, tuple samples_allowed, ToRate to_rate):
        cdef AVFrame *frame = self._frame
        cdef uint8_t *ctx = <uint8_t *>self._ctx
        cdef int rate = (<int *>(ctx + self._rate_at))[0]
        cdef int channels = (<int *>(ctx + self._channels_at))[0]
        cdef int n = frame.nb_samples, fmt = frame.format
        cdef bint planar = fmt == _FLTP or fmt == _S16P
        cdef int width = 4 if fmt == _FLTP or fmt == _FLT else 2
        cdef int planes = channels if planar else 1
        cdef int i
        cdef bint complete = fmt == self._format and 0 < planes <= 8
        for i in range(planes if complete else 0):
            complete = frame.data[i] != NULL
            if not complete:
                break
        if (not complete or channels not in self._channels_allowed or rate not in self._rates
                or n not in samples_allowed
                or <int64_t>n * width * (1 if planar else channels) > frame.linesize[0]):
            layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")
            name = api.sample_fmt_name(fmt)
            raise Dropped(f"{self.name} frame dropped: {layout}, "
                          f"{name.decode() if name != NULL else fmt}, {rate} Hz, {n} samples")
        return _mono(frame, n, channels, planar, width, to_rate, rate)


cdef object _mono(AVFrame *frame, int n, int channels, bint planar, int width, ToRate to_rate,
                  int rate):
    """One channel of a checked frame through ``to_rate``: plane 0 read in place
    (float) or copied (int16), or the two channels averaged."""
    cdef float[::1] f
    cdef short[::1] s
    cdef float *fa
    cdef float *fb
    cdef short *sa
    cdef short *sb
    cdef int step = 1 if planar else 2
    cdef int i
    if width == 4:
        fa = <float *>frame.data[0]
        if channels == 1:
            return to_rate.floats(fa, n, rate)
        out = np.empty(n, np.float32)
        f = out
        fb = <float *>frame.data[1] if planar else fa + 1
        for i in range(n):
            f[i] = 0.5 * (fa[i * step] + fb[i * step])
        return to_rate.floats(&f[0], n, rate)
    out = np.empty(n, np.int16)
    s = out
    sa = <short *>frame.data[0]
    if channels == 1:
        memcpy(&s[0], sa, <size_t>n * 2)
        return to_rate(out, rate)
    sb = <short *>frame.data[1] if planar else sa + 1
    for i in range(n):
        s[i] = <short>((<int>sa[i * step] + <int>sb[i * step]) >> 1)
    return to_rate(out, rate)
