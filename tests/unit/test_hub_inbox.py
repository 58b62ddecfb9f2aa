"""The thread-to-hub plumbing of rtmp_io (the RTMP paths are in tests/integration)."""

from __future__ import annotations

import gevent
from gevent import monkey
from gevent.threadpool import ThreadPool

from wxmgw.media.worker import Backoff, HubInbox, _Wakeup


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_wakeup_is_a_binary_semaphore() -> None:
    wakeup = _Wakeup()
    assert not wakeup.wait(0)
    wakeup.set()
    wakeup.set()
    assert wakeup.wait(0)
    assert not wakeup.wait(0)


def test_inbox_runs_posts_from_threads_on_the_hub_in_order() -> None:
    inbox = HubInbox("test")
    pool = ThreadPool(2)
    got: list[tuple[int, int]] = []
    # The OS thread, not the greenlet: the suite may run monkey-patched.
    get_ident = monkey.get_original("_thread", "get_ident")
    hub_thread = get_ident()
    threads: list[int] = []

    def record(i: int) -> None:
        threads.append(get_ident())
        got.append((i, len(got)))

    def worker() -> None:
        for i in range(1000):
            inbox.post(record, i)

    pool.spawn(worker).get()
    with gevent.Timeout(5):
        while len(got) < 1000:
            gevent.sleep(0.01)
    assert [i for i, _ in got] == list(range(1000))
    assert set(threads) == {hub_thread}
    inbox.close()
    pool.kill()


def test_a_failing_call_does_not_stop_the_inbox() -> None:
    inbox = HubInbox("test")
    got: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    inbox.post(boom)
    inbox.post(got.append, 1)
    with gevent.Timeout(5):
        while not got:
            gevent.sleep(0.01)
    inbox.close()
