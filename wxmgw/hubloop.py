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
"""

from __future__ import annotations

import ctypes

import gevent


def collect_io(interval: float) -> bool:
    """Poll the hub's sockets at most every ``interval`` seconds (0: at once).

    False when the hub does not run on gevent's libev loop (``GEVENT_LOOP``
    set to libuv), which has no such setting: the hub then polls at once.
    """
    try:
        from gevent.libev import corecext
    except ImportError:
        return False
    loop = gevent.get_hub().loop
    if not isinstance(loop, corecext.loop):
        return False
    setter = ctypes.CDLL(corecext.__file__).ev_set_io_collect_interval
    setter.argtypes = (ctypes.c_void_p, ctypes.c_double)
    setter.restype = None
    setter(loop.ptr, interval)
    return True
