"""The two kinds of frames that travel on pubsub channels.

Every frame carries ``ts``: its capture time in seconds on the gateway's
monotonic clock (``time.monotonic()``), as well as the leg that publishes it
can estimate it: from RTCP sender reports for RTP sources, from the FLV
timeline anchored at the first packet's arrival for RTMP sources, from
arrival time otherwise. Frames of one source that were simultaneous at the
source carry the same ``ts``; that is what the FLV muxer and the mixer sync on.

``arrived`` is when the frame's last packet reached the gateway
(``time.perf_counter()``), 0 for frames made here (silence, a mix): what the
latency a leg adds is measured from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Internal audio format: signed 16-bit mono PCM at 48 kHz, 20 ms frames.
AUDIO_RATE = 48000
AUDIO_FRAME_SAMPLES = 960
AUDIO_FRAME_SECONDS = AUDIO_FRAME_SAMPLES / AUDIO_RATE

Pcm = npt.NDArray[np.int16]
#: No samples: what a decoder or a framer hands out when it has none (read-only).
NO_SAMPLES: Pcm = np.zeros(0, np.int16)
NO_SAMPLES.flags.writeable = False


@dataclass(slots=True)
class VideoFrame:
    """One H.264 access unit: NAL units without start codes or length prefixes."""

    nalus: list[bytes]
    ts: float
    keyframe: bool
    arrived: float = 0.0

    @property
    def size(self) -> int:
        return sum(map(len, self.nalus))


@dataclass(slots=True)
class AudioFrame:
    """``AUDIO_FRAME_SAMPLES`` samples of mono 48 kHz int16 PCM."""

    pcm: Pcm
    ts: float
    arrived: float = 0.0
