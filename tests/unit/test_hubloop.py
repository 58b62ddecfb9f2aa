"""The hub's I/O collect interval: one wakeup serves what arrived meanwhile."""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402

import gevent  # noqa: E402

from wxmgw.hubloop import collect_io  # noqa: E402


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

