# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""An RTMP play session's audio and video messages to frames, compiled: the pull's per-message loop.

Every message a pull leg reads, ~60 a second, goes through here between the
chunk reader and the leg's senders: its FLV tag body (FLV spec E.4.2, E.4.3,
read by :mod:`wxmgw.rtmp.flv`) is the AVC sequence header (avcC) or NAL
units, the AAC AudioSpecificConfig or a raw AAC frame; AAC is decoded by
FFmpeg (:class:`~wxmgw.media.transcode.AudioDecoder`). In Python this loop
was a dozen calls a message that did little each, and the interpreter run
on cold caches cost more than the work; typed, it is C between the calls
that do the work (parsing a tag, splitting NAL units, decoding, framing,
the owner's callbacks).

Frames are stamped on the gateway's monotonic clock: the FLV timeline kept
at live by a :class:`~wxmgw.media.clock.LiveTimeline`, and audio from a
sample count rather than from the 1 ms FLV timestamps
(:class:`~wxmgw.media.clock.AudioFramer`). What a session's owner (an
:class:`~wxmgw.media.rtmp_reader.RtmpReader`) gets, and when, is said in
``flvframes.pyi``'s ``FrameOwner``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from time import perf_counter

from wxmgw.codecs.h264 import NAL_IDR, NAL_PPS, NAL_SPS, split_avcc
from wxmgw.errors import MediaError, ParseError
from wxmgw.media.clock import AudioFramer, ClockRules, LiveTimeline
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, VideoFrame
from wxmgw.media.transcode import AudioDecoder
from wxmgw.rtmp.chunk import AUDIO, VIDEO
from wxmgw.rtmp.flv import (
    END_OF_SEQUENCE,
    SEQUENCE_HEADER,
    ConfigRefused,
    audio_codec,
    avc_config,
    read_aac,
    read_avc,
    video_codec,
)

#: An audio timestamp later than the sample count by more than this is a gap.
AUDIO_GAP = 0.2
#: Media arriving this much later than its FLV timeline says (the timeline
#: jumped back, the server stalled) re-anchors the timeline at its arrival.
MAX_LAG = 0.5

cdef int _AUDIO = AUDIO, _VIDEO = VIDEO
cdef int _SEQUENCE_HEADER = SEQUENCE_HEADER, _END_OF_SEQUENCE = END_OF_SEQUENCE
cdef int _IDR = NAL_IDR, _SPS = NAL_SPS, _PPS = NAL_PPS

# What each first byte of a tag announces (flv.video_codec, flv.audio_codec),
# looked up once for all 256: the loop only indexes.
cdef list _VIDEO_CODECS = [video_codec(first) for first in range(256)]
cdef list _AUDIO_CODECS = [audio_codec(first) for first in range(256)]


