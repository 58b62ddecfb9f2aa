"""The hub's I/O collect interval: one wakeup serves what arrived meanwhile."""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from wxmgw.hubloop import (  # noqa: E402
    MEDIA_PRIORITY,
    collect_io,
    in_turns,
    media_socket,
    wait_watcher,
    wake_on_input,
)


def test_datagrams_spread_over_time_are_read_in_few_wakeups():
    loop = gevent.get_hub().loop
    native_socket = monkey.get_original("socket", "socket")
    native_sleep = monkey.get_original("time", "sleep")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))

        def send() -> None:  # in a native thread: its sleeps do not wake the hub
            with native_socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for i in range(20):
                    tx.sendto(bytes([i]), rx.getsockname())
                    native_sleep(0.005)

        assert collect_io(0.05)
        try:
            first = loop.iteration
            sent = gevent.get_hub().threadpool.spawn(send)
            got = [rx.recv(16)[0] for _ in range(20)]
            wakeups = loop.iteration - first
            sent.get()
        finally:
            collect_io(0.0)
    assert got == list(range(20))
    # 20 datagrams 5 ms apart, polled at most every 50 ms: a few wakeups, not 20.
    assert wakeups <= 10, wakeups



# A native thread, joined natively: the end of a hub thread-pool task wakes
# the hub itself (an async watcher), and only after the collect sleep.
_start_thread = monkey.get_original("_thread", "start_new_thread")
_native_lock = monkey.get_original("_thread", "allocate_lock")
_native_socket = monkey.get_original("socket", "socket")
_native_sleep = monkey.get_original("time", "sleep")
_native_monotonic = monkey.get_original("time", "monotonic")
#: Long enough that a read which waited for it would be plain: nothing else is due.
INTERVAL = 60.0


def _send_later(to: tuple[str, int], delay: float) -> tuple[list[float], Any]:
    """Send one byte to ``to`` from a native thread after ``delay``: (when it was sent, done)."""
    sent_at: list[float] = []
    done = _native_lock()
    done.acquire()

    def send() -> None:
        with _native_socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            _native_sleep(delay)
            sent_at.append(_native_monotonic())
            tx.sendto(b"x", to)
        done.release()

    _start_thread(send, ())
    return sent_at, done


@contextmanager
def _woken_socket() -> Iterator[socket.socket]:
    """A bound UDP socket whose input wakes the hub, collecting every ``INTERVAL`` meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        assert collect_io(INTERVAL)
        try:
            wake_on_input(rx)
            yield rx
        finally:
            collect_io(0.0)


def test_input_on_a_woken_socket_ends_the_collect_sleep_at_once() -> None:
    """A request on the Thrift port is read as it arrives, not after the interval."""
    with _woken_socket() as rx:
        sent_at, done = _send_later(rx.getsockname(), 0.5)  # the hub sleeps by then
        assert rx.recv(16) == b"x"
        read_at = _native_monotonic()
        done.acquire()
    assert read_at - sent_at[0] < INTERVAL / 2, "the byte waited for the interval"


def test_input_while_the_hub_works_brings_the_next_poll_at_once() -> None:
    """The signal comes while a greenlet holds the hub: the poll after it does not wait."""
    with _woken_socket() as rx:
        reader = gevent.spawn(rx.recv, 16)
        gevent.sleep(0)  # the reader waits for its socket
        _, done = _send_later(rx.getsockname(), 0.3)
        gevent.spawn(_native_sleep, 1.0)  # holds the hub while the byte arrives
        gevent.sleep(0)
        worked_until = _native_monotonic()
        assert reader.get() == b"x"
        read_at = _native_monotonic()
        done.acquire()
    assert read_at - worked_until < INTERVAL / 2, "the byte waited for the interval"


def test_wait_watcher_answers_the_watcher_or_the_timeout_and_leaves_both_stopped():
    loop = gevent.get_hub().loop
    a, b = socket.socketpair()
    with a, b:
        readable = loop.io(a.fileno(), 1)
        assert not wait_watcher(readable, 0.01)  # nothing to read
        b.send(b"x")
        assert wait_watcher(readable, 5.0) and not readable.active
        assert a.recv(1) == b"x"
        waiting = gevent.spawn(wait_watcher, readable, None)
        gevent.sleep(0.01)
        assert readable.active
        waiting.kill()  # a reader killed in its wait (a session closed)
        assert not readable.active and waiting.dead


def test_a_media_socket_is_read_after_a_control_socket_ready_at_the_same_time():
    """``media_socket`` reaches gevent's own watchers (private names, checked here).

    The media socket's byte is sent first: of two watchers of one priority
    ready in the same poll, the one that became ready first mostly runs first.
    """
    def first_read() -> str:
        order: list[str] = []

        def read(sock: socket.socket, name: str) -> None:
            sock.recv(1)
            order.append(name)

        media, media_peer = socket.socketpair()
        control, control_peer = socket.socketpair()
        with media, media_peer, control, control_peer:
            media_socket(media)
            watchers = (getattr(media, "_read_event", None), getattr(media, "_write_event", None))
            assert [w.priority if w else None for w in watchers] == [MEDIA_PRIORITY] * 2
            readers = [gevent.spawn(read, media, "media"), gevent.spawn(read, control, "control")]
            gevent.sleep(0)  # both wait in recv
            media_peer.send(b"m")
            control_peer.send(b"c")
            gevent.joinall(readers, timeout=5)
        return order[0]

    assert [first_read() for _ in range(5)] == ["control"] * 5


def test_a_walk_in_turns_lets_a_request_in_between_its_items():
    """What the stats lines, the stall watch and a metrics scrape do over every leg."""
    order: list[object] = []
    request, peer = socket.socketpair()
    with request, peer:
        reader = gevent.spawn(lambda: order.append(request.recv(1)))
        gevent.sleep(0)  # it waits in recv
        for item in in_turns(range(4)):
            if item == 0:
                peer.send(b"r")  # a request comes while the walk is at its first item
            order.append(item)
        reader.join(5)
    assert order == [0, b"r", 1, 2, 3]
    assert list(in_turns([])) == []
