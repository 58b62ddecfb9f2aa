"""Pubsub channels: how frames travel between legs inside one gevent process.

Each uuid has a *video* and an *audio* channel (MISSION §3). The leg that
receives a stream publishes on them; whoever needs the stream (an RTP sender,
an FLV muxer, the mixer) subscribes. A stream is received once however many
consumers watch it.

Like mediamtx ``internal/stream`` and its ``reader.go``:

- :meth:`Channel.publish` never blocks and never yields: every subscriber has
  a bounded queue, and a subscriber whose queue is full loses the frame, which
  is counted and warned about at a limited rate. A slow consumer hurts only
  itself.
- A video channel keeps the current GOP (from the last keyframe on, bounded),
  so a late subscriber starts on a keyframe at once. When there is none to
  give it, the channel calls :attr:`Channel.on_keyframe_needed` so the
  publishing leg can ask its source for one (an RTCP PLI, RFC 4585 §6.3.1).

Channels use gevent primitives: publish and subscribe from greenlets.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gevent.event import Event

from wxmgw.logs import event
from wxmgw.media.frames import AudioFrame, VideoFrame

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=VideoFrame | AudioFrame)

#: Default subscriber queue length: about 4 s of audio, or 8 s of 30 fps video.
DEFAULT_MAXSIZE = 256
#: Bounds of the GOP cache; past either, the cache is dropped until the next keyframe.
GOP_CACHE_MAX_FRAMES = 300
GOP_CACHE_MAX_BYTES = 4 * 1024 * 1024
#: A subscription that drops frames warns at most once per this many seconds.
DROP_WARN_INTERVAL = 5.0


class Subscription(Generic[T]):
    """One consumer's bounded queue on a :class:`Channel`.

    A subscription has a single consumer greenlet: it calls :meth:`get` or
    iterates, or waits on ``ready`` (an Event it may share with its other
    subscriptions, set whenever one has something new) and calls :meth:`take`.
    ``delivered`` counts the frames it got, ``dropped`` the frames it lost
    because its queue was full.
    """

    __slots__ = (
        "_channel",
        "_closed",
        "_dropped_at_warn",
        "_last_warn",
        "_queue",
        "delivered",
        "dropped",
        "maxsize",
        "name",
        "ready",
    )

    def __init__(
        self, channel: Channel[T], maxsize: int, name: str, ready: Event | None = None
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.delivered = 0
        self.dropped = 0
        self._channel: Channel[T] = channel
        self._queue: deque[T] = deque()
        self.ready = ready or Event()
        self._closed = False
        self._last_warn = float("-inf")
        self._dropped_at_warn = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Frames queued and not yet taken."""
        return len(self._queue)

    def get(self, timeout: float | None = None) -> T | None:
        """Take the next frame, waiting cooperatively up to ``timeout`` seconds.

        Returns None on timeout, and at once when the subscription or its
        channel is closed (frames still queued then are discarded).
        """
        if not self._queue and not self._closed:
            self.ready.clear()
            self.ready.wait(timeout)
        return self.take()

    def take(self) -> T | None:
        """The next frame if one is queued, else None; never waits."""
        if not self._queue:
            return None
        self.delivered += 1
        return self._queue.popleft()

    def __iter__(self) -> Iterator[T]:
        """Yield frames until the subscription or its channel is closed."""
        while (item := self.get()) is not None:
            yield item

    def close(self) -> None:
        """Leave the channel; a consumer blocked in :meth:`get` wakes with None."""
        self._channel._unsubscribe(self)
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._queue.clear()
        self.ready.set()

    def _prime(self, items: list[T]) -> None:
        """Queue a cached GOP; it may exceed ``maxsize`` (it is bounded on its own)."""
        self._queue.extend(items)
        self.ready.set()

    def _offer(self, item: T) -> None:
        if len(self._queue) < self.maxsize:
            self._queue.append(item)
            self.ready.set()
            return
        self.dropped += 1
        self._channel.dropped += 1
        now = self._channel.clock()
        if now - self._last_warn >= self._channel.warn_interval:
            event(logger, "subscriber_too_slow", logging.WARNING, channel=self._channel.name,
                  subscriber=self.name, dropped=self.dropped - self._dropped_at_warn,
                  total=self.dropped)
            self._last_warn = now
            self._dropped_at_warn = self.dropped