cdef class FlvToFrames:
    """One RTMP session's tag bodies to frames: timestamps, avcC, AAC decoding.

    :meth:`video` and :meth:`audio` convert one tag body each;
    :meth:`deliver` runs a batch of received messages through them and hands
    the frames to the session's owner. A refused sequence header
    (:class:`~wxmgw.rtmp.flv.ConfigRefused`) leaves its track without a
    config: its frames are skipped until a valid header comes. Audio behind
    live by more than ``max_backlog`` is dropped (:attr:`audio_dropped`,
    seconds).

    Each keyframe handed out starts with the SPS and PPS (from the sequence
    header when the stream does not repeat them in-band), so any consumer
    can start on it.
    """

    cdef readonly object timeline
    cdef object _decoder, _framer, _clock
    cdef list _parameter_sets  # the avcC's SPS and PPS, None before a valid one
    cdef int _length_size
    cdef bint _video_refused, _audio_refused, _dropping
    cdef int _rate

    def __init__(self, int audio_rate, double max_backlog):
        self.timeline = LiveTimeline(MAX_LAG, tolerance=max_backlog)
        self._rate = audio_rate
        self._framer = AudioFramer(audio_rate * AUDIO_FRAME_SAMPLES // AUDIO_RATE, audio_rate,
                                   ClockRules(gap=AUDIO_GAP, backlog=max_backlog))
        self._clock = self._framer.clock

    @property
    def audio_dropped(self):
        return self._clock.backlog_dropped / self._rate

    def deliver(self, owner, list messages, double arrival):
        """Convert the audio and video messages of ``messages``, received at
        ``arrival``, and hand their frames to ``owner``; return the others
        (control, commands, data), in order, for the session to handle."""
        cdef list others = []
        cdef object stats = owner.stats
        cdef object on_video = owner.on_video, on_audio = owner.on_audio
        cdef object latency = owner.latency, last_media = owner.last_media
        cdef object video_window = latency["video"], audio_window = latency["audio"]
        cdef int kind
        cdef long long dropped
        cdef bytes payload
        cdef double read, done
        for message in messages:
            kind = message.type_id
            if kind != _AUDIO and kind != _VIDEO:
                others.append(message)
                continue
            payload = message.payload
            if not PyBytes_GET_SIZE(payload):
                continue
            stats.packets += 1
            stats.bytes += PyBytes_GET_SIZE(payload)
            read = perf_counter()
            if kind == _VIDEO:
                try:
                    self._video_message(owner, stats, on_video, message.timestamp, payload,
                                        arrival)
                except (ParseError, MediaError) as e:
                    owner.skipped("video", e)
            else:
                dropped = self._clock.backlog_dropped
                try:
                    self._audio_message(owner, stats, on_audio, message.timestamp, payload,
                                        arrival)
                except (ParseError, MediaError) as e:
                    owner.skipped("audio", e)
                if self._clock.backlog_dropped != dropped:
                    self._dropping = True
                elif self._dropping:
                    self._dropping = False
                    owner.caught_up(self)
            done = perf_counter()
            if kind == _VIDEO:
                video_window.add(done - read)
                last_media["video"] = done
            else:
                audio_window.add(done - read)
                last_media["audio"] = done
        return others

    cdef _video_message(self, owner, stats, on_video, long long dts_ms, bytes payload,
                        double arrival):
        codec = _VIDEO_CODECS[<unsigned char>PyBytes_AS_STRING(payload)[0]]
        if codec != "h264":
            if codec is not None:
                owner.unsupported("video", codec)
            return
        frame = self.video(dts_ms, payload, arrival)
        if frame is not None:
            stats.frames += 1
            on_video(frame)

    cdef _audio_message(self, owner, stats, on_audio, long long ms, bytes payload,
                        double arrival):
        codec = _AUDIO_CODECS[<unsigned char>PyBytes_AS_STRING(payload)[0]]
        if codec != "aac":
            owner.unsupported("audio", codec)
            return
        for frame in self.audio(ms, payload, arrival):
            stats.frames += 1
            on_audio(frame)

    cpdef object video(self, long long dts_ms, bytes body, double arrival):
        """An AVC tag body (E.4.3.1 AVCVIDEOPACKET): a frame, or None for a header or an end."""
        cdef int packet_type
        cdef bytes data
        packet_type, data, _, composition_time = read_avc(body)
        if packet_type == _SEQUENCE_HEADER:
            self._parameter_sets = None
            self._video_refused = True
            avc = avc_config(data)
            self._parameter_sets = [*avc.sps, *avc.pps]
            self._length_size = avc.length_size
            self._video_refused = False
            return None
        if packet_type == _END_OF_SEQUENCE:
            return None
        if self._parameter_sets is None:
            if self._video_refused:
                return None
            raise ParseError("H.264 frame before its sequence header")
        cdef list nalus = split_avcc(data, self._length_size)
        cdef bint idr = False, sps = False, pps = False
        cdef int nal
        for nalu in nalus:
            nal = PyBytes_AS_STRING(nalu)[0] & 0x1F  # codecs.h264.nal_type; never empty
            idr |= nal == _IDR
            sps |= nal == _SPS
            pps |= nal == _PPS
        if idr and not (sps and pps):
            nalus = self._parameter_sets + nalus
        cdef double ts = self.timeline.stamp(dts_ms, arrival) + composition_time / 1000.0
        return VideoFrame(nalus, ts, idr) if nalus else None

    cpdef list audio(self, long long ms, bytes body, double arrival):
        """An AAC tag body (E.4.2.1 AACAUDIODATA): the 20 ms frames it completes."""
        packet_type, data = read_aac(body)
        if packet_type == _SEQUENCE_HEADER:
            self._decoder = None
            self._audio_refused = True
            try:
                self._decoder = AudioDecoder("AAC", extradata=data, out_rate=self._rate)
            except (ParseError, MediaError) as e:
                raise ConfigRefused(f"AudioSpecificConfig refused: {e}") from e
            self._audio_refused = False
            return []
        if self._decoder is None:
            if self._audio_refused:
                return []
            raise ParseError("AAC frame before its AudioSpecificConfig")
        cdef double ts = self.timeline.stamp(ms, arrival)
        return self._framer.push(self._decoder.decode(data), ts)
