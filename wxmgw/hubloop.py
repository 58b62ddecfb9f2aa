"""How often the hub polls its sockets: libev's I/O collect interval.

A pull leg reads its live server ~30 times a second and a push leg gets
~120 RTP packets a second; when each readiness wakes the hub on its own,
every wakeup runs the Python of one message on cold caches, and the same
work costs about twice what it costs in one pass (``bench_pipeline.py`` run
paced in real time against flat out: 7.3 against 3.0 ms a leg-second). With
an interval, libev sleeps that long before it polls (never past a due timer),
so one wakeup serves what every leg received meanwhile (libev's
``ev_set_io_collect_interval``: "many (busy) servers can benefit from setting
the I/O collect interval"). Each message then waits up to the interval more.

gevent does not expose the call; its libev loop gives the ``struct ev_loop``
address (``loop.ptr``), and its extension module exports libev's symbols.

The interval is for media. A control socket (the Thrift port) should not wait
for it: :func:`wake_on_input` has the kernel signal the hub's thread
(``SIGIO``, ``O_ASYNC``) when bytes arrive on it. A signal that comes while
libev sleeps before its poll (a ``nanosleep``, which a handled signal ends)
cuts the sleep short; one that comes while the hub works makes the next poll
come at once. Either way the request is read in the next wakeup, with the
media that arrived meanwhile, and the interval applies again after it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final, TypeVar

import gevent
from gevent.hub import Waiter

T = TypeVar("T")

# Linux <fcntl.h>: F_SETOWN_EX with F_OWNER_TID sends the signal to one thread,
# the hub's, whose sleep it must end (not to any thread of the process).
_F_SETOWN_EX: Final = 15
_F_OWNER_TID: Final = 0


class _Collector:
    """The hub loop's interval, dropped to 0 for one poll when a woken socket has input."""

    def __init__(self, loop: Any, setter: Any) -> None:
        self.interval = 0.0
        self.thread = threading.get_native_id()  # the hub's: collect_io runs on it
        self._loop, self._setter = loop, setter
        # Check watchers run right after a poll: the one the signal asked for.
        self._after_poll = loop.check(ref=False)

    def set(self, interval: float) -> None:
        self.interval = interval
        self._setter(self._loop.ptr, interval)

    def poll_now(self) -> None:
        if self.interval > 0:
            self._setter(self._loop.ptr, 0.0)
            if not self._after_poll.active:
                self._after_poll.start(self._restore)

    def _restore(self) -> None:
        self._after_poll.stop()
        self._setter(self._loop.ptr, self.interval)


_collector: _Collector | None = None


def collect_io(interval: float) -> bool:
    """Poll the hub's sockets at most every ``interval`` seconds (0: at once).

    False when the hub does not run on gevent's libev loop (``GEVENT_LOOP``
    set to libuv), which has no such setting: the hub then polls at once.
    Called from the main thread, where the hub runs and Python takes signals.
    """
    global _collector
    try:
        from gevent.libev import corecext
    except ImportError:
        return False
    loop = gevent.get_hub().loop
    if not isinstance(loop, corecext.loop):
        return False
    if _collector is None:
        setter = ctypes.CDLL(corecext.__file__).ev_set_io_collect_interval
        setter.argtypes = (ctypes.c_void_p, ctypes.c_double)
        setter.restype = None
        _collector = _Collector(loop, setter)
        signal.signal(signal.SIGIO, _woken)  # its default action ends the process
    _collector.set(interval)
    return True


def wake_on_input(sock: socket.socket) -> None:
    """Have bytes (or a connection) arriving on ``sock`` bring the hub's next poll at once.

    Nothing to do while the hub polls at once. A kernel without
    ``F_SETOWN_EX`` signals the process instead: any of its threads may take
    the signal, and then only the next poll comes at once.
    """
    if _collector is None or _collector.interval == 0:
        return
    fd = sock.fileno()
    try:
        fcntl.fcntl(fd, _F_SETOWN_EX, struct.pack("ii", _F_OWNER_TID, _collector.thread))
    except OSError:
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)


def _woken(signum: int, frame: Any) -> None:
    """Python runs this on the main thread, after the signal has ended any sleep."""
    if _collector is not None:
        _collector.poll_now()


#: libev's priority for the watchers of media sockets (RTP, RTMP): below the
#: default, so that in a wakeup that serves many legs at once a control
#: socket's watcher (a Thrift request, the default 0) runs before theirs.
MEDIA_PRIORITY: Final = -1


def media_socket(sock: socket.socket) -> None:
    """Have gevent's waits on ``sock`` (a media TCP socket) run at ``MEDIA_PRIORITY``.

    A gevent socket waits on two libev watchers of its own, ``_read_event``
    and ``_write_event`` (so since gevent 1.0, though not public; a test
    checks them). Without them the socket keeps the default priority.
    """
    for name in ("_read_event", "_write_event"):
        watcher = getattr(sock, name, None)
        if watcher is not None:
            watcher.priority = MEDIA_PRIORITY


def wait_watcher(watcher: Any, timeout: float | None) -> bool:
    """Wait in this greenlet until ``watcher`` (a stopped libev watcher, such as
    ``loop.io``) fires: True; False when ``timeout`` seconds pass first.

    What ``hub.wait`` inside a ``gevent.Timeout`` does, for readers that wait
    for every datagram (a push leg's RTP, ~120 a second): without the
    Timeout, an exception instance and its context manager each time, the
    wait costs 1.7 µs less (5.5 against 7.2 with the datagram's own calls).
    """
    hub = gevent.get_hub()
    waiter = Waiter(hub)
    timer = None if timeout is None else hub.loop.timer(timeout)
    watcher.start(waiter.switch, True)
    if timer is not None:
        timer.start(waiter.switch, False)
    try:
        return bool(waiter.get())
    finally:
        watcher.stop()
        if timer is not None:
            timer.close()


def in_turns(items: Iterable[T]) -> Iterator[T]:
    """``items``, with a turn of the hub before each one after the first.

    For a walk over every leg (the stats lines, the stall watch, a metrics
    scrape): at 84 legs the stats lines took 19 ms of the hub in one go,
    and a Thrift request that came meanwhile waited for all of them. In
    turns it waits for one leg's work at most. A turn is ``gevent.idle()``:
    the hub polls at once and returns when no event of the default priority
    is pending, so control input is served first and media
    (``MEDIA_PRIORITY``) is not waited for; 84 turns with nothing to do cost
    0.3 ms. (``gevent.sleep(0)`` would not do: gevent runs the callbacks
    queued while it runs callbacks, this one too, before it polls again.)
    """
    for i, item in enumerate(items):
        if i:
            gevent.idle()
        yield item
