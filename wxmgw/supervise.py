"""Workers that do not die silently: greenlets restarted, with backoff, after an unexpected error.

Every long-running greenlet of a leg (the RTMP reader, the FLV publisher's
loop that drives the RTMP writer, the writer's listener, the room mixer) runs as a
:class:`Worker`. Its function handles the failures it expects (a lost RTMP
session is retried by the reader and the writer themselves); anything else
is a bug or an input nobody foresaw. The worker then hands the exception to
its owner, which logs it with its traceback and the leg's ``confId``/``uuid``
and counts it, and runs the function again after a :class:`Backoff` delay:
one bad input costs a restart, not a leg that does nothing while
``/monitor/state`` says ``running``.

A part's state is a string: :data:`RUNNING`, :data:`RECONNECTING` (a
session is being retried) or ``failed: why`` (a worker waits for its
restart); :func:`worst` sums up a leg's parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

import gevent
from greenlet import GreenletExit

BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 8.0
RUNNING: Final = "running"
RECONNECTING: Final = "reconnecting"
_FAILED: Final = "failed: "

#: Told the exception that ended the function, and how long until it runs again.
CrashReport = Callable[[BaseException, float], None]


def failed(why: str) -> str:
    return _FAILED + why


def worst(states: Iterable[str]) -> str:
    """The state of a whole from its parts': a failure first, then reconnecting, else running."""
    out = RUNNING
    for state in states:
        if state.startswith(_FAILED):
            return state
        if state == RECONNECTING:
            out = state
    return out


class Backoff:
    """Retry delays: ``initial`` doubling up to ``maximum``; ``reset()`` after a success."""

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


class Worker:
    """``target`` in a greenlet of its own (started at once), run again after an unexpected error.

    An ``Exception`` out of ``target`` goes to ``on_crash`` with the delay
    before the next run (:class:`Backoff`; a run that lasted longer than the
    longest delay starts the delays over). :meth:`kill` is not a crash.
    ``target`` returning ends the worker.
    """

    def __init__(
        self, target: Callable[[], None], on_crash: CrashReport, backoff: Backoff | None = None
    ) -> None:
        self.failure = ""  # why it is down, while it waits for its restart
        self._target = target
        self._on_crash = on_crash
        self._backoff = backoff or Backoff()
        self._greenlet = gevent.spawn(self._run)

    @property
    def state(self) -> str:
        return failed(self.failure) if self.failure else RUNNING

    @property
    def dead(self) -> bool:
        return bool(self._greenlet.dead)

    def kill(self) -> None:
        """End the worker at the hub's next turn; the caller does not wait for it."""
        self._greenlet.kill(block=False)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker has ended; True if it has."""
        self._greenlet.join(timeout)
        return self.dead

    def _run(self) -> None:
        try:
            self._supervise()
        except GreenletExit:
            # Killed. Ending here, not with the exception, leaves the greenlet no
            # value: its traceback holds this frame, hence the worker and its
            # greenlet, a cycle only a full collection would free (at 45 two-way
            # legs, ten frames of garbage for each worker a StopPull or
            # StopPush ended, the most of what a full collection found).
            return

    def _supervise(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self._target()
                return
            except Exception as e:  # not GreenletExit (kill): a BaseException
                if time.monotonic() - started > self._backoff.maximum:
                    self._backoff.reset()
                delay = self._backoff.next()
                self.failure = f"{type(e).__name__}: {e}".removesuffix(": ")
                self._on_crash(e, delay)
                gevent.sleep(delay)
                self.failure = ""