class Channel(Generic[T]):
    """A stream of frames fanned out to any number of subscriptions.

    ``gop_cache=True`` (video channels) keeps the frames from the last
    keyframe on, bounded by ``GOP_CACHE_MAX_FRAMES`` and ``GOP_CACHE_MAX_BYTES``;
    past either bound the cache is dropped until the next keyframe.
    ``clock`` only times the rate-limited warnings.
    """

    def __init__(
        self,
        name: str,
        *,
        gop_cache: bool = False,
        warn_interval: float = DROP_WARN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.gop_cache = gop_cache
        self.warn_interval = warn_interval
        #: Called when a video subscriber starts and no keyframe is cached.
        self.on_keyframe_needed: Callable[[], None] | None = None
        self.published = 0
        #: Frames lost by subscribers whose queue was full, all subscribers so far.
        self.dropped = 0
        self.clock = clock
        # Replaced, never mutated, so publish iterates a stable snapshot.
        self._subs: tuple[Subscription[T], ...] = ()
        self._gop: list[T] = []
        self._gop_bytes = 0
        self._closed = False
        self._next_sub = 0

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cached_frames(self) -> int:
        """Frames of the current GOP a new subscriber would receive first."""
        return len(self._gop)

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscriber; never blocks. No-op once closed."""
        if self._closed:
            return
        self.published += 1
        if self.gop_cache:
            self._cache(item)
        for sub in self._subs:
            sub._offer(item)

    def subscribe(
        self, maxsize: int = DEFAULT_MAXSIZE, name: str = "", ready: Event | None = None
    ) -> Subscription[T]:
        """Add a consumer. On a video channel it receives the cached GOP first.

        ``ready`` is the Event the subscription sets when it has something new
        (one consumer of several channels gives them all the same); a fresh one
        if not given. Subscribing to a closed channel returns a closed subscription.
        """
        self._next_sub += 1
        sub: Subscription[T] = Subscription(self, maxsize, name or f"#{self._next_sub}", ready)
        if self._closed:
            sub._close()
            return sub
        self._subs = (*self._subs, sub)
        if self.gop_cache:
            if self._gop:
                sub._prime(self._gop)
            elif self.on_keyframe_needed is not None:
                self.on_keyframe_needed()
        return sub

    def close(self) -> None:
        """End the stream: every subscriber wakes and gets None from then on."""
        self._closed = True
        subs, self._subs = self._subs, ()
        self._gop = []
        for sub in subs:
            sub._close()

    def _unsubscribe(self, sub: Subscription[T]) -> None:
        self._subs = tuple(s for s in self._subs if s is not sub)

    def _cache(self, frame: T) -> None:
        if not isinstance(frame, VideoFrame):
            return
        if frame.keyframe:
            self._gop = [frame]
            self._gop_bytes = frame.size
        elif self._gop:
            self._gop.append(frame)
            self._gop_bytes += frame.size
            if len(self._gop) > GOP_CACHE_MAX_FRAMES or self._gop_bytes > GOP_CACHE_MAX_BYTES:
                self._gop = []


class MediaChannels:
    """The *video* and *audio* channels of one uuid (MISSION §3)."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.video: Channel[VideoFrame] = Channel(f"{uuid}/video", gop_cache=True)
        self.audio: Channel[AudioFrame] = Channel(f"{uuid}/audio")

    def close(self) -> None:
        self.video.close()
        self.audio.close()


class ChannelRegistry:
    """uuid -> its channels; the leg that receives a uuid's media opens and closes them."""

    def __init__(self) -> None:
        self._channels: dict[str, MediaChannels] = {}

    def open(self, uuid: str) -> MediaChannels:
        channels = self._channels.get(uuid)
        if channels is None:
            channels = self._channels[uuid] = MediaChannels(uuid)
        return channels

    def get(self, uuid: str) -> MediaChannels | None:
        return self._channels.get(uuid)

    def close(self, uuid: str) -> None:
        channels = self._channels.pop(uuid, None)
        if channels is not None:
            channels.close()

    def __len__(self) -> int:
        return len(self._channels)
