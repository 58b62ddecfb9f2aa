"""Blocking FFmpeg calls off the gevent hub: worker threads and the way back.

PyAV releases the GIL inside ``av_read_frame``, ``av_write_frame`` and codec
calls, so each RTMP reader or writer runs its whole session loop in one OS
thread of a gevent :class:`~gevent.threadpool.ThreadPool` (:func:`worker_pool`;
the process is monkey-patched, so ``threading.Thread`` would be a greenlet).
Worker code touches no gevent object except through :class:`HubInbox` (whose
``watcher.send()`` is the one gevent call that is safe from another thread)
and blocks only on real OS locks (:class:`_Wakeup`). Nothing is logged from a
worker thread: what the worker has to say reaches the hub as an event, and is
logged there.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import gevent
import gevent.event
from gevent import monkey
from gevent.threadpool import ThreadPool

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]

#: Threads of the shared pool: each running reader or writer holds one.
MAX_WORKERS: Final = 512
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 8.0

_allocate_os_lock = monkey.get_original("_thread", "allocate_lock")
_pool: ThreadPool | None = None


def worker_pool() -> ThreadPool:
    """The process's pool of native threads for blocking FFmpeg calls."""
    global _pool
    if _pool is None:
        _pool = ThreadPool(MAX_WORKERS)
    return _pool


class HubInbox:
    """Runs calls posted from worker threads in one greenlet on the hub, in order.

    ``post()`` may be called from any thread: it appends to a deque and sends
    a loop ``async`` watcher, the only gevent operation that is safe off the
    hub's thread. Many posts made before the hub gets round to it cost one
    wake-up. The calls run in a greenlet of their own, so they may block
    cooperatively; an exception in one is logged and does not stop the others.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: deque[tuple[Callable[..., object], tuple[object, ...]]] = deque()
        self._ready = gevent.event.Event()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._ready.set)
        self._greenlet = gevent.spawn(self._run)

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Call ``fn(*args)`` on the hub soon; from any thread."""
        self._calls.append((fn, args))
        self._watcher.send()

    def _run(self) -> None:
        calls = self._calls
        while True:
            self._ready.wait()
            self._ready.clear()
            while calls:
                fn, args = calls.popleft()
                try:
                    fn(*args)
                except Exception:
                    logger.exception("%s: callback %r failed", self.name, fn)

    def close(self) -> None:
        """Stop delivering (on the hub); calls still queued are dropped."""
        self._watcher.stop()
        self._watcher.close()
        self._greenlet.kill(block=False)
        self._calls.clear()


class _Wakeup:
    """A binary semaphore on a real OS lock: ``set()`` from anywhere, ``wait()`` in a worker.

    ``wait()`` blocks only the calling OS thread, never a gevent hub.
    """

    def __init__(self) -> None:
        self._lock = _allocate_os_lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (and unset it) or until ``timeout``; True if it was set."""
        return bool(self._lock.acquire(timeout=-1 if timeout is None else timeout))


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset()`` after a success."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass(slots=True)
class RtmpStats:
    """Counters of one reader or writer (written by its worker, read anywhere).

    ``errors`` counts skipped corrupt packets and failed sessions; ``dropped``
    counts writes refused because the writer's queue was full.
    """

    packets: int = 0
    bytes: int = 0
    frames: int = 0
    reconnects: int = 0
    errors: int = 0
    dropped: int = 0
    last_error: str = ""


class RtmpEndpoint:
    """What RTMP readers and writers share: counters, reconnect backoff, events.

    Events reach ``on_event`` on the hub, logged first; an endpoint that runs
    in a worker thread overrides :meth:`_call_on_hub`.
    """

    def __init__(self, url: str, name: str, on_event: EventCallback) -> None:
        self.url = url
        self.name = name
        self.stats = RtmpStats()
        self._on_event = on_event
        self._closing = False
        self._backoff = Backoff()
        self._sessions = 0

    def _call_on_hub(self, fn: Callable[..., object], *args: object) -> None:
        fn(*args)

    def _event(self, event: str, /, **info: Any) -> None:
        """Report ``event`` to ``on_event`` on the hub."""
        self._call_on_hub(self._deliver_event, event, info)

    def _deliver_event(self, kind: str, info: dict[str, Any]) -> None:
        level = logging.WARNING if kind in ("disconnected", "unsupported_codec") else logging.INFO
        logger.log(level, "%s %s %s %s", self.name, kind, self.url, info)
        self._on_event(kind, info)

    def _connected(self) -> None:
        if self._sessions:
            self.stats.reconnects += 1
        self._sessions += 1

    def _failed(self, error: BaseException) -> float:
        """Count a failed session and return how long to wait before the next one."""
        self.stats.errors += 1
        self.stats.last_error = str(error) or type(error).__name__
        delay = self._backoff.next()
        self._event("disconnected", error=self.stats.last_error, retry_in=delay)
        return delay


class _Worker(RtmpEndpoint):
    """An endpoint whose session runs in a pool thread, reaching the hub through an inbox."""

    def __init__(
        self,
        url: str,
        name: str,
        on_event: EventCallback,
        pool: ThreadPool | None,
    ) -> None:
        super().__init__(url, name, on_event)
        self._pool = pool
        self._inbox = HubInbox(name)
        self._wakeup = _Wakeup()
        self._done: gevent.event.AsyncResult | None = None

    def start(self) -> None:
        """Start the worker thread (on the hub)."""
        if self._done is None:
            self._done = (self._pool or worker_pool()).spawn(self._run)

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Ask the worker to stop; it finishes on its own within the I/O timeouts."""
        self._closing = True
        self._wakeup.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (on the hub) until the worker thread has finished; True if it has."""
        if self._done is not None:
            self._done.wait(timeout)
            if not self._done.ready():
                return False
        self._inbox.close()
        return True

    def _call_on_hub(self, fn: Callable[..., object], *args: object) -> None:
        self._inbox.post(fn, *args)
