"""The audio mixer: N-1 mixes of any set of sources, 20 ms at a time.

A room with no MAS gives each mini-program the mix of the others (MISSION §4,
§6). Written by hand because FFmpeg's ``amix`` makes one mix of all its inputs
and would need one filter graph per listener (O(N²) work) to leave each
listener's own voice out; here one tick is a few vectorized numpy passes:

1. pop at most one frame per source (late frames are dropped; a source with
   nothing to give contributes silence and never stalls the mix);
2. stack the sources into one ``(N, 960)`` int32 array and sum it once;
3. each listener's mix is the total minus the rows it excludes (its own);
4. a soft limiter brings every mix back into int16 without wrapping or
   hard clipping.

The limiter is a gain-smoothing limiter followed by a soft knee, both per
listener and without look-ahead (a look-ahead would add latency to every
mix). The gain is chosen once per 20 ms frame so that the frame's peak lands
at the knee (-3 dBFS): it falls within the first millisecond of a frame
(attack) and recovers with a 200 ms time constant (release), ramped over the
frame so it never steps. A gain, unlike a static tanh curve, does not bend
the waveform: loud double-talk comes out quieter, not distorted. The only
overshoot left is that first millisecond of attack; it goes through a tanh
knee (identity below -3 dBFS, approaching full scale asymptotically above),
so even then the signal is bent smoothly rather than clipped. Below the knee
the limiter is exactly transparent.

The mixer is pure: no I/O, no gevent. Its caller ticks it every 20 ms with
the current time of the gateway's monotonic clock (the clock of
:attr:`AudioFrame.ts`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_FRAME_SECONDS, AUDIO_RATE, AudioFrame

#: Where the limiter starts acting, in dBFS.
LIMITER_KNEE_DBFS = -3.0
_CEILING = 32767.0
_KNEE = _CEILING * 10 ** (LIMITER_KNEE_DBFS / 20)
_ATTACK_SAMPLES = AUDIO_RATE // 1000
_SAMPLE = np.arange(1, AUDIO_FRAME_SAMPLES + 1, dtype=np.float32)
_ATTACK_RAMP = np.minimum(_SAMPLE / _ATTACK_SAMPLES, np.float32(1.0))
_RELEASE_RAMP = _SAMPLE / AUDIO_FRAME_SAMPLES

_Gains = npt.NDArray[np.float32]


@dataclass(slots=True)
class SourceStats:
    """Per-source counters, in frames."""

    mixed: int = 0
    #: dropped because their ``ts`` was too old for the tick that popped them
    late: int = 0
    #: dropped (oldest first) because the source's queue was full
    dropped: int = 0
    #: ticks in which the source had nothing to give and contributed silence
    underruns: int = 0


@dataclass(slots=True)
class _Source:
    queue: deque[AudioFrame]
    stats: SourceStats = field(default_factory=SourceStats)
    #: ``ts`` of the frame mixed in the last tick (None: it gave silence)
    mixed_ts: float | None = None


class Mixer:
    """N-1 audio mixer of 20 ms, 48 kHz mono int16 frames.

    ``queue_frames`` bounds each source's queue (5 frames = 100 ms); a frame
    pushed on a full queue drops the oldest. A frame is late, and dropped, when
    its ``ts`` is older than the start of the tick's window by more than
    ``late_tolerance`` seconds. ``release`` is the limiter's release time
    constant in seconds.
    """

    def __init__(
        self,
        *,
        queue_frames: int = 5,
        late_tolerance: float = 0.2,
        release: float = 0.2,
    ) -> None:
        if queue_frames < 1:
            raise ValueError(f"queue_frames must be at least 1, not {queue_frames}")
        self.queue_frames = queue_frames
        self.late_tolerance = late_tolerance
        self._release = np.float32(1.0 - math.exp(-AUDIO_FRAME_SECONDS / release))
        self._sources: dict[str, _Source] = {}
        self._excludes: dict[str, frozenset[str]] = {}
        # The layout below is rebuilt by _layout() whenever sources or listeners change.
        self._dirty = True
        self._rows = np.zeros((1, AUDIO_FRAME_SAMPLES), np.int32)
        self._listener_keys: list[str] = []
        self._exclude_rows = np.zeros((0, 1), np.intp)
        self._gains: _Gains = np.ones(0, np.float32)

    def add_source(self, key: str) -> None:
        """Mix ``key`` from the next tick on; a no-op if it is already mixed."""
        if key not in self._sources:
            self._sources[key] = _Source(deque(maxlen=self.queue_frames))
            self._dirty = True

    def remove_source(self, key: str) -> None:
        """Stop mixing ``key`` and forget its queue and stats; a no-op if unknown."""
        if self._sources.pop(key, None) is not None:
            self._dirty = True

    def add_listener(self, key: str, exclude: Iterable[str] | None = None) -> None:
        """Give ``key`` a mix of every source but those in ``exclude``.

        ``exclude`` defaults to ``{key}``: the listener does not hear itself.
        Excluded keys need not be sources (yet). Adding an existing listener
        replaces its exclusions.
        """
        self._excludes[key] = frozenset((key,) if exclude is None else exclude)
        self._dirty = True

    def remove_listener(self, key: str) -> None:
        """A no-op if ``key`` is not a listener."""
        if self._excludes.pop(key, None) is not None:
            self._dirty = True

    def push(self, key: str, frame: AudioFrame) -> bool:
        """Queue a frame of source ``key``; False if ``key`` is not a source."""
        if frame.pcm.shape != (AUDIO_FRAME_SAMPLES,) or frame.pcm.dtype != np.int16:
            raise ValueError(
                f"expected {AUDIO_FRAME_SAMPLES} int16 samples, got {frame.pcm.dtype}"
                f"{list(frame.pcm.shape)}"
            )
        source = self._sources.get(key)
        if source is None:
            return False
        if len(source.queue) == self.queue_frames:
            source.stats.dropped += 1
        source.queue.append(frame)
        return True

    def mixed_ts(self, key: str) -> float | None:
        """``ts`` of the frame of ``key`` in the last tick's mix; None if it gave silence."""
        source = self._sources.get(key)
        return source.mixed_ts if source is not None else None

    def stats(self) -> dict[str, SourceStats]:
        """The live counters of every source."""
        return {key: source.stats for key, source in self._sources.items()}

    def tick(self, now: float) -> dict[str, AudioFrame]:
        """Mix the window ``[now - 20 ms, now)`` for every listener.

        Returns one frame per listener, stamped with the window's start.
        """
        if self._dirty:
            self._layout()
        start = now - AUDIO_FRAME_SECONDS
        oldest = start - self.late_tolerance
        rows = self._rows
        for i, source in enumerate(self._sources.values()):
            frame = self._pop(source, oldest)
            if frame is None:
                source.stats.underruns += 1
                source.mixed_ts = None
                rows[i] = 0
            else:
                source.stats.mixed += 1
                source.mixed_ts = frame.ts
                rows[i] = frame.pcm
        if not self._listener_keys:
            return {}
        # int32 holds the sum of up to 65536 full-scale sources.
        total = rows.sum(axis=0, dtype=np.int32)
        mixes = total - rows[self._exclude_rows].sum(axis=1, dtype=np.int32)
        pcm = self._limit(mixes)
        return {key: AudioFrame(pcm[i], start) for i, key in enumerate(self._listener_keys)}

    def _pop(self, source: _Source, oldest: float) -> AudioFrame | None:
        queue = source.queue
        while queue:
            frame = queue.popleft()
            if frame.ts >= oldest:
                return frame
            source.stats.late += 1
        return None

    def _layout(self) -> None:
        """Index sources as rows and each listener's exclusions as row numbers.

        Row N is always silent: it pads the exclusion lists to one length.
        """
        gains = dict(zip(self._listener_keys, self._gains.tolist(), strict=True))
        row_of = {key: i for i, key in enumerate(self._sources)}
        silent = len(row_of)
        self._rows = np.zeros((silent + 1, AUDIO_FRAME_SAMPLES), np.int32)
        self._listener_keys = list(self._excludes)
        excluded = [
            [row_of[k] for k in self._excludes[key] if k in row_of] for key in self._listener_keys
        ]
        width = max((len(e) for e in excluded), default=0) or 1
        self._exclude_rows = np.array(
            [e + [silent] * (width - len(e)) for e in excluded], np.intp
        ).reshape(len(excluded), width)
        self._gains = np.array([gains.get(key, 1.0) for key in self._listener_keys], np.float32)
        self._dirty = False

    def _limit(self, mixes: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
        """Soft-limit each row of ``mixes`` into int16 (see the module docstring)."""
        x = mixes.astype(np.float32)
        peaks = np.abs(x).max(axis=1)
        targets = np.minimum(np.float32(1.0), np.float32(_KNEE) / np.maximum(peaks, 1.0))
        old = self._gains
        new = np.minimum(targets, old + (1 - old) * self._release)
        ramps = np.where((new < old)[:, None], _ATTACK_RAMP, _RELEASE_RAMP)
        y = x * (old[:, None] + (new - old)[:, None] * ramps)
        self._gains = new
        level = np.abs(y)
        over = level > _KNEE
        if over.any():
            bent = _KNEE + (_CEILING - _KNEE) * np.tanh((level - _KNEE) / (_CEILING - _KNEE))
            y = np.where(over, np.copysign(bent, y), y)
        pcm: npt.NDArray[np.int16] = np.rint(y).astype(np.int16)
        return pcm
